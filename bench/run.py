#!/usr/bin/env python3
"""wsgiscale benchmark harness: wsgiscale against gunicorn, uWSGI, granian, bjoern, fastpysgi,
cheroot.

    bench/setup.sh                                   # once: wrk, libev-dev, bench/.venv
    bench/.venv/bin/python bench/run.py [--duration S] [--rounds N] [--only SCENARIO[,..]]
                                        [--servers a,b] [--warmup S] [--kills K]

Every server runs the same WSGI apps (bench/apps) with 2 worker processes on a fresh loopback
port; wrk loads it (`wrk -t1 -c64 -dSs --latency`), rounds are interleaved (round 1: every
server for scenario X, round 2: again, ...) and the report gives medians. Servers run in their
own process group and are always killed; every run checks the response body first.

Writes bench/out/results-<timestamp>.md (also printed), results-<timestamp>.json (raw numbers)
and logs-<timestamp>/ (each server's output). See bench/README.md.
"""
import argparse
import asyncio
import atexit
import datetime
import http.client
import json
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
APPS = BENCH / "apps"
VENV = Path(os.environ.get("BENCH_VENV", BENCH / ".venv"))
VBIN = VENV / "bin"
WSGISCALE_BIN = Path(os.environ.get("WSGISCALE_BIN", REPO / "target" / "release" / "wsgiscale"))
# Another build of the binary (an earlier commit) for a before/after in one run:
# WSGISCALE_BASELINE_BIN=/path/to/wsgiscale ... --servers wsgiscale,wsgiscale-baseline
WSGISCALE_BASELINE_BIN = os.environ.get("WSGISCALE_BASELINE_BIN")
HOST = "127.0.0.1"
CONNS = 64

# ----------------------------------------------------------------------------------------
# processes
# ----------------------------------------------------------------------------------------

LIVE = {}  # pid -> Popen, for cleanup on any exit


def _cleanup_all():
    for pid, p in list(LIVE.items()):
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            p.wait(timeout=2)
        except Exception:
            pass
        LIVE.pop(pid, None)


atexit.register(_cleanup_all)


def _on_signal(signum, frame):
    _cleanup_all()
    raise KeyboardInterrupt(f"signal {signum}")


def read_stat(pid):
    """(ppid, create time) of pid, or None when it is gone. The create time tells a process
    from a later one that got the same pid."""
    try:
        p = psutil.Process(pid)
        with p.oneshot():
            return p.ppid(), p.create_time()
    except psutil.Error:
        return None


def proc_table():
    """{pid: (ppid, create time)} of every process."""
    tab = {}
    for p in psutil.process_iter(["ppid", "create_time"]):
        if p.info["ppid"] is not None:
            tab[p.pid] = (p.info["ppid"], p.info["create_time"])
    return tab


def tree(root):
    """{pid: create time} of root and all its descendants."""
    tab = proc_table()
    kids = {}
    for pid, (ppid, _) in tab.items():
        kids.setdefault(ppid, []).append(pid)
    out = {}
    todo = [root]
    while todo:
        pid = todo.pop()
        if pid in tab and pid not in out:
            out[pid] = tab[pid][1]
            todo.extend(kids.get(pid, []))
    return out


def mem_of(pids):
    """(rss_kib, pss_kib, nprocs, nthreads) summed over pids (PSS from smaps_rollup, through
    psutil's memory_full_info)."""
    rss = pss = n = threads = 0
    for pid in pids:
        try:
            p = psutil.Process(pid)
            with p.oneshot():
                mem = p.memory_full_info()
                threads += p.num_threads()
        except psutil.Error:
            continue
        n += 1
        rss += mem.rss // 1024
        pss += getattr(mem, "pss", 0) // 1024
    return rss, pss, n, threads


def cpu_busy_s():
    """Machine-wide busy CPU seconds (all cores): everything but idle and iowait."""
    t = psutil.cpu_times()
    return t.user + t.nice + t.system + t.irq + t.softirq + t.steal


def tree_cpu_s(pids, reaped=False):
    """CPU seconds (user + system) of pids; with reaped, also of their reaped children: a
    worker retired during a run moves its CPU into its parent's children times, so the
    difference of that sum over a run still counts it."""
    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
        except psutil.Error:
            continue
        total += t.user + t.system
        if reaped:
            total += t.children_user + t.children_system
    return total


class CpuAccount:
    """CPU used during a measured run by the server tree, by wrk (a reaped child) and by
    everything else on the machine ('other': a busy machine shows here)."""

    def __init__(self, root):
        self.root = root
        self.t0 = time.monotonic()
        self.busy0 = cpu_busy_s()
        self.srv0 = tree_cpu_s(tree(root))
        ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.kids0 = ru.ru_utime + ru.ru_stime

    def finish(self):
        wall = time.monotonic() - self.t0
        busy = cpu_busy_s() - self.busy0
        srv = tree_cpu_s(tree(self.root)) - self.srv0
        ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        wrk = ru.ru_utime + ru.ru_stime - self.kids0
        other = max(0.0, busy - srv - wrk)
        return {"server_cores": round(srv / wall, 2), "wrk_cores": round(wrk / wall, 2),
                "other_cores": round(other / wall, 2), "wall_s": round(wall, 2)}


class MemSampler(threading.Thread):
    """Samples the whole process tree's RSS/PSS every `every` seconds while load runs."""

    def __init__(self, root, every=0.5):
        super().__init__(daemon=True)
        self.root, self.every = root, every
        self.stop_evt = threading.Event()
        self.last = None
        self.peak_rss = 0

    def run(self):
        while not self.stop_evt.is_set():
            self.sample()
            self.stop_evt.wait(self.every)

    def sample(self):
        rss, pss, n, th = mem_of(tree(self.root))
        self.last = (rss, pss, n, th)
        self.peak_rss = max(self.peak_rss, rss)

    def finish(self):
        self.stop_evt.set()
        self.join(timeout=5)
        self.sample()  # once more, still under load's tail
        return self.last


def listening_ports():
    """TCP ports something listens on (IPv4 and IPv6)."""
    return {c.laddr.port for c in psutil.net_connections(kind="tcp")
            if c.status == psutil.CONN_LISTEN}


_used_ports = set()


def free_port():
    for _ in range(100):
        with socket.socket() as s:
            s.bind((HOST, 0))
            port = s.getsockname()[1]
        if port not in _used_ports and port not in listening_ports():
            _used_ports.add(port)
            return port
    raise RuntimeError("no free port")


def spawn(argv, env, log_path, cwd=APPS):
    log = open(log_path, "wb")
    log.write(("# " + shlex.join(argv) + "\n").encode())
    log.flush()
    p = subprocess.Popen(argv, cwd=str(cwd), env=env, stdout=log, stderr=subprocess.STDOUT,
                         stdin=subprocess.DEVNULL, start_new_session=True)
    log.close()
    LIVE[p.pid] = p
    return p


def stop(p, sig=signal.SIGTERM, grace=8.0, port=None):
    """Stop the server's whole process group; then SIGKILL any descendant left over.

    Returns a list of problems (leftover pids, port still listening)."""
    problems = []
    seen = tree(p.pid)
    try:
        # the root only, as a service manager would: signalling the whole group at once can
        # deadlock gunicorn workers (a signal handler racing the arbiter's own signal)
        os.kill(p.pid, sig)
    except ProcessLookupError:
        pass
    try:
        p.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        problems.append(f"did not exit {grace:.0f}s after {signal.Signals(sig).name}: SIGKILL")
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait(timeout=10)
    # the group may be empty already, but a descendant could have left it (setsid)
    deadline = time.monotonic() + 3
    while True:
        left = [pid for pid, st in seen.items() if (read_stat(pid) or (0, None))[1] == st]
        if not left or time.monotonic() > deadline:
            break
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        time.sleep(0.05)
    for pid in left:
        problems.append(f"leftover pid {pid}: SIGKILL")
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    LIVE.pop(p.pid, None)
    if port:
        deadline = time.monotonic() + 3
        while port in listening_ports() and time.monotonic() < deadline:
            time.sleep(0.05)
        if port in listening_ports():
            problems.append(f"port {port} still listening after stop")
    return problems


def log_tail(path, n=15):
    try:
        lines = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-n:])


# ----------------------------------------------------------------------------------------
# servers
# ----------------------------------------------------------------------------------------


def base_env():
    env = dict(os.environ)
    for k in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONDEVMODE", "PYTHONMALLOC"):
        env.pop(k, None)
    env["VIRTUAL_ENV"] = str(VENV)
    env["PATH"] = f"{VBIN}:{env.get('PATH', '/usr/bin:/bin')}"
    return env


_LIBDIR = None


def python_libdir():
    global _LIBDIR
    if _LIBDIR is None:
        try:
            _LIBDIR = subprocess.run(
                [str(VBIN / "python"), "-c",
                 "import sysconfig; print(sysconfig.get_config_var('LIBDIR') or '')"],
                capture_output=True, text=True, timeout=30).stdout.strip()
        except Exception:
            _LIBDIR = ""
    return _LIBDIR


# Workaround switch: BENCH_WSGISCALE_PYTHONPATH=1 hands the venv's site-packages to wsgiscale
# with --pythonpath instead of --venv (for a build whose --venv handling is broken).
WSGISCALE_PYTHONPATH_MODE = os.environ.get("BENCH_WSGISCALE_PYTHONPATH") == "1"


def site_packages():
    return str(VENV / "lib" / ("python%d.%d" % venv_python_version()) / "site-packages")


_VPV = None


def venv_python_version():
    global _VPV
    if _VPV is None:
        out = subprocess.run([str(VBIN / "python"), "-c",
                              "import sys; print(*sys.version_info[:2])"],
                             capture_output=True, text=True, timeout=30).stdout.split()
        _VPV = (int(out[0]), int(out[1]))
    return _VPV


class Server:
    key = ""
    label = ""
    stop_sig = signal.SIGTERM
    closes_per_response = False  # wrk "read" errors are connection closes, not failures
    processes = 2                # worker processes serving Python (for per-worker rates)
    kill_spacing = 1.5           # newworker: seconds between a new worker's answer and the
                                 # next kill (keeps clear of respawn throttles)
    note = ""

    def available(self):
        return True, ""

    def argv(self, app, port, aport, workers=2, threads=None, preload=None, respawn=False):
        raise NotImplementedError

    def env(self):
        return base_env()

    def readyz(self, aport):
        return None  # optional admin readiness URL path


def rel(path):
    """A path relative to the repository when inside it, else as it is."""
    s = str(path)
    return s.replace(str(REPO) + "/", "")


def failure_line(r):
    """A failed run's status and the first line of its detail, for the progress output."""
    return f"{r['status']}: {(r.get('detail') or '').splitlines()[:1]}"


def _venv_imports(module, hint):
    """(True, "") when the venv's Python imports module, else (False, why)."""
    try:
        r = subprocess.run([str(VBIN / "python"), "-c", f"import {module}"],
                           capture_output=True, timeout=30)
    except Exception as e:
        return False, f"{module}: {e}"
    return r.returncode == 0, f"{module} does not import: {hint}"


def _venv_tool(name):
    p = VBIN / name
    if p.exists():
        return True, ""
    return False, f"{p} missing: run bench/setup.sh"


class Wsgiscale(Server):
    key = label = "wsgiscale"

    def available(self):
        if os.access(WSGISCALE_BIN, os.X_OK):
            return True, ""
        return False, (f"{WSGISCALE_BIN} not found: build it with "
                       f"`cargo build --release -p wsgiscale-sidecar` (skipped)")

    def argv(self, app, port, aport, workers=2, threads=None, preload=None, respawn=False):
        a = [str(WSGISCALE_BIN), "serve", "--bind", f"{HOST}:{port}",
             "--admin-bind", f"{HOST}:{aport}", "--workers", str(workers)]
        if threads:
            a += ["--threads", str(threads)]
        a += ["--chdir", str(APPS)]
        if WSGISCALE_PYTHONPATH_MODE:
            a += ["--pythonpath", site_packages()]
        else:
            a += ["--venv", str(VENV)]
        if preload is False:
            a += ["--no-preload"]
        return a + [app]

    def env(self):
        env = base_env()
        if WSGISCALE_PYTHONPATH_MODE:
            env.pop("VIRTUAL_ENV", None)  # --venv defaults to $VIRTUAL_ENV
        lib = python_libdir()
        if lib:
            env["LD_LIBRARY_PATH"] = lib + (":" + env["LD_LIBRARY_PATH"]
                                            if env.get("LD_LIBRARY_PATH") else "")
        return env

    def readyz(self, aport):
        return aport, "/readyz"


class WsgiscaleBaseline(Wsgiscale):
    """The same server from another build (WSGISCALE_BASELINE_BIN), run exactly as `wsgiscale`:
    a before/after of a change in one run."""
    key = "wsgiscale-baseline"
    label = "wsgiscale (baseline)"

    def available(self):
        if WSGISCALE_BASELINE_BIN and os.access(WSGISCALE_BASELINE_BIN, os.X_OK):
            return True, ""
        return False, "set WSGISCALE_BASELINE_BIN to another build of the binary (skipped)"

    def argv(self, *args, **kwargs):
        a = super().argv(*args, **kwargs)
        a[0] = str(WSGISCALE_BASELINE_BIN)
        return a


class WsgiscaleWheel(Server):
    """wsgiscale as `pip install` gives it: the wheel (make wheel) installed into bench/.venv,
    run by its console script, with the venv's own environment (no --venv, no
    LD_LIBRARY_PATH). `bench/setup.sh` installs the wheel when dist/ has one for the venv's
    Python."""
    key = "wsgiscale-wheel"
    label = "wsgiscale (wheel)"

    def available(self):
        script = VENV / "bin" / "wsgiscale"
        if script.exists():
            return True, ""
        return False, f"{script} missing: `make wheel`, then bench/setup.sh installs it (skipped)"

    def argv(self, app, port, aport, workers=2, threads=None, preload=None, respawn=False):
        a = [str(VENV / "bin" / "wsgiscale"), "serve", "--bind", f"{HOST}:{port}",
             "--admin-bind", f"{HOST}:{aport}", "--workers", str(workers), "--chdir", str(APPS)]
        if threads:
            a += ["--threads", str(threads)]
        if preload is False:
            a += ["--no-preload"]
        return a + [app]

    def env(self):
        return base_env()

    def readyz(self, aport):
        return aport, "/readyz"


class GunicornSync(Server):
    key = "gunicorn-sync"
    label = "gunicorn sync"
    stop_sig = signal.SIGINT  # quick shutdown (TERM waits graceful_timeout for busy workers)
    note = "sync workers close the connection after each response (Connection: close)"

    def available(self):
        return _venv_tool("gunicorn")

    def argv(self, app, port, aport, workers=2, threads=None, preload=None, respawn=False):
        a = [str(VBIN / "gunicorn"), "--workers", str(workers), "--worker-class", "sync",
             "--bind", f"{HOST}:{port}", "--chdir", str(APPS), "--log-level", "warning",
             "--no-control-socket"]
        if preload:
            a += ["--preload"]
        return a + [app]


class GunicornGthread(GunicornSync):
    key = "gunicorn-gthread"
    label = "gunicorn gthread"
    note = "--threads 4 (4 threads per worker, keep-alive)"

    def argv(self, app, port, aport, workers=2, threads=None, preload=None, respawn=False):
        a = [str(VBIN / "gunicorn"), "--workers", str(workers), "--worker-class", "gthread",
             "--threads", str(threads or 4), "--bind", f"{HOST}:{port}", "--chdir", str(APPS),
             "--log-level", "warning", "--no-control-socket"]
        if preload:
            a += ["--preload"]
        return a + [app]


class Uwsgi(Server):
    key = "uwsgi"
    label = "uWSGI"
    closes_per_response = True
    note = ("--http-socket (not --http11-socket, which serves only processes x threads "
            "connections and starves the rest): closes after each response, so wrk counts one "
            "'read' error per request; those are reported apart. --listen 1024 like the peers' "
            "backlogs (uWSGI's default is 100)")

    def available(self):
        return _venv_tool("uwsgi")

    def argv(self, app, port, aport, workers=2, threads=None, preload=None, respawn=False):
        a = [str(VBIN / "uwsgi"), "--http-socket", f"{HOST}:{port}", "--master",
             "--processes", str(workers), "--chdir", str(APPS), "--home", str(VENV),
             "--module", app, "--need-app", "--disable-logging", "--die-on-term",
             "--listen", "1024", "--strict"]
        if threads:
            a += ["--threads", str(threads)]
        if preload is False:
            a += ["--lazy-apps"]
        return a


class Granian(Server):
    key = "granian"
    label = "granian"
    note = ("--interface wsgi; default blocking threads per worker (backpressure/2 = 256); "
            "keep-alive")
    kill_spacing = 6.0  # granian exits on a 'crash loop': a worker dying <= 5.5 s after respawn

    def available(self):
        return _venv_tool("granian")

    def argv(self, app, port, aport, workers=2, threads=None, preload=None, respawn=False):
        a = [str(VBIN / "granian"), "--interface", "wsgi", "--workers", str(workers),
             "--host", HOST, "--port", str(port), "--working-dir", str(APPS),
             "--log-level", "warning"]
        if threads:
            a += ["--blocking-threads", str(threads)]
        if respawn:
            # off by default: a dead worker would take the server down; the default
            # 3.5 s pause before a respawn is set to 0 (kill->fork is reported apart)
            a += ["--respawn-failed-workers", "--respawn-interval", "0"]
        return a + [app]


class Launched(Server):
    """A server run by one of bench/launchers/*_launch.py: N processes forked from a parent
    that preloads the app and supervises them (`_launch.supervise`)."""
    launcher = ""
    module = ""

    def available(self):
        return _venv_imports(self.module, "run bench/setup.sh")

    def argv(self, app, port, aport, workers=2, threads=None, preload=None, respawn=False):
        a = [str(VBIN / "python"), str(BENCH / "launchers" / self.launcher),
             "--bind", f"{HOST}:{port}", "--workers", str(workers), "--chdir", str(APPS)]
        if preload is False:
            a += ["--no-preload"]
        return a + [app]


class Bjoern(Launched):
    key = "bjoern"
    label = "bjoern"
    launcher = "bjoern_launch.py"
    module = "bjoern"
    note = ("2 processes forked on one listening socket by bench/launchers/bjoern_launch.py "
            "(app preloaded in the parent; respawns dead workers)")

    def available(self):
        return _venv_imports("bjoern", "run bench/setup.sh (needs libev-dev)")


class Fastpysgi(Launched):
    key = "fastpysgi"
    label = "fastpysgi"
    launcher = "fastpysgi_launch.py"
    module = "fastpysgi"
    note = ("2 processes that each bind the port (SO_REUSEPORT, as fastpysgi's own workers=2 "
            "does), forked by bench/launchers/fastpysgi_launch.py (app preloaded in the parent; "
            "SIGTERM reaches the workers)")


class Cheroot(Server):
    key = "cheroot"
    label = "cheroot"
    processes = 1
    note = ("one process (cheroot has no process model) with its default pool of 10 threads; "
            "request_queue_size (listen backlog) raised from 5 to 1024")

    def available(self):
        return _venv_imports("cheroot", "run bench/setup.sh")

    def argv(self, app, port, aport, workers=2, threads=None, preload=None, respawn=False):
        a = [str(VBIN / "python"), str(BENCH / "launchers" / "cheroot_launch.py"),
             "--bind", f"{HOST}:{port}", "--chdir", str(APPS)]
        if threads:
            a += ["--threads", str(threads)]
        return a + [app]


SERVERS = {s.key: s for s in (Wsgiscale(), WsgiscaleBaseline(), WsgiscaleWheel(), GunicornSync(), GunicornGthread(), Uwsgi(),
                              Granian(), Bjoern(), Fastpysgi(), Cheroot())}


class Entry:
    """One server configuration in a scenario: `extra` flags go before the app argument,
    `env` is added to the server's environment."""

    def __init__(self, key, label=None, extra=(), env=None, **opts):
        self.key = key
        self.server = SERVERS[key]
        self.opts = opts
        self.extra = list(extra)
        self.env = env or {}
        self.label = label or self.server.label

    @property
    def slug(self):
        return re.sub(r"[^A-Za-z0-9]+", "-", self.label).strip("-").lower()


def default_entries():
    return [Entry("wsgiscale"), Entry("wsgiscale-baseline"), Entry("gunicorn-sync"),
            Entry("gunicorn-gthread", threads=4),
            Entry("uwsgi"), Entry("granian"), Entry("bjoern"), Entry("fastpysgi"),
            Entry("cheroot")]


def with_wheel():
    """The peers, and wsgiscale as pip installs it next to the binary (when installed)."""
    return [Entry("wsgiscale"), Entry("wsgiscale-wheel")] + default_entries()[1:]  # baseline too


# ----------------------------------------------------------------------------------------
# scenarios
# ----------------------------------------------------------------------------------------

ECHO_BODY = bytes(range(256)) * 256  # 64 KiB for the body check


def _check_eq(expected):
    def check(status, body):
        return status == 200 and body == expected, f"status {status}, {len(body)} bytes"
    return check


def _check_json(pred):
    def check(status, body):
        try:
            doc = json.loads(body)
            ok = status == 200 and pred(doc, body)
        except Exception:
            ok = False
        return ok, f"status {status}, {len(body)} bytes: {body[:60]!r}"
    return check


def _check_cpu(status, body):
    return status == 200 and body.strip().isdigit(), f"status {status}, {body[:20]!r}"


class Scenario:
    def __init__(self, name, title, app, check, method="GET", path="/", body=b"",
                 lua=None, entries=None, slow=False, measures="", headers=(), pairs=()):
        self.name, self.title, self.app, self.check = name, title, app, check
        self.method, self.path, self.body, self.lua = method, path, body, lua
        self.entries = entries or default_entries
        self.slow = slow
        self.measures = measures
        self.headers = list(headers)  # sent by wrk (-H) and by the body check
        self.pairs = list(pairs)  # (label a, label b): the report gives a / b per round


# Static files, the same for every server: generated once into bench/out/static/.
STATIC_DIR = BENCH / "out" / "static"
STATIC_FILES = {"bench16k.css": 16 * 1024, "bench256k.js": 256 * 1024}


def static_bytes(name):
    """Deterministic text of the size STATIC_FILES gives (CSS/JS-like, compressible)."""
    line = b"/* wsgiscale static bench: the quick brown fox jumps over the lazy dog */\n"
    n = STATIC_FILES[name]
    return (line * (n // len(line) + 1))[:n]


def static_dir():
    """bench/out/static with the files (rewritten only when their content differs)."""
    STATIC_DIR.mkdir(parents=True, exist_ok=True)
    for name in STATIC_FILES:
        p = STATIC_DIR / name
        want = static_bytes(name)
        if not p.exists() or p.read_bytes() != want:
            p.write_bytes(want)
    return str(STATIC_DIR)


def static_entries():
    """The same files from wsgiscale's front, granian's static mount and whitenoise (Django
    middleware, under wsgiscale's workers)."""
    d = static_dir()
    return [
        Entry("wsgiscale", "wsgiscale --static", extra=["--static", f"/static={d}"]),
        Entry("granian", "granian --static-path-mount",
              extra=["--static-path-route", "/static", "--static-path-mount", d]),
        Entry("wsgiscale", "whitenoise (Django, wsgiscale workers)",
              env={"BENCH_WHITENOISE": "1", "BENCH_STATIC_ROOT": d}, app="djproj.wsgi:application"),
    ]


STATIC_PAIRS = [("wsgiscale --static", "granian --static-path-mount"),
                ("wsgiscale --static", "whitenoise (Django, wsgiscale workers)")]

PROXY_HEADERS = ["X-Forwarded-For: 198.51.100.7, 203.0.113.9", "X-Forwarded-Proto: https",
                 "X-Forwarded-Host: bench.example.com", "X-Forwarded-Port: 443"]


def proxy_entries():
    """wsgiscale with the proxy headers read (the peer, loopback, is trusted by default) and
    ignored (nobody trusted), same requests."""
    return [Entry("wsgiscale", "wsgiscale proxy headers on"),
            Entry("wsgiscale", "wsgiscale proxy headers off",
                  extra=["--forwarded-allow-ips", ""])]


SCENARIOS = [
    Scenario("hello", "hello world, 13 bytes, c64", "basic:hello",
             _check_eq(b"Hello, World!"), entries=with_wheel,
             measures="raw per-request overhead of the server (HTTP parsing, dispatch, WSGI "
                      "call) with a trivial app"),
    Scenario("json4k", "4 KiB JSON built per request, c64", "basic:json4k",
             _check_json(lambda d, b: len(d["items"]) == 29 and 3900 < len(b) < 4400),
             measures="a small realistic response: json.dumps of a ~4 KiB document"),
    Scenario("sleep10", "10 ms sleep, c64 (default threading)", "basic:sleep10",
             _check_eq(b"slept 10ms"),
             measures="I/O-bound views: with one request per worker at a time the ceiling is "
                      "workers x 100 req/s; threaded servers overlap the waits"),
    Scenario("threads", "10 ms sleep, c64, 4 threads per worker", "basic:sleep10",
             _check_eq(b"slept 10ms"),
             entries=lambda: [Entry("wsgiscale", "wsgiscale --threads 4", threads=4),
                              Entry("gunicorn-gthread", "gunicorn gthread --threads 4",
                                    threads=4),
                              Entry("granian", "granian --blocking-threads 4", threads=4)],
             measures="the same sleep with 4 Python threads per worker: ceiling 2 x 4 x 100 "
                      "= 800 req/s"),
    Scenario("cpu1ms", "about 1 ms of pure-Python CPU per request, c64", "basic:cpu1ms",
             _check_cpu,
             measures="CPU-bound views: the GIL-holding work dominates; tests dispatch "
                      "fairness and overhead under CPU load"),
    Scenario("echo", "POST 64 KiB body echoed, c64", "basic:echo", _check_eq(ECHO_BODY),
             method="POST", body=ECHO_BODY, lua=BENCH / "wrk" / "post64k.lua",
             measures="request and response body streaming (wsgi.input read, 64 KiB each way)"),
    Scenario("flask", "Flask JSON route, c64", "flask_app:app",
             _check_json(lambda d, b: d.get("framework") == "flask"), entries=with_wheel,
             measures="a framework's per-request cost on top of the server (Flask 3, jsonify)"),
    Scenario("proxy-hello", "hello with X-Forwarded-* headers, read vs ignored, c64",
             "basic:hello", _check_eq(b"Hello, World!"), entries=proxy_entries,
             headers=PROXY_HEADERS,
             pairs=[("wsgiscale proxy headers on", "wsgiscale proxy headers off")],
             measures="the cost of the trusted-proxy handling: the same requests with their "
                      "X-Forwarded-* headers applied (loopback trusted, the default) and "
                      "ignored (--forwarded-allow-ips '')"),
    Scenario("proxy-flask", "Flask route with X-Forwarded-* headers, read vs ignored, c64",
             "flask_app:app", _check_json(lambda d, b: d.get("framework") == "flask"),
             entries=proxy_entries, headers=PROXY_HEADERS,
             pairs=[("wsgiscale proxy headers on", "wsgiscale proxy headers off")],
             measures="the same on a Flask route"),
    Scenario("static16k", "a 16 KiB static file, c64", "basic:hello",
             _check_eq(static_bytes("bench16k.css")), path="/static/bench16k.css",
             entries=static_entries, pairs=STATIC_PAIRS,
             measures="static file serving: wsgiscale's --static (the front, no Python), "
                      "granian's static mount, whitenoise in Django's middleware under "
                      "wsgiscale's 2 workers; same file, no Accept-Encoding"),
    Scenario("static256k", "a 256 KiB static file, c64", "basic:hello",
             _check_eq(static_bytes("bench256k.js")), path="/static/bench256k.js",
             entries=static_entries, pairs=STATIC_PAIRS,
             measures="the same with a 256 KiB file"),
    Scenario("slowclients", "hello while 200 slow clients trickle headers", "basic:hello",
             _check_eq(b"Hello, World!"), slow="send",
             measures="hello throughput (c64) while 200 other connections send their request "
                      "headers one byte every ~1.5 s, against the same server's clean figure"),
    Scenario("slowreaders", "hello while slow clients read large responses at 1 KiB/s",
             "basic:hello_or_big", _check_eq(b"Hello, World!"), slow="read",
             measures="hello throughput (c64) while --slow-readers other connections each "
                      "fetch a 16 MiB streamed response (/big) and read it at ~1 KiB/s "
                      "(4 KiB receive buffer), against the same server's clean figure: a "
                      "server that holds a worker per slow reader has none left for hello"),
]
SCENARIO_NAMES = [s.name for s in SCENARIOS] + ["newworker", "ceiling"]


# ----------------------------------------------------------------------------------------
# HTTP helpers and wrk
# ----------------------------------------------------------------------------------------


def http_request(port, method="GET", path="/", body=b"", timeout=5.0, extra_headers=()):
    c = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        headers = {"Content-Type": "application/octet-stream"} if body else {}
        headers.update(h.split(": ", 1) for h in extra_headers)
        c.request(method, path, body=body or None, headers=headers)
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def wait_ready(p, entry, port, aport, path, timeout=60.0):
    deadline = time.monotonic() + timeout
    ready_url = entry.server.readyz(aport)
    last = "no answer"
    while time.monotonic() < deadline:
        if p.poll() is not None:
            return False, f"exited with {p.returncode} before answering"
        try:
            if ready_url:
                st, _ = http_request(ready_url[0], "GET", ready_url[1], timeout=1.0)
                if st != 200:
                    last = f"readyz {st}"
                    time.sleep(0.05)
                    continue
            st, _ = http_request(port, "GET", path, timeout=2.0)
            if st < 500:
                return True, ""
            last = f"status {st}"
        except (OSError, http.client.HTTPException) as e:
            last = repr(e)
        time.sleep(0.05)
    return False, f"not ready after {timeout:.0f}s ({last})"


UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0, "h": 3600000.0}


def _ms(value, unit):
    return float(value) * UNIT_MS.get(unit, float("nan"))


def parse_wrk(out):
    r = {"rps": 0.0, "requests": 0, "p50_ms": None, "p75_ms": None, "p90_ms": None,
         "p99_ms": None, "connect": 0, "read": 0, "write": 0, "timeout": 0, "non2xx": 0}
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if m:
        r["rps"] = float(m.group(1))
    m = re.search(r"(\d+) requests in ([\d.]+)(\w+)", out)
    if m:
        r["requests"] = int(m.group(1))
    for pct in (50, 75, 90, 99):
        m = re.search(rf"^\s+{pct}(?:\.0+)?%\s+([\d.]+)(us|ms|s|m|h)\s*$", out, re.M)
        if m:
            r[f"p{pct}_ms"] = _ms(m.group(1), m.group(2))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        r["connect"], r["read"], r["write"], r["timeout"] = map(int, m.groups())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        r["non2xx"] = int(m.group(1))
    if r["requests"] == 0:  # nothing answered: latency lines are meaningless
        for pct in (50, 75, 90, 99):
            r[f"p{pct}_ms"] = None
    return r


def wrk_cmd(port, duration, path="/", lua=None, conns=CONNS, headers=()):
    cmd = ["wrk", "-t1", f"-c{conns}", f"-d{int(duration)}s", "--latency"]
    for h in headers:
        cmd += ["-H", h]
    if lua:
        cmd += ["-s", str(lua)]
    return cmd + [f"http://{HOST}:{port}{path}"]


def run_wrk(cmd, duration):
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60).stdout
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) \
            else (e.stdout or "")
    return parse_wrk(out), out


def errors_of(w, server, conns=CONNS):
    """Real failures: non-2xx + connect/write/timeout, + read unless the server closes
    after every response (uWSGI --http-socket), where wrk counts a read error per request.
    A run in which nothing was answered counts one error per wrk connection: wrk itself
    reports no error for requests that hang until the end of the run."""
    e = w["non2xx"] + w["connect"] + w["write"] + w["timeout"]
    if not server.closes_per_response:
        e += w["read"]
    if w["requests"] == 0:
        e = max(e, conns)
    return e


def placeholder_cmd(argv, port, aport):
    s = shlex.join(argv)
    s = s.replace(f"{HOST}:{port}", f"{HOST}:PORT").replace(f"--port {port}", "--port PORT")
    if aport:
        s = s.replace(f"{HOST}:{aport}", f"{HOST}:ADMIN_PORT")
    return s.replace(str(REPO) + "/", "")


# ----------------------------------------------------------------------------------------
# one measured run
# ----------------------------------------------------------------------------------------


def measure(scn, entry, rnd, args, logdir):
    srv = entry.server
    port, aport = free_port(), free_port()
    opts = dict(entry.opts)
    app = opts.pop("app", scn.app)
    argv = srv.argv(app, port, aport, **opts)
    argv = argv[:-1] + entry.extra + argv[-1:]  # every server takes the app last
    log_path = logdir / f"{scn.name}-{entry.slug}-r{rnd}.log"
    res = {"scenario": scn.name, "server": entry.label, "key": entry.key, "round": rnd,
           "cmd": placeholder_cmd(argv, port, aport), "log": rel(log_path),
           "status": "ok"}
    t_start = time.monotonic()
    p = spawn(argv, {**srv.env(), **entry.env}, log_path)
    slow_proc = None
    try:
        ok, why = wait_ready(p, entry, port, aport, "/")
        res["startup_s"] = round(time.monotonic() - t_start, 3)
        if not ok:
            res["status"] = "failed-start"
            res["detail"] = why + "\n" + log_tail(log_path)
            return res
        st, body = http_request(port, scn.method, scn.path, scn.body, timeout=10,
                                extra_headers=scn.headers)
        body_ok, detail = scn.check(st, body)
        res["body_ok"], res["body_detail"] = body_ok, detail
        if not body_ok:
            res["status"] = "bad-response"
            res["detail"] = detail
            return res
        cmd = wrk_cmd(port, args.duration, scn.path, scn.lua, headers=scn.headers)
        res["wrk_cmd"] = placeholder_cmd(cmd, port, None)
        if args.warmup > 0:
            run_wrk(wrk_cmd(port, args.warmup, scn.path, scn.lua, headers=scn.headers),
                    args.warmup)
        if scn.slow:
            # clean figure first, same server, same process
            clean, out = run_wrk(cmd, args.duration)
            res["clean"] = clean
            slow_cmd = [sys.executable, str(BENCH / "slowclients.py"), "--host", HOST,
                        "--port", str(port), "--duration", str(args.duration + 30)]
            if scn.slow == "read":
                slow_cmd += ["--mode", "read", "--conns", str(args.slow_readers),
                             "--path", "/big?16", "--rate", "1024", "--ramp", "2"]
            else:
                slow_cmd += ["--conns", str(args.slow_conns), "--interval", "1.5"]
            res["slow_cmd"] = placeholder_cmd(slow_cmd, port, None)
            slow_proc = subprocess.Popen(slow_cmd, stdout=subprocess.PIPE, text=True,
                                         stderr=subprocess.DEVNULL, start_new_session=True)
            LIVE[slow_proc.pid] = slow_proc
            first = _readline_timeout(slow_proc, 15)
            try:
                res["slow_connected"] = json.loads(first) if first else None
            except ValueError:
                res["slow_connected"] = None
            time.sleep(1.0)
        sampler = MemSampler(p.pid)
        sampler.start()
        acct = CpuAccount(p.pid)
        w, out = run_wrk(cmd, args.duration)
        res["cpu"] = acct.finish()
        rss, pss, nprocs, nthreads = sampler.finish()
        res.update(w)
        res["wrk_out"] = out
        res["errors"] = errors_of(w, srv)
        # The server's CPU per answered request (all its processes): it moves much less than
        # req/s when other work shares the cores.
        cpu = res["cpu"] or {}
        if w.get("requests") and cpu.get("server_cores") is not None and cpu.get("wall_s"):
            res["cpu_us_per_req"] = round(cpu["server_cores"] * cpu["wall_s"] / w["requests"]
                                          * 1e6, 2)
        res["rss_mib"] = round(rss / 1024, 1)
        res["pss_mib"] = round(pss / 1024, 1)
        res["peak_rss_mib"] = round(sampler.peak_rss / 1024, 1)
        res["nprocs"], res["nthreads"] = nprocs, nthreads
        if p.poll() is not None:
            res["status"] = "died"
            res["detail"] = f"server exited ({p.returncode}) during the run\n" + log_tail(log_path)
        if scn.slow:
            res["slow_stats"] = _stop_slow(slow_proc)
            slow_proc = None
            res["ratio_vs_clean"] = (w["rps"] / res["clean"]["rps"]) if res["clean"]["rps"] else None
        return res
    except Exception as e:  # keep going with the other servers
        res["status"] = "error"
        res["detail"] = f"{type(e).__name__}: {e}\n" + log_tail(log_path)
        return res
    finally:
        if slow_proc is not None:
            _stop_slow(slow_proc)
        probs = stop(p, srv.stop_sig, port=port)
        if probs:
            res["stop_problems"] = probs


def _readline_timeout(proc, timeout):
    box = []
    t = threading.Thread(target=lambda: box.append(proc.stdout.readline()), daemon=True)
    t.start()
    t.join(timeout)
    return box[0] if box else None


def _stop_slow(proc):
    try:
        proc.send_signal(signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        out, _ = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate(timeout=5)
    LIVE.pop(proc.pid, None)
    for line in reversed((out or "").splitlines()):
        try:
            d = json.loads(line)
            if d.get("event") == "done":
                return d
        except ValueError:
            pass
    return None


# ----------------------------------------------------------------------------------------
# new worker: fork to first response
# ----------------------------------------------------------------------------------------


class ForkTracker(threading.Thread):
    """Notes the first moment each new process appears under `root`.

    Polls /proc/sys/kernel/ns_last_pid (the last pid handed out) every ~0.2 ms and, when it
    moves, looks at the new pids' parents. Threads (Tgid != Pid) are ignored. This probe reads
    /proc itself: psutil has neither the last pid handed out nor a task's thread group."""

    def __init__(self, root):
        super().__init__(daemon=True)
        self.known = set(tree(root))
        self.first_seen = {}
        self.stop_evt = threading.Event()
        self.last = self._last_pid()

    @staticmethod
    def _last_pid():
        try:
            with open("/proc/sys/kernel/ns_last_pid") as f:
                return int(f.read())
        except OSError:
            return None

    def _check(self, pid, noticed):
        """True when settled (recorded or not ours); False when /proc has no entry yet (the
        pid is handed out a moment before the new task shows in /proc: look again)."""
        try:
            with open(f"/proc/{pid}/status") as f:
                tgid = ppid = None
                for line in f:
                    if line.startswith("Tgid:"):
                        tgid = int(line.split()[1])
                    elif line.startswith("PPid:"):
                        ppid = int(line.split()[1])
                        break
        except OSError:
            return False
        if tgid == pid and ppid in self.known:
            self.known.add(pid)
            self.first_seen[pid] = noticed
        return True

    def run(self):
        if self.last is None:
            return
        try:
            with open("/proc/sys/kernel/pid_max") as f:
                pid_max = int(f.read())
        except OSError:
            pid_max = 4194304
        pending = {}  # pid -> monotonic time ns_last_pid first showed it
        while not self.stop_evt.is_set():
            cur = self._last_pid()
            now = time.monotonic()
            if cur is not None and cur != self.last:
                if cur > self.last:
                    fresh = range(self.last + 1, cur + 1)
                else:  # wrapped around pid_max
                    fresh = list(range(self.last + 1, pid_max)) + list(range(2, cur + 1))
                for pid in fresh:
                    pending[pid] = now
                self.last = cur
            for pid, noticed in list(pending.items()):
                if self._check(pid, noticed) or now - noticed > 0.2:
                    del pending[pid]
            time.sleep(0.0002)

    def finish(self):
        self.stop_evt.set()
        self.join(timeout=2)


def proc_start_monotonic(pid):
    """Coarse (1/CLK_TCK) fallback: when did pid start, on the monotonic clock."""
    st = read_stat(pid)
    if not st:
        return None
    return time.monotonic() - (time.time() - st[1])


async def _poll_new_worker(port, victim, t_kill, timeout, max_inflight=48):
    """GET /pid on a fresh connection every 1 ms (at most max_inflight outstanding) until a
    200 comes from a pid other than the victim. Returns (t_ok, pid, attempts, errors)."""
    done = asyncio.Event()
    result = {}
    state = {"inflight": 0, "attempts": 0, "errors": 0, "non200": 0}
    req = f"GET /pid HTTP/1.1\r\nHost: {HOST}:{port}\r\nConnection: close\r\n\r\n".encode()

    async def one():
        w = None
        try:
            r, w = await asyncio.open_connection(HOST, port)
            w.write(req)
            head = await r.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
            body = await (r.readexactly(int(m.group(1))) if m else r.read())
            t = time.monotonic()
            if status == 200:
                pid = json.loads(body)["pid"]
                if pid != victim and not done.is_set():
                    result.update(t_ok=t, pid=pid)
                    done.set()
            else:
                state["non200"] += 1
        except (OSError, asyncio.IncompleteReadError, ValueError, KeyError, IndexError):
            state["errors"] += 1
        finally:
            state["inflight"] -= 1
            if w is not None:
                w.close()

    tasks = set()
    deadline = t_kill + timeout
    while not done.is_set() and time.monotonic() < deadline:
        if state["inflight"] < max_inflight:
            state["inflight"] += 1
            state["attempts"] += 1
            t = asyncio.create_task(one())
            tasks.add(t)
            t.add_done_callback(tasks.discard)
        try:
            await asyncio.wait_for(done.wait(), 0.001)
        except asyncio.TimeoutError:
            pass
    for t in list(tasks):
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return result.get("t_ok"), result.get("pid"), state


def get_pid(port):
    st, body = http_request(port, "GET", "/pid", timeout=10)
    if st != 200:
        raise RuntimeError(f"/pid answered {st}")
    return json.loads(body)["pid"]


def one_kill(p, port, victim, timeout=20.0):
    tracker = ForkTracker(p.pid)
    tracker.start()
    time.sleep(0.01)
    old_switch = sys.getswitchinterval()
    sys.setswitchinterval(0.0002)
    try:
        t_kill = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        t_ok, new_pid, state = asyncio.run(_poll_new_worker(port, victim, t_kill, timeout))
    finally:
        sys.setswitchinterval(old_switch)
        tracker.finish()
    r = {"victim": victim, "new_pid": new_pid, "attempts": state["attempts"],
         "poll_errors": state["errors"], "poll_non200": state["non200"]}
    if t_ok is None:
        r["status"] = f"no answer from a new worker within {timeout:.0f}s"
        return r
    t_fork = tracker.first_seen.get(new_pid)
    r["fork_seen"] = "tracked"
    if t_fork is None:
        t_fork = proc_start_monotonic(new_pid)
        r["fork_seen"] = "coarse (/proc starttime, 10 ms ticks)"
    r["status"] = "ok"
    r["kill_to_first_ms"] = (t_ok - t_kill) * 1e3
    if t_fork is not None:
        r["fork_to_first_ms"] = (t_ok - t_fork) * 1e3
        r["kill_to_fork_ms"] = (t_fork - t_kill) * 1e3
    r["other_new_pids"] = sorted(set(tracker.first_seen) - {new_pid})
    return r


LOG_FIGURE_RE = re.compile(
    r"(fork[_ \-]?to[_ \-]?\w+|spawn[_ \-]?to[_ \-]?\w+|time[_ ]to[_ ]ready\w*)"
    r"\W{0,3}\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|us|µs|s)?", re.I)


def log_figures(path):
    figs = []
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return figs
    for m in LOG_FIGURE_RE.finditer(text):
        unit = (m.group(3) or "ms").replace("µs", "us")
        figs.append({"name": m.group(1), "ms": _ms(m.group(2), unit)})
    return figs


def newworker_entries():
    return [
        Entry("wsgiscale", "wsgiscale (preload, default)"),
        Entry("wsgiscale", "wsgiscale --no-preload", preload=False),
        Entry("gunicorn-sync", "gunicorn sync --preload", preload=True),
        Entry("gunicorn-sync", "gunicorn sync (no preload)"),
        Entry("uwsgi", "uWSGI (preload, default)"),
        Entry("uwsgi", "uWSGI --lazy-apps", preload=False),
        Entry("granian", "granian (imports in worker)", respawn=True),
        Entry("bjoern", "bjoern launcher (preload)"),
        Entry("bjoern", "bjoern launcher --no-preload", preload=False),
    ]


NEWWORKER_APPS = [("flask", "flask_app:app"), ("django", "djproj.wsgi:application")]


def newworker_run(entry, app_name, app_spec, rnd, args, logdir):
    srv = entry.server
    port, aport = free_port(), free_port()
    argv = srv.argv(app_spec, port, aport, workers=1, **entry.opts)
    log_path = logdir / f"newworker-{app_name}-{entry.slug}-r{rnd}.log"
    res = {"scenario": "newworker", "app": app_name, "server": entry.label, "key": entry.key,
           "round": rnd, "cmd": placeholder_cmd(argv, port, aport),
           "log": rel(log_path), "kills": [], "status": "ok"}
    p = spawn(argv, srv.env(), log_path)
    try:
        ok, why = wait_ready(p, entry, port, aport, "/pid")
        if not ok:
            res["status"] = "failed-start"
            res["detail"] = why + "\n" + log_tail(log_path)
            return res
        st, body = http_request(port, "GET", "/", timeout=10)
        ok, detail = _check_json(lambda d, b: d.get("framework") == app_name)(st, body)
        if not ok:
            res["status"] = "bad-response"
            res["detail"] = detail
            return res
        victim = get_pid(port)
        if victim == p.pid or victim not in tree(p.pid):
            res["status"] = "skipped"
            res["detail"] = (f"/pid answered {victim}, which is not a worker process in the "
                             f"server's tree (root {p.pid}): killing it would kill the server")
            return res
        for k in range(args.kills):
            for _ in range(3):  # the worker has served a few requests
                get_pid(port)
            time.sleep(0.2)
            r = one_kill(p, port, victim)
            res["kills"].append(r)
            if r["status"] != "ok":
                res["status"] = "failed"
                res["detail"] = r["status"] + "\n" + log_tail(log_path)
                break
            victim = r["new_pid"]
            if k + 1 < args.kills:
                time.sleep(srv.kill_spacing)
        return res
    except Exception as e:
        res["status"] = "error"
        res["detail"] = f"{type(e).__name__}: {e}\n" + log_tail(log_path)
        return res
    finally:
        probs = stop(p, srv.stop_sig, port=port)
        if probs:
            res["stop_problems"] = probs
        res["log_figures"] = log_figures(log_path)


# ----------------------------------------------------------------------------------------
# ceiling
# ----------------------------------------------------------------------------------------


def run_ceiling(args):
    cmd = [str(VBIN / "python"), str(BENCH / "ceiling.py"), "--seconds", "1.0",
           "--repeat", "5"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=str(APPS))
    if r.returncode != 0:
        return {"error": r.stderr[-2000:], "cmd": placeholder_cmd(cmd, 0, None)}
    d = json.loads(r.stdout)
    d["cmd"] = placeholder_cmd(cmd, 0, None)
    return d


# ----------------------------------------------------------------------------------------
# report
# ----------------------------------------------------------------------------------------


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(x, nd=1):
    if x is None:
        return "-"
    if isinstance(x, float) and x != x:
        return "-"
    if isinstance(x, (int,)) or nd == 0:
        return f"{x:,.0f}"
    return f"{x:,.{nd}f}"


def fmt_ratio(x):
    return "-" if x is None else f"{x:.2f}x"


def summarize(runs):
    """Group runs by server label; medians over the successful rounds."""
    groups = {}
    for r in runs:
        groups.setdefault(r["server"], []).append(r)
    out = {}
    for label, rs in groups.items():
        good = [r for r in rs if r["status"] == "ok"]
        s = {"server": label, "key": rs[0]["key"], "rounds": len(rs), "ok_rounds": len(good),
             "cmd": rs[0]["cmd"], "wrk_cmd": next((r.get("wrk_cmd") for r in rs
                                                   if r.get("wrk_cmd")), None),
             "statuses": sorted({r["status"] for r in rs}),
             "detail": next((r.get("detail") for r in rs if r.get("detail")), None),
             "stop_problems": sorted({p for r in rs for p in r.get("stop_problems", [])})}
        for k in ("rps", "p50_ms", "p99_ms", "rss_mib", "pss_mib", "nprocs", "cpu_us_per_req"):
            s[k] = med([r.get(k) for r in good])
        s["other_cores_max"] = max([(r.get("cpu") or {}).get("other_cores", 0) for r in good],
                                   default=None)
        s["server_cores"] = med([(r.get("cpu") or {}).get("server_cores") for r in good])
        s["errors"] = sum(r.get("errors", 0) for r in good)
        s["read"] = sum(r.get("read", 0) for r in good)
        s["requests"] = sum(r.get("requests", 0) for r in good)
        if any("clean" in r for r in good):
            s["clean_rps"] = med([r["clean"]["rps"] for r in good if r.get("clean")])
            s["ratio_vs_clean"] = med([r.get("ratio_vs_clean") for r in good])
            s["slow_open"] = med([(r.get("slow_connected") or {}).get("open_now")
                                  for r in good])
            s["slow_closed"] = sum((r.get("slow_stats") or {}).get("closed_by_server", 0)
                                   for r in good)
            s["slow_connect_errors"] = sum((r.get("slow_stats") or {}).get("connect_errors", 0)
                                           for r in good)
            s["slow_kib"] = med([(r.get("slow_stats") or {}).get("bytes_received", 0) / 1024
                                 for r in good if r.get("slow_stats")])
        out[label] = s
    return out


def md_table(header, rows):
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(str(c) for c in row) + " |")
    return "\n".join(lines)


def rps_of(summ, label):
    s = summ.get(label)
    return s["rps"] if s and s["ok_rounds"] else None


def ratio(a, b):
    return (a / b) if a and b else None


def targets_section(summaries, newworker, ceiling):
    rows = []

    def verdict(val, ok):
        if val is None:
            return "n/a"
        return "PASS" if ok else "FAIL"

    hello = summaries.get("hello", {})
    ws = rps_of(hello, "wsgiscale")
    def faster_c(summ):
        """The faster of the in-process C servers (bjoern, fastpysgi) in a scenario."""
        best = [(rps_of(summ, p), p) for p in ("bjoern", "fastpysgi") if rps_of(summ, p)]
        return max(best) if best else (None, "bjoern/fastpysgi")

    for peer, want in (("gunicorn gthread", 2.0), ("granian", 1.0), ("uWSGI", 1.0)):
        r = ratio(ws, rps_of(hello, peer))
        rows.append((f"hello c64: wsgiscale / {peer} >= {want}", fmt_ratio(r),
                     verdict(r, r is not None and r >= want)))
    c_rps, c_peer = faster_c(hello)
    r = ratio(ws, c_rps)
    rows.append((f"hello c64: wsgiscale / the faster C server ({c_peer}) >= 0.7", fmt_ratio(r),
                 verdict(r, r is not None and r >= 0.7)))
    if hello.get("wsgiscale") and hello["wsgiscale"]["ok_rounds"]:
        p99s = [(s["p99_ms"], l) for l, s in hello.items()
                if l != "wsgiscale" and s["ok_rounds"] and s["p99_ms"] is not None]
        if p99s:
            best, who = min(p99s)
            mine = hello["wsgiscale"]["p99_ms"]
            rows.append((f"hello p99 <= best peer ({who} {best:.2f} ms)",
                         f"{fmt(mine, 2)} ms", verdict(mine, mine is not None and mine <= best)))
    slow = summaries.get("slowclients", {}).get("wsgiscale")
    if slow and slow["ok_rounds"]:
        r = slow.get("ratio_vs_clean")
        rows.append(("200 slow clients: throughput >= 90% of clean", fmt_ratio(r),
                     verdict(r, r is not None and r >= 0.9)))
        rows.append(("200 slow clients: no errors", str(slow["errors"]),
                     verdict(slow["errors"], slow["errors"] == 0)))
    else:
        rows.append(("200 slow clients: >= 90% of clean, no errors", "-", "n/a"))
    flask = summaries.get("flask", {})
    wf = rps_of(flask, "wsgiscale")
    for peer, want in (("granian", 1.1), ("uWSGI", 1.1)):
        r = ratio(wf, rps_of(flask, peer))
        rows.append((f"Flask: wsgiscale / {peer} >= {want}", fmt_ratio(r),
                     verdict(r, r is not None and r >= want)))
    c_rps, c_peer = faster_c(flask)
    r = ratio(wf, c_rps)
    rows.append((f"Flask: wsgiscale / the faster C server ({c_peer}) >= 0.8", fmt_ratio(r),
                 verdict(r, r is not None and r >= 0.8)))
    echo = summaries.get("echo", {})
    r = ratio(rps_of(echo, "wsgiscale"), rps_of(echo, "granian"))
    rows.append(("POST 64 KiB: wsgiscale / granian >= 1.0", fmt_ratio(r),
                 verdict(r, r is not None and r >= 1.0)))
    for app in ("flask", "django"):
        ks = [k for r in newworker if r["server"] == "wsgiscale (preload, default)"
              and r["app"] == app for k in r["kills"] if k.get("status") == "ok"]
        v = med([k.get("fork_to_first_ms") for k in ks])
        rows.append((f"new worker ({app}, preloaded): fork -> first response <= 10 ms",
                     f"{fmt(v, 1)} ms" if v is not None else "-",
                     verdict(v, v is not None and v <= 10)))
    if ceiling and "hello" in ceiling and ws:
        share = (ws / 2) / ceiling["hello"]["calls_per_s"]
        rows.append(("ceiling: wsgiscale per-worker hello rate / bare loop", f"{share:.2%}",
                     "info"))
    return md_table(["target", "measured", "verdict"], rows)


def pair_section(pair, runs):
    """a / b req/s per round (each round runs both, one after the other) and their median:
    a paired ratio holds better than a ratio of medians on a shared machine."""
    a, b = pair
    out = []
    for key, what in (("rps", "req/s"), ("cpu_us_per_req", "server CPU per request")):
        by_round = {}
        for r in runs:
            if r["status"] == "ok" and r.get(key):
                by_round.setdefault(r["round"], {})[r["server"]] = r[key]
        ratios = [v[a] / v[b] for _, v in sorted(by_round.items()) if v.get(a) and v.get(b)]
        if ratios:
            each = ", ".join(f"{x:.3f}" for x in ratios)
            out.append(f"{what}, {a} / {b}, per round: {each}; median "
                       f"{statistics.median(ratios):.3f}, mean {statistics.mean(ratios):.3f}.")
    return "\n\n".join(out) + "\n" if out else ""


def scenario_section(scn_name, title, measures, summ, notes_for):
    out = [f"## {scn_name}: {title}", "", f"What it measures: {measures}.", ""]
    ws = rps_of(summ, "wsgiscale") or rps_of(summ, "wsgiscale --threads 4")
    slow = any("clean_rps" in s for s in summ.values())
    rows = []
    for label, s in summ.items():
        if not s["ok_rounds"]:
            rows.append([label, "FAILED: " + ", ".join(s["statuses"])] +
                        ["-"] * (11 if slow else 9))
            continue
        row = [label]
        if slow:
            row += [fmt(s.get("clean_rps"), 0), fmt(s["rps"], 0),
                    f"{s['ratio_vs_clean']:.0%}" if s.get("ratio_vs_clean") is not None else "-"]
        else:
            row += [fmt(s["rps"], 0)]
        row += [fmt(s["p50_ms"], 2), fmt(s["p99_ms"], 2), fmt(s["errors"], 0),
                fmt(s["read"], 0) + (" (closes)" if SERVERS[s["key"]].closes_per_response
                                     and s["read"] else ""),
                fmt(s["rss_mib"], 1), fmt(s["pss_mib"], 1),
                f"{fmt(s.get('server_cores'), 2)} / {fmt(s.get('other_cores_max'), 2)}",
                fmt(s.get("cpu_us_per_req"), 1)]
        if slow:
            row += [f"{fmt(s.get('slow_open'), 0)} / {fmt(s.get('slow_closed'), 0)}",
                    fmt(s.get("slow_kib"), 0)]
        else:
            row += [fmt_ratio(ratio(ws, s["rps"])) if ws else "-"]
        rows.append(row)
    if slow:
        header = ["server", "clean req/s", "with slow req/s", "share", "p50 ms", "p99 ms",
                  "errors", "wrk read errs", "RSS MiB", "PSS MiB", "CPU server / other",
                  "server CPU µs/req", "slow held / closed", "slow clients got KiB"]
    else:
        header = ["server", "req/s", "p50 ms", "p99 ms", "errors", "wrk read errs",
                  "RSS MiB", "PSS MiB", "CPU server / other", "server CPU µs/req",
                  "wsgiscale ÷ server"]
    out.append(md_table(header, rows))
    out.append("")
    wrk = next((s["wrk_cmd"] for s in summ.values() if s.get("wrk_cmd")), None)
    if wrk:
        out.append(f"Load: `{wrk}` (after a warm-up run with the same flags).")
    out.append("")
    out.append("Commands (PORT is a fresh port per run):")
    out.append("")
    for label, s in summ.items():
        out.append(f"- {label}: `{s['cmd']}`")
    fails = [(l, s) for l, s in summ.items() if s["detail"] or s["stop_problems"]]
    if fails:
        out.append("")
        out.append("Problems:")
        out.append("")
        for label, s in fails:
            if s["detail"]:
                out.append(f"- {label} ({', '.join(s['statuses'])}):")
                out.append("")
                out.append("  ```")
                out.extend("  " + line for line in s["detail"].splitlines()[-12:])
                out.append("  ```")
            if s["stop_problems"]:
                out.append(f"- {label}: stop: {'; '.join(s['stop_problems'])}")
    out.append("")
    return "\n".join(out)


def newworker_section(runs):
    out = ["## newworker: fork to first response of a new worker (Flask, Django)", "",
           "Each server runs ONE worker. The worker (the pid that /pid reports) is SIGKILLed "
           "while a poller opens a fresh connection with `GET /pid` every 1 ms (at most 48 "
           "outstanding; refused connections are retried), until a 200 arrives from a "
           "different pid. A tracker polls /proc/sys/kernel/ns_last_pid every ~0.2 ms and "
           "notes when each new process appears under the server's root: that is the fork "
           "time. kill->fork is the supervisor's reaction (granian: --respawn-interval 0, "
           "its default is 3.5 s); fork->first response is the new worker's start-up plus its "
           "first request (a preloaded parent has the app imported already). Medians over "
           "all kills (min-max in brackets).", ""]
    groups = {}
    for r in runs:
        groups.setdefault((r["app"], r["server"]), []).append(r)
    rows = []
    for (app, label), rs in groups.items():
        ks = [k for r in rs for k in r["kills"] if k.get("status") == "ok"]
        statuses = sorted({r["status"] for r in rs})

        def cell(key):
            vals = [k.get(key) for k in ks if k.get(key) is not None]
            if not vals:
                return "-"
            return f"{statistics.median(vals):.1f} [{min(vals):.1f}-{max(vals):.1f}]"

        figs = [f for r in rs for f in r.get("log_figures", [])]
        fig = "-"
        if figs:
            by = {}
            for f in figs:
                by.setdefault(f["name"], []).append(f["ms"])
            fig = "; ".join(f"{n} {statistics.median(v):.1f} ms" for n, v in by.items())
        coarse = any("coarse" in (k.get("fork_seen") or "") for k in ks)
        rows.append([app, label, len(ks), cell("kill_to_fork_ms"),
                     cell("fork_to_first_ms") + (" (coarse)" if coarse else ""),
                     cell("kill_to_first_ms"), fig,
                     "ok" if statuses == ["ok"] else ", ".join(statuses)])
    out.append(md_table(["app", "server", "kills", "kill->fork ms", "fork->first response ms",
                         "kill->first response ms", "server's own log figure (all its workers)", "status"],
                        rows))
    out.append("")
    out.append("cheroot is not in this table: it is one process with no supervisor, so a killed "
               "process is the whole server.")
    out.append("")
    out.append("Commands (1 worker; PORT is fresh per run):")
    out.append("")
    seen = set()
    for r in runs:
        if (r["server"], r["app"]) not in seen:
            seen.add((r["server"], r["app"]))
            out.append(f"- {r['server']} ({r['app']}): `{r['cmd']}`")
    probs = [r for r in runs if r["status"] != "ok" or r.get("stop_problems")]
    if probs:
        out += ["", "Problems:", ""]
        for r in probs:
            d = (r.get("detail") or "").splitlines()
            out.append(f"- {r['server']} ({r['app']}, round {r['round']}): {r['status']}"
                       + (f": {d[0]}" if d else "")
                       + (f"; stop: {'; '.join(r['stop_problems'])}"
                          if r.get("stop_problems") else ""))
    out.append("")
    return "\n".join(out)


def ceiling_section(ceiling, summaries):
    out = ["## ceiling: the apps in a bare Python loop", "",
           "Calls per second of each app called directly in one Python process (prebuilt "
           "environ, no-op start_response, body iterated; best of 5 x 1 s). A server cannot "
           "beat this per worker. Per-worker share = (req/s ÷ worker processes) ÷ ceiling: the "
           "part of a worker's time spent in the app itself, the rest being the server's own "
           "cost (for hello, whose call takes a fraction of a µs, the share is tiny and shows "
           "the server's overhead). On this 2-core machine wrk takes most of one core, so the "
           "2 workers together get about one core: about 50% per worker is the most a server "
           "can reach here, whatever the app.", ""]
    if not ceiling or "error" in ceiling:
        out.append(f"ceiling failed: {ceiling.get('error') if ceiling else 'not run'}")
        return "\n".join(out)
    rows = [[name, fmt(d["calls_per_s"], 0), f"{d['us_per_call']:.2f}"]
            for name, d in ceiling.items() if isinstance(d, dict)]
    out.append(md_table(["app", "calls/s", "µs/call"], rows))
    out.append("")
    out.append(f"Command: `{ceiling.get('cmd')}`")
    out.append("")
    for scn, app in (("hello", "hello"), ("flask", "flask")):
        summ = summaries.get(scn)
        if not summ or app not in ceiling:
            continue
        c = ceiling[app]["calls_per_s"]
        rows = []
        for label, s in summ.items():
            if not s["ok_rounds"] or not s["rps"]:
                continue
            nproc = SERVERS[s["key"]].processes
            per = s["rps"] / nproc
            rows.append([label, fmt(s["rps"], 0), nproc, fmt(per, 0), f"{per / c:.2%}",
                         f"{s['rps'] / c:.2%}"])
        out.append(f"Per-worker {scn} rate against the {app} ceiling ({fmt(c, 0)} calls/s):")
        out.append("")
        out.append(md_table(["server", "req/s", "worker processes", "req/s per worker",
                             "per-worker share", "whole server share"], rows))
        out.append("")
    return "\n".join(out)


def versions():
    v = {}
    try:
        r = subprocess.run(
            [str(VBIN / "python"), "-c",
             "import importlib.metadata as m, json, sys\n"
             "out={'python': sys.version.split()[0]}\n"
             "for n in ['gunicorn','uWSGI','granian','bjoern','fastpysgi','cheroot','Flask',"
             "'Django']:\n"
             "    try: out[n]=m.version(n)\n"
             "    except Exception: out[n]=None\n"
             "print(json.dumps(out))"], capture_output=True, text=True, timeout=60)
        v.update(json.loads(r.stdout))
    except Exception:
        pass
    try:
        v["wrk"] = subprocess.run(["wrk", "-v"], capture_output=True, text=True,
                                  timeout=10).stdout.splitlines()[0]
    except Exception:
        v["wrk"] = None
    v["wsgiscale"] = str(WSGISCALE_BIN) if os.access(WSGISCALE_BIN, os.X_OK) else None
    try:
        v["repo_commit"] = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short",
                                           "HEAD"], capture_output=True, text=True,
                                          timeout=10).stdout.strip()
    except Exception:
        pass
    return v


def machine():
    m = {"cores": os.cpu_count(), "kernel": platform.release()}
    m["mem_gib"] = round(psutil.virtual_memory().total / 1024 ** 3, 1)
    m["loadavg_at_start"] = [f"{x:.2f}" for x in os.getloadavg()]
    try:
        # the model name: psutil has none
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    m["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return m


def write_report(args, meta, runs_by_scn, newworker, ceiling, stamp, outdir):
    summaries = {name: summarize(rs) for name, rs in runs_by_scn.items()}
    lines = [f"# wsgiscale benchmark — {stamp}", ""]
    if args.duration < 5:
        lines += [f"**Smoke test: {args.duration} s runs. Not a measurement.**", ""]
    m, v = meta["machine"], meta["versions"]
    lines += [
        f"Machine: {m.get('cores')} cores ({m.get('cpu', '?')}), {m.get('mem_gib')} GiB, "
        f"Linux {m.get('kernel')}; load average at start {' '.join(m.get('loadavg_at_start', []))}"
        f"{' (BUSY: results are not comparable)' if float((m.get('loadavg_at_start') or ['0'])[0]) > 0.5 else ''}.",
        f"Versions: Python {v.get('python')}, gunicorn {v.get('gunicorn')}, uWSGI "
        f"{v.get('uWSGI')}, granian {v.get('granian')}, bjoern {v.get('bjoern')}, fastpysgi "
        f"{v.get('fastpysgi')}, cheroot "
        f"{v.get('cheroot')}, Flask {v.get('Flask')}, Django {v.get('Django')}, "
        f"{v.get('wrk')}; wsgiscale {v.get('wsgiscale') or 'NOT BUILT (skipped)'}; repo at "
        f"{v.get('repo_commit')}.",
        f"Settings: {args.duration} s per measured run after a {args.warmup} s warm-up, "
        f"{args.rounds} interleaved round(s) (server order rotated each round), medians "
        f"reported (errors: sums over rounds); wrk -t1 -c{CONNS} on loopback; wrk and the "
        f"server share the 2 cores.",
        f"Command: `{meta['command']}`",
        "",
        "Notes: every server runs 2 worker processes (cheroot: 1 process, 10 threads) and the "
        "same app objects from bench/apps. errors = non-2xx + connect + write + timeout (+ "
        "read, except for uWSGI --http-socket, which closes after every response so wrk counts "
        "one harmless read error per request: shown apart). RSS/PSS: the whole process tree, "
        "sampled at the end of the measured run (PSS splits shared pages fairly; RSS "
        "double-counts them). CPU server / other: cores used during the measured run by the "
        "server's process tree, and (worst round) by everything except the server and wrk: "
        "above ~0.1 something else was running and that figure is suspect.",
        "",
    ]
    for key, srv in SERVERS.items():
        if srv.note:
            lines.append(f"- {srv.label}: {srv.note}")
    lines.append("")
    if meta.get("skipped"):
        lines += ["Skipped servers:", ""] + [f"- {k}: {why}" for k, why in meta["skipped"]] + [""]
    noisy = [(name, r["server"], r["round"], r["cpu"]["other_cores"])
             for name, rs in runs_by_scn.items() for r in rs
             if r.get("cpu") and r["cpu"]["other_cores"] > 0.1]
    if noisy:
        lines += [f"**Noise: {len(noisy)} measured run(s) shared the CPU with other work "
                  f"(> 0.1 core used by neither the server nor wrk):** "
                  + ", ".join(f"{n}/{sv}/r{rd} {c:.2f}" for n, sv, rd, c in noisy[:30])
                  + (" ..." if len(noisy) > 30 else ""), ""]
    lines += ["## Targets (wsgiscale against the peers, this run)", "",
              targets_section(summaries, newworker, ceiling), ""]
    for scn in SCENARIOS:
        if scn.name in summaries:
            lines.append(scenario_section(scn.name, scn.title, scn.measures,
                                          summaries[scn.name], None))
            for pair in scn.pairs:
                lines.append(pair_section(pair, runs_by_scn.get(scn.name, [])))
    if newworker:
        lines.append(newworker_section(newworker))
    if ceiling:
        lines.append(ceiling_section(ceiling, summaries))
    text = "\n".join(lines) + "\n"
    md = outdir / f"results-{stamp}.md"
    md.write_text(text)
    raw = {"meta": meta, "runs": [r for rs in runs_by_scn.values() for r in rs],
           "summaries": summaries, "newworker": newworker, "ceiling": ceiling}
    (outdir / f"results-{stamp}.json").write_text(json.dumps(raw, indent=1, default=str))
    return text, md


# ----------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=int, default=10, help="seconds per measured wrk run")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median)")
    ap.add_argument("--warmup", type=int, default=2, help="seconds of wrk before measuring")
    ap.add_argument("--only", default="", help="comma list of: " + ",".join(SCENARIO_NAMES))
    ap.add_argument("--servers", default="", help="comma list of: " + ",".join(SERVERS))
    ap.add_argument("--kills", type=int, default=3, help="newworker: kills per round")
    ap.add_argument("--slow-conns", type=int, default=200)
    ap.add_argument("--slow-readers", type=int, default=50,
                    help="slowreaders: clients reading a 16 MiB response at ~1 KiB/s")
    ap.add_argument("--out", default=str(BENCH / "out"))
    args = ap.parse_args()

    signal.signal(signal.SIGTERM, _on_signal)
    if not shutil.which("wrk"):
        sys.exit("wrk not found: run bench/setup.sh")
    if not (VBIN / "python").exists():
        sys.exit(f"{VBIN}/python missing: run bench/setup.sh")
    only = [s for s in args.only.split(",") if s] or SCENARIO_NAMES
    bad = [s for s in only if s not in SCENARIO_NAMES]
    if bad:
        sys.exit(f"unknown scenario(s) {bad}; choose from {SCENARIO_NAMES}")
    want = [s for s in args.servers.split(",") if s] or list(SERVERS)
    bad = [s for s in want if s not in SERVERS]
    if bad:
        sys.exit(f"unknown server(s) {bad}; choose from {list(SERVERS)}")

    skipped = []
    usable = set()
    for key in want:
        ok, why = SERVERS[key].available()
        if ok:
            usable.add(key)
        else:
            skipped.append((key, why))
            print(f"[bench] SKIP {key}: {why}", file=sys.stderr, flush=True)

    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    outdir = Path(args.out)
    logdir = outdir / f"logs-{stamp}"
    logdir.mkdir(parents=True, exist_ok=True)
    meta = {"stamp": stamp, "machine": machine(), "versions": versions(),
            "command": shlex.join([os.path.relpath(sys.executable, REPO)
                                   if sys.executable.startswith(str(REPO)) else sys.executable,
                                   os.path.relpath(__file__, REPO)] + sys.argv[1:]),
            "args": vars(args), "skipped": skipped}

    runs_by_scn = {}
    newworker = []
    ceiling = None
    try:
        for scn in SCENARIOS:
            if scn.name not in only:
                continue
            entries = [e for e in scn.entries() if e.key in usable]
            for rnd in range(1, args.rounds + 1):
                k = (rnd - 1) % max(1, len(entries))
                order = entries[k:] + entries[:k]
                for e in order:
                    print(f"[bench] {scn.name} round {rnd}/{args.rounds}: {e.label} ...",
                          file=sys.stderr, flush=True, end=" ")
                    r = measure(scn, e, rnd, args, logdir)
                    runs_by_scn.setdefault(scn.name, []).append(r)
                    if r["status"] == "ok":
                        extra = (f" (clean {r['clean']['rps']:,.0f})" if r.get("clean") else "")
                        print(f"{r['rps']:,.0f} req/s{extra}, p99 {fmt(r['p99_ms'], 2)} ms, "
                              f"errors {r['errors']}, read {r['read']}, RSS {r['rss_mib']} MiB",
                              file=sys.stderr, flush=True)
                    else:
                        print(failure_line(r),
                              file=sys.stderr, flush=True)
        if "newworker" in only:
            entries = [e for e in newworker_entries() if e.key in usable]
            for rnd in range(1, args.rounds + 1):
                for app_name, app_spec in NEWWORKER_APPS:
                    for e in entries:
                        print(f"[bench] newworker {app_name} round {rnd}: {e.label} ...",
                              file=sys.stderr, flush=True, end=" ")
                        r = newworker_run(e, app_name, app_spec, rnd, args, logdir)
                        newworker.append(r)
                        f2f = [k.get("fork_to_first_ms") for k in r["kills"]
                               if k.get("fork_to_first_ms") is not None]
                        print(f"{r['status']}; fork->first "
                              f"{', '.join(f'{x:.1f}' for x in f2f) or '-'} ms",
                              file=sys.stderr, flush=True)
        if "ceiling" in only:
            print("[bench] ceiling ...", file=sys.stderr, flush=True)
            ceiling = run_ceiling(args)
    except KeyboardInterrupt:
        print("[bench] interrupted: writing what was measured", file=sys.stderr)
    finally:
        _cleanup_all()
    text, md = write_report(args, meta, runs_by_scn, newworker, ceiling, stamp, outdir)
    print(text)
    print(f"[bench] report: {md}\n[bench] raw: {md.with_suffix('.json')}\n"
          f"[bench] logs: {logdir}", file=sys.stderr)


if __name__ == "__main__":
    main()
