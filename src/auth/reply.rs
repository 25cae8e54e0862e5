//! What a token endpoint answers: the reply as mailsync reads it (leniently where real
//! providers differ, e.g. Azure AD v1's `expires_in` as a string), its lifetime bounded,
//! and what to say when a reply cannot be read. The text of a reply never reaches an
//! error, a log line or `status`: it may hold tokens. A failure names the field and the
//! JSON type found, nothing of its value.

use std::fmt;
use std::time::Duration;

use oauth2::basic::BasicTokenType;
use oauth2::helpers::{
    deserialize_space_delimited_vec, deserialize_untagged_enum_case_insensitive,
};
use oauth2::{AccessToken, RefreshToken, Scope};
use serde::{Deserialize, Deserializer, Serialize};

/// The longest lifetime an access token is taken to have. Microsoft's live 60 to 90
/// minutes and Google's an hour; a larger `expires_in` comes from a broken or hostile
/// endpoint, and believing it would keep a dead token and put dates beyond what a
/// clock can show into the state database. A token that in truth lives longer is just
/// refreshed after a day.
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// The lifetime assumed when the reply gives none (RFC 6749 leaves it to the provider;
/// Microsoft and Google use an hour).
pub const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);

/// A successful token reply (RFC 6749 §5.1, plus OpenID Connect's `id_token`).
#[derive(Deserialize, Serialize)]
pub struct TokenReply {
    access_token: AccessToken,
    /// Always "Bearer" in practice; read, never used (XOAUTH2 sends a bearer token).
    #[serde(
        default = "bearer",
        deserialize_with = "deserialize_untagged_enum_case_insensitive"
    )]
    token_type: BasicTokenType,
    #[serde(default, deserialize_with = "lifetime")]
    expires_in: Option<Duration>,
    #[serde(default)]
    refresh_token: Option<RefreshToken>,
    #[serde(
        default,
        rename = "scope",
        deserialize_with = "deserialize_space_delimited_vec"
    )]
    scopes: Option<Vec<Scope>>,
    /// Names who signed in (OpenID Connect); personal data, never printed.
    #[serde(default)]
    id_token: Option<String>,
}

fn bearer() -> BasicTokenType {
    BasicTokenType::Bearer
}

impl fmt::Debug for TokenReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenReply(/* REDACTED */)")
    }
}

impl TokenReply {
    /// The `id_token`, if the reply has one.
    pub fn id_token(&self) -> Option<&str> {
        self.id_token.as_deref()
    }
}

impl oauth2::TokenResponse for TokenReply {
    type TokenType = BasicTokenType;

    fn access_token(&self) -> &AccessToken {
        &self.access_token
    }
    fn token_type(&self) -> &BasicTokenType {
        &self.token_type
    }
    /// Bounded by [`MAX_TOKEN_LIFETIME`].
    fn expires_in(&self) -> Option<Duration> {
        self.expires_in
    }
    fn refresh_token(&self) -> Option<&RefreshToken> {
        self.refresh_token.as_ref()
    }
    fn scopes(&self) -> Option<&Vec<Scope>> {
        self.scopes.as_ref()
    }
}

/// `expires_in` in seconds: a number, or a string of digits (Azure AD v1 sends
/// `"3599"`), at most [`MAX_TOKEN_LIFETIME`]. A negative number means already expired.
fn lifetime<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Unsigned(u64),
        Signed(i64),
        Float(f64),
        Text(String),
    }
    let secs: u64 = match Option::<Raw>::deserialize(d)? {
        None => return Ok(None),
        Some(Raw::Unsigned(n)) => n,
        Some(Raw::Signed(n)) => u64::try_from(n).unwrap_or(0),
        // Beyond u64 (serde_json reads 2^64 and above as a float) or fractional.
        Some(Raw::Float(f)) if f.is_finite() => f.max(0.0) as u64,
        Some(Raw::Text(s))
            if !s.trim().is_empty() && s.trim().bytes().all(|b| b.is_ascii_digit()) =>
        {
            s.trim().parse::<u64>().unwrap_or(u64::MAX)
        }
        // The message is never shown (see `unreadable`); it only has to fail.
        Some(_) => return Err(serde::de::Error::custom("not a number of seconds")),
    };
    Ok(Some(Duration::from_secs(secs).min(MAX_TOKEN_LIFETIME)))
}

/// What the JSON type of each field the token endpoint may send should be; a field not
/// named here is "a field", whatever the reply calls it.
const FIELDS: &[(&str, &str)] = &[
    ("access_token", "a string"),
    ("token_type", "a string"),
    ("expires_in", "a number"),
    ("refresh_token", "a string"),
    ("scope", "a string"),
    ("id_token", "a string"),
    ("error", "a string"),
    ("error_description", "a string"),
    ("error_uri", "a string"),
    ("device_code", "a string"),
    ("user_code", "a string"),
    ("verification_uri", "a string"),
    ("interval", "a number"),
];

fn json_type(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "true or false",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// Why a reply could not be read, in words that quote nothing of it: `body` is the
/// reply, `path` where the parser stopped (e.g. `expires_in`). `endpoint` names the
/// endpoint ("the token endpoint").
pub fn unreadable(endpoint: &str, path: &str, body: &[u8]) -> Unreadable {
    let value = match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(v) => v,
        Err(_) => {
            let trimmed = body.trim_ascii_start();
            let what = if trimmed.is_empty() {
                "empty".to_owned()
            } else if trimmed.starts_with(b"<") {
                format!(
                    "an HTML page of {} bytes, not JSON (a proxy's or the server's error page?)",
                    body.len()
                )
            } else {
                format!("{} bytes that are not JSON", body.len())
            };
            return Unreadable {
                detail: format!("{endpoint}'s reply is {what}"),
                json: false,
            };
        }
    };
    let serde_json::Value::Object(fields) = &value else {
        return Unreadable {
            detail: format!(
                "{endpoint}'s reply is {}, expected an object",
                json_type(&value)
            ),
            json: true,
        };
    };
    let field = path.split(['.', '[']).next().unwrap_or("");
    let known = FIELDS.iter().find(|(name, _)| *name == field);
    let detail = match (known, fields.get(field)) {
        (Some((name, expected)), Some(v)) => {
            let found = json_type(v);
            if found == *expected {
                format!("{endpoint}'s reply has `{name}` as {found} that is not valid")
            } else {
                format!("{endpoint}'s reply has `{name}` as {found}, expected {expected}")
            }
        }
        (Some((name, _)), None) => format!("{endpoint}'s reply has no `{name}`"),
        // Stopped at the top: a required field is missing.
        _ if path == "." => match ["access_token", "error"]
            .iter()
            .find(|f| !fields.contains_key(**f))
        {
            Some(missing) if !fields.contains_key("error") => {
                format!("{endpoint}'s reply has no `{missing}`")
            }
            _ => format!("{endpoint}'s reply lacks a required field"),
        },
        _ => format!("{endpoint}'s reply has a field that cannot be read"),
    };
    Unreadable { detail, json: true }
}

/// A reply that could not be read.
#[derive(Debug, PartialEq, Eq)]
pub struct Unreadable {
    /// What was wrong, naming at most a field and a JSON type.
    pub detail: String,
    /// It was JSON (so the endpoint speaks another dialect: asking again will not
    /// help); otherwise an error page, likely from a proxy, which may pass.
    pub json: bool,
}

/// `text` from the identity provider (an `error_description`), fit for an error
/// message, a log line or `status`: its first line, at most 300 characters, every
/// credential in `sent` (what the request just carried) replaced by `[redacted]`.
pub fn server_text(text: &str, sent: &[&str]) -> String {
    let mut line = text.split(['\r', '\n']).next().unwrap_or("").to_owned();
    for s in sent.iter().filter(|s| s.len() >= 4) {
        line = line.replace(*s, "[redacted]");
    }
    const MAX: usize = 300;
    match line.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}…", &line[..cut]),
        None => line,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oauth2::TokenResponse as _;

    /// As the oauth2 crate reads a reply: serde_path_to_error over serde_json.
    fn read(body: &str) -> Result<TokenReply, Unreadable> {
        let body = body.as_bytes();
        serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_slice(body))
            .map_err(|e| unreadable("the token endpoint", &e.path().to_string(), body))
    }

    #[test]
    fn expires_in_is_a_number_or_digits_and_at_most_a_day() {
        let lifetime = |v: &str| {
            read(&format!(
                r#"{{"access_token":"AT","token_type":"Bearer","expires_in":{v}}}"#
            ))
            .map(|r| r.expires_in())
        };
        let secs = |n| Ok(Some(Duration::from_secs(n)));
        assert_eq!(lifetime("3599"), secs(3599));
        assert_eq!(lifetime("\"3599\""), secs(3599));
        assert_eq!(lifetime("\" 3599 \""), secs(3599));
        assert_eq!(lifetime("0"), secs(0));
        assert_eq!(lifetime("-5"), secs(0));
        assert_eq!(lifetime("3599.5"), secs(3599));
        assert_eq!(lifetime("null"), Ok(None));
        for huge in [
            "18446744073709551615",
            "18446744073709551616",
            "1000000000000",
            "1e300",
            "\"99999999999999999999999\"",
        ] {
            assert_eq!(lifetime(huge), Ok(Some(MAX_TOKEN_LIFETIME)), "{huge}");
        }
        let r = read(r#"{"access_token":"AT","token_type":"Bearer"}"#).unwrap();
        assert_eq!(r.expires_in(), None);
        assert_eq!(r.token_type(), &BasicTokenType::Bearer);
    }

    #[test]
    fn an_unreadable_reply_is_described_without_its_text() {
        let secret = "AT-SECRET-VALUE";
        let cases = [
            (
                format!(r#"{{"access_token":"{secret}","expires_in":"{secret}"}}"#),
                "the token endpoint's reply has `expires_in` as a string, expected a number",
            ),
            (
                format!(r#"{{"access_token":"{secret}","expires_in":{{"s":"{secret}"}}}}"#),
                "the token endpoint's reply has `expires_in` as an object, expected a number",
            ),
            (
                format!(r#"{{"access_token":12,"refresh_token":"{secret}"}}"#),
                "the token endpoint's reply has `access_token` as a number, expected a string",
            ),
            (
                format!(r#"{{"refresh_token":"{secret}"}}"#),
                "the token endpoint's reply has no `access_token`",
            ),
            (
                format!(r#""{secret}""#),
                "the token endpoint's reply is a string, expected an object",
            ),
            (
                format!("<html>{secret}</html>"),
                "the token endpoint's reply is an HTML page of 28 bytes, not JSON (a proxy's or the server's error page?)",
            ),
            (
                format!("access_token={secret}"),
                "the token endpoint's reply is 28 bytes that are not JSON",
            ),
        ];
        for (body, expected) in cases {
            let Err(e) = read(&body) else {
                panic!("read: {body}")
            };
            assert_eq!(e.detail, expected, "{body}");
            assert!(!e.detail.contains(secret));
        }
        // An unknown field named after a secret is never repeated.
        let e = unreadable(
            "the token endpoint",
            secret,
            format!(r#"{{"{secret}":1}}"#).as_bytes(),
        );
        assert!(!e.detail.contains(secret), "{}", e.detail);
    }

    #[test]
    fn server_text_is_one_short_line_without_what_was_sent() {
        assert_eq!(
            server_text(
                "AADSTS7000215: bad secret s3cr3t-VALUE.\r\nTrace ID: x",
                &["s3cr3t-VALUE"]
            ),
            "AADSTS7000215: bad secret [redacted]."
        );
        let long = "x".repeat(1000);
        assert_eq!(server_text(&long, &[]).chars().count(), 301);
        assert!(
            !format!("{:?}", read(r#"{"access_token":"AT-SECRET"}"#).unwrap())
                .contains("AT-SECRET")
        );
    }
}
