//! Server hooks through the real binary: each runs in the process it is meant for, an
//! OpenTelemetry BatchSpanProcessor started in post-fork exports from every worker of a
//! preloaded app, and a hook that raises is logged with its traceback without ever taking the
//! master down.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use support::{json_lines, start_failing, tempdir, venv, wait_for, Server};

const APP: &str = "hooked:application";

/// Every hook of `hooked.py`, as flags.
fn all_hooks() -> Vec<String> {
    [
        "post-load",
        "on-reload",
        "post-fork",
        "post-worker-init",
        "worker-exit",
        "pre-request",
        "post-request",
    ]
    .iter()
    .flat_map(|h| [format!("--{h}"), format!("hooked:{}", h.replace('-', "_"))])
    .collect()
}

fn start(dir: &Path, raise: &str, extra: &[&str]) -> Server {
    let mut args: Vec<String> = all_hooks();
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Server::start_env(
        APP,
        &args,
        &[("HOOKS_DIR", dir.to_str().unwrap()), ("HOOKS_RAISE", raise)],
    )
}

fn events(dir: &Path, hook: &str) -> Vec<Value> {
    json_lines(&dir.join("events"))
        .into_iter()
        .filter(|e| e["hook"] == hook)
        .collect()
}

/// The pids of the worker processes serving now (from their answers), at least `n`.
fn worker_pids(s: &Server, n: usize) -> BTreeSet<u64> {
    let addr = s.addr;
    wait_for(Duration::from_secs(30), "requests on every worker", || {
        // Concurrent slow requests, so that each lands on a different free worker.
        let answers: Vec<_> = (0..n)
            .map(|_| std::thread::spawn(move || support::get(addr, "/?150").unwrap()))
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect();
        let pids: BTreeSet<u64> = answers
            .iter()
            .map(|r| r.json()["pid"].as_u64().unwrap())
            .collect();
        (pids.len() >= n).then_some(pids)
    })
}

#[test]
fn each_hook_runs_in_its_process_with_gunicorns_arguments() {
    let dir = tempdir();
    let s = start(dir.path(), "", &["--workers", "2"]);
    let fork_server: Vec<_> = events(dir.path(), "post_load");
    assert_eq!(fork_server.len(), 1, "{fork_server:?}");
    let zygote = fork_server[0]["pid"].as_u64().unwrap();
    assert_eq!(fork_server[0]["master"], s.pid() as u64);
    assert_eq!(fork_server[0]["reloading"], false);
    assert!(events(dir.path(), "on_reload").is_empty());
    // server.log reaches the server's log.
    assert!(s.wait_log("post_load ran in the fork server", Duration::from_secs(5)));

    let pids = worker_pids(&s, 2);
    let forked = events(dir.path(), "post_fork");
    let inited = events(dir.path(), "post_worker_init");
    for pid in &pids {
        assert_ne!(*pid, zygote);
        let f: Vec<_> = forked.iter().filter(|e| e["pid"] == *pid).collect();
        assert_eq!(f.len(), 1, "post_fork once in worker {pid}: {forked:?}");
        assert_eq!(f[0]["master"], s.pid() as u64);
        // Preloaded: the worker has the app already when post-fork runs.
        assert_eq!(f[0]["wsgi"], true);
        let i: Vec<_> = inited.iter().filter(|e| e["pid"] == *pid).collect();
        assert_eq!(i.len(), 1, "{inited:?}");
        assert_eq!(i[0]["worker"], f[0]["worker"]);
    }

    let r = s.get("/hello?1");
    assert_eq!(r.status, 200);
    let served = r.json()["pid"].as_u64().unwrap();
    let pre = wait_for(Duration::from_secs(5), "pre_request", || {
        let e: Vec<_> = events(dir.path(), "pre_request")
            .into_iter()
            .filter(|e| e["uri"] == "/hello?1")
            .collect();
        (!e.is_empty()).then_some(e)
    });
    assert_eq!(pre[0]["pid"], served);
    assert_eq!(pre[0]["method"], "GET");
    let post = wait_for(Duration::from_secs(5), "post_request", || {
        let e: Vec<_> = events(dir.path(), "post_request")
            .into_iter()
            .filter(|e| e["uri"] == "/hello?1")
            .collect();
        (!e.is_empty()).then_some(e)
    });
    assert_eq!(post[0]["status"], 200);
    assert_eq!(post[0]["path"], "/hello");
    // post-request sees what the client got when the app raised: the 500.
    assert_eq!(s.get("/fail").status, 500);
    let failed = wait_for(Duration::from_secs(5), "post_request of /fail", || {
        events(dir.path(), "post_request")
            .into_iter()
            .find(|e| e["uri"] == "/fail")
    });
    assert_eq!(failed["status"], 500);

    // A reload: a new fork server runs post-load (reloading) and on-reload.
    s.signal(nix::sys::signal::Signal::SIGHUP);
    assert!(
        s.wait_log("reload complete", Duration::from_secs(30)),
        "{}",
        s.log_text()
    );
    let reloads = events(dir.path(), "on_reload");
    assert_eq!(reloads.len(), 1, "{reloads:?}");
    assert_ne!(reloads[0]["pid"].as_u64().unwrap(), zygote);
    let loads = events(dir.path(), "post_load");
    assert_eq!(loads.len(), 2);
    assert_eq!(loads[1]["reloading"], true);
    assert_eq!(loads[1]["pid"], reloads[0]["pid"]);
    // The old workers exited normally through worker-exit.
    let exited: BTreeSet<u64> = wait_for(Duration::from_secs(10), "worker_exit", || {
        let e: BTreeSet<u64> = events(dir.path(), "worker_exit")
            .iter()
            .map(|e| e["pid"].as_u64().unwrap())
            .collect();
        pids.is_subset(&e).then_some(e)
    });
    assert!(events(dir.path(), "worker_exit")
        .iter()
        .all(|e| e["alive"] == false));
    let status = s.terminate();
    assert!(status.success());
    assert!(events(dir.path(), "worker_exit").len() > exited.len());
}

/// OpenTelemetry's advice for preloading servers: threads do not survive a fork, so the
/// BatchSpanProcessor is made in each worker by the post-fork hook. Every worker's spans are
/// exported by its own processor thread while the server runs.
#[test]
fn otel_batch_span_processor_set_up_in_post_fork_exports_from_every_worker() {
    let v = venv();
    let spans = tempdir();
    let s = Server::start_env(
        "otel_app:application",
        &[
            "--workers",
            "3",
            "--venv",
            v.to_str().unwrap(),
            "--post-fork",
            "otel_app:post_fork",
            "--worker-exit",
            "otel_app:worker_exit",
        ],
        &[("OTEL_SPANS_DIR", spans.path().to_str().unwrap())],
    );
    assert!(
        s.log_text().contains("\"preload\":true"),
        "{}",
        s.log_text()
    );
    let pids = worker_pids(&s, 3);
    for pid in &pids {
        let exported = wait_for(
            Duration::from_secs(30),
            &format!("spans exported by worker {pid}"),
            || {
                let lines = json_lines(&spans.path().join(format!("spans-{pid}.jsonl")));
                (!lines.is_empty()).then_some(lines)
            },
        );
        for span in &exported {
            assert_eq!(span["name"], "request");
            assert_eq!(span["pid"], *pid);
            // Exported from the processor's own thread, not the request's.
            assert_ne!(span["thread"], "MainThread", "{span}");
        }
    }
    assert!(s.wait_log("tracing set up in worker", Duration::from_secs(5)));
    let status = s.terminate();
    assert!(status.success(), "{status:?}");
}

/// post-fork raises in the first worker only: its traceback is logged, that worker never
/// serves (it exits with 5) and a replacement does.
#[test]
fn a_raising_post_fork_or_post_worker_init_retires_that_worker_and_the_next_one_serves() {
    for hook in ["post_fork", "post_worker_init"] {
        let dir = tempdir();
        let s = start(dir.path(), &format!("{hook}:once"), &["--workers", "1"]);
        assert_eq!(s.get("/").status, 200);
        let log = s.log_text();
        assert!(log.contains("hook raised"), "{hook}: {log}");
        assert!(
            log.contains(&format!("the {hook} hook failed on purpose")),
            "{log}"
        );
        assert!(log.contains("Traceback"), "{log}");
        assert!(
            s.wait_log(
                "a post-fork or post-worker-init hook raised",
                Duration::from_secs(10)
            ),
            "{}",
            s.log_text()
        );
        // The worker that raised served nothing.
        let failed = events(dir.path(), hook)[0]["pid"].as_u64().unwrap();
        assert!(events(dir.path(), "pre_request")
            .iter()
            .all(|e| e["pid"] != failed));
        assert!(s.terminate().success());
    }
}

/// A post-fork hook that always raises: no worker ever serves, the crash-loop backoff
/// applies, and the master stays up (admin port answering, not ready).
#[test]
fn a_post_fork_hook_that_always_raises_cannot_take_the_master_down() {
    let dir = tempdir();
    let mut args = all_hooks();
    args.extend(["--workers".into(), "1".into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut s = Server::start_unready(
        APP,
        &args,
        &[
            ("HOOKS_DIR", dir.path().to_str().unwrap()),
            ("HOOKS_RAISE", "post_fork"),
        ],
    );
    // Several workers tried and failed, spaced by the backoff.
    wait_for(Duration::from_secs(30), "three failed workers", || {
        (events(dir.path(), "post_fork").len() >= 3).then_some(())
    });
    assert!(s.alive(), "the master is alive");
    assert_eq!(support::get(s.admin, "/healthz").unwrap().status, 200);
    assert_eq!(support::get(s.admin, "/readyz").unwrap().status, 503);
    let text = s.log_text();
    assert!(text.contains("respawn_in_ms"), "{text}");
    assert!(
        text.contains("the post_fork hook failed on purpose"),
        "{text}"
    );
}

/// The other hooks raising: logged with the traceback, and serving goes on.
#[test]
fn raising_fork_server_request_and_exit_hooks_are_logged_and_serving_goes_on() {
    let dir = tempdir();
    let s = start(
        dir.path(),
        "post_load,on_reload,pre_request,post_request,worker_exit",
        &["--workers", "1"],
    );
    let r = s.get("/");
    assert_eq!(
        r.status, 200,
        "a raising pre-request hook does not fail the request"
    );
    assert_eq!(s.get("/again").status, 200);
    for hook in ["post_load", "pre_request", "post_request"] {
        assert!(
            s.wait_log(
                &format!("the {hook} hook failed on purpose"),
                Duration::from_secs(5)
            ),
            "{hook}: {}",
            s.log_text()
        );
    }
    s.signal(nix::sys::signal::Signal::SIGHUP);
    assert!(
        s.wait_log("reload complete", Duration::from_secs(30)),
        "{}",
        s.log_text()
    );
    assert!(s.wait_log(
        "the on_reload hook failed on purpose",
        Duration::from_secs(5)
    ));
    assert!(s.wait_log(
        "the worker_exit hook failed on purpose",
        Duration::from_secs(10)
    ));
    assert_eq!(s.get("/").status, 200);
    let (status, log) = s.terminate_within(Duration::from_secs(60));
    assert!(status.success(), "{log}");
}

#[test]
fn a_hook_that_cannot_be_loaded_is_a_clear_error_at_start() {
    let (status, log) = start_failing(APP, &["--post-fork", "no_such_module:post_fork"]);
    assert!(!status.success());
    assert!(
        log.contains("cannot load the post-fork hook no_such_module:post_fork"),
        "{log}"
    );
    assert!(log.contains("ModuleNotFoundError"), "{log}");
    let (status, log) = start_failing(APP, &["--worker-exit", "hooked:no_such_function"]);
    assert!(!status.success());
    assert!(log.contains("no attribute 'no_such_function'"), "{log}");
    // A function that needs more arguments than the hook has.
    let (status, log) = start_failing(APP, &["--pre-request", "hooked:needs_five"]);
    assert!(!status.success());
    assert!(
        log.contains("cannot be called with 2 or fewer positional arguments"),
        "{log}"
    );
}

/// A gunicorn config file, loaded by path, with hooks that take fewer arguments than offered.
#[test]
fn hooks_load_from_a_gunicorn_conf_py_by_path() {
    let dir = tempdir();
    let conf = dir.path().join("gunicorn.conf.py");
    std::fs::write(
        &conf,
        "import os\nbind = '0.0.0.0:8000'\nworkers = 4\nmarker = os.path.join(os.path.dirname(__file__), 'forked')\n\
         def post_fork(server, worker):\n    open(marker + '-' + str(worker.pid), 'w').close()\n\
         def when_ready():\n    open(os.path.join(os.path.dirname(__file__), 'ready'), 'w').close()\n",
    )
    .unwrap();
    let post_fork = format!("{}:post_fork", conf.display());
    let when_ready = format!("{}:when_ready", conf.display());
    let s = Server::start(
        APP,
        &[
            "--workers",
            "1",
            "--post-fork",
            &post_fork,
            "--post-load",
            &when_ready,
        ],
    );
    let pid = s.get("/").json()["pid"].as_u64().unwrap();
    assert!(dir.path().join(format!("forked-{pid}")).exists());
    assert!(dir.path().join("ready").exists());
    assert!(s.terminate().success());
}
