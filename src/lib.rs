//! mailsync keeps chosen folders of an IMAP mailbox in a local Maildir, logging in with
//! OAuth 2.0 (SASL XOAUTH2 / OAUTHBEARER) and keeping its sync state in SQLite.
//!
//! The module map:
//! - [`config`]: TOML → a validated [`config::Config`]; folder mapping rules (pure).
//! - [`auth`]: OAuth token acquisition and refresh, the XOAUTH2 string, secrets.
//! - [`imap`]: the only module that speaks IMAP (session, capabilities, fetch, the
//!   modified UTF-7 codec).
//! - [`maildir`]: atomic delivery, flag ↔ file-name mapping.
//! - [`state`]: SQLite schema, migrations and the account lock.
//! - [`sync`]: the pure model and planner, and the executor that applies plans.
//! - [`retry`]: how each failure is retried, decided where the error is made.
//! - [`commands`]: one file per subcommand; `main.rs` only dispatches.
#![forbid(unsafe_code)]

pub mod auth;
pub mod cli;
pub mod commands;
pub mod config;
pub mod daemon;
pub mod imap;
pub mod maildir;
pub mod retry;
pub mod secret;
pub mod state;
pub mod sync;
