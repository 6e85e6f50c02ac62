#!/usr/bin/env bash
# The mesh on a real cluster: a kind cluster, the images built from
# this checkout, the chart installed with a mesh CA made here, and a meshed
# namespace with a web service (two versions) and a client. Checks, each
# failing the run with what it saw:
#   1. shop's pods were injected (the proxy as a native sidecar, the init step);
#   2. the client reaches web's Service with no mesh settings of its own;
#   3. the hop is mutual TLS: web's proxy counts the client's SPIFFE identity;
#   4. a VirtualService sending everything to v2 applies, then a 50/50 one
#      splits traffic between v1 and v2;
#   5. PERMISSIVE lets an unmeshed client in, STRICT keeps it out while the
#      meshed client still gets through;
#   6. helm test passes (outrigger check, from the cli image, in the cluster).
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
for target in proxy control-plane injector cli; do
  docker build --target "$target" -t "outrigger/$target:$TAG" \
    --build-arg OUTRIGGER_GIT_SHA="$(git rev-parse HEAD 2>/dev/null || echo unknown)" .
  kind load docker-image --name "$CLUSTER" "outrigger/$target:$TAG"
done

step "mesh CA"
if kubectl -n "$NS" get secret outrigger-ca >/dev/null 2>&1; then
  # A kept cluster keeps its CA: a new root would cut the trust of every
  # pod that holds the old one.
  kubectl -n "$NS" get secret outrigger-ca -o jsonpath='{.data.ca\.pem}' | base64 -d >"$WORK/ca.pem"
  kubectl -n "$NS" get secret outrigger-ca -o jsonpath='{.data.ca\.key}' | base64 -d >"$WORK/ca.key"
  echo "reusing the cluster's CA"
else
  # ECDSA P-256, self-signed, a year; the key as PKCS#8, which the control plane reads.
  openssl ecparam -name prime256v1 -genkey -noout | openssl pkcs8 -topk8 -nocrypt -out "$WORK/ca.key"
  openssl req -x509 -new -key "$WORK/ca.key" -subj "/CN=outrigger e2e root" -days 365 \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -out "$WORK/ca.pem"
fi

# The namespaces first: the injector lists them before it turns ready, so
# that shop's pods, created after the install, are surely injected.
step "namespaces"
kubectl create namespace shop --dry-run=client -o yaml | kubectl apply -f -
kubectl annotate namespace shop outrigger.dev/inject=enabled --overwrite
kubectl create namespace outside --dry-run=client -o yaml | kubectl apply -f -

step "helm install"
helm upgrade --install outrigger charts/outrigger -n "$NS" --create-namespace \
  --set image.tag="$TAG" \
  --set-file identity.ca.cert="$WORK/ca.pem" --set-file identity.ca.key="$WORK/ca.key" \
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

echo "kind end-to-end: all checks passed"
