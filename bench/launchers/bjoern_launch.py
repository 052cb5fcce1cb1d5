"""Run bjoern with N worker processes forked on one listening socket, with a supervisor.

bjoern itself is a single-process, single-threaded server; its documented way to use several
cores is to bind once and fork. This launcher does that, and respawns a worker that dies
(like gunicorn's arbiter does), so the new-worker timing works too.

    python bjoern_launch.py --bind 127.0.0.1:8000 --workers 2 [--no-preload] --chdir DIR MOD:APP

With preload (the default) the app is imported in the parent before forking; with
--no-preload each worker imports it after the fork.
"""
import argparse
import sys

from _launch import enter, load, supervise


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bind", default="127.0.0.1:8000")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--chdir")
    ap.add_argument("--no-preload", action="store_true")
    ap.add_argument("--backlog", type=int, default=1024)
    ap.add_argument("app")
    a = ap.parse_args()
    enter(a.chdir)
    import bjoern

    host, _, port = a.bind.rpartition(":")
    app = None if a.no_preload else load(a.app)
    sock = bjoern.bind_and_listen(host, int(port), listen_backlog=a.backlog)
    print(f"bjoern launcher: listening on http://{a.bind} with {a.workers} workers "
          f"({'no ' if a.no_preload else ''}preload)", file=sys.stderr, flush=True)

    def run_child():
        bjoern.server_run(sock, app if app is not None else load(a.app))

    supervise(a.workers, run_child, "bjoern")


if __name__ == "__main__":
    main()
