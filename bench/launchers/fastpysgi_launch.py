"""Run fastpysgi with N worker processes, with a supervisor that stops them on SIGTERM.

fastpysgi's own `workers=N` forks N processes that each bind the port (SO_REUSEPORT), and its
parent only waits: a SIGTERM to it leaves the workers running. This launcher forks the same
way (each worker binds and runs its libuv loop), forwards SIGTERM/SIGINT to them, and respawns
one that dies, like bjoern_launch.py.

    python fastpysgi_launch.py --bind 127.0.0.1:8000 --workers 2 [--no-preload] --chdir DIR MOD:APP
"""
import argparse
import os
import signal
import sys
import time

from _launch import enter, load


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

    children = set()
    stopping = False

    def spawn():
        pid = os.fork()
        if pid == 0:
            for s in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
                signal.signal(s, signal.SIG_DFL)
            try:
                wsgi = app if app is not None else load(a.app)
                server = fastpysgi.server
                server.loglevel = 0
                server.init(wsgi, host, int(port), 0, 1)
                server.run()
            finally:
                os._exit(0)
        children.add(pid)

    def stop(signum, frame):
        nonlocal stopping
        stopping = True
        for pid in list(children):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for _ in range(a.workers):
        spawn()
    while children:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        children.discard(pid)
        if stopping:
            continue
        print(f"fastpysgi launcher: worker {pid} exited ({status}), respawning",
              file=sys.stderr, flush=True)
        time.sleep(0.05)
        spawn()


if __name__ == "__main__":
    main()
