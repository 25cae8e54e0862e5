//! The scopes an account asks for: below the flows that request them and the
//! admin-consent URL that must name them.

use oauth2::Scope;

pub use crate::config::SMTP_SEND;
use crate::config::{Account, Flow, Provider};

/// Whether `scope` is Microsoft's SMTP.Send, with or without its resource.
pub fn is_smtp_send(scope: &str) -> bool {
    scope
        .rsplit('/')
        .next()
        .is_some_and(|s| s.eq_ignore_ascii_case("SMTP.Send"))
}

/// Whether the account's sign-in allows sending mail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sending {
    /// The grant holds the scope that sending needs.
    Allowed,
    /// App-only access: sending needs SMTP.SendAsApp granted to the app and the
    /// service principal allowed on the mailbox, which only a try can tell.
    AppOnly,
    /// A server whose scopes mailsync does not know: only a try can tell.
    Unknown,
    /// Not allowed; why, and what to do.
    NotGranted(String),
}

/// Whether `account`, signed in with `granted` scopes (none recorded: unknown), may
/// send. A Microsoft account connected before mailsync could send lacks SMTP.Send.
pub fn sending(account: &Account, granted: &[String]) -> Sending {
    match (&account.provider, account.flow) {
        (Provider::Microsoft { .. }, Flow::ClientCredentials) => Sending::AppOnly,
        (Provider::Microsoft { .. }, _) => {
            if !account.oauth.scopes.iter().any(|s| is_smtp_send(s)) {
                Sending::NotGranted(format!(
                    "its scopes leave out SMTP.Send: add \"{SMTP_SEND}\" to scopes (or remove scopes to use the defaults), then run `mailsync connect {}`",
                    account.name
                ))
            } else if !granted.is_empty() && !granted.iter().any(|s| is_smtp_send(s)) {
                Sending::NotGranted(format!(
                    "it was connected before mailsync could send, without SMTP.Send: run `mailsync connect {}` again to allow sending",
                    account.name
                ))
            } else {
                Sending::Allowed
            }
        }
        (Provider::Google, _) => Sending::Allowed,
        (Provider::Custom, _) => Sending::Unknown,
    }
}

/// The scopes a refresh asks for: the account's, less SMTP.Send when the grant was
/// made without it. Asking a refresh token for a scope never consented fails with
/// `invalid_grant` (AADSTS65001), which would stop syncing too.
pub fn refresh_scopes(account: &Account, granted: &[String]) -> Vec<String> {
    let mut scopes = account.oauth.scopes.clone();
    if !granted.is_empty() && !granted.iter().any(|s| is_smtp_send(s)) {
        scopes.retain(|s| !is_smtp_send(s));
    }
    scopes
}

pub fn scopes(account: &Account) -> Vec<Scope> {
    account
        .oauth
        .scopes
        .iter()
        .cloned()
        .map(Scope::new)
        .collect()
}

/// The scopes a person signs in with: the account's, and what makes the provider name
/// who signed in (an OpenID Connect `id_token` with `preferred_username` or `email`),
/// which [`check_identity`](super::flows::check_identity) reads. Only the sign-in asks
/// for them: refreshes ask for the account's scopes as before, so a grant from before
/// these were added goes on refreshing as it did, and the access token's binding to the
/// account's scopes (see `TokenSource::issued_for`) does not change. A custom provider
/// gets none: a plain OAuth 2.0 server may refuse scopes it does not know (add `openid`
/// to `scopes` to have the check there too).
pub fn sign_in_scopes(account: &Account) -> Vec<Scope> {
    let identity: &[&str] = match account.provider {
        // Microsoft puts `preferred_username` in the id_token with `profile`.
        Provider::Microsoft { .. } => &["openid", "profile"],
        Provider::Google => &["openid", "email"],
        Provider::Custom => &[],
    };
    let mut all = scopes(account);
    for s in identity {
        if !account.oauth.scopes.iter().any(|have| have == s) {
            all.push(Scope::new((*s).to_owned()));
        }
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(extra: &str) -> Account {
        let text = format!(
            "[daemon]\nstate_dir = \"/tmp/s\"\n[accounts.work]\nprovider = \"microsoft\"\nemail = \"jane@contoso.com\"\nclient_id = \"app\"\n{extra}\n"
        );
        crate::config::parse(&text, std::path::Path::new("/tmp/c.toml"))
            .unwrap()
            .accounts["work"]
            .clone()
    }

    /// A grant from before sending asks its refreshes without SMTP.Send (asking for a
    /// scope never consented is `invalid_grant`, which would stop syncing too), and
    /// sending tells it to connect again.
    #[test]
    fn a_grant_from_before_sending_refreshes_as_before_and_may_not_send() {
        let a = account("");
        let old = vec!["https://outlook.office.com/IMAP.AccessAsUser.All".to_owned()];
        assert_eq!(
            refresh_scopes(&a, &old),
            [
                "https://outlook.office.com/IMAP.AccessAsUser.All",
                "offline_access"
            ]
        );
        match sending(&a, &old) {
            Sending::NotGranted(why) => {
                assert!(why.contains("run `mailsync connect work` again"), "{why}")
            }
            other => panic!("{other:?}"),
        }
        let new = vec![
            "https://outlook.office.com/IMAP.AccessAsUser.All".to_owned(),
            "https://outlook.office.com/SMTP.Send".to_owned(),
        ];
        assert_eq!(refresh_scopes(&a, &new), a.oauth.scopes);
        assert_eq!(sending(&a, &new), Sending::Allowed);
        assert_eq!(
            sending(&a, &[]),
            Sending::Allowed,
            "nothing recorded: tried"
        );

        let narrowed = account(
            "scopes = [\"https://outlook.office.com/IMAP.AccessAsUser.All\", \"offline_access\"]",
        );
        assert!(
            matches!(sending(&narrowed, &new), Sending::NotGranted(why) if why.contains("scopes leave out SMTP.Send"))
        );
        let app = account(
            "tenant = \"contoso.com\"\nflow = \"client-credentials\"\nclient_secret_file = \"/x\"",
        );
        assert_eq!(sending(&app, &[]), Sending::AppOnly);
    }
}
