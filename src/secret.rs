//! A wrapper for secrets (tokens, client secrets) that never prints its content.

use std::fmt;

/// A secret string. `Debug` and `Display` print `/* REDACTED */`; the value is only
/// reachable through [`Secret::expose`], so every use is visible in review.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("/* REDACTED */")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("/* REDACTED */")
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        // Overwrite the bytes so a freed token does not linger in the heap.
        zero(&mut self.0);
    }
}

/// Zeroes a string's buffer without `unsafe`: clearing keeps the buffer, and refilling it
/// with as many NULs as it held writes over every byte in place.
fn zero(s: &mut String) {
    let n = s.len();
    s.clear();
    s.extend(std::iter::repeat_n('\0', n));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_hide_the_value() {
        let s = Secret::new("eyJ0eXAiOiJKV1Qi.secret");
        assert_eq!(format!("{s:?}"), "/* REDACTED */");
        assert_eq!(format!("{s}"), "/* REDACTED */");
        assert!(!format!("{:?}", Some(&s)).contains("eyJ"));
        assert_eq!(s.expose(), "eyJ0eXAiOiJKV1Qi.secret");
    }
}
