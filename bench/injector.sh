#!/usr/bin/env bash
# Injector benchmark: the real webhook binary (local mode: namespaces from a
# file, no API server) over HTTPS on loopback, with real AdmissionReview
# bodies. About two minutes.
#
#   bench/injector.sh                      # writes the injector section of BENCHMARKS.md
#   DURATION=5s ADMISSIONS=5000 bench/injector.sh   # quick check
#
#   - latency: oha at a fixed RATE (200) req/s for DURATION, -c 4, with
#     latency correction; then unthrottled for DURATION, -c 8, for headroom;
#   - memory: ADMISSIONS (100,000) admissions back to back, the injector's
#     VmRSS sampled every 100 ms against its own request counter.
# The injector is pinned to CPU 0 and oha to CPU 1. Every response is
# checked to carry a patch before the load starts.
#
# Settings (environment): RATE=200 DURATION=30s ADMISSIONS=100000
#   BASE_PORT=18500 SKIP_BUILD=1 (use the release binary already built)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
OUT=${OUT:-$HERE/out-injector}
LOGS=$OUT/logs
# shellcheck source=harness.sh
source "$HERE/harness.sh"

RATE=${RATE:-200}
DURATION=${DURATION:-30s}
ADMISSIONS=${ADMISSIONS:-100000}
BASE_PORT=${BASE_PORT:-18500}
P_WEBHOOK=$BASE_PORT P_ADMIN=$((BASE_PORT + 1))
secs_of "$DURATION" >/dev/null

[[ $(nproc) -ge 2 ]] || die "needs two CPUs (the injector and oha are pinned apart)"
command -v taskset >/dev/null || die "taskset missing (util-linux)"
command -v openssl >/dev/null || die "openssl missing"
if ! command -v oha >/dev/null; then
  [[ -n ${SKIP_INSTALL:-} ]] && die "oha missing (cargo install oha --locked)"
  log "installing oha (cargo install oha --locked; a few minutes)"
  cargo install oha --locked --quiet
fi
OHA=$(command -v oha)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
if [[ -z ${SKIP_BUILD:-} ]]; then
  log "building the release injector"
  (cd "$ROOT" && cargo build --release --quiet -p outrigger-injector) || die "cargo build failed"
  BUILT_FROM="work tree at git $(git -C "$ROOT" rev-parse --short=10 HEAD 2>/dev/null || echo unknown)"
  git -C "$ROOT" diff --quiet HEAD -- injector api 2>/dev/null || BUILT_FROM+=" with uncommitted changes in injector/ or api/"
else
  BUILT_FROM="SKIP_BUILD=1: binary already in $TARGET_DIR/release"
fi
INJECTOR=$TARGET_DIR/release/outrigger-injector
[[ -x $INJECTOR ]] || die "release binary missing: $INJECTOR"
for p in $P_WEBHOOK $P_ADMIN; do
  port_busy "$p" && die "127.0.0.1:$p is already in use; set BASE_PORT to another range"
done

rm -rf "$OUT" && mkdir -p "$LOGS"
CONF=$OUT/config && mkdir -p "$CONF"
: >"$OUT/commands.txt"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj "/CN=outrigger-injector" -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
  -keyout "$CONF/tls.key" -out "$CONF/tls.crt" 2>"$LOGS/openssl.log" || die "openssl failed (log: $LOGS/openssl.log)"
cat >"$CONF/mesh.yaml" <<EOF
proxyImage: ghcr.io/outrigger/proxy:bench
EOF
cat >"$CONF/namespaces.yaml" <<EOF
- metadata: { name: shop, annotations: { outrigger.dev/inject: enabled } }
EOF
# A Deployment's pod: two containers, probes on named and numbered ports,
# an init container, volumes, annotations.
python3 - "$CONF/review.json" <<'PY'
import json, sys
pod = {
    "apiVersion": "v1", "kind": "Pod",
    "metadata": {"generateName": "web-7d9f8b6c5d-", "namespace": "shop",
                 "labels": {"app": "web", "pod-template-hash": "7d9f8b6c5d"},
                 "annotations": {"config.outrigger.dev/opaque-ports": "3306"},
                 "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                      "name": "web-7d9f8b6c5d", "uid": "3f1c", "controller": True}]},
    "spec": {
        "serviceAccountName": "web",
        "initContainers": [{"name": "migrate", "image": "web:1", "command": ["/migrate"]}],
        "containers": [
            {"name": "web", "image": "web:1", "ports": [{"name": "http", "containerPort": 8080}],
             "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 10},
             "readinessProbe": {"tcpSocket": {"port": 8080}},
             "resources": {"requests": {"cpu": "250m", "memory": "128Mi"}},
             "volumeMounts": [{"name": "cache", "mountPath": "/cache"}]},
            {"name": "metrics", "image": "exporter:1", "ports": [{"containerPort": 9100}]},
        ],
        "volumes": [{"name": "cache", "emptyDir": {}}],
    },
}
review = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
    "uid": "0b9a3c2e-bench", "kind": {"group": "", "version": "v1", "kind": "Pod"},
    "resource": {"group": "", "version": "v1", "resource": "pods"}, "namespace": "shop",
    "operation": "CREATE", "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
    "object": pod, "oldObject": None, "dryRun": False}}
json.dump(review, open(sys.argv[1], "w"))
PY

log "starting the injector (CPU 0)"
start injector taskset -c 0 "$INJECTOR" run --config "$CONF/mesh.yaml" --trust-roots "$CONF/tls.crt" \
  --tls-cert "$CONF/tls.crt" --tls-key "$CONF/tls.key" --namespaces "$CONF/namespaces.yaml" \
  --listen "127.0.0.1:$P_WEBHOOK" --admin "127.0.0.1:$P_ADMIN" --log-level warn
wait_url injector "http://127.0.0.1:$P_ADMIN/ready"
URL="https://127.0.0.1:$P_WEBHOOK/mutate"
curl -fsS --cacert "$CONF/tls.crt" -H 'content-type: application/json' --data-binary "@$CONF/review.json" "$URL" \
  | python3 -c 'import json,sys; r=json.load(sys.stdin)["response"]; assert r["allowed"] and r["patchType"]=="JSONPatch" and r["patch"], r; print(len(r["patch"]))' \
  >"$OUT/patch-bytes.txt" || die "the injector did not answer the review with a patch"
log "a review is answered with a patch of $(cat "$OUT/patch-bytes.txt") base64 bytes"
MEASURE=(taskset -c 1 "$OHA" --no-tui --output-format json --insecure -m POST -T application/json -D "$CONF/review.json")
oha_run() { # oha_run NAME ARGS...: one measured run
  local name=$1; shift
  printf '%s\n' "${MEASURE[*]} $* $URL" >>"$OUT/commands.txt"
  "${MEASURE[@]}" "$@" "$URL" >"$OUT/$name.json" || die "oha failed ($name)"
}
log "latency at $RATE req/s for $DURATION"
oha_run fixed -z "$DURATION" -q "$RATE" -c 4 --latency-correction
log "unthrottled for $DURATION"
oha_run max -z "$DURATION" -c 8
log "memory over $ADMISSIONS admissions"
curl -fsS "http://127.0.0.1:$P_ADMIN/metrics" >"$OUT/metrics-before-memory.txt"
python3 - "${PID[injector]}" "$P_ADMIN" "$OUT/memory.jsonl" <<'PY' &
import json, sys, time, urllib.request
pid, admin, out = sys.argv[1], sys.argv[2], sys.argv[3]
with open(out, "w") as f:
    while True:
        try:
            rss = int(next(l for l in open(f"/proc/{pid}/status") if l.startswith("VmRSS:")).split()[1])
            text = urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=2).read().decode()
        except (OSError, StopIteration):
            break
        n = next((float(l.split()[-1]) for l in text.splitlines() if l.startswith("outrigger_injector_requests_total ")), 0.0)
        f.write(json.dumps({"t": time.time(), "requests": n, "rss_kb": rss}) + "\n")
        f.flush()
        time.sleep(0.1)
PY
SAMPLER=$!
STARTED+=("$SAMPLER")
oha_run memory -n "$ADMISSIONS" -c 8
sleep 0.3
kill "$SAMPLER" 2>/dev/null || true
{
  echo "nproc=$(nproc)"
  echo "cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)"
  echo "date=$(date -u +'%Y-%m-%d %H:%M UTC')"
  echo "outrigger=$BUILT_FROM"
  echo "oha=$("$OHA" --version | head -n 1)"
  echo "settings=RATE=$RATE DURATION=$DURATION ADMISSIONS=$ADMISSIONS"
} >"$OUT/machine.txt"
curl -fsS "http://127.0.0.1:$P_ADMIN/metrics" >"$OUT/metrics.txt"
python3 "$HERE/report_injector.py" --out-dir "$OUT" --report "$ROOT/BENCHMARKS.md"
log "report written to BENCHMARKS.md"
