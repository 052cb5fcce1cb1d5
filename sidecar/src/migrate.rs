//! `wsgiscale migrate gunicorn [ARGS...]`: reads a gunicorn command line, the config file it
//! names (or `./gunicorn.conf.py`, as gunicorn does) and `GUNICORN_CMD_ARGS`, and prints the
//! equivalent wsgiscale config file, or with `--wsgiapp` a WsgiApp manifest, each setting's
//! fate in comments above it. `wsgiscale migrate uwsgi [ARGS...]` does the same for uWSGI's
//! common options.
//!
//! A gunicorn config file is a Python module: it is executed, as gunicorn executes it, by the
//! interpreter wsgiscale embeds (with `--venv` or `$VIRTUAL_ENV`, for the imports a config
//! file makes), with a command-line parser built from the one list of gunicorn's settings
//! ([`wsgiscale_core::migrate::GUNICORN`]). The mapping itself is pure
//! ([`wsgiscale_core::migrate`]).

use std::ffi::CString;
use std::path::PathBuf;

use pyo3::prelude::*;
use wsgiscale_core::migrate::{self, GunicornConfig, Migration};

use crate::python::format_traceback;

/// `wsgiscale migrate`'s arguments.
#[derive(Debug, clap::Args)]
pub struct MigrateArgs {
    /// Print a WsgiApp manifest (for the wsgiscale operator) instead of a config file.
    #[arg(long)]
    pub wsgiapp: bool,
    /// The WsgiApp's metadata.name. [default: from the app's module]
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// The WsgiApp's image. [default: a placeholder to replace]
    #[arg(long, value_name = "IMAGE")]
    pub image: Option<String>,
    /// Virtualenv whose packages the gunicorn config file imports. [default: $VIRTUAL_ENV]
    #[arg(long, value_name = "DIR")]
    pub venv: Option<PathBuf>,
    /// The server to migrate from.
    #[command(subcommand)]
    pub from: MigrateFrom,
}

/// The servers `wsgiscale migrate` reads.
#[derive(Debug, clap::Subcommand)]
pub enum MigrateFrom {
    /// A gunicorn command line (what follows `gunicorn`), with its config file.
    Gunicorn {
        /// gunicorn's arguments, e.g. `-c gunicorn.conf.py mysite.wsgi:application`.
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "ARGS"
        )]
        args: Vec<String>,
    },
    /// A uWSGI command line (what follows `uwsgi`): `--ini FILE` and/or `--option value`.
    Uwsgi {
        /// uWSGI's arguments, e.g. `--ini uwsgi.ini`.
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "ARGS"
        )]
        args: Vec<String>,
    },
}

/// Why a migration could not be made.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// Python could not start.
    #[error("{0}")]
    Python(String),
    /// The configuration could not be read (a config file that raises, a bad option).
    #[error("cannot read the {server} configuration:\n{message}")]
    Read {
        /// gunicorn or uwsgi.
        server: &'static str,
        /// What went wrong, with the traceback.
        message: String,
    },
}

/// Reads a gunicorn command line with Python; see the module's documentation.
const GUNICORN_READER: &str = r#"
import argparse, importlib, importlib.machinery, importlib.util, json, os, shlex, sys


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise ValueError(message)


def _parser(table):
    p = _Parser(prog="gunicorn", add_help=False, allow_abbrev=False)
    for s in table:
        if not s["cli"]:
            continue
        kw = {"dest": s["name"], "default": argparse.SUPPRESS}
        action = s["action"]
        if action in ("store_true", "store_false", "append"):
            kw["action"] = action
        elif action == "optional_auto":
            kw["nargs"] = "?"
            kw["const"] = "auto"
        p.add_argument(*s["cli"], **kw)
    p.add_argument("args", nargs="*")
    return p


def _plain(v):
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, (list, tuple, set, frozenset)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, type):
        return {"repr": f"{v.__module__}.{v.__qualname__}"}
    return {"repr": repr(v)}


def _reference(fn, name, source):
    """A MODULE:FUNCTION or PATH:FUNCTION that loads fn in the server."""
    if not callable(fn):
        return {"error": f"{fn!r} is not callable"}
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", "")
    plain_name = qualname and "<" not in qualname and "." not in qualname
    if module and module not in ("__config__", "__main__") and plain_name and module in sys.modules:
        return f"{module}:{qualname}"
    if source is None:
        return {"error": "given on the command line"}
    # The config file's own variable: loading the file gives this very object.
    return f"{source}:{name}"


def _load_file(path):
    # As gunicorn loads its config file: a module named __config__, whatever its suffix.
    name = "__config__"
    loader = importlib.machinery.SourceFileLoader(name, path)
    spec = importlib.util.spec_from_file_location(name, path, loader=loader)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def read(argv, table_json):
    table = json.loads(table_json)
    names = {s["name"] for s in table}
    hooks = {s["name"] for s in table if s["hook"]}
    parser = _parser(table)
    cli_ns, unknown = parser.parse_known_args(argv)
    cli = vars(cli_ns)
    positional = cli.pop("args", [])
    env = {}
    if os.environ.get("GUNICORN_CMD_ARGS"):
        env_ns, env_unknown = parser.parse_known_args(shlex.split(os.environ["GUNICORN_CMD_ARGS"]))
        env = vars(env_ns)
        positional = positional or env.pop("args", [])
        env.pop("args", None)
        unknown += env_unknown
    config = cli.get("config", env.get("config"))
    if config is None and os.path.exists("gunicorn.conf.py"):
        config = "./gunicorn.conf.py"
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    values, source = {}, None
    if config:
        if config.startswith("python:"):
            module = config[len("python:"):]
            mod = importlib.import_module(module)
            source = module
        else:
            if not os.path.exists(config):
                raise FileNotFoundError(f"config file {config} not found")
            mod = _load_file(config)
            source = config if ("/" in config or config.endswith(".py")) else "./" + config
        for k, v in vars(mod).items():
            if k in names:
                values[k] = v
    # gunicorn's precedence: the config file, then GUNICORN_CMD_ARGS, then the command line.
    values.update(env)
    values.update(cli)
    settings, found_hooks = {}, {}
    for k, v in values.items():
        if k in hooks:
            found_hooks[k] = _reference(v, k, source)
        else:
            settings[k] = _plain(v)
    return json.dumps({
        "config_file": config,
        "app": positional[0] if positional else None,
        "settings": settings,
        "hooks": found_hooks,
        "unknown": list(unknown) + list(positional[1:]),
    })
"#;

/// Reads a gunicorn command line (after `gunicorn`) into its settings, with the Python
/// interpreter (started with `venv` in the standalone binary).
pub fn read_gunicorn(
    args: &[String],
    venv: Option<&std::path::Path>,
) -> Result<GunicornConfig, MigrateError> {
    crate::sys::initialize_python(venv).map_err(MigrateError::Python)?;
    Python::attach(|py| {
        let failed = |e: PyErr| MigrateError::Read {
            server: "gunicorn",
            message: format_traceback(py, &e),
        };
        let code = CString::new(GUNICORN_READER).expect("the reader has no NUL byte");
        let module = PyModule::from_code(py, &code, c"<wsgiscale migrate>", c"wsgiscale_migrate")
            .map_err(failed)?;
        let json: String = module
            .getattr("read")
            .and_then(|f| f.call1((args.to_vec(), migrate::gunicorn_table_json())))
            .and_then(|r| r.extract())
            .map_err(failed)?;
        serde_json::from_str(&json).map_err(|e| MigrateError::Read {
            server: "gunicorn",
            message: e.to_string(),
        })
    })
}

/// A DNS-1035 label for the WsgiApp from the app's module (`mysite.wsgi:application` ->
/// `mysite`).
fn default_name(app: Option<&str>) -> String {
    let module = app
        .and_then(|a| a.split([':', '.']).next())
        .unwrap_or("app");
    let mut name: String = module
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    name = name.trim_matches('-').chars().take(63).collect();
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        name = format!("app-{name}");
    }
    name.trim_end_matches('-').to_string()
}

/// The text `wsgiscale migrate` prints: the notes as comments, then the config file or the
/// WsgiApp manifest.
pub fn render(m: &Migration, source: &str, args: &MigrateArgs) -> String {
    let mut out = migrate::render_notes(source, &m.notes);
    if args.wsgiapp {
        let name = args
            .name
            .clone()
            .unwrap_or_else(|| default_name(m.settings.app.as_deref()));
        let image = args.image.as_deref().unwrap_or("REPLACE-WITH-YOUR-IMAGE");
        let manifest = migrate::to_wsgiapp(m, &name, image);
        out.push_str(
            &serde_saphyr::to_string(&manifest).expect("a manifest of plain values serializes"),
        );
    } else {
        out.push_str(&m.settings.to_yaml());
    }
    out
}

/// Runs `wsgiscale migrate`; returns the exit status.
pub fn main(mut args: MigrateArgs) -> i32 {
    // `--wsgiapp`, `--image` and `--venv` may come after the server's name too (neither
    // server has them; gunicorn's own `--name` is its process name, so ours goes before).
    let (server, given) = match &args.from {
        MigrateFrom::Gunicorn { args } => ("gunicorn", args.clone()),
        MigrateFrom::Uwsgi { args } => ("uwsgi", args.clone()),
    };
    let mut rest = Vec::with_capacity(given.len());
    let mut it = given.into_iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--wsgiapp" => args.wsgiapp = true,
            "--image" => args.image = it.next(),
            "--venv" => args.venv = it.next().map(PathBuf::from),
            _ => rest.push(arg),
        }
    }
    let venv = args
        .venv
        .clone()
        .or_else(crate::launch::virtual_env)
        .filter(|p| !p.as_os_str().is_empty());
    let migration = match server {
        "gunicorn" => read_gunicorn(&rest, venv.as_deref()).map(|g| {
            let source = match &g.config_file {
                Some(f) => format!("gunicorn (config file {f})"),
                None => "gunicorn".to_string(),
            };
            (source, migrate::from_gunicorn(&g))
        }),
        _ => match migrate::read_uwsgi(&rest, |p| std::fs::read_to_string(p)) {
            Ok(u) => Ok(("uWSGI".to_string(), migrate::from_uwsgi(&u))),
            Err(message) => Err(MigrateError::Read {
                server: "uwsgi",
                message,
            }),
        },
    };
    match migration {
        Ok((source, m)) => {
            print!("{}", render(&m, &source, &args));
            0
        }
        Err(e) => {
            eprintln!("wsgiscale migrate: {e}");
            2
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_the_module_as_dns_labels() {
        assert_eq!(default_name(Some("mysite.wsgi:application")), "mysite");
        assert_eq!(default_name(Some("My_App:app")), "my-app");
        assert_eq!(default_name(Some("_x:app")), "x");
        assert_eq!(default_name(Some("9lives:app")), "app-9lives");
        assert_eq!(default_name(None), "app");
    }
}
