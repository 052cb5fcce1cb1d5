"""Small helpers shared by bench/step.py and bench/memory.py.

The process handling (process groups, fresh ports, stop with SIGKILL fallback, process trees,
CPU counters) is run.py's own code, imported unchanged; this module only adds what the two
newer scripts need on top: a machine-load account that names the other processes using the
CPU, /proc/PID/smaps_rollup figures, a plain readiness wait and the worker pids of each
server's process tree.
"""
import http.client
import os
import resource
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import run as R  # noqa: E402  (run.py defines everything at import; main() only runs as a script)
from run import (APPS, BENCH as _B, HOST, LIVE, REPO, VBIN, VENV,  # noqa: E402,F401
                 WSGISCALE_BIN, _cleanup_all, base_env, cpu_busy_s, failure_line, fmt,
                 free_port, http_request, log_tail, md_table, placeholder_cmd, proc_table,
                 read_stat, rel, spawn, stop, tree, tree_cpu_s, versions, machine)

NOISE_CORES = 0.1  # same threshold as run.py: CPU used by neither the server nor the client


def loadavg():
    return [round(x, 2) for x in os.getloadavg()]


def _proc_cpu_table():
    """{pid: (name, cpu seconds, create time)} for every process (threads included in the
    process's own user and system time)."""
    out = {}
    for p in R.psutil.process_iter(["name", "cpu_times", "create_time"]):
        t = p.info["cpu_times"]
        if t is None:
            continue
        out[p.pid] = (p.info["name"], t.user + t.system, p.info["create_time"])
    return out


class MachineAccount:
    """CPU accounting over one measured run, in cores (CPU seconds / wall seconds):

    - server: the server's process tree, reaped children included (retired workers);
    - client: this script's own children that were reaped (the load generator) and this
      process itself (the samplers);
    - other: everything else on the machine = machine busy - server - client. Above
      NOISE_CORES the run shared the CPU (a Rust build, say) and is flagged.

    `top_other` names the processes (by comm) that used the most CPU among those alive at the
    start or the end of the run and not in the server tree or ours: short-lived ones (one
    rustc) are only in the `other` total."""

    def __init__(self, root=None):
        """root None: no server tree apart; everything this process ran and reaped by
        finish() (servers included) counts as 'client'."""
        self.root = root
        self.t0 = time.monotonic()
        self.load0 = loadavg()
        self.busy0 = cpu_busy_s()
        self.srv_pids0 = tree(root) if root else {}
        self.srv0 = tree_cpu_s(self.srv_pids0, reaped=True)
        ru_c = resource.getrusage(resource.RUSAGE_CHILDREN)
        ru_s = resource.getrusage(resource.RUSAGE_SELF)
        self.kids0 = ru_c.ru_utime + ru_c.ru_stime
        self.self0 = ru_s.ru_utime + ru_s.ru_stime
        self.snap0 = _proc_cpu_table()

    def finish(self, extra_client_s=0.0):
        wall = time.monotonic() - self.t0
        busy = cpu_busy_s() - self.busy0
        srv_pids = tree(self.root) if self.root else {}
        srv_d = tree_cpu_s(srv_pids, reaped=True) - self.srv0
        ru_c = resource.getrusage(resource.RUSAGE_CHILDREN)
        ru_s = resource.getrusage(resource.RUSAGE_SELF)
        client = (ru_c.ru_utime + ru_c.ru_stime - self.kids0
                  + ru_s.ru_utime + ru_s.ru_stime - self.self0 + extra_client_s)
        other = max(0.0, busy - max(0.0, srv_d) - client)
        snap1 = _proc_cpu_table()
        mine = set(srv_pids) | set(self.srv_pids0) | {os.getpid()}
        per = {}
        for pid, (comm, cpu_s, st) in snap1.items():
            if pid in mine:
                continue
            before = self.snap0.get(pid)
            # a process started during the run: all its CPU is from the run
            d = cpu_s - before[1] if before and before[2] == st else cpu_s
            if d > 0:
                per[comm] = per.get(comm, 0) + d
        top = sorted(per.items(), key=lambda kv: -kv[1])[:4]
        return {
            "wall_s": round(wall, 2),
            "machine_cores": round(busy / wall, 2),
            "server_cores": round(max(0.0, srv_d) / wall, 2),
            "client_cores": round(client / wall, 2),
            "other_cores": round(other / wall, 2),
            "top_other": [[c, round(t / wall, 2)] for c, t in top if t / wall >= 0.01],
            "loadavg_start": self.load0,
            "loadavg_end": loadavg(),
            "noisy": other / wall > NOISE_CORES,
            "has_server": bool(self.root),
        }


def describe_load(acct):
    """One line for a report: load averages and the CPU of other processes."""
    top = ", ".join(f"{c} {x:.2f}" for c, x in acct.get("top_other", [])) or "-"
    ours = (f"server {acct['server_cores']:.2f}, client {acct['client_cores']:.2f}"
            if acct.get("has_server", True) else
            f"ours (servers + clients) {acct['client_cores']:.2f}")
    return (f"loadavg {' '.join(map(str, acct['loadavg_start']))} -> "
            f"{' '.join(map(str, acct['loadavg_end']))}; cores {ours}, "
            f"other {acct['other_cores']:.2f}"
            f"{' (NOISY)' if acct['noisy'] else ''}; top other: {top}")


def smaps_rollup(pid):
    """{'rss','pss','uss','shared','swap'} in KiB from /proc/PID/smaps_rollup through psutil's
    memory_full_info (USS = Private_Clean + Private_Dirty; shared = RSS - USS), or None if the
    process is gone."""
    try:
        m = R.psutil.Process(pid).memory_full_info()
    except R.psutil.Error:
        return None
    return {"rss": m.rss // 1024, "pss": m.pss // 1024, "uss": m.uss // 1024,
            "shared": (m.rss - m.uss) // 1024, "swap": m.swap // 1024}


def children_of(pid):
    """Direct children (pids) of pid, sorted."""
    return sorted(p for p, (ppid, _) in proc_table().items() if ppid == pid)


def wait_http(port, path="/", timeout=60.0, proc=None, expect=None):
    """Wait until GET path on port answers (< 500; or == expect). Returns (ok, detail)."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False, f"exited with {proc.returncode} before answering"
        try:
            st, body = http_request(port, "GET", path, timeout=2.0)
            if (expect is None and st < 500) or st == expect:
                return True, ""
            last = f"status {st}"
        except (OSError, http.client.HTTPException) as e:
            last = repr(e)
        time.sleep(0.05)
    return False, f"not ready after {timeout:.0f}s ({last})"
