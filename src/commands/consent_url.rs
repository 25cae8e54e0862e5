//! `mailsync consent-url`: what a Microsoft 365 administrator must do once for an
//! account — the tenant admin-consent URL and, for app-only access, the Exchange Online
//! PowerShell that registers the service principal and grants it the mailbox.

use std::fmt::Write as _;
use std::io::Write as _;

use super::{CommandError, Exit, select_accounts};
use crate::auth::consent::REDIRECT_URI;
use crate::config::{Account, Config, Flow, Provider};

/// Re-exported only for `sync::login`, until it imports it from `auth::consent` (then a
/// plain `use`): auth, below the commands, must not reach up to one for it.
use crate::auth::consent::admin_consent_url;

/// `mailsync consent-url [ACCOUNT]`; clap-ready, so `cli.rs` can use it as it is.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct ConsentUrlArgs {
    /// The account (default: every account).
    pub account: Option<String>,
}

pub async fn run(config: &Config, args: &ConsentUrlArgs) -> Result<Exit, CommandError> {
    let accounts = select_accounts(config, args.account.as_deref())?;
    let text = accounts
        .iter()
        .map(|a| instructions(a))
        .collect::<Vec<_>>()
        .join("\n");
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(Exit::Ok)
}

/// What an administrator does for one account, as printed.
fn instructions(account: &Account) -> String {
    let mut s = String::new();
    let client_id = account.client_id.as_deref().unwrap_or_default();
    let _ = writeln!(
        s,
        "Account {} ({}, provider {}, flow {})",
        account.name,
        account.email,
        account.provider.as_str(),
        account.flow.as_str()
    );
    let Provider::Microsoft { tenant } = &account.provider else {
        let _ = match account.provider {
            Provider::Google => writeln!(
                s,
                "  Admin consent is a Microsoft Entra concept; Google has none. Instead:\n  \
                 - Google Cloud console → APIs & Services → OAuth consent screen of the project that owns\n    \
                 client {client_id}: add the scope https://mail.google.com/ (an \"Internal\" app needs no review).\n  \
                 - Workspace: Admin console → Security → Access and data control → API controls →\n    \
                 Manage third-party app access → {client_id} → Trusted (domain-wide delegation is for service accounts only).\n  \
                 Then run `mailsync connect {}`.",
                account.name
            ),
            _ => writeln!(
                s,
                "  Admin consent is a Microsoft Entra concept; a custom identity provider has its own way to approve client {client_id}\n  \
                 for the scopes {}: ask its administrator, then run `mailsync connect {}`.",
                scopes_or_none(account),
                account.name
            ),
        };
        return s;
    };
    let url = admin_consent_url(account).unwrap_or_default();
    let which = if ["common", "organizations"].contains(&tenant.as_str()) {
        "your tenant".to_owned()
    } else {
        format!("tenant {tenant}")
    };
    let _ = writeln!(
        s,
        "\nAdmin consent for {which}: open this as an administrator who may grant tenant-wide consent\n\
         (e.g. a Global Administrator):\n  {url}"
    );
    let _ = writeln!(
        s,
        "  Afterwards the browser is sent to {REDIRECT_URI}, which may show an error page: the consent is recorded all the same.\n  \
         (If Entra answers AADSTS50011, add {REDIRECT_URI} as a \"Mobile and desktop applications\" redirect URI of the app,\n  \
         or grant it in the Entra admin center: App registrations → {client_id} → API permissions → Grant admin consent.)"
    );
    if account.flow == Flow::ClientCredentials {
        let sp = "<Object ID of the Enterprise application>";
        let _ = writeln!(
            s,
            "\nApp-only access also needs the app registered in Exchange Online and given the mailbox\n\
             (Exchange Online PowerShell, as an Exchange administrator):\n  \
             Connect-ExchangeOnline -Organization {tenant}\n  \
             New-ServicePrincipal -AppId {client_id} -ObjectId <Object ID of the Enterprise application \"{client_id}\">\n  \
             Add-MailboxPermission -Identity {} -User {sp} -AccessRights FullAccess\n\
             The Object ID: Entra admin center → Enterprise applications → search for {client_id} → Object ID\n\
             (NOT the Object ID on the App registrations page: that is the application object, not its service principal).\n\
             Changes can take up to 1 hour to reach IMAP; then run `mailsync test {}`.\n\
             \nSending (`mailsync send`) as the app needs the application permission SMTP.SendAsApp:\n  \
             App registrations → {client_id} → API permissions → Add a permission → APIs my organization uses →\n  \
             Office 365 Exchange Online → Application permissions → SMTP.SendAsApp, then Grant admin consent\n  \
             (IMAP.AccessAsApp is added the same way). SMTP AUTH must be on for the mailbox:\n  \
             Set-CASMailbox -Identity {email} -SmtpClientAuthenticationDisabled $false\n\
             To send with another From address than {email}, also grant Send As on it:\n  \
             Add-RecipientPermission -Identity <that address> -Trustee {sp} -AccessRights SendAs",
            account.email,
            account.name,
            email = account.email
        );
    } else {
        let _ = writeln!(
            s,
            "\nThen {} signs in with `mailsync connect {}`.",
            account.email, account.name
        );
    }
    s
}

fn scopes_or_none(account: &Account) -> String {
    if account.oauth.scopes.is_empty() {
        "(none configured)".to_owned()
    } else {
        account.oauth.scopes.join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::consent::tests::config;

    #[test]
    fn app_only_instructions_name_the_powershell() {
        let c = config();
        let text = instructions(c.account("robot").unwrap());
        for line in [
            "Connect-ExchangeOnline -Organization 0b3b1a9e-1f7e-4b8e-9f38-6a4c43d5b100",
            "New-ServicePrincipal -AppId 66666666-7777-8888-9999-000000000000 -ObjectId <Object ID of the Enterprise application \"66666666-7777-8888-9999-000000000000\">",
            "Add-MailboxPermission -Identity robot@contoso.com -User <Object ID of the Enterprise application> -AccessRights FullAccess",
            "Enterprise applications → search for 66666666-7777-8888-9999-000000000000 → Object ID",
            "NOT the Object ID on the App registrations page",
            "up to 1 hour",
            "Application permissions → SMTP.SendAsApp",
            "Set-CASMailbox -Identity robot@contoso.com -SmtpClientAuthenticationDisabled $false",
            "Add-RecipientPermission -Identity <that address> -Trustee <Object ID of the Enterprise application> -AccessRights SendAs",
        ] {
            assert!(text.contains(line), "{line:?} missing in:\n{text}");
        }
        assert!(text.contains(&admin_consent_url(c.account("robot").unwrap()).unwrap()));
    }

    #[test]
    fn delegated_instructions_have_no_powershell() {
        let c = config();
        let text = instructions(c.account("work").unwrap());
        assert!(text.contains("adminconsent?client_id="), "{text}");
        assert!(!text.contains("New-ServicePrincipal"), "{text}");
        assert!(text.contains("`mailsync connect work`"), "{text}");
    }

    #[test]
    fn other_providers_are_told_what_to_do_instead() {
        let c = config();
        let google = instructions(c.account("gmail").unwrap());
        assert!(google.contains("Microsoft Entra concept"), "{google}");
        assert!(google.contains("OAuth consent screen"), "{google}");
        assert!(google.contains("Admin console"), "{google}");
        assert!(!google.contains("adminconsent"), "{google}");
        let custom = instructions(c.account("local").unwrap());
        assert!(custom.contains("Microsoft Entra concept"), "{custom}");
        assert!(custom.contains("imap"), "{custom}");
    }
}
