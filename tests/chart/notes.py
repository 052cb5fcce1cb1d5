#!/usr/bin/env python3
"""Checks that the chart's NOTES say what is true, against the repository itself.

    notes.py RENDERED_INSTALL_OUTPUT

- every repository path they name (examples/..., crds/..., docs/..., charts/...) exists;
- the CRD fields they name (spec.inject.enabled) are in the generated CRD;
- the package they tell to `pip install` is the one pyproject.toml builds, and the images
  are described as holding that package, never "the wsgiscale binary" (the server ships as a
  Python package or is injected);
- `kubectl get wsgi` uses a short name the CRD declares.
Prints one line per failed promise; exits 1 if any failed.
"""

import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
    text = open(sys.argv[1]).read()
    notes = text.split("NOTES:", 1)[-1]
    crd = open(os.path.join(ROOT, "crds", "wsgiapp.yaml")).read()
    pyproject = open(os.path.join(ROOT, "pyproject.toml")).read()
    problems = []
    for path in sorted(set(re.findall(r"\b((?:examples|crds|docs|charts)/[A-Za-z0-9_.\-/]*[A-Za-z0-9_])", notes))):
        if not os.path.exists(os.path.join(ROOT, path)):
            problems.append("names %s, which does not exist" % path)
    for field in re.findall(r"\bspec\.([a-zA-Z.]+[a-zA-Z])", notes):
        indent = None
        # Each step of the path is a property under the previous one in the CRD's YAML.
        pos = crd.index("openAPIV3Schema")
        for step in field.split("."):
            m = re.compile(r"\n(\s+)%s:\n" % re.escape(step)).search(crd, pos)
            if not m or (indent is not None and len(m.group(1)) <= indent):
                problems.append("names spec.%s, which the CRD does not have" % field)
                break
            indent, pos = len(m.group(1)), m.end()
    name = re.search(r'^name = "([^"]+)"', pyproject, re.M).group(1)
    for pkg in re.findall(r"pip install ([A-Za-z0-9_.\-]+)", notes):
        if pkg != name:
            problems.append("tells to pip install %s, but pyproject.toml builds %s" % (pkg, name))
    if "pip install %s" % name not in notes:
        problems.append("does not say how to get the server (pip install %s)" % name)
    if re.search(r"wsgiscale binary", notes):
        problems.append("speaks of the wsgiscale binary: images hold the Python package or get it injected")
    shorts = re.search(r"shortNames:\s*\n\s*- (\S+)", crd).group(1)
    for short in re.findall(r"kubectl get (\S+)", notes):
        if short not in (shorts, "wsgiapps", "wsgiapp"):
            problems.append("kubectl get %s: the CRD's short name is %s" % (short, shorts))
    for p in problems:
        print("NOTES " + p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
