#!/usr/bin/env python3
"""Writes the CycloneDX SBOM of a release artifact: the Rust crates linked into it, from
Cargo.lock through `cargo metadata`, and what it is.

    sbom.py --crate wsgiscale-py --name wsgiscale --purl-type pypi --out dist/wsgiscale.cdx.json
    sbom.py --crate wsgiscale-operator --crate wsgiscale-activator --name wsgiscale-operator ...

Only the crates the artifact links are listed: the normal dependencies of `--crate` (of every
`--crate`, for an image holding several binaries: the operator image holds two), for
Linux targets (no build scripts' or tests' crates, no other platform's), each with its version,
its package URL (pkg:cargo/NAME@VERSION) and its licence expression. The document is built and
written by CycloneDX's own library (cyclonedx-python-lib), which validates it against the
CycloneDX 1.6 schema before it is written.
"""

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys

from cyclonedx.model import HashAlgorithm, HashType
from cyclonedx.model.bom import Bom
from cyclonedx.model.component import Component, ComponentType
from cyclonedx.model.license import LicenseExpression
from cyclonedx.output.json import JsonV1Dot6
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
from packageurl import PackageURL

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def metadata():
    out = subprocess.run(
        ["cargo", "metadata", "--format-version", "1", "--locked",
         "--filter-platform", "%s-unknown-linux-gnu" % os.uname().machine],
        cwd=ROOT, capture_output=True, text=True, check=True,
    )
    return json.loads(out.stdout)


def linked(meta, crates):
    """The packages `crates` link: themselves and their normal dependencies, transitively; and
    the first crate's package id (the artifact's version is that crate's)."""
    packages = {p["id"]: p for p in meta["packages"]}
    nodes = {n["id"]: n for n in meta["resolve"]["nodes"]}
    roots = []
    for crate in crates:
        found = [p["id"] for p in meta["packages"] if p["name"] == crate and p["source"] is None]
        if not found:
            raise SystemExit("sbom.py: no workspace crate named %s" % crate)
        roots += found
    seen, todo = set(), list(roots)
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        for dep in nodes[pid]["deps"]:
            if any(k["kind"] is None for k in dep["dep_kinds"]):
                todo.append(dep["pkg"])
    return [packages[p] for p in sorted(seen)], roots[0]


def licence(expr):
    # Old crates write "MIT/Apache-2.0"; the SPDX expression is "MIT OR Apache-2.0".
    return re.sub(r"\s*/\s*", " OR ", expr) if expr else None


def build(crates, name, purl_type, artifact=None):
    meta = metadata()
    packages, root_id = linked(meta, crates)
    version = next(p["version"] for p in packages if p["id"] == root_id)
    bom = Bom()
    top = Component(
        name=name,
        version=version,
        type=ComponentType.LIBRARY if purl_type == "pypi" else ComponentType.APPLICATION,
        purl=PackageURL(type=purl_type, name=name, version=version),
        bom_ref="%s@%s" % (name, version),
    )
    if artifact:
        with open(artifact, "rb") as f:
            top.hashes.add(HashType(alg=HashAlgorithm.SHA_256, content=hashlib.sha256(f.read()).hexdigest()))
    bom.metadata.component = top
    for p in packages:
        if p["source"] is None:
            continue  # the workspace's own crates are the artifact itself
        c = Component(
            name=p["name"],
            version=p["version"],
            type=ComponentType.LIBRARY,
            purl=PackageURL(type="cargo", name=p["name"], version=p["version"]),
            bom_ref="cargo:%s@%s" % (p["name"], p["version"]),
        )
        lic = licence(p.get("license"))
        if lic:
            c.licenses.add(LicenseExpression(lic))
        bom.components.add(c)
        bom.register_dependency(top, [c])
    text = JsonV1Dot6(bom).output_as_string(indent=2)
    errors = JsonStrictValidator(SchemaVersion.V1_6).validate_str(text)
    if errors:
        raise SystemExit("sbom.py: the SBOM does not validate: %s" % errors)
    return text, len(bom.components)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--crate", required=True, action="append",
                   help="a workspace crate the artifact holds; again for each binary of an image")
    p.add_argument("--name", required=True)
    p.add_argument("--purl-type", default="pypi", choices=["pypi", "oci", "generic"])
    p.add_argument("--artifact", help="a file whose SHA-256 the SBOM's subject carries")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    text, n = build(a.crate, a.name, a.purl_type, a.artifact)
    with open(a.out, "w") as f:
        f.write(text)
    print("sbom.py: %s: %s with %d crates (CycloneDX 1.6, validated)" % (a.out, a.name, n))


if __name__ == "__main__":
    sys.exit(main())
