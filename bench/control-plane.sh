#!/usr/bin/env bash
# Control-plane scale benchmark: simulated proxies against a real control
# plane in folder mode. One command, loopback only, about a minute.
#
#   bench/control-plane.sh                 # writes the control-plane section of BENCHMARKS.md
#   PROXIES=100 ROUNDS=3 bench/control-plane.sh   # quick check
#
# bench/src/bin/cp_scale.rs does the work; for each proxy count it
#   - writes SERVICES Services over NAMESPACES namespaces (each with an
#     EndpointSlice of ENDPOINTS ready Pods, a DestinationRule with two
#     subsets and a 90/10 VirtualService), the first namespace's services
#     exported to every namespace, and one Pod per simulated proxy;
#   - starts outrigger-control-plane on that folder, pinned to CPU 0, with
#     --poll POLL and --debounce DEBOUNCE;
#   - connects every proxy (HTTP/2, GET /v1/config, one connection each) from
#     this process, pinned to CPU 1, and waits until each holds a config;
#   - ROUNDS times: rewrites the shared namespace's VirtualService (exported
#     to all, so every proxy receives the edit) and times, from the write,
#     when each proxy holds a new version;
#   - reads the control plane's CPU time and memory from /proc, and its own
#     push-latency histogram from /metrics.
#
# Settings (environment): PROXIES=100,1000,5000 SERVICES=1000 NAMESPACES=50
#   ENDPOINTS=3 ROUNDS=20 POLL=100ms DEBOUNCE=100ms
#   SKIP_BUILD=1 uses the release binaries already built.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
OUT=${OUT:-$HERE/out-control-plane}
# shellcheck source=harness.sh
source "$HERE/harness.sh"

PROXIES=${PROXIES:-100,1000,5000}
SERVICES=${SERVICES:-1000}
NAMESPACES=${NAMESPACES:-50}
ENDPOINTS=${ENDPOINTS:-3}
ROUNDS=${ROUNDS:-20}
POLL=${POLL:-100ms}
DEBOUNCE=${DEBOUNCE:-100ms}

[[ $(nproc) -ge 2 ]] || die "needs two CPUs (the control plane and the simulated proxies are pinned apart)"
command -v taskset >/dev/null || die "taskset missing (util-linux)"
largest=$(tr ',' '\n' <<<"$PROXIES" | sort -n | tail -n 1)
# One descriptor per proxy connection in each process, plus some.
ulimit -n "$((largest + 1000))" 2>/dev/null || ulimit -n "$(ulimit -Hn)"
(($(ulimit -n) > largest + 100)) || die "open-file limit $(ulimit -n) is too low for $largest proxies"

TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
if [[ -z ${SKIP_BUILD:-} ]]; then
  log "building release binaries"
  (cd "$ROOT" && cargo build --release --quiet -p outrigger-control-plane -p outrigger-bench) || die "cargo build failed"
  BUILT_FROM="work tree at git $(git -C "$ROOT" rev-parse --short=10 HEAD 2>/dev/null || echo unknown)"
  [[ -z $(git -C "$ROOT" status --porcelain 2>/dev/null) ]] || BUILT_FROM+=" with uncommitted changes"
else
  BUILT_FROM="SKIP_BUILD=1: binaries already in $TARGET_DIR/release"
fi
CP=$TARGET_DIR/release/outrigger-control-plane
SCALE=$TARGET_DIR/release/outrigger-bench-cp-scale
[[ -x $CP && -x $SCALE ]] || die "release binaries missing under $TARGET_DIR/release"

rm -rf "$OUT" && mkdir -p "$OUT"
{
  echo "nproc=$(nproc)"
  echo "cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)"
  echo "kernel=$(uname -sr)"
  echo "date=$(date -u +'%Y-%m-%d %H:%M UTC')"
  echo "outrigger=$BUILT_FROM"
  echo "loadavg_before=$(cut -d' ' -f1-3 /proc/loadavg)"
  echo "settings=PROXIES=$PROXIES SERVICES=$SERVICES NAMESPACES=$NAMESPACES ENDPOINTS=$ENDPOINTS ROUNDS=$ROUNDS POLL=$POLL DEBOUNCE=$DEBOUNCE"
} >"$OUT/machine.txt"

log "running $PROXIES proxies, $SERVICES services, $ROUNDS edits each"
taskset -c 1 "$SCALE" --control-plane "$CP" --work "$OUT/manifests" \
  --proxies "$PROXIES" --services "$SERVICES" --namespaces "$NAMESPACES" \
  --endpoints "$ENDPOINTS" --rounds "$ROUNDS" --poll "$POLL" --debounce "$DEBOUNCE" \
  --control-plane-cpus 0 >"$OUT/results.jsonl"
rm -rf "$OUT/manifests"
python3 "$HERE/report_control_plane.py" --out-dir "$OUT" --report "$ROOT/BENCHMARKS.md"
