//! How this process was started, and so how its fork server is started.
//!
//! wsgiscale runs in one of two ways:
//! - **the standalone binary** (`make build`), which embeds the CPython it was built against:
//!   the fork server is this same executable, re-executed as `wsgiscale __zygote`, and a
//!   `--venv` is entered the way `python -m venv`'s own interpreter enters it (its
//!   `pyvenv.cfg` is read when Python starts, see [`crate::sys::initialize_python`]);
//! - **the Python package** (`pip install wsgiscale`), whose console script and
//!   `python -m wsgiscale` call into the extension module inside the interpreter pip
//!   installed into: the fork server is a fresh interpreter (that one, or `--venv`'s),
//!   started with `-c` [`BOOTSTRAP`], which loads the package from its folder without adding
//!   anything to `sys.path`.
//!
//! Either way the master never forks: it spawns the fork server with `posix_spawn`/`exec`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// How the fork server is started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Launch {
    /// This executable embeds Python: the fork server is `current_exe() __zygote ...`.
    Binary,
    /// Running inside a Python interpreter, from the installed package.
    Package(PackageLaunch),
}

/// The interpreter the package was entered from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageLaunch {
    /// `sys.executable`.
    pub python: PathBuf,
    /// The interpreter's own options to repeat (`subprocess._args_from_interpreter_flags()`).
    pub flags: Vec<OsString>,
    /// `sys.prefix`: the environment the interpreter runs in.
    pub prefix: PathBuf,
    /// The folder of the `wsgiscale` package (holding `__init__.py` and the extension).
    pub package_dir: PathBuf,
    /// `sys.version_info[:2]`.
    pub version: (u32, u32),
}

/// Loads the package from the folder in `sys.argv[1]` under its own name, without putting
/// that folder's parent (another environment's site-packages, or the injected folder) on
/// `sys.path`, then runs the fork server on the descriptor in `sys.argv[2]`.
pub const BOOTSTRAP: &str = "\
import importlib.util, sys
if sys.path and sys.path[0] == '':
    del sys.path[0]
pkg = sys.argv[1]
spec = importlib.util.spec_from_file_location('wsgiscale', pkg + '/__init__.py', submodule_search_locations=[pkg])
m = importlib.util.module_from_spec(spec)
sys.modules['wsgiscale'] = m
spec.loader.exec_module(m)
sys.exit(m.main(['__zygote', '--control-fd', sys.argv[2]]))
";

static LAUNCH: OnceLock<Launch> = OnceLock::new();

/// Records how this process was started; the first call wins (there is one entry point per
/// process).
pub fn set(launch: Launch) {
    let _ = LAUNCH.set(launch);
}

/// How this process was started ([`Launch::Binary`] unless an entry point said otherwise).
pub fn get() -> &'static Launch {
    LAUNCH.get_or_init(|| Launch::Binary)
}

/// The fallback for `--venv`. The standalone binary takes an activated virtualenv
/// (`$VIRTUAL_ENV`), as its embedded Python has no environment of its own; the package runs
/// in the environment of the interpreter it was installed into, as gunicorn does.
pub fn virtual_env() -> Option<std::path::PathBuf> {
    match get() {
        Launch::Binary => std::env::var_os("VIRTUAL_ENV").map(Into::into),
        Launch::Package(_) => None,
    }
}

/// The program and arguments that start a fork server on inherited descriptor `fd`, for the
/// environment `venv` (the package's launch only: the binary enters a venv itself).
pub fn zygote_command(
    launch: &Launch,
    venv: Option<&Path>,
    fd: i32,
) -> std::io::Result<(PathBuf, Vec<OsString>)> {
    let fd = OsString::from(fd.to_string());
    match launch {
        Launch::Binary => Ok((
            std::env::current_exe()?,
            vec!["__zygote".into(), "--control-fd".into(), fd],
        )),
        Launch::Package(p) => {
            let (python, mut args) = match venv {
                Some(v) if !same_dir(v, &p.prefix) => (venv_python(v), Vec::new()),
                _ => (p.python.clone(), p.flags.clone()),
            };
            args.extend([
                "-c".into(),
                BOOTSTRAP.into(),
                p.package_dir.clone().into_os_string(),
                fd,
            ]);
            Ok((python, args))
        }
    }
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// A virtualenv's interpreter: `bin/python`, as `python -m venv` and virtualenv make it.
pub fn venv_python(venv: &Path) -> PathBuf {
    venv.join("bin").join("python")
}

/// What a virtualenv's `pyvenv.cfg` says about the Python it was made with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VenvCfg {
    /// `home`: the base interpreter's bin directory.
    pub home: Option<String>,
    /// major.minor from `version` (venv) or `version_info` (virtualenv).
    pub version: Option<(u32, u32)>,
    /// `include-system-site-packages`.
    pub system_site_packages: bool,
}

/// Parses `pyvenv.cfg` (`key = value` lines, as CPython's getpath and site.py read it).
pub fn parse_pyvenv_cfg(text: &str) -> VenvCfg {
    let mut cfg = VenvCfg {
        home: None,
        version: None,
        system_site_packages: false,
    };
    for line in text.lines() {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let (key, value) = (key.trim().to_ascii_lowercase(), value.trim());
        match key.as_str() {
            "home" => cfg.home = Some(value.to_string()),
            "version" => cfg.version = major_minor(value),
            "version_info" if cfg.version.is_none() => cfg.version = major_minor(value),
            "include-system-site-packages" => {
                cfg.system_site_packages = value.eq_ignore_ascii_case("true")
            }
            _ => {}
        }
    }
    cfg
}

/// `3.11.7`, `3.12.1.final.0`, `3.11.7 (main, ...)` -> (3, 11).
pub fn major_minor(version: &str) -> Option<(u32, u32)> {
    let mut parts = version.trim().split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// Checks that `venv` is a virtualenv the interpreter of version `python` can enter; the
/// error names what was found.
pub fn check_venv(venv: &Path, python: (u32, u32)) -> Result<VenvCfg, String> {
    let path = venv.join("pyvenv.cfg");
    let text = std::fs::read_to_string(&path).map_err(|e| {
        format!(
            "--venv {}: not a virtualenv (cannot read {}: {e}); make one with `python{}.{} -m venv {}`",
            venv.display(),
            path.display(),
            python.0,
            python.1,
            venv.display()
        )
    })?;
    let cfg = parse_pyvenv_cfg(&text);
    if let Some(v) = cfg.version {
        if v != python {
            return Err(format!(
                "--venv {}: made with Python {}.{}, but this wsgiscale runs Python {}.{}; \
                 recreate it with `python{}.{} -m venv`",
                venv.display(),
                v.0,
                v.1,
                python.0,
                python.1,
                python.0,
                python.1
            ));
        }
    }
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pyvenv_cfg_of_venv_and_virtualenv() {
        let venv =
            "home = /usr/local/bin\ninclude-system-site-packages = false\nversion = 3.11.7\n";
        assert_eq!(
            parse_pyvenv_cfg(venv),
            VenvCfg {
                home: Some("/usr/local/bin".into()),
                version: Some((3, 11)),
                system_site_packages: false
            }
        );
        let virtualenv =
            "home = /opt/py/bin\nimplementation = CPython\nversion_info = 3.12.1.final.0\ninclude-system-site-packages = True\n";
        let cfg = parse_pyvenv_cfg(virtualenv);
        assert_eq!(cfg.version, Some((3, 12)));
        assert!(cfg.system_site_packages);
    }

    #[test]
    fn versions() {
        assert_eq!(major_minor("3.13.0 (main, Oct 1 2024)"), Some((3, 13)));
        assert_eq!(major_minor("3"), None);
        assert_eq!(major_minor(""), None);
    }

    #[test]
    fn package_zygote_uses_the_venvs_python_or_its_own() {
        let p = PackageLaunch {
            python: "/env/bin/python".into(),
            flags: vec!["-X".into(), "dev".into()],
            prefix: "/env".into(),
            package_dir: "/env/lib/site-packages/wsgiscale".into(),
            version: (3, 11),
        };
        let launch = Launch::Package(p);
        let (exe, args) = zygote_command(&launch, None, 7).unwrap();
        assert_eq!(exe, PathBuf::from("/env/bin/python"));
        assert_eq!(&args[..3], &["-X", "dev", "-c"].map(OsString::from));
        assert_eq!(args.last().unwrap(), "7");
        let (exe, args) = zygote_command(&launch, Some(Path::new("/other")), 7).unwrap();
        assert_eq!(exe, PathBuf::from("/other/bin/python"));
        assert_eq!(args[0], "-c");
        assert_eq!(args[2], "/env/lib/site-packages/wsgiscale");
    }
}
