//! `mailsync send`: a drop-in `sendmail`. The message on standard input is queued in
//! the account's outbox, then sent at once over SMTP with the account's token. What
//! cannot go now stays queued (exit 0: the daemon or `send --flush` sends it); what the
//! server refuses for good is kept as a file and reported (exit 1 or 2).

use std::io::Read;

use clap::Args;

use super::{CommandError, Exit, select_accounts};
use crate::auth::{Sending, sending};
use crate::config::{Account, Config};
use crate::send::message::{self, Request};
use crate::send::{OnAccountError, Report, SendError, Which, flush};
use crate::state::{LockError, NewMessage, OutboxState, State, unix_now};

/// The largest message taken from standard input (Microsoft 365 takes 150 MB at
/// most, and only when an admin raised the default 35 MB).
const MAX_MESSAGE: u64 = 160 * 1024 * 1024;

#[derive(Debug, Args)]
#[command(
    after_help = "As neomutt's or mutt's sendmail: set sendmail=\"mailsync send\"; aerc: outgoing = /usr/bin/mailsync send; git send-email: sendemail.sendmailCmd = mailsync send.\nFlags of sendmail that mailsync does not use (-i, -B, -b, -F, -G, -L, -N, -O, -o…, -R, -U, -V, -X) are accepted and ignored, as msmtp does."
)]
pub struct SendArgs {
    /// The account (when the first argument names one), then the recipients. Without an
    /// account, the one whose address is -f or the message's From is used, or the only one
    #[arg(value_name = "ACCOUNT|RECIPIENT")]
    pub args: Vec<String>,
    /// Take the recipients from the To, Cc and Bcc fields too (Bcc is removed before sending)
    #[arg(short = 't')]
    pub read_recipients: bool,
    /// The envelope sender (MAIL FROM) [default: the account's address]
    #[arg(short = 'f', value_name = "ADDRESS")]
    pub from: Option<String>,
    /// Send the queued messages now (of the account named, or of every account)
    #[arg(long, conflicts_with_all = ["read_recipients", "from"])]
    pub flush: bool,
    /// Accepted and ignored: a lone "." never ends the message here
    #[arg(short = 'i', hide = true)]
    pub ignore_dots: bool,
    #[arg(short = 'o', value_name = "OPTION", hide = true)]
    pub option: Vec<String>,
    #[arg(short = 'B', value_name = "TYPE", hide = true)]
    pub body_type: Option<String>,
    #[arg(short = 'b', value_name = "MODE", hide = true)]
    pub mode: Option<String>,
    #[arg(short = 'F', value_name = "NAME", hide = true)]
    pub full_name: Option<String>,
    #[arg(short = 'G', hide = true)]
    pub gateway: bool,
    #[arg(short = 'L', value_name = "TAG", hide = true)]
    pub log_tag: Option<String>,
    #[arg(short = 'N', value_name = "DSN", hide = true)]
    pub dsn: Option<String>,
    #[arg(short = 'O', value_name = "OPTION", hide = true)]
    pub long_option: Vec<String>,
    #[arg(short = 'R', value_name = "RETURN", hide = true)]
    pub dsn_return: Option<String>,
    #[arg(short = 'U', hide = true)]
    pub initial: bool,
    #[arg(short = 'V', value_name = "ENVID", hide = true)]
    pub envid: Option<String>,
    #[arg(short = 'X', value_name = "LOGFILE", hide = true)]
    pub log_file: Option<String>,
}

pub async fn run(config: &Config, args: &SendArgs) -> Result<Exit, CommandError> {
    let (named, recipients) = match args.args.first() {
        Some(first) if config.accounts.contains_key(first) => {
            (Some(first.as_str()), &args.args[1..])
        }
        _ => (None, &args.args[..]),
    };
    if args.flush {
        if !recipients.is_empty() {
            return Err(CommandError::Usage(format!(
                "--flush takes an account, not recipients ({:?} is no account in {})",
                recipients[0],
                config.path.display()
            )));
        }
        return flush_all(config, named).await;
    }

    let mut raw = Vec::new();
    std::io::stdin()
        .take(MAX_MESSAGE + 1)
        .read_to_end(&mut raw)?;
    if raw.len() as u64 > MAX_MESSAGE {
        return Err(CommandError::Usage(format!(
            "the message is larger than {} MB, more than any server takes; send large files as links",
            MAX_MESSAGE / 1024 / 1024
        )));
    }
    let header_from = message::from_address(&raw);
    let account = choose(config, named, args.from.as_deref(), header_from.as_deref())?;
    if account.smtp.is_none() {
        return Err(CommandError::Usage(crate::send::no_smtp(account)));
    }
    let granted = State::open(&config.daemon.state_dir)
        .and_then(|s| s.grant_summary(&account.name))
        .ok()
        .flatten()
        .map(|g| g.scopes)
        .unwrap_or_default();
    if let Sending::NotGranted(why) = sending(account, &granted) {
        return Err(CommandError::Usage(format!(
            "account {} may not send mail: {why}",
            account.name
        )));
    }
    let sender = args.from.clone().unwrap_or_else(|| account.email.clone());
    if !message::is_address(&sender) {
        return Err(CommandError::Usage(format!(
            "-f {sender:?} is not an email address"
        )));
    }
    let domain = sender.rsplit_once('@').map_or("localhost", |(_, d)| d);
    let prepared = message::prepare(
        &raw,
        &Request {
            recipients_from_headers: args.read_recipients,
            recipients: recipients.to_vec(),
        },
        domain,
        unix_now(),
        &unique(),
    )
    .map_err(|e| CommandError::Usage(e.to_string()))?;
    drop(raw);

    let mut state = State::open(&config.daemon.state_dir).map_err(crate::sync::SyncError::from)?;
    let id = state
        .enqueue(
            &account.name,
            &NewMessage {
                sender: &sender,
                recipients: &prepared.recipients,
                message_id: &prepared.message_id,
                message: &prepared.message,
            },
        )
        .map_err(crate::sync::SyncError::from)?;
    drop(state);
    tracing::debug!(account = %account.name, id, message_id = %prepared.message_id, recipients = prepared.recipients.len(), "queued");

    let report = match flush(
        account,
        &config.daemon,
        Which::One(id),
        OnAccountError::Fail,
    )
    .await
    {
        Ok(r) => r,
        // Queued is promised: another sender (the daemon) is at work and takes it.
        Err(SendError::Lock(e @ LockError::OutboxBusy { .. })) => {
            say_waits(account, &e.to_string());
            return Ok(Exit::Ok);
        }
        Err(e) => {
            return Err(CommandError::Usage(format!(
                "the message is queued, but: {e}"
            )));
        }
    };
    if report.sent.iter().all(|(i, _)| *i != id)
        && report.failed.is_empty()
        && report.deferred.is_empty()
    {
        // Not this process's to send after all: another sender took it while this one
        // waited for the outbox. Say what became of it.
        return Ok(taken_by_another(config, account, id));
    }
    Ok(tell(account, id, &report))
}

/// What another sender made of message `id`.
fn taken_by_another(config: &Config, account: &Account, id: i64) -> Exit {
    let entry = State::open(&config.daemon.state_dir).and_then(|s| s.outbox_entry(id));
    match entry {
        Ok(Some(e)) if e.state == OutboxState::Failed => {
            say_kept(
                &e.last_error.unwrap_or_default(),
                &crate::send::failed_path(&config.daemon.state_dir, &account.name, id),
            );
            Exit::Fatal
        }
        Ok(Some(e)) if e.state == OutboxState::Queued => {
            say_waits(account, &e.last_error.unwrap_or_default());
            Exit::Ok
        }
        _ => {
            tracing::info!(account = %account.name, id, "sent by another mailsync process");
            Exit::Ok
        }
    }
}

/// The line for a message that waits in the outbox.
fn say_waits(account: &Account, why: &str) {
    eprintln!(
        "mailsync: not sent yet ({why}); it waits in account {}'s outbox: the daemon sends it, or run `mailsync send --flush`",
        account.name
    );
}

/// The line for a message refused for good.
fn say_kept(why: &str, path: &std::path::Path) {
    eprintln!(
        "mailsync: not sent: {why}; the message is kept in {}",
        path.display()
    );
}

/// What `send` says about its own message, and the exit code.
fn tell(account: &Account, id: i64, report: &Report) -> Exit {
    let sent = report.sent.iter().any(|(i, _)| *i == id);
    for (_, why, path) in &report.failed {
        say_kept(why, path);
    }
    for (_, why) in &report.deferred {
        say_waits(account, why);
    }
    if let Some(e) = &report.copy_error {
        eprintln!("mailsync: sent, but the copy for the Sent folder waits: {e}");
    }
    match (report.failed.is_empty(), sent) {
        (true, _) => Exit::Ok,
        (false, true) => Exit::Partial,
        (false, false) => Exit::Fatal,
    }
}

async fn flush_all(config: &Config, named: Option<&str>) -> Result<Exit, CommandError> {
    let mut exit = Exit::Ok;
    for account in select_accounts(config, named)? {
        let report = flush(account, &config.daemon, Which::All, OnAccountError::Defer)
            .await
            .map_err(|e| CommandError::Usage(e.to_string()))?;
        let (sent, deferred, failed) = (
            report.sent.len(),
            report.deferred.len(),
            report.failed.len(),
        );
        println!(
            "{}: sent {sent}, waiting {deferred}, failed {failed}",
            account.name
        );
        for (_, why, path) in &report.failed {
            eprintln!(
                "mailsync: {}: not sent: {why}; kept in {}",
                account.name,
                path.display()
            );
        }
        if let Some(why) = &report.stopped {
            eprintln!("mailsync: {}: {why}", account.name);
        }
        if let Some(e) = &report.copy_error {
            eprintln!("mailsync: {}: the Sent copies wait: {e}", account.name);
        }
        if failed > 0 || deferred > 0 || report.copy_error.is_some() {
            exit = Exit::Partial;
        }
    }
    Ok(exit)
}

/// The account to send with: the one named; else the one whose address is `-f` or
/// the message's From; else the only one.
fn choose<'a>(
    config: &'a Config,
    named: Option<&str>,
    from_flag: Option<&str>,
    header_from: Option<&str>,
) -> Result<&'a Account, CommandError> {
    if let Some(name) = named {
        return Ok(&config.accounts[name]);
    }
    for address in [from_flag, header_from].into_iter().flatten() {
        if let Some(a) = config
            .accounts
            .values()
            .find(|a| a.email.eq_ignore_ascii_case(address.trim()))
        {
            return Ok(a);
        }
    }
    let all = select_accounts(config, None)?;
    match all.as_slice() {
        [one] => Ok(one),
        _ => Err(CommandError::Usage(format!(
            "several accounts ({}) and none has the address {}: name one (mailsync send ACCOUNT …)",
            all.iter()
                .map(|a| a.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            from_flag.or(header_from).unwrap_or("of the message's From")
        ))),
    }
}

/// The unique part of a Message-ID mailsync adds: the time and random bits.
fn unique() -> String {
    let mut random = [0u8; 8];
    let _ = getrandom::fill(&mut random);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let hex: String = random.iter().map(|b| format!("{b:02x}")).collect();
    format!("{nanos}.{hex}.mailsync")
}
