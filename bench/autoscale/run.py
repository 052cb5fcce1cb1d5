#!/usr/bin/env python3
"""Runs `wsgiscale-operator simulate` on the example traces under the wsgiscale, HPA-like
and Knative-like policies and wsgiscale with the activator (and, on the internal tool's day,
with scale to zero), draws the wsgiscale runs to docs/img/sim-<trace>.png (and a few activator
runs to docs/img/sim-<trace>-<suffix>.png) and prints a markdown table (cost in worker- and
pod-seconds, p50 and p99 wait, scale events, refusals, cold starts).

    python3 bench/autoscale/run.py [--bin PATH] [--out bench/RESULTS-autoscale.md]

Deterministic: the simulator seeds its arrivals, so the table is the same on every machine.
"""
import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
TRACES = ["step", "spike", "ramp", "sawtooth", "internal-day"]
RUNS = [
    # (label, --policy-kind, policy file, plot suffix, traces (None: all))
    ("wsgiscale", "wsgiscale", "bench/autoscale/policy.yaml", "wsgiscale", None),
    ("wsgiscale, 50% target", "wsgiscale", "bench/autoscale/policy-headroom.yaml", "wsgiscale-50", None),
    ("HPA-like", "hpa", "bench/autoscale/policy.yaml", "hpa", None),
    ("Knative-like", "knative", "bench/autoscale/policy.yaml", "knative", None),
    ("wsgiscale+activator", "wsgiscale+activator", "bench/autoscale/policy.yaml", "activator", None),
    ("wsgiscale+activator, hold 1,000", "wsgiscale+activator",
     "bench/autoscale/policy-activator-hold.yaml", "activator-hold", ["step", "spike"]),
    ("wsgiscale+activator+zero, idle 60 s", "wsgiscale+activator+zero",
     "bench/autoscale/policy.yaml", "zero", ["internal-day"]),
    ("wsgiscale+activator+zero, idle 15 min", "wsgiscale+activator+zero",
     "bench/autoscale/policy-zero-15m.yaml", "zero-15m", ["internal-day"]),
]
# The activator runs whose plots the repository keeps (beside every trace's wsgiscale run).
KEPT_PLOTS = {("step", "activator"), ("spike", "activator"), ("internal-day", "zero-15m")}


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
        for label, kind, policy, suffix, only in RUNS:
            if only is not None and trace not in only:
                continue
            # The repository keeps one plot per trace (the wsgiscale policy) and a few
            # activator runs; --plots-dir draws every run.
            if args.plots_dir:
                plot = os.path.join(args.plots_dir, f"sim-{trace}-{suffix}.png")
            elif args.no_plots:
                plot = None
            elif suffix == "wsgiscale":
                plot = f"docs/img/sim-{trace}.png"
            elif (trace, suffix) in KEPT_PLOTS:
                plot = f"docs/img/sim-{trace}-{suffix}.png"
            else:
                plot = None
            _, s = simulate(args.bin, trace, kind, policy, plot)
            rows.append((trace, label, s))
    print("| trace | policy | worker-seconds (cost) | pod-seconds | p50 wait (ms) | p99 wait (ms) | mean wait (ms) | scale events | max pods | rejected (503) | cold starts | first request of a cold start, wait (ms) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for trace, label, s in rows:
        a = s.get("activator")
        if a and a["cold_starts"]:
            waits = [w for w in a["cold_start_first_wait_ms"] if w is not None]
            refused = len(a["cold_start_first_wait_ms"]) - len(waits)
            first = (f"{min(waits):.0f} to {max(waits):.0f}" if waits else "-") + \
                (f", {refused} refused" if refused else "")
            cold = str(a["cold_starts"])
        else:
            cold, first = ("0", "-") if a else ("-", "-")
        print(f"| {trace} | {label} | {s['worker_seconds']:.0f} | {s['pod_seconds']:.0f} | "
              f"{s['p50_queue_wait_ms']:.1f} | {s['p99_queue_wait_ms']:.1f} | "
              f"{s['mean_queue_wait_ms']:.1f} | {s['scale_events']} | {s['max_replicas']} | "
              f"{s['rejected']} | {cold} | {first} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
