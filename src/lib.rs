//! mailsync keeps chosen folders of an IMAP mailbox in a local Maildir, logging in with
//! OAuth 2.0 (SASL XOAUTH2 / OAUTHBEARER) and keeping its sync state in SQLite.
//!
//! The module map:
//! - [`config`]: TOML → a validated [`config::Config`]; folder mapping rules (pure).
//! - [`auth`]: OAuth token acquisition and refresh, the XOAUTH2 string, secrets.
//! - [`imap`]: the only module that speaks IMAP (session, capabilities, fetch, the
//!   modified UTF-7 codec).
//! - [`smtp`]: the only module that speaks SMTP (submission, replies, refusals
//!   explained); [`send`]: the outbox that `mailsync send` and the daemon send.
//! - [`tls`], [`sasl`], [`server_text`]: what IMAP and SMTP share: verified TLS, the
//!   OAuth SASL strings, and server text made safe to show.
//! - [`maildir`]: atomic delivery, flag ↔ file-name mapping.
//! - [`flags`], [`headers`]: leaf types every layer uses: the system flags, and the
//!   few header fields kept (Message-ID, From, Subject, Date) with their parser.
//! - [`state`]: SQLite schema, migrations and the account lock.
//! - [`sync`]: a pass observes the server, plans with one pure function
//!   ([`sync::plan::plan`]) and applies the plan, journalling each effect.
//! - [`retry`]: how each failure is retried, decided where the error is made.
//! - [`commands`]: one file per subcommand; `main.rs` only dispatches.
#![forbid(unsafe_code)]

pub mod auth;
pub mod cli;
pub mod commands;
pub mod config;
pub mod daemon;
pub mod flags;
pub mod headers;
pub mod imap;
pub mod maildir;
pub mod retry;
pub mod sasl;
pub mod secret;
pub mod send;
pub mod server_text;
pub mod smtp;
pub mod state;
pub mod sync;
pub mod tls;
