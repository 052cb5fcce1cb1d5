"""The example app served by `make run`: standard library only.

GET /            a greeting
GET /work?ms=50  sleeps that long (an I/O-bound request), so a load generator can make the
                 worker count grow: try `wrk -c32 -d20s 'http://127.0.0.1:8000/work?ms=50'`
GET /cpu?n=20000 burns some CPU in pure Python
"""
import json
import os
import time
from urllib.parse import parse_qs


def application(environ, start_response):
    path = environ.get("PATH_INFO", "/")
    query = parse_qs(environ.get("QUERY_STRING", ""))
    if path == "/work":
        ms = int(query.get("ms", ["50"])[0])
        time.sleep(min(ms, 10_000) / 1000.0)
        body = {"slept_ms": ms, "pid": os.getpid()}
    elif path == "/cpu":
        n = int(query.get("n", ["20000"])[0])
        body = {"sum": sum(i * i for i in range(min(n, 10_000_000))), "pid": os.getpid()}
    else:
        body = {"hello": "wsgiscale", "pid": os.getpid()}
    data = json.dumps(body).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(data)))])
    return [data]
