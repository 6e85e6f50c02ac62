#!/usr/bin/env bash
# Outrigger benchmark: one command, loopback only (127.0.0.1).
#
#   bench/run.sh                      # full run (about 18 minutes), writes BENCHMARKS.md
#   DURATION=3s bench/run.sh          # quick check of the harness
#
# Compares, under the same load from oha:
#   - direct to the upstream (the physical limit), HTTP/1.1 and HTTP/2;
#   - two hops with mutual TLS between the proxies: Outrigger outbound ->
#     Outrigger inbound -> upstream, and the same shape with two Envoys (HTTP/2
#     over TLS 1.3 between the proxies), for HTTP/1.1 and HTTP/2 (prior
#     knowledge) from the client. Outrigger's proxies follow a folder-mode
#     control plane, which is their CA; Envoy's certificates come from the same
#     CA (openssl);
#   - new connections: one request per connection (oha --disable-keepalive)
#     through two proxies splicing TCP, so that every client connection costs a
#     handshake between the proxies: mutual TLS, and plaintext for reference;
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
#   BASE_PORT=18000       ports used: BASE_PORT .. BASE_PORT+50 on 127.0.0.1
#   SKIP_INSTALL=1        do not install missing tools
#   SKIP_BUILD=1          use the release binaries already built
#   BUILD_REF=HEAD        build that commit (exported clean to /tmp, target/bench-ref) instead of the work tree
#   REPORT=path           where to write the report (default: BENCHMARKS.md at the repo root)
#   SOAK=5m               then a short soak (bench/soak.sh: mixed traffic under config edits,
#                         control-plane restarts every 2/5 of it and certificate renewals), its own
#                         section; 60s by default when DURATION is under 15s; SOAK=0 skips it

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
SOAK=${SOAK:-}


source "$HERE/harness.sh"

DURATION_S=$(secs_of "$DURATION")
WARMUP_S=$(secs_of "$WARMUP")
secs_of "$PROBE" >/dev/null
[[ $PROBE_STEPS =~ ^[1-9][0-9]*$ ]] || die "PROBE_STEPS must be a positive integer"
[[ $THREADS =~ ^[1-9][0-9]*$ ]] || die "THREADS must be a positive integer"
[[ $UPSTREAM_THREADS =~ ^[1-9][0-9]*$ ]] || die "UPSTREAM_THREADS must be a positive integer"
if [[ -z $SOAK ]]; then
  if ((DURATION_S < 15)); then SOAK=60s; else SOAK=5m; fi
fi
[[ $SOAK =~ ^([0-9]+)([sm]?)$ ]] || die "SOAK must be 0, Ns or Nm, got '$SOAK'"
SOAK_S=${BASH_REMATCH[1]}
[[ ${BASH_REMATCH[2]} == m ]] && SOAK_S=$((SOAK_S * 60))

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
P_CP=$((BASE_PORT + 5))
# The connection benchmark's pairs: Outrigger mTLS, Outrigger plaintext, Envoy mTLS, Envoy plaintext.
P_OR_TCP_CLIENT=$((BASE_PORT + 31)); P_OR_TCP_CLIENT_ADMIN=$((BASE_PORT + 32))
P_OR_TCP_SERVER=$((BASE_PORT + 33)); P_OR_TCP_SERVER_ADMIN=$((BASE_PORT + 34))
P_OR_PLAIN_CLIENT=$((BASE_PORT + 35)); P_OR_PLAIN_CLIENT_ADMIN=$((BASE_PORT + 36))
P_OR_PLAIN_SERVER=$((BASE_PORT + 37)); P_OR_PLAIN_SERVER_ADMIN=$((BASE_PORT + 38))
P_EN_TCP_CLIENT=$((BASE_PORT + 40)); P_EN_TCP_CLIENT_ADMIN=$((BASE_PORT + 41))
P_EN_TCP_SERVER=$((BASE_PORT + 42)); P_EN_TCP_SERVER_ADMIN=$((BASE_PORT + 43))
P_EN_PLAIN_CLIENT=$((BASE_PORT + 44)); P_EN_PLAIN_CLIENT_ADMIN=$((BASE_PORT + 45))
P_EN_PLAIN_SERVER=$((BASE_PORT + 46)); P_EN_PLAIN_SERVER_ADMIN=$((BASE_PORT + 47))
ALL_PORTS=($P_UPSTREAM $P_CP $P_OR_CLIENT $P_OR_CLIENT_ADMIN $P_OR_SERVER $P_OR_SERVER_ADMIN
  $P_OR_SINGLE $P_OR_SINGLE_ADMIN $P_EN_CLIENT $P_EN_CLIENT_ADMIN $P_EN_SERVER
  $P_EN_SERVER_ADMIN $P_EN_SINGLE $P_EN_SINGLE_ADMIN $P_HAPROXY
  $P_OR_TCP_CLIENT $P_OR_TCP_CLIENT_ADMIN $P_OR_TCP_SERVER $P_OR_TCP_SERVER_ADMIN
  $P_OR_PLAIN_CLIENT $P_OR_PLAIN_CLIENT_ADMIN $P_OR_PLAIN_SERVER $P_OR_PLAIN_SERVER_ADMIN
  $P_EN_TCP_CLIENT $P_EN_TCP_CLIENT_ADMIN $P_EN_TCP_SERVER $P_EN_TCP_SERVER_ADMIN
  $P_EN_PLAIN_CLIENT $P_EN_PLAIN_CLIENT_ADMIN $P_EN_PLAIN_SERVER $P_EN_PLAIN_SERVER_ADMIN)
TD=cluster.local
CLIENT_ID=spiffe://$TD/ns/bench/sa/bench-client
SERVER_ID=spiffe://$TD/ns/bench/sa/bench-upstream

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


# Outrigger, two hops with mTLS: both proxies follow a control plane in
# folder mode, which is the mesh CA (bootstrap tokens instead of
# ServiceAccount tokens) and streams their config, as in a cluster. The folder
# says: Service bench-upstream (port 80, HTTP) whose endpoint is the
# server-side proxy's inbound listener, in a meshed pod with ServiceAccount
# bench-upstream (so the client-side proxy expects that SPIFFE identity and
# sends HTTP/2 over mTLS), and Service bench-tcp (port 81, opaque) for the
# connection benchmark; PeerAuthentication STRICT for the namespace. The
# proxies' own files are bootstraps: listeners and admin.
MESH=$CONF/mesh TOKENS=$CONF/tokens CA_DIR=$CONF/ca CERTS=$CONF/certs
mkdir -p "$MESH" "$TOKENS/bench" "$CERTS"
printf 'bench-token-client\n' >"$TOKENS/bench/bench-client"
printf 'bench-token-upstream\n' >"$TOKENS/bench/bench-upstream"
cat >"$MESH/bench.yaml" <<EOF
apiVersion: v1
kind: Service
metadata: { name: bench-upstream, namespace: bench }
spec: { clusterIP: 10.96.0.10, ports: [{ name: http, port: 80 }] }
---
apiVersion: v1
kind: Endpoints
metadata: { name: bench-upstream, namespace: bench }
subsets:
  - addresses: [{ ip: 127.0.0.1, targetRef: { kind: Pod, name: bench-upstream-0 } }]
    ports: [{ name: http, port: $P_OR_SERVER }]
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
  - addresses: [{ ip: 127.0.0.1, targetRef: { kind: Pod, name: bench-tcp-0 } }]
    ports: [{ name: tcp, port: $P_OR_TCP_SERVER }]
---
apiVersion: v1
kind: Pod
metadata: { name: bench-upstream-0, namespace: bench, labels: { app: bench-upstream } }
spec: { serviceAccountName: bench-upstream, containers: [{ name: app }, { name: outrigger-proxy }] }
---
apiVersion: v1
kind: Pod
metadata: { name: bench-tcp-0, namespace: bench, labels: { app: bench-tcp } }
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
EOF
"$CONTROL_PLANE" check --folder "$MESH" >"$LOGS/cp-check.log" 2>&1 || { cat "$LOGS/cp-check.log" >&2; die "the benchmark's mesh folder does not check"; }
client_bootstrap() { # client_bootstrap FILE LISTEN ADMIN SERVICE PORT PROTOCOL
  cat >"$1" <<EOF
version: "bootstrap"
proxy: { workload: bench-client, namespace: bench }
admin: { bind: "127.0.0.1:$3" }
listeners:
  - { name: outbound, direction: outbound, bind: "127.0.0.1:$2", target: { name: $4, namespace: bench, port: $5 } }
services:
  - { name: $4, namespace: bench, ports: [$5], protocol: $6 }
EOF
}
server_bootstrap() { # server_bootstrap FILE LISTEN ADMIN [OPAQUE_PORT]
  cat >"$1" <<EOF
version: "bootstrap"
proxy: { workload: bench-upstream, namespace: bench }
admin: { bind: "127.0.0.1:$3" }
listeners:
  - { name: inbound, direction: inbound, bind: "127.0.0.1:$2", app: "127.0.0.1:$P_UPSTREAM"${4:+, opaque_ports: [$4]} }
EOF
}
client_bootstrap "$CONF/outrigger-client.yaml" "$P_OR_CLIENT" "$P_OR_CLIENT_ADMIN" bench-upstream 80 detect
server_bootstrap "$CONF/outrigger-server.yaml" "$P_OR_SERVER" "$P_OR_SERVER_ADMIN"
client_bootstrap "$CONF/outrigger-tcp-client.yaml" "$P_OR_TCP_CLIENT" "$P_OR_TCP_CLIENT_ADMIN" bench-tcp 81 opaque
server_bootstrap "$CONF/outrigger-tcp-server.yaml" "$P_OR_TCP_SERVER" "$P_OR_TCP_SERVER_ADMIN" "$P_UPSTREAM"
# The plaintext reference of the connection benchmark: static snapshots, no identity.
cat >"$CONF/outrigger-plain-client.yaml" <<EOF
version: "bench-1"
proxy: { workload: bench-client, namespace: bench }
admin: { bind: "127.0.0.1:$P_OR_PLAIN_CLIENT_ADMIN" }
listeners:
  - { name: outbound, direction: outbound, bind: "127.0.0.1:$P_OR_PLAIN_CLIENT", target: { name: bench-tcp, namespace: bench, port: 81 } }
services:
  - name: bench-tcp
    namespace: bench
    ports: [81]
    protocol: opaque
    endpoints:
      - { address: "127.0.0.1:$P_OR_PLAIN_SERVER", workload: bench-tcp, meshed: true }
EOF
server_bootstrap "$CONF/outrigger-plain-server.yaml" "$P_OR_PLAIN_SERVER" "$P_OR_PLAIN_SERVER_ADMIN" "$P_UPSTREAM"
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
for f in client server tcp-client tcp-server plain-client plain-server single; do
  "$PROXY" check --config "$CONF/outrigger-$f.yaml" >/dev/null || die "generated $CONF/outrigger-$f.yaml is not valid"
done

# The control plane first: it makes the CA (in $CA_DIR), from which Envoy's
# certificates are then minted.
start control_plane "$CONTROL_PLANE" run --folder "$MESH" --listen "127.0.0.1:$P_CP" \
  --bootstrap-tokens "$TOKENS" --ca-dir "$CA_DIR" --trust-domain "$TD" --log-level warn
wait_url control_plane "https://127.0.0.1:$P_CP/ready" --insecure
[[ -s $CA_DIR/ca.pem && -s $CA_DIR/ca.key && -s $CA_DIR/roots.pem ]] || die "the control plane did not write its CA to $CA_DIR"

mint() { # mint NAME SPIFFE_ID: an ECDSA P-256 workload certificate from the mesh CA, as Outrigger's
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/O=Outrigger bench" \
    -keyout "$CERTS/$1.key" -out "$CERTS/$1.csr" 2>>"$LOGS/openssl.log" || die "openssl req for $1 failed (log: $LOGS/openssl.log)"
  printf 'subjectAltName=critical,URI:%s\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\nbasicConstraints=critical,CA:FALSE\n' "$2" >"$CERTS/$1.ext"
  openssl x509 -req -in "$CERTS/$1.csr" -CA "$CA_DIR/ca.pem" -CAkey "$CA_DIR/ca.key" -CAcreateserial -days 2 -sha256 \
    -extfile "$CERTS/$1.ext" -out "$CERTS/$1.leaf.pem" 2>>"$LOGS/openssl.log" || die "openssl x509 for $1 failed (log: $LOGS/openssl.log)"
  cat "$CERTS/$1.leaf.pem" "$CA_DIR/ca.pem" >"$CERTS/$1.pem"
}
mint envoy-client "$CLIENT_ID"
mint envoy-server "$SERVER_ID"
EN_CLIENT_TLS=(CERT="$CERTS/envoy-client.pem" KEY="$CERTS/envoy-client.key" ROOTS="$CA_DIR/roots.pem" PEER_ID="$SERVER_ID")
EN_SERVER_TLS=(CERT="$CERTS/envoy-server.pem" KEY="$CERTS/envoy-server.key" ROOTS="$CA_DIR/roots.pem" TRUST_DOMAIN="$TD")

render "$HERE/envoy/client-side-mtls.yaml.tmpl" "$CONF/envoy-client.yaml" \
  ADMIN_PORT=$P_EN_CLIENT_ADMIN LISTEN_PORT=$P_EN_CLIENT UPSTREAM_PORT=$P_EN_SERVER "${EN_CLIENT_TLS[@]}"
render "$HERE/envoy/server-side-mtls.yaml.tmpl" "$CONF/envoy-server.yaml" \
  NODE_ID=bench-server-side ADMIN_PORT=$P_EN_SERVER_ADMIN LISTEN_PORT=$P_EN_SERVER UPSTREAM_PORT=$P_UPSTREAM "${EN_SERVER_TLS[@]}"
render "$HERE/envoy/server-side.yaml.tmpl" "$CONF/envoy-single.yaml" \
  NODE_ID=bench-single-hop ADMIN_PORT=$P_EN_SINGLE_ADMIN LISTEN_PORT=$P_EN_SINGLE UPSTREAM_PORT=$P_UPSTREAM
render "$HERE/envoy/tcp-client-mtls.yaml.tmpl" "$CONF/envoy-tcp-client.yaml" \
  NODE_ID=bench-tcp-client ADMIN_PORT=$P_EN_TCP_CLIENT_ADMIN LISTEN_PORT=$P_EN_TCP_CLIENT UPSTREAM_PORT=$P_EN_TCP_SERVER "${EN_CLIENT_TLS[@]}"
render "$HERE/envoy/tcp-server-mtls.yaml.tmpl" "$CONF/envoy-tcp-server.yaml" \
  NODE_ID=bench-tcp-server ADMIN_PORT=$P_EN_TCP_SERVER_ADMIN LISTEN_PORT=$P_EN_TCP_SERVER UPSTREAM_PORT=$P_UPSTREAM "${EN_SERVER_TLS[@]}"
render "$HERE/envoy/tcp-client.yaml.tmpl" "$CONF/envoy-plain-client.yaml" \
  NODE_ID=bench-plain-client ADMIN_PORT=$P_EN_PLAIN_CLIENT_ADMIN LISTEN_PORT=$P_EN_PLAIN_CLIENT UPSTREAM_PORT=$P_EN_PLAIN_SERVER
render "$HERE/envoy/tcp-server.yaml.tmpl" "$CONF/envoy-plain-server.yaml" \
  NODE_ID=bench-plain-server ADMIN_PORT=$P_EN_PLAIN_SERVER_ADMIN LISTEN_PORT=$P_EN_PLAIN_SERVER UPSTREAM_PORT=$P_UPSTREAM
render "$HERE/haproxy/haproxy.cfg.tmpl" "$CONF/haproxy.cfg" \
  THREADS=$THREADS LISTEN_PORT=$P_HAPROXY UPSTREAM_PORT=$P_UPSTREAM
"$HAPROXY" -c -q -f "$CONF/haproxy.cfg" || die "generated haproxy.cfg is not valid"
for f in client server single tcp-client tcp-server plain-client plain-server; do
  "$ENVOY" --mode validate -c "$CONF/envoy-$f.yaml" --log-level error >/dev/null || die "generated envoy-$f.yaml is not valid"
done

LOADAVG_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
# ---------------------------------------------------------------------------
# 3. Start everything and wait for readiness (polling, bounded)
log "starting upstream and proxies (proxy workers: $THREADS, upstream threads: $UPSTREAM_THREADS)"
start upstream "$UPSTREAM" --listen "127.0.0.1:$P_UPSTREAM" --name bench-upstream --threads "$UPSTREAM_THREADS"
orig() { start "$1" "$PROXY" run --config "$CONF/outrigger-$2.yaml" --threads "$THREADS" --log-level warn "${@:3}"; }
meshed() { # meshed NAME CONFIG POD SERVICE_ACCOUNT: a proxy with an identity, following the control plane
  orig "$1" "$2" --control-plane "127.0.0.1:$P_CP" --pod-name "$3" --pod-namespace bench \
    --trust-roots "$CA_DIR/roots.pem" --token-file "$TOKENS/bench/$4" --service-account "$4" --trust-domain "$TD"
}
meshed or_client client bench-client-0 bench-client
meshed or_server server bench-upstream-0 bench-upstream
meshed or_tcp_client tcp-client bench-client-0 bench-client
meshed or_tcp_server tcp-server bench-tcp-0 bench-upstream
orig or_plain_client plain-client
orig or_plain_server plain-server
orig or_single single
# --disable-hot-restart: no shared-memory region, so several Envoys coexist.
env_start() {
  start "$1" "$ENVOY" -c "$CONF/envoy-$2.yaml" --concurrency "$THREADS" --disable-hot-restart --log-level warn
}
env_start en_client client
env_start en_server server
env_start en_single single
env_start en_tcp_client tcp-client
env_start en_tcp_server tcp-server
env_start en_plain_client plain-client
env_start en_plain_server plain-server
start haproxy "$HAPROXY" -db -f "$CONF/haproxy.cfg"

wait_url upstream "http://127.0.0.1:$P_UPSTREAM/"
wait_url or_client "http://127.0.0.1:$P_OR_CLIENT_ADMIN/ready"
wait_url or_server "http://127.0.0.1:$P_OR_SERVER_ADMIN/ready"
wait_url or_single "http://127.0.0.1:$P_OR_SINGLE_ADMIN/ready"
wait_url en_client "http://127.0.0.1:$P_EN_CLIENT_ADMIN/ready"
wait_url en_server "http://127.0.0.1:$P_EN_SERVER_ADMIN/ready"
wait_url en_single "http://127.0.0.1:$P_EN_SINGLE_ADMIN/ready"
wait_url haproxy "http://127.0.0.1:$P_HAPROXY/"
for n in or_tcp_client or_tcp_server or_plain_client or_plain_server en_tcp_client en_tcp_server en_plain_client en_plain_server; do
  v=P_${n^^}_ADMIN; wait_url "$n" "http://127.0.0.1:${!v}/ready"
done

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
# New connections (HTTP/1.1, one request per connection), through TCP splices.
setup direct-conn            "$U:$P_UPSTREAM/"          0 ""
setup outrigger2tls-conn     "$U:$P_OR_TCP_CLIENT/"     0 "or_tcp_client or_tcp_server"
setup envoy2tls-conn         "$U:$P_EN_TCP_CLIENT/"     0 "en_tcp_client en_tcp_server"
setup outrigger2plain-conn   "$U:$P_OR_PLAIN_CLIENT/"   0 "or_plain_client or_plain_server"
setup envoy2plain-conn       "$U:$P_EN_PLAIN_CLIENT/"   0 "en_plain_client en_plain_server"
CONN_ORDER=(direct-conn outrigger2tls-conn envoy2tls-conn outrigger2plain-conn envoy2plain-conn)

for s in "${ORDER[@]}" "${CONN_ORDER[@]}"; do
  if ((H2[$s])); then check_path "$s" "${URL[$s]}" --http2-prior-knowledge; else check_path "$s" "${URL[$s]}" --http1.1; fi
done
log "all paths answer"


# Idle RSS, after start-up and one request through each path.
idle_args=()
for n in upstream control_plane or_client or_server or_single en_client en_server en_single haproxy \
  or_tcp_client or_tcp_server or_plain_client or_plain_server en_tcp_client en_tcp_server en_plain_client en_plain_server; do
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

log "phase 1b: new connections, oha --disable-keepalive for $DURATION at -c $CONCURRENCY (after a $WARMUP warm-up), and at $FIXED_RATE conn/s"
for s in "${CONN_ORDER[@]}"; do
  if ((WARMUP_S > 0)); then
    timeout $((WARMUP_S + 30)) "$OHA" -z "$WARMUP" --no-tui --output-format json --disable-keepalive -c "$CONCURRENCY" "${URL[$s]}" >/dev/null \
      || die "warm-up of $s failed"
  fi
  run_oha conn "$s" -c "$CONCURRENCY" --disable-keepalive
  run_oha connfixed "$s" -c "$LAT_CONCURRENCY" -q "$FIXED_RATE" --latency-correction --disable-keepalive
done
# Mutual TLS must really have been on the wire for the mTLS setups, and off
# for the plaintext ones: the server sides' own counters say so.
for v in P_OR_SERVER_ADMIN P_OR_TCP_SERVER_ADMIN; do
  n=$(curl -fsS "http://127.0.0.1:${!v}/metrics" | python3 "$HERE/measure.py" mtls-connections)
  ((n > 0)) || die "the Outrigger proxy on admin port ${!v} counted no mutual TLS connection"
done
n=$(curl -fsS "http://127.0.0.1:$P_OR_PLAIN_SERVER_ADMIN/metrics" | python3 "$HERE/measure.py" mtls-connections)
((n == 0)) || die "the plaintext reference counted $n mutual TLS connections"
for v in P_EN_SERVER_ADMIN P_EN_TCP_SERVER_ADMIN; do
  curl -fsS "http://127.0.0.1:${!v}/stats?filter=ssl.handshake" | grep -Eq 'listener\..*ssl\.handshake: [1-9]' \
    || die "the Envoy on admin port ${!v} made no TLS handshake"
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

# ---------------------------------------------------------------------------
# 6. A short soak (bench/soak.sh, its own section of the report): restarts
# scaled so that it sees at least one, certificates short enough that it sees
# renewals. Its ports lie 800 above ours; the settings are passed explicitly
# so that this script's own (DURATION, WARMUP) do not leak into it.
if ((SOAK_S > 0)); then
  restart=$((SOAK_S * 2 / 5)); ((restart >= 20)) || restart=20
  cert=180; ((SOAK_S >= 300)) || cert=$((SOAK_S / 2 > 20 ? SOAK_S / 2 : 20))
  log "soak: $SOAK_S s of mixed traffic, control-plane restart every $restart s, certificates of $cert s (bench/soak.sh)"
  DURATION=${SOAK_S}s RESTART_EVERY=${restart}s CERT_LIFETIME=${cert}s EDIT_EVERY=10s WARMUP='' \
    BASE_PORT=$((BASE_PORT + 800)) THREADS=$THREADS REPORT=$REPORT SKIP_BUILD=1 SKIP_INSTALL=1 \
    BUILD_REF='' CARGO_TARGET_DIR=$TARGET_DIR PARENT_BUILT_FROM=$BUILT_FROM "$HERE/soak.sh" || die "the soak failed (logs: $HERE/out-soak/logs)"
fi
