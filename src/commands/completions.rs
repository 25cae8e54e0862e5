//! `mailsync completions SHELL` and the man pages (`mailsync man [COMMAND]`), both made
//! from the clap definitions in `cli.rs`, so they never disagree with `--help`.

use std::io::Write;

use clap::CommandFactory;

use super::{CommandError, Exit};
use crate::cli::{Cli, CompletionsArgs, ManArgs};

/// Writes the completion script for the shell to standard output.
pub fn print(args: &CompletionsArgs) -> Result<Exit, CommandError> {
    let mut command = Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(args.shell, &mut command, "mailsync", &mut out);
    std::io::stdout().write_all(&out)?;
    Ok(Exit::Ok)
}

/// Writes a man page as roff to standard output: mailsync(1), or mailsync-COMMAND(1)
/// for a subcommand (the main page refers to those).
pub fn man(args: &ManArgs) -> Result<Exit, CommandError> {
    let main = Cli::command();
    let command = match &args.command {
        None => main,
        Some(name) => {
            let sub = main.find_subcommand(name).ok_or_else(|| {
                CommandError::Usage(format!("no subcommand {name:?} (see mailsync --help)"))
            })?;
            // clap takes a name for the whole process (&'static str); this process
            // prints one page and ends.
            let page: &'static str = format!("mailsync-{}", sub.get_name()).leak();
            sub.clone().name(page)
        }
    };
    let mut out = Vec::new();
    clap_mangen::Man::new(command).render(&mut out)?;
    std::io::stdout().write_all(&out)?;
    Ok(Exit::Ok)
}
