"""Run fastpysgi with N worker processes, with a supervisor that stops them on SIGTERM.

fastpysgi's own `workers=N` forks N processes that each bind the port (SO_REUSEPORT), and its
parent only waits: a SIGTERM to it leaves the workers running. This launcher forks the same
way (each worker binds and runs its libuv loop), forwards SIGTERM/SIGINT to them, and respawns
one that dies (`_launch.supervise`, shared with bjoern_launch.py).

    python fastpysgi_launch.py --bind 127.0.0.1:8000 --workers 2 [--no-preload] --chdir DIR MOD:APP
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
    ap.add_argument("app")
    a = ap.parse_args()
    enter(a.chdir)
    import fastpysgi

    host, _, port = a.bind.rpartition(":")
    app = None if a.no_preload else load(a.app)
    print(f"fastpysgi launcher: http://{a.bind} with {a.workers} workers "
          f"({'no ' if a.no_preload else ''}preload)", file=sys.stderr, flush=True)

    def run_child():
        server = fastpysgi.server
        server.init(app if app is not None else load(a.app), host, int(port), 0, 1)
        server.run()

    supervise(a.workers, run_child, "fastpysgi")


if __name__ == "__main__":
    main()
