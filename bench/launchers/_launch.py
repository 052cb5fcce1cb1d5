"""What the launchers share: entering the app directory, loading MODULE:CALLABLE, and
supervising forked workers."""
import importlib
import os
import signal
import sys
import time


def enter(chdir):
    """Work in chdir and import apps from it, as the servers' own --chdir options do."""
    if chdir:
        os.chdir(chdir)
        sys.path.insert(0, chdir)


def load(spec):
    """The object MODULE:CALLABLE names (CALLABLE may be dotted; default `application`)."""
    mod, _, attr = spec.partition(":")
    obj = importlib.import_module(mod)
    for part in (attr or "application").split("."):
        obj = getattr(obj, part)
    return obj


def supervise(workers, run_child, name):
    """Forks `workers` children that each call `run_child()` (then exit), forwards
    SIGTERM/SIGINT to them, respawns one that dies unless stopping, and returns once all
    have exited (SIGKILL for any left 3 s after the stop)."""
    children = set()
    stopping = False

    def spawn():
        pid = os.fork()
        if pid == 0:
            for s in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
                signal.signal(s, signal.SIG_DFL)
            try:
                run_child()
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
    for _ in range(workers):
        spawn()
    deadline = None
    while children:
        if deadline is not None and time.monotonic() > deadline:
            break
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        children.discard(pid)
        if stopping:
            if deadline is None:
                deadline = time.monotonic() + 3
            continue
        print(f"{name} launcher: worker {pid} exited ({status}), respawning",
              file=sys.stderr, flush=True)
        spawn()
    for pid in children:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
