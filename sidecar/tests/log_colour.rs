//! Plain log lines carry ANSI colours only on a terminal, and never with `NO_COLOR` set: the
//! real binary, with its stderr in a pipe and on a pseudo-terminal (util-linux `script`; the
//! terminal test skips without it). The app fails to import, so the server logs an error and
//! exits by itself.
#![allow(clippy::unwrap_used)]

mod support;

use std::io::Write;
use std::process::{Command, Output, Stdio};

const ESC: u8 = 0x1b;
const APP: &str = "broken:application";

fn serve_args() -> Vec<String> {
    let apps = support::apps();
    [
        "serve",
        "--bind",
        "127.0.0.1:0",
        "--admin-bind",
        "127.0.0.1:0",
        "--log-format",
        "plain",
        "--chdir",
        &apps.to_string_lossy(),
        APP,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn assert_logged(out: &Output, text: &str) {
    assert!(!out.status.success(), "the broken app started: {text}");
    assert!(text.contains("ModuleNotFoundError"), "{text}");
}

#[test]
fn plain_logs_in_a_pipe_have_no_colour() {
    let out = Command::new(env!("CARGO_BIN_EXE_wsgiscale"))
        .args(serve_args())
        .env_remove("VIRTUAL_ENV")
        .env_remove("NO_COLOR")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .expect("the wsgiscale binary runs");
    let text = String::from_utf8_lossy(&out.stderr);
    assert_logged(&out, &text);
    assert!(!out.stderr.contains(&ESC), "{}", text.escape_debug());
}

/// The server on a pseudo-terminal; what the terminal showed, or None without `script`.
fn on_a_terminal(no_color: Option<&str>) -> Option<Output> {
    if Command::new("script").arg("--version").output().is_err() {
        let _ = writeln!(
            std::io::stderr(),
            "skipped: no `script` (util-linux) for a pseudo-terminal"
        );
        return None;
    }
    let line = std::iter::once(env!("CARGO_BIN_EXE_wsgiscale").to_string())
        .chain(serve_args())
        .map(|a| format!("'{a}'"))
        .collect::<Vec<_>>()
        .join(" ");
    let mut cmd = Command::new("script");
    cmd.args(["-qefc", &format!("exec {line}"), "/dev/null"])
        .env("SHELL", "/bin/sh")
        .env_remove("VIRTUAL_ENV")
        .stdin(Stdio::null())
        .stderr(Stdio::null());
    match no_color {
        Some(v) => cmd.env("NO_COLOR", v),
        None => cmd.env_remove("NO_COLOR"),
    };
    Some(cmd.output().expect("script runs"))
}

#[test]
fn plain_logs_on_a_terminal_are_coloured_unless_no_color() {
    let Some(coloured) = on_a_terminal(None) else {
        return;
    };
    let text = String::from_utf8_lossy(&coloured.stdout);
    assert_logged(&coloured, &text);
    assert!(
        coloured.stdout.contains(&ESC),
        "a terminal gets colours: {text}"
    );

    let Some(plain) = on_a_terminal(Some("1")) else {
        return;
    };
    let text = String::from_utf8_lossy(&plain.stdout);
    assert_logged(&plain, &text);
    assert!(
        !plain.stdout.contains(&ESC),
        "NO_COLOR=1 on a terminal: {}",
        text.escape_debug()
    );
}
