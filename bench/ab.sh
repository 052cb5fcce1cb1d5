#!/usr/bin/env bash
# A/B of two wsgiscale builds on one app, finely interleaved: both servers start once (each
# idle while the other is measured) and N pairs of 5 s `wrk -t1 -c64` runs alternate between
# them. Prints "round build req/s loadavg" lines. On a shared machine the pairs' ratios hold
# better than the absolute figures.
#
#   BASE_BIN=/tmp/wsgiscale-before NEW_BIN=target/release/wsgiscale bench/ab.sh basic:hello 10
set -eu
app=${1:?usage: bench/ab.sh MODULE:CALLABLE [PAIRS]}
pairs=${2:-10}
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${BENCH_VENV:-$here/.venv}"
base=${BASE_BIN:?set BASE_BIN to the baseline build}
new=${NEW_BIN:-$here/../target/release/wsgiscale}
lib="$("$venv/bin/python" -c "import sysconfig; print(sysconfig.get_config_var('LIBDIR') or '')")"
port() { "$venv/bin/python" -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])"; }
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true' EXIT
start() {
  LD_LIBRARY_PATH="$lib" "$1" serve --bind "127.0.0.1:$2" --admin-bind "127.0.0.1:$3" \
    --workers 2 --chdir "$here/apps" --venv "$venv" "$app" >/dev/null 2>&1 &
  pids+=($!)
}
pb=$(port); ab=$(port); pn=$(port); an=$(port)
start "$base" "$pb" "$ab"
start "$new" "$pn" "$an"
for a in "$ab" "$an"; do
  for _ in $(seq 1 300); do curl -sf "http://127.0.0.1:$a/readyz" >/dev/null && break; sleep 0.1; done
done
wrk -t1 -c64 -d3s "http://127.0.0.1:$pb/" >/dev/null
wrk -t1 -c64 -d3s "http://127.0.0.1:$pn/" >/dev/null
for i in $(seq 1 "$pairs"); do
  for which in base new; do
    p=$pb; [ "$which" = new ] && p=$pn
    rps=$(wrk -t1 -c64 -d5s "http://127.0.0.1:$p/" | awk '/Requests\/sec/ {print $2}')
    echo "$i $which $rps $(cut -d' ' -f1 /proc/loadavg)"
  done
done
