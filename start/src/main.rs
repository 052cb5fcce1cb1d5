//! `wsgiscale-start [--python NAME] serve ARGS...`: see the library's documentation.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use wsgiscale_start::{
    decide, find_on_path, parse_args, parse_probe, Unservable, EXIT_UNSERVABLE, PROBE,
};

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let args = match parse_args(&argv) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("wsgiscale-start: {e}");
            return ExitCode::from(2);
        }
    };
    let package = package_dir();
    match check(args.python.as_deref(), &package) {
        Ok(python) => {
            let mut cmd = Command::new(&python);
            cmd.arg("-m").arg("wsgiscale").args(&args.rest);
            let parent = package.parent().unwrap_or(Path::new("/")).to_path_buf();
            let pythonpath = match std::env::var_os("PYTHONPATH") {
                Some(old) if !old.is_empty() => {
                    let mut v = parent.into_os_string();
                    v.push(":");
                    v.push(old);
                    v
                }
                _ => parent.into_os_string(),
            };
            cmd.env("PYTHONPATH", pythonpath);
            let e = cmd.exec();
            unservable(&Unservable {
                reason: "NoPython",
                message: format!("cannot run {}: {e}", python.display()),
            })
        }
        Err(u) => unservable(&u),
    }
}

/// `/wsgiscale/python/wsgiscale` beside `/wsgiscale/bin/wsgiscale-start`.
fn package_dir() -> PathBuf {
    let exe =
        std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/wsgiscale/bin/wsgiscale-start"));
    let root = exe
        .parent()
        .and_then(Path::parent)
        .unwrap_or(Path::new("/wsgiscale"));
    root.join("python").join("wsgiscale")
}

fn check(python: Option<&str>, package: &Path) -> Result<PathBuf, Unservable> {
    let path = std::env::var("PATH").unwrap_or_default();
    let names: Vec<&str> = match python {
        Some(p) => vec![p],
        None => vec!["python3", "python"],
    };
    let Some(exe) = find_on_path(&path, &names) else {
        return Err(Unservable {
            reason: "NoPython",
            message: format!(
                "no {} on PATH ({path}) in the app image",
                names.join(" or ")
            ),
        });
    };
    let out = Command::new(&exe)
        .args(["-c", PROBE])
        .env_remove("PYTHONPATH")
        .output()
        .map_err(|e| Unservable {
            reason: "NoPython",
            message: format!("cannot run {}: {e}", exe.display()),
        })?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let found = match parse_probe(&stdout) {
        Some(f) if out.status.success() => f,
        _ => {
            return Err(Unservable {
                reason: "NoPython",
                message: format!(
                    "{} did not run as a Python ({}): {}",
                    exe.display(),
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            })
        }
    };
    let extensions: Vec<String> = std::fs::read_dir(package)
        .map(|d| {
            let mut v: Vec<String> = d
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("_wsgiscale.") && n.ends_with(".so"))
                .collect();
            v.sort();
            v
        })
        .unwrap_or_default();
    decide(&exe, &found, &extensions)?;
    Ok(exe)
}

/// Writes the termination message the operator reads and exits.
fn unservable(u: &Unservable) -> ExitCode {
    let text = u.termination_message();
    eprintln!("{text}");
    let log = std::env::var_os("WSGISCALE_START_TERMINATION_LOG")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/dev/termination-log"));
    let _ = std::fs::write(log, text.as_bytes());
    ExitCode::from(EXIT_UNSERVABLE as u8)
}
