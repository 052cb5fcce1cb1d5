"""Where one request's cost goes in wsgiscale: the master's and the workers' CPU time, system
calls and voluntary context switches per request, for the apps of bench/run.py.

Two measured runs per app, on one server (2 workers, `wrk -t1 -c64`, after a warm-up):

1. /proc: CPU time from every thread's /proc/PID/task/TID/schedstat (nanoseconds on the CPU)
   and voluntary/involuntary context switches from .../status, read before and after the
   run, for the master (its threads) and the workers (the fork server's children); divided
   by the requests wrk completed.
2. strace: `strace -c -f` attached to the master and, separately, to the workers for a
   shorter run; system calls per request. strace slows the traced side, so its throughput
   is not the server's; the counts per request are what matters (a slower side may batch
   less, so they are an upper bound).

    bench/.venv/bin/python bench/hop.py [--duration 10] [--strace-duration 5]
        [--apps hello,json4k,flask,cpu1ms] [--out bench/results]

Writes bench/results/hop-STAMP.md (and .json).
"""
import argparse
import datetime
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as R  # noqa: E402  (the harness: server commands, wrk, process trees)

APPS = {
    "hello": ("basic:hello", "/"),
    "json4k": ("basic:json4k", "/"),
    "flask": ("flask_app:app", "/"),
    "cpu1ms": ("basic:cpu1ms", "/"),
}


def threads_of(pid):
    try:
        return [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return []


def sample(pids):
    """{pid: (cpu_ns, voluntary, involuntary)} summed over each process's threads."""
    out = {}
    for pid in pids:
        cpu = vol = invol = 0
        for tid in threads_of(pid):
            base = f"/proc/{pid}/task/{tid}"
            try:
                with open(f"{base}/schedstat") as f:
                    cpu += int(f.read().split()[0])
                with open(f"{base}/status") as f:
                    for line in f:
                        if line.startswith("voluntary_ctxt_switches:"):
                            vol += int(line.split()[1])
                        elif line.startswith("nonvoluntary_ctxt_switches:"):
                            invol += int(line.split()[1])
            except OSError:
                continue
        out[pid] = (cpu, vol, invol)
    return out


def delta(before, after, pids):
    cpu = vol = invol = 0
    for pid in pids:
        if pid in before and pid in after:
            cpu += after[pid][0] - before[pid][0]
            vol += after[pid][1] - before[pid][1]
            invol += after[pid][2] - before[pid][2]
    return cpu, vol, invol


def roles(master):
    """(master pid, fork server pid, worker pids): the workers are the fork server's children."""
    tab = R.proc_table()
    kids = {}
    for pid, (ppid, _) in tab.items():
        kids.setdefault(ppid, []).append(pid)
    zygotes = kids.get(master, [])
    workers = [w for z in zygotes for w in kids.get(z, [])]
    return master, zygotes, workers


def strace_calls(pids, seconds, cmd):
    """System calls made by `pids` (and their threads) while `cmd` (wrk) runs."""
    out = Path(f"/tmp/hop-strace-{os.getpid()}.txt")
    argv = ["strace", "-c", "-f", "-q", "-o", str(out)]
    for p in pids:
        argv += ["-p", str(p)]
    tracer = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)  # attached
    w, _ = R.run_wrk(cmd, seconds)
    tracer.terminate()
    tracer.wait(timeout=30)
    text = out.read_text() if out.exists() else ""
    out.unlink(missing_ok=True)
    calls, top = 0, []
    for line in text.splitlines():
        m = re.match(r"\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)\s*$", line)
        if m and m.group(2) != "total":
            top.append((int(m.group(1)), m.group(2)))
        m = re.match(r"\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?total\s*$", line)
        if m:
            calls = int(m.group(1))
    top.sort(reverse=True)
    return calls, w["requests"], top[:5]


def measure(name, app, path, args, logdir):
    srv = R.Wsgiscale()
    port, aport = R.free_port(), R.free_port()
    argv = srv.argv(app, port, aport)
    log = logdir / f"hop-{name}.log"
    p = R.spawn(argv, srv.env(), log)
    res = {"app": name, "cmd": R.placeholder_cmd(argv, port, aport)}
    try:
        entry = R.Entry("wsgiscale")
        ok, why = R.wait_ready(p, entry, port, aport, path)
        if not ok:
            res["error"] = why
            return res
        R.run_wrk(R.wrk_cmd(port, 2, path), 2)
        master, zygotes, workers = roles(p.pid)
        res["workers"] = len(workers)
        cmd = R.wrk_cmd(port, args.duration, path)
        res["wrk_cmd"] = R.placeholder_cmd(cmd, port, None)
        pids = [master] + zygotes + workers
        before = sample(pids)
        w, _ = R.run_wrk(cmd, args.duration)
        after = sample(pids)
        n = max(1, w["requests"])
        res["rps"], res["requests"] = w["rps"], w["requests"]
        for role, who in (("master", [master]), ("workers", workers)):
            cpu, vol, invol = delta(before, after, who)
            res[role] = {"cpu_us": cpu / 1000 / n, "voluntary_cs": vol / n,
                         "involuntary_cs": invol / n}
        scmd = R.wrk_cmd(port, args.strace_duration, path)
        for role, who in (("master", [master]), ("workers", workers)):
            calls, reqs, top = strace_calls(who, args.strace_duration, scmd)
            res[role]["syscalls"] = calls / max(1, reqs)
            res[role]["strace_requests"] = reqs
            res[role]["top"] = [(c / max(1, reqs), s) for c, s in top]
    finally:
        R.stop(p)
    return res


def fmt(v, nd=1):
    return "-" if v is None else f"{v:,.{nd}f}"


def report(results, meta):
    m = meta["machine"]
    lines = [f"# Per-request cost of the master hop — {meta['stamp']}", "",
             f"Machine: {m.get('cores')} cores ({m.get('cpu', '?')}), {m.get('mem_gib')} GiB, "
             f"Linux {m.get('kernel')}; load average at start "
             f"{' '.join(m.get('loadavg_at_start', []))}; repo at {meta['commit']}.",
             f"Command: `{meta['command']}`", "",
             "Per completed request, 2 workers, `wrk -t1 -c64` on loopback (wrk shares the 2 "
             "cores). CPU from schedstat (all threads), context switches from /proc status, "
             "system calls from `strace -c -f` attached in a separate, shorter run.", "",
             "| app | req/s | master CPU µs | worker CPU µs | master syscalls | worker syscalls "
             "| master vol. cs | worker vol. cs | worker invol. cs |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['app']} | failed: {r['error']} |")
            continue
        m, w = r["master"], r["workers"]
        lines.append(
            f"| {r['app']} | {fmt(r['rps'], 0)} | {fmt(m['cpu_us'])} | {fmt(w['cpu_us'])} | "
            f"{fmt(m['syscalls'], 2)} | {fmt(w['syscalls'], 2)} | {fmt(m['voluntary_cs'], 2)} | "
            f"{fmt(w['voluntary_cs'], 2)} | {fmt(w['involuntary_cs'], 2)} |")
    lines += ["", "Most frequent system calls per request (strace run):", ""]
    for r in results:
        if "error" in r:
            continue
        for role in ("master", "workers"):
            top = ", ".join(f"{s} {c:.2f}" for c, s in r[role]["top"])
            lines.append(f"- {r['app']}, {role} ({r[role]['strace_requests']} requests "
                         f"traced): {top}")
    lines += ["", "Commands:", ""]
    for r in results:
        lines.append(f"- {r['app']}: `{r['cmd']}`; load `{r.get('wrk_cmd', '')}`")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=float, default=10)
    ap.add_argument("--strace-duration", type=float, default=5)
    ap.add_argument("--apps", default=",".join(APPS))
    ap.add_argument("--out", default=str(R.BENCH / "results"))
    args = ap.parse_args()
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    logdir = R.BENCH / "out" / f"hop-logs-{stamp}"
    logdir.mkdir(parents=True, exist_ok=True)
    commit = subprocess.run(["git", "-C", str(R.REPO), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    meta = {"stamp": stamp, "machine": R.machine(), "commit": commit,
            "command": shlex.join(["bench/.venv/bin/python", "bench/hop.py"] + sys.argv[1:])}
    results = []
    for name in args.apps.split(","):
        app, path = APPS[name]
        print(f"[hop] {name} ...", file=sys.stderr, flush=True)
        r = measure(name, app, path, args, logdir)
        print(f"[hop] {name}: {json.dumps(r)}", file=sys.stderr, flush=True)
        results.append(r)
    md = out / f"hop-{stamp}.md"
    md.write_text(report(results, meta))
    (out / f"hop-{stamp}.json").write_text(json.dumps({"meta": meta, "results": results},
                                                      indent=1))
    print(md)


if __name__ == "__main__":
    main()
