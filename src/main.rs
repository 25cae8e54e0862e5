//! The `mailsync` binary: parse the command line, set up logging, dispatch to
//! `mailsync::commands`, and map the outcome to the exit code (0 ok, 1 partial, 2 fatal).

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::prelude::*;

use mailsync::cli::{Cli, Command};
use mailsync::commands::{self, Exit};
use mailsync::config;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Made from the clap definitions alone: no config, no runtime.
    match &cli.command {
        Command::Completions(args) => return finish(commands::completions::print(args)),
        Command::Man(args) => return finish(commands::completions::man(args)),
        _ => {}
    }
    init_logging(&cli);
    let path = cli.config.clone().unwrap_or_else(config::default_path);
    // One-shot commands run on one thread: fewer wake-ups between threads, less CPU.
    // The daemon, with an account per task, gets a thread per core.
    let runtime = if matches!(cli.command, Command::Run) {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            eprintln!("mailsync: cannot start the async runtime: {e}");
            return ExitCode::from(Exit::Fatal as u8);
        }
    };
    // Commands that report a broken config themselves, as a step.
    match &cli.command {
        Command::Test(args) => return finish(runtime.block_on(commands::test::run(&path, args))),
        // connect creates or edits the file, so it reads it itself.
        Command::Connect(args) => {
            return finish(runtime.block_on(commands::connect::run(&path, args)));
        }
        // stop edits the file, and must work when it no longer loads.
        Command::Stop(args) => return finish(runtime.block_on(commands::stop::run(&path, args))),
        // The daemon loads (and reloads) the config itself.
        Command::Run => return finish(runtime.block_on(mailsync::daemon::run(&path))),
        _ => {}
    }
    let config = match config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("mailsync: {e}");
            return ExitCode::from(Exit::Fatal as u8);
        }
    };
    let result = runtime.block_on(async {
        match &cli.command {
            Command::Folders(args) => commands::folders::run(&config, args).await,
            Command::Sync(args) => commands::sync::run(&config, args, cli.quiet).await,
            Command::ConsentUrl(args) => commands::consent_url::run(&config, args).await,
            Command::Status(args) => commands::status::run(&config, args).await,
            Command::Send(args) => commands::send::run(&config, args).await,
            Command::Test(_)
            | Command::Connect(_)
            | Command::Stop(_)
            | Command::Run
            | Command::Completions(_)
            | Command::Man(_) => {
                unreachable!("handled above")
            }
        }
    });
    finish(result)
}

fn finish(result: Result<Exit, commands::CommandError>) -> ExitCode {
    match result {
        Ok(exit) => ExitCode::from(exit as u8),
        Err(e) => {
            eprintln!("mailsync: {e}");
            ExitCode::from(Exit::Fatal as u8)
        }
    }
}

fn init_logging(cli: &Cli) {
    let default = match (cli.quiet, cli.verbose) {
        (true, _) => "error",
        (_, 0) => "warn",
        (_, 1) => "info",
        (_, 2) => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    // async-imap logs every command verbatim at trace level, AUTHENTICATE's token
    // included: never let its trace output through, whatever RUST_LOG says.
    let no_imap_trace = tracing_subscriber::filter::filter_fn(|meta| {
        !(meta.target().starts_with("async_imap") && *meta.level() == tracing::Level::TRACE)
    });
    // Under systemd, stderr goes to the journal, which stamps every line itself.
    let journal = std::env::var_os("JOURNAL_STREAM").is_some();
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal() && !journal);
    let layer = if journal {
        layer.without_time().boxed()
    } else {
        layer.boxed()
    };
    let hint = filter.max_level_hint();
    tracing_subscriber::registry()
        .with(layer.with_filter(filter).with_filter(no_imap_trace))
        .init();
    // async-imap logs through the `log` crate, whose records are only built when
    // log's global maximum lets them through. The filter_fn above hides the level from
    // tracing-log, which then allows everything: async-imap formatted every response
    // buffer as UTF-8 for a trace line nobody would see (~2 % of an initial sync's
    // CPU). Cap it at what the filter can show, and at debug (trace of `log` users is
    // async-imap's, never shown).
    let cap = match hint {
        Some(l) if l == tracing::level_filters::LevelFilter::OFF => log::LevelFilter::Off,
        Some(l) if l == tracing::level_filters::LevelFilter::ERROR => log::LevelFilter::Error,
        Some(l) if l == tracing::level_filters::LevelFilter::WARN => log::LevelFilter::Warn,
        Some(l) if l == tracing::level_filters::LevelFilter::INFO => log::LevelFilter::Info,
        _ => log::LevelFilter::Debug,
    };
    log::set_max_level(cap);
}
