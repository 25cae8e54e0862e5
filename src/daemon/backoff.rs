//! How long to wait before reconnecting: jittered exponential backoff as an iterator of
//! delays, and the wait Exchange Online names when it throttles a mailbox.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A longer hint than this is taken as this: past an hour a number is more likely
/// garbled than meant, and waiting days on it would look like a hung daemon.
const MAX_HINT: Duration = Duration::from_secs(60 * 60);

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

/// The wait Exchange asks for when it throttles a mailbox, found anywhere in `text`
/// (a server response, or an error message quoting one), e.g.
/// `NO Request is throttled. Suggested Backoff Time: 299910 milliseconds`.
///
/// Case does not matter, nor the spacing around `:`; a number without a unit is taken
/// as milliseconds (Exchange's unit), and `s`/`seconds` and `min`/`minutes` are
/// understood too. `None` when there is no such hint, when it is zero (that asks for
/// no wait, so the ordinary backoff applies), or when the number does not fit; a hint
/// longer than an hour is taken as an hour.
pub fn throttle_hint(text: &str) -> Option<Duration> {
    // ASCII lowercasing keeps byte offsets, so positions found in `lower` are valid in
    // the same bytes.
    let lower = text.to_ascii_lowercase();
    let bytes = lower.as_bytes();
    const KEY: &str = "backoff time";
    let mut from = 0;
    while let Some(found) = lower[from..].find(KEY) {
        let start = from + found + KEY.len();
        from = start;
        if let Some(hint) = hint_after(&bytes[start..]) {
            return (!hint.is_zero()).then(|| hint.min(MAX_HINT));
        }
    }
    None
}

/// Parses `: 1234 milliseconds` (already lowercased).
fn hint_after(rest: &[u8]) -> Option<Duration> {
    let rest = skip(rest, |b| b.is_ascii_whitespace() || b == b':' || b == b'=');
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 {
        return None;
    }
    // At most 19 digits always fit in a u64; more is garbage, not a wait.
    let number: u64 = std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()?;
    let rest = skip(&rest[digits..], |b| b.is_ascii_whitespace());
    let unit_len = rest.iter().take_while(|b| b.is_ascii_alphabetic()).count();
    match &rest[..unit_len] {
        b"s" | b"sec" | b"secs" | b"second" | b"seconds" => number.checked_mul(1000),
        b"min" | b"mins" | b"minute" | b"minutes" => number.checked_mul(60_000),
        // "ms", "milliseconds", nothing, or a word we do not know: Exchange's unit.
        _ => Some(number),
    }
    .map(Duration::from_millis)
}

fn skip(bytes: &[u8], what: impl Fn(u8) -> bool) -> &[u8] {
    let n = bytes.iter().take_while(|&&b| what(b)).count();
    &bytes[n..]
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

    #[test]
    fn exchange_throttling_responses_give_their_wait() {
        for (text, want) in [
            (
                "Request is throttled. Suggested Backoff Time: 299910 milliseconds",
                ms(299_910),
            ),
            (
                "1069 NO Request is throttled. Suggested Backoff Time: 299609 milliseconds",
                ms(299_609),
            ),
            (
                "BAD Request is throttled. Suggested Backoff Time: 89117 milliseconds\r\n* BYE Connection closed. 14\r\n",
                ms(89_117),
            ),
            (
                "account work: folder Inbox: NO request is THROTTLED. suggested backoff time:1234ms",
                ms(1234),
            ),
            ("Suggested   Backoff Time :  1500", ms(1500)),
            ("Suggested Backoff Time = 90 seconds", 90 * SEC),
            ("suggested backoff time: 2 min", 120 * SEC),
            // An hour at most.
            ("Suggested Backoff Time: 999999999 milliseconds", 3600 * SEC),
            // The first hint with a number wins.
            (
                "Suggested Backoff Time: soon. Suggested Backoff Time: 700 milliseconds",
                ms(700),
            ),
            // Non-ASCII before the hint does not shift the parse.
            (
                "Gelöschte Elemente: Suggested Backoff Time: 5 milliseconds",
                ms(5),
            ),
        ] {
            assert_eq!(throttle_hint(text), Some(want), "{text:?}");
        }
    }

    #[test]
    fn anything_else_gives_no_hint() {
        for text in [
            "",
            "NO [AUTHENTICATIONFAILED] AUTHENTICATE failed.",
            "Request is throttled.",
            "Suggested Backoff Time:",
            "Suggested Backoff Time: lots",
            "Suggested Backoff Time: -5 milliseconds",
            "Suggested Backoff Time: 0 milliseconds",
            "Suggested Backoff Time: 99999999999999999999999999 milliseconds",
            "Suggested Backoff Time: 99999999999999999 minutes",
            "Suggested Backoff Time: ١٢٣ milliseconds",
            "backoff time",
        ] {
            assert_eq!(throttle_hint(text), None, "{text:?}");
        }
    }

    proptest! {
        #[test]
        fn throttle_hint_never_panics(text in ".*") {
            let _ = throttle_hint(&text);
        }

        #[test]
        fn throttle_hint_never_panics_after_the_key(tail in ".{0,40}") {
            let text = format!("NO Request is throttled. Suggested Backoff Time{tail}");
            if let Some(d) = throttle_hint(&text) {
                prop_assert!(d > Duration::ZERO && d <= MAX_HINT);
            }
        }

        #[test]
        fn any_seed_respects_the_bounds(seed: u64, initial_ms in 0u64..10_000, max_ms in 1u64..1_000_000) {
            let max = ms(max_ms);
            for d in Backoff::with_seed(ms(initial_ms), max, seed).take(40) {
                prop_assert!(d <= max);
            }
        }
    }
}
