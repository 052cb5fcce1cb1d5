"""The ceiling: calls per second of each app in a bare Python loop (no server at all).

The environ is built once (like a server's, with the usual CGI keys and wsgi.* entries) and
start_response is a no-op; each call's body is iterated and close() called when present.
Frameworks that store things in the environ (Flask, Django) get a fresh dict copy per call.
Prints one JSON object: {app: {"calls_per_s": best, "us_per_call": ..., "runs": [...]}}.

    bench/.venv/bin/python bench/ceiling.py [--seconds 1.0] [--repeat 5] [--apps hello,flask]
"""
import argparse
import io
import json
import os
import sys
import time

APPS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "apps")


def make_environ(path="/", method="GET", body=b""):
    return {
        "REQUEST_METHOD": method,
        "SCRIPT_NAME": "",
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "CONTENT_TYPE": "",
        "CONTENT_LENGTH": str(len(body)) if body else "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "REMOTE_PORT": "40000",
        "HTTP_HOST": "127.0.0.1:8000",
        "HTTP_USER_AGENT": "ceiling",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }


def _write(data):
    pass


def start_response(status, headers, exc_info=None):
    return _write


def rate(app, env, copy, seconds, batch):
    sr = start_response
    n = 0
    t0 = time.perf_counter()
    end = t0 + seconds
    while True:
        for _ in range(batch):
            e = env.copy() if copy else env
            it = app(e, sr)
            for _chunk in it:
                pass
            close = getattr(it, "close", None)
            if close is not None:
                close()
        n += batch
        t = time.perf_counter()
        if t >= end:
            return n / (t - t0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--apps", default="hello,hello_copy,json4k,cpu1ms,flask,django")
    a = ap.parse_args()
    os.chdir(APPS_DIR)
    sys.path.insert(0, APPS_DIR)
    import basic

    table = {
        "hello": (basic.hello, False, 1000),
        "hello_copy": (basic.hello, True, 1000),
        "json4k": (basic.json4k, False, 50),
        "cpu1ms": (basic.cpu1ms, False, 5),
    }
    wanted = a.apps.split(",")
    if "flask" in wanted:
        import flask_app
        table["flask"] = (flask_app.app, True, 200)
    if "django" in wanted:
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "djproj.settings")
        from djproj.wsgi import application
        table["django"] = (application, True, 200)
    out = {}
    for name in wanted:
        app, copy, batch = table[name]
        env = make_environ()
        rate(app, env, copy, 0.2, batch)  # warm up
        runs = [rate(app, env, copy, a.seconds, batch) for _ in range(a.repeat)]
        best = max(runs)
        out[name] = {"calls_per_s": best, "us_per_call": 1e6 / best, "runs": runs,
                     "copy_environ": copy}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
