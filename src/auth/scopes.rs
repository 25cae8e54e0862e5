//! The scopes an account asks for: below the flows that request them and the
//! admin-consent URL that must name them.

use oauth2::Scope;

use crate::config::{Account, Provider};

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
