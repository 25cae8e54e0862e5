//! Shell completions and the man pages come from the same clap definitions as
//! `--help`: bash takes the script and completes with it; `man` renders every page.

use std::process::Command;

fn mailsync(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_mailsync"))
        .args(args)
        .env_remove("MAILSYNC_CONFIG")
        .output()
        .expect("run mailsync");
    assert!(out.status.success(), "mailsync {args:?}: {out:?}");
    String::from_utf8(out.stdout).expect("UTF-8")
}

/// bash completes subcommands and their options from the generated script; zsh and
/// fish scripts are made too (those shells are not installed to run them here).
#[test]
fn bash_completes_subcommands_and_options() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("mailsync.bash");
    std::fs::write(&script, mailsync(&["completions", "bash"])).unwrap();
    let complete = |words: &str, cword: usize| {
        let out = Command::new("bash")
            .arg("-c")
            .arg(format!(
                "source {}; COMP_WORDS=({words}); COMP_CWORD={cword}; _mailsync mailsync \"${{COMP_WORDS[$COMP_CWORD]}}\" \"${{COMP_WORDS[$COMP_CWORD-1]}}\"; echo \"${{COMPREPLY[@]}}\"",
                script.display()
            ))
            .output()
            .expect("run bash");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    assert_eq!(complete("mailsync se", 1), "send");
    assert_eq!(complete("mailsync send --fl", 2), "--flush");
    let subcommands = complete("mailsync ''", 1);
    for s in [
        "connect",
        "test",
        "sync",
        "run",
        "status",
        "stop",
        "send",
        "completions",
        "man",
    ] {
        assert!(
            subcommands.split(' ').any(|w| w == s),
            "{s} missing: {subcommands}"
        );
    }
    assert!(mailsync(&["completions", "zsh"]).starts_with("#compdef mailsync"));
    assert!(mailsync(&["completions", "fish"]).contains("complete -c mailsync"));
}

/// mailsync(1) and a page for each subcommand it names render with man(1).
#[test]
fn man_renders_every_page() {
    let dir = tempfile::tempdir().unwrap();
    let render = |args: &[&str]| {
        let page = dir.path().join("page.1");
        std::fs::write(&page, mailsync(args)).unwrap();
        let out = Command::new("man")
            .arg("-l")
            .arg(&page)
            .env("MANWIDTH", "100")
            .env("MANPAGER", "cat")
            .output()
            .expect("run man (Debian man-db)");
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let main = render(&["man"]);
    assert!(
        main.contains("SYNOPSIS") && main.contains("SUBCOMMANDS"),
        "{main}"
    );
    for sub in [
        "connect", "test", "folders", "sync", "send", "status", "stop", "run",
    ] {
        assert!(
            main.contains(&format!("mailsync-{sub}(1)")),
            "{sub} not named: {main}"
        );
        let page = render(&["man", sub]);
        assert!(page.contains(&format!("mailsync-{sub}")), "{page}");
    }
    let send = render(&["man", "send"]);
    assert!(
        send.contains("--flush") && send.contains("sendmail"),
        "{send}"
    );
}
