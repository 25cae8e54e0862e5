//! `mailsync-testenv`: runs the test environment for a demo.
//!
//! `mailsync-testenv demo [--messages N] [--profile full|exchange] [--dir DIR]
//! [--max-size BYTES] [-- COMMAND...]` starts the identity provider and a Dovecot, seeds
//! a corpus for `jane@example.com`, writes a mailsync `config.toml` into DIR, then runs
//! COMMAND with `MAILSYNC_CONFIG` set (`{config}` in its arguments is replaced by the
//! path) or waits for Ctrl-C.
//!
//! `mailsync-testenv bench …` runs the benchmark against mbsync and OfflineIMAP (see
//! `bench/mod.rs` and BENCHMARKS.md).

mod bench;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use mailsync_testenv::{
    Corpus, CorpusOptions, Dovecot, DovecotOptions, Idp, MailsyncConfig, Profile, Role,
    SeedMessage, write_mailsync_config,
};

const USAGE: &str = "usage: mailsync-testenv demo [--messages N] [--profile full|exchange] [--dir DIR] [--max-size BYTES] [-- COMMAND...]";
const EMAIL: &str = "jane@example.com";

struct Args {
    messages: usize,
    profile: Profile,
    dir: Option<PathBuf>,
    max_size: Option<usize>,
    command: Vec<String>,
}

fn parse(mut argv: impl Iterator<Item = String>) -> Result<Args> {
    match argv.next().as_deref() {
        Some("demo") => {}
        Some("-h" | "--help") | None => bail!("{USAGE}"),
        Some(other) => bail!("unknown command {other:?}\n{USAGE}"),
    }
    let mut args = Args {
        messages: 300,
        profile: Profile::Full,
        dir: None,
        max_size: None,
        command: Vec::new(),
    };
    while let Some(a) = argv.next() {
        let mut value = |name: &str| argv.next().with_context(|| format!("{name} needs a value"));
        match a.as_str() {
            "--messages" => args.messages = value("--messages")?.parse()?,
            "--profile" => {
                args.profile = value("--profile")?.parse().map_err(anyhow::Error::msg)?
            }
            "--dir" => args.dir = Some(PathBuf::from(value("--dir")?)),
            "--max-size" => args.max_size = Some(value("--max-size")?.parse()?),
            "--" => {
                args.command = argv.collect();
                break;
            }
            "-h" | "--help" => bail!("{USAGE}"),
            other => bail!("unknown option {other:?}\n{USAGE}"),
        }
    }
    Ok(args)
}

async fn seed(dovecot: &Dovecot, args: &Args) -> Result<()> {
    let started = Instant::now();
    let corpus = Corpus::generate(&CorpusOptions {
        seed: 42,
        count: args.messages,
        max_size: args.max_size,
    });
    for role in [Role::Inbox, Role::Archive, Role::Trash] {
        let msgs: Vec<SeedMessage> = corpus
            .iter()
            .filter(|m| m.role == role)
            .map(SeedMessage::from)
            .collect();
        let n = msgs.len();
        let bytes: usize = msgs.iter().map(|m| m.bytes.len()).sum();
        dovecot
            .seed_fast(EMAIL, role.default_folder(), msgs)
            .await?;
        println!(
            "  seeded {n:>6} messages ({:.1} MB) into {}",
            bytes as f64 / 1e6,
            role.default_folder()
        );
    }
    println!("  seeding took {:.2?}", started.elapsed());
    Ok(())
}

async fn run(args: Args) -> Result<i32> {
    let idp = Idp::start().await;
    idp.add_user(EMAIL);
    let client_id = mailsync_testenv::random::guid();
    let secret = format!("demo~{}", mailsync_testenv::random::token(24));
    idp.add_app(&client_id, Some(&secret), Some(EMAIL));
    println!("identity provider: {}", idp.base_url());
    println!("  app {client_id} (client secret) granted mailbox {EMAIL}");

    let dovecot = Dovecot::start(DovecotOptions::new(&idp).profile(args.profile)).await?;
    println!(
        "dovecot ({} profile): imaps 127.0.0.1:{}  imap+starttls 127.0.0.1:{}  dir {}",
        args.profile.name(),
        dovecot.imaps_port(),
        dovecot.imap_port(),
        dovecot.dir().display()
    );
    seed(&dovecot, &args).await?;

    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => tempfile::Builder::new()
            .prefix("mailsync-demo-")
            .tempdir()?
            .keep(),
    };
    let config =
        MailsyncConfig::client_credentials(&dir, &idp, &dovecot, EMAIL, &client_id, &secret);
    let path = write_mailsync_config(&config)?;
    println!("mailsync config: {}", path.display());
    println!(
        "  (secret in {}, CA in {})",
        dir.join("demo.secret").display(),
        dir.join("ca.pem").display()
    );

    if args.command.is_empty() {
        println!(
            "ready; MAILSYNC_CONFIG={} — press Ctrl-C to stop",
            path.display()
        );
        tokio::signal::ctrl_c().await?;
        println!("stopping");
        return Ok(0);
    }
    let config_str = path.display().to_string();
    let argv: Vec<String> = args
        .command
        .iter()
        .map(|a| a.replace("{config}", &config_str))
        .collect();
    println!("running: {}", argv.join(" "));
    let status = tokio::process::Command::new(&argv[0])
        .args(&argv[1..])
        .env("MAILSYNC_CONFIG", &path)
        .status()
        .await
        .with_context(|| format!("run {}", argv[0]))?;
    println!("command exited: {status}");
    drop(dovecot);
    drop(idp);
    Ok(status.code().unwrap_or(1))
}

#[tokio::main]
async fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some("bench") {
        return match bench::main(std::env::args().skip(2)).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("mailsync-testenv bench: {e:#}");
                ExitCode::from(2)
            }
        };
    }
    let args = match parse(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    match run(args).await {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            eprintln!("mailsync-testenv: {e:#}");
            ExitCode::from(2)
        }
    }
}
