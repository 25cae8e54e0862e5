//! One file per subcommand. Each returns an [`Exit`] status or a [`CommandError`];
//! `main.rs` maps them to the process exit code (0 ok, 1 partial failure, 2 fatal).

pub mod completions;
pub mod connect;
pub mod consent_url;
pub mod folders;
pub mod send;
pub mod status;
pub mod stop;
pub mod sync;
pub mod test;

use crate::config::{Account, Config, ConfigError};

/// How a command ended, as the process exit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    Ok = 0,
    Partial = 1,
    Fatal = 2,
}

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Sync(#[from] crate::sync::SyncError),
    #[error("{0}")]
    Usage(String),
    #[error("cannot write output: {0}")]
    Output(#[from] std::io::Error),
}

/// The accounts a command applies to: the one named, or all of them.
pub fn select_accounts<'a>(
    config: &'a Config,
    name: Option<&str>,
) -> Result<Vec<&'a Account>, CommandError> {
    match name {
        Some(n) => config.accounts.get(n).map(|a| vec![a]).ok_or_else(|| {
            CommandError::Usage(format!(
                "no account named {n:?} in {} (accounts: {})",
                config.path.display(),
                account_names(config)
            ))
        }),
        None if config.accounts.is_empty() => Err(CommandError::Usage(format!(
            "{} has no [accounts.NAME] table; add one (see config.example.toml) or run `mailsync connect`",
            config.path.display()
        ))),
        None => Ok(config.accounts.values().collect()),
    }
}

fn account_names(config: &Config) -> String {
    if config.accounts.is_empty() {
        "none".to_owned()
    } else {
        config
            .accounts
            .keys()
            .cloned()
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Bytes for people: 1.4 MB, 812 kB, 37 B.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}
