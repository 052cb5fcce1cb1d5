#!/usr/bin/env python3
"""Builds the wsgiscale wheels, one per CPython, and checks them.

    wheels.py build --out dist 3.9 3.10 3.11 3.12 3.13
    wheels.py check dist/*.whl
    wheels.py interpreter 3.12        # prints the path of that CPython
    wheels.py unpack --out DIR --start BIN dist/*.whl   # the inject image's folder

Every wheel is built by maturin with zig as the linker (``--zig``) against glibc 2.28
(``manylinux_2_28``: RHEL 8, Debian bookworm and everything newer), whatever the build
machine's glibc, and then checked with ``auditwheel show``: the check fails unless auditwheel
reports a manylinux tag no newer than 2_28 and the wheel holds the extension for its CPython.
"""

import argparse
import glob
import os
import re
import shutil
import subprocess
import sys
import zipfile

MANYLINUX = "manylinux_2_28"
MAX_GLIBC = (2, 28)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def interpreter(version):
    """The CPython `version` (3.X): python3.X on PATH, else pyenv's newest 3.X."""
    found = shutil.which("python" + version)
    if found and _version_of(found) == version:
        return found
    root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    candidates = sorted(
        glob.glob(os.path.join(root, "versions", version + ".*", "bin", "python" + version)),
        key=lambda p: [int(x) for x in re.findall(r"\d+", p.split("/versions/")[1].split("/")[0])],
    )
    for path in reversed(candidates):
        if _version_of(path) == version:
            return path
    raise SystemExit("wheels.py: no CPython %s found (python%s on PATH or under %s/versions)" % (version, version, root))


def _version_of(python):
    out = subprocess.run([python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"], capture_output=True, text=True)
    return out.stdout.strip() if out.returncode == 0 else None


def build(out, versions):
    os.makedirs(out, exist_ok=True)
    for v in versions:
        python = interpreter(v)
        print("wheels.py: building for CPython %s (%s)" % (v, python), flush=True)
        subprocess.run(
            [
                "maturin", "build", "--release", "--locked", "--zig",
                "--compatibility", MANYLINUX,
                "--interpreter", python,
                "--out", out,
            ],
            cwd=ROOT,
            check=True,
        )
    version = cargo_version()
    check([os.path.join(out, "wsgiscale-%s-cp%s-cp%s-%s_x86_64.whl" % (version, v.replace(".", ""), v.replace(".", ""), MANYLINUX)) for v in versions])


def check(wheels):
    if not wheels:
        raise SystemExit("wheels.py: no wheel to check (run make wheel)")
    failed = 0
    for whl in wheels:
        name = os.path.basename(whl)
        m = re.match(r"wsgiscale-[^-]+-cp(\d)(\d+)-cp\d+-(.+)\.whl$", name)
        if not m:
            print("FAIL %s: not a CPython wheel name" % name)
            failed += 1
            continue
        tag = "cpython-%s%s-x86_64-linux-gnu" % (m.group(1), m.group(2))
        with zipfile.ZipFile(whl) as z:
            names = z.namelist()
        ext = [n for n in names if n.startswith("wsgiscale/_wsgiscale.") and n.endswith(".so")]
        problems = []
        if ext != ["wsgiscale/_wsgiscale.%s.so" % tag]:
            problems.append("extension %s, expected %s" % (ext, tag))
        for need in ("wsgiscale/__init__.py", "wsgiscale/__main__.py"):
            if need not in names:
                problems.append("no " + need)
        show = subprocess.run(["auditwheel", "show", whl], capture_output=True, text=True)
        text = " ".join(show.stdout.split())
        tags = re.findall(r'consistent with the following platform tag: "manylinux_(\d+)_(\d+)_x86_64"', text)
        if show.returncode != 0 or not tags:
            problems.append("auditwheel show: %s" % (text or show.stderr.strip()))
        elif (int(tags[0][0]), int(tags[0][1])) > MAX_GLIBC:
            problems.append("auditwheel reports manylinux_%s_%s, newer than %s" % (tags[0][0], tags[0][1], MANYLINUX))
        if problems:
            failed += 1
            print("FAIL %s: %s" % (name, "; ".join(problems)))
        else:
            print("ok   %s: auditwheel: manylinux_%s_%s_x86_64" % (name, tags[0][0], tags[0][1]))
    if failed:
        raise SystemExit(1)


def cargo_version():
    text = open(os.path.join(ROOT, "Cargo.toml")).read()
    return re.search(r'\[workspace\.package\][^\[]*?\nversion = "([^"]+)"', text).group(1)


def unpack(out, start, wheels):
    """The folder the inject image copies into pods: DIR/python/wsgiscale holds the Python
    files once and the extension of every CPython (each named by its ABI tag, so each CPython
    imports its own), DIR/bin/wsgiscale-start the static start command. Only wheels of this
    checkout's version are used."""
    version = cargo_version()
    wheels = [w for w in wheels if os.path.basename(w).startswith("wsgiscale-%s-" % version)]
    if not wheels:
        raise SystemExit("wheels.py: no wheel of wsgiscale %s to unpack (run make wheel)" % version)
    pkg = os.path.join(out, "python")
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(os.path.join(out, "bin"))
    for whl in wheels:
        with zipfile.ZipFile(whl) as z:
            for name in z.namelist():
                if name.startswith("wsgiscale/"):
                    z.extract(name, pkg)
    shutil.copy2(start, os.path.join(out, "bin", "wsgiscale-start"))
    exts = sorted(n for n in os.listdir(os.path.join(pkg, "wsgiscale")) if n.endswith(".so"))
    print("wheels.py: %s holds %s" % (out, ", ".join(exts)))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build")
    b.add_argument("--out", default=os.path.join(ROOT, "dist"))
    b.add_argument("versions", nargs="+")
    c = sub.add_parser("check")
    c.add_argument("wheels", nargs="*")
    u = sub.add_parser("unpack")
    u.add_argument("--out", required=True)
    u.add_argument("--start", required=True)
    u.add_argument("wheels", nargs="+")
    i = sub.add_parser("interpreter")
    i.add_argument("version")
    a = p.parse_args()
    if a.cmd == "build":
        build(a.out, a.versions)
    elif a.cmd == "check":
        check(a.wheels)
    elif a.cmd == "unpack":
        unpack(a.out, a.start, a.wheels)
    else:
        print(interpreter(a.version))


if __name__ == "__main__":
    main()
