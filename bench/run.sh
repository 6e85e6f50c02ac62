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


source "$HERE/harness.sh"

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
# 1. Tools and binaries
prepare_binaries

# ---------------------------------------------------------------------------
# 2. Configuration
rm -rf "$OUT"
mkdir -p "$LOGS" "$RES" "$CONF"
: >"$OUT/commands.txt"

for p in "${ALL_PORTS[@]}"; do
  port_busy "$p" && die "127.0.0.1:$p is already in use; set BASE_PORT to another range"
done


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


# Idle RSS, after start-up and one request through each path.
idle_args=()
for n in upstream or_client or_server or_single en_client en_server en_single haproxy; do
  idle_args+=(--pid "$n=${PID[$n]}")
done
python3 "$HERE/measure.py" idle --out "$RES/idle.json" "${idle_args[@]}"


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
machine_info "$OUT/machine.txt" "$LOADAVG_BEFORE"

python3 "$HERE/report.py" --out-dir "$OUT" --root "$ROOT" --report "$REPORT"
log "report written to $REPORT"
