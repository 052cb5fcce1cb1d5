#!/usr/bin/env python3
"""Marginal memory of one more worker: wsgiscale (preloaded fork server, and --no-preload)
against gunicorn sync (--preload, and without).

    bench/.venv/bin/python bench/memory.py [--rounds 3] [--workers 5] [--apps flask,django]
                                           [--servers a,b] [--warm-secs 3]

For each app and server: start it with 1 worker, warm it, read /proc/PID/smaps_rollup of every
process in its tree (USS = Private_Clean + Private_Dirty, PSS, RSS); stop it; start it again
with --workers N (5), warm every worker (concurrent clients until each worker pid has answered
GET /pid often enough), read again. Marginal cost per extra worker =
(tree USS(N) - tree USS(1)) / (N - 1), the tree being the whole server (wsgiscale: master +
fork server + workers; gunicorn: arbiter + workers). Also per-worker USS/PSS/RSS, the "cold
worker RSS" (RSS of a warmed worker that imported the app itself: --no-preload / gunicorn
without --preload) and marginal USS / cold RSS against the issue's target (<= 30%).
Writes bench/out/memory-<stamp>.md (also printed) and memory-<stamp>.json. See
bench/README.md.
"""
import argparse
import datetime
import http.client
import json
import shlex
import signal
import statistics
import sys
import threading
import time
from pathlib import Path

import common as C

APPS = {"flask": "flask_app:app", "django": "djproj.wsgi:application"}


class Config:
    def __init__(self, key, label, kind, preload):
        self.key, self.label, self.kind, self.preload = key, label, kind, preload

    def server(self):
        return C.R.Wsgiscale() if self.kind == "wsgiscale" else C.R.GunicornSync()

    def argv(self, app, port, aport, n):
        if self.kind == "wsgiscale":
            return C.R.Wsgiscale().argv(app, port, aport, workers=n,
                                        preload=None if self.preload else False)
        return C.R.GunicornSync().argv(app, port, None, workers=n, preload=self.preload)


CONFIGS = [
    Config("wsgiscale", "wsgiscale (preload)", "wsgiscale", True),
    Config("wsgiscale-no-preload", "wsgiscale --no-preload", "wsgiscale", False),
    Config("gunicorn-preload", "gunicorn sync --preload", "gunicorn", True),
    Config("gunicorn", "gunicorn sync", "gunicorn", False),
]


def roles(root, kind):
    """(support pids, worker pids). wsgiscale: master -> fork server -> workers (support =
    master + fork server); gunicorn: arbiter -> workers (support = arbiter)."""
    kids = C.children_of(root)
    if kind == "wsgiscale":
        workers = [w for k in kids for w in C.children_of(k)]
        return [root] + kids, workers
    return [root], kids


def get_pid(port):
    c = http.client.HTTPConnection(C.HOST, port, timeout=5)
    try:
        c.request("GET", "/pid")
        r = c.getresponse()
        body = r.read()
        if r.status != 200:
            return None
        return json.loads(body)["pid"]
    finally:
        c.close()


def warm(port, workers, conc, min_secs, per_worker, max_secs):
    """Concurrent clients (a new connection per request: gunicorn sync closes anyway)
    alternate GET / and GET /pid for at least min_secs and until every worker pid answered
    /pid `per_worker` times (at most max_secs). Returns ({pid: /pid answers}, requests,
    errors)."""
    hits = {}
    lock = threading.Lock()
    counts = {"requests": 0, "errors": 0}
    t_end_min = time.monotonic() + min_secs
    t_end_max = time.monotonic() + max_secs
    stop_evt = threading.Event()

    def enough():
        return all(hits.get(w, 0) >= per_worker for w in workers)

    def loop():
        i = 0
        while not stop_evt.is_set():
            i += 1
            try:
                if i % 2:
                    st, _ = C.http_request(port, "GET", "/", timeout=10)
                    ok = st == 200
                else:
                    pid = get_pid(port)
                    ok = pid is not None
                    if ok:
                        with lock:
                            hits[pid] = hits.get(pid, 0) + 1
            except (OSError, http.client.HTTPException, ValueError):
                ok = False
            with lock:
                counts["requests"] += 1
                counts["errors"] += 0 if ok else 1

    threads = [threading.Thread(target=loop, daemon=True) for _ in range(conc)]
    for t in threads:
        t.start()
    while True:
        time.sleep(0.2)
        now = time.monotonic()
        with lock:
            done = enough()
        if (now >= t_end_min and done) or now >= t_end_max:
            break
    stop_evt.set()
    for t in threads:
        t.join(timeout=15)
    return dict(hits), counts["requests"], counts["errors"]


def wait_workers(root, kind, n, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sup, workers = roles(root, kind)
        if len(workers) == n:
            return sup, workers
        time.sleep(0.1)
    return roles(root, kind)


def measure_one(cfg, app_key, n, rnd, args, logdir):
    port, aport = C.free_port(), C.free_port()
    app = APPS[app_key]
    argv = cfg.argv(app, port, aport, n)
    log_path = logdir / f"{app_key}-{cfg.key}-w{n}-r{rnd}.log"
    res = {"server": cfg.label, "key": cfg.key, "app": app_key, "workers": n, "round": rnd,
           "status": "ok", "cmd": C.placeholder_cmd(argv, port, aport), "log": C.rel(log_path)}
    srv = cfg.server()
    p = C.spawn(argv, srv.env(), log_path)
    try:
        if cfg.kind == "wsgiscale":
            ok, why = C.wait_http(aport, "/readyz", proc=p, expect=200)
            if not ok:
                raise RuntimeError("admin not ready: " + why)
        ok, why = C.wait_http(port, "/", proc=p, expect=200)
        if not ok:
            raise RuntimeError(why)
        sup, workers = wait_workers(p.pid, cfg.kind, n)
        if len(workers) != n:
            raise RuntimeError(f"{len(workers)} worker processes, expected {n}")
        load0 = C.loadavg()
        hits, nreq, nerr = warm(port, workers, args.conc, args.warm_secs, args.per_worker,
                                args.warm_max)
        res["warm"] = {"requests": nreq, "errors": nerr,
                       "pid_answers": {str(w): hits.get(w, 0) for w in workers},
                       "foreign_pids": sorted(set(hits) - set(workers))}
        if set(hits) - set(workers):
            raise RuntimeError(f"/pid answered by pids {sorted(set(hits) - set(workers))} that "
                               f"are not the workers found in the tree {workers}")
        time.sleep(args.settle)
        sup2, workers2 = roles(p.pid, cfg.kind)
        if sorted(workers2) != sorted(workers):
            raise RuntimeError(f"workers changed during the warm-up: {workers} -> {workers2}")
        per = {}
        for pid in sup2 + workers2:
            m = C.smaps_rollup(pid)
            if m is None:
                raise RuntimeError(f"pid {pid} vanished while measured")
            per[pid] = m
        everything = C.tree(p.pid)
        extra = sorted(set(everything) - set(per))
        for pid in extra:  # anything else in the tree (there should be nothing)
            m = C.smaps_rollup(pid)
            if m:
                per[pid] = m
        res["extra_pids"] = extra

        def tot(pids, k):
            return sum(per[x][k] for x in pids if x in per)

        res["support"] = [{"pid": x, **per[x]} for x in sup2]
        res["worker_mem"] = [{"pid": x, "pid_answers": hits.get(x, 0), **per[x]}
                             for x in workers2]
        res["tree"] = {k: tot(list(per), k) for k in ("rss", "pss", "uss")}
        res["workers_sum"] = {k: tot(workers2, k) for k in ("rss", "pss", "uss")}
        res["support_sum"] = {k: tot(sup2, k) for k in ("rss", "pss", "uss")}
        res["loadavg"] = [load0, C.loadavg()]
        if p.poll() is not None:
            raise RuntimeError(f"server exited ({p.returncode})")
    except Exception as e:
        res["status"] = "error"
        res["detail"] = f"{type(e).__name__}: {e}\n" + C.log_tail(log_path)
    finally:
        probs = C.stop(p, srv.stop_sig, port=port)
        if probs:
            res["stop_problems"] = probs
    return res


def mib(kib):
    return None if kib is None else kib / 1024.0


def f_mib(kib, nd=1):
    return "-" if kib is None else f"{kib / 1024.0:.{nd}f}"


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def rng(xs):
    xs = [x for x in xs if x is not None]
    return (min(xs), max(xs)) if xs else (None, None)


def summarize(runs, n):
    """Per (app, server): medians over rounds of the tree figures at 1 and n workers, the
    marginal cost per extra worker, and per-worker medians at n workers."""
    out = {}
    for r in runs:
        if r["status"] != "ok":
            continue
        g = out.setdefault((r["app"], r["key"]), {"label": r["server"], 1: [], n: []})
        g[r["workers"]].append(r)
    for (app, key), g in out.items():
        ones, ns = g[1], g[n]
        g["tree1"] = {k: med([r["tree"][k] for r in ones]) for k in ("rss", "pss", "uss")}
        g["treeN"] = {k: med([r["tree"][k] for r in ns]) for k in ("rss", "pss", "uss")}
        # marginal per round pair (round i at 1 worker with round i at n), then the median
        pairs = {}
        for r in ones:
            pairs.setdefault(r["round"], {})[1] = r
        for r in ns:
            pairs.setdefault(r["round"], {})[n] = r
        marg = {k: [] for k in ("rss", "pss", "uss")}
        for rd, pr in pairs.items():
            if 1 in pr and n in pr:
                for k in marg:
                    marg[k].append((pr[n]["tree"][k] - pr[1]["tree"][k]) / (n - 1))
        g["marginal"] = {k: med(v) for k, v in marg.items()}
        g["marginal_range"] = {k: rng(v) for k, v in marg.items()}
        wN = [w for r in ns for w in r["worker_mem"]]
        g["worker"] = {k: med([w[k] for w in wN]) for k in ("rss", "pss", "uss")}
        g["worker_range"] = {k: rng([w[k] for w in wN]) for k in ("rss", "pss", "uss")}
        w1 = [w for r in ones for w in r["worker_mem"]]
        g["worker1"] = {k: med([w[k] for w in w1]) for k in ("rss", "pss", "uss")}
        g["support1"] = {k: med([r["support_sum"][k] for r in ones]) for k in ("rss", "pss",
                                                                               "uss")}
        g["supportN"] = {k: med([r["support_sum"][k] for r in ns]) for k in ("rss", "pss",
                                                                             "uss")}
        g["rounds"] = len(pairs)
        g["min_pid_answers"] = min((w["pid_answers"] for w in wN), default=None)
        del g[1], g[n]
    return out


def report(args, meta, runs, stamp):
    n = args.workers
    summ = summarize(runs, n)
    out = [f"# Marginal memory per worker — {stamp}", ""]
    m = meta["machine"]
    v = meta["versions"]
    out += [
        f"Machine: {m.get('cores')} cores, {m.get('mem_gib')} GiB, Linux {m.get('kernel')}; "
        f"load average at start {' '.join(m.get('loadavg_at_start', []))}. Repo at "
        f"{v.get('repo_commit')}; Python {v.get('python')}, gunicorn {v.get('gunicorn')}, "
        f"Flask {v.get('Flask')}, Django {v.get('Django')}.",
        f"Method: each server is started with 1 worker and, separately, with {n}; every worker "
        f"is warmed ({args.conc} concurrent clients alternating `GET /` and `GET /pid`, at least "
        f"{args.warm_secs} s and until each worker pid answered /pid {args.per_worker} times); "
        f"{args.settle} s later every process's /proc/PID/smaps_rollup is read. USS = "
        f"Private_Clean + Private_Dirty. The **tree** is the whole server: wsgiscale = master "
        f"(Rust) + fork server (Python) + workers; gunicorn = arbiter + workers. Marginal = "
        f"(tree({n}) - tree(1)) / {n - 1}, per round, median over {args.rounds} round(s) "
        f"[range]. Per-worker figures are medians over the {n} workers of every round. MiB.",
        f"Command: `{meta['command']}`", ""]
    for app in args.apps:
        rows = []
        for cfg in CONFIGS:
            g = summ.get((app, cfg.key))
            if not g:
                continue
            mr = g["marginal_range"]
            rows.append([
                g["label"],
                f"{f_mib(g['tree1']['uss'])} / {f_mib(g['treeN']['uss'])}",
                f"**{f_mib(g['marginal']['uss'])}** [{f_mib(mr['uss'][0])}-"
                f"{f_mib(mr['uss'][1])}]",
                f"{f_mib(g['marginal']['pss'])}", f"{f_mib(g['marginal']['rss'])}",
                f_mib(g["worker"]["uss"]), f_mib(g["worker"]["pss"]),
                f_mib(g["worker"]["rss"]),
                f"{f_mib(g['support1']['uss'])} / {f_mib(g['support1']['rss'])}",
                g["min_pid_answers"]])
        out.append(f"## {app} (`{APPS[app]}`)")
        out.append("")
        out.append(C.md_table(
            ["server", f"tree USS 1 / {n} workers", "marginal USS per extra worker",
             "marginal PSS", "marginal RSS", f"worker USS ({n} w)", f"worker PSS ({n} w)",
             f"worker RSS ({n} w)", "support USS / RSS (1 w)", "min /pid answers per worker"],
            rows))
        out.append("")
        cold = {}
        for key in ("wsgiscale-no-preload", "gunicorn"):
            g = summ.get((app, key))
            if g:
                cold[key] = g["worker"]["rss"]
        lines = []
        for key, cold_key in (("wsgiscale", "wsgiscale-no-preload"),
                              ("gunicorn-preload", "gunicorn")):
            g = summ.get((app, key))
            if not g or cold_key not in cold or not cold[cold_key]:
                continue
            ratio = g["marginal"]["uss"] / cold[cold_key]
            wratio = g["worker"]["uss"] / cold[cold_key]
            lines.append(
                f"- {g['label']}: marginal USS {f_mib(g['marginal']['uss'])} MiB / cold worker "
                f"RSS ({summ[(app, cold_key)]['label']}) {f_mib(cold[cold_key])} MiB = "
                f"**{ratio:.0%}** (a worker's own USS: {wratio:.0%}); target <= 30%: "
                f"{'met' if ratio <= 0.30 else 'MISSED'}")
        if lines:
            out.append("Cold worker RSS = median RSS of a warmed worker that imported the app "
                       "itself (no preload):")
            out.append("")
            out += lines
            out.append("")
    out.append("Machine load during the runs (load average before -> after each warm-up):")
    out.append("")
    loads = [r["loadavg"][0][0] for r in runs if r.get("loadavg")]
    if loads:
        out.append(f"- 1-min load average over the runs: min {min(loads)}, median "
                   f"{statistics.median(loads):.2f}, max {max(loads)}; machine CPU: "
                   f"{C.describe_load(meta['account']) if meta.get('account') else '-'}")
    out.append("- memory figures do not depend much on CPU load, but a busy machine slows the "
               "warm-up, not the pages touched")
    out.append("")
    out.append("Commands (PORT, ADMIN_PORT fresh per run; N = 1 and " + str(n) + "):")
    out.append("")
    seen = set()
    for r in runs:
        if (r["key"], r["app"]) not in seen and r["workers"] == n:
            seen.add((r["key"], r["app"]))
            out.append(f"- {r['server']} ({r['app']}): `{r['cmd']}`")
    bad = [r for r in runs if r["status"] != "ok" or r.get("stop_problems") or
           r.get("extra_pids")]
    if bad:
        out += ["", "Problems:", ""]
        for r in bad:
            d = (r.get("detail") or "").strip().splitlines()
            out.append(f"- {r['server']} {r['app']} {r['workers']}w r{r['round']}: {r['status']}"
                       + (f": {' | '.join(d[:3])}" if d else "")
                       + (f"; extra pids {r['extra_pids']}" if r.get("extra_pids") else "")
                       + (f"; stop: {'; '.join(r['stop_problems'])}"
                          if r.get("stop_problems") else ""))
    # per-process detail of the last round
    out += ["", f"Per-process detail (round {args.rounds}, {n} workers; KiB → MiB):", ""]
    rows = []
    for r in runs:
        if r["status"] != "ok" or r["round"] != args.rounds or r["workers"] != n:
            continue
        for role, lst in (("support", r["support"]), ("worker", r["worker_mem"])):
            for x in lst:
                rows.append([r["app"], r["server"], role, x["pid"], f_mib(x["uss"]),
                             f_mib(x["pss"]), f_mib(x["rss"]), x.get("pid_answers", "")])
    out.append(C.md_table(["app", "server", "role", "pid", "USS", "PSS", "RSS",
                           "/pid answers"], rows))
    return "\n".join(out) + "\n", summ


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=5, help="the N of the second measurement")
    ap.add_argument("--apps", default="flask,django")
    ap.add_argument("--servers", default="", help="comma list of: "
                    + ",".join(c.key for c in CONFIGS))
    ap.add_argument("--conc", type=int, default=8, help="warm-up clients")
    ap.add_argument("--warm-secs", type=float, default=3.0)
    ap.add_argument("--warm-max", type=float, default=120.0)
    # long enough that every worker has run a full (gen 2) garbage collection: without
    # gc.freeze() that collection writes to every preloaded object and un-shares its pages,
    # so a short warm-up under-reports a preloaded worker's private memory (gunicorn --preload
    # Flask: 6.4 MiB after ~500 requests, 13.4 MiB after ~5000)
    ap.add_argument("--per-worker", type=int, default=2500,
                    help="/pid answers each worker must give during the warm-up")
    ap.add_argument("--settle", type=float, default=1.0, help="seconds idle before reading")
    ap.add_argument("--out", default=str(C.BENCH / "out"))
    args = ap.parse_args()
    args.apps = [a for a in args.apps.split(",") if a]
    bad = [a for a in args.apps if a not in APPS]
    if bad:
        sys.exit(f"unknown app(s) {bad}; choose from {list(APPS)}")
    want = [s for s in args.servers.split(",") if s] or [c.key for c in CONFIGS]
    configs = [c for c in CONFIGS if c.key in want]
    for c in configs:
        ok, why = c.server().available()
        if not ok:
            sys.exit(why)
    signal.signal(signal.SIGTERM, C.R._on_signal)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    outdir = Path(args.out)
    logdir = outdir / f"memory-logs-{stamp}"
    logdir.mkdir(parents=True, exist_ok=True)
    meta = {"stamp": stamp, "machine": C.machine(), "versions": C.versions(),
            "command": shlex.join([C.rel(sys.executable), C.rel(__file__)] + sys.argv[1:]),
            "args": vars(args)}
    acct = C.MachineAccount()  # whole run: ours (servers included) vs other
    runs = []
    try:
        for rnd in range(1, args.rounds + 1):
            for app in args.apps:
                for cfg in configs:
                    for n in (1, args.workers):
                        print(f"[memory] round {rnd}: {app} {cfg.label} {n} worker(s) ...",
                              file=sys.stderr, flush=True, end=" ")
                        r = measure_one(cfg, app, n, rnd, args, logdir)
                        runs.append(r)
                        if r["status"] == "ok":
                            print(f"tree USS {f_mib(r['tree']['uss'])} MiB, PSS "
                                  f"{f_mib(r['tree']['pss'])}, RSS {f_mib(r['tree']['rss'])}; "
                                  f"worker USS "
                                  f"{', '.join(f_mib(w['uss']) for w in r['worker_mem'])}",
                                  file=sys.stderr, flush=True)
                        else:
                            print(C.failure_line(r),
                                  file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        print("[memory] interrupted: writing what was measured", file=sys.stderr)
    finally:
        C._cleanup_all()
    meta["account"] = acct.finish()
    text, summ = report(args, meta, runs, stamp)
    md = outdir / f"memory-{stamp}.md"
    md.write_text(text)
    (outdir / f"memory-{stamp}.json").write_text(json.dumps(
        {"meta": meta, "runs": runs,
         "summary": {f"{a}/{k}": v for (a, k), v in summ.items()}}, indent=1, default=str))
    print(text)
    print(f"[memory] report: {md}\n[memory] raw: {md.with_suffix('.json')}\n"
          f"[memory] logs: {logdir}", file=sys.stderr)


if __name__ == "__main__":
    main()
