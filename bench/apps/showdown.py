"""The one app of the HPA showdown (bench/showdown, `make bench-showdown`): every contender
serves this module, unchanged.

    GET /work?cpu_ms=5&io_ms=0    about 5 ms of CPU (pure Python holding the GIL), no waiting
    GET /work?cpu_ms=1&io_ms=50   about 1 ms of CPU, then 50 ms of waiting (a database call)
    GET /                         a tiny answer, for probes

The CPU part burns the thread's own CPU time (time.thread_time), so a request costs the same
CPU whatever else runs: under a CPU limit it takes longer in wall time, as a real request
does. The waiting part sleeps with the GIL released, as a socket read does.
"""
import time
from urllib.parse import parse_qs

OK = b"ok\n"


def _burn(ms):
    end = time.thread_time() + ms / 1000.0
    x = 0
    while time.thread_time() < end:
        for i in range(200):
            x += i * i
    return x


def application(environ, start_response):
    if environ.get("PATH_INFO", "/") == "/work":
        q = parse_qs(environ.get("QUERY_STRING", ""))
        cpu_ms = float(q.get("cpu_ms", ["0"])[0])
        io_ms = float(q.get("io_ms", ["0"])[0])
        if cpu_ms > 0:
            _burn(cpu_ms)
        if io_ms > 0:
            time.sleep(io_ms / 1000.0)
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(OK)))])
    return [OK]
