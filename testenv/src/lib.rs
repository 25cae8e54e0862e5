//! Test environment for mailsync: a real Dovecot IMAP server on loopback ports (with SMTP
//! submission if asked), an in-process OAuth identity provider shaped like Microsoft
//! identity platform v2.0, SMTP servers for sending tests (a sink Dovecot relays to, a
//! scripted server answering like Microsoft 365), a deterministic mail corpus, and a
//! writer for mailsync's TOML config.
//!
//! Typical use in an integration test:
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use mailsync_testenv::{Dovecot, DovecotOptions, Idp};
//! let idp = Idp::start().await;
//! idp.add_app("app-1", Some("s3cret"), Some("jane@example.com"));
//! let dovecot = Dovecot::start(DovecotOptions::new(&idp)).await?;
//! dovecot.append("jane@example.com", "INBOX", b"Subject: hi\r\n\r\nhello\r\n", &["\\Seen"], None).await?;
//! # Ok(()) }
//! ```

pub mod corpus;
pub mod delay;
pub mod dovecot;
pub mod exchange_proxy;
pub mod hostile;
pub mod idp;
mod loopback;
pub mod mailsync_config;
pub mod random;
pub mod smtp_script;
pub mod smtp_sink;
mod smtp_wire;
pub mod utf7;
pub mod xoauth2;

pub use chrono;
pub use corpus::{Corpus, CorpusMessage, CorpusOptions, MalformedMessage, Role};
pub use delay::DelayProxy;
pub use dovecot::{
    Dovecot, DovecotOptions, EXCHANGE_CAPABILITIES, MailboxSpec, MoveMode, Profile, SeedMessage,
    ServerMessage,
};
pub use exchange_proxy::{ExchangeProxy, Fault};
pub use hostile::{HostileOptions, HostileServer};
pub use idp::{Idp, TokenFailure};
pub use mailsync_config::{MailsyncConfig, write_mailsync_config};
pub use smtp_script::{ScriptedSmtp, SmtpTls};
pub use smtp_sink::SmtpSink;
pub use smtp_wire::Received;
pub use xoauth2::XOAuth2;
