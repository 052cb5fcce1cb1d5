#!/usr/bin/env bash
# Idempotent setup for the benchmark harness: Debian's wrk and libev-dev, and bench/.venv with
# the pinned peers from requirements.txt. Safe to re-run; does nothing when all is in place.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PY="${BENCH_PYTHON:-}"
if [ -z "$PY" ]; then
  for cand in /root/.pyenv/versions/3.11.7/bin/python3 python3.11 python3; do
    if command -v "$cand" >/dev/null 2>&1; then PY="$(command -v "$cand")"; break; fi
  done
fi

need=()
command -v wrk >/dev/null 2>&1 || need+=(wrk)
dpkg -s libev-dev >/dev/null 2>&1 || need+=(libev-dev)
command -v cc >/dev/null 2>&1 || need+=(gcc)
if [ "${#need[@]}" -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  # update the lists only if the packages are not known yet
  if ! apt-cache show "${need[@]}" >/dev/null 2>&1; then $SUDO apt-get update -q; fi
  $SUDO apt-get install -y -q --no-install-recommends "${need[@]}" \
    || { $SUDO apt-get update -q && $SUDO apt-get install -y -q --no-install-recommends "${need[@]}"; }
fi

venv="$here/.venv"
if [ ! -x "$venv/bin/python" ]; then
  "$PY" -m venv "$venv"
fi
stamp="$venv/.requirements.sha"
want="$(sha256sum "$here/requirements.txt" | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  "$venv/bin/python" -m pip install -q --upgrade pip wheel setuptools
  # uwsgi and bjoern compile C extensions: they need a C compiler, the Python headers
  # (pyenv ships them) and libev (bjoern, from libev-dev).
  "$venv/bin/python" -m pip install -q -r "$here/requirements.txt"
  echo "$want" > "$stamp"
fi
"$venv/bin/python" - <<'PY'
import importlib, sys
mods = ["gunicorn", "granian", "bjoern", "fastpysgi", "cheroot", "flask", "django", "psutil", "whitenoise"]
for m in mods:
    importlib.import_module(m)
PY
# wsgiscale as pip installs it (the "wsgiscale (wheel)" server), when make wheel built one for
# this venv's Python; reinstalled whenever the wheel changes.
tag="$("$venv/bin/python" -c 'import sys; print("cp%d%d" % sys.version_info[:2])')"
# The manylinux wheel of this machine's architecture only: dist/ of a release dry run also
# holds musllinux and other architectures' wheels, which pip refuses here.
wheel="$(ls -t "$here/../dist"/wsgiscale-*-"$tag"-"$tag"-manylinux_*_"$(uname -m)".whl 2>/dev/null | head -1 || true)"
if [ -n "$wheel" ]; then
  wsum="$(sha256sum "$wheel" | cut -d' ' -f1)"
  if [ "$(cat "$venv/.wheel.sha" 2>/dev/null)" != "$wsum" ]; then
    "$venv/bin/python" -m pip install -q --force-reinstall --no-deps "$wheel"
    echo "$wsum" > "$venv/.wheel.sha"
  fi
fi
test -x "$venv/bin/uwsgi" || { echo "uwsgi binary missing in $venv/bin" >&2; exit 1; }
echo "bench setup ok: $(wrk -v 2>&1 | head -1); venv $venv ($("$venv/bin/python" -V))"
