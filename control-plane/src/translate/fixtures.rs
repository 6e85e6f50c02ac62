//! Fixtures shared by the translator's tests: stores and meshes from
//! manifests, per-proxy configs checked with the proxy's own validation,
//! verdicts, and Istio's bookinfo `reviews` with its canary rules.

use outrigger_api::Service;

use super::{Mesh, Options, ProxyConfig, ProxyId, ResourceId, Verdict};
use crate::manifest;
use crate::store::{Key, Store};

/// A store from manifests (namespace `default` where none is named).
pub(super) fn store(yaml: &str) -> Store {
    let parsed = manifest::parse("test.yaml", yaml, "default").unwrap_or_else(|e| panic!("{e}"));
    Store::from_objects(parsed.objects)
}

pub(super) fn mesh(yaml: &str) -> Mesh {
    Mesh::build(&store(yaml), &Options::default())
}

/// The store of `yaml` translated with `previous` as history.
pub(super) fn rebuild(yaml: &str, previous: &Mesh) -> Mesh {
    Mesh::rebuild(&store(yaml), &Options::default(), Some(previous))
}

pub(super) fn config(mesh: &Mesh, ns: &str, pod: &str) -> ProxyConfig {
    let c = mesh.config_for(&ProxyId {
        namespace: ns.into(),
        pod: pod.into(),
    });
    // Whatever the translator produces must pass the proxy's validation.
    c.to_snapshot("test")
        .validate()
        .unwrap_or_else(|e| panic!("translated snapshot is invalid: {e}"));
    c
}

pub(super) fn verdict(mesh: &Mesh, kind: &'static str, ns: &str, name: &str) -> Verdict {
    mesh.verdicts()[&ResourceId {
        kind,
        key: Key::new(ns, name),
    }]
        .clone()
}

pub(super) fn assert_accepted(mesh: &Mesh, kind: &'static str, ns: &str, name: &str) {
    assert_eq!(verdict(mesh, kind, ns, name), Verdict::Accepted);
}

/// The Service `name` of a proxy's config.
pub(super) fn service<'c>(c: &'c ProxyConfig, name: &str) -> &'c Service {
    c.services.iter().find(|s| s.name == name).unwrap()
}

/// The documents of `yaml` but those that contain one of `names`.
pub(super) fn without(yaml: &str, names: &[&str]) -> String {
    yaml.split("---")
        .filter(|d| !names.iter().any(|n| d.contains(n)))
        .collect::<Vec<_>>()
        .join("---")
}

pub(super) fn refused(v: Verdict) -> (&'static str, String) {
    match v {
        Verdict::Refused { reason, message } => (reason, message),
        Verdict::Accepted => panic!("expected a refusal, got Accepted"),
    }
}

/// Istio's bookinfo `reviews` with three versions, each a pod with a
/// proxy, behind one Service with an EndpointSlice.
pub(super) const REVIEWS: &str = r#"
apiVersion: v1
kind: Service
metadata: { name: reviews, namespace: shop }
spec:
  clusterIP: 10.96.0.20
  ports: [{ name: http, port: 9080, targetPort: 9080 }]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: reviews-abc
  namespace: shop
  labels: { kubernetes.io/service-name: reviews }
addressType: IPv4
ports: [{ name: http, port: 9080, protocol: TCP }]
endpoints:
  - addresses: ["10.244.0.11"]
    conditions: { ready: true }
    targetRef: { kind: Pod, name: reviews-v1-6d7f-x1, namespace: shop }
  - addresses: ["10.244.0.12"]
    conditions: { ready: true }
    targetRef: { kind: Pod, name: reviews-v2-7c8d-x2, namespace: shop }
  - addresses: ["10.244.0.13"]
    conditions: { ready: false }
    targetRef: { kind: Pod, name: reviews-v3-9f9f-x3, namespace: shop }
---
apiVersion: v1
kind: Pod
metadata:
  name: reviews-v1-6d7f-x1
  namespace: shop
  labels: { app: reviews, version: v1, pod-template-hash: 6d7f }
  ownerReferences: [{ apiVersion: apps/v1, kind: ReplicaSet, name: reviews-v1-6d7f, uid: u1, controller: true }]
spec:
  serviceAccountName: bookinfo-reviews
  containers: [{ name: reviews, image: reviews }, { name: outrigger-proxy, image: proxy }]
---
apiVersion: v1
kind: Pod
metadata:
  name: reviews-v2-7c8d-x2
  namespace: shop
  labels: { app: reviews, version: v2, pod-template-hash: 7c8d }
  ownerReferences: [{ apiVersion: apps/v1, kind: ReplicaSet, name: reviews-v2-7c8d, uid: u2, controller: true }]
spec:
  containers: [{ name: reviews, image: reviews }]
---
apiVersion: v1
kind: Service
metadata: { name: ratings, namespace: shop }
spec:
  clusterIP: 10.96.0.30
  ports: [{ name: http, port: 9080 }]
---
apiVersion: v1
kind: Endpoints
metadata: { name: ratings, namespace: shop }
subsets:
  - addresses: [{ ip: 10.244.0.21 }]
    ports: [{ name: http, port: 9080 }]
---
apiVersion: v1
kind: Pod
metadata: { name: productpage-1, namespace: shop, annotations: { outrigger.dev/meshed: "true" } }
spec: { serviceAccountName: productpage, containers: [{ name: app, image: app }] }
"#;

/// Istio's canary by weight, ported: `apiVersion` changed, nothing else.
pub(super) const CANARY: &str = r#"
apiVersion: outrigger.dev/v1alpha1
kind: DestinationRule
metadata: { name: reviews, namespace: shop }
spec:
  host: reviews
  subsets:
    - { name: v1, labels: { version: v1 } }
    - { name: v2, labels: { version: v2 } }
  trafficPolicy:
    outlierDetection: { consecutive5xxErrors: 3, baseEjectionTime: 15s }
---
apiVersion: outrigger.dev/v1alpha1
kind: VirtualService
metadata: { name: reviews, namespace: shop }
spec:
  hosts: [reviews]
  http:
    - route:
        - destination: { host: reviews, subset: v1 }
          weight: 75
        - destination: { host: reviews, subset: v2 }
          weight: 25
"#;

/// The VirtualService `shop/reviews` for the host `reviews`, with these
/// routes (YAML lines indented under its `http:`).
pub(super) fn reviews_routes(http: &str) -> String {
    format!(
        "
apiVersion: outrigger.dev/v1alpha1
kind: VirtualService
metadata: {{ name: reviews, namespace: shop }}
spec:
  hosts: [reviews]
  http:
{http}"
    )
}

/// `reviews` answers 503 naming the refused VirtualService `vs`, and
/// every other service keeps its default route.
pub(super) fn assert_fails_closed(c: &ProxyConfig, vs: &str) {
    for svc in &c.services {
        if svc.name != "reviews" {
            assert!(svc.http.is_empty(), "{}", svc.name);
            continue;
        }
        let [route] = svc.http.as_slice() else {
            panic!("one route: {:?}", svc.http);
        };
        let answer = route.direct_response.as_ref().expect("a direct answer");
        assert_eq!(answer.status, 503);
        let body = &answer.body.as_ref().unwrap().string;
        assert!(
            body.contains(&format!("VirtualService {vs} is refused")),
            "{body}"
        );
        assert!(route.route.is_empty());
    }
    c.to_snapshot("check").validate().unwrap();
}
