//! SASL XOAUTH2 for `async_imap::Client::authenticate("XOAUTH2", …)`.

/// The XOAUTH2 initial response: `user=USER\x01auth=Bearer TOKEN\x01\x01`. Answers the
/// server's error challenge (base64 JSON) with an empty response, as the protocol wants.
#[derive(Clone, Debug)]
pub struct XOAuth2 {
    user: String,
    token: String,
    sent: bool,
}

impl XOAuth2 {
    /// An authenticator for `user` with the bearer `token`.
    pub fn new(user: impl Into<String>, token: impl Into<String>) -> Self {
        Self {
            user: user.into(),
            token: token.into(),
            sent: false,
        }
    }

    /// The raw (not yet base64-encoded) initial client response.
    pub fn initial_response(&self) -> String {
        format!("user={}\x01auth=Bearer {}\x01\x01", self.user, self.token)
    }
}

impl async_imap::Authenticator for XOAuth2 {
    type Response = String;

    fn process(&mut self, _challenge: &[u8]) -> String {
        if self.sent {
            String::new()
        } else {
            self.sent = true;
            self.initial_response()
        }
    }
}
