//! Random identifiers for tokens, codes and GUIDs (OpenSSL's CSPRNG), and a small
//! deterministic PRNG (SplitMix64) for reproducible test data.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// `n` random bytes from OpenSSL.
pub fn bytes(n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    openssl::rand::rand_bytes(&mut buf).expect("OpenSSL random generator");
    buf
}

/// A random URL-safe base64 string made from `n` random bytes.
pub fn token(n: usize) -> String {
    URL_SAFE_NO_PAD.encode(bytes(n))
}

/// A random GUID in the usual 8-4-4-4-12 lowercase hex form.
pub fn guid() -> String {
    guid_from(&bytes(16))
}

/// A GUID formatted from the first 16 bytes of `b` (deterministic GUIDs from hashes).
pub fn guid_from(b: &[u8]) -> String {
    let h: String = b.iter().take(16).map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// SplitMix64: a tiny, fast, seedable PRNG (not for secrets).
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator with the given seed.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform float in `[0, 1)`.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A uniform integer in `[0, n)` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// `true` with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        self.next_f64() < p
    }

    /// A standard normal variate (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.next_f64().max(f64::MIN_POSITIVE);
        let u2 = self.next_f64();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    /// A random element of a non-empty slice.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}
