//! SMTP errors, each with what it means and what to do, and how it is retried
//! ([`SmtpError::retry`]), decided here once. Microsoft 365's replies get their own
//! explanations: the bare text ("5.7.3 Authentication unsuccessful") names neither the
//! cause nor the switch an admin must turn.

use std::time::Duration;

use super::reply::Reply;
use crate::retry::{Retry, throttle_hint};
use crate::tls::TlsError;

/// The step of a submission a reply answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    Greeting,
    Ehlo,
    StartTls,
    Auth,
    MailFrom,
    RcptTo(String),
    Data,
    /// The reply to the message itself, after the final dot.
    EndOfData,
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Step::Greeting => f.write_str("the greeting"),
            Step::Ehlo => f.write_str("EHLO"),
            Step::StartTls => f.write_str("STARTTLS"),
            Step::Auth => f.write_str("AUTH"),
            Step::MailFrom => f.write_str("MAIL FROM"),
            Step::RcptTo(to) => write!(f, "RCPT TO:<{to}>"),
            Step::Data => f.write_str("DATA"),
            Step::EndOfData => f.write_str("the message"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SmtpError {
    #[error("cannot connect to {host}:{port}: {source}")]
    Connect {
        host: String,
        port: u16,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(
        "{host} resolved to {addr}, which is not a loopback address: smtp_tls = \"plain\" would send the token in clear text; use \"starttls\" or \"implicit\""
    )]
    PlainNotLoopback {
        host: String,
        addr: std::net::IpAddr,
    },
    #[error(
        "{host} does not offer STARTTLS on this port; use smtp_tls = \"implicit\" (port 465) or the server's submission port (587)"
    )]
    NoStartTls { host: String },
    #[error(
        "{host} offers neither AUTH XOAUTH2 nor AUTH OAUTHBEARER (it offers: {offered}); sending with OAuth is impossible there"
    )]
    NoOAuthMechanism { host: String, offered: String },
    #[error("no answer from {host} within {}s to {step}", .after.as_secs())]
    Timeout {
        host: String,
        step: Step,
        after: Duration,
    },
    #[error("the connection to {host} was lost during {step}")]
    ConnectionLost { host: String, step: Step },
    #[error("{host} answered {step} with something that is not SMTP: {detail}")]
    Protocol {
        host: String,
        step: Step,
        detail: String,
    },
    #[error("{host} refused {step}: {reply}{}", explain(.step, .reply).map(|e| format!(" — {e}")).unwrap_or_default())]
    Refused {
        host: String,
        step: Step,
        /// Scrubbed of the credential, one line.
        reply: Reply,
    },
    #[error(
        "the message is {size} bytes, more than the {limit} bytes {host} accepts (its SIZE); send a smaller message (attachments as links)"
    )]
    TooBig { host: String, size: u64, limit: u64 },
}

impl SmtpError {
    /// How the failure is retried.
    pub fn retry(&self) -> Retry {
        match self {
            SmtpError::Connect { .. }
            | SmtpError::Timeout { .. }
            | SmtpError::ConnectionLost { .. }
            | SmtpError::Protocol { .. } => Retry::Later(None),
            SmtpError::Refused { step, reply, .. } => {
                if let Some(wait) = throttled(reply) {
                    return Retry::Later(wait);
                }
                if reply.is_transient() {
                    Retry::Later(throttle_hint(&reply.text()))
                } else if *step == Step::Auth {
                    Retry::NewToken
                } else {
                    Retry::Never
                }
            }
            // A handshake cut off or timed out is the network's; a certificate or a
            // CA file that fails is the configuration's.
            SmtpError::Tls(TlsError::Handshake { detail, .. })
                if !detail.contains("certificate") && !detail.contains("cannot set up") =>
            {
                Retry::Later(None)
            }
            SmtpError::Tls(_)
            | SmtpError::PlainNotLoopback { .. }
            | SmtpError::NoStartTls { .. }
            | SmtpError::NoOAuthMechanism { .. }
            | SmtpError::TooBig { .. } => Retry::Never,
        }
    }

    /// A refusal of this message (its sender, a recipient, its content or size), as
    /// opposed to one of the account or the server: sending it again will not help,
    /// sending others may.
    pub fn is_about_message(&self) -> bool {
        match self {
            SmtpError::TooBig { .. } => true,
            SmtpError::Refused { step, .. } => {
                matches!(
                    step,
                    Step::MailFrom | Step::RcptTo(_) | Step::Data | Step::EndOfData
                ) && self.retry() == Retry::Never
            }
            _ => false,
        }
    }
}

/// Microsoft 365's throttling, whatever the reply's class: 30 messages a minute and
/// 10,000 recipients a day per mailbox. A daily quota is waited out for an hour at a
/// time.
fn throttled(reply: &Reply) -> Option<Option<Duration>> {
    let text = reply.text().to_ascii_lowercase();
    let e = reply.enhanced().map(|e| (e.class, e.subject, e.detail));
    if text.contains("sending quota exceeded") || e == Some((5, 4, 5)) {
        return Some(Some(Duration::from_secs(60 * 60)));
    }
    if text.contains("thread limit")
        || text.contains("rate limit")
        || text.contains("ratelimit")
        || text.contains("throttl")
        || matches!(e, Some((4, 3, 2)) | Some((4, 7, 0)) | Some((4, 5, 3)))
    {
        return Some(throttle_hint(&reply.text()).or(Some(Duration::from_secs(60))));
    }
    None
}

/// What a refusal means and what to do, for the replies Microsoft 365 and Gmail give;
/// `None` when the reply says enough.
pub fn explain(step: &Step, reply: &Reply) -> Option<&'static str> {
    let text = reply.text().to_ascii_lowercase();
    let e = reply.enhanced().map(|e| (e.class, e.subject, e.detail));
    if throttled(reply).is_some() {
        return Some(
            "the server is throttling this mailbox (Microsoft 365 allows 30 messages a minute and 10,000 recipients a day): the message waits in the outbox and is sent later",
        );
    }
    if e == Some((5, 7, 139)) {
        return Some(
            "SMTP AUTH is turned off for the whole organisation or by security defaults: an admin must turn it on (Exchange Online PowerShell: Set-TransportConfig -SmtpClientAuthenticationDisabled $false; security defaults block it whatever that says: https://aka.ms/smtp_auth_disabled)",
        );
    }
    if e == Some((5, 7, 3)) || (*step == Step::Auth && text.contains("authentication unsuccessful"))
    {
        return Some(
            "SMTP AUTH is off for this mailbox, or the token lacks SMTP.Send: turn on Authenticated SMTP (Microsoft 365 admin center → Users → Active users → the user → Mail → Manage email apps, or Set-CASMailbox -Identity <address> -SmtpClientAuthenticationDisabled $false); and check that the app registration has SMTP.Send (delegated) or SMTP.SendAsApp (application), then run `mailsync connect` again",
        );
    }
    if e == Some((5, 5, 124)) || text.contains("xoauth2 user is not valid") {
        return Some(
            "the XOAUTH2 user is not the mailbox the token is for: set login_user to the mailbox's address (for app-only access, the mailbox the service principal was granted)",
        );
    }
    if e == Some((5, 7, 60)) || text.contains("sendasdenied") || text.contains("send as") {
        return Some(
            "the account may not send as this From address: send from the account's own address, or have an admin grant Send As (Add-RecipientPermission -Identity <from address> -Trustee <account address> -AccessRights SendAs)",
        );
    }
    if *step == Step::Auth && (e == Some((5, 7, 8)) || reply.code == 535) {
        return Some(
            "the server refused the token: run `mailsync test` to see whether the sign-in still works, and `mailsync connect` again if it does not",
        );
    }
    if let Step::RcptTo(_) = step
        && matches!(e, Some((5, 1, _)))
    {
        return Some("the address does not exist or does not take mail: check it");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(line: &str) -> Reply {
        let (code, text) = line.split_at(3);
        Reply {
            code: code.parse().unwrap(),
            lines: vec![text.trim_start().to_owned()],
        }
    }

    fn refused(step: Step, line: &str) -> SmtpError {
        SmtpError::Refused {
            host: "smtp.office365.com".into(),
            step,
            reply: reply(line),
        }
    }

    /// Each reply of the table in README "Sending" gets its cause and fix, and the
    /// retry that fits it.
    #[test]
    fn microsoft_refusals_name_the_cause_and_the_fix() {
        let cases: &[(Step, &str, &str, Retry)] = &[
            (
                Step::Auth,
                "535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant. Visit https://aka.ms/smtp_auth_disabled for more information.",
                "Set-TransportConfig -SmtpClientAuthenticationDisabled $false",
                Retry::NewToken,
            ),
            (
                Step::Auth,
                "535 5.7.3 Authentication unsuccessful [SN4PR0601CA0002.namprd06.prod.outlook.com]",
                "Set-CASMailbox -Identity <address> -SmtpClientAuthenticationDisabled $false",
                Retry::NewToken,
            ),
            (
                Step::Auth,
                "501 5.5.124 Authentication failed, XOAUTH2 user is not valid or does not match the auth token",
                "set login_user",
                Retry::NewToken,
            ),
            (
                Step::MailFrom,
                "550 5.7.60 SMTP; Client does not have permissions to send as this sender",
                "Add-RecipientPermission",
                Retry::Never,
            ),
            (
                Step::EndOfData,
                "554 5.2.0 STOREDRV.Submission.Exception:SendAsDeniedException.MapiExceptionSendAsDenied; Failed to process message due to a permanent exception with message Cannot submit message.",
                "grant Send As",
                Retry::Never,
            ),
            (
                Step::EndOfData,
                "432 4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded",
                "30 messages a minute",
                Retry::Later(Some(Duration::from_secs(60))),
            ),
            (
                Step::EndOfData,
                "550 5.4.5 Daily user sending quota exceeded.",
                "10,000 recipients a day",
                Retry::Later(Some(Duration::from_secs(3600))),
            ),
        ];
        for (step, line, fix, retry) in cases {
            let e = refused(step.clone(), line);
            let shown = e.to_string();
            assert!(shown.contains(fix), "{shown}");
            assert!(
                shown.contains(&line[4..20]),
                "the server's words are kept: {shown}"
            );
            assert!(!shown.contains('\n'), "one line: {shown}");
            assert_eq!(e.retry(), *retry, "{line}");
        }
        let sendas = refused(
            Step::MailFrom,
            "550 5.7.60 SMTP; Client does not have permissions to send as this sender",
        );
        assert!(sendas.is_about_message());
        assert!(!refused(Step::Auth, "535 5.7.3 Authentication unsuccessful").is_about_message());
        assert!(!refused(Step::EndOfData, "451 4.3.0 try later").is_about_message());
    }

    #[test]
    fn an_ordinary_refusal_says_only_what_the_server_said() {
        let e = refused(Step::EndOfData, "554 5.6.0 Message rejected: bad content");
        assert_eq!(
            e.to_string(),
            "smtp.office365.com refused the message: 554 5.6.0 Message rejected: bad content"
        );
        assert_eq!(e.retry(), Retry::Never);
        let e = refused(
            Step::RcptTo("nobody@example.com".into()),
            "550 5.1.1 User unknown",
        );
        assert!(e.to_string().contains("RCPT TO:<nobody@example.com>"));
        assert!(e.to_string().contains("does not exist"));
        assert_eq!(
            refused(Step::MailFrom, "451 4.3.0 later").retry(),
            Retry::Later(None)
        );
    }

    /// A handshake the network cut off waits and is tried again; a certificate that
    /// does not verify is for someone to fix.
    #[test]
    fn tls_failures_are_retried_only_when_the_network_failed() {
        let tls = |detail: &str| {
            SmtpError::Tls(TlsError::Handshake {
                host: "h".into(),
                port: 587,
                detail: detail.into(),
                hint: String::new(),
            })
        };
        assert_eq!(
            tls("no TLS handshake within 20s").retry(),
            Retry::Later(None)
        );
        assert_eq!(tls("unexpected EOF").retry(), Retry::Later(None));
        assert_eq!(
            tls("certificate verify failed: self-signed certificate").retry(),
            Retry::Never
        );
        let ca = SmtpError::Tls(TlsError::CaFile {
            path: "/x".into(),
            detail: "missing".into(),
        });
        assert_eq!(ca.retry(), Retry::Never);
    }
}
