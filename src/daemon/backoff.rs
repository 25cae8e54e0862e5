//! How long to wait before reconnecting: jittered exponential backoff as an iterator of
//! delays (the wait a server names is read where its error is made: [`crate::retry`]).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The shortest first delay: doubling zero would stay zero.
const MIN_INITIAL: Duration = Duration::from_millis(1);

/// Delays between attempts: `initial`, doubling on every attempt up to `max`, each with
/// "equal jitter" — a delay drawn evenly from the upper half of the nominal one,
/// `[d/2, d]`.
///
/// Equal rather than full jitter (`[0, d]`): full jitter can draw a delay near zero
/// right after a failure, and against Exchange, which counts connections per mailbox
/// and throttles whoever hammers it, a floor matters more than the slightly lower total
/// load full jitter gives with thousands of clients. Half the range still spreads the
/// reconnects of an account's connections apart.
///
/// The iterator never ends. [`Backoff::reset`] after a success starts again from
/// `initial`.
#[derive(Clone, Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    /// The nominal (un-jittered) delay of the next attempt.
    nominal: Duration,
    rng: SplitMix64,
}

impl Backoff {
    /// Seeded from the system's random source, so that accounts (and daemons) that fail
    /// together do not retry together.
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff::with_seed(initial, max, random_seed())
    }

    /// The same delays for the same seed, for tests. `initial` is at least 1 ms and at
    /// most `max`: the cap is the promise.
    pub fn with_seed(initial: Duration, max: Duration, seed: u64) -> Backoff {
        let initial = initial.max(MIN_INITIAL).min(max);
        Backoff {
            initial,
            max,
            nominal: initial,
            rng: SplitMix64(seed),
        }
    }

    /// After a success: the next delay is short again.
    pub fn reset(&mut self) {
        self.nominal = self.initial;
    }
}

impl Iterator for Backoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let nanos = u64::try_from(self.nominal.as_nanos()).unwrap_or(u64::MAX);
        let half = nanos / 2;
        // [ceil(n/2), n]: never more than the nominal delay, so never more than `max`.
        let delay = (nanos - half) + self.rng.below(half + 1);
        self.nominal = self
            .nominal
            .checked_mul(2)
            .map_or(self.max, |d| d.min(self.max));
        Some(Duration::from_nanos(delay))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (usize::MAX, None)
    }
}

/// From the system's random source; the clock and the process id if that fails, which
/// still keeps two daemons apart.
fn random_seed() -> u64 {
    getrandom::u64().unwrap_or_else(|_| {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        nanos ^ (u64::from(std::process::id()) << 32)
    })
}

/// SplitMix64 (Steele, Lea, Flood 2014): tiny, fast, and good enough to spread delays.
/// Not for anything secret.
#[derive(Clone, Debug)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Evenly in `[0, n)` (Lemire's multiply-shift; its bias is below 2^-40 here).
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SEC: Duration = Duration::from_secs(1);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// The nominal delay of attempt `i`: initial · 2^i, capped.
    fn nominal(initial: Duration, max: Duration, i: u32) -> Duration {
        initial
            .checked_mul(1 << i.min(31))
            .map_or(max, |d| d.min(max))
    }

    #[test]
    fn delays_double_within_the_upper_half_of_each_step() {
        for seed in 0..50 {
            let delays: Vec<Duration> = Backoff::with_seed(SEC, 300 * SEC, seed).take(20).collect();
            for (i, d) in delays.iter().enumerate() {
                let n = nominal(SEC, 300 * SEC, i as u32);
                assert!(
                    *d >= n / 2 && *d <= n,
                    "seed {seed}, attempt {i}: {d:?} vs {n:?}"
                );
            }
            // Jitter may make one delay shorter than the one before, but never by
            // much: after a few doublings the growth wins, whatever the draw.
            assert!(delays[7] > delays[0], "seed {seed}: {delays:?}");
        }
    }

    #[test]
    fn the_cap_holds_forever() {
        let mut b = Backoff::with_seed(ms(100), 30 * SEC, 7);
        for (i, d) in b.by_ref().take(1000).enumerate() {
            assert!(d <= 30 * SEC, "attempt {i}: {d:?}");
        }
        // Long past the cap, delays stay in [max/2, max].
        for d in b.take(100) {
            assert!(d >= 15 * SEC && d <= 30 * SEC, "{d:?}");
        }
    }

    #[test]
    fn doubling_never_overflows() {
        let mut b = Backoff::with_seed(Duration::MAX / 3, Duration::MAX, 1);
        for _ in 0..200 {
            assert!(b.next().is_some());
        }
    }

    #[test]
    fn reset_starts_again_from_initial() {
        let mut b = Backoff::with_seed(SEC, 300 * SEC, 3);
        let late = b.by_ref().nth(10).unwrap();
        assert!(late >= 150 * SEC);
        b.reset();
        let first = b.next().unwrap();
        assert!(first >= SEC / 2 && first <= SEC, "{first:?}");
        let second = b.next().unwrap();
        assert!(second >= SEC && second <= 2 * SEC, "{second:?}");
    }

    #[test]
    fn jitter_spreads_delays_over_the_half_range() {
        let delays: Vec<Duration> = Backoff::with_seed(10 * SEC, 10 * SEC, 42)
            .take(200)
            .collect();
        let lo = delays.iter().min().unwrap();
        let hi = delays.iter().max().unwrap();
        assert!(*lo >= 5 * SEC && *hi <= 10 * SEC);
        // Drawn, not fixed: both ends of the range are reached.
        assert!(*lo < 6 * SEC && *hi > 9 * SEC, "{lo:?}..{hi:?}");
    }

    #[test]
    fn a_seed_gives_the_same_delays_and_seeds_differ() {
        let a: Vec<_> = Backoff::with_seed(SEC, 60 * SEC, 9).take(10).collect();
        let b: Vec<_> = Backoff::with_seed(SEC, 60 * SEC, 9).take(10).collect();
        let c: Vec<_> = Backoff::with_seed(SEC, 60 * SEC, 10).take(10).collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn a_zero_or_oversized_initial_is_clamped() {
        let mut zero = Backoff::with_seed(Duration::ZERO, SEC, 1);
        let later = zero.by_ref().nth(5).unwrap();
        assert!(later > Duration::ZERO, "zero must not stay zero");
        let mut big = Backoff::with_seed(60 * SEC, 10 * SEC, 1);
        assert!(big.next().unwrap() <= 10 * SEC);
    }

    #[test]
    fn new_is_seeded_and_bounded() {
        let d = Backoff::new(SEC, 5 * SEC).next().unwrap();
        assert!(d >= SEC / 2 && d <= SEC);
    }

    proptest! {
        #[test]
        fn any_seed_respects_the_bounds(seed: u64, initial_ms in 0u64..10_000, max_ms in 1u64..1_000_000) {
            let max = ms(max_ms);
            for d in Backoff::with_seed(ms(initial_ms), max, seed).take(40) {
                prop_assert!(d <= max);
            }
        }
    }
}
