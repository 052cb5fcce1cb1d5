"""Plain WSGI apps shared by every server in the benchmark (no framework).

Each callable ignores the path, so wrk can hit "/". Every server gets the very same objects.
"""
import json
import time

HELLO = b"Hello, World!"
HELLO_HEADERS = [("Content-Type", "text/plain"), ("Content-Length", str(len(HELLO)))]


def hello(environ, start_response):
    """13 bytes, the classic hello world."""
    start_response("200 OK", HELLO_HEADERS)
    return [HELLO]


def json4k(environ, start_response):
    """A ~4 KiB JSON document built with json.dumps on every request."""
    doc = {
        "ok": True,
        "generated": time.time(),
        "items": [
            {
                "id": i,
                "name": "item-%04d" % i,
                "price": round(i * 1.25, 2),
                "tags": ["alpha", "beta", "gamma"],
                "active": i % 3 != 0,
                "owner": {"id": i * 7, "login": "user%d" % i},
            }
            for i in range(29)
        ],
    }
    body = json.dumps(doc).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]


SLEPT10 = b"slept 10ms"
SLEPT20 = b"slept 20ms"


def sleep10(environ, start_response):
    """10 ms of blocking wait (an I/O-bound view: the GIL is released)."""
    time.sleep(0.010)
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(SLEPT10)))])
    return [SLEPT10]


def slow(environ, start_response):
    """20 ms of blocking wait (for step-load / autoscaling scenarios)."""
    time.sleep(0.020)
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(SLEPT20)))])
    return [SLEPT20]


# Calibrated once on the 2-core benchmark machine (bench/run.py --only ceiling prints the
# current cost of one call): about 1 ms of pure-Python work holding the GIL. A constant, so
# every server and every run does the same work.
CPU_LOOPS = 20000


def _burn(n):
    acc = 0
    for i in range(n):
        acc = (acc * 31 + i) % 1000003
    return acc


def cpu1ms(environ, start_response):
    """About 1 ms of pure-Python CPU work."""
    body = b"%d" % _burn(CPU_LOOPS)
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def echo(environ, start_response):
    """Echo the request body (the benchmark POSTs 64 KiB)."""
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    body = environ["wsgi.input"].read(length) if length > 0 else b""
    start_response("200 OK", [("Content-Type", "application/octet-stream"),
                              ("Content-Length", str(len(body)))])
    return [body]


BIG_PIECE = b"b" * 65536


def hello_or_big(environ, start_response):
    """hello on every path but `/big`, which streams `?MIB` MiB (default 16) from a generator
    in 64 KiB pieces, without a Content-Length: the slow-reader scenario's large download
    beside wrk's hello, from one app object."""
    if environ.get("PATH_INFO") != "/big":
        return hello(environ, start_response)
    try:
        mib = int(environ.get("QUERY_STRING") or 16)
    except ValueError:
        mib = 16
    start_response("200 OK", [("Content-Type", "application/octet-stream")])

    def pieces():
        for _ in range(mib * 16):
            yield BIG_PIECE
    return pieces()
