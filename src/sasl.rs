//! The SASL initial responses for OAuth 2.0 bearer tokens, the same for IMAP
//! AUTHENTICATE and SMTP AUTH. They hold the token: callers wrap them in
//! [`Secret`] once encoded, and never log them.

use crate::secret::Secret;

/// The XOAUTH2 initial response (Google's and Microsoft's format).
pub fn xoauth2(user: &str, token: &Secret) -> Vec<u8> {
    format!("user={user}\x01auth=Bearer {}\x01\x01", token.expose()).into_bytes()
}

/// The OAUTHBEARER initial response (RFC 7628).
pub fn oauthbearer(user: &str, host: &str, port: u16, token: &Secret) -> Vec<u8> {
    let user = user.replace('=', "=3D").replace(',', "=2C");
    format!(
        "n,a={user},\x01host={host}\x01port={port}\x01auth=Bearer {}\x01\x01",
        token.expose()
    )
    .into_bytes()
}
