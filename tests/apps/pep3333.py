"""WSGI apps exercising PEP 3333, one per route, each wrapped in wsgiref.validate.validator
so that the server's side of the contract is checked by the standard library too."""
import json
import os
import sys
import time
from wsgiref.validate import validator

CLOSED = {"count": 0}


def _json(start_response, obj, status="200 OK"):
    body = json.dumps(obj, sort_keys=True).encode()
    start_response(status, [("Content-Type", "application/json"),
                            ("Content-Length", str(len(body)))])
    return [body]


def environ_app(environ, start_response):
    out = {k: v for k, v in environ.items() if isinstance(v, str)}
    out["wsgi.version"] = list(environ["wsgi.version"])
    for k in ("wsgi.multithread", "wsgi.multiprocess", "wsgi.run_once", "wsgi.input_terminated"):
        out[k] = environ.get(k)
    out["path_info_latin1_bytes"] = list(environ["PATH_INFO"].encode("latin-1"))
    out["has_file_wrapper"] = callable(environ.get("wsgi.file_wrapper"))
    return _json(start_response, out)


def input_app(environ, start_response):
    inp = environ["wsgi.input"]
    mode = environ.get("QUERY_STRING", "")
    if mode == "read":
        data = inp.read(int(environ.get("CONTENT_LENGTH") or 0))
        extra = inp.read(10)
        return _json(start_response, {"data": data.decode("latin-1"), "extra": extra.decode()})
    if mode == "chunks":
        parts = []
        while True:
            c = inp.read(3)
            if not c:
                break
            parts.append(c.decode())
        return _json(start_response, {"parts": parts})
    if mode == "readline":
        return _json(start_response, {"first": inp.readline().decode(), "second": inp.readline(2).decode()})
    if mode == "readlines":
        return _json(start_response, {"lines": [l.decode() for l in inp.readlines()]})
    if mode == "iter":
        return _json(start_response, {"lines": [l.decode() for l in inp]})
    # to EOF, as apps do when wsgi.input_terminated is set
    data = inp.read(1 << 30)
    return _json(start_response, {"len": len(data), "terminated": environ.get("wsgi.input_terminated"),
                                  "content_length": environ.get("CONTENT_LENGTH")})


def write_app(environ, start_response):
    write = start_response("200 OK", [("Content-Type", "text/plain")])
    write(b"written ")
    write(b"directly ")
    return [b"then returned"]


def exc_info_app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("X-Replaced", "no")])
    try:
        raise ValueError("boom")
    except ValueError:
        start_response("503 Service Unavailable", [("Content-Type", "text/plain")], sys.exc_info())
    return [b"replaced"]


def exc_info_late_app(environ, start_response):
    def gen():
        start_response("200 OK", [("Content-Type", "text/plain")])
        yield b"partial"
        try:
            raise KeyError("late")
        except KeyError:
            # Headers are sent: start_response must re-raise.
            start_response("500 Oops", [("Content-Type", "text/plain")], sys.exc_info())
        yield b"never"
    return gen()


def lazy_status_app(environ, start_response):
    def gen():
        start_response("201 Created", [("Content-Type", "text/plain"), ("X-Lazy", "yes")])
        yield b"made "
        yield b""
        yield b"lazily"
    return gen()


class ClosingIterable:
    def __init__(self, chunks):
        self.chunks = chunks

    def __iter__(self):
        for c in self.chunks:
            yield c

    def close(self):
        CLOSED["count"] += 1


def closing_app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return ClosingIterable([b"a", b"b"])


def closing_raises_app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])

    class Bad(ClosingIterable):
        def __iter__(self):
            yield b"x"
            raise RuntimeError("mid-body failure")
    return Bad([])


def closed_count_app(environ, start_response):
    return _json(start_response, {"closed": CLOSED["count"], "after": AFTER["count"],
                                  "pid": os.getpid()})


AFTER = {"count": 0}


def long_gen_app(environ, start_response):
    """Yields past its Content-Length; the code after the last yield must still run."""
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])

    def gen():
        yield b"123"
        yield b"45"
        yield b"678"
        AFTER["count"] += 1
    return gen()


def file_app(environ, start_response):
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static.txt")
    f = open(path, "rb")
    size = os.path.getsize(path)
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(size))])
    return environ["wsgi.file_wrapper"](f, 4096)


def short_app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "100")])
    return [b"only twenty bytes..."]


def long_app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])
    return [b"12345", b"6789"]


def stream_app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])

    def gen():
        for i in range(5):
            yield b"chunk%d;" % i
    return gen()


def raise_app(environ, start_response):
    raise RuntimeError("deliberate failure for the test")


def sleep_app(environ, start_response):
    ms = int(environ.get("QUERY_STRING") or "100")
    time.sleep(ms / 1000.0)
    return _json(start_response, {"slept_ms": ms, "pid": os.getpid()})


def pid_app(environ, start_response):
    return _json(start_response, {"pid": os.getpid()})


def informational_app(environ, start_response):
    # A 1xx cannot be a final status: the server must answer 500 (and say so).
    start_response("103 Early Hints", [("Link", "</style.css>; rel=preload")])
    return [b""]


def headers_app(environ, start_response):
    # Echoes X-Echo as a response header (for the access log's response header fields).
    body = b"headers"
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body))),
                              ("X-Echo", environ.get("HTTP_X_ECHO", "none"))])
    return [body]


ROUTES = {
    "/environ": environ_app,
    "/input": input_app,
    "/write": write_app,
    "/exc_info": exc_info_app,
    "/exc_info_late": exc_info_late_app,
    "/lazy": lazy_status_app,
    "/closing": closing_app,
    "/closing_raises": closing_raises_app,
    "/closed": closed_count_app,
    "/file": file_app,
    "/short": short_app,
    "/long": long_app,
    "/long_gen": long_gen_app,
    "/stream": stream_app,
    "/raise": raise_app,
    "/sleep": sleep_app,
    "/pid": pid_app,
    "/informational": informational_app,
    "/headers": headers_app,
}
VALIDATED = {path: validator(app) for path, app in ROUTES.items()}
# These break the protocol on purpose (validator would reject the app, not the server).
UNVALIDATED = {"/short", "/long", "/raise", "/exc_info_late", "/closing_raises", "/informational",
               "/headers"}


def application(environ, start_response):
    path = environ["PATH_INFO"]
    if path in UNVALIDATED:
        return ROUTES[path](environ, start_response)
    app = VALIDATED.get(path)
    if app is None:
        if path.startswith("/environ"):
            return VALIDATED["/environ"](environ, start_response)
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"no such route"]
    return app(environ, start_response)


import threading

_CONC = {"now": 0, "max": 0}
_CONC_LOCK = threading.Lock()


def track_app(environ, start_response):
    with _CONC_LOCK:
        _CONC["now"] += 1
        _CONC["max"] = max(_CONC["max"], _CONC["now"])
    time.sleep(0.5)
    with _CONC_LOCK:
        _CONC["now"] -= 1
    return _json(start_response, {"multithread": environ["wsgi.multithread"]})


def max_concurrency_app(environ, start_response):
    return _json(start_response, {"max": _CONC["max"]})


def big_app(environ, start_response):
    n = int(environ.get("QUERY_STRING") or "0")
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    return [b"x" * n, b"y" * 10]


def big_gen_app(environ, start_response):
    n = int(environ.get("QUERY_STRING") or "0")
    start_response("200 OK", [("Content-Type", "application/octet-stream")])

    def gen():
        yield b"z" * n
    return gen()


ROUTES["/big"] = big_app
ROUTES["/big_gen"] = big_gen_app
VALIDATED["/big"] = validator(big_app)
VALIDATED["/big_gen"] = validator(big_gen_app)
ROUTES["/track"] = track_app
ROUTES["/maxconc"] = max_concurrency_app
VALIDATED["/track"] = validator(track_app)
VALIDATED["/maxconc"] = validator(max_concurrency_app)


def digest_app(environ, start_response):
    """Reads wsgi.input in 1 MiB pieces to its end: the length and CRC-32 of what it read,
    and how the body reached the worker (a large upload is a file the master passed on)."""
    import zlib
    inp = environ["wsgi.input"]
    n, crc = 0, 0
    while True:
        piece = inp.read(1 << 20)
        if not piece:
            break
        n += len(piece)
        crc = zlib.crc32(piece, crc)
    return _json(start_response, {"len": n, "crc32": crc})


ROUTES["/digest"] = digest_app
VALIDATED["/digest"] = validator(digest_app)
