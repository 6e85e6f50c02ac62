#!/usr/bin/env bash
# Memory benchmark: what a proxy holds per idle keep-alive connection, and
# whether it gives the memory back once the connections close. One hop,
# client -> proxy -> upstream, loopback only. About ten minutes.
#
#   bench/memory.sh                       # writes the memory section of BENCHMARKS.md
#   CONNS=2000 SETTLE=10 bench/memory.sh  # quick check of the harness
#
# For each proxy (Outrigger with jemalloc, the default build; Outrigger with
# the system allocator, `--no-default-features`; Envoy; HAProxy), fresh:
#   - idle RSS after a warm-up;
#   - CONNS connections, each after one request answered 200, held open and
#     idle: RSS, and (RSS - idle) / CONNS per connection;
#   - all of them closed: RSS every second for SETTLE seconds; "returned"
#     is the first second at which RSS is within 2x idle;
#   - SLOWLORIS connections that trickle a request head one byte a second
#     (never finishing it) for SLOW_HOLD seconds: peak RSS, how many the
#     proxy closed itself (its header timeout: 10 s for Outrigger), and RSS
#     SETTLE seconds later.
# bench/idle_conns.py drives the connections and reads /proc/PID.
#
# Settings (environment): CONNS=10000 SETTLE=30 SLOWLORIS=2000 SLOW_HOLD=15
#   ROUNDS=1 (each proxy measured once per round, the report gives the
#   median) ALLOCATORS="jemalloc system" BASE_PORT=18600 SKIP_INSTALL=1
#   SKIP_BUILD=1 BUILD_REF=<commit> (as in bench/run.sh)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
OUT=${OUT:-$HERE/out-memory}
LOGS=$OUT/logs
RES=$OUT/results
# shellcheck source=harness.sh
source "$HERE/harness.sh"

CONNS=${CONNS:-10000}
SETTLE=${SETTLE:-30}
SLOWLORIS=${SLOWLORIS:-2000}
SLOW_HOLD=${SLOW_HOLD:-15}
ROUNDS=${ROUNDS:-1}
ALLOCATORS=${ALLOCATORS:-jemalloc system}
BASE_PORT=${BASE_PORT:-18600}
THREADS=1
for v in CONNS SETTLE SLOWLORIS SLOW_HOLD ROUNDS; do
  [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a whole number, got '${!v}'"
done
for a in $ALLOCATORS; do
  [[ $a == jemalloc || $a == system ]] || die "ALLOCATORS lists jemalloc and/or system, got '$a'"
done
# Each proxy holds CONNS client sockets (HAProxy: and as many toward the
# upstream at worst), and this script as many again.
need=$((2 * (CONNS + SLOWLORIS) + 1024))
if (($(ulimit -Sn) < need)); then
  ulimit -Sn "$(ulimit -Hn)" 2>/dev/null || true
  (($(ulimit -Sn) >= CONNS + SLOWLORIS + 1024)) \
    || die "open-file limit $(ulimit -Sn) is below $((CONNS + SLOWLORIS + 1024)); lower CONNS or raise ulimit -n"
fi

P_UPSTREAM=$BASE_PORT
P_OR=$((BASE_PORT + 1)) P_OR_ADMIN=$((BASE_PORT + 2))
P_EN=$((BASE_PORT + 3)) P_EN_ADMIN=$((BASE_PORT + 4))
P_HA=$((BASE_PORT + 5))
for p in $(seq "$BASE_PORT" $((BASE_PORT + 5))); do
  port_busy "$p" && die "127.0.0.1:$p is already in use; set BASE_PORT to another range"
done

rm -rf "$OUT" && mkdir -p "$LOGS" "$RES"
CONF=$OUT/config && mkdir -p "$CONF"
: >"$OUT/commands.txt"
prepare_binaries
declare -A BIN=([jemalloc]=$PROXY)
if [[ " $ALLOCATORS " == *" system "* ]]; then
  # The same source, built with the system allocator, in its own folder.
  SYS_TARGET=$ROOT/target/bench-system-alloc
  log "building the proxy with the system allocator (--no-default-features) in $SYS_TARGET"
  if [[ -n ${BUILD_REF:-} ]]; then
    SRC=$(mktemp -d /tmp/outrigger-bench-src.XXXXXX)
    git -C "$ROOT" archive "$BUILD_REF" | tar -x -m -C "$SRC"
  else
    SRC=$ROOT
  fi
  (cd "$SRC" && CARGO_TARGET_DIR=$SYS_TARGET cargo build --release --quiet -p outrigger-proxy --no-default-features) \
    || die "cargo build of the system-allocator proxy failed"
  [[ $SRC == "$ROOT" ]] || rm -rf "$SRC"
  BIN[system]=$SYS_TARGET/release/outrigger-proxy
fi

cat >"$CONF/outrigger.yaml" <<EOF
version: "bench-memory"
proxy: { workload: bench-client, namespace: bench }
admin: { bind: "127.0.0.1:$P_OR_ADMIN" }
limits: { max_connections: $((CONNS + SLOWLORIS + 100)) }
listeners:
  - name: outbound
    direction: outbound
    bind: "127.0.0.1:$P_OR"
    target: { name: bench-upstream, namespace: bench, port: 80 }
services:
  - name: bench-upstream
    namespace: bench
    ports: [80]
    endpoints:
      - { address: "127.0.0.1:$P_UPSTREAM", workload: bench-upstream, meshed: false }
EOF
"$PROXY" check --config "$CONF/outrigger.yaml" >/dev/null || die "generated outrigger.yaml is not valid"
render "$HERE/envoy/server-side.yaml.tmpl" "$CONF/envoy.yaml" \
  NODE_ID=bench-memory ADMIN_PORT=$P_EN_ADMIN LISTEN_PORT=$P_EN UPSTREAM_PORT=$P_UPSTREAM
"$ENVOY" --mode validate -c "$CONF/envoy.yaml" --log-level error >/dev/null || die "generated envoy.yaml is not valid"
render "$HERE/haproxy/haproxy.cfg.tmpl" "$CONF/haproxy.cfg" THREADS=$THREADS LISTEN_PORT=$P_HA UPSTREAM_PORT=$P_UPSTREAM
# The single-hop template caps HAProxy at 4096 connections; here it must take them all.
sed -i "s/^\([[:space:]]*maxconn\) .*/\1 $((CONNS + SLOWLORIS + 100))/" "$CONF/haproxy.cfg"
# HAProxy asks for two descriptors per connection (client and server side)
# and refuses to start when the hard limit is below that, even told to use
# less: then it is left out of the run, and the report says why.
HAPROXY_FDS=$((2 * (CONNS + SLOWLORIS + 100) + 14))
MEASURE_HAPROXY=1
if ((HAPROXY_FDS > $(ulimit -Hn))); then
  MEASURE_HAPROXY=
  log "HAProxy left out: it needs $HAPROXY_FDS descriptors for $((CONNS + SLOWLORIS)) connections; the hard limit is $(ulimit -Hn)"
  echo "HAProxy left out: it needs $HAPROXY_FDS file descriptors for $((CONNS + SLOWLORIS)) connections, the open-file hard limit was $(ulimit -Hn)" >"$RES/haproxy-skipped.txt"
fi
"$HAPROXY" -c -q -f "$CONF/haproxy.cfg" || die "generated haproxy.cfg is not valid"

start upstream "$UPSTREAM" --listen "127.0.0.1:$P_UPSTREAM" --name bench-upstream --threads 1
wait_url upstream "http://127.0.0.1:$P_UPSTREAM/"

# measure NAME PORT ROUND CMD...: start the proxy fresh, drive it, stop it.
measure() {
  local name=$1 port=$2 round=$3; shift 3
  start "$name-$round" "$@"
  local deadline=$((SECONDS + 30))
  until curl -fsS -o /dev/null --max-time 1 "http://127.0.0.1:$port/" 2>/dev/null; do
    alive "${PID[$name-$round]}" || die "$name exited during start-up (log: $LOGS/$name-$round.log)"
    ((SECONDS < deadline)) || die "$name not answering on $port after 30 s"
    sleep 0.1
  done
  log "$name (round $round): $CONNS idle connections, then $SLOWLORIS slowloris connections"
  python3 "$HERE/idle_conns.py" --pid "${PID[$name-$round]}" --port "$port" --conns "$CONNS" \
    --settle "$SETTLE" --slowloris "$SLOWLORIS" --slow-hold "$SLOW_HOLD" >"$RES/$name-$round.json" \
    || die "idle_conns.py failed against $name"
  alive "${PID[$name-$round]}" || die "$name died during the run (log: $LOGS/$name-$round.log)"
  kill -TERM "${PID[$name-$round]}" 2>/dev/null || true
  wait "${PID[$name-$round]}" 2>/dev/null || true
}

LOADAVG_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
for round in $(seq "$ROUNDS"); do
  for a in $ALLOCATORS; do
    measure "outrigger-$a" "$P_OR" "$round" "${BIN[$a]}" run --config "$CONF/outrigger.yaml" \
      --threads "$THREADS" --log-level warn
  done
  measure envoy "$P_EN" "$round" "$ENVOY" -c "$CONF/envoy.yaml" --concurrency "$THREADS" \
    --disable-hot-restart --log-level warn
  [[ -z $MEASURE_HAPROXY ]] || measure haproxy "$P_HA" "$round" "$HAPROXY" -db -f "$CONF/haproxy.cfg"
done
machine_info "$OUT/machine.txt" "$LOADAVG_BEFORE"

python3 "$HERE/report_memory.py" --results "$RES" --machine "$OUT/machine.txt" \
  --conns "$CONNS" --settle "$SETTLE" --slowloris "$SLOWLORIS" --slow-hold "$SLOW_HOLD" \
  --report "${REPORT:-$ROOT/BENCHMARKS.md}"
log "done: ${REPORT:-$ROOT/BENCHMARKS.md} (raw results in $RES)"
