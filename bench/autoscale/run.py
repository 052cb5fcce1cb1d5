#!/usr/bin/env python3
"""Runs `wsgiscale-operator simulate` on the four example traces under the wsgiscale,
HPA-like and Knative-like policies, draws the wsgiscale runs to docs/img/sim-<trace>.png and
prints a markdown table (cost in worker-seconds, p99 queue wait, scale events).

    python3 bench/autoscale/run.py [--bin PATH] [--out bench/RESULTS-autoscale.md]

Deterministic: the simulator seeds its arrivals, so the table is the same on every machine.
"""
import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
TRACES = ["step", "spike", "ramp", "sawtooth"]
RUNS = [
    # (label, --policy-kind, policy file, plot suffix)
    ("wsgiscale", "wsgiscale", "bench/autoscale/policy.yaml", "wsgiscale"),
    ("wsgiscale, 50% target", "wsgiscale", "bench/autoscale/policy-headroom.yaml", "wsgiscale-50"),
    ("HPA-like", "hpa", "bench/autoscale/policy.yaml", "hpa"),
    ("Knative-like", "knative", "bench/autoscale/policy.yaml", "knative"),
]


def simulate(binary, trace, kind, policy, plot):
    cmd = [binary, "simulate", "--trace", f"examples/traces/{trace}.csv",
           "--policy", policy, "--policy-kind", kind, "--json"]
    if plot:
        cmd += ["--plot", plot]
    out = subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True).stdout
    return " ".join(cmd[:1] + cmd[1:]), json.loads(out.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.environ.get(
        "WSGISCALE_OPERATOR_BIN", "target/release/wsgiscale-operator"))
    ap.add_argument("--no-plots", action="store_true", help="draw nothing")
    ap.add_argument("--plots-dir", help="draw every run's plot here instead")
    args = ap.parse_args()
    rows = []
    for trace in TRACES:
        for label, kind, policy, suffix in RUNS:
            # The repository keeps one plot per trace (the wsgiscale policy); --plots-dir
            # draws every run.
            if args.plots_dir:
                plot = os.path.join(args.plots_dir, f"sim-{trace}-{suffix}.png")
            elif suffix == "wsgiscale" and not args.no_plots:
                plot = f"docs/img/sim-{trace}.png"
            else:
                plot = None
            _, s = simulate(args.bin, trace, kind, policy, plot)
            rows.append((trace, label, s))
    print("| trace | policy | worker-seconds (cost) | p99 queue wait (ms) | mean wait (ms) | scale events | max pods | pod-seconds | rejected (503) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for trace, label, s in rows:
        print(f"| {trace} | {label} | {s['worker_seconds']:.0f} | {s['p99_queue_wait_ms']:.1f} | "
              f"{s['mean_queue_wait_ms']:.1f} | {s['scale_events']} | {s['max_replicas']} | "
              f"{s['pod_seconds']:.0f} | {s['rejected']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
