#!/usr/bin/env bash
# Outrigger policy benchmark: what each traffic-policy feature costs, and the
# same policies on Envoy. One command, loopback only (127.0.0.1).
#
#   bench/policies.sh                     # about 40 minutes; writes the policy section of BENCHMARKS.md
#   DURATION=2s ROUNDS=1 bench/policies.sh   # quick check of the harness
#   CG_ONLY=1 bench/policies.sh           # a few minutes: instructions per request only (see below)
#
# Every setup is two hops, as in bench/run.sh: client -> client-side proxy ->
# server-side proxy (HTTP/2 between the proxies) -> upstream. Policies live
# in the client-side (outbound) proxy; the server side is the same in every
# Outrigger setup (and in every Envoy setup). The Outrigger client sides, one
# process per setup on its own port:
#
#   off        one catch-all route with retries off (attempts: 0): every policy off
#   defaults   no route at all: the out-of-the-box defaults (2 retries on connect-failure,
#              refused-stream, unavailable, cancelled, with the retry budget)
#   retries    off + retries {attempts 2, perTryTimeout 2s, retryOn 5xx,reset,connect-failure,refused-stream}
#   timeout    off + a 10 s route timeout
#   match      off + the route matches uri prefix "/" and sets a request header
#   split      off + a 90/10 split over two subsets (both hold the one endpoint)
#   ratelimit  off + a route token bucket that never runs dry (1,000,000 per second)
#   outlier    off + outlierDetection {consecutive5xxErrors 5, interval 10s, baseEjectionTime 30s, maxEjectionPercent 100}
#   pool       off + connectionPool limits of 10000 (maxConnections, http1MaxPendingRequests, http2MaxRequests)
#   all        every one of the above at once
#
# Envoy: "off" is bench/envoy/client-side.yaml.tmpl (the policy-free run's);
# "on" is bench/envoy/client-side-policies.yaml.tmpl, the same policies as
# Outrigger's "all" in Istio's translation. Direct (no proxy) is the reference.
#
# For each setup: max throughput (oha unthrottled at -c CONCURRENCY after a
# warm-up), latency at a fixed rate (oha -c LAT_CONCURRENCY -q FIXED_RATE),
# and the client-side proxy's CPU per request. The setups run interleaved, in
# ROUNDS rounds, and the report gives the median over rounds, so slow drift of
# the shared machine hits every setup alike. Then each Outrigger client side
# runs once more under callgrind for its instructions per request, a count
# the machine's noise does not change.
#
# Instructions per request only (CG_ONLY=1): the binaries are prepared as for
# the full run (BUILD_REF, SKIP_BUILD), then only the upstream and the
# server-side proxy start, and step 5 runs alone for the chosen setups: no
# Envoy, no HAProxy, no timed rounds, and BENCHMARKS.md is left as it is. The
# counts are printed and written to bench/out-instructions/ (results/instr-*.json,
# results/instructions.txt), not to bench/out-policies/, so a full run's results
# stay. It is the check that a change keeps the hot path as cheap:
#
#   CG_ONLY=1 VARIANTS="off all" PROTOS="h1 h2" CG_RUNS=2 bench/policies.sh
#   CG_ONLY=1 BUILD_REF=<commit> bench/policies.sh   # the binaries of any commit of this repository
#
# Settings (environment):
#   DURATION=10s  WARMUP=2s  ROUNDS=5  THREADS=1  UPSTREAM_THREADS=1
#   CONCURRENCY=32  LAT_CONCURRENCY=16  FIXED_RATE=1000
#   DISTURBED_CORES=0.1  RERUNS=20     as in bench/run.sh
#   CG=1  CG_N1=200  CG_N2=2200        instruction counts under callgrind (CG=0 skips them)
#   CG_ONLY=0                          1: the instruction counts alone, as above; with it only:
#     VARIANTS="off all"               the client-side setups counted (any of the ten above)
#     PROTOS="h1 h2"                   the protocols from the client, each with every variant
#     CG_RUNS=1                        how many times each setup is counted (fresh processes
#                                      each time); more than one prints the median and spread
#     CG_CONCURRENCY=4                 oha -c of the callgrind runs (the full run's is 4)
#     CG_PROXY_ARGS=""                 more arguments for the callgrind client-side proxy, e.g.
#                                      tracing: "--trace-collector http://127.0.0.1:PORT --trace-sampling 1"
#                                      (the word UPSTREAM_PORT becomes the upstream's port, which
#                                      answers any POST, so it serves as an OTLP sink)
#   BASE_PORT=18100       ports used: BASE_PORT .. BASE_PORT+61 on 127.0.0.1
#   SKIP_INSTALL=1  SKIP_BUILD=1  BUILD_REF=HEAD   as in bench/run.sh
#   REPORT=path           the file whose policy section is (re)written (default: BENCHMARKS.md)

set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
CG_ONLY=${CG_ONLY:-0}
if [[ $CG_ONLY == 1 ]]; then OUT=$HERE/out-instructions; else OUT=$HERE/out-policies; fi
LOGS=$OUT/logs
RES=$OUT/results
CONF=$OUT/config

DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
ROUNDS=${ROUNDS:-5}
THREADS=${THREADS:-1}
UPSTREAM_THREADS=${UPSTREAM_THREADS:-1}
CONCURRENCY=${CONCURRENCY:-32}
LAT_CONCURRENCY=${LAT_CONCURRENCY:-16}
FIXED_RATE=${FIXED_RATE:-1000}
DISTURBED_CORES=${DISTURBED_CORES:-0.1}
RERUNS=${RERUNS:-20}
BASE_PORT=${BASE_PORT:-18100}
REPORT=${REPORT:-$ROOT/BENCHMARKS.md}

source "$HERE/harness.sh"

WARMUP_S=$(secs_of "$WARMUP")
secs_of "$DURATION" >/dev/null
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive integer"
[[ $THREADS =~ ^[1-9][0-9]*$ ]] || die "THREADS must be a positive integer"
[[ $UPSTREAM_THREADS =~ ^[1-9][0-9]*$ ]] || die "UPSTREAM_THREADS must be a positive integer"
[[ $CG_ONLY == 0 || $CG_ONLY == 1 ]] || die "CG_ONLY must be 0 or 1"

ALL_VARIANTS=(off defaults retries timeout match split ratelimit outlier pool all)
if ((CG_ONLY)); then
  [[ ${CG:-1} == 1 ]] || die "CG_ONLY=1 counts instructions: it cannot be combined with CG=0"
  read -ra VARIANTS <<<"${VARIANTS:-off all}"
  read -ra PROTOS <<<"${PROTOS:-h1 h2}"
  CG_RUNS=${CG_RUNS:-1} CG_CONCURRENCY=${CG_CONCURRENCY:-4}
  ((${#VARIANTS[@]})) || die "VARIANTS names no setup"
  ((${#PROTOS[@]})) || die "PROTOS names no protocol"
  for v in "${VARIANTS[@]}"; do
    [[ " ${ALL_VARIANTS[*]} " == *" $v "* ]] || die "VARIANTS: unknown setup '$v' (one of: ${ALL_VARIANTS[*]})"
  done
  for proto in "${PROTOS[@]}"; do
    [[ $proto == h1 || $proto == h2 ]] || die "PROTOS: unknown protocol '$proto' (h1 or h2)"
  done
  [[ $CG_RUNS =~ ^[1-9][0-9]*$ ]] || die "CG_RUNS must be a positive integer"
  [[ $CG_CONCURRENCY =~ ^[1-9][0-9]*$ ]] || die "CG_CONCURRENCY must be a positive integer"
else
  for name in VARIANTS PROTOS CG_RUNS CG_CONCURRENCY; do
    [[ -z ${!name:-} ]] || die "$name is a setting of CG_ONLY=1; the full run measures every setup as BENCHMARKS.md describes"
  done
  VARIANTS=("${ALL_VARIANTS[@]}") CG_CONCURRENCY=4
fi

# ---------------------------------------------------------------------------
# Ports (all on 127.0.0.1)
P_UPSTREAM=$BASE_PORT
P_OR_SERVER=$((BASE_PORT + 1)); P_OR_SERVER_ADMIN=$((BASE_PORT + 2))
P_EN_SERVER=$((BASE_PORT + 3)); P_EN_SERVER_ADMIN=$((BASE_PORT + 4))
P_EN_OFF=$((BASE_PORT + 5)); P_EN_OFF_ADMIN=$((BASE_PORT + 6))
P_EN_ON=$((BASE_PORT + 7)); P_EN_ON_ADMIN=$((BASE_PORT + 8))
declare -A P_OR=() P_OR_ADMIN=()
P_CG=$((BASE_PORT + 60)); P_CG_ADMIN=$((BASE_PORT + 61))
i=0
for v in "${ALL_VARIANTS[@]}"; do
  P_OR[$v]=$((BASE_PORT + 20 + 2 * i)); P_OR_ADMIN[$v]=$((BASE_PORT + 21 + 2 * i))
  i=$((i + 1))
done
if ((CG_ONLY)); then
  ALL_PORTS=("$P_UPSTREAM" "$P_OR_SERVER" "$P_OR_SERVER_ADMIN" "$P_CG" "$P_CG_ADMIN")
else
  ALL_PORTS=("$P_UPSTREAM" "$P_OR_SERVER" "$P_OR_SERVER_ADMIN" "$P_EN_SERVER" "$P_EN_SERVER_ADMIN" "$P_EN_OFF" "$P_EN_OFF_ADMIN" "$P_EN_ON" "$P_EN_ON_ADMIN" "$P_CG" "$P_CG_ADMIN")
  for v in "${VARIANTS[@]}"; do ALL_PORTS+=("${P_OR[$v]}" "${P_OR_ADMIN[$v]}"); done
fi

# ---------------------------------------------------------------------------
# 1. Tools and binaries
if ((CG_ONLY)); then prepare_binaries --outrigger-only; else prepare_binaries; fi

# ---------------------------------------------------------------------------
# 2. Configuration
rm -rf "$OUT"
mkdir -p "$LOGS" "$RES" "$CONF"
: >"$OUT/commands.txt"
for p in "${ALL_PORTS[@]}"; do
  port_busy "$p" && die "127.0.0.1:$p is already in use; set BASE_PORT to another range"
done

cat >"$CONF/outrigger-server.yaml" <<EOF
version: "bench-policies-1"
proxy: { workload: bench-upstream, namespace: bench }
admin: { bind: "127.0.0.1:$P_OR_SERVER_ADMIN" }
listeners:
  - name: inbound
    direction: inbound
    bind: "127.0.0.1:$P_OR_SERVER"
    app: "127.0.0.1:$P_UPSTREAM"
EOF

# The pieces of the client-side policies (YAML under the service, 4 spaces).
RETRIES_OFF='retries: { attempts: 0 }'
RETRIES_ON='retries: { attempts: 2, perTryTimeout: 2s, retryOn: "5xx,reset,connect-failure,refused-stream" }'
TIMEOUT='timeout: 10s'
MATCH='match: [{ uri: { prefix: "/" } }]
        headers: { request: { set: { x-bench-route: all } } }'
SPLIT='route:
          - { destination: { host: bench-upstream, subset: v1 }, weight: 90 }
          - { destination: { host: bench-upstream, subset: v2 }, weight: 10 }'
SUBSETS='subsets: [{ name: v1, labels: { version: v1 } }, { name: v2, labels: { track: stable } }]'
RATELIMIT='localRateLimit: { maxTokens: 1000000, tokensPerFill: 1000000, fillInterval: 1s }'
OUTLIER='outlierDetection: { consecutive5xxErrors: 5, interval: 10s, baseEjectionTime: 30s, maxEjectionPercent: 100 }'
POOL='connectionPool: { tcp: { maxConnections: 10000 }, http: { http1MaxPendingRequests: 10000, http2MaxRequests: 10000 } }'

# client_config VARIANT: the client-side snapshot of one setup.
client_config() {
  local v=$1 route=() service=() policy=()
  case $v in
    off) route=("$RETRIES_OFF") ;;
    defaults) ;;
    retries) route=("$RETRIES_ON") ;;
    timeout) route=("$RETRIES_OFF" "$TIMEOUT") ;;
    match) route=("$RETRIES_OFF" "$MATCH") ;;
    split) route=("$RETRIES_OFF" "$SPLIT"); service=("$SUBSETS") ;;
    ratelimit) route=("$RETRIES_OFF" "$RATELIMIT") ;;
    outlier) route=("$RETRIES_OFF"); policy=("$OUTLIER") ;;
    pool) route=("$RETRIES_OFF"); policy=("$POOL") ;;
    all) route=("$RETRIES_ON" "$TIMEOUT" "$MATCH" "$SPLIT" "$RATELIMIT"); service=("$SUBSETS"); policy=("$OUTLIER" "$POOL") ;;
    *) die "unknown variant $v" ;;
  esac
  cat <<EOF
version: "bench-policies-1"
proxy: { workload: bench-client, namespace: bench }
admin: { bind: "127.0.0.1:${P_OR_ADMIN[$v]}" }
listeners:
  - name: outbound
    direction: outbound
    bind: "127.0.0.1:${P_OR[$v]}"
    target: { name: bench-upstream, namespace: bench, port: 80 }
services:
  - name: bench-upstream
    namespace: bench
    addresses: []
    ports: [80]
    endpoints:
      - address: "127.0.0.1:$P_OR_SERVER"
        workload: bench-upstream
        meshed: true
        labels: { version: v1, track: stable }
EOF
  local piece
  if ((${#route[@]})); then
    printf '    http:\n      - name: %s\n' "$v"
    for piece in "${route[@]}"; do printf '        %s\n' "$piece"; done
  fi
  for piece in "${service[@]}"; do printf '    %s\n' "$piece"; done
  if ((${#policy[@]})); then
    printf '    trafficPolicy:\n'
    for piece in "${policy[@]}"; do printf '      %s\n' "$piece"; done
  fi
}

for v in "${VARIANTS[@]}"; do
  client_config "$v" >"$CONF/outrigger-$v.yaml"
done
for f in server "${VARIANTS[@]}"; do
  "$PROXY" check --config "$CONF/outrigger-$f.yaml" >/dev/null || die "generated $CONF/outrigger-$f.yaml is not valid"
done

if ((!CG_ONLY)); then
  render "$HERE/envoy/server-side.yaml.tmpl" "$CONF/envoy-server.yaml" \
    NODE_ID=bench-server-side ADMIN_PORT=$P_EN_SERVER_ADMIN LISTEN_PORT=$P_EN_SERVER UPSTREAM_PORT=$P_UPSTREAM
  render "$HERE/envoy/client-side.yaml.tmpl" "$CONF/envoy-off.yaml" \
    ADMIN_PORT=$P_EN_OFF_ADMIN LISTEN_PORT=$P_EN_OFF UPSTREAM_PORT=$P_EN_SERVER
  render "$HERE/envoy/client-side-policies.yaml.tmpl" "$CONF/envoy-on.yaml" \
    ADMIN_PORT=$P_EN_ON_ADMIN LISTEN_PORT=$P_EN_ON UPSTREAM_PORT=$P_EN_SERVER
  for f in server off on; do
    "$ENVOY" --mode validate -c "$CONF/envoy-$f.yaml" --log-level error >/dev/null || die "generated envoy-$f.yaml is not valid"
  done
fi

# ---------------------------------------------------------------------------
# Instructions per request (step 5, and all of a CG_ONLY=1 run): one setup's
# Outrigger client side again, alone, under callgrind (deterministic, unlike
# time on a shared machine): CG_N1 and then CG_N2 requests through a fresh
# process, and the difference of the two instruction counts over CG_N2 - CG_N1
# requests (start-up and shutdown cancel).
CG_N1=${CG_N1:-200} CG_N2=${CG_N2:-2200}
[[ $CG_N1 =~ ^[0-9]+$ && $CG_N2 =~ ^[0-9]+$ ]] && ((CG_N2 > CG_N1)) || die "CG_N1 and CG_N2 must be whole numbers with CG_N2 > CG_N1"

read -ra CG_EXTRA <<<"${CG_PROXY_ARGS:-}"
CG_EXTRA=("${CG_EXTRA[@]/UPSTREAM_PORT/$P_UPSTREAM}")
cg_prepare() {
  if ! command -v valgrind >/dev/null; then
    [[ -n ${SKIP_INSTALL:-} ]] && die "valgrind missing (apt-get install valgrind), or CG=0 to skip the instruction counts"
    log "installing valgrind (apt-get)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >/dev/null
  fi
  log "instructions per request under callgrind ($CG_N1 and $CG_N2 requests, oha -c $CG_CONCURRENCY)"
}

# count_instructions SETUP [RUN]: SETUP is or_VARIANT-PROTO. Writes
# $RES/instr-SETUP.json (instr-SETUP.runRUN.json for RUN > 1) and sets
# CG_PER_REQUEST to the instructions per request.
count_instructions() {
  local s=$1 run=${2:-1}
  local v=${s%-*} proto=${s##*-} tag='' n name c deadline
  v=${v#or_}
  ((run > 1)) && tag=.run$run
  sed -e "s/127.0.0.1:${P_OR[$v]}\"/127.0.0.1:$P_CG\"/" -e "s/127.0.0.1:${P_OR_ADMIN[$v]}\"/127.0.0.1:$P_CG_ADMIN\"/" \
    "$CONF/outrigger-$v.yaml" >"$CONF/cg-$v.yaml"
  local oha_proto=() counts=()
  [[ $proto == h2 ]] && oha_proto=(--http2)
  for n in "$CG_N1" "$CG_N2"; do
    name="cg_${s}${tag}_$n"
    start "$name" valgrind --tool=callgrind --callgrind-out-file="$RES/cg-$s$tag-$n.out" \
      "$PROXY" run --config "$CONF/cg-$v.yaml" --threads 1 --log-level warn "${CG_EXTRA[@]}"
    deadline=$((SECONDS + 120))
    until curl -fsS -o /dev/null --max-time 2 "http://127.0.0.1:$P_CG_ADMIN/ready" 2>/dev/null; do
      alive "${PID[$name]}" || die "the callgrind proxy for $s exited (log: $LOGS/$name.log)"
      ((SECONDS < deadline)) || die "the callgrind proxy for $s was not ready after 120 s"
      sleep 0.2
    done
    timeout 300 "$OHA" -n "$n" -c "$CG_CONCURRENCY" --no-tui --output-format json "${oha_proto[@]}" "http://127.0.0.1:$P_CG/" >"$RES/cg-$s$tag-$n.oha.json" \
      || die "oha against the callgrind proxy for $s failed"
    # Every request must have been answered 200, or the count is not per request.
    python3 -c 'import json, sys; d = json.load(open(sys.argv[1])); sys.exit(d.get("statusCodeDistribution") != {"200": int(sys.argv[2])})' \
      "$RES/cg-$s$tag-$n.oha.json" "$n" || die "not every request through the callgrind proxy for $s answered 200 (see $RES/cg-$s$tag-$n.oha.json)"
    kill -INT "${PID[$name]}"
    wait "${PID[$name]}" 2>/dev/null || true
    c=$(sed -n 's/.*Collected : \([0-9]*\).*/\1/p' "$LOGS/$name.log" | head -n 1)
    [[ -n $c ]] || die "no instruction count in $LOGS/$name.log"
    counts+=("$c")
  done
  printf '{"setup": "%s", "n1": %s, "i1": %s, "n2": %s, "i2": %s}\n' "$s" "$CG_N1" "${counts[0]}" "$CG_N2" "${counts[1]}" >"$RES/instr-$s$tag.json"
  CG_PER_REQUEST=$(((counts[1] - counts[0]) / (CG_N2 - CG_N1)))
  log "  $s${tag:+ (run $run)}: $CG_PER_REQUEST instructions per request"
}

LOADAVG_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
# ---------------------------------------------------------------------------
# 3. Start everything and wait for readiness (polling, bounded)
log "starting upstream and proxies (proxy workers: $THREADS, upstream threads: $UPSTREAM_THREADS)"
start upstream "$UPSTREAM" --listen "127.0.0.1:$P_UPSTREAM" --name bench-upstream --threads "$UPSTREAM_THREADS"
start or_server "$PROXY" run --config "$CONF/outrigger-server.yaml" --threads "$THREADS" --log-level warn

if ((CG_ONLY)); then
  # The instruction counts alone: the callgrind client side talks to this
  # server side, as in the full run; nothing else runs.
  wait_url upstream "http://127.0.0.1:$P_UPSTREAM/"
  wait_url or_server "http://127.0.0.1:$P_OR_SERVER_ADMIN/ready"
  cg_prepare
  summary=()
  for proto in "${PROTOS[@]}"; do
    for v in "${VARIANTS[@]}"; do
      s=or_$v-$proto per_run=()
      for ((run = 1; run <= CG_RUNS; run++)); do
        count_instructions "$s" "$run"
        per_run+=("$CG_PER_REQUEST")
      done
      # setup, median over the runs, every run, and the spread (max - min) against the median
      summary+=("$(printf '%s\n' "${per_run[@]}" | sort -n | awk -v s="$s" -v runs="${per_run[*]}" '
        { x[NR] = $1 }
        END {
          m = NR % 2 ? x[(NR + 1) / 2] : int((x[NR / 2] + x[NR / 2 + 1]) / 2)
          printf "%-14s %8d   runs: %s", s, m, runs
          if (NR > 1) printf "   spread %d (%.2f %%)", x[NR] - x[1], 100 * (x[NR] - x[1]) / m
        }')")
    done
  done
  machine_info "$OUT/machine.txt" "$LOADAVG_BEFORE"
  {
    echo "# client-side instructions per request under callgrind: (I($CG_N2 requests) - I($CG_N1 requests)) / $((CG_N2 - CG_N1)), oha -c $CG_CONCURRENCY"
    echo "# setup, median over $CG_RUNS run(s), each run, spread"
    echo "# outrigger: $BUILT_FROM${CG_PROXY_ARGS:+, client side with: ${CG_EXTRA[*]}}"
    printf '%s\n' "${summary[@]}"
  } >"$RES/instructions.txt"
  log "instructions per request (written to $RES/instructions.txt):"
  printf '%s\n' "${summary[@]}"
  exit 0
fi

for v in "${VARIANTS[@]}"; do
  start "or_$v" "$PROXY" run --config "$CONF/outrigger-$v.yaml" --threads "$THREADS" --log-level warn
done
for f in server off on; do
  start "en_$f" "$ENVOY" -c "$CONF/envoy-$f.yaml" --concurrency "$THREADS" --disable-hot-restart --log-level warn
done

wait_url upstream "http://127.0.0.1:$P_UPSTREAM/"
wait_url or_server "http://127.0.0.1:$P_OR_SERVER_ADMIN/ready"
for v in "${VARIANTS[@]}"; do wait_url "or_$v" "http://127.0.0.1:${P_OR_ADMIN[$v]}/ready"; done
wait_url en_server "http://127.0.0.1:$P_EN_SERVER_ADMIN/ready"
wait_url en_off "http://127.0.0.1:$P_EN_OFF_ADMIN/ready"
wait_url en_on "http://127.0.0.1:$P_EN_ON_ADMIN/ready"

# ---------------------------------------------------------------------------
# Setups: NAME -> URL, oha protocol flag, processes measured (client side first)
declare -A URL=() H2=() PIDS_OF=()
setup() { URL[$1]=$2; H2[$1]=$3; PIDS_OF[$1]=$4; }
U=http://127.0.0.1
ORDER=()
for proto in h1 h2; do
  h2=0; [[ $proto == h2 ]] && h2=1
  setup "direct-$proto" "$U:$P_UPSTREAM/" $h2 ""
  ORDER+=("direct-$proto")
  for v in "${VARIANTS[@]}"; do
    # HTTP/2 from the client: only the two ends (off, all), to keep the run short.
    [[ $proto == h2 && $v != off && $v != all ]] && continue
    setup "or_$v-$proto" "$U:${P_OR[$v]}/" $h2 "or_$v or_server"
    ORDER+=("or_$v-$proto")
  done
  setup "en_off-$proto" "$U:$P_EN_OFF/" $h2 "en_off en_server"
  setup "en_on-$proto" "$U:$P_EN_ON/" $h2 "en_on en_server"
  ORDER+=("en_off-$proto" "en_on-$proto")
done

for s in "${ORDER[@]}"; do
  if ((H2[$s])); then check_path "$s" "${URL[$s]}" --http2-prior-knowledge; else check_path "$s" "${URL[$s]}" --http1.1; fi
done
log "all paths answer"

idle_args=()
for n in upstream or_server "${VARIANTS[@]/#/or_}" en_server en_off en_on; do idle_args+=(--pid "$n=${PID[$n]}"); done
python3 "$HERE/measure.py" idle --out "$RES/idle.json" "${idle_args[@]}"

cat >"$OUT/settings.json" <<EOF
{"duration": "$DURATION", "warmup": "$WARMUP", "rounds": $ROUNDS, "threads": $THREADS, "upstream_threads": $UPSTREAM_THREADS,
 "concurrency": $CONCURRENCY, "lat_concurrency": $LAT_CONCURRENCY, "fixed_rate": $FIXED_RATE,
 "disturbed_cores": $DISTURBED_CORES, "variants": "${VARIANTS[*]}", "order": "${ORDER[*]}"}
EOF

# ---------------------------------------------------------------------------
# 4. Load: ROUNDS rounds, every setup once per round, in the same order.
for ((round = 1; round <= ROUNDS; round++)); do
  log "round $round/$ROUNDS: max throughput (-c $CONCURRENCY, after a $WARMUP warm-up) and $FIXED_RATE req/s (-c $LAT_CONCURRENCY) for each of ${#ORDER[@]} setups"
  for s in "${ORDER[@]}"; do
    proto=(); ((H2[$s])) && proto=(--http2)
    if ((WARMUP_S > 0)); then
      timeout $((WARMUP_S + 30)) "$OHA" -z "$WARMUP" --no-tui --output-format json "${proto[@]}" -c "$CONCURRENCY" "${URL[$s]}" >/dev/null \
        || die "warm-up of $s failed"
    fi
    run_oha "max$round" "$s" -c "$CONCURRENCY"
    run_oha "fixed$round" "$s" -c "$LAT_CONCURRENCY" -q "$FIXED_RATE" --latency-correction
  done
done

# ---------------------------------------------------------------------------
# 5. Instructions per request: each Outrigger client side again, alone, under
# callgrind (count_instructions above).
if [[ ${CG:-1} == 1 ]]; then
  cg_prepare
  for s in "${ORDER[@]}"; do
    [[ $s == or_* ]] || continue
    count_instructions "$s"
  done
fi

# ---------------------------------------------------------------------------
# 6. Report
machine_info "$OUT/machine.txt" "$LOADAVG_BEFORE"
python3 "$HERE/report_policies.py" --out-dir "$OUT" --report "$REPORT"
log "policy section written to $REPORT"
