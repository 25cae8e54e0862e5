//! The command line, as clap definitions. `main.rs` parses it and dispatches.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "mailsync",
    version,
    about = "Keeps chosen IMAP folders in a local Maildir, logging in with OAuth 2.0",
    long_about = None
)]
pub struct Cli {
    /// Config file [default: $MAILSYNC_CONFIG, /etc/mailsync/config.toml for root,
    /// else $XDG_CONFIG_HOME/mailsync/config.toml]
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// More log output (-v info, -vv debug, -vvv trace); RUST_LOG overrides
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Only errors
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Sign in (device code, browser, or app-only client credentials), prove it with an
    /// IMAP login, store the tokens encrypted, and write the account and its default
    /// folder mappings into the config (keeping the rest of the file as it is)
    Connect(Box<crate::commands::connect::ConnectArgs>),
    /// List the remote folders: decoded names, special-use roles, message counts, and
    /// the local folder each is mapped to
    Folders(FoldersArgs),
    /// Run one sync pass now for every mapped folder (or one account / one folder)
    Sync(SyncArgs),
    /// Check an account step by step (config, DNS, TCP, TLS, token, capabilities,
    /// AUTHENTICATE, LIST, each mapped folder); every failure says its cause and fix
    Test(crate::commands::test::TestArgs),
    /// Print the Entra admin-consent URL, and for app-only access the Exchange Online
    /// PowerShell that registers the service principal and grants the mailbox
    ConsentUrl(crate::commands::consent_url::ConsentUrlArgs),
    /// Per account and folder: what the daemon is doing, last sync, counts, last error,
    /// token status and expiry (never a token); reads only the local state
    Status(crate::commands::status::StatusArgs),
    /// The daemon: keep every account's mapped folders in sync (IDLE on the Inbox,
    /// polling for the rest), reloading the config when it changes or on SIGHUP
    Run,
    /// Send mail as an account: a drop-in sendmail (message on standard input) over SMTP
    /// with the account's OAuth token; what cannot go now waits in the outbox
    Send(Box<crate::commands::send::SendArgs>),
    /// Print shell completions: `mailsync completions bash >
    /// /etc/bash_completion.d/mailsync` (zsh: a `_mailsync` file in $fpath; fish:
    /// ~/.config/fish/completions/mailsync.fish)
    Completions(CompletionsArgs),
    /// Print a man page (roff) made from the same definitions as --help: mailsync(1), or
    /// mailsync-COMMAND(1) (`mailsync man send | man -l -`)
    Man(ManArgs),
    /// Disconnect an account: delete its tokens (revoking them at Google), its sync
    /// state and its tables in the config; the local mail stays unless --purge
    Stop(crate::commands::stop::StopArgs),
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub struct ManArgs {
    /// A subcommand, for its own page
    pub command: Option<String>,
}

#[derive(Debug, Args)]
pub struct FoldersArgs {
    /// The account (default: every account)
    pub account: Option<String>,
    /// Print JSON instead of a table
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct SyncArgs {
    /// The account (default: every account)
    pub account: Option<String>,
    /// Only this local folder (a key of [accounts.NAME.folders])
    #[arg(long, value_name = "LOCAL")]
    pub folder: Option<String>,
    /// Print what the pass would change on each side (the local Maildir and, for
    /// direction = "both", the server), and change nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Let this pass delete or move away more of a server folder than
    /// max_delete_percent / max_delete_count allow (two-way accounts)
    #[arg(long)]
    pub allow_mass_delete: bool,
    /// Let this pass upload more new local messages to a server folder than the same
    /// limits allow (two-way accounts; files the server does not have, such as a
    /// Maildir written by another program)
    #[arg(long)]
    pub allow_mass_upload: bool,
}
