"""Instructions per request, per process, under callgrind: a count that does not move with the
machine's load (CPU time does, by several percent on this 2-core machine), for comparing two
settings or two builds of the server on the same requests.

The server (target/release/wsgiscale, 2 workers, bench/apps basic:hello) runs under
`valgrind --tool=callgrind --trace-children=yes` with instrumentation off; after a warm-up,
instrumentation is switched on for exactly N keep-alive requests (4 client threads, each
request with the four X-Forwarded-* headers of bench/run.py's proxy scenarios) and off again,
and every process dumps its counts. Printed: user-space instructions per request of the
master, of each worker, in all, and (inclusive) of the front's route decision.

    bench/.venv/bin/python bench/instructions.py [--requests 4000] [--bin PATH]
        [-- extra server arguments, e.g. --forwarded-allow-ips '']

Kernel time is not counted: the counts say how much the user-space work differs, not the
whole CPU time.
"""
import argparse
import glob
import http.client
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HEADERS = {"X-Forwarded-For": "198.51.100.7, 203.0.113.9", "X-Forwarded-Proto": "https",
           "X-Forwarded-Host": "bench.example.com", "X-Forwarded-Port": "443"}


def send(port, n, threads=4):
    def run(count):
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        for _ in range(count):
            c.request("GET", "/", headers=HEADERS)
            body = c.getresponse().read()
            if body != b"Hello, World!":
                raise SystemExit(f"instructions.py: unexpected answer {body[:80]!r}")
    ts = [threading.Thread(target=run, args=(n // threads,)) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return (n // threads) * threads


def total(path):
    """The dump's instruction count (its `totals:` line; `summary:` is 0 for a dump)."""
    best = 0
    with open(path, errors="replace") as f:
        for line in f:
            if line.startswith("totals:") or line.startswith("summary:"):
                best = max(best, int(line.split()[1]))
    return best


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=4000)
    p.add_argument("--bin", default=str(REPO / "target" / "release" / "wsgiscale"))
    p.add_argument("--port", type=int, default=18300)
    p.add_argument("extra", nargs="*")
    a = p.parse_args()
    for tool in ("valgrind", "callgrind_control", "callgrind_annotate"):
        if not shutil.which(tool):
            raise SystemExit(f"instructions.py: {tool} is missing (apt-get install valgrind)")
    venv = REPO / "bench" / ".venv"
    libdir = subprocess.run([str(venv / "bin" / "python"), "-c",
                             "import sysconfig; print(sysconfig.get_config_var('LIBDIR') or '')"],
                            capture_output=True, text=True, check=True).stdout.strip()
    env = dict(os.environ, VIRTUAL_ENV=str(venv), LD_LIBRARY_PATH=libdir)
    out = Path(tempfile.mkdtemp(prefix="wsgiscale-cg-"))
    aport = a.port + 1
    argv = ["valgrind", "--tool=callgrind", "--trace-children=yes", "--instr-atstart=no", "-q",
            f"--callgrind-out-file={out}/cg.%p", a.bin, "serve", "--bind", f"127.0.0.1:{a.port}",
            "--admin-bind", f"127.0.0.1:{aport}", "--workers", "2", "--chdir",
            str(REPO / "bench" / "apps"), "--venv", str(venv), *a.extra, "basic:hello"]
    log = open(out / "server.log", "w")
    server = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{aport}/readyz", timeout=2)
                break
            except OSError:
                if time.time() > deadline or server.poll() is not None:
                    raise SystemExit(f"instructions.py: the server did not get ready ({out}/server.log)")
                time.sleep(0.3)
        send(a.port, 400)
        subprocess.run(["callgrind_control", "-i", "on"], capture_output=True, check=True)
        n = send(a.port, a.requests)
        subprocess.run(["callgrind_control", "-i", "off"], capture_output=True, check=True)
        subprocess.run(["callgrind_control", "-d"], capture_output=True, check=True)
        time.sleep(1)
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
    dumps = {f: total(f) for f in glob.glob(str(out / "cg.*.1"))}
    dumps = {f: v for f, v in dumps.items() if v > n}  # the fork server runs no request
    if not dumps:
        raise SystemExit(f"instructions.py: no counts in {out}")
    master = max(dumps, key=lambda f: ("__zygote" not in open(f, errors="replace").read(4000), dumps[f]))
    route = 0
    ann = subprocess.run(["callgrind_annotate", "--inclusive=yes", master],
                         capture_output=True, text=True).stdout
    for line in ann.splitlines():
        m = re.match(r"\s*([\d,]+)\s+\([^)]*\)\s+\S*front\.rs:wsgiscale_sidecar::front::route::\{\{closure\}\} \[", line)
        if m:
            route = int(m.group(1).replace(",", ""))
            break
    workers = sorted((v for f, v in dumps.items() if f != master), reverse=True)
    print(f"server args: {' '.join(a.extra) or '(defaults)'}; {n} requests; counts in {out}")
    print(f"master {dumps[master] / n:,.0f}, workers {', '.join(f'{w / n:,.0f}' for w in workers)}, "
          f"all {sum(dumps.values()) / n:,.0f} instructions per request; route decision "
          f"(inclusive) {route / n:,.0f}")


if __name__ == "__main__":
    sys.exit(main())
