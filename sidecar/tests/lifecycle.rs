//! Process lifecycle through the real binary: dead workers, failed imports, shutdown.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::{Duration, Instant};

use support::{start_failing, Server};

const APP: &str = "pep3333:application";

#[test]
fn sigkilled_worker_fails_only_its_request_and_is_replaced() {
    let s = Server::start(APP, &["--workers", "1"]);
    let pid = s.get("/pid").json()["pid"].as_u64().unwrap() as i32;
    let addr = s.addr;
    let victim = std::thread::spawn(move || support::get(addr, "/sleep?3000").unwrap().status);
    s.wait_in_flight(1);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    assert_eq!(victim.join().unwrap(), 502);
    // The replacement serves, with a new pid.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = s.get("/pid");
        if r.status == 200 {
            assert_ne!(r.json()["pid"].as_u64().unwrap() as i32, pid);
            break;
        }
        assert!(Instant::now() < deadline, "no replacement worker");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(s.log_text().contains("worker died"), "{}", s.log_text());
    // How it died: the signal, whichever of the link and the fork server noticed first.
    assert!(
        s.wait_log("killed by signal 9 (SIGKILL)", Duration::from_secs(5)),
        "{}",
        s.log_text()
    );
}

/// Child pids of `pid`, from /proc.
fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Whether `pid` still runs (a zombie waiting for its reaper does not).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        let state = stat.rsplit_once(')').map(|(_, rest)| rest.trim_start());
        !state.is_some_and(|s| s.starts_with('Z') || s.starts_with('X'))
    })
}

/// A master killed outright (SIGKILL, the OOM killer) takes its fork server and workers
/// with it: each notices the end of its socket and exits, single-threaded or threaded.
#[test]
fn a_killed_master_leaves_no_process_behind() {
    for threads in ["1", "2"] {
        let s = Server::start(APP, &["--workers", "2", "--threads", threads]);
        let zygotes = children(s.pid());
        let workers: Vec<u32> = zygotes.iter().flat_map(|z| children(*z)).collect();
        assert_eq!(workers.len(), 2, "two workers under {zygotes:?}");
        s.signal(nix::sys::signal::Signal::SIGKILL);
        let deadline = Instant::now() + Duration::from_secs(15);
        let left = |all: &[u32]| {
            all.iter()
                .copied()
                .filter(|p| running(*p))
                .collect::<Vec<_>>()
        };
        while !left(&workers).is_empty() || !left(&zygotes).is_empty() {
            assert!(
                Instant::now() < deadline,
                "--threads {threads}: still running: workers {:?}, fork server {:?}",
                left(&workers),
                left(&zygotes)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn failed_import_is_a_clear_error_and_nonzero_exit() {
    for extra in [&[][..], &["--no-preload", "--workers", "2"][..]] {
        let (status, log) = start_failing("broken:application", extra);
        assert!(!status.success(), "{extra:?}: exit {status:?}");
        assert!(
            log.contains("this_module_does_not_exist"),
            "{extra:?}: {log}"
        );
        assert!(log.contains("ModuleNotFoundError"), "{extra:?}: {log}");
        // Once, however many workers tried, and without a misleading socket error.
        assert_eq!(log.matches("Traceback").count(), 1, "{extra:?}: {log}");
        assert!(!log.contains("bad frame"), "{extra:?}: {log}");
    }
    let (status, log) = start_failing("pep3333:no_such_callable", &[]);
    assert!(!status.success());
    assert!(log.contains("no_such_callable"), "{log}");
}

#[test]
fn bad_flags_are_rejected_before_starting() {
    let (status, _) = start_failing(APP, &["--workers", "5:2"]);
    assert_eq!(status.code(), Some(2));
    let (status, _) = start_failing(APP, &["--cheaper-algo", "sparse"]);
    assert_eq!(status.code(), Some(2));
    // A temporary directory that cannot take a file is found at start, not at the first
    // large upload.
    let (status, log) = start_failing(APP, &["--temp-dir", "/nonexistent/wsgiscale-tmp"]);
    assert!(!status.success());
    assert!(
        log.contains("--temp-dir /nonexistent/wsgiscale-tmp"),
        "{log}"
    );
}

#[test]
fn sigterm_drains_in_flight_requests_and_exits_zero() {
    let s = Server::start(APP, &["--workers", "1", "--graceful-timeout", "10"]);
    let addr = s.addr;
    let in_flight = std::thread::spawn(move || support::get(addr, "/sleep?1000").unwrap());
    s.wait_in_flight(1);
    let status = s.terminate();
    assert!(status.success(), "{status:?}");
    let r = in_flight.join().unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["slept_ms"], 1000);
}

/// The shutdown contract (`wsgiscale_core::shutdown::ShutdownBudget`, which the operator sizes
/// terminationGracePeriodSeconds from): a request still running past the drain deadline does
/// not hold the server; its worker is killed after the workers' step and the server exits
/// within the whole budget.
#[test]
fn a_request_past_the_drain_deadline_does_not_hold_the_shutdown() {
    use wsgiscale_core::shutdown::ShutdownBudget;
    let s = Server::start(APP, &["--workers", "1", "--graceful-timeout", "1"]);
    let addr = s.addr;
    let stuck = std::thread::spawn(move || support::get(addr, "/sleep?60000").map(|r| r.status));
    s.wait_in_flight(1);
    let budget = ShutdownBudget::new(Duration::from_secs(1));
    let started = Instant::now();
    // The bound is the contract itself (plus a second for process start-up noise).
    let (status, log) = s.terminate_within(budget.total() + Duration::from_secs(1));
    assert!(status.success(), "{status:?}\n{log}");
    assert!(
        started.elapsed() >= budget.drain,
        "the drain deadline was honoured"
    );
    assert!(log.contains("worker did not exit in time"), "{log}");
    // The client was cut off at the drain deadline, never answered 200 by a killed worker.
    assert_ne!(stuck.join().unwrap().ok(), Some(200));
}

#[test]
fn no_preload_imports_in_each_worker() {
    let s = Server::start(APP, &["--workers", "2", "--no-preload"]);
    assert_eq!(s.get("/pid").status, 200);
    assert!(
        s.log_text().contains("\"preload\":false"),
        "{}",
        s.log_text()
    );
}

#[test]
fn readiness_fails_while_draining() {
    let s = Server::start(APP, &["--workers", "1", "--graceful-timeout", "10"]);
    let addr = s.addr;
    let admin = s.admin;
    let in_flight = std::thread::spawn(move || support::get(addr, "/sleep?1500").unwrap().status);
    s.wait_in_flight(1);
    s.signal(nix::sys::signal::Signal::SIGTERM);
    // Readiness turns false while the request is still running.
    let deadline = Instant::now() + Duration::from_secs(5);
    while support::get(admin, "/readyz").unwrap().status != 503 {
        assert!(
            Instant::now() < deadline,
            "/readyz stayed ready while draining"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(s.load()["draining"], true);
    assert_eq!(in_flight.join().unwrap(), 200);
}

#[test]
fn environment_twins_configure_the_server() {
    let s = Server::start_env(
        "",
        &[],
        &[
            ("WSGISCALE_APP", APP),
            ("WSGISCALE_WORKERS", "3"),
            ("WSGISCALE_MAX_QUEUE", "42"),
            ("WSGISCALE_THREADS", "2"),
            ("WSGISCALE_ACCESS_LOG", "true"),
        ],
    );
    let l = s.wait_load(Duration::from_secs(10), "3 workers", |l| {
        l["workers"]["total"] == 3
    });
    assert_eq!(l["queue"]["max"], 42);
    assert_eq!(l["workers"]["threads"], 2);
    assert_eq!(s.get("/environ").json()["wsgi.multithread"], true);
    assert!(
        s.wait_log("\"path\":\"/environ\"", Duration::from_secs(5)),
        "access log line:\n{}",
        s.log_text()
    );
    // The client's address as an address, not a Rust Option.
    assert!(
        s.log_text().contains("\"remote\":\"127.0.0.1\""),
        "access log line:\n{}",
        s.log_text()
    );
}

/// A file path removed when dropped (also when the test fails).
struct Scratch(std::path::PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let p = std::env::temp_dir().join(format!("wsgiscale-{}-{name}", std::process::id()));
        let _ = std::fs::remove_file(&p);
        Scratch(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn the_admin_port_answers_while_the_app_imports_and_sigterm_ends_the_import() {
    let done = Scratch::new("slow-import-done");
    let marker = done.0.to_string_lossy().into_owned();
    let s = Server::start_admin_only(
        "slow_import:application",
        &["--workers", "1"],
        &[("SLOW_IMPORT_SECONDS", "20"), ("SLOW_IMPORT_DONE", &marker)],
    );
    // Alive: the master runs, however long the import takes.
    let health = support::get(s.admin, "/healthz").unwrap();
    assert_eq!(health.status, 200, "{}", s.log_text());
    // Not ready, and why; and the import is indeed still running (it has not written its mark).
    let ready = support::get(s.admin, "/readyz").unwrap();
    assert_eq!(
        (ready.status, ready.text().trim()),
        (503, "importing the app")
    );
    assert!(
        !done.0.exists(),
        "the import had ended before /healthz answered"
    );
    assert!(!s.log_text().contains("fork server ready"));
    // A stop during the import ends it: no wait for an import nobody will use.
    let (status, log) = s.terminate_within(Duration::from_secs(15));
    assert!(status.success(), "exit {status:?}: {log}");
    assert!(log.contains("stopping during the import"), "{log}");
    assert!(!done.0.exists(), "the import went on after the stop: {log}");
}

#[test]
fn readiness_goes_from_importing_to_ready() {
    let s = Server::start_admin_only(
        "slow_import:application",
        &["--workers", "1"],
        &[("SLOW_IMPORT_SECONDS", "2")],
    );
    let first = support::get(s.admin, "/readyz").unwrap();
    assert_eq!(
        (first.status, first.text().trim()),
        (503, "importing the app")
    );
    s.wait_ready();
    assert_eq!(support::get(s.admin, "/healthz").unwrap().status, 200);
    assert!(s.log_text().contains("fork server ready"));
}
