//! How a failure is retried, decided once, where the error is made: every loop (a
//! login's attempts, a download's reconnects, the daemon's backoff) asks the error's
//! [`Retry`] instead of counting tries of its own, and the wait a server names
//! (Exchange's "Suggested Backoff Time") is read from the server's own text, never
//! from an error message that quotes it.

use std::time::Duration;

/// What to do about a failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retry {
    /// Again at once on a new connection: the connection dropped, a command stalled.
    Reconnect,
    /// After a new access token: the server refused the one presented.
    NewToken,
    /// Later, after a delay of at least the server's hint, if it gave one: the server
    /// or the identity provider is unavailable, busy or throttling, or answered
    /// something that could not be read.
    Later(Option<Duration>),
    /// Only after a new sign-in (`mailsync connect`).
    SignIn,
    /// Not until something is fixed: the configuration, the server, a mapping.
    Never,
}

impl Retry {
    /// Whether waiting (and nothing else) may help.
    pub fn is_transient(self) -> bool {
        matches!(self, Retry::Reconnect | Retry::Later(_))
    }

    /// The wait before the next attempt: the server's hint, or at least `backoff`.
    pub fn delay(self, backoff: Duration) -> Duration {
        match self {
            Retry::Later(Some(hint)) => hint.max(backoff),
            _ => backoff,
        }
    }
}

/// A longer hint than this is taken as this: past an hour a number is more likely
/// garbled than meant, and waiting days on it would look like a hung daemon.
const MAX_HINT: Duration = Duration::from_secs(60 * 60);

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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SEC: Duration = Duration::from_secs(1);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
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

    }
}
