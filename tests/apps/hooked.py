"""An app and gunicorn-style server hooks that record where and when they ran.

Each hook appends one JSON line to $HOOKS_DIR/events. $HOOKS_RAISE names hooks that raise
(comma-separated); `name:once` raises only the first time that hook runs anywhere (a marker
file in $HOOKS_DIR says it did).
"""
import json
import os
import time

DIR = os.environ.get("HOOKS_DIR", "")
RAISE = [r for r in os.environ.get("HOOKS_RAISE", "").split(",") if r]


def _record(hook, **fields):
    line = json.dumps(dict(hook=hook, pid=os.getpid(), **fields)) + "\n"
    fd = os.open(os.path.join(DIR, "events"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)
    for r in RAISE:
        name, _, mode = r.partition(":")
        if name != hook:
            continue
        if mode == "once":
            try:
                os.close(os.open(os.path.join(DIR, "raised-" + hook), os.O_CREAT | os.O_EXCL))
            except FileExistsError:
                continue
        raise RuntimeError(f"the {hook} hook failed on purpose")


def post_load(server):
    _record("post_load", master=server.pid, reloading=server.reloading)
    server.log.info("post_load ran in the fork server")


def on_reload(server):
    _record("on_reload", master=server.pid)


def post_fork(server, worker):
    _record("post_fork", master=server.pid, worker=worker.id, wsgi=worker.wsgi is not None)


def post_worker_init(worker):
    _record("post_worker_init", worker=worker.id, wsgi=callable(worker.wsgi))


def worker_exit(server, worker):
    _record("worker_exit", worker=worker.id, alive=worker.alive)


def pre_request(worker, req):
    _record("pre_request", worker=worker.id, method=req.method, uri=req.uri)


def post_request(worker, req, environ, resp):
    _record("post_request", worker=worker.id, uri=req.uri, status=resp.status_code,
            path=environ["PATH_INFO"])


def needs_five(a, b, c, d, e):
    """No hook has five arguments: refused when loaded."""


def application(environ, start_response):
    ms = int(environ.get("QUERY_STRING") or 0)
    if ms:
        time.sleep(ms / 1000)
    if environ["PATH_INFO"] == "/fail":
        raise ValueError("the app failed on purpose")
    body = json.dumps({"pid": os.getpid()}).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]
