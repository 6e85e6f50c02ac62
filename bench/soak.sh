#!/usr/bin/env bash
# Soak benchmark: mixed traffic for a long time through two Outrigger proxies
# over mutual TLS, following a control plane that keeps changing. Loopback
# only; not in CI.
#
#   bench/soak.sh                               # one hour, writes the soak section of BENCHMARKS.md
#   DURATION=5m RESTART_EVERY=2m bench/soak.sh  # the short version bench/run.sh runs
#
# Client (bench/src/bin/soak.rs) -> Outrigger outbound -> mTLS -> Outrigger
# inbound -> upstream (bench/src/bin/upstream.rs). Both proxies follow a
# folder-mode control plane, which is their CA, as in bench/run.sh. Traffic,
# at a modest steady rate (about 300 samples/s): HTTP/1.1 and HTTP/2 requests,
# gRPC-style bidirectional streams, WebSocket echo sessions, and opaque TCP
# echo connections (a Service declared opaque). Meanwhile:
#   - every EDIT_EVERY the VirtualService is rewritten, flipping its weights
#     between two subsets (of the same pods) and its timeout, so every version
#     keeps all traffic routable;
#   - every RESTART_EVERY the control plane is stopped (SIGTERM) and started
#     again on the same folder and CA;
#   - workload certificates live CERT_LIFETIME and the proxies renew them at
#     70 % of it (every ~2 min by default);
#   - every SAMPLE_EVERY the RSS (VmRSS) and open file descriptors of every
#     process, and the proxies' renewal and config counters, are recorded.
# Results: bench/out-soak/ (not committed) and the soak section of
# BENCHMARKS.md (bench/report_soak.py).
#
# Settings (environment):
#   DURATION=1h  EDIT_EVERY=10s  RESTART_EVERY=10m  CERT_LIFETIME=3m  SAMPLE_EVERY=10s
#                       durations as Ns, Nm or Nh
#   WARMUP              RSS and fds are judged from its end on (default: a fifth
#                       of DURATION, at least 30 s, at most 5 min)
#   BASE_PORT=18800     ports used: BASE_PORT .. BASE_PORT+15 on 127.0.0.1
#   OUT=bench/out-soak  REPORT=BENCHMARKS.md  THREADS=1 (proxy workers)
#   SKIP_INSTALL=1 SKIP_BUILD=1 BUILD_REF=<commit> (as in bench/run.sh)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
OUT=${OUT:-$HERE/out-soak}
LOGS=$OUT/logs
RES=$OUT/results
CONF=$OUT/config
# shellcheck source=harness.sh
source "$HERE/harness.sh"

dur() { # "1h", "5m", "30s" or "30" -> seconds
  [[ $1 =~ ^([0-9]+)([smh]?)$ ]] || die "durations are whole Ns, Nm or Nh, got '$1'"
  local n=${BASH_REMATCH[1]}
  case ${BASH_REMATCH[2]} in
    h) echo $((n * 3600)) ;;
    m) echo $((n * 60)) ;;
    *) echo "$n" ;;
  esac
}

DURATION=${DURATION:-1h}
EDIT_EVERY=${EDIT_EVERY:-10s}
RESTART_EVERY=${RESTART_EVERY:-10m}
CERT_LIFETIME=${CERT_LIFETIME:-3m}
SAMPLE_EVERY=${SAMPLE_EVERY:-10s}
BASE_PORT=${BASE_PORT:-18800}
THREADS=${THREADS:-1}
REPORT=${REPORT:-$ROOT/BENCHMARKS.md}
DURATION_S=$(dur "$DURATION")
EDIT_S=$(dur "$EDIT_EVERY")
RESTART_S=$(dur "$RESTART_EVERY")
SAMPLE_S=$(dur "$SAMPLE_EVERY")
CERT_S=$(dur "$CERT_LIFETIME")
if [[ -n ${WARMUP:-} ]]; then
  WARMUP_S=$(dur "$WARMUP")
else
  WARMUP_S=$((DURATION_S / 5)); ((WARMUP_S < 30)) && WARMUP_S=30; ((WARMUP_S > 300)) && WARMUP_S=300
fi
((DURATION_S > 0 && EDIT_S > 0 && RESTART_S > 0 && SAMPLE_S > 0 && CERT_S > 0)) || die "durations must be above 0"
((WARMUP_S < DURATION_S)) || die "WARMUP ($WARMUP_S s) must be shorter than DURATION ($DURATION_S s)"

P_UPSTREAM=$BASE_PORT P_TCP_ECHO=$((BASE_PORT + 1)) P_CP=$((BASE_PORT + 2))
P_CLIENT=$((BASE_PORT + 10)) P_CLIENT_TCP=$((BASE_PORT + 11)) P_CLIENT_ADMIN=$((BASE_PORT + 12))
P_SERVER=$((BASE_PORT + 13)) P_SERVER_TCP=$((BASE_PORT + 14)) P_SERVER_ADMIN=$((BASE_PORT + 15))
for p in $(seq "$BASE_PORT" $((BASE_PORT + 15))); do
  port_busy "$p" && die "127.0.0.1:$p is already in use; set BASE_PORT to another range"
done

prepare_binaries --outrigger-only --no-oha
[[ -x $SOAK ]] || die "the soak driver is missing: $SOAK"
rm -rf "$OUT" && mkdir -p "$LOGS" "$RES" "$CONF"
: >"$OUT/commands.txt"

# ---------------------------------------------------------------------------
# The mesh, as bench/run.sh writes it: Service bench-upstream (port 80, a name
# that declares no protocol, so each request keeps the client's: HTTP/1.1,
# HTTP/2, gRPC, WebSocket) and Service bench-tcp (port 81, opaque), both served
# by the server-side proxy of pod bench-upstream-0; STRICT mutual TLS. The
# VirtualService lives in its own file, rewritten every EDIT_EVERY.
TD=cluster.local
MESH=$CONF/mesh TOKENS=$CONF/tokens CA_DIR=$CONF/ca
mkdir -p "$MESH" "$TOKENS/bench"
printf 'soak-token-client\n' >"$TOKENS/bench/bench-client"
printf 'soak-token-upstream\n' >"$TOKENS/bench/bench-upstream"
cat >"$MESH/bench.yaml" <<EOF
apiVersion: v1
kind: Service
metadata: { name: bench-upstream, namespace: bench }
spec: { clusterIP: 10.96.0.10, ports: [{ name: web, port: 80 }] }
---
apiVersion: v1
kind: Endpoints
metadata: { name: bench-upstream, namespace: bench }
subsets:
  - addresses: [{ ip: 127.0.0.1, targetRef: { kind: Pod, name: bench-upstream-0 } }]
    ports: [{ name: web, port: $P_SERVER }]
---
apiVersion: v1
kind: Service
metadata: { name: bench-tcp, namespace: bench }
spec: { clusterIP: 10.96.0.11, ports: [{ name: tcp, port: 81 }] }
---
apiVersion: v1
kind: Endpoints
metadata: { name: bench-tcp, namespace: bench }
subsets:
  - addresses: [{ ip: 127.0.0.1, targetRef: { kind: Pod, name: bench-upstream-0 } }]
    ports: [{ name: tcp, port: $P_SERVER_TCP }]
---
apiVersion: v1
kind: Pod
metadata: { name: bench-upstream-0, namespace: bench, labels: { app: bench-upstream, track: soak } }
spec: { serviceAccountName: bench-upstream, containers: [{ name: app }, { name: outrigger-proxy }] }
---
apiVersion: v1
kind: Pod
metadata: { name: bench-client-0, namespace: bench, labels: { app: bench-client } }
spec: { serviceAccountName: bench-client, containers: [{ name: app }, { name: outrigger-proxy }] }
---
apiVersion: outrigger.dev/v1alpha1
kind: PeerAuthentication
metadata: { name: default, namespace: bench }
spec: { mtls: { mode: STRICT } }
---
apiVersion: outrigger.dev/v1alpha1
kind: DestinationRule
metadata: { name: bench-upstream, namespace: bench }
spec:
  host: bench-upstream
  subsets:
    - { name: a, labels: { app: bench-upstream } }
    - { name: b, labels: { track: soak } }
EOF
# route VERSION: the VirtualService, version a or b; both route everything.
route() {
  local wa=90 wb=10 timeout=30s
  if [[ $1 == b ]]; then wa=10 wb=90 timeout=31s; fi
  cat >"$CONF/route.yaml.tmp" <<EOF
apiVersion: outrigger.dev/v1alpha1
kind: VirtualService
metadata: { name: bench-upstream, namespace: bench }
spec:
  hosts: [bench-upstream]
  http:
    - timeout: $timeout
      headers: { response: { set: { x-soak-route: "$1" } } }
      route:
        - { destination: { host: bench-upstream, subset: a }, weight: $wa }
        - { destination: { host: bench-upstream, subset: b }, weight: $wb }
EOF
  mv "$CONF/route.yaml.tmp" "$MESH/route.yaml" # atomic: the control plane never reads half a file
}
route a
"$CONTROL_PLANE" check --folder "$MESH" >"$LOGS/cp-check.log" 2>&1 || { cat "$LOGS/cp-check.log" >&2; die "the soak's mesh folder does not check (log: $LOGS/cp-check.log)"; }
route b
"$CONTROL_PLANE" check --folder "$MESH" >>"$LOGS/cp-check.log" 2>&1 || { cat "$LOGS/cp-check.log" >&2; die "the soak's route b does not check (log: $LOGS/cp-check.log)"; }
route a

cat >"$CONF/client.yaml" <<EOF
version: "bootstrap"
proxy: { workload: bench-client, namespace: bench }
admin: { bind: "127.0.0.1:$P_CLIENT_ADMIN" }
listeners:
  - { name: outbound, direction: outbound, bind: "127.0.0.1:$P_CLIENT", target: { name: bench-upstream, namespace: bench, port: 80 } }
  - { name: outbound-tcp, direction: outbound, bind: "127.0.0.1:$P_CLIENT_TCP", target: { name: bench-tcp, namespace: bench, port: 81 } }
services:
  - { name: bench-upstream, namespace: bench, ports: [80], protocol: detect }
  - { name: bench-tcp, namespace: bench, ports: [81], protocol: opaque }
EOF
cat >"$CONF/server.yaml" <<EOF
version: "bootstrap"
proxy: { workload: bench-upstream, namespace: bench }
admin: { bind: "127.0.0.1:$P_SERVER_ADMIN" }
listeners:
  - { name: inbound, direction: inbound, bind: "127.0.0.1:$P_SERVER", app: "127.0.0.1:$P_UPSTREAM" }
  - { name: inbound-tcp, direction: inbound, bind: "127.0.0.1:$P_SERVER_TCP", app: "127.0.0.1:$P_TCP_ECHO", opaque_ports: [$P_TCP_ECHO] }
EOF
for f in client server; do
  "$PROXY" check --config "$CONF/$f.yaml" >/dev/null || die "generated $CONF/$f.yaml is not valid"
done

# ---------------------------------------------------------------------------
# Start
CP_ARGS=(run --folder "$MESH" --listen "127.0.0.1:$P_CP" --bootstrap-tokens "$TOKENS" --ca-dir "$CA_DIR"
  --trust-domain "$TD" --certificate-lifetime "${CERT_S}s" --log-level info)
CP_STARTS=0
start_cp() {
  CP_STARTS=$((CP_STARTS + 1))
  start control_plane "$CONTROL_PLANE" "${CP_ARGS[@]}"
  # Keep every incarnation's log: start truncates control_plane.log.
  CP_LOG_NO=$CP_STARTS
}
start_cp
wait_url control_plane "https://127.0.0.1:$P_CP/ready" --insecure
[[ -s $CA_DIR/roots.pem ]] || die "the control plane did not write its CA to $CA_DIR"

LOADAVG_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
start upstream "$UPSTREAM" --listen "127.0.0.1:$P_UPSTREAM" --tcp-echo "127.0.0.1:$P_TCP_ECHO" --name bench-upstream
meshed() { # meshed NAME CONFIG POD SERVICE_ACCOUNT
  start "$1" "$PROXY" run --config "$CONF/$2.yaml" --threads "$THREADS" --log-level info \
    --control-plane "127.0.0.1:$P_CP" --pod-name "$3" --pod-namespace bench \
    --trust-roots "$CA_DIR/roots.pem" --token-file "$TOKENS/bench/$4" --service-account "$4" --trust-domain "$TD"
}
meshed or_client client bench-client-0 bench-client
meshed or_server server bench-upstream-0 bench-upstream
wait_url upstream "http://127.0.0.1:$P_UPSTREAM/"
wait_url or_client "http://127.0.0.1:$P_CLIENT_ADMIN/ready"
wait_url or_server "http://127.0.0.1:$P_SERVER_ADMIN/ready"
check_path soak-h1 "http://127.0.0.1:$P_CLIENT/" --http1.1
check_path soak-h2 "http://127.0.0.1:$P_CLIENT/" --http2-prior-knowledge
log "all paths answer; soak for $DURATION_S s (edits every $EDIT_S s, control-plane restart every $RESTART_S s, certificates of $CERT_S s)"

cat >"$OUT/settings.json" <<EOF
{"duration_s": $DURATION_S, "edit_every_s": $EDIT_S, "restart_every_s": $RESTART_S, "cert_lifetime_s": $CERT_S,
 "sample_every_s": $SAMPLE_S, "warmup_s": $WARMUP_S, "threads": $THREADS}
EOF

start driver "$SOAK" --http "127.0.0.1:$P_CLIENT" --tcp "127.0.0.1:$P_CLIENT_TCP" \
  --duration "$DURATION_S" --out "$RES/driver.jsonl"

# ---------------------------------------------------------------------------
# The soak: one loop, once a second, edits, restarts and samples on their schedule.
metric() { # metric TEXT NAME [LABEL_FILTER]: the sum of the samples of NAME (0 when absent)
  awk -v n="$2" -v f="${3:-}" '
    $1 ~ "^"n"({|$)" && (f == "" || index($1, f)) { s += $NF }
    END { printf "%d\n", s }' <<<"$1"
}
EVENTS=$RES/events.jsonl SAMPLES=$RES/samples.jsonl
: >"$EVENTS"; : >"$SAMPLES"
event() { printf '{"t": %s, "event": "%s"%s}\n' "$1" "$2" "${3:+, $3}" >>"$EVENTS"; }
sample() { # sample T [FILE]: one line per process
  local n pid rss fds extra text v
  for n in control_plane upstream or_client or_server driver; do
    pid=${PID[$n]}
    alive "$pid" || continue
    rss=$(awk '/^VmRSS:/ { print $2 }' "/proc/$pid/status" 2>/dev/null || true)
    fds=$(find "/proc/$pid/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)
    extra=''
    case $n in
      or_client) v=P_CLIENT_ADMIN ;;
      or_server) v=P_SERVER_ADMIN ;;
      *) v='' ;;
    esac
    if [[ -n $v ]] && text=$(curl -fsS --max-time 2 "http://127.0.0.1:${!v}/metrics" 2>/dev/null); then
      extra=", \"renewals_ok\": $(metric "$text" outrigger_identity_renewals_total 'result="ok"')"
      extra+=", \"renewals_error\": $(metric "$text" outrigger_identity_renewals_total 'result="error"')"
      extra+=", \"config_applied\": $(metric "$text" outrigger_config_applied_total)"
      extra+=", \"config_rejected\": $(metric "$text" outrigger_config_rejected_total)"
      extra+=", \"cp_connected\": $(metric "$text" outrigger_control_plane_connected)"
      extra+=", \"cert_expiry\": $(metric "$text" outrigger_identity_cert_expiry_timestamp_seconds)"
    fi
    printf '{"t": %s, "name": "%s", "pid": %s, "rss_kib": %s, "fds": %s%s}\n' \
      "$1" "$n" "$pid" "${rss:-null}" "$fds" "$extra" >>"${2:-$SAMPLES}"
  done
}

T0=$SECONDS
version=a edits=0 restarts=0
next_edit=$EDIT_S next_restart=$RESTART_S next_sample=0
sample 0
next_sample=$SAMPLE_S
while alive "${PID[driver]}"; do
  sleep 1
  t=$((SECONDS - T0))
  for n in upstream or_client or_server; do
    alive "${PID[$n]}" || { tail -n 30 "$LOGS/$n.log" >&2; event "$t" died "\"name\": \"$n\""; die "$n died during the soak (log: $LOGS/$n.log)"; }
  done
  ((t < DURATION_S)) || continue # the driver is finishing its last sessions
  if ((t >= next_edit)); then
    if [[ $version == a ]]; then version=b; else version=a; fi
    route "$version"
    edits=$((edits + 1))
    event "$t" edit "\"version\": \"$version\""
    next_edit=$((next_edit + EDIT_S))
  fi
  if ((t >= next_restart)); then
    log "restarting the control plane (t=$t s)"
    event "$t" restart_begin
    kill -TERM "${PID[control_plane]}" 2>/dev/null || true
    deadline=$((SECONDS + 15))
    while alive "${PID[control_plane]}" && ((SECONDS < deadline)); do sleep 0.1; done
    alive "${PID[control_plane]}" && kill -KILL "${PID[control_plane]}"
    wait "${PID[control_plane]}" 2>/dev/null || true
    mv "$LOGS/control_plane.log" "$LOGS/control_plane.$CP_LOG_NO.log"
    start_cp
    wait_url control_plane "https://127.0.0.1:$P_CP/ready" --insecure
    restarts=$((restarts + 1))
    event "$((SECONDS - T0))" restart_ready "\"pid\": ${PID[control_plane]}"
    next_restart=$((next_restart + RESTART_S))
  fi
  if ((t >= next_sample)); then
    sample "$t"
    next_sample=$((next_sample + SAMPLE_S))
  fi
done
wait "${PID[driver]}" || die "the soak driver failed (log: $LOGS/driver.log)"
# Once the traffic has stopped: kept apart from the samples under traffic.
sample "$((SECONDS - T0))" "$RES/samples-after.jsonl"
log "soak done: $edits config edits, $restarts control-plane restarts"
grep -h 'soak: .* samples' "$LOGS/driver.log" >&2 || true

machine_info "$OUT/machine.txt" "$LOADAVG_BEFORE"
python3 "$HERE/report_soak.py" --results "$RES" --settings "$OUT/settings.json" --machine "$OUT/machine.txt" \
  --logs "$LOGS" --report "$REPORT"
log "report written to $REPORT"
