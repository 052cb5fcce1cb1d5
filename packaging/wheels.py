#!/usr/bin/env python3
"""Builds the wsgiscale wheels, one per CPython and platform, and checks them.

    wheels.py build --out dist 3.9 3.10 3.11 3.12 3.13
    wheels.py build --out dist --target aarch64-unknown-linux-gnu 3.12
    wheels.py build --out dist --target x86_64-unknown-linux-musl --compatibility musllinux_1_2 3.12
    wheels.py check dist/*.whl
    wheels.py interpreter 3.12        # prints the path of that CPython
    wheels.py unpack --out DIR --start BIN [--arch aarch64] dist/*.whl   # the inject image's folder

Every wheel is built by maturin with zig as the linker (``--zig``) against glibc 2.28
(``manylinux_2_28``: RHEL 8, Debian bookworm and everything newer) or musl 1.2
(``musllinux_1_2``: Alpine 3.13 and newer), whatever the build machine's libc, for x86_64 or
aarch64 (a cross build uses maturin's own sysconfig of that CPython), and then checked with
``auditwheel show``: the check fails unless auditwheel reports the wheel's platform tag or an
older one, and the wheel holds the extension for its CPython, libc and architecture.
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


TARGETS = {
    # rust target -> (architecture, libc)
    "x86_64-unknown-linux-gnu": ("x86_64", "gnu"),
    "aarch64-unknown-linux-gnu": ("aarch64", "gnu"),
    "x86_64-unknown-linux-musl": ("x86_64", "musl"),
    "aarch64-unknown-linux-musl": ("aarch64", "musl"),
}


def host_target():
    return "%s-unknown-linux-gnu" % os.uname().machine


def build(out, versions, target=None, compatibility=MANYLINUX):
    target = target or host_target()
    if target not in TARGETS:
        raise SystemExit("wheels.py: unknown target %s (one of %s)" % (target, ", ".join(TARGETS)))
    arch, libc = TARGETS[target]
    if (libc == "musl") != compatibility.startswith("musllinux"):
        raise SystemExit("wheels.py: %s wheels for target %s" % (compatibility, target))
    native = target == host_target()
    os.makedirs(out, exist_ok=True)
    built = []
    for v in versions:
        # A cross build names the interpreter; maturin brings its sysconfig for the target.
        python = interpreter(v) if native else "python" + v
        print("wheels.py: building for CPython %s, %s (%s)" % (v, target, python), flush=True)
        subprocess.run(
            [
                "maturin", "build", "--release", "--locked", "--zig",
                "--target", target,
                "--compatibility", compatibility,
                "--interpreter", python,
                "--out", out,
            ],
            cwd=ROOT,
            check=True,
        )
        tag = "cp" + v.replace(".", "")
        built.append(os.path.join(out, "wsgiscale-%s-%s-%s-%s_%s.whl" % (cargo_version(), tag, tag, compatibility, arch)))
    check(built)


WHEEL_NAME = re.compile(r"wsgiscale-[^-]+-cp(\d)(\d+)-cp\d+-((manylinux|musllinux)_(\d+)_(\d+)_(x86_64|aarch64))\.whl$")


def check(wheels):
    if not wheels:
        raise SystemExit("wheels.py: no wheel to check (run make wheel)")
    failed = 0
    for whl in wheels:
        name = os.path.basename(whl)
        m = WHEEL_NAME.match(name)
        if not m:
            print("FAIL %s: not a CPython manylinux or musllinux wheel name" % name)
            failed += 1
            continue
        problems = []
        if not os.path.exists(whl):
            print("FAIL %s: not built" % name)
            failed += 1
            continue
        family, arch = m.group(4), m.group(7)
        claimed = (int(m.group(5)), int(m.group(6)))
        python = (int(m.group(1)), int(m.group(2)))
        # CPython names musl in its extension suffix only from 3.11 (bpo-43112); a musl
        # CPython 3.9 or 3.10 (Alpine's, python:3.10-alpine) imports `...-linux-gnu.so`.
        libc = "musl" if family == "musllinux" and python >= (3, 11) else "gnu"
        tag = "cpython-%s%s-%s-linux-%s" % (m.group(1), m.group(2), arch, libc)
        with zipfile.ZipFile(whl) as z:
            names = z.namelist()
        ext = [n for n in names if n.startswith("wsgiscale/_wsgiscale.") and n.endswith(".so")]
        if ext != ["wsgiscale/_wsgiscale.%s.so" % tag]:
            problems.append("extension %s, expected %s" % (ext, tag))
        for need in ("wsgiscale/__init__.py", "wsgiscale/__main__.py"):
            if need not in names:
                problems.append("no " + need)
        if family == "musllinux" and host_libc() != "musl":
            # auditwheel judges a wheel by the libc of the machine it runs on: on glibc it
            # takes musl's libc.so for a foreign library. Here the extension's own ELF says
            # it needs musl's libc alone (maturin checked the musllinux policy as it built it).
            needed = elf_needed(whl, ext[0]) if ext else []
            if needed != ["libc.so"]:
                problems.append("the extension needs %s, not musl's libc.so alone" % needed)
            verdict = "needs libc.so only (auditwheel judges musl wheels on a musl machine)"
        else:
            show = subprocess.run(["auditwheel", "show", whl], capture_output=True, text=True)
            text = " ".join(show.stdout.split())
            tags = re.findall(r'consistent with the following platform tag: "%s_(\d+)_(\d+)_%s"' % (family, arch), text)
            verdict = tags and "auditwheel: %s_%s_%s_%s" % (family, tags[0][0], tags[0][1], arch)
            if show.returncode != 0 or not tags:
                problems.append("auditwheel show: %s" % (text or show.stderr.strip()))
            elif (int(tags[0][0]), int(tags[0][1])) > claimed:
                problems.append("auditwheel reports %s_%s_%s, newer than the wheel's tag %s" % (family, tags[0][0], tags[0][1], m.group(3)))
        if problems:
            failed += 1
            print("FAIL %s: %s" % (name, "; ".join(problems)))
        else:
            print("ok   %s: %s" % (name, verdict))
    if failed:
        raise SystemExit(1)


def host_libc():
    return "musl" if os.path.exists("/lib/ld-musl-%s.so.1" % os.uname().machine) else "gnu"


def elf_needed(whl, member):
    """The DT_NEEDED entries of `member` of the wheel (pyelftools, which auditwheel uses)."""
    import io

    from elftools.elf.dynamic import DynamicSection
    from elftools.elf.elffile import ELFFile

    with zipfile.ZipFile(whl) as z:
        elf = ELFFile(io.BytesIO(z.read(member)))
        needed = []
        for section in elf.iter_sections():
            if isinstance(section, DynamicSection):
                needed += [t.needed for t in section.iter_tags() if t.entry.d_tag == "DT_NEEDED"]
        return sorted(needed)


def cargo_version():
    text = open(os.path.join(ROOT, "Cargo.toml")).read()
    return re.search(r'\[workspace\.package\][^\[]*?\nversion = "([^"]+)"', text).group(1)


def unpack(out, start, wheels, arch=None):
    """The folder the inject image copies into pods: DIR/python/wsgiscale holds the Python
    files once and the extension of every CPython (each named by its ABI tag, so each CPython
    imports its own), DIR/bin/wsgiscale-start the static start command. Only the manylinux
    wheels of this checkout's version for `arch` (default: this machine's) are used: the
    injected package serves glibc images of one architecture."""
    version = cargo_version()
    arch = arch or os.uname().machine
    mine = []
    for w in wheels:
        m = WHEEL_NAME.match(os.path.basename(w))
        if m and os.path.basename(w).startswith("wsgiscale-%s-" % version) and m.group(4) == "manylinux" and m.group(7) == arch:
            mine.append(w)
    if not mine:
        raise SystemExit("wheels.py: no manylinux %s wheel of wsgiscale %s to unpack (run make wheel)" % (arch, version))
    pkg = os.path.join(out, "python")
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(os.path.join(out, "bin"))
    for whl in mine:
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
    b.add_argument("--target", help="a Rust target (default: this machine's glibc one)")
    b.add_argument("--compatibility", default=MANYLINUX, help="manylinux_2_28 or musllinux_1_2")
    b.add_argument("versions", nargs="+")
    c = sub.add_parser("check")
    c.add_argument("wheels", nargs="*")
    u = sub.add_parser("unpack")
    u.add_argument("--out", required=True)
    u.add_argument("--start", required=True)
    u.add_argument("--arch", help="x86_64 or aarch64 (default: this machine's)")
    u.add_argument("wheels", nargs="+")
    i = sub.add_parser("interpreter")
    i.add_argument("version")
    a = p.parse_args()
    if a.cmd == "build":
        build(a.out, a.versions, a.target, a.compatibility)
    elif a.cmd == "check":
        check(a.wheels)
    elif a.cmd == "unpack":
        unpack(a.out, a.start, a.wheels, a.arch)
    else:
        print(interpreter(a.version))


if __name__ == "__main__":
    main()
