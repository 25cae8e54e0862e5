//! The tenant admin-consent URL for a Microsoft account: what `mailsync consent-url`
//! prints and what a refusal that needs an administrator's consent names.

use std::fmt::Write as _;

use super::scopes::sign_in_scopes;
use crate::config::{Account, Flow, Provider};

/// Where the browser goes after consent. Entra only redirects to a URI registered on
/// the app; `http://localhost` is the one the browser flow registers anyway.
pub const REDIRECT_URI: &str = "http://localhost";
const AUTHORITY: &str = "https://login.microsoftonline.com";
const APP_ONLY_SCOPE: &str = "https://outlook.office365.com/.default";
const DELEGATED_SCOPES: &str = "https://outlook.office.com/IMAP.AccessAsUser.All https://outlook.office.com/SMTP.Send offline_access";

/// The tenant's admin-consent URL for a Microsoft account's app and scopes; `None` for
/// other providers (admin consent is a Microsoft Entra concept).
pub fn admin_consent_url(account: &Account) -> Option<String> {
    let Provider::Microsoft { tenant } = &account.provider else {
        return None;
    };
    let scope = if account.oauth.scopes.is_empty() {
        match account.flow {
            Flow::ClientCredentials => APP_ONLY_SCOPE.to_owned(),
            _ => DELEGATED_SCOPES.to_owned(),
        }
    } else if account.flow.is_delegated() {
        // What a person signs in with is what must be consented to.
        sign_in_scopes(account)
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(" ")
    } else {
        account.oauth.scopes.join(" ")
    };
    Some(format!(
        "{}/{}/v2.0/adminconsent?client_id={}&redirect_uri={}&scope={}",
        authority(&account.oauth.token_url),
        encode(tenant),
        encode(account.client_id.as_deref().unwrap_or_default()),
        encode(REDIRECT_URI),
        encode(&scope)
    ))
}

/// `https://host` of the configured token endpoint (another national cloud, or a test
/// identity provider), else the public cloud's.
fn authority(token_url: &str) -> String {
    token_url
        .split_once("://")
        .and_then(|(scheme, rest)| {
            let host = rest.split(['/', '?', '#']).next()?;
            (!host.is_empty() && (scheme == "https" || scheme == "http"))
                .then(|| format!("{scheme}://{host}"))
        })
        .unwrap_or_else(|| AUTHORITY.to_owned())
}

/// Percent-encoding of everything but RFC 3986's unreserved characters.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::Config;
    use std::path::Path;

    const CONFIG: &str = r#"
[daemon]
state_dir = "/var/lib/mailsync"

[accounts.work]
provider = "microsoft"
email = "jane@contoso.com"
tenant = "contoso.onmicrosoft.com"
client_id = "11111111-2222-3333-4444-555555555555"
flow = "device"

[accounts.robot]
provider = "microsoft"
email = "robot@contoso.com"
tenant = "0b3b1a9e-1f7e-4b8e-9f38-6a4c43d5b100"
client_id = "66666666-7777-8888-9999-000000000000"
flow = "client-credentials"
client_secret_file = "/etc/mailsync/robot.secret"

[accounts.anyone]
provider = "microsoft"
email = "joe@fabrikam.com"
client_id = "11111111-2222-3333-4444-555555555555"
flow = "browser"

[accounts.gmail]
provider = "google"
email = "joe@gmail.com"
client_id = "123-abc.apps.googleusercontent.com"
client_secret_file = "/etc/mailsync/gmail.secret"

[accounts.local]
provider = "custom"
email = "joe@example.org"
client_id = "mailsync"
imap_host = "127.0.0.1"
imap_port = 1993
tls = "implicit"
token_url = "http://127.0.0.1:8080/contoso/oauth2/v2.0/token"
device_url = "http://127.0.0.1:8080/contoso/oauth2/v2.0/devicecode"
scopes = ["imap"]
"#;

    /// Accounts of every provider and flow, shared with `commands::consent_url`.
    pub(crate) fn config() -> Config {
        crate::config::parse(CONFIG, Path::new("config.toml")).unwrap()
    }

    #[test]
    fn delegated_url() {
        let c = config();
        assert_eq!(
            admin_consent_url(c.account("work").unwrap()).unwrap(),
            "https://login.microsoftonline.com/contoso.onmicrosoft.com/v2.0/adminconsent\
             ?client_id=11111111-2222-3333-4444-555555555555\
             &redirect_uri=http%3A%2F%2Flocalhost\
             &scope=https%3A%2F%2Foutlook.office.com%2FIMAP.AccessAsUser.All%20https%3A%2F%2Foutlook.office.com%2FSMTP.Send%20offline_access%20openid%20profile"
        );
    }

    #[test]
    fn app_only_url() {
        let c = config();
        assert_eq!(
            admin_consent_url(c.account("robot").unwrap()).unwrap(),
            "https://login.microsoftonline.com/0b3b1a9e-1f7e-4b8e-9f38-6a4c43d5b100/v2.0/adminconsent\
             ?client_id=66666666-7777-8888-9999-000000000000\
             &redirect_uri=http%3A%2F%2Flocalhost\
             &scope=https%3A%2F%2Foutlook.office365.com%2F.default"
        );
    }

    #[test]
    fn without_a_tenant_any_organization_can_consent() {
        let c = config();
        let url = admin_consent_url(c.account("anyone").unwrap()).unwrap();
        assert!(
            url.starts_with("https://login.microsoftonline.com/organizations/v2.0/adminconsent?"),
            "{url}"
        );
    }

    #[test]
    fn empty_scopes_fall_back_to_the_flow_defaults() {
        let c = config();
        let mut a = c.account("robot").unwrap().clone();
        a.oauth.scopes.clear();
        let url = admin_consent_url(&a).unwrap();
        assert!(
            url.ends_with("&scope=https%3A%2F%2Foutlook.office365.com%2F.default"),
            "{url}"
        );
    }

    #[test]
    fn the_authority_follows_the_token_endpoint() {
        let c = config();
        let mut a = c.account("work").unwrap().clone();
        a.oauth.token_url =
            "https://login.microsoftonline.us/contoso.onmicrosoft.com/oauth2/v2.0/token".into();
        let url = admin_consent_url(&a).unwrap();
        assert!(
            url.starts_with("https://login.microsoftonline.us/contoso.onmicrosoft.com/v2.0/"),
            "{url}"
        );
        assert_eq!(authority("not a url"), AUTHORITY);
    }

    #[test]
    fn encoding() {
        assert_eq!(encode("a-b_c.d~e"), "a-b_c.d~e");
        assert_eq!(encode("a b/c:d&e=f?"), "a%20b%2Fc%3Ad%26e%3Df%3F");
        assert_eq!(encode("ü"), "%C3%BC");
    }

    #[test]
    fn no_consent_url_outside_microsoft() {
        let c = config();
        assert_eq!(admin_consent_url(c.account("gmail").unwrap()), None);
        assert_eq!(admin_consent_url(c.account("local").unwrap()), None);
    }
}
