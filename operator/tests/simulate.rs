//! The simulator on the shipped traces: the real autoscaler decision and the real worker
//! algorithms, replayed deterministically (seeded arrivals), no wall-clock timing.

use std::path::PathBuf;
use std::process::Command;

use wsgiscale_operator::simulate::{run, PolicyKind, SimConfig, Trace};

fn trace(name: &str) -> Trace {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/traces")
        .join(name);
    let text = std::fs::read_to_string(&path).expect("the trace ships with the repository");
    Trace::parse(&text).expect("the shipped trace parses")
}

/// A step from 10 to 200 req/s (100 ms each) at t = 60 s, default policy: 1..20 pods of 1..4
/// workers, target 70%, so 200 x 0.1 / (4 x 0.7) = 7.1 -> 8 pods are needed.
///
/// The bound: the operator decides every tick (2 s); the first tick after the step (62 s)
/// already sees the burst, and the panic window (6 s = 3 ticks) is entirely after the step at
/// 66 s, where its average alone needs the 8 pods. So the scale-up to at least 8 pods must be
/// asked for by t = 60 + 6 s, in panic mode, and the pods are ready one pod start-up (10 s)
/// later.
#[test]
fn a_step_gets_its_replicas_within_the_panic_window() {
    let cfg = SimConfig::from_yaml("").expect("defaults");
    let out = run(&trace("step.csv"), &cfg, PolicyKind::Wsgiscale);
    let (t, from, to, why) = out
        .events
        .iter()
        .find(|(t, ..)| *t > 60.0)
        .expect("a scale-up after the step");
    assert!(*t <= 66.0, "asked at {t} s: {why}");
    assert!(*to >= 8, "{from} -> {to}: {why}");
    assert!(why.starts_with("panic: "), "{why}");
    let ready_at = |t: f64| {
        out.series
            .iter()
            .find(|p| p.t >= t)
            .map(|p| p.ready)
            .unwrap_or(0)
    };
    assert!(ready_at(66.0 + 10.0) >= 8, "{:?}", &out.series[60..80]);
    // And after the step, back down to what 10 req/s needs.
    assert!(out.summary.final_replicas <= 2, "{:?}", out.summary);
}

/// 120 req/s of 100 ms requests for 10 minutes (Poisson arrivals, exponential service), on the
/// 3 pods of 1..8 workers it needs: zero scale events, whatever the seed.
#[test]
fn a_steady_noisy_load_gives_zero_scale_events_over_ten_minutes() {
    let mut cfg = SimConfig::from_yaml(
        "initialReplicas: 3\nworkers:\n  min: 1\n  initial: 6\n  max: 8\n  algorithm: spare2\n",
    )
    .expect("valid policy");
    let steady = trace("steady.csv");
    assert_eq!(steady.duration(), 600.0);
    for seed in 1..=5 {
        cfg.seed = seed;
        let out = run(&steady, &cfg, PolicyKind::Wsgiscale);
        assert!(out.summary.requests > 60_000, "{:?}", out.summary);
        assert_eq!(out.summary.scale_events, 0, "seed {seed}: {:?}", out.events);
        assert_eq!(out.summary.max_replicas, 3);
    }
}

/// Every shipped trace runs under every policy, within the bounds.
#[test]
fn every_trace_runs_under_every_policy_within_bounds() {
    let cfg = SimConfig::from_yaml("replicas:\n  min: 1\n  max: 12\n").expect("valid");
    for name in ["step.csv", "spike.csv", "ramp.csv"] {
        for kind in [PolicyKind::Wsgiscale, PolicyKind::Hpa, PolicyKind::Knative] {
            let out = run(&trace(name), &cfg, kind);
            assert!(
                out.series.iter().all(|p| (1..=12).contains(&p.replicas)),
                "{name} {kind:?}"
            );
            assert!(out.summary.max_replicas <= 12);
        }
    }
}

/// The command line: the JSON summary is the last line of stdout, and the plot is a PNG.
#[test]
fn the_cli_prints_json_last_and_writes_a_png() {
    let dir = std::env::temp_dir().join(format!("wsgiscale-sim-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let png = dir.join("step.png");
    let trace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/traces/step.csv");
    let out = Command::new(env!("CARGO_BIN_EXE_wsgiscale-operator"))
        .args(["simulate", "--trace"])
        .arg(&trace)
        .args(["--policy-kind", "knative", "--json", "--plot"])
        .arg(&png)
        .output()
        .expect("the binary runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).expect("utf-8");
    let last = stdout.lines().last().expect("output");
    let v: serde_json::Value = serde_json::from_str(last).expect("the last line is JSON");
    for key in [
        "max_replicas",
        "final_replicas",
        "scale_events",
        "p99_queue_wait_ms",
        "worker_seconds",
    ] {
        assert!(v.get(key).is_some_and(|x| x.is_number()), "{key} in {last}");
    }
    assert_eq!(v["policy"], "knative");
    let bytes = std::fs::read(&png).expect("the plot was written");
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    // A bad trace is an error with the line, not a panic.
    let bad = dir.join("bad.csv");
    std::fs::write(&bad, "t,r\n").expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_wsgiscale-operator"))
        .args(["simulate", "--trace"])
        .arg(&bad)
        .output()
        .expect("the binary runs");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("trace line 1"));
    let _ = std::fs::remove_dir_all(&dir);
}
