#!/usr/bin/env python3
"""Step load against adaptive worker counts: wsgiscale's cheaper algorithms against uWSGI's.

    bench/.venv/bin/python bench/step.py [--before 10] [--step 30] [--after 30]
                                         [--low 2] [--high 40] [--servers a,b] [--rounds 1]

A 20 ms app (bench/apps/basic.py:slow) gets a closed-loop load of --low clients for --before
seconds, then --high clients for --step seconds, then --low clients for --after seconds. Each
client keeps exactly one request in flight (HTTP/1.1 keep-alive; a new connection per request
for uWSGI --http-socket, which closes after every response). Every server runs MIN 2 / MAX 16
workers, one after the other on a fresh port; its live worker count is sampled every 100 ms
(wsgiscale: GET /load on the admin port, busy + idle + starting; uWSGI: its stats server,
workers whose status is not "cheap").

Reported per server: time from the step until 8 and until 16 live workers, latency during the
step and overall, requests served and failed, worker-seconds over the run (the cost), time
from the load drop back to MIN, and the CPU used by other processes during the run (noise).
Writes bench/out/step-<stamp>.md (also printed) and step-<stamp>.json. See bench/README.md.
"""
import argparse
import asyncio
import datetime
import http.client
import json
import os
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent

# ----------------------------------------------------------------------------------------
# the load generator (runs in a child process: `step.py _loadgen '<json>'`)
# ----------------------------------------------------------------------------------------


class _Closed(Exception):
    """The server closed the connection before any byte of the response."""


async def _read_response(reader):
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as e:
        if not e.partial:
            raise _Closed() from None
        raise
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    version, status = parts[0], int(parts[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    conn_hdr = headers.get("connection", "").lower()
    keep = (version == "HTTP/1.1" and conn_hdr != "close") or \
           (version == "HTTP/1.0" and conn_hdr == "keep-alive")
    if "content-length" in headers:
        await reader.readexactly(int(headers["content-length"]))
    elif "chunked" in headers.get("transfer-encoding", "").lower():
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif status not in (204, 304) and not (100 <= status < 200):
        await reader.read()  # close-delimited body
        keep = False
    return status, keep


def loadgen_main(cfg):
    """Closed loop: `level` clients each keep one request in flight; the level follows
    cfg['phases'] ([clients, seconds], ...) from the absolute monotonic time cfg['t0'].
    Writes per-request start (s from t0), latency (ms), status (0 = no response) and error
    kind to cfg['out']."""
    host, port, path = cfg["host"], cfg["port"], cfg["path"]
    per_request_conn = cfg.get("conn_per_request", False)
    timeout = cfg.get("timeout", 30.0)
    phases = cfg["phases"]
    t0 = cfg["t0"]
    req = (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: bench-step\r\n"
           + ("Connection: close\r\n" if per_request_conn else "") + "\r\n").encode()
    nclients = max(c for c, _ in phases)
    starts, lats, statuses, errs = [], [], [], []
    stats = {"connects": 0, "stale_retries": 0, "errors": {}}

    class State:
        level = 0
        done = False
        changed = None

    st = State()

    async def client(i):
        conn = None
        while True:
            if st.done:
                break
            if i >= st.level:
                if conn:
                    conn[1].close()
                    conn = None
                await st.changed.wait()
                continue
            t_start = time.monotonic()
            status, err, retried = 0, None, False
            while True:
                fresh = conn is None
                try:
                    if conn is None:
                        conn = await asyncio.wait_for(asyncio.open_connection(host, port),
                                                      timeout)
                        stats["connects"] += 1
                    conn[1].write(req)
                    status, keep = await asyncio.wait_for(_read_response(conn[0]), timeout)
                    if not keep or per_request_conn:
                        conn[1].close()
                        conn = None
                    break
                except _Closed:
                    conn[1].close()
                    conn = None
                    if not fresh and not retried:
                        # an idle keep-alive connection the server had closed: the normal
                        # HTTP/1.1 client behaviour is to resend on a new connection
                        stats["stale_retries"] += 1
                        retried = True
                        continue
                    err = "closed-before-response"
                    break
                except asyncio.TimeoutError:
                    err = "timeout"
                except (ConnectionError, OSError, asyncio.IncompleteReadError, ValueError,
                        IndexError, asyncio.LimitOverrunError) as e:
                    err = type(e).__name__
                if conn:
                    conn[1].close()
                    conn = None
                break
            t_end = time.monotonic()
            starts.append(round(t_start - t0, 5))
            lats.append(round((t_end - t_start) * 1000.0, 3))
            statuses.append(status)
            errs.append(err)
            if err:
                stats["errors"][err] = stats["errors"].get(err, 0) + 1
                await asyncio.sleep(0.01)  # no busy loop against a dead server

    async def main():
        st.changed = asyncio.Event()
        tasks = [asyncio.create_task(client(i)) for i in range(nclients)]
        now = time.monotonic()
        if t0 > now:
            await asyncio.sleep(t0 - now)
        t = t0
        for clients, secs in phases:
            st.level = clients
            ev, st.changed = st.changed, asyncio.Event()
            ev.set()
            t += secs
            await asyncio.sleep(max(0.0, t - time.monotonic()))
        st.done = True
        st.level = 0
        st.changed.set()
        done, pending = await asyncio.wait(tasks, timeout=timeout + 5)
        for p in pending:
            p.cancel()
        stats["unfinished"] = len(pending)
        stats["t_end"] = time.monotonic() - t0

    asyncio.run(main())
    with open(cfg["out"], "w") as f:
        json.dump({"start": starts, "lat_ms": lats, "status": statuses, "err": errs,
                   "stats": stats}, f)


if len(sys.argv) > 2 and sys.argv[1] == "_loadgen":
    loadgen_main(json.loads(sys.argv[2]))
    sys.exit(0)

# ----------------------------------------------------------------------------------------
# the harness
# ----------------------------------------------------------------------------------------

import common as C  # noqa: E402

APP = "basic:slow"
APP_BODY = b"slept 20ms"


class Config:
    def __init__(self, key, kind, algo):
        self.key, self.kind, self.algo = key, kind, algo
        self.label = f"{'wsgiscale' if kind == 'wsgiscale' else 'uWSGI'} {algo}"


CONFIGS = [Config(f"wsgiscale-{a}", "wsgiscale", a)
           for a in ("spare", "spare2", "backlog", "busyness")] + \
          [Config(f"uwsgi-{a}", "uwsgi", a) for a in ("spare", "busyness")]


def server_argv(cfg, port, aport, mn, mx):
    if cfg.kind == "wsgiscale":
        a = C.R.Wsgiscale().argv(APP, port, aport, workers=f"{mn}:{mx}")
        return a[:-1] + ["--cheaper-algo", cfg.algo] + a[-1:], C.R.Wsgiscale().env()
    a = C.R.Uwsgi().argv(APP, port, None, workers=mx)
    a += ["--cheaper", str(mn), "--cheaper-initial", str(mn), "--cheaper-algo", cfg.algo,
          "--stats", f"{C.HOST}:{aport}"]
    return a, C.base_env()


class WsgiscaleProbe:
    def __init__(self, aport):
        self.aport = aport
        self.conn = None

    def __call__(self):
        for _ in range(2):
            try:
                if self.conn is None:
                    self.conn = http.client.HTTPConnection(C.HOST, self.aport, timeout=2)
                self.conn.request("GET", "/load")
                r = self.conn.getresponse()
                d = json.loads(r.read())
                w = d["workers"]
                return {"live": w["busy"] + w["idle"] + w["starting"], "total": w["total"],
                        "busy": w["busy"], "starting": w["starting"],
                        "retiring": w["retiring"], "queue": d["queue"]["depth"]}
            except (OSError, http.client.HTTPException, ValueError, KeyError):
                if self.conn:
                    self.conn.close()
                self.conn = None
        return None


class UwsgiProbe:
    def __init__(self, sport):
        self.sport = sport

    def __call__(self):
        try:
            with socket.create_connection((C.HOST, self.sport), timeout=2) as s:
                buf = bytearray()
                while True:
                    b = s.recv(65536)
                    if not b:
                        break
                    buf += b
            d = json.loads(buf)
            ws = d["workers"]
            live = sum(1 for w in ws if w["status"] != "cheap")
            return {"live": live, "total": live,
                    "busy": sum(1 for w in ws if w["status"] == "busy"),
                    "starting": 0, "retiring": 0, "queue": d.get("listen_queue", 0)}
        except (OSError, ValueError, KeyError):
            return None


def worker_procs(root, kind):
    """Worker processes alive: wsgiscale's are the fork server's children (grandchildren of
    the master), uWSGI's the master's children."""
    kids = C.children_of(root)
    if kind == "wsgiscale":
        return sum(len(C.children_of(k)) for k in kids)
    return len(kids)


class Sampler(threading.Thread):
    def __init__(self, probe, root, kind, every=0.1, procs_every=5):
        super().__init__(daemon=True)
        self.probe, self.root, self.kind = probe, root, kind
        self.every, self.procs_every = every, procs_every
        self.samples = []   # [t_mono, live, busy, starting, retiring, queue]
        self.procs = []     # [t_mono, worker processes alive]
        self.misses = 0
        self.stop_evt = threading.Event()

    def run(self):
        t = time.monotonic()
        k = 0
        while not self.stop_evt.is_set():
            d = self.probe()
            now = time.monotonic()
            if d is None:
                self.misses += 1
            else:
                self.samples.append([now, d["live"], d["busy"], d["starting"], d["retiring"],
                                     d["queue"]])
            if k % self.procs_every == 0:
                self.procs.append([time.monotonic(), worker_procs(self.root, self.kind)])
            k += 1
            t += self.every
            self.stop_evt.wait(max(0.0, t - time.monotonic()))

    def finish(self):
        self.stop_evt.set()
        self.join(timeout=5)


def wait_live(probe, want, timeout=20.0, stable=1.0):
    """Wait until the live worker count has been `want` for `stable` seconds."""
    deadline = time.monotonic() + timeout
    since = None
    last = None
    while time.monotonic() < deadline:
        d = probe()
        last = d and d["live"]
        if d and d["live"] == want:
            since = since or time.monotonic()
            if time.monotonic() - since >= stable:
                return True, last
        else:
            since = None
        time.sleep(0.1)
    return False, last


def pct(sorted_vals, p):
    if not sorted_vals:
        return None
    k = max(0, min(len(sorted_vals) - 1, int(round(p / 100.0 * len(sorted_vals) + 0.5)) - 1))
    return sorted_vals[k]


def lat_stats(lg, lo, hi):
    """Latency figures of the requests started in [lo, hi) (seconds from t0)."""
    ok_lat, failed, n = [], 0, 0
    for s, l, stt in zip(lg["start"], lg["lat_ms"], lg["status"]):
        if lo <= s < hi:
            n += 1
            if stt == 200:
                ok_lat.append(l)
            else:
                failed += 1
    ok_lat.sort()
    return {"requests": n, "ok": len(ok_lat), "failed": failed,
            "rps": round(len(ok_lat) / (hi - lo), 1) if hi > lo else None,
            "p50_ms": pct(ok_lat, 50), "p90_ms": pct(ok_lat, 90), "p99_ms": pct(ok_lat, 99),
            "max_ms": ok_lat[-1] if ok_lat else None}


def integrate(samples, lo, hi):
    """Integral of a step function given by [t, value] samples over [lo, hi]."""
    total = 0.0
    for i, (t, v) in enumerate(samples):
        t_next = samples[i + 1][0] if i + 1 < len(samples) else hi
        a, b = max(t, lo), min(t_next, hi)
        if b > a:
            total += v * (b - a)
    # before the first sample: hold the first value
    if samples and samples[0][0] > lo:
        total += samples[0][1] * (min(samples[0][0], hi) - lo)
    return total


def analyse(res, lg, sampler, t0, args):
    t_step = args.before
    t_drop = args.before + args.step
    t_end = t_drop + args.after
    samples = [[s[0] - t0] + s[1:] for s in sampler.samples]
    live = [[s[0], s[1]] for s in samples]
    res["samples"] = [[round(s[0], 3)] + s[1:] for s in samples]
    res["procs"] = [[round(t - t0, 3), n] for t, n in sampler.procs]
    res["sample_misses"] = sampler.misses

    def first_reach(lo, pred, hi=float("inf")):
        for t, v in live:
            if lo <= t < hi and pred(v):
                return round(t - lo, 2)
        return None

    # scale-up counts only while the step lasts
    res["t_to_8"] = first_reach(t_step, lambda v: v >= 8, t_drop)
    res["t_to_16"] = first_reach(t_step, lambda v: v >= args.max, t_drop)
    step_live = [v for t, v in live if t_step <= t < t_drop]
    res["max_live_step"] = max(step_live) if step_live else None
    res["mean_live_step"] = (round(integrate(live, t_step, t_drop) / args.step, 2)
                             if live else None)
    res["t_back_to_min"] = first_reach(t_drop, lambda v: v <= args.min)
    res["t_back_to_min1"] = first_reach(t_drop, lambda v: v <= args.min + 1)
    end_live = [v for t, v in live if t_drop <= t <= t_end]
    res["live_at_end"] = end_live[-1] if end_live else None
    # settle: the last change of the count before the end
    settle = None
    prev = None
    for t, v in live:
        if t_drop <= t <= t_end:
            if prev is not None and v != prev:
                settle = round(t - t_drop, 2)
            prev = v
    res["t_settle_after_drop"] = settle
    res["worker_seconds"] = round(integrate(live, 0.0, t_end), 1)
    procs = [[t, n] for t, n in res["procs"]]
    res["worker_proc_seconds"] = round(integrate(procs, 0.0, t_end), 1) if procs else None
    # the count at each whole second (last sample at or before it)
    res["timeline"] = [next((v for t, v in reversed(live) if t <= sec), None)
                       for sec in range(0, int(t_end) + 1)]
    res["phase_before"] = lat_stats(lg, 0.0, t_step)
    res["phase_step"] = lat_stats(lg, t_step, t_drop)
    res["phase_after"] = lat_stats(lg, t_drop, t_end)
    res["overall"] = lat_stats(lg, 0.0, t_end + 1e9)
    res["served"] = sum(1 for s in lg["status"] if s == 200)
    fails = {}
    for stt, err in zip(lg["status"], lg["err"]):
        if stt != 200:
            k = err or f"status {stt}"
            fails[k] = fails.get(k, 0) + 1
    res["failed"] = sum(fails.values())
    res["failures"] = fails
    res["client_stats"] = lg["stats"]
    # per-second p99 and throughput in the step, for the JSON
    per_sec = []
    for sec in range(int(t_end) + 1):
        ls = sorted(l for s, l, stt in zip(lg["start"], lg["lat_ms"], lg["status"])
                    if sec <= s < sec + 1 and stt == 200)
        per_sec.append([sec, len(ls), pct(ls, 99)])
    res["per_second"] = per_sec


def run_one(cfg, rnd, args, logdir):
    port, aport = C.free_port(), C.free_port()
    argv, env = server_argv(cfg, port, aport, args.min, args.max)
    log_path = logdir / f"{cfg.key}-r{rnd}.log"
    res = {"server": cfg.label, "key": cfg.key, "round": rnd, "status": "ok",
           "cmd": C.placeholder_cmd(argv, port, aport).replace(
               f"{C.HOST}:{aport}", f"{C.HOST}:ADMIN_PORT"),
           "log": C.rel(log_path)}
    if cfg.kind == "uwsgi":
        res["cmd"] = res["cmd"].replace("ADMIN_PORT", "STATS_PORT")
    p = C.spawn(argv, env, log_path)
    probe = WsgiscaleProbe(aport) if cfg.kind == "wsgiscale" else UwsgiProbe(aport)
    lg_path = logdir / f"{cfg.key}-r{rnd}-requests.json"
    try:
        if cfg.kind == "wsgiscale":
            ok, why = C.wait_http(aport, "/readyz", proc=p, expect=200)
            if not ok:
                raise RuntimeError("admin not ready: " + why)
        ok, why = C.wait_http(port, "/", proc=p)
        if not ok:
            raise RuntimeError(why)
        st, body = C.http_request(port, "GET", "/", timeout=5)
        if st != 200 or body != APP_BODY:
            raise RuntimeError(f"bad response: {st} {body[:60]!r}")
        for _ in range(10):
            C.http_request(port, "GET", "/", timeout=5)
        ok, last = wait_live(probe, args.min)
        if not ok:
            raise RuntimeError(f"worker count not at {args.min} before the run (last {last})")
        sampler = Sampler(probe, p.pid, cfg.kind)
        acct = C.MachineAccount(p.pid)
        sampler.start()
        t0 = time.monotonic() + 1.0
        phases = [[args.low, args.before], [args.high, args.step], [args.low, args.after]]
        lcfg = {"host": C.HOST, "port": port, "path": "/", "phases": phases, "t0": t0,
                "out": str(lg_path), "conn_per_request": cfg.kind == "uwsgi",
                "timeout": args.timeout}
        lg_proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "_loadgen",
                                    json.dumps(lcfg)], start_new_session=True)
        C.LIVE[lg_proc.pid] = lg_proc
        total = args.before + args.step + args.after
        try:
            lg_proc.wait(timeout=total + args.timeout + 30)
        except subprocess.TimeoutExpired:
            os.killpg(lg_proc.pid, signal.SIGKILL)
            lg_proc.wait()
            raise RuntimeError("load generator did not finish")
        finally:
            C.LIVE.pop(lg_proc.pid, None)
        sampler.finish()
        res["machine"] = acct.finish()
        if lg_proc.returncode != 0:
            raise RuntimeError(f"load generator exited {lg_proc.returncode}")
        lg = json.loads(lg_path.read_text())
        analyse(res, lg, sampler, t0, args)
        if p.poll() is not None:
            res["status"] = "died"
            res["detail"] = f"server exited ({p.returncode}) during the run\n" + \
                C.log_tail(log_path)
    except Exception as e:
        res["status"] = "error"
        res["detail"] = f"{type(e).__name__}: {e}\n" + C.log_tail(log_path)
    finally:
        probs = C.stop(p, signal.SIGTERM, port=port)
        if probs:
            res["stop_problems"] = probs
    return res


# ----------------------------------------------------------------------------------------
# report
# ----------------------------------------------------------------------------------------


def f_s(x, none="never"):
    return none if x is None else f"{x:.1f}"


def f_ms(x):
    return "-" if x is None else (f"{x:.0f}" if x >= 100 else f"{x:.1f}")


def med_rng(vals, f):
    """'median [min-max]' with None (never reached) counted as infinite."""
    if not vals:
        return "-"
    inf = float("inf")
    xs = sorted(inf if v is None else v for v in vals)
    m = xs[(len(xs) - 1) // 2] if len(xs) % 2 else (xs[len(xs) // 2 - 1] + xs[len(xs) // 2]) / 2

    def g(x):
        return "never" if x == inf else f(x)
    if len(xs) == 1:
        return g(m)
    return f"{g(m)} [{g(xs[0])}-{g(xs[-1])}]"


def report(args, meta, runs, stamp):
    out = [f"# Step load: adaptive workers — {stamp}", ""]
    m = meta["machine"]
    out += [
        f"Machine: {m.get('cores')} cores ({m.get('cpu', '?')}), {m.get('mem_gib')} GiB, Linux "
        f"{m.get('kernel')}; load average at start {' '.join(m.get('loadavg_at_start', []))}. "
        f"Repo at {meta['versions'].get('repo_commit')}; uWSGI {meta['versions'].get('uWSGI')}, "
        f"Python {meta['versions'].get('python')}.",
        f"Load: {args.low} clients for {args.before} s, {args.high} for {args.step} s, "
        f"{args.low} for {args.after} s (closed loop, one request in flight per client) on "
        f"`{APP}` (20 ms `time.sleep`); workers MIN {args.min} / MAX {args.max}; live workers "
        f"sampled every 100 ms. {args.high} in flight x 20 ms would need {args.high} workers "
        f"for no queueing: MAX {args.max} is the best possible.",
        f"Command: `{meta['command']}`", ""]
    order = {c.key: i for i, c in enumerate(CONFIGS)}
    runs = sorted(runs, key=lambda r: (order.get(r["key"], 99), r["round"]))
    ok = [r for r in runs if r["status"] == "ok"]
    rows = []
    for r in ok:
        s, o = r["phase_step"], r["overall"]
        mach = r.get("machine", {})
        rows.append([
            r["server"] + (f" (r{r['round']})" if args.rounds > 1 else ""),
            f_s(r["t_to_8"]), f_s(r["t_to_16"]), r["max_live_step"], r["mean_live_step"],
            f"{f_ms(s['p50_ms'])} / {f_ms(s['p99_ms'])} / {f_ms(s['max_ms'])}",
            f"{f_ms(o['p50_ms'])} / {f_ms(o['p99_ms'])} / {f_ms(o['max_ms'])}",
            f"{s['rps']:.0f}", C.fmt(r["served"], 0), r["failed"],
            C.fmt(r["worker_seconds"], 0),
            f_s(r["t_back_to_min"], none=f"not in {args.after:.0f} s"),
            f_s(r["t_back_to_min1"], none=f"not in {args.after:.0f} s"),
            f"{r['live_at_end']}" + (f" (last change +{r['t_settle_after_drop']:.0f} s)"
                                     if r["t_settle_after_drop"] is not None else
                                     " (no change)"),
            f"{mach.get('other_cores', 0):.2f}" + (" NOISY" if mach.get("noisy") else ""),
        ])
    out.append(C.md_table(
        ["server", f"step -> 8 workers (s)", f"step -> {args.max} workers (s)",
         "max workers in step", "mean workers in step", "step p50 / p99 / max ms",
         "overall p50 / p99 / max ms", "step req/s", "served", "failed", "worker-s",
         f"drop -> {args.min} workers (s)", f"drop -> {args.min + 1} workers (s)",
         "workers at end", "CPU other (cores)"], rows))
    out.append("")
    out.append("failed = responses other than 200 plus connection errors and timeouts "
               "(a uWSGI close after a response is its normal behaviour and not counted; the "
               "client opens a new connection per request there). worker-s = integral of the "
               "live worker count (server's own view) over the run. Latency is the client's: "
               "from sending (connect included) to the last body byte.")
    out.append("")
    if args.rounds > 1 and ok:
        out.append(f"Medians over {args.rounds} rounds [min-max]:")
        out.append("")
        rows = []
        for key in [c.key for c in CONFIGS]:
            rs = [r for r in ok if r["key"] == key]
            if not rs:
                continue
            rows.append([rs[0]["server"], len(rs),
                         med_rng([r["t_to_8"] for r in rs], f_s),
                         med_rng([r["t_to_16"] for r in rs], f_s),
                         med_rng([r["mean_live_step"] for r in rs], lambda x: f"{x:.1f}"),
                         med_rng([r["phase_step"]["p99_ms"] for r in rs], f_ms),
                         med_rng([r["phase_step"]["max_ms"] for r in rs], f_ms),
                         med_rng([r["overall"]["p99_ms"] for r in rs], f_ms),
                         med_rng([r["phase_step"]["rps"] for r in rs], lambda x: f"{x:.0f}"),
                         sum(r["failed"] for r in rs),
                         med_rng([r["worker_seconds"] for r in rs], lambda x: f"{x:.0f}"),
                         med_rng([r["t_back_to_min1"] for r in rs], f_s),
                         " ".join(str(r["live_at_end"]) for r in rs)])
        out.append(C.md_table(
            ["server", "rounds", "step -> 8 (s)", f"step -> {args.max} (s)",
             "mean workers in step", "step p99 ms", "step max ms", "overall p99 ms",
             "step req/s", "failed (sum)", "worker-s", f"drop -> {args.min + 1} (s)",
             "workers at end (each round)"], rows))
        out.append("")
        out.append("(a time is 'never' when not reached in that round; the median of a mix "
                   "counts 'never' as infinite)")
        out.append("")
    # timeline
    if ok:
        secs = list(range(0, len(ok[0]["timeline"]), 2))
        rows = [[r["server"] + (f" (r{r['round']})" if args.rounds > 1 else "")]
                + [r["timeline"][s] if s < len(r["timeline"]) else "" for s in secs]
                for r in ok]
        out.append("Live workers over time (t in s; the step is at "
                   f"t={args.before}, the drop at t={args.before + args.step}):")
        out.append("")
        out.append(C.md_table(["server"] + [f"{s}" for s in secs], rows))
        out.append("")
    out.append("Phases (requests started in each phase; p50 / p99 / max ms, req/s):")
    out.append("")
    rows = []
    for r in ok:
        cells = [r["server"] + (f" (r{r['round']})" if args.rounds > 1 else "")]
        for ph in ("phase_before", "phase_step", "phase_after"):
            s = r[ph]
            cells.append(f"{f_ms(s['p50_ms'])} / {f_ms(s['p99_ms'])} / {f_ms(s['max_ms'])}, "
                         f"{s['rps']:.0f}/s")
        cells.append(f"{r['worker_proc_seconds']}")
        cells.append(f"{r['client_stats']['connects']} / {r['client_stats']['stale_retries']}")
        rows.append(cells)
    out.append(C.md_table(["server", f"before ({args.low} clients)",
                           f"step ({args.high} clients)", f"after ({args.low} clients)",
                           "worker-process-s (from /proc, 0.5 s)",
                           "connections / stale keep-alive retries"], rows))
    out.append("")
    out.append("Machine load per run:")
    out.append("")
    for r in runs:
        if r.get("machine"):
            out.append(f"- {r['server']} (r{r['round']}): {C.describe_load(r['machine'])}")
    out.append("")
    # targets
    out.append("## Targets")
    out.append("")
    out.append(f"Step p99 = median over {args.rounds} round(s); 'rounds better' compares the "
               "same round (runs of one round are adjacent in time).")
    out.append("")

    def p99s(key):
        return {r["round"]: r["phase_step"]["p99_ms"] for r in ok if r["key"] == key
                and r["phase_step"]["p99_ms"] is not None}

    uw_keys = [c.key for c in CONFIGS if c.kind == "uwsgi" and p99s(c.key)]
    for cfg in CONFIGS:
        if cfg.kind != "wsgiscale":
            continue
        mine = p99s(cfg.key)
        if not mine:
            continue
        failed = sum(r["failed"] for r in ok if r["key"] == cfg.key)
        m = statistics.median(mine.values())
        cmp = []
        for uk in uw_keys:
            theirs = p99s(uk)
            tm = statistics.median(theirs.values())
            common = [k for k in mine if k in theirs]
            wins = sum(1 for k in common if mine[k] < theirs[k])
            cmp.append(f"vs {uk.replace('uwsgi-', 'uWSGI ')} {f_ms(tm)} ms: "
                       f"{'better' if m < tm else 'NOT better'} by median "
                       f"({(m - tm) / tm:+.0%}), better in {wins}/{len(common)} rounds")
        out.append(f"- wsgiscale {cfg.algo}: failed requests {failed} "
                   f"({'met' if failed == 0 else 'MISSED'}); step p99 {f_ms(m)} ms "
                   f"({'; '.join(cmp) or 'no uWSGI run to compare'})")
    out.append("")
    out.append("Commands (PORT, ADMIN_PORT / STATS_PORT fresh per run):")
    out.append("")
    seen = set()
    for r in runs:
        if r["key"] not in seen:
            seen.add(r["key"])
            out.append(f"- {r['server']}: `{r['cmd']}`")
    bad = [r for r in runs if r["status"] != "ok" or r.get("stop_problems")]
    if bad:
        out += ["", "Problems:", ""]
        for r in bad:
            d = (r.get("detail") or "").strip().splitlines()
            out.append(f"- {r['server']} r{r['round']}: {r['status']}"
                       + (f": {' | '.join(d[:3])}" if d else "")
                       + (f"; stop: {'; '.join(r['stop_problems'])}"
                          if r.get("stop_problems") else ""))
    noisy = [r for r in runs if r.get("machine", {}).get("noisy")]
    if noisy:
        out += ["", f"**Noise: {len(noisy)} run(s) shared the CPU with other work (> "
                f"{C.NOISE_CORES} core used by neither the server nor the client):** "
                + ", ".join(f"{r['server']} r{r['round']} {r['machine']['other_cores']:.2f}"
                            for r in noisy)]
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", type=float, default=10, help="seconds at --low clients first")
    ap.add_argument("--step", type=float, default=30, help="seconds at --high clients")
    ap.add_argument("--after", type=float, default=30, help="seconds at --low clients after")
    ap.add_argument("--low", type=int, default=2, help="clients before and after the step")
    ap.add_argument("--high", type=int, default=40, help="clients during the step")
    ap.add_argument("--min", type=int, default=2, help="MIN workers")
    ap.add_argument("--max", type=int, default=16, help="MAX workers")
    ap.add_argument("--timeout", type=float, default=30, help="per-request timeout, s")
    ap.add_argument("--rounds", type=int, default=1, help="rounds (server order rotated)")
    ap.add_argument("--servers", default="", help="comma list of: "
                    + ",".join(c.key for c in CONFIGS))
    ap.add_argument("--out", default=str(BENCH / "out"))
    ap.add_argument("--report", metavar="JSON",
                    help="only rewrite the markdown report of an earlier run's JSON")
    args = ap.parse_args()

    if args.report:
        raw = json.loads(Path(args.report).read_text())
        old_args = argparse.Namespace(**raw["meta"]["args"])
        text = report(old_args, raw["meta"], raw["runs"], raw["meta"]["stamp"])
        Path(args.report).with_suffix(".md").write_text(text)
        print(text)
        return

    signal.signal(signal.SIGTERM, C.R._on_signal)
    want = [s for s in args.servers.split(",") if s] or [c.key for c in CONFIGS]
    bad = [s for s in want if s not in {c.key for c in CONFIGS}]
    if bad:
        sys.exit(f"unknown server(s) {bad}; choose from {[c.key for c in CONFIGS]}")
    configs = [c for c in CONFIGS if c.key in want]
    for c in configs:
        ok, why = (C.R.Wsgiscale() if c.kind == "wsgiscale" else C.R.Uwsgi()).available()
        if not ok:
            sys.exit(why)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    outdir = Path(args.out)
    logdir = outdir / f"step-logs-{stamp}"
    logdir.mkdir(parents=True, exist_ok=True)
    meta = {"stamp": stamp, "machine": C.machine(), "versions": C.versions(),
            "command": shlex.join([C.rel(sys.executable), C.rel(__file__)] + sys.argv[1:]),
            "args": vars(args)}
    runs = []
    try:
        for rnd in range(1, args.rounds + 1):
            k = (rnd - 1) % len(configs)
            for cfg in configs[k:] + configs[:k]:
                print(f"[step] round {rnd}: {cfg.label} ...", file=sys.stderr, flush=True,
                      end=" ")
                r = run_one(cfg, rnd, args, logdir)
                runs.append(r)
                if r["status"] == "ok":
                    print(f"->8 {f_s(r['t_to_8'])} s, ->{args.max} {f_s(r['t_to_16'])} s, "
                          f"step p99 {f_ms(r['phase_step']['p99_ms'])} ms, failed "
                          f"{r['failed']}, worker-s {r['worker_seconds']}, back to "
                          f"{args.min} {f_s(r['t_back_to_min'])} s; "
                          f"other CPU {r['machine']['other_cores']:.2f}",
                          file=sys.stderr, flush=True)
                else:
                    print(C.failure_line(r),
                          file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        print("[step] interrupted: writing what was measured", file=sys.stderr)
    finally:
        C._cleanup_all()
    text = report(args, meta, runs, stamp)
    md = outdir / f"step-{stamp}.md"
    md.write_text(text)
    (outdir / f"step-{stamp}.json").write_text(json.dumps({"meta": meta, "runs": runs},
                                                          indent=1, default=str))
    print(text)
    print(f"[step] report: {md}\n[step] raw: {md.with_suffix('.json')}\n[step] logs: {logdir}",
          file=sys.stderr)


if __name__ == "__main__":
    main()
