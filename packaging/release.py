#!/usr/bin/env python3
"""The release's build steps and their checks, shared by `make release-dry-run` (here, into
dist/) and .github/workflows/release.yml (on a tag).

    release.py version [--tag v0.1.0]     # Cargo, the chart and the tag agree; prints it
    release.py expect DIST --pythons 3.9 ... --platforms manylinux_2_28_x86_64 ...
                                          # exactly the wheels (and the sdist) a release has
    release.py sdist-check DIST           # the sdist holds what a build from it needs
    release.py checksums DIST             # DIST/SHA256SUMS of every artifact, then verified
    release.py dockerfiles                # what the Dockerfiles promise, read from them
    release.py dry-run                    # every step of the release here, into dist/

The dry run does what the workflow does, except what needs the forge: pushing images and the
chart, publishing to PyPI, keyless signing and attestations (they need the workflow's OIDC
identity). Images are not built (no Docker daemon needed): their build steps are proven as
`make test` proves them, by running the same commands outside Docker (the operator image's
cargo build of both its binaries, wsgiscale-operator and wsgiscale-activator, for amd64 and,
cross-compiled with zig, arm64; the inject image's start command and
package folder; the app image's pip install from the wheels, in a fresh venv, serving a
request).
"""

import argparse
import glob
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_28_aarch64", "musllinux_1_2_x86_64", "musllinux_1_2_aarch64"]
PYTHONS = ["3.9", "3.10", "3.11", "3.12", "3.13"]
# platform tag -> (rust target, maturin --compatibility)
TARGETS = {
    "manylinux_2_28_x86_64": ("x86_64-unknown-linux-gnu", "manylinux_2_28"),
    "manylinux_2_28_aarch64": ("aarch64-unknown-linux-gnu", "manylinux_2_28"),
    "musllinux_1_2_x86_64": ("x86_64-unknown-linux-musl", "musllinux_1_2"),
    "musllinux_1_2_aarch64": ("aarch64-unknown-linux-musl", "musllinux_1_2"),
}
# The binaries in the operator image (/usr/local/bin/NAME), each the crate of that name.
OPERATOR_IMAGE_CRATES = ["wsgiscale-operator", "wsgiscale-activator"]


def read(rel):
    with open(os.path.join(ROOT, rel)) as f:
        return f.read()


def version(tag=None):
    cargo = re.search(r'\[workspace\.package\][^\[]*?\nversion = "([^"]+)"', read("Cargo.toml")).group(1)
    chart = read("charts/wsgiscale/Chart.yaml")
    problems = []
    for key in ("version", "appVersion"):
        m = re.search(r'^%s: "?([^"\n]+)"?$' % key, chart, re.M)
        if not m or m.group(1) != cargo:
            problems.append("charts/wsgiscale/Chart.yaml %s is %s, Cargo.toml's version %s" % (key, m and m.group(1), cargo))
    if tag is not None and tag != "v" + cargo:
        problems.append("the tag %s is not v%s (Cargo.toml's version)" % (tag, cargo))
    if problems:
        raise SystemExit("release.py: " + "; ".join(problems))
    return cargo


def expect(dist, plan):
    """Exactly the wheels of `plan` (platform tag -> CPythons) and one sdist, of this
    version, in `dist`."""
    v = version()
    want = {"wsgiscale-%s-cp%s-cp%s-%s.whl" % (v, p.replace(".", ""), p.replace(".", ""), plat) for plat, pys in plan.items() for p in pys}
    want.add("wsgiscale-%s.tar.gz" % v)
    have = {os.path.basename(f) for f in glob.glob(os.path.join(dist, "wsgiscale-*.whl")) + glob.glob(os.path.join(dist, "wsgiscale-*.tar.gz"))}
    missing, extra = sorted(want - have), sorted(have - want)
    if missing or extra:
        raise SystemExit("release.py: %s: missing %s, unexpected %s" % (dist, missing, extra))
    shown = "; ".join("%s: %s" % (plat, " ".join(pys)) for plat, pys in plan.items())
    print("ok   %d wheels (%s) and the sdist, version %s" % (len(want) - 1, shown, v))


def sdist_check(dist):
    """The sdist holds the workspace a build needs (pip builds it where no wheel fits)."""
    v = version()
    path = os.path.join(dist, "wsgiscale-%s.tar.gz" % v)
    with tarfile.open(path) as t:
        names = {n.split("/", 1)[1] for n in t.getnames() if "/" in n}
    need = ["pyproject.toml", "Cargo.toml", "Cargo.lock", "sidecar/py/Cargo.toml", "sidecar/Cargo.toml",
            "core/Cargo.toml", "net/Cargo.toml", "python/wsgiscale/__init__.py", "PKG-INFO", "README.md"]
    missing = [n for n in need if n not in names]
    if missing:
        raise SystemExit("release.py: %s lacks %s" % (path, missing))
    print("ok   %s holds the workspace a build needs (%d files)" % (os.path.basename(path), len(names)))
    return path


def lock_packages(path):
    """(name, version) of every package in a Cargo.lock."""
    with open(path) as f:
        return set(re.findall(r'\[\[package\]\]\nname = "([^"]+)"\nversion = "([^"]+)"', f.read()))


def checksums(dist):
    files = sorted(
        f for f in os.listdir(dist)
        if os.path.isfile(os.path.join(dist, f)) and f != "SHA256SUMS"
        and re.search(r"\.(whl|tar\.gz|tgz|cdx\.json)$", f)
    )
    lines = []
    for f in files:
        with open(os.path.join(dist, f), "rb") as fh:
            lines.append("%s  %s\n" % (hashlib.sha256(fh.read()).hexdigest(), f))
    with open(os.path.join(dist, "SHA256SUMS"), "w") as out:
        out.writelines(lines)
    subprocess.run(["sha256sum", "--check", "--quiet", "--strict", "SHA256SUMS"], cwd=dist, check=True)
    print("ok   SHA256SUMS of %d artifacts, verified with sha256sum --check" % len(files))


def dockerfiles():
    """What the Dockerfiles promise, read from them: the app image installs wsgiscale only
    from where WSGISCALE_FROM says (never an index behind the wheels' back), the operator and
    inject images cross-compile for their platform."""
    app = read("examples/Dockerfile")
    wheels_branch = re.search(r"wheels\)\s*pip install([^\n]*)", app)
    problems = []
    if not wheels_branch or "--no-index" not in wheels_branch.group(1) or "--find-links /wheels" not in wheels_branch.group(1):
        problems.append("examples/Dockerfile: the wheels branch must pip install --no-index --find-links /wheels")
    if "ARG WSGISCALE_FROM=wheels" not in app:
        problems.append("examples/Dockerfile: WSGISCALE_FROM must default to wheels")
    for rel in ("operator/Dockerfile", "packaging/inject.Dockerfile"):
        text = read(rel)
        if "--platform=$BUILDPLATFORM" not in text or '--target "$(cat /rust-target)"' not in text:
            problems.append("%s: the build stage must cross-compile for TARGETARCH" % rel)
    # The operator image holds both binaries (the chart runs the activator from it by path).
    operator = read("operator/Dockerfile")
    final = operator.rsplit("\nFROM ", 1)[-1]
    for binary in OPERATOR_IMAGE_CRATES:
        if "-p %s" % binary not in operator:
            problems.append("operator/Dockerfile: the build stage must build -p %s" % binary)
        if not re.search(r"^COPY --from=build [^\n]*/%s\b[^\n]* /usr/local/bin/" % re.escape(binary), final, re.M):
            problems.append("operator/Dockerfile: the image must ship /usr/local/bin/%s" % binary)
    if problems:
        raise SystemExit("release.py: " + "; ".join(problems))
    print("ok   Dockerfiles: the app image's wheels come only from the wheels context; operator and inject images cross-compile;"
          " the operator image ships %s" % " and ".join(OPERATOR_IMAGE_CRATES))


def run(cmd, **kw):
    print("+ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, **kw)


def rust_targets():
    """The Rust standard libraries the cross builds link against, added with rustup where this
    toolchain lacks them (a fresh machine has only the host's)."""
    wanted = sorted({target for target, _ in TARGETS.values()})
    if shutil.which("rustup") is None:
        print("skip rustup target add: rustup is not on PATH; the toolchain must have %s" % ", ".join(wanted))
        return
    have = subprocess.run(["rustup", "target", "list", "--installed"], capture_output=True, text=True, check=True)
    missing = [t for t in wanted if t not in have.stdout.split()]
    if missing:
        run(["rustup", "target", "add"] + missing)


def dry_run(dist, pythons, cross_pythons, helm):
    v = version()
    py = sys.executable
    rust_targets()
    os.makedirs(dist, exist_ok=True)
    for f in glob.glob(os.path.join(dist, "wsgiscale*")) + glob.glob(os.path.join(dist, "SHA256SUMS")):
        if os.path.isfile(f):
            os.remove(f)
    # 1. The wheels of every platform, each checked by auditwheel, and the sdist.
    native = "manylinux_2_28_%s" % os.uname().machine
    plan = {plat: (pythons if plat == native else cross_pythons) for plat in PLATFORMS}
    for plat, versions in plan.items():
        target, compat = TARGETS[plat]
        run([py, "packaging/wheels.py", "build", "--out", dist, "--target", target, "--compatibility", compat] + versions, cwd=ROOT)
    run(["maturin", "sdist", "--out", dist], cwd=ROOT)
    sdist = sdist_check(dist)
    # The sdist builds: a wheel from it alone (in its own folder; the build reuses target/).
    with tempfile.TemporaryDirectory(prefix="wsgiscale-sdist-") as tmp:
        with tarfile.open(sdist) as t:
            # The "data" filter (no links out, no devices) where this Python has it.
            if hasattr(tarfile, "data_filter"):
                t.extractall(tmp, filter="data")
            else:
                t.extractall(tmp)
        src = os.path.join(tmp, "wsgiscale-%s" % v)
        out = os.path.join(tmp, "out")
        env = dict(os.environ, CARGO_TARGET_DIR=os.path.join(ROOT, "target"))
        # Not --locked: the sdist holds only the crates the package needs, so cargo prunes the
        # workspace's other crates from its Cargo.lock. It must add or change none.
        pinned = lock_packages(os.path.join(src, "Cargo.lock"))
        run(["maturin", "build", "--release", "--zig", "--compatibility", "manylinux_2_28",
             "--interpreter", subprocess.run([py, "packaging/wheels.py", "interpreter", pythons[-1]], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip(),
             "--out", out], cwd=src, env=env)
        unpinned = lock_packages(os.path.join(src, "Cargo.lock")) - pinned
        if unpinned:
            raise SystemExit("release.py: building the sdist resolved crates its Cargo.lock did not pin: %s" % sorted(unpinned))
        built = glob.glob(os.path.join(out, "*.whl"))
        if len(built) != 1:
            raise SystemExit("release.py: the sdist built %s" % built)
        print("ok   the sdist builds a wheel with only the crates its Cargo.lock pins: %s" % os.path.basename(built[0]))
    expect(dist, plan)
    # 2. Installed as the app image installs it, into a fresh venv, serving requests.
    # With the machine's Pythons, not this build venv's.
    venv_bin = os.path.dirname(py)
    plain = dict(os.environ, PATH=os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if p != venv_bin))
    run(["python3", "tests/wheel/run.py", "--dist", dist, pythons[-1]], cwd=ROOT, env=plain)
    # 3. The chart, packaged and linted as published.
    run([helm, "package", "charts/wsgiscale", "--destination", dist], cwd=ROOT)
    tgz = os.path.join(dist, "wsgiscale-%s.tgz" % v)
    run([helm, "lint", "--strict", tgz], cwd=ROOT)
    run([helm, "template", "wsgiscale", tgz, "--namespace", "wsgiscale-system"], cwd=ROOT, stdout=subprocess.DEVNULL)
    print("ok   chart %s packaged, linted, rendered" % os.path.basename(tgz))
    # 4. The images' build steps, outside Docker.
    run(["hadolint", "examples/Dockerfile", "operator/Dockerfile", "packaging/inject.Dockerfile"], cwd=ROOT)
    dockerfiles()
    host = "%s-unknown-linux-gnu" % os.uname().machine
    image_crates = [arg for crate in OPERATOR_IMAGE_CRATES for arg in ("-p", crate)]
    run(["cargo", "build", "--release", "--locked"] + image_crates + ["--target", host], cwd=ROOT)
    other = "aarch64-unknown-linux-gnu" if host.startswith("x86_64") else "x86_64-unknown-linux-gnu"
    run(["cargo", "zigbuild", "--release", "--locked"] + image_crates + ["--target", other], cwd=ROOT)
    static = dict(os.environ, RUSTFLAGS="-C target-feature=+crt-static")
    run(["cargo", "build", "--release", "--locked", "-p", "wsgiscale-start", "--target", host], cwd=ROOT, env=static)
    start = os.path.join(ROOT, "target", host, "release", "wsgiscale-start")
    for arch in ("x86_64", "aarch64"):
        run([py, "packaging/wheels.py", "unpack", "--out", os.path.join(ROOT, ".cache", "inject-" + arch), "--arch", arch, "--start", start]
            + glob.glob(os.path.join(dist, "wsgiscale-%s-*.whl" % v)), cwd=ROOT)
    print("ok   images' steps: %s for %s and %s, the static start command, the inject folders of both architectures"
          % (" and ".join(OPERATOR_IMAGE_CRATES), host, other))
    # 5. SBOMs, checksums.
    run([py, "packaging/sbom.py", "--crate", "wsgiscale-py", "--name", "wsgiscale", "--purl-type", "pypi",
         "--out", os.path.join(dist, "wsgiscale-%s.cdx.json" % v)], cwd=ROOT)
    # The operator image's SBOM: every crate either of its binaries links.
    run([py, "packaging/sbom.py"] + [arg for crate in OPERATOR_IMAGE_CRATES for arg in ("--crate", crate)]
        + ["--name", "wsgiscale-operator", "--purl-type", "oci", "--out", os.path.join(dist, "wsgiscale-operator-%s.cdx.json" % v)], cwd=ROOT)
    checksums(dist)
    print("skip signatures and attestations: keyless signing (cosign, actions/attest-build-provenance) needs the release workflow's OIDC identity")
    print("skip pushes: PyPI (trusted publishing), ghcr.io images and chart happen only in the release workflow")
    print("release-dry-run: dist/ holds %s" % ", ".join(sorted(os.listdir(dist))))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("version")
    s.add_argument("--tag")
    s = sub.add_parser("expect")
    s.add_argument("dist")
    s.add_argument("--pythons", nargs="+", default=PYTHONS)
    s.add_argument("--platforms", nargs="+", default=PLATFORMS)
    s = sub.add_parser("sdist-check")
    s.add_argument("dist")
    s = sub.add_parser("checksums")
    s.add_argument("dist")
    sub.add_parser("dockerfiles")
    s = sub.add_parser("dry-run")
    s.add_argument("--dist", default=os.path.join(ROOT, "dist"))
    s.add_argument("--pythons", nargs="+", default=PYTHONS, help="CPythons of the native manylinux wheels")
    s.add_argument("--cross-pythons", nargs="+", default=PYTHONS, help="CPythons of the other platforms' wheels")
    s.add_argument("--helm", required=True)
    a = p.parse_args()
    if a.cmd == "version":
        print(version(a.tag))
    elif a.cmd == "expect":
        expect(a.dist, {plat: a.pythons for plat in a.platforms})
    elif a.cmd == "sdist-check":
        sdist_check(a.dist)
    elif a.cmd == "checksums":
        checksums(a.dist)
    elif a.cmd == "dockerfiles":
        dockerfiles()
    else:
        dry_run(a.dist, a.pythons, a.cross_pythons, a.helm)


if __name__ == "__main__":
    main()
