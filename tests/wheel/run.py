#!/usr/bin/env python3
"""The built wheels, installed as a user installs them.

    run.py --dist dist 3.11                 # make test: the default Python
    run.py --dist dist 3.9 3.10 3.11 3.12 3.13   # make test-wheels

For each CPython: a fresh virtualenv, ``pip install`` of that CPython's wheel and Flask, then
- ``wsgiscale --version``, ``wsgiscale.__version__`` and Cargo's version agree;
- ``wsgiscale serve flask_app:app`` (the console script) answers a Flask request from the
  venv's Flask with no LD_LIBRARY_PATH, --venv or --pythonpath, climbs from 1 worker under
  load and exits 0 on SIGTERM;
- ``python -m wsgiscale serve`` does the same for one request and SIGTERM;
- ``wsgiscale serve --venv OTHER`` runs the app in that other environment only.
With ``--static``, also the same on every CPython here that has no shared libpython (Debian's
/usr/bin/python3.X is one) and whose version has a wheel.
"""

import argparse
import glob
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
APPS = os.path.join(ROOT, "tests", "apps")
FLASK = "flask==3.1.3"


def cargo_version():
    text = open(os.path.join(ROOT, "Cargo.toml")).read()
    return re.search(r'\[workspace\.package\][^\[]*?\nversion = "([^"]+)"', text).group(1)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url, timeout=10):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.read()


def wait_until(what, check, within=30):
    deadline = time.monotonic() + within
    last = None
    while time.monotonic() < deadline:
        try:
            v = check()
            if v:
                return v
        except OSError as e:
            last = e
        time.sleep(0.1)
    raise AssertionError("timed out waiting for %s (%s)" % (what, last))


class Server:
    def __init__(self, argv, env, ready="/json"):
        self.port, self.admin = free_port(), free_port()
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            argv + ["--bind", "127.0.0.1:%d" % self.port, "--admin-bind", "127.0.0.1:%d" % self.admin],
            cwd=APPS, env=env, stdout=self.log, stderr=subprocess.STDOUT,
        )
        wait_until("the server to answer", lambda: self.alive() and get(self.url(ready), 2)[0] == 200)

    def alive(self):
        if self.proc.poll() is not None:
            raise AssertionError("the server exited with %s:\n%s" % (self.proc.returncode, self.text()))
        return True

    def url(self, path):
        return "http://127.0.0.1:%d%s" % (self.port, path)

    def load(self):
        return json.loads(get("http://127.0.0.1:%d/load" % self.admin)[1])

    def text(self):
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError("no exit within 30 s of SIGTERM:\n" + self.text())
        if code != 0:
            raise AssertionError("exit status %s after SIGTERM:\n%s" % (code, self.text()))


def clean_env():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WSGISCALE_", "PYTHON", "VIRTUAL_ENV", "LD_LIBRARY_PATH"))}
    env["PATH"] = "/usr/local/bin:/usr/bin:/bin"
    return env


def make_venv(python, where):
    """A fresh virtualenv with the wheel and Flask. Interpreters without ensurepip (Debian's
    python3.X without python3.X-venv) get theirs from this script's pip (`pip --python`)."""
    made = subprocess.run([python, "-m", "venv", where], capture_output=True, text=True)
    if made.returncode != 0:
        shutil.rmtree(where, ignore_errors=True)
        subprocess.run([python, "-m", "venv", "--without-pip", where], check=True)
    vpy = os.path.join(where, "bin", "python")
    if os.path.exists(os.path.join(where, "bin", "pip")):
        return vpy, [vpy, "-m", "pip"]
    return vpy, [sys.executable, "-m", "pip", "--python", vpy]


NONROOT = ["setpriv", "--reuid=10001", "--regid=10001", "--clear-groups"]


def as_nonroot(vpy, env):
    """The prefix that runs a command as uid 10001, as the app image does, when this runs as
    root and that user can use the venv (not when the base interpreter lives under /root)."""
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        return []
    # As the server does: the venv's interpreter starts itself again for the fork server.
    probe = "import subprocess, sys; subprocess.run([sys.executable, '-c', 'import wsgiscale, flask'], check=True)"
    ok = subprocess.run(NONROOT + [vpy, "-c", probe], env=env, capture_output=True)
    return NONROOT if ok.returncode == 0 else []


def one(python, wheel, label):
    tmp = tempfile.mkdtemp(prefix="wsgiscale-wheel-")
    os.chmod(tmp, 0o755)
    try:
        vpy, pip = make_venv(python, os.path.join(tmp, "venv"))
        # As examples/Dockerfile installs it: pip picks the wheel for this interpreter and
        # platform from the folder, and finds nothing on an index.
        quiet = ["--quiet", "--disable-pip-version-check"]
        subprocess.run(pip + ["install"] + quiet + ["--no-index", "--find-links", os.path.dirname(os.path.abspath(wheel)), "wsgiscale==%s" % cargo_version()], check=True)
        installed = subprocess.run([vpy, "-c", "import wsgiscale._wsgiscale as m; print(m.__file__)"], capture_output=True, text=True, check=True).stdout.strip()
        assert os.path.basename(installed) in {n.split("/")[-1] for n in zipfile.ZipFile(wheel).namelist()}, (installed, wheel)
        subprocess.run(pip + ["install"] + quiet + [FLASK], check=True)
        env = clean_env()
        script = os.path.join(tmp, "venv", "bin", "wsgiscale")
        want = cargo_version()
        shown = subprocess.run([script, "--version"], capture_output=True, text=True, env=env, check=True).stdout.split()
        module = subprocess.run([vpy, "-c", "import wsgiscale; print(wsgiscale.__version__)"], capture_output=True, text=True, env=env, check=True).stdout.strip()
        assert shown == ["wsgiscale", want] and module == want, (shown, module, want)

        # The console script: serve, scale, SIGTERM (as uid 10001 where it can).
        user = as_nonroot(vpy, env)
        s = Server(user + [script, "serve", "--workers", "1:4", "--cheaper-algo", "spare", "--cheaper-overload", "1", "flask_app:app"], env)
        status, body = get(s.url("/json"))
        assert status == 200 and json.loads(body)["message"] == "hello", body
        assert s.load()["workers"]["total"] == 1, s.load()
        stop = threading.Event()
        failures = []

        def client():
            while not stop.is_set():
                try:
                    if get(s.url("/sleep?ms=50"))[0] != 200:
                        failures.append("status")
                except OSError as e:
                    failures.append(str(e))

        clients = [threading.Thread(target=client) for _ in range(8)]
        for c in clients:
            c.start()
        try:
            wait_until("more workers under load", lambda: s.load()["workers"]["total"] >= 3, within=30)
        finally:
            stop.set()
            for c in clients:
                c.join()
        assert not failures, failures[:5]
        s.stop()
        log = s.text()
        assert "fork server ready" in log, log

        # python -m wsgiscale.
        s = Server([vpy, "-m", "wsgiscale", "serve", "--workers", "2", "flask_app:app"], env)
        assert get(s.url("/json"))[0] == 200
        s.stop()

        # --venv of another environment (what spec.venv renders): the app runs in that one,
        # and sees neither this venv's packages nor the base interpreter's.
        other = os.path.join(tmp, "other")
        subprocess.run([python, "-m", "venv", "--without-pip", other], check=True)
        s = Server([script, "serve", "--workers", "1", "--venv", other, "envinfo:application"], env, ready="/")
        info = json.loads(get(s.url("/"))[1])
        s.stop()
        assert os.path.realpath(info["prefix"]) == os.path.realpath(other), info
        assert info["flask"] is None and not info["base_site_visible"], info
        who = "as uid 10001" if user else "as %s" % ("root" if os.geteuid() == 0 else "this user")
        print("ok   %s: %s, wheel %s: served Flask, scaled 1 -> >=3 workers, exit 0 on SIGTERM (script %s, and -m), --venv of another env" % (label, python, os.path.basename(wheel), who), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def wheel_for(dist, version):
    """The manylinux wheel of this machine's architecture for CPython `version` (dist/ may
    also hold musllinux and other architectures' wheels)."""
    tag = "cp" + version.replace(".", "")
    pattern = "wsgiscale-%s-%s-%s-manylinux_*_%s.whl" % (cargo_version(), tag, tag, os.uname().machine)
    found = sorted(glob.glob(os.path.join(dist, pattern)))
    if not found:
        raise SystemExit("run.py: no wheel for CPython %s in %s (run make wheel)" % (version, dist))
    return found[-1]


def static_pythons():
    """CPythons here with no shared libpython (their executable holds the interpreter)."""
    found = []
    for path in sorted(glob.glob("/usr/bin/python3.[0-9]*")):
        if not re.match(r".*/python3\.\d+$", path):
            continue
        probe = "import sys; print('%d.%d' % sys.version_info[:2], any('libpython' in l for l in open('/proc/self/maps')))"
        out = subprocess.run([path, "-c", probe], capture_output=True, text=True)
        parts = out.stdout.split()
        if out.returncode == 0 and len(parts) == 2 and parts[1] == "False":
            found.append((path, parts[0]))
    return found


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dist", default=os.path.join(ROOT, "dist"))
    p.add_argument("--static", action="store_true", help="also every CPython here without a shared libpython")
    p.add_argument("versions", nargs="+")
    a = p.parse_args()
    sys.path.insert(0, os.path.join(ROOT, "packaging"))
    import wheels

    started = time.monotonic()
    for v in a.versions:
        one(wheels.interpreter(v), wheel_for(a.dist, v), "CPython %s" % v)
    if a.static:
        for path, v in static_pythons():
            if v in a.versions:
                one(path, wheel_for(a.dist, v), "CPython %s, static libpython" % v)
    print("run.py: %d CPython(s) in %.0f s" % (len(a.versions), time.monotonic() - started))


if __name__ == "__main__":
    main()
