//! Adaptive workers, lifecycle and the load report, through the real binary.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use nix::sys::signal::Signal;
use support::{Load, Server};

const APP: &str = "pep3333:application";

fn total(l: &serde_json::Value) -> u64 {
    l["workers"]["total"].as_u64().unwrap()
}

fn active(l: &serde_json::Value) -> u64 {
    total(l) - l["workers"]["retiring"].as_u64().unwrap()
}

#[test]
fn step_load_climbs_to_max_and_returns_to_min_without_failures() {
    let s = Server::start(
        APP,
        &[
            "--workers",
            "1:4",
            "--cheaper-algo",
            "spare",
            "--cheaper-overload",
            "1",
        ],
    );
    assert_eq!(total(&s.load()), 1);
    let load = Load::start(s.addr, "/sleep?50", 12);
    let at_max = s.wait_load(Duration::from_secs(30), "4 workers", |l| active(l) == 4);
    assert_eq!(at_max["workers"]["max"], 4);
    load.wait_more(50, Duration::from_secs(20));
    let (count, failed) = load.finish();
    assert!(count > 50, "load ran: {count}");
    assert!(
        failed.is_empty(),
        "failed requests during the step: {failed:?}"
    );
    s.wait_load(Duration::from_secs(30), "back to 1 worker", |l| {
        total(l) == 1
    });
    let log = s.log_text();
    assert!(
        log.contains("all busy"),
        "scaling decisions are logged with reasons:\n{log}"
    );
}

#[test]
fn retiring_under_continuous_load_fails_nothing() {
    let s = Server::start(
        APP,
        &[
            "--workers",
            "1:4",
            "--workers-initial",
            "4",
            "--cheaper-algo",
            "manual",
        ],
    );
    let load = Load::start(s.addr, "/sleep?5", 6);
    load.wait_more(50, Duration::from_secs(20));
    for left in [3, 2, 1] {
        s.signal(Signal::SIGTTOU);
        s.wait_load(Duration::from_secs(10), "one fewer", |l| total(l) == left);
        load.wait_more(20, Duration::from_secs(20));
    }
    let (count, failed) = load.finish();
    assert!(count > 100, "load ran: {count}");
    assert!(failed.is_empty(), "retirement failed requests: {failed:?}");
}

#[test]
fn ttin_and_ttou_move_the_count_within_bounds() {
    let s = Server::start(APP, &["--workers", "1:3", "--cheaper-algo", "manual"]);
    s.signal(Signal::SIGTTIN);
    s.wait_load(Duration::from_secs(10), "2 workers", |l| active(l) == 2);
    s.signal(Signal::SIGTTIN);
    s.signal(Signal::SIGTTIN);
    s.wait_load(Duration::from_secs(10), "3 workers (MAX)", |l| {
        active(l) == 3
    });
    // One more at MAX: the log says it was not applied, and why (so a scaling check ran at
    // MAX, and the count stayed there).
    s.signal(Signal::SIGTTIN);
    assert!(
        s.wait_log(
            "manual worker adjustment not applied",
            Duration::from_secs(5)
        ),
        "{}",
        s.log_text()
    );
    assert_eq!(active(&s.load()), 3, "never above MAX");
    for left in [2, 1] {
        s.signal(Signal::SIGTTOU);
        s.wait_load(Duration::from_secs(10), "one fewer", |l| total(l) == left);
    }
    s.signal(Signal::SIGTTOU);
    assert!(
        s.wait_log("at MIN 1", Duration::from_secs(5)),
        "{}",
        s.log_text()
    );
    assert_eq!(total(&s.load()), 1, "never below MIN");
}

#[test]
fn sighup_reload_under_load_fails_nothing_and_replaces_every_worker() {
    let s = Server::start(APP, &["--workers", "2"]);
    let before: std::collections::HashSet<u64> = (0..20)
        .map(|_| s.get("/pid").json()["pid"].as_u64().unwrap())
        .collect();
    let load = Load::start(s.addr, "/sleep?10", 6);
    load.wait_more(30, Duration::from_secs(20));
    s.signal(Signal::SIGHUP);
    assert!(
        s.wait_log("reload complete", Duration::from_secs(30)),
        "{}",
        s.log_text()
    );
    load.wait_more(50, Duration::from_secs(20));
    let (count, failed) = load.finish();
    assert!(count > 50, "load ran: {count}");
    assert!(failed.is_empty(), "reload failed requests: {failed:?}");
    s.wait_load(Duration::from_secs(10), "old workers gone", |l| {
        total(l) == 2
    });
    let after: std::collections::HashSet<u64> = (0..20)
        .map(|_| s.get("/pid").json()["pid"].as_u64().unwrap())
        .collect();
    assert!(
        before.is_disjoint(&after),
        "every worker replaced: {before:?} vs {after:?}"
    );
}

#[test]
fn stuck_request_is_killed_at_timeout_with_its_stack_logged() {
    let s = Server::start(APP, &["--workers", "1", "--timeout", "1"]);
    let r = s.get("/sleep?5000");
    assert_eq!(r.status, 504);
    assert!(
        s.wait_log("in sleep_app", Duration::from_secs(5)),
        "python stack in the log:\n{}",
        s.log_text()
    );
    assert!(s.log_text().contains("exceeded --timeout"));
    // The timeout's line names the request. The master writes it before the 504 goes out,
    // but the worker's stack may reach the captured log first: wait for it.
    assert!(
        s.wait_log("request timed out", Duration::from_secs(5)),
        "{}",
        s.log_text()
    );
    let log = s.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("request timed out"))
        .unwrap_or_default();
    assert!(
        line.contains("GET") && line.contains("/sleep?5000"),
        "{log}"
    );
    // A replacement serves.
    s.wait_ready();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while s.get("/pid").status != 200 {
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn max_requests_recycles_workers_gracefully() {
    let s = Server::start(
        APP,
        &[
            "--workers",
            "2",
            "--max-requests",
            "5",
            "--max-requests-jitter",
            "2",
        ],
    );
    // Requests until the recycling (checked once a second) has replaced a worker twice.
    let mut pids = std::collections::HashSet::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while pids.len() <= 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "no recycling: {pids:?}"
        );
        let r = s.get("/pid");
        assert_eq!(r.status, 200);
        pids.insert(r.json()["pid"].as_u64().unwrap());
    }
    assert!(s.log_text().contains("max-requests"), "{}", s.log_text());
}

#[test]
fn config_file_changes_apply_live_and_invalid_ones_are_refused() {
    let dir = std::env::temp_dir().join(format!("wsgiscale-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("config.yaml");
    std::fs::write(&file, "workers: \"1:2\"\ncheaper-algo: manual\n").unwrap();
    let s = Server::start(APP, &["--config", file.to_str().unwrap()]);
    let pid_before = s.get("/pid").json()["pid"].as_u64().unwrap();
    assert_eq!(s.load()["workers"]["min"], 1);
    // A ConfigMap update is a symlink swap; a rename gives the same new-inode effect.
    let tmp = dir.join("config.yaml.new");
    std::fs::write(&tmp, "workers: \"3:5\"\ncheaper-algo: manual\n").unwrap();
    std::fs::rename(&tmp, &file).unwrap();
    s.wait_load(Duration::from_secs(15), "min 3 applied", |l| {
        l["workers"]["min"] == 3 && l["workers"]["max"] == 5 && active(l) == 3
    });
    // Healthy workers were not restarted: the first worker is still alive.
    assert!(!s.log_text().contains("worker retired"), "{}", s.log_text());
    assert!(std::path::Path::new(&format!("/proc/{pid_before}")).exists());
    std::fs::write(&file, "workers: \"5:1\"\n").unwrap();
    assert!(
        s.wait_log("new config rejected", Duration::from_secs(15)),
        "{}",
        s.log_text()
    );
    let l = s.load();
    assert_eq!(l["workers"]["min"], 3);
    assert_eq!(l["workers"]["max"], 5);
    drop(s);
    let _ = std::fs::remove_dir_all(dir);
}

/// The operator's pods run with `--ignore-env`: a `WSGISCALE_*` variable that reached the pod
/// (through an `envFrom` the operator cannot see into) is logged and ignored, so it cannot
/// freeze the live config file. Without the flag the variable wins, and the server says which
/// file settings it overrides.
#[test]
fn ignore_env_keeps_the_environment_from_freezing_the_config_file() {
    let dir = std::env::temp_dir().join(format!("wsgiscale-env-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("config.yaml");
    std::fs::write(&file, "workers: \"1:2\"\ncheaper-algo: manual\n").unwrap();
    let env = [("WSGISCALE_WORKERS", "4"), ("WSGISCALE_MAX_QUEUE", "7")];
    let path = file.to_str().unwrap();

    let pinned = Server::start_env(APP, &["--config", path], &env);
    assert_eq!(pinned.load()["workers"]["min"], 4);
    assert!(
        pinned.wait_log(
            "overridden by the command line or environment",
            Duration::from_secs(5)
        ),
        "{}",
        pinned.log_text()
    );
    drop(pinned);

    let s = Server::start_env(APP, &["--config", path, "--ignore-env"], &env);
    assert_eq!(s.load()["workers"]["min"], 1);
    assert!(
        s.wait_log("WSGISCALE_MAX_QUEUE", Duration::from_secs(5))
            && s.log_text().contains("WSGISCALE_WORKERS"),
        "the ignored variables are named: {}",
        s.log_text()
    );
    let tmp = dir.join("config.yaml.new");
    std::fs::write(&tmp, "workers: \"2:3\"\ncheaper-algo: manual\n").unwrap();
    std::fs::rename(&tmp, &file).unwrap();
    s.wait_load(Duration::from_secs(15), "min 2 applied", |l| {
        l["workers"]["min"] == 2 && l["workers"]["max"] == 3
    });
    drop(s);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn metrics_parse_with_a_prometheus_parser() {
    let s = Server::start(APP, &["--workers", "2"]);
    for _ in 0..5 {
        assert_eq!(s.get("/pid").status, 200);
    }
    assert_eq!(s.get("/raise").status, 500);
    // Worker memory is read once a second: wait for the first reading.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = support::get(s.admin, "/metrics").unwrap().text();
        if text
            .lines()
            .any(|l| l.starts_with("wsgiscale_workers_memory_bytes") && !l.ends_with(" 0"))
        {
            break text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no memory reading:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("valid Prometheus text");
    let value = |name: &str, label: Option<(&str, &str)>| -> f64 {
        scrape
            .samples
            .iter()
            .filter(|smp| smp.metric == name)
            .filter(|smp| label.is_none_or(|(k, v)| smp.labels.get(k) == Some(v)))
            .map(|smp| match smp.value {
                prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Gauge(v) => v,
                _ => 0.0,
            })
            .sum()
    };
    assert_eq!(
        value("wsgiscale_requests_total", Some(("class", "2xx"))),
        5.0,
        "{text}"
    );
    assert_eq!(
        value("wsgiscale_requests_total", Some(("class", "5xx"))),
        1.0,
        "{text}"
    );
    assert_eq!(
        value("wsgiscale_workers", Some(("state", "idle"))),
        2.0,
        "{text}"
    );
    assert_eq!(
        value("wsgiscale_worker_spawns_total", Some(("reason", "initial"))),
        2.0
    );
    assert!(value("wsgiscale_workers_memory_bytes", None) > 1e6);
    for name in [
        "wsgiscale_queue_wait_seconds",
        "wsgiscale_request_duration_seconds",
    ] {
        assert!(
            scrape.samples.iter().any(|smp| smp.metric == name),
            "{name} missing"
        );
    }
}

fn keys(v: &serde_json::Value) -> Vec<String> {
    let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
    k.sort();
    k
}

#[test]
fn load_report_matches_its_documented_schema() {
    let s = Server::start(APP, &["--workers", "1:3", "--max-queue", "77"]);
    assert_eq!(s.get("/pid").status, 200);
    // Requests flow until the one-second samples show a rate.
    let load = Load::start(s.addr, "/pid", 1);
    let l = s.wait_load(Duration::from_secs(10), "a request rate", |l| {
        l["rates"]["10s"]["requests_per_second"]
            .as_f64()
            .unwrap_or(0.0)
            > 0.0
    });
    let (_, failed) = load.finish();
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(
        keys(&l),
        [
            "draining",
            "in_flight",
            "queue",
            "rates",
            "saturated",
            "time_unix_ms",
            "version",
            "workers"
        ]
    );
    assert_eq!(l["version"], 1);
    assert_eq!(
        keys(&l["workers"]),
        ["busy", "idle", "max", "min", "retiring", "starting", "threads", "total"]
    );
    assert_eq!(keys(&l["queue"]), ["depth", "max", "oldest_wait_ms"]);
    assert_eq!(l["queue"]["max"], 77);
    assert_eq!(keys(&l["rates"]), ["10s", "1s", "60s"]);
    for w in ["1s", "10s", "60s"] {
        assert_eq!(
            keys(&l["rates"][w]),
            [
                "arrivals_per_second",
                "concurrency",
                "requests_per_second",
                "service_seconds",
                "utilization"
            ]
        );
        let u = l["rates"][w]["utilization"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&u));
    }
    // The operator's type reads it back.
    let typed: wsgiscale_core::load::LoadReport = serde_json::from_value(l.clone()).unwrap();
    assert_eq!(typed.workers.max, 3);
    assert!(!typed.draining);
}
