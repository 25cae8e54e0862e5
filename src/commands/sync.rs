//! `mailsync sync`: one pass now, with a progress bar per folder on a terminal (plain
//! lines otherwise) and a summary per account; with `-q`, only what failed (stderr).

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use super::{CommandError, Exit, human_bytes, select_accounts};
use crate::cli::SyncArgs;
use crate::config::Config;
use crate::sync::{FolderReport, Progress, Quiet, SyncOptions, sync_account};

pub async fn run(config: &Config, args: &SyncArgs, quiet: bool) -> Result<Exit, CommandError> {
    let accounts = select_accounts(config, args.account.as_deref())?;
    let mut out = std::io::stdout().lock();
    let (mut ok, mut partial, mut fatal) = (0, 0, 0);
    for account in accounts {
        // Exit 0 having synced nothing would look like success.
        if account.folders.is_empty() {
            eprintln!(
                "mailsync: account {0} maps no folders, so there is nothing to sync: `mailsync folders {0}` lists the server's folders; map them under [accounts.{0}.folders] in {1}",
                account.name,
                config.path.display()
            );
            partial += 1;
            continue;
        }
        let progress: Arc<dyn Progress> = if quiet {
            Arc::new(Quiet)
        } else if std::io::stderr().is_terminal() {
            Arc::new(Bars::new(&account.name))
        } else {
            Arc::new(Lines {
                account: account.name.clone(),
            })
        };
        let options = SyncOptions {
            only_folder: args.folder.clone(),
            progress,
            dry_run: args.dry_run,
            allow_mass_delete: args.allow_mass_delete,
            allow_mass_upload: args.allow_mass_upload,
            ..SyncOptions::default()
        };
        match sync_account(config, account, &options).await {
            Ok(report) if report.dry_run.is_some() => {
                for line in report.dry_run.iter().flatten() {
                    writeln!(out, "{}/{line}", account.name)?;
                }
                for f in &report.folders {
                    if let Some(e) = &f.error {
                        writeln!(out, "{}/{}: FAILED: {e}", account.name, f.local)?;
                    }
                }
                writeln!(out, "{}: dry run: nothing was changed", account.name)?;
                if report.failed_folders() > 0 {
                    partial += 1;
                } else {
                    ok += 1;
                }
            }
            Ok(report) => {
                let (mut fetched, mut flags, mut removed, mut moved, mut bytes) = (0, 0, 0, 0, 0);
                for f in &report.folders {
                    match &f.error {
                        None if quiet => {}
                        Some(e) if quiet => {
                            eprintln!("mailsync: {}/{}: {e}", account.name, f.local)
                        }
                        None => writeln!(
                            out,
                            "{}/{}: fetched {}, flag updates {}, removed {}, moved in {}, {}{}",
                            account.name,
                            f.local,
                            f.fetched,
                            f.flag_updates,
                            f.removed,
                            f.moved_in,
                            human_bytes(f.bytes),
                            sent(f)
                        )?,
                        Some(e) => writeln!(out, "{}/{}: FAILED: {e}", account.name, f.local)?,
                    }
                    for why in &f.refused {
                        eprintln!(
                            "mailsync: {}/{}: not uploaded: {why}",
                            account.name, f.local
                        );
                    }
                    fetched += f.fetched;
                    flags += f.flag_updates;
                    removed += f.removed;
                    moved += f.moved_in;
                    bytes += f.bytes;
                }
                if !quiet {
                    writeln!(
                        out,
                        "{}: fetched {fetched}, flag updates {flags}, removed {removed}, moved {moved}, {} in {:.1} s",
                        account.name,
                        human_bytes(bytes),
                        report.elapsed.as_secs_f64()
                    )?;
                }
                if report.failed_folders() > 0 {
                    partial += 1;
                } else {
                    ok += 1;
                }
            }
            Err(e) => {
                eprintln!("mailsync: {}: {e}", account.name);
                fatal += 1;
            }
        }
    }
    Ok(match (ok, partial, fatal) {
        (_, 0, 0) => Exit::Ok,
        (0, 0, _) => Exit::Fatal,
        _ => Exit::Partial,
    })
}

/// What a two-way pass sent to the server from a folder, if anything.
fn sent(f: &FolderReport) -> String {
    let parts: Vec<String> = [
        (f.pushed_flags, "flags"),
        (f.deleted, "deleted"),
        (f.moved_out, "moved"),
        (f.uploaded, "uploaded"),
    ]
    .iter()
    .filter(|(n, _)| *n > 0)
    .map(|(n, what)| format!("{what} {n}"))
    .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("; sent: {}", parts.join(", "))
    }
}

/// One bar per folder, drawn on stderr.
struct Bars {
    account: String,
    multi: MultiProgress,
    bars: Mutex<HashMap<String, (ProgressBar, u64)>>,
}

impl Bars {
    fn new(account: &str) -> Bars {
        Bars {
            account: account.to_owned(),
            multi: MultiProgress::new(),
            bars: Mutex::new(HashMap::new()),
        }
    }
}

impl Progress for Bars {
    fn folder_started(&self, local: &str, to_fetch: u64) {
        let bar = self.multi.add(ProgressBar::new(to_fetch));
        let style =
            ProgressStyle::with_template("{prefix:>24} [{bar:30}] {pos}/{len} {msg} {elapsed}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
        bar.set_style(style);
        bar.set_prefix(format!("{}/{local}", self.account));
        if let Ok(mut bars) = self.bars.lock() {
            bars.insert(local.to_owned(), (bar, 0));
        }
    }
    fn fetched(&self, local: &str, messages: u64, bytes: u64) {
        if let Ok(mut bars) = self.bars.lock()
            && let Some((bar, total)) = bars.get_mut(local)
        {
            *total += bytes;
            bar.inc(messages);
            bar.set_message(human_bytes(*total));
        }
    }
    fn folder_finished(&self, report: &FolderReport) {
        if let Ok(mut bars) = self.bars.lock()
            && let Some((bar, _)) = bars.remove(&report.local)
        {
            bar.finish_and_clear();
        }
    }
}

/// Plain lines for logs and pipes.
struct Lines {
    account: String,
}

impl Progress for Lines {
    fn folder_started(&self, local: &str, to_fetch: u64) {
        if to_fetch > 0 {
            eprintln!("{}/{local}: fetching {to_fetch} messages", self.account);
        }
    }
}
