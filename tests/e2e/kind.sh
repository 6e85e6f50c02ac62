#!/usr/bin/env bash
# The mesh on a real cluster: a kind cluster, the images built from
# this checkout, the CRD chart then the main chart installed with a mesh CA
# made here (in a kubernetes.io/tls Secret, the layout cert-manager writes),
# and a meshed namespace with a web service (two versions) and a client.
# Checks, each failing the run with what it saw:
#   1. shop's pods were injected (the proxy as a native sidecar, the init step);
#   2. the client reaches web's Service with no mesh settings of its own;
#   3. the hop is mutual TLS: web's proxy counts the client's SPIFFE identity;
#   4. a VirtualService sending everything to v2 applies, then a 50/50 one
#      splits traffic between v1 and v2;
#   5. PERMISSIVE lets an unmeshed client in, STRICT keeps it out while the
#      meshed client still gets through;
#   6. helm test passes (outrigger check, from the cli image, in the cluster);
#   7. helm upgrade of both charts while the client sends requests (this
#      checkout's charts and images over themselves, with changed values
#      that roll the control plane and the injector to new pods: the path
#      an upgrade takes, not a change of version): none fails, both
#      Deployments have new pods, and every proxy reconnects to the new
#      control plane;
#   8. the trust anchor rotated in the three Secret updates of
#      docs/security.md (the new root trusted beside the old, the new root
#      signs, the old root dropped) under the same load: no request fails,
#      every proxy renews its certificate at each step.
#
# Needs docker, kind, kubectl, helm and openssl. It cannot run on the
# project's CI machine (no Docker engine there); what it exercises is covered
# there by tests/tests/chart.rs (the rendered chart run against a stand-in
# API server), tests/tests/netns_mesh.rs (injected pods on network
# namespaces) and the crates' tests.
#
#   tests/e2e/kind.sh            # create, test, delete the cluster
#   KEEP=1 tests/e2e/kind.sh     # leave the cluster for a look around
set -euo pipefail
cd "$(dirname "$0")/../.."

CLUSTER=${CLUSTER:-outrigger-e2e}
# A new tag per run, so that a kept cluster never runs the images of an
# earlier run (IfNotPresent would keep them).
TAG=${TAG:-e2e-$(date +%s)}
NS=outrigger-system
WORK=$(mktemp -d)

for tool in docker kind kubectl helm openssl; do
  command -v "$tool" >/dev/null || { echo "kind.sh needs $tool on PATH" >&2; exit 2; }
done

cleanup() {
  local rc=$?
  if ((rc != 0)); then
    echo "--- failed; the mesh's logs:" >&2
    kubectl -n "$NS" logs deploy/outrigger-control-plane --tail=50 >&2 || true
    kubectl -n "$NS" logs deploy/outrigger-injector --tail=50 >&2 || true
    kubectl -n shop get pods -o wide >&2 || true
  fi
  if [[ -z "${KEEP:-}" ]]; then
    kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true
  else
    echo "cluster $CLUSTER kept (kind delete cluster --name $CLUSTER)"
  fi
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT

fail() { echo "FAIL: $*" >&2; exit 1; }
step() { echo "=== $*"; }

step "cluster $CLUSTER"
kind get clusters 2>/dev/null | grep -qx "$CLUSTER" \
  || kind create cluster --name "$CLUSTER" --wait 180s
kubectl config use-context "kind-$CLUSTER" >/dev/null

step "images (tag $TAG)"
for target in proxy proxy-init control-plane injector cli; do
  docker build --target "$target" -t "outrigger/$target:$TAG" \
    --build-arg OUTRIGGER_GIT_SHA="$(git rev-parse HEAD 2>/dev/null || echo unknown)" .
  kind load docker-image --name "$CLUSTER" "outrigger/$target:$TAG"
done

# A root CA: ECDSA P-256, self-signed, a year; the key as PKCS#8, which the
# control plane reads. new_root NAME writes $WORK/NAME.pem and $WORK/NAME.key.
new_root() {
  openssl ecparam -name prime256v1 -genkey -noout | openssl pkcs8 -topk8 -nocrypt -out "$WORK/$1.key"
  openssl req -x509 -new -key "$WORK/$1.key" -subj "/CN=outrigger e2e $1 $(date +%s)" -days 365 \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -out "$WORK/$1.pem"
}
# The mesh CA's Secret in cert-manager's layout (kubernetes.io/tls: tls.crt
# and tls.key sign, ca.crt is the trust bundle): ca_secret CERT KEY BUNDLE.
CA_SECRET=outrigger-mesh-ca
ca_secret() {
  kubectl -n "$NS" create secret generic "$CA_SECRET" --type=kubernetes.io/tls \
    --from-file=tls.crt="$1" --from-file=tls.key="$2" --from-file=ca.crt="$3" \
    --dry-run=client -o yaml | kubectl apply -f -
}

step "mesh CA"
kubectl create namespace "$NS" --dry-run=client -o yaml | kubectl apply -f -
if kubectl -n "$NS" get secret "$CA_SECRET" >/dev/null 2>&1; then
  # A kept cluster keeps its CA: a new root would cut the trust of every
  # pod that holds the old one.
  kubectl -n "$NS" get secret "$CA_SECRET" -o jsonpath='{.data.tls\.crt}' | base64 -d >"$WORK/ca.pem"
  kubectl -n "$NS" get secret "$CA_SECRET" -o jsonpath='{.data.tls\.key}' | base64 -d >"$WORK/ca.key"
  echo "reusing the cluster's CA"
elif kubectl -n "$NS" get secret outrigger-ca >/dev/null 2>&1; then
  # A cluster kept by an earlier version of this script: the chart made the
  # CA's Secret (outrigger-ca: ca.pem, ca.key) from values. Keep that CA, in
  # the new layout.
  kubectl -n "$NS" get secret outrigger-ca -o jsonpath='{.data.ca\.pem}' | base64 -d >"$WORK/ca.pem"
  kubectl -n "$NS" get secret outrigger-ca -o jsonpath='{.data.ca\.key}' | base64 -d >"$WORK/ca.key"
  ca_secret "$WORK/ca.pem" "$WORK/ca.key" "$WORK/ca.pem"
  echo "reusing the cluster's CA (from the chart's outrigger-ca)"
else
  new_root ca
  ca_secret "$WORK/ca.pem" "$WORK/ca.key" "$WORK/ca.pem"
fi

# The namespaces first: the injector lists them before it turns ready, so
# that shop's pods, created after the install, are surely injected.
step "namespaces"
kubectl create namespace shop --dry-run=client -o yaml | kubectl apply -f -
kubectl annotate namespace shop outrigger.dev/inject=enabled --overwrite
kubectl create namespace outside --dry-run=client -o yaml | kubectl apply -f -

step "helm install: the CRD chart, then the main chart"
# CRDs installed by an earlier version of this script (from the main
# chart's crds/) belong to no release: adopt them as docs/install.md says.
for crd in virtualservices destinationrules peerauthentications authorizationpolicies; do
  owner=$(kubectl get crd "$crd.outrigger.dev" --ignore-not-found \
    -o jsonpath='{.metadata.annotations.meta\.helm\.sh/release-name}')
  if kubectl get crd "$crd.outrigger.dev" >/dev/null 2>&1 && [[ -z "$owner" ]]; then
    kubectl label crd "$crd.outrigger.dev" app.kubernetes.io/managed-by=Helm --overwrite
    kubectl annotate crd "$crd.outrigger.dev" --overwrite \
      meta.helm.sh/release-name=outrigger-crds meta.helm.sh/release-namespace="$NS"
  fi
done
helm upgrade --install outrigger-crds charts/outrigger-crds -n "$NS" --wait
# Certificates for 2 minutes: each proxy renews at 70 % (84 s), so the CA
# rotation (8.) waits for renewals in minutes, not hours.
VALUES=(--set image.tag="$TAG" --set identity.certificateLifetime=2m
  --set identity.ca.existingSecret="$CA_SECRET" --set identity.ca.existingSecretLayout=tls)
helm upgrade --install outrigger charts/outrigger -n "$NS" "${VALUES[@]}" \
  --wait --timeout 5m

step "workloads"
kubectl -n shop delete virtualservice web --ignore-not-found
kubectl -n shop delete peerauthentication default --ignore-not-found
kubectl apply -f tests/e2e/shop.yaml
# On a kept cluster, pods of an earlier run would keep its proxies.
kubectl -n shop rollout restart deploy
for d in shop/web-v1 shop/web-v2 shop/client outside/client; do
  kubectl -n "${d%/*}" rollout status "deploy/${d#*/}" --timeout 180s
done

step "1. injection"
containers=$(kubectl -n shop get pod -l app=web,version=v1 \
  -o jsonpath='{.items[0].spec.initContainers[*].name}')
[[ " $containers " == *" outrigger-init "* && " $containers " == *" outrigger-proxy "* ]] \
  || fail "web-v1's init containers are [$containers], want outrigger-init and outrigger-proxy"
outside=$(kubectl -n outside get pod -l app=client -o jsonpath='{.items[0].spec.initContainers[*].name}')
[[ -z "$outside" ]] || fail "a pod of the unannotated namespace was injected: [$outside]"

meshed() { kubectl -n shop exec deploy/client -c client -- curl -sS -m 5 "$@"; }
unmeshed() { kubectl -n outside exec deploy/client -c client -- curl -sS -m 5 "$@"; }

step "2. the client calls web's Service"
answer=$(meshed http://web.shop.svc/) || fail "the meshed client could not reach web"
[[ "$answer" == "web v"* ]] || fail "web answered [$answer]"

step "3. mutual TLS, with the client's identity at web's proxy"
pod=$(kubectl -n shop get pod -l app=web,version=v1 -o jsonpath='{.items[0].metadata.name}')
for _ in $(seq 10); do meshed -o /dev/null http://web.shop.svc/ || true; done
metrics=$(kubectl get --raw "/api/v1/namespaces/shop/pods/$pod:4191/proxy/metrics")
grep -q 'source_principal="spiffe://cluster.local/ns/shop/sa/client"' <<<"$metrics" \
  || fail "web-v1's proxy counted no request from the client's identity"
grep -q 'connection_security_policy="mutual_tls"' <<<"$metrics" \
  || fail "web-v1's proxy saw no mutual TLS"

step "4. routing: all to v2, then a 50/50 canary"
# Two pods behind one Service split about evenly with no route at all, so
# the route is first shown to apply by sending everything to v2.
kubectl apply -f tests/e2e/to-v2.yaml
kubectl -n shop wait --for=condition=Accepted virtualservice/web --timeout 60s
streak=0
for _ in $(seq 120); do
  if [[ "$(meshed http://web.shop.svc/)" == "web v2" ]]; then streak=$((streak + 1)); else streak=0; fi
  ((streak < 20)) || break
  sleep 0.25
done
((streak >= 20)) || fail "the all-to-v2 route never took: the last answers were not all v2"
kubectl apply -f tests/e2e/canary.yaml
sleep 2 # the update reaches the client's proxy within the control plane's debounce
v1=0 v2=0
for _ in $(seq 60); do
  case "$(meshed http://web.shop.svc/)" in
    "web v1") v1=$((v1 + 1)) ;;
    "web v2") v2=$((v2 + 1)) ;;
  esac
done
echo "v1: $v1, v2: $v2"
((v1 + v2 == 60 && v1 >= 15 && v2 >= 15)) || fail "60 requests split $v1/$v2"

step "5. PERMISSIVE, then STRICT"
unmeshed -o /dev/null http://web.shop.svc/ || fail "PERMISSIVE refused the unmeshed client"
kubectl apply -f tests/e2e/strict.yaml
# Refused means the connection was closed on the client (curl: 52, empty
# reply; 56, reset), not any failure (a timeout or a DNS error is not it).
refused=
for _ in $(seq 30); do
  rc=0
  unmeshed -o /dev/null http://web.shop.svc/ 2>/dev/null || rc=$?
  if ((rc == 52 || rc == 56)); then refused=1; break; fi
  ((rc == 0)) || fail "the unmeshed client failed with curl exit $rc, not a refusal"
  sleep 1
done
[[ -n "$refused" ]] || fail "STRICT still lets the unmeshed client in after 30 s"
meshed -o /dev/null http://web.shop.svc/ || fail "STRICT refused the meshed client"

step "6. helm test: outrigger check against the release"
helm test outrigger -n "$NS" --timeout 5m --logs || fail "helm test: outrigger check failed"

# Load for 7. and 8.: the meshed client asks web ten times a second until
# stop_load, printing each failure, then "ok=N failed=M". Under STRICT (5.),
# so every request is a mutual TLS hop.
CLIENT=$(kubectl -n shop get pod -l app=client -o jsonpath='{.items[0].metadata.name}')
start_load() {
  kubectl -n shop exec "$CLIENT" -c client -- rm -f /tmp/stop
  # shellcheck disable=SC2016 # expanded by the pod's shell, not this one
  kubectl -n shop exec "$CLIENT" -c client -- sh -c '
    ok=0 failed=0
    while [ ! -e /tmp/stop ]; do
      if curl -sS -f -m 5 -o /dev/null http://web.shop.svc/; then ok=$((ok + 1))
      else failed=$((failed + 1)); echo "failed at $(date +%T)"; fi
      sleep 0.1
    done
    echo "ok=$ok failed=$failed"' >"$WORK/load.log" 2>&1 &
  LOAD=$!
}
stop_load() { # what: fails unless every request of the load succeeded
  kubectl -n shop exec "$CLIENT" -c client -- touch /tmp/stop
  wait "$LOAD" || fail "$1: the load's kubectl exec failed: $(cat "$WORK/load.log")"
  local summary
  summary=$(tail -n 1 "$WORK/load.log")
  echo "$1: $summary"
  [[ "$summary" =~ ^ok=([0-9]+)\ failed=0$ ]] || fail "$1: requests failed: $(cat "$WORK/load.log")"
  ((BASH_REMATCH[1] >= 50)) || fail "$1: only ${BASH_REMATCH[1]} requests were sent"
}
# The sum of a metric's samples at a proxy of shop, or at the control
# plane's metrics port: those whose name and labels match an awk regex
# anchored at the start (end a plain name with $).
proxy_metric() {
  kubectl get --raw "/api/v1/namespaces/shop/pods/$1:4191/proxy/metrics" \
    | awk -v m="^$2" '$1 ~ m { s += $NF } END { print s + 0 }'
}
# The control plane's running pods (not those terminating).
cp_pods() {
  kubectl -n "$NS" get pods -l app.kubernetes.io/name=outrigger-control-plane --no-headers \
    | awk '$3 == "Running" { print $1 }'
}
cp_metric() {
  local pod
  pod=$(cp_pods | head -n 1)
  kubectl get --raw "/api/v1/namespaces/$NS/pods/$pod:15014/proxy/metrics" \
    | awk -v m="^$1" '$1 ~ m { s += $NF } END { print s + 0 }'
}
shop_pods() { kubectl -n shop get pods -o jsonpath='{.items[*].metadata.name}'; }
# until SECONDS WHAT COMMAND...: polls COMMAND every 2 s; fails naming WHAT.
until_true() {
  local deadline=$((SECONDS + $1)) what=$2
  shift 2
  until "$@"; do
    ((SECONDS < deadline)) || fail "$what (after waiting)"
    sleep 2
  done
}

step "7. helm upgrade of both charts under load"
cp_before=$(cp_pods)
injector_before=$(kubectl -n "$NS" get pods -l app.kubernetes.io/name=outrigger-injector \
  -o jsonpath='{.items[*].metadata.name}')
# A value this run has not used before, so the pods roll on a kept cluster
# too.
MARK=$(date +%s)
start_load
sleep 5
helm upgrade outrigger-crds charts/outrigger-crds -n "$NS" --wait
# Changed values: new pod annotations roll the control plane and the injector.
helm upgrade outrigger charts/outrigger -n "$NS" "${VALUES[@]}" \
  --set controlPlane.podAnnotations.e2e/upgraded="$MARK" \
  --set injector.podAnnotations.e2e/upgraded="$MARK" \
  --wait --timeout 5m
kubectl -n "$NS" rollout status deploy/outrigger-control-plane --timeout 180s
kubectl -n "$NS" rollout status deploy/outrigger-injector --timeout 180s
# The injector's running pods (a pod being deleted shows Terminating).
injector_pods() {
  kubectl -n "$NS" get pods -l app.kubernetes.io/name=outrigger-injector --no-headers \
    | awk '$3 == "Running" { print $1 }'
}
injector_rolled() {
  local pod
  for pod in $(injector_pods); do
    ! grep -qw "$pod" <<<"$injector_before" || return 1
  done
}
until_true 120 "the injector did not roll to new pods" injector_rolled
# Reconnected: the one control plane pod left is a new one, and every proxy
# of shop holds a config stream to it.
reconnected() {
  local pods pod
  pods=$(cp_pods)
  [[ $(wc -w <<<"$pods") == 1 ]] || return 1
  ! grep -qxF "$pods" <<<"$cp_before" || return 1
  (($(cp_metric 'outrigger_cp_connected_proxies$') >= $(wc -w <<<"$(shop_pods)"))) || return 1
  for pod in $(shop_pods); do
    (($(proxy_metric "$pod" 'outrigger_control_plane_connected$') == 1)) || return 1
  done
}
until_true 120 "the proxies of shop did not reconnect to a new control plane" reconnected
sleep 5
stop_load "upgrade"

step "8. the trust anchor rotated under load (three Secret updates)"
new_root next
cat "$WORK/ca.pem" "$WORK/next.pem" >"$WORK/both.pem"
declare -A renewed
renewals_noted() {
  local pod
  for pod in $(shop_pods); do
    renewed[$pod]=$(proxy_metric "$pod" 'outrigger_identity_renewals_total[{].*result="ok"')
  done
}
all_renewed() {
  local pod
  for pod in $(shop_pods); do
    (($(proxy_metric "$pod" 'outrigger_identity_renewals_total[{].*result="ok"') > ${renewed[$pod]:-0})) \
      || return 1
  done
}
applied() { (($(cp_metric 'outrigger_cp_ca_reloads_total[{].*result="applied"') > APPLIED)); }
rotate() { # what cert key bundle
  APPLIED=$(cp_metric 'outrigger_cp_ca_reloads_total[{].*result="applied"')
  ca_secret "$2" "$3" "$4"
  # kubelet swaps the mounted Secret within about a minute; the control
  # plane re-reads it every 5 s.
  until_true 180 "$1: the control plane did not apply the new CA Secret" applied
  # Renewals from now on are answered by the new CA, with its roots.
  renewals_noted
  until_true 240 "$1: a proxy of shop did not renew its certificate" all_renewed
  (($(cp_metric 'outrigger_cp_ca_reloads_total[{].*result="refused"') == 0)) \
    || fail "$1: the control plane refused a CA Secret"
  echo "$1: applied, every proxy renewed"
}
start_load
rotate "1. new root trusted beside the old" "$WORK/ca.pem" "$WORK/ca.key" "$WORK/both.pem"
rotate "2. the new root signs" "$WORK/next.pem" "$WORK/next.key" "$WORK/both.pem"
rotate "3. the old root dropped" "$WORK/next.pem" "$WORK/next.key" "$WORK/next.pem"
stop_load "CA rotation"

echo "kind end-to-end: all checks passed"
