//! `wsgiscale migrate` through the real binary, on real gunicorn and uWSGI configuration
//! files: the printed config file parses back with the server's own parser and serves, the
//! hooks of a gunicorn.conf.py run under wsgiscale, and the list of gunicorn settings the
//! migration knows is gunicorn 27's own.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::{tempdir, venv, wait_for, Server};
use wsgiscale_core::config::{resolve, Settings};

/// Runs `wsgiscale migrate ARGS` in `dir`; returns (exit code, stdout, stderr).
fn migrate(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_wsgiscale"))
        .arg("migrate")
        .args(args)
        .current_dir(dir)
        .env_remove("VIRTUAL_ENV")
        .env_remove("GUNICORN_CMD_ARGS")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// A gunicorn.conf.py as a Django project behind an Ingress has it: gthread workers, the
/// OpenTelemetry-style post_fork, a worker_exit that flushes, statsd, a pre_fork in the master.
const DJANGO_CONF: &str = r#"
import multiprocessing
import os

bind = "0.0.0.0:8000"
workers = 3
worker_class = "gthread"
threads = 4
timeout = 60
graceful_timeout = 20
keepalive = 65
max_requests = 2000
max_requests_jitter = 200
preload_app = True
accesslog = "-"
loglevel = "warning"
forwarded_allow_ips = "10.0.0.0/8"
statsd_host = "localhost:8125"
raw_env = ["DJANGO_SETTINGS_MODULE=djangoproj.settings"]
HERE = os.path.dirname(os.path.abspath(__file__))


def _mark(name, pid):
    open(os.path.join(HERE, f"{name}-{pid}"), "w").close()


def when_ready(server):
    _mark("ready", os.getpid())


def post_fork(server, worker):
    server.log.info("worker spawned (pid: %s)", worker.pid)
    _mark("forked", worker.pid)


def worker_exit(server, worker):
    _mark("exited", worker.pid)


def pre_fork(server, worker):
    pass
"#;

#[test]
fn a_django_gunicorn_conf_migrates_parses_back_and_its_hooks_run_under_wsgiscale() {
    let dir = tempdir();
    let conf = dir.path().join("gunicorn.conf.py");
    std::fs::write(&conf, DJANGO_CONF).unwrap();
    let (code, yaml, err) = migrate(
        dir.path(),
        &[
            "gunicorn",
            "-c",
            conf.to_str().unwrap(),
            "hooked:application",
        ],
    );
    assert_eq!(code, 0, "{err}");
    // Every setting the file set is accounted for.
    for name in [
        "bind",
        "workers",
        "worker_class",
        "threads",
        "timeout",
        "graceful_timeout",
        "keepalive",
        "max_requests",
        "preload_app",
        "accesslog",
        "loglevel",
        "forwarded_allow_ips",
        "statsd_host",
        "raw_env",
        "when_ready",
        "post_fork",
        "worker_exit",
        "pre_fork",
    ] {
        assert!(
            yaml.contains(&format!("#   {name} = ")),
            "{name} not reported:\n{yaml}"
        );
    }
    let settings = Settings::from_yaml(&yaml).expect("the server's parser reads the output");
    let cfg = resolve(&settings, None).expect("the server accepts it");
    assert_eq!(cfg.python.app.to_string(), "hooked:application");
    assert_eq!((cfg.live.workers.min, cfg.live.workers.max), (3, 3));
    assert_eq!(cfg.python.threads, 4);
    assert_eq!(cfg.http.graceful_timeout, Duration::from_secs(20));
    assert_eq!(cfg.http.keepalive_timeout, Duration::from_secs(65));
    assert_eq!(cfg.live.lifecycle.max_requests, 2000);
    assert!(cfg.http.access_log.enabled && cfg.python.preload);
    assert_eq!(cfg.log.level, "warn");
    let hook =
        |h: &Option<wsgiscale_core::config::hooks::HookSpec>| h.as_ref().map(ToString::to_string);
    assert_eq!(
        hook(&cfg.python.hooks.post_fork),
        Some(format!("{}:post_fork", conf.display()))
    );
    assert_eq!(
        hook(&cfg.python.hooks.post_load),
        Some(format!("{}:when_ready", conf.display()))
    );

    // Served with the migrated file: gunicorn's hooks run in wsgiscale's processes.
    let file = dir.path().join("wsgiscale.yaml");
    std::fs::write(&file, &yaml).unwrap();
    // (At the migrated level, warn, the test's client would not see the "listening" lines.)
    let s = Server::start(
        "",
        &[
            "--config",
            file.to_str().unwrap(),
            "--workers",
            "1",
            "--log-level",
            "info",
        ],
    );
    let pid = s.get("/").json()["pid"].as_u64().unwrap();
    assert!(dir.path().join(format!("forked-{pid}")).exists());
    assert!(
        s.log_text().contains("worker spawned (pid: "),
        "{}",
        s.log_text()
    );
    let ready = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .any(|e| e.file_name().to_string_lossy().starts_with("ready-"));
    assert!(ready, "when_ready ran as post-load");
    assert!(s.terminate().success());
    wait_for(Duration::from_secs(5), "worker_exit", || {
        dir.path()
            .join(format!("exited-{pid}"))
            .exists()
            .then_some(())
    });
}

#[test]
fn the_wsgiapp_fragment_carries_what_the_crd_has() {
    let dir = tempdir();
    let conf = dir.path().join("gunicorn.conf.py");
    std::fs::write(&conf, DJANGO_CONF).unwrap();
    let (code, out, err) = migrate(
        dir.path(),
        &[
            "--wsgiapp",
            "gunicorn",
            "-c",
            "gunicorn.conf.py",
            "--image",
            "registry.example.com/mysite:1",
            "mysite.wsgi:application",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let app: serde_json::Value = serde_saphyr::from_str(&out).expect("YAML");
    assert_eq!(app["kind"], "WsgiApp");
    assert_eq!(app["metadata"]["name"], "mysite");
    let spec = &app["spec"];
    assert_eq!(spec["image"], "registry.example.com/mysite:1");
    assert_eq!(spec["workers"]["min"], 3);
    assert_eq!(spec["workers"]["threads"], 4);
    assert_eq!(spec["lifecycle"]["gracefulTimeoutSeconds"], 20);
    assert_eq!(spec["http"]["keepaliveTimeoutSeconds"], 65);
    assert_eq!(spec["hooks"]["postFork"], "gunicorn.conf.py:post_fork");
    assert_eq!(spec["env"][0]["name"], "DJANGO_SETTINGS_MODULE");
}

#[test]
fn command_line_and_gunicorn_cmd_args_override_the_config_file_as_in_gunicorn() {
    let dir = tempdir();
    std::fs::write(
        dir.path().join("gunicorn.conf.py"),
        "workers = 2\nthreads = 2\nbind = ['127.0.0.1:9000']\n",
    )
    .unwrap();
    // ./gunicorn.conf.py is read without -c, as gunicorn does.
    let out = Command::new(env!("CARGO_BIN_EXE_wsgiscale"))
        .args([
            "migrate",
            "gunicorn",
            "-w",
            "6",
            "--bind=unix:/run/app.sock",
            "app:app",
        ])
        .current_dir(dir.path())
        .env("GUNICORN_CMD_ARGS", "--threads 3 --workers 4")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = Settings::from_yaml(&String::from_utf8(out.stdout).unwrap()).unwrap();
    assert_eq!(s.workers.unwrap().max, 6, "the command line wins");
    assert_eq!(s.threads, Some(3), "GUNICORN_CMD_ARGS beats the file");
    assert_eq!(s.bind, vec!["unix:/run/app.sock".parse().unwrap()]);
}

#[test]
fn a_config_file_that_raises_or_an_unknown_option_is_reported() {
    let dir = tempdir();
    std::fs::write(
        dir.path().join("bad.py"),
        "raise RuntimeError('broken config')\n",
    )
    .unwrap();
    let (code, _, err) = migrate(dir.path(), &["gunicorn", "-c", "bad.py", "app:app"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("broken config") && err.contains("Traceback"),
        "{err}"
    );
    let (code, _, err) = migrate(dir.path(), &["gunicorn", "-c", "missing.py", "app:app"]);
    assert_eq!(code, 2);
    assert!(err.contains("missing.py"), "{err}");
    let (code, out, _) = migrate(dir.path(), &["gunicorn", "--frobnicate", "app:app"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("#   --frobnicate = null: not a gunicorn 27 option"),
        "{out}"
    );
}

#[test]
fn a_uwsgi_ini_migrates_and_parses_back() {
    let dir = tempdir();
    std::fs::write(
        dir.path().join("uwsgi.ini"),
        "[uwsgi]\nmodule = pep3333:application\nhttp-socket = :8000\nmaster = true\nprocesses = 4\ncheaper = 1\ncheaper-algo = spare2\nharakiri = 30\nreload-on-rss = 256\nvacuum = true\n",
    )
    .unwrap();
    let (code, yaml, err) = migrate(dir.path(), &["uwsgi", "--ini", "uwsgi.ini"]);
    assert_eq!(code, 0, "{err}");
    let s = Settings::from_yaml(&yaml).expect("parses");
    let cfg = resolve(&s, None).expect("valid");
    assert_eq!((cfg.live.workers.min, cfg.live.workers.max), (1, 4));
    assert_eq!(cfg.live.lifecycle.timeout, Some(Duration::from_secs(30)));
    assert_eq!(cfg.live.lifecycle.max_rss, Some(256 << 20));
    // And it serves.
    let file = dir.path().join("wsgiscale.yaml");
    std::fs::write(&file, &yaml).unwrap();
    let s = Server::start("", &["--config", file.to_str().unwrap()]);
    assert_eq!(s.get("/pid").status, 200);
}

/// The migration's list of gunicorn settings (names, flags, how the flags take values) is
/// gunicorn 27's own, read from gunicorn in the test virtualenv.
#[test]
fn the_gunicorn_settings_list_is_gunicorns_own() {
    let v = venv();
    let out = Command::new(v.join("bin/python"))
        .args([
            "-c",
            r#"
import json, gunicorn, gunicorn.config as c
rows = []
for s in c.KNOWN_SETTINGS:
    action = getattr(s, "action", None) or "store"
    if action == "store_const":
        action = "store_false" if s.const is False else action
    if getattr(s, "nargs", None) == "?":
        action = "optional_auto"
    rows.append({"name": s.name, "cli": s.cli or [], "action": action})
print(json.dumps({"version": gunicorn.__version__, "rows": rows}))
"#,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let theirs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(theirs["version"], "27.0.1");
    let ours: Vec<serde_json::Value> =
        serde_json::from_str(&wsgiscale_core::migrate::gunicorn_table_json()).unwrap();
    let theirs = theirs["rows"].as_array().unwrap();
    assert_eq!(ours.len(), theirs.len());
    for (o, t) in ours.iter().zip(theirs) {
        assert_eq!(o["name"], t["name"]);
        assert_eq!(o["cli"], t["cli"], "{}", t["name"]);
        assert_eq!(o["action"], t["action"], "{}", t["name"]);
    }
}
