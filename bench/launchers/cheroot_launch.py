"""Run cheroot (CherryPy's WSGI server): one process, its default thread pool.

cheroot is a threaded single-process server with no process model of its own, so it runs as
one process here (the report notes it). Its listen backlog (request_queue_size) defaults to 5,
which drops connections under c64; it is raised to 1024 like the other servers' backlogs.

    python cheroot_launch.py --bind 127.0.0.1:8000 [--threads N] --chdir DIR MOD:APP
"""
import argparse
import os
import signal
import sys

from _launch import enter, load


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bind", default="127.0.0.1:8000")
    ap.add_argument("--threads", type=int, default=None, help="default: cheroot's own (10)")
    ap.add_argument("--backlog", type=int, default=1024)
    ap.add_argument("--chdir")
    ap.add_argument("app")
    a = ap.parse_args()
    enter(a.chdir)
    from cheroot import wsgi

    app = load(a.app)
    host, _, port = a.bind.rpartition(":")
    kw = {"request_queue_size": a.backlog}
    if a.threads:
        kw["numthreads"] = a.threads
    server = wsgi.Server((host, int(port)), app, **kw)

    def stop(signum, frame):
        # exit at once: server.stop() waits for every pool thread, which can take seconds
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    server.prepare()
    print(f"cheroot launcher: listening on http://{a.bind} "
          f"(threads={getattr(server.requests, 'min', '?')}, request_queue_size={a.backlog})",
          file=sys.stderr, flush=True)
    server.serve()


if __name__ == "__main__":
    main()
