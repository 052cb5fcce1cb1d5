//! `wsgiscale-start`: the command of an app container that the operator injected wsgiscale
//! into (`spec.inject`). The pod's init container copied the package, built for every
//! supported CPython, to `/wsgiscale/python/wsgiscale` and this program to `/wsgiscale/bin`.
//! It finds the image's Python, asks it what it is, and either runs
//! `python -m wsgiscale serve ...` with the package importable, or, when the package cannot
//! run on that Python, says why in the container's termination message (which the operator
//! puts in the WsgiApp's status and an Event) and exits [`EXIT_UNSERVABLE`].
//!
//! Everything but the process calls is pure: [`decide`] takes what the probe printed and the
//! extensions in the package folder.

use std::path::{Path, PathBuf};

/// Exit status when the image cannot be served.
pub const EXIT_UNSERVABLE: i32 = 3;
/// Prefix of the termination message (the operator looks for it).
pub const MESSAGE_PREFIX: &str = "wsgiscale-start: ";
/// The CPython versions the package is built for.
pub const SUPPORTED: std::ops::RangeInclusive<(u32, u32)> = (3, 9)..=(3, 13);
/// The oldest glibc the package links against (manylinux_2_28).
pub const MIN_GLIBC: (u32, u32) = (2, 28);

/// Printed by the image's Python (any version from 2.7 on): implementation, version, SOABI,
/// glibc version, one per line.
pub const PROBE: &str = "import sys, platform, os\n\
try:\n    import sysconfig; soabi = sysconfig.get_config_var('SOABI') or ''\n\
except Exception:\n    soabi = ''\n\
try:\n    libc = os.confstr('CS_GNU_LIBC_VERSION') or ''\n\
except Exception:\n    libc = ''\n\
sys.stdout.write('%s\\n%d.%d.%d\\n%s\\n%s\\n' % (platform.python_implementation(), sys.version_info[0], sys.version_info[1], sys.version_info[2], soabi, libc))\n";

/// Why an image cannot be served: `reason` is the CamelCase word of the WsgiApp condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unservable {
    /// `NoPython`, `UnsupportedPython`, `MuslLibc`, `OldGlibc`.
    pub reason: &'static str,
    /// What was found and what would work.
    pub message: String,
}

impl Unservable {
    fn new(reason: &'static str, message: String) -> Self {
        Unservable { reason, message }
    }

    /// The termination message: `wsgiscale-start: Reason: message`.
    pub fn termination_message(&self) -> String {
        format!("{MESSAGE_PREFIX}{}: {}", self.reason, self.message)
    }
}

/// Parses a termination message written by [`Unservable::termination_message`].
pub fn parse_termination_message(text: &str) -> Option<(String, String)> {
    let rest = text.trim().strip_prefix(MESSAGE_PREFIX)?;
    let (reason, message) = rest.split_once(": ")?;
    if reason.is_empty() || !reason.chars().all(|c| c.is_ascii_alphanumeric()) {
        return None;
    }
    Some((reason.to_string(), message.trim().to_string()))
}

/// What the probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// `CPython`, `PyPy`, ...
    pub implementation: String,
    /// major, minor.
    pub version: (u32, u32),
    /// The full version as printed.
    pub version_text: String,
    /// `cpython-311-x86_64-linux-gnu`, `cpython-312-x86_64-linux-musl`, empty when unknown.
    pub soabi: String,
    /// `glibc 2.36`, empty on other C libraries.
    pub libc: String,
}

/// Parses the probe's output.
pub fn parse_probe(out: &str) -> Option<Found> {
    let mut lines = out.lines();
    let implementation = lines.next()?.trim().to_string();
    let version_text = lines.next()?.trim().to_string();
    let mut nums = version_text.split('.').map(|n| n.parse::<u32>().ok());
    let version = (nums.next()??, nums.next()??);
    Some(Found {
        implementation,
        version,
        version_text,
        soabi: lines.next().unwrap_or("").trim().to_string(),
        libc: lines.next().unwrap_or("").trim().to_string(),
    })
}

/// The extension file name for `soabi`.
pub fn extension_name(soabi: &str) -> String {
    format!("_wsgiscale.{soabi}.so")
}

/// Can the package, holding the extensions `extensions` (file names), run on `found`?
pub fn decide(python: &Path, found: &Found, extensions: &[String]) -> Result<(), Unservable> {
    let what = format!(
        "{} at {} is {} {}",
        python
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("python"),
        python.display(),
        found.implementation,
        found.version_text
    );
    let supported = format!(
        "the injected wsgiscale serves CPython {}.{} to {}.{} on glibc {}.{} or newer ({}); \
         build the image FROM such a Python, or install wsgiscale into the image and turn spec.inject off",
        SUPPORTED.start().0,
        SUPPORTED.start().1,
        SUPPORTED.end().0,
        SUPPORTED.end().1,
        MIN_GLIBC.0,
        MIN_GLIBC.1,
        // The inject image of each platform holds that architecture's package.
        std::env::consts::ARCH
    );
    if found.implementation != "CPython" {
        return Err(Unservable::new(
            "UnsupportedPython",
            format!("{what}; {supported}"),
        ));
    }
    if !SUPPORTED.contains(&found.version) {
        return Err(Unservable::new(
            "UnsupportedPython",
            format!("{what}; {supported}"),
        ));
    }
    if found.soabi.contains("musl") {
        return Err(Unservable::new(
            "MuslLibc",
            format!("{what} built for musl libc ({}); {supported}", found.soabi),
        ));
    }
    if let Some(v) = found.libc.strip_prefix("glibc ").and_then(major_minor) {
        if v < MIN_GLIBC {
            return Err(Unservable::new(
                "OldGlibc",
                format!("{what} on {}; {supported}", found.libc),
            ));
        }
    } else if !found.soabi.is_empty() && !found.soabi.ends_with("-gnu") {
        return Err(Unservable::new(
            "UnsupportedPython",
            format!("{what} with ABI {}; {supported}", found.soabi),
        ));
    } else if !found.soabi.is_empty() {
        // No glibc version: another C library. A musl CPython before 3.11 (python:3.10-alpine)
        // still names its ABI `...-linux-gnu` (bpo-43112), and would fail to load the glibc
        // extension with a linker error instead of this message.
        return Err(Unservable::new(
            "MuslLibc",
            format!(
                "{what} with ABI {} but no glibc (os.confstr CS_GNU_LIBC_VERSION is unset: musl or another C library); {supported}",
                found.soabi
            ),
        ));
    }
    let want = extension_name(&found.soabi);
    if found.soabi.is_empty() || !extensions.contains(&want) {
        let abi = if found.soabi.is_empty() {
            "an unknown ABI".to_string()
        } else {
            format!("ABI {}", found.soabi)
        };
        return Err(Unservable::new(
            "UnsupportedPython",
            format!(
                "{what} with {abi}, and the package has no {want} (it has {}); {supported}",
                extensions.join(", ")
            ),
        ));
    }
    Ok(())
}

fn major_minor(v: &str) -> Option<(u32, u32)> {
    let mut it = v.trim().split('.').map(|n| n.parse::<u32>().ok());
    Some((it.next()??, it.next()??))
}

/// The first of `names` that is an executable file in one of `path`'s directories.
pub fn find_on_path(path: &str, names: &[&str]) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    for name in names {
        if name.contains('/') {
            let p = PathBuf::from(name);
            if p.is_file() {
                return Some(p);
            }
            continue;
        }
        for dir in path.split(':').filter(|d| !d.is_empty()) {
            let p = Path::new(dir).join(name);
            if let Ok(meta) = std::fs::metadata(&p) {
                if meta.is_file() && meta.permissions().mode() & 0o111 != 0 {
                    return Some(p);
                }
            }
        }
    }
    None
}

/// The `wsgiscale-start` command line: `[--python NAME] serve ...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Args {
    /// `--python`: the interpreter's name or path (default: python3, then python, on PATH).
    pub python: Option<String>,
    /// Everything after, passed to `python -m wsgiscale`.
    pub rest: Vec<String>,
}

/// Parses the command line (after the program name).
pub fn parse_args(argv: &[String]) -> Result<Args, String> {
    let mut python = None;
    let mut i = 0;
    while i < argv.len() {
        match argv[i].as_str() {
            "--python" => {
                python = Some(argv.get(i + 1).ok_or("--python needs a value")?.clone());
                i += 2;
            }
            s if s.starts_with("--python=") => {
                python = Some(s["--python=".len()..].to_string());
                i += 1;
            }
            _ => break,
        }
    }
    let rest = argv[i..].to_vec();
    if rest.is_empty() {
        return Err("usage: wsgiscale-start [--python NAME] serve [ARGS...]".into());
    }
    Ok(Args { python, rest })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(imp: &str, v: &str, soabi: &str, libc: &str) -> Found {
        parse_probe(&format!("{imp}\n{v}\n{soabi}\n{libc}\n")).unwrap()
    }

    fn exts() -> Vec<String> {
        (9..=13)
            .map(|m| extension_name(&format!("cpython-3{m}-x86_64-linux-gnu")))
            .collect()
    }

    #[test]
    fn supported_cpythons_pass() {
        for m in 9..=13 {
            let f = found(
                "CPython",
                &format!("3.{m}.1"),
                &format!("cpython-3{m}-x86_64-linux-gnu"),
                "glibc 2.36",
            );
            assert_eq!(
                decide(Path::new("/usr/local/bin/python3"), &f, &exts()),
                Ok(())
            );
        }
    }

    #[test]
    fn each_unservable_image_names_what_was_found() {
        let p = Path::new("/usr/bin/python3");
        let cases = [
            (
                found(
                    "CPython",
                    "3.8.18",
                    "cpython-38-x86_64-linux-gnu",
                    "glibc 2.36",
                ),
                "UnsupportedPython",
                "CPython 3.8.18",
            ),
            (
                found("CPython", "2.7.18", "", "glibc 2.31"),
                "UnsupportedPython",
                "CPython 2.7.18",
            ),
            (
                found(
                    "CPython",
                    "3.14.0",
                    "cpython-314-x86_64-linux-gnu",
                    "glibc 2.36",
                ),
                "UnsupportedPython",
                "3.14.0",
            ),
            (
                found(
                    "PyPy",
                    "3.10.14",
                    "pypy310-pp73-x86_64-linux-gnu",
                    "glibc 2.36",
                ),
                "UnsupportedPython",
                "PyPy",
            ),
            (
                found("CPython", "3.12.7", "cpython-312-x86_64-linux-musl", ""),
                "MuslLibc",
                "musl",
            ),
            (
                found("CPython", "3.10.14", "cpython-310-x86_64-linux-gnu", ""),
                "MuslLibc",
                "no glibc",
            ),
            (
                found(
                    "CPython",
                    "3.11.4",
                    "cpython-311-x86_64-linux-gnu",
                    "glibc 2.17",
                ),
                "OldGlibc",
                "glibc 2.17",
            ),
            (
                found(
                    "CPython",
                    "3.13.0",
                    "cpython-313t-x86_64-linux-gnu",
                    "glibc 2.36",
                ),
                "UnsupportedPython",
                "cpython-313t",
            ),
            (
                found(
                    "CPython",
                    "3.12.1",
                    "cpython-312-aarch64-linux-gnu",
                    "glibc 2.36",
                ),
                "UnsupportedPython",
                "aarch64",
            ),
        ];
        for (f, reason, needle) in cases {
            let e = decide(p, &f, &exts()).unwrap_err();
            assert_eq!(e.reason, reason, "{f:?}: {e:?}");
            assert!(e.message.contains(needle), "{e:?}");
            let (r, m) = parse_termination_message(&e.termination_message()).unwrap();
            assert_eq!((r.as_str(), m), (reason, e.message.clone()));
        }
    }

    #[test]
    fn termination_messages_of_others_are_not_ours() {
        assert_eq!(
            parse_termination_message("Traceback (most recent call last):"),
            None
        );
        assert_eq!(parse_termination_message("wsgiscale-start: no colon"), None);
    }

    #[test]
    fn args() {
        let a = |v: &[&str]| parse_args(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(
            a(&["--python", "python3.12", "serve", "app:x"]).unwrap(),
            Args {
                python: Some("python3.12".into()),
                rest: vec!["serve".into(), "app:x".into()]
            }
        );
        assert_eq!(a(&["serve"]).unwrap().python, None);
        assert!(a(&[]).is_err());
        assert!(a(&["--python"]).is_err());
    }
}
