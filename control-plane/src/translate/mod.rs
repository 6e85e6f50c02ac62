//! The translator: a pure function from the [`Store`] to what each proxy
//! receives. This is where the mesh's semantics live.
//!
//! It works in two steps, so that a change costs one mesh-wide pass and then
//! a cheap filter per proxy:
//!
//! 1. [`Mesh::build`] resolves every object once: Services and their
//!    EndpointSlices (or hand-written Endpoints) and Pods become the wire
//!    model's [`Service`] entries, one per Service port; DestinationRules and
//!    VirtualServices are checked (hosts, destinations, subsets, ports, and
//!    every rule of the wire model's validation) and attached to their host,
//!    or refused with a [`Verdict`] that names the field.
//! 2. [`Mesh::config_for`] picks what one proxy may see: the Services of its
//!    namespace and those exported to it, with the routes and policies
//!    exported to it, plus every Service those routes send to.
//!
//! A bad edit never replaces a good config: when a resource that was
//! accepted before is refused now, its last accepted version stays in force
//! (given the previous mesh), and its verdict says so.

mod admission;
mod check;
mod export;
mod history;
mod mesh;
mod routing;
mod security;
mod services;
mod verdict;
mod view;

pub use self::export::{ExportTo, EXPORT_TO_ANNOTATION};
pub use self::mesh::{Mesh, Options};
pub use self::services::{MESHED_ANNOTATION, PROXY_CONTAINER, SERVICE_NAME_LABEL};
pub use self::verdict::{Verdict, PREVIOUS_STAYS};
pub use self::view::{ProxyConfig, ProxyId};
/// A mesh resource, for [`Mesh::verdicts`].
pub use crate::store::ResourceId;

#[cfg(test)]
mod tests {
    use super::services::{protocol_of, workload_of};
    use super::*;
    use crate::manifest;
    use crate::store::{Key, Store};
    use k8s_openapi::api::core::v1::Pod;
    use outrigger_api::inbound::{Mtls, MtlsMode};
    use outrigger_api::{Service, ServiceProtocol};
    use std::collections::BTreeSet;

    /// A store from manifests (namespace `default` where none is named).
    fn store(yaml: &str) -> Store {
        let parsed =
            manifest::parse("test.yaml", yaml, "default").unwrap_or_else(|e| panic!("{e}"));
        Store::from_objects(parsed.objects)
    }

    fn mesh(yaml: &str) -> Mesh {
        Mesh::build(&store(yaml), &Options::default())
    }

    fn config(mesh: &Mesh, ns: &str, pod: &str) -> ProxyConfig {
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

    fn verdict(mesh: &Mesh, kind: &'static str, ns: &str, name: &str) -> Verdict {
        mesh.verdicts()[&ResourceId {
            kind,
            key: Key::new(ns, name),
        }]
            .clone()
    }

    fn refused(v: Verdict) -> (&'static str, String) {
        match v {
            Verdict::Refused { reason, message } => (reason, message),
            Verdict::Accepted => panic!("expected a refusal, got Accepted"),
        }
    }

    /// Istio's bookinfo `reviews` with three versions, each a pod with a
    /// proxy, behind one Service with an EndpointSlice.
    const REVIEWS: &str = r#"
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

    #[test]
    fn a_service_becomes_one_entry_per_port_with_its_ready_endpoints() {
        let m = mesh(REVIEWS);
        let c = config(&m, "shop", "productpage-1");
        assert_eq!(c.proxy.workload, "productpage-1");
        assert_eq!(
            c.proxy.identity.as_deref(),
            Some("spiffe://cluster.local/ns/shop/sa/productpage")
        );
        let names: Vec<_> = c.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["ratings", "reviews"]);
        let reviews = &c.services[1];
        assert_eq!(reviews.addresses, ["10.96.0.20"]);
        assert_eq!(reviews.ports, [9080]);
        let addrs: Vec<_> = reviews
            .endpoints
            .iter()
            .map(|e| e.address.as_str())
            .collect();
        assert_eq!(
            addrs,
            ["10.244.0.11:9080", "10.244.0.12:9080"],
            "not-ready v3 left out"
        );
        let v1 = &reviews.endpoints[0];
        assert!(v1.meshed);
        assert_eq!(
            v1.workload.as_deref(),
            Some("reviews-v1"),
            "Deployment name from the ReplicaSet"
        );
        assert_eq!(
            v1.identity.as_deref(),
            Some("spiffe://cluster.local/ns/shop/sa/bookinfo-reviews")
        );
        assert_eq!(v1.labels["version"], "v1");
        let v2 = &reviews.endpoints[1];
        assert!(!v2.meshed, "no proxy container");
        assert_eq!(v2.identity, None);
        assert_eq!(v2.workload.as_deref(), Some("reviews-v2"));
        assert_eq!(v2.labels["app"], "reviews");
        // Hand-written Endpoints, no pod: plain endpoint.
        assert_eq!(c.services[0].endpoints[0].address, "10.244.0.21:9080");
        assert!(!c.services[0].endpoints[0].meshed);
    }

    #[test]
    fn the_workload_is_the_top_controller_as_istio_names_it() {
        let pod = |labels: serde_json::Value, owners: serde_json::Value| -> Pod {
            serde_json::from_value(serde_json::json!({
                "metadata": { "name": "p-1", "labels": labels, "ownerReferences": owners }
            }))
            .unwrap()
        };
        let owner = |kind: &str, name: &str| {
            serde_json::json!([{ "apiVersion": "v1", "kind": kind, "name": name, "uid": "u",
                                 "controller": true }])
        };
        let none = serde_json::json!({});
        for (labels, owners, want) in [
            // A Deployment's ReplicaSet, by the pod's hash label.
            (
                serde_json::json!({"pod-template-hash": "5d8f9c7b6"}),
                owner("ReplicaSet", "reviews-v1-5d8f9c7b6"),
                "reviews-v1",
            ),
            // The label missing: the hash the Deployment controller writes.
            (
                none.clone(),
                owner("ReplicaSet", "reviews-v1-5d8f9c7b6"),
                "reviews-v1",
            ),
            (none.clone(), owner("ReplicaSet", "web-7d9f8b6c5d"), "web"),
            // Not that shape: a ReplicaSet of its own.
            (
                none.clone(),
                owner("ReplicaSet", "reviews-v1"),
                "reviews-v1",
            ),
            (none.clone(), owner("ReplicaSet", "cache-b4d"), "cache-b4d"),
            (
                none.clone(),
                owner("ReplicaSet", "api-5d8f9c7b6a"),
                "api-5d8f9c7b6a",
            ),
            (
                none.clone(),
                owner("ReplicaSet", "-5d8f9c7b6"),
                "-5d8f9c7b6",
            ),
            // A label that does not end the name: the ReplicaSet (Istio).
            (
                serde_json::json!({"pod-template-hash": "6d7f"}),
                owner("ReplicaSet", "reviews-v1-5d8f9c7b6"),
                "reviews-v1-5d8f9c7b6",
            ),
            (
                serde_json::json!({"rollouts-pod-template-hash": "6d7f"}),
                owner("ReplicaSet", "canary-6d7f"),
                "canary",
            ),
            // A CronJob's Job, named by its scheduled minute.
            (none.clone(), owner("Job", "backup-28391520"), "backup"),
            (
                none.clone(),
                owner("Job", "nightly-report-2839152000"),
                "nightly-report",
            ),
            // Other Jobs are their own workload.
            (
                none.clone(),
                owner("Job", "migrate-1234567"),
                "migrate-1234567",
            ),
            (none.clone(), owner("Job", "migrate-v2"), "migrate-v2"),
            (
                serde_json::json!({"deploymentconfig": "frontend"}),
                owner("ReplicationController", "frontend-3"),
                "frontend",
            ),
            (
                none.clone(),
                owner("ReplicationController", "frontend-3"),
                "frontend-3",
            ),
            (none.clone(), owner("StatefulSet", "db"), "db"),
            (none.clone(), owner("DaemonSet", "agent"), "agent"),
            // No owner: the pod.
            (none.clone(), serde_json::json!([]), "p-1"),
        ] {
            let p = pod(labels.clone(), owners.clone());
            assert_eq!(workload_of(&p), want, "{labels} {owners}");
        }
        // The controller wins over other owners.
        let p = pod(
            none,
            serde_json::json!([
                { "apiVersion": "v1", "kind": "ConfigMap", "name": "x", "uid": "a" },
                { "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d9f8b6c5d",
                  "uid": "b", "controller": true }
            ]),
        );
        assert_eq!(workload_of(&p), "web");
    }

    /// Istio's canary by weight, ported: `apiVersion` changed, nothing else.
    const CANARY: &str = r#"
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

    #[test]
    fn istio_canary_by_weight_routes_with_subsets() {
        let m = mesh(&format!("{REVIEWS}---{CANARY}"));
        assert_eq!(
            verdict(&m, "VirtualService", "shop", "reviews"),
            Verdict::Accepted
        );
        assert_eq!(
            verdict(&m, "DestinationRule", "shop", "reviews"),
            Verdict::Accepted
        );
        let c = config(&m, "shop", "productpage-1");
        let reviews = c.services.iter().find(|s| s.name == "reviews").unwrap();
        assert_eq!(reviews.subsets.len(), 2);
        assert_eq!(
            reviews
                .traffic_policy
                .as_ref()
                .unwrap()
                .outlier_detection
                .as_ref()
                .unwrap()
                .consecutive_5xx_errors,
            3
        );
        let route = &reviews.http[0];
        assert_eq!(
            route.route[0].destination.host, "reviews.shop",
            "written relative to the VS"
        );
        assert_eq!(route.route[0].weight, Some(75));
        assert_eq!(route.route[1].destination.subset.as_deref(), Some("v2"));
        // The ratings service has no routes of its own.
        assert!(c
            .services
            .iter()
            .find(|s| s.name == "ratings")
            .unwrap()
            .http
            .is_empty());
    }

    #[test]
    fn istio_routing_by_header_keeps_match_order() {
        let vs = r#"
apiVersion: outrigger.dev/v1alpha1
kind: VirtualService
metadata: { name: reviews, namespace: shop }
spec:
  hosts: [reviews.shop.svc.cluster.local]
  http:
    - match: [{ headers: { end-user: { exact: jason } } }]
      route: [{ destination: { host: reviews, subset: v2 } }]
    - route: [{ destination: { host: reviews, subset: v1 } }]
"#;
        let m = mesh(&format!(
            "{REVIEWS}---{}---{vs}",
            CANARY.split("---").next().unwrap()
        ));
        assert_eq!(
            verdict(&m, "VirtualService", "shop", "reviews"),
            Verdict::Accepted
        );
        let c = config(&m, "shop", "productpage-1");
        let reviews = c.services.iter().find(|s| s.name == "reviews").unwrap();
        assert_eq!(reviews.http.len(), 2);
        assert_eq!(
            reviews.http[0].matches[0].headers["end-user"]
                .exact
                .as_deref(),
            Some("jason")
        );
        assert_eq!(
            reviews.http[1].route[0].destination.subset.as_deref(),
            Some("v1")
        );
    }

    #[test]
    fn a_missing_subset_is_refused_naming_the_field_and_its_hosts_answer_503() {
        let vs = r#"
apiVersion: outrigger.dev/v1alpha1
kind: VirtualService
metadata: { name: reviews, namespace: shop }
spec:
  hosts: [reviews]
  http:
    - route: [{ destination: { host: reviews, subset: v3 } }]
"#;
        let m = mesh(&format!(
            "{REVIEWS}---{}---{vs}",
            CANARY.split("---").next().unwrap()
        ));
        let (reason, message) = refused(verdict(&m, "VirtualService", "shop", "reviews"));
        assert_eq!(reason, "UnknownSubset");
        assert!(
            message.starts_with("spec.http[0].route[0].destination.subset: no subset \"v3\""),
            "{message}"
        );
        // Nothing of it was ever in force: its host answers 503 rather than
        // spreading over every version, where no route sent the traffic.
        assert!(message.contains("reviews.shop answer 503"), "{message}");
        assert_fails_closed(&config(&m, "shop", "productpage-1"), "shop/reviews");
    }

    /// `reviews` answers 503 naming the refused VirtualService `vs`, and
    /// every other service keeps its default route.
    fn assert_fails_closed(c: &ProxyConfig, vs: &str) {
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

    #[test]
    fn wire_model_validation_errors_are_reported_at_the_resource_field() {
        let vs = r#"
apiVersion: outrigger.dev/v1alpha1
kind: VirtualService
metadata: { name: reviews, namespace: shop }
spec:
  hosts: [reviews]
  http:
    - match: [{ uri: { regex: "(" } }]
      route: [{ destination: { host: reviews } }]
"#;
        let m = mesh(&format!("{REVIEWS}---{vs}"));
        let (reason, message) = refused(verdict(&m, "VirtualService", "shop", "reviews"));
        assert_eq!(reason, "InvalidSpec");
        assert!(
            message.starts_with("spec.http[0].match[0].uri"),
            "{message}"
        );
    }

    #[test]
    fn unknown_hosts_and_destinations_are_refused() {
        let vs = r#"
apiVersion: outrigger.dev/v1alpha1
kind: VirtualService
metadata: { name: a, namespace: shop }
spec:
  hosts: [details]
  http: [{ route: [{ destination: { host: reviews } }] }]
---
apiVersion: outrigger.dev/v1alpha1
kind: VirtualService
metadata: { name: b, namespace: shop }
spec:
  hosts: [reviews]
  http: [{ route: [{ destination: { host: reviews.other } }] }]
---
apiVersion: outrigger.dev/v1alpha1
kind: VirtualService
metadata: { name: c, namespace: shop }
spec:
  hosts: ["*.shop"]
  http: [{ route: [{ destination: { host: reviews } }] }]
"#;
        let m = mesh(&format!("{REVIEWS}---{vs}"));
        let (r, msg) = refused(verdict(&m, "VirtualService", "shop", "a"));
        assert_eq!(r, "UnknownHost");
        assert!(
            msg.starts_with("spec.hosts[0]: \"details\": no Service details in namespace shop"),
            "{msg}"
        );
        let (_, msg) = refused(verdict(&m, "VirtualService", "shop", "b"));
        assert!(
            msg.starts_with("spec.http[0].route[0].destination.host: \"reviews.other\""),
            "{msg}"
        );
        let (_, msg) = refused(verdict(&m, "VirtualService", "shop", "c"));
        assert!(msg.contains("wildcard hosts are not supported"), "{msg}");
    }

    #[test]
    fn the_oldest_of_two_virtual_services_for_one_host_applies() {
        let vs = |name: &str, time: &str, weight: u32| {
            format!(
                r#"
apiVersion: outrigger.dev/v1alpha1
kind: VirtualService
metadata: {{ name: {name}, namespace: shop, creationTimestamp: "{time}" }}
spec:
  hosts: [reviews]
  http: [{{ route: [{{ destination: {{ host: reviews }}, weight: {weight} }}] }}]
"#
            )
        };
        let m = mesh(&format!(
            "{REVIEWS}---{}---{}",
            vs("a-newer", "2026-02-01T00:00:00Z", 7),
            vs("z-older", "2026-01-01T00:00:00Z", 9)
        ));
        assert!(verdict(&m, "VirtualService", "shop", "z-older").is_accepted());
        let (r, msg) = refused(verdict(&m, "VirtualService", "shop", "a-newer"));
        assert_eq!(r, "Conflict");
        assert!(
            msg.contains("already routed by VirtualService shop/z-older"),
            "{msg}"
        );
        let c = config(&m, "shop", "productpage-1");
        let reviews = c.services.iter().find(|s| s.name == "reviews").unwrap();
        assert_eq!(reviews.http[0].route[0].weight, Some(9));
    }

    #[test]
    fn a_malformed_export_annotation_is_reported_and_keeps_the_service_home() {
        let m = mesh(
            r#"
apiVersion: v1
kind: Service
metadata: { name: ledger, namespace: billing, annotations: { outrigger.dev/export-to: "shop, Not_A_Namespace" } }
spec: { clusterIP: 10.96.1.1, ports: [{ port: 80 }] }
"#,
        );
        let (reason, message) = refused(verdict(&m, "Service", "billing", "ledger"));
        assert_eq!(reason, "InvalidAnnotation");
        assert!(
            message.contains("metadata.annotations[outrigger.dev/export-to]")
                && message.contains("Not_A_Namespace"),
            "{message}"
        );
        assert_eq!(config(&m, "billing", "p").services.len(), 1);
        assert!(
            config(&m, "shop", "p").services.is_empty(),
            "not exported by half"
        );
    }

    #[test]
    fn a_proxy_sees_its_namespace_and_what_is_exported_to_it() {
        let other = r#"
apiVersion: v1
kind: Service
metadata: { name: private, namespace: billing }
spec: { clusterIP: 10.96.1.1, ports: [{ port: 80 }] }
---
apiVersion: v1
kind: Service
metadata: { name: public, namespace: billing, annotations: { outrigger.dev/export-to: "*" } }
spec: { clusterIP: 10.96.1.2, ports: [{ port: 80 }] }
---
apiVersion: v1
kind: Service
metadata: { name: partners, namespace: billing, annotations: { outrigger.dev/export-to: "., shop" } }
spec: { clusterIP: 10.96.1.3, ports: [{ port: 80 }] }
"#;
        let m = mesh(&format!("{REVIEWS}---{other}"));
        let names = |ns: &str| -> Vec<String> {
            config(&m, ns, "someone")
                .services
                .iter()
                .map(|s| format!("{}.{}", s.name, s.namespace))
                .collect()
        };
        assert_eq!(
            names("shop"),
            [
                "partners.billing",
                "public.billing",
                "ratings.shop",
                "reviews.shop"
            ]
        );
        assert_eq!(
            names("billing"),
            ["partners.billing", "private.billing", "public.billing"]
        );
        assert_eq!(names("elsewhere"), ["public.billing"]);
        // Everything exported: the Istio default, as a flag.
        let all = Mesh::build(
            &store(&format!("{REVIEWS}---{other}")),
            &Options {
                default_export_to: ExportTo::All,
                ..Options::default()
            },
        );
        // All but `partners`, whose annotation still limits it.
        assert_eq!(
            all.config_for(&ProxyId {
                namespace: "x".into(),
                pod: "p".into()
            })
            .services
            .len(),
            4
        );
    }

    #[test]
    fn routes_bring_their_destinations_along_and_respect_export_to() {
        let yaml = r#"
apiVersion: v1
kind: Service
metadata: { name: front, namespace: web, annotations: { outrigger.dev/export-to: "*" } }
spec: { clusterIP: 10.96.2.1, ports: [{ port: 80 }] }
---
apiVersion: v1
kind: Service
metadata: { name: front-canary, namespace: web }
spec: { clusterIP: 10.96.2.2, ports: [{ port: 80 }] }
---
apiVersion: outrigger.dev/v1alpha1
kind: VirtualService
metadata: { name: front, namespace: web }
spec:
  hosts: [front]
  exportTo: ["*"]
  http:
    - route:
        - { destination: { host: front }, weight: 90 }
        - { destination: { host: front-canary }, weight: 10 }
---
apiVersion: outrigger.dev/v1alpha1
kind: VirtualService
metadata: { name: canary-only-here, namespace: web }
spec:
  hosts: [front-canary]
  exportTo: ["."]
  http: [{ route: [{ destination: { host: front-canary } }], timeout: 2s }]
"#;
        let m = mesh(yaml);
        let c = config(&m, "shop", "p");
        let names: Vec<_> = c.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            ["front", "front-canary"],
            "the canary comes with the route"
        );
        assert!(
            c.services[1].http.is_empty(),
            "its own routes are not exported to shop"
        );
        let c = config(&m, "web", "p");
        assert_eq!(c.services[1].http.len(), 1);
    }

    const PEER_AUTH: &str = r#"
apiVersion: v1
kind: Pod
metadata: { name: web-1, namespace: shop, labels: { app: web } }
spec: { containers: [{ name: web }] }
---
apiVersion: v1
kind: Pod
metadata: { name: db-1, namespace: shop, labels: { app: db } }
spec: { containers: [{ name: db }] }
---
apiVersion: v1
kind: Pod
metadata: { name: cache-1, namespace: shop, labels: { app: cache } }
spec: { containers: [{ name: cache }] }
---
apiVersion: outrigger.dev/v1alpha1
kind: PeerAuthentication
metadata: { name: default, namespace: outrigger-system }
spec: { mtls: { mode: STRICT } }
---
apiVersion: outrigger.dev/v1alpha1
kind: PeerAuthentication
metadata: { name: default, namespace: shop }
spec: { mtls: { mode: PERMISSIVE } }
---
apiVersion: outrigger.dev/v1alpha1
kind: PeerAuthentication
metadata: { name: db, namespace: shop }
spec:
  selector: { matchLabels: { app: db } }
  mtls: { mode: STRICT }
  portLevelMtls: { 9102: { mode: PERMISSIVE }, 5432: { mode: STRICT } }
---
apiVersion: outrigger.dev/v1alpha1
kind: PeerAuthentication
metadata: { name: cache, namespace: shop }
spec:
  selector: { matchLabels: { app: cache } }
  portLevelMtls: { 6379: { mode: STRICT } }
"#;

    fn mtls(m: &Mesh, ns: &str, pod: &str) -> Mtls {
        config(m, ns, pod).inbound.mtls
    }

    #[test]
    fn peer_authentication_resolves_workload_then_namespace_then_mesh() {
        use MtlsMode::{Permissive, Strict};
        let m = mesh(PEER_AUTH);
        for name in ["db", "cache", "default"] {
            assert_eq!(
                verdict(&m, "PeerAuthentication", "shop", name),
                Verdict::Accepted
            );
        }
        // The namespace's PERMISSIVE wins over the mesh's STRICT.
        assert_eq!(mtls(&m, "shop", "web-1"), Mtls::default());
        assert_eq!(mtls(&m, "shop", "unknown-pod"), Mtls::default());
        // The workload's own policy wins; its port exceptions come along
        // (a port that only repeats the mode is left out).
        assert_eq!(mtls(&m, "shop", "db-1"), Mtls::strict([(9102, Permissive)]));
        // UNSET inherits the namespace's mode; its port rule still applies.
        let cache = mtls(&m, "shop", "cache-1");
        assert_eq!((cache.mode, cache.mode_for(6379)), (Permissive, Strict));
        // A namespace without a policy of its own gets the mesh's.
        assert_eq!(mtls(&m, "billing", "x"), Mtls::strict([]));
        // No policy anywhere: PERMISSIVE, and nothing on the wire.
        let none = mesh("");
        assert!(config(&none, "shop", "web-1").inbound.is_empty());
    }

    #[test]
    fn unsupported_peer_authentications_are_refused_by_field() {
        let cases = [
            (
                "spec: { mtls: { mode: DISABLE } }",
                "Unsupported",
                "spec.mtls.mode: DISABLE is not supported",
            ),
            (
                "spec: { portLevelMtls: { 8080: { mode: STRICT } } }",
                "InvalidSpec",
                "spec.portLevelMtls: applies to the workloads of a selector only",
            ),
            (
                "spec: { selector: { matchLabels: { app: db } }, portLevelMtls: { 70000: { mode: STRICT } } }",
                "InvalidSpec",
                "spec.portLevelMtls[70000]: not a port number",
            ),
            (
                "spec: { selector: { matchLabels: { app: db } }, portLevelMtls: { 8080: { mode: DISABLE } } }",
                "Unsupported",
                "spec.portLevelMtls[8080].mode: DISABLE is not supported",
            ),
        ];
        for (spec, want_reason, want_message) in cases {
            let yaml = format!(
                "apiVersion: outrigger.dev/v1alpha1\nkind: PeerAuthentication\n\
                 metadata: {{ name: p, namespace: shop }}\n{spec}\n"
            );
            let m = mesh(&yaml);
            let (reason, message) = refused(verdict(&m, "PeerAuthentication", "shop", "p"));
            assert_eq!(reason, want_reason, "{spec}");
            assert!(message.starts_with(want_message), "{spec}: {message}");
            assert_eq!(
                mtls(&m, "shop", "db-1"),
                Mtls::default(),
                "{spec}: applies nothing"
            );
        }
    }

    #[test]
    fn an_empty_selector_is_namespace_wide() {
        let yaml = r#"
apiVersion: outrigger.dev/v1alpha1
kind: PeerAuthentication
metadata: { name: all, namespace: shop }
spec: { selector: { matchLabels: {} }, mtls: { mode: STRICT } }
---
apiVersion: outrigger.dev/v1alpha1
kind: PeerAuthentication
metadata: { name: ports, namespace: shop }
spec: { selector: {}, portLevelMtls: { 80: { mode: STRICT } } }
"#;
        let m = mesh(yaml);
        // Namespace-wide: it applies to a pod the store does not know.
        assert_eq!(mtls(&m, "shop", "unknown"), Mtls::strict([]));
        // A second namespace-wide one conflicts, and portLevelMtls needs a
        // real selector.
        let (reason, _) = refused(verdict(&m, "PeerAuthentication", "shop", "ports"));
        assert_eq!(reason, "InvalidSpec");
    }

    #[test]
    fn the_oldest_namespace_wide_peer_authentication_applies() {
        let yaml = r#"
apiVersion: outrigger.dev/v1alpha1
kind: PeerAuthentication
metadata: { name: newer, namespace: shop, creationTimestamp: "2026-02-01T00:00:00Z" }
spec: { mtls: { mode: PERMISSIVE } }
---
apiVersion: outrigger.dev/v1alpha1
kind: PeerAuthentication
metadata: { name: older, namespace: shop, creationTimestamp: "2026-01-01T00:00:00Z" }
spec: { mtls: { mode: STRICT } }
"#;
        let m = mesh(yaml);
        assert_eq!(
            verdict(&m, "PeerAuthentication", "shop", "older"),
            Verdict::Accepted
        );
        let (reason, message) = refused(verdict(&m, "PeerAuthentication", "shop", "newer"));
        assert_eq!(reason, "Conflict");
        assert!(message.contains("shop/older"), "{message}");
        assert_eq!(mtls(&m, "shop", "any"), Mtls::strict([]));
    }

    #[test]
    fn a_broken_edit_of_a_strict_policy_keeps_it_strict() {
        let good = mesh(PEER_AUTH);
        // Refused edit: the version in force stays.
        let disabled = PEER_AUTH.replace(
            "  mtls: { mode: STRICT }\n  portLevelMtls: { 9102",
            "  mtls: { mode: DISABLE }\n  portLevelMtls: { 9102",
        );
        assert_ne!(disabled, PEER_AUTH);
        let next = Mesh::rebuild(&store(&disabled), &Options::default(), Some(&good));
        let (reason, message) = refused(verdict(&next, "PeerAuthentication", "shop", "db"));
        assert_eq!(reason, "Unsupported");
        assert!(
            message.ends_with(&format!("({PREVIOUS_STAYS})")),
            "{message}"
        );
        assert_eq!(mtls(&next, "shop", "db-1").mode, MtlsMode::Strict);
        // Unreadable edit: the same.
        let mut unreadable = store(PEER_AUTH);
        unreadable
            .peer_authentications
            .remove(&Key::new("outrigger-system", "default"));
        unreadable.invalid.insert(
            (
                "PeerAuthentication",
                Key::new("outrigger-system", "default"),
            ),
            "spec: unknown field `mtl`".into(),
        );
        let next = Mesh::rebuild(&unreadable, &Options::default(), Some(&good));
        assert!(refused(verdict(
            &next,
            "PeerAuthentication",
            "outrigger-system",
            "default"
        ))
        .1
        .ends_with(&format!("({PREVIOUS_STAYS})")));
        assert_eq!(mtls(&next, "billing", "x"), Mtls::strict([]));
        // With no history, nothing applies: PERMISSIVE.
        let fresh = Mesh::build(&unreadable, &Options::default());
        assert_eq!(mtls(&fresh, "billing", "x"), Mtls::default());
    }

    const POLICIES: &str = r#"
apiVersion: v1
kind: Pod
metadata: { name: web-1, namespace: shop, labels: { app: web } }
spec: { containers: [{ name: web }] }
---
apiVersion: v1
kind: Pod
metadata: { name: db-1, namespace: shop, labels: { app: db } }
spec: { containers: [{ name: db }] }
---
apiVersion: outrigger.dev/v1alpha1
kind: AuthorizationPolicy
metadata: { name: web-read, namespace: shop }
spec:
  selector: { matchLabels: { app: web } }
  rules: [{ to: [{ operation: { methods: [GET] } }] }]
---
apiVersion: outrigger.dev/v1alpha1
kind: AuthorizationPolicy
metadata: { name: no-debug, namespace: shop }
spec: { action: DENY, rules: [{ to: [{ operation: { ports: ["9090"] } }] }] }
---
apiVersion: outrigger.dev/v1alpha1
kind: AuthorizationPolicy
metadata: { name: mesh-wide, namespace: outrigger-system }
spec: { action: DENY, rules: [{ from: [{ source: { namespaces: [quarantine] } }] }] }
---
apiVersion: outrigger.dev/v1alpha1
kind: AuthorizationPolicy
metadata: { name: elsewhere, namespace: billing }
spec: { rules: [{}] }
"#;

    fn policy_names(m: &Mesh, ns: &str, pod: &str) -> Vec<String> {
        config(m, ns, pod)
            .inbound
            .authorization
            .iter()
            .map(|p| p.name.clone())
            .collect()
    }

    #[test]
    fn a_workload_gets_the_authorization_policies_that_select_it() {
        let m = mesh(POLICIES);
        for name in ["web-read", "no-debug", "elsewhere"] {
            let ns = if name == "elsewhere" {
                "billing"
            } else {
                "shop"
            };
            assert_eq!(
                verdict(&m, "AuthorizationPolicy", ns, name),
                Verdict::Accepted
            );
        }
        assert_eq!(
            policy_names(&m, "shop", "web-1"),
            [
                "outrigger-system/mesh-wide",
                "shop/no-debug",
                "shop/web-read"
            ]
        );
        assert_eq!(
            policy_names(&m, "shop", "db-1"),
            ["outrigger-system/mesh-wide", "shop/no-debug"],
            "the selector picks web only"
        );
        assert_eq!(
            policy_names(&m, "shop", "unknown-pod"),
            ["outrigger-system/mesh-wide", "shop/no-debug"],
            "a pod the store does not know gets the policies without a selector"
        );
        assert_eq!(
            policy_names(&m, "billing", "x"),
            ["billing/elsewhere", "outrigger-system/mesh-wide"]
        );
        let web = config(&m, "shop", "web-1");
        let read = &web.inbound.authorization[2];
        assert_eq!(
            read.action,
            outrigger_api::authz::AuthorizationAction::Allow
        );
        assert_eq!(read.rules[0].to[0].operation.methods, ["GET"]);
    }

    #[test]
    fn a_bad_authorization_policy_is_refused_by_field_and_its_previous_version_stays() {
        let good = mesh(POLICIES);
        let broken = POLICIES.replace("ports: [\"9090\"]", "ports: [\"debug\"]");
        let next = Mesh::rebuild(&store(&broken), &Options::default(), Some(&good));
        let (reason, message) = refused(verdict(&next, "AuthorizationPolicy", "shop", "no-debug"));
        assert_eq!(reason, "InvalidSpec");
        assert!(
            message.starts_with(
                "spec.rules[0].to[0].operation.ports[0]: \"debug\" is not a port number"
            ) && message.ends_with(&format!("({PREVIOUS_STAYS})")),
            "{message}"
        );
        // The DENY stays in force: a broken edit does not open the port.
        assert!(policy_names(&next, "shop", "db-1").contains(&"shop/no-debug".to_string()));
        let fresh = Mesh::build(&store(&broken), &Options::default());
        assert!(!policy_names(&fresh, "shop", "db-1").contains(&"shop/no-debug".to_string()));
    }

    #[test]
    fn destination_rule_errors_name_the_field() {
        let dr = r#"
apiVersion: outrigger.dev/v1alpha1
kind: DestinationRule
metadata: { name: reviews, namespace: shop }
spec:
  host: reviews
  subsets: [{ name: v1, labels: { version: v1 } }, { name: v1, labels: { version: v2 } }]
"#;
        let m = mesh(&format!("{REVIEWS}---{dr}"));
        let (r, msg) = refused(verdict(&m, "DestinationRule", "shop", "reviews"));
        assert_eq!(r, "InvalidSpec");
        assert!(
            msg.starts_with("spec.subsets[1].name: subset \"v1\" is defined twice"),
            "{msg}"
        );
    }

    /// The fields of Istio's own task manifests (circuit breaking,
    /// `destination-rule-all-mtls.yaml`, request timeouts' `percent`) that
    /// used to be refused: accepted and handed to the proxy as written.
    #[test]
    fn istio_task_fields_reach_the_proxy_as_written() {
        let rules = r#"
apiVersion: outrigger.dev/v1alpha1
kind: DestinationRule
metadata: { name: reviews, namespace: shop }
spec:
  host: reviews
  trafficPolicy:
    tls: { mode: ISTIO_MUTUAL }
    connectionPool:
      tcp: { maxConnections: 1, connectTimeout: 250ms }
      http: { http1MaxPendingRequests: 1, maxRequestsPerConnection: 1, maxRetries: 3, idleTimeout: 30s }
  subsets: [{ name: v1, labels: { version: v1 } }, { name: v2, labels: { version: v2 } }]
---
apiVersion: outrigger.dev/v1alpha1
kind: VirtualService
metadata: { name: reviews, namespace: shop }
spec:
  hosts: [reviews]
  gateways: [mesh]
  http:
    - match: [{ uri: { prefix: /Reviews }, ignoreUriCase: true, gateways: [mesh] }]
      fault: { delay: { percent: 100, fixedDelay: 2s } }
      route: [{ destination: { host: reviews, subset: v2 } }]
    - route: [{ destination: { host: reviews, subset: v1 } }]
"#;
        let m = mesh(&format!("{REVIEWS}---{rules}"));
        assert_eq!(
            verdict(&m, "DestinationRule", "shop", "reviews"),
            Verdict::Accepted
        );
        assert_eq!(
            verdict(&m, "VirtualService", "shop", "reviews"),
            Verdict::Accepted
        );
        let c = config(&m, "shop", "productpage-1");
        let reviews = c.services.iter().find(|s| s.name == "reviews").unwrap();
        let tp = reviews.traffic_policy.as_ref().unwrap();
        assert_eq!(
            tp.tls.as_ref().map(|t| t.mode),
            Some(outrigger_api::policy::TlsMode::IstioMutual)
        );
        let cp = tp.connection_pool.as_ref().unwrap();
        let http = cp.http.as_ref().unwrap();
        assert_eq!(http.max_requests_per_connection, Some(1));
        assert_eq!(http.max_retries, Some(3));
        assert_eq!(
            http.idle_timeout,
            Some(outrigger_api::Duration::from_secs(30))
        );
        assert_eq!(
            cp.tcp.as_ref().unwrap().connect_timeout,
            Some(outrigger_api::Duration::from_millis(250))
        );
        let route = &reviews.http[0];
        assert!(route.matches[0].ignore_uri_case);
        assert_eq!(route.matches[0].gateways, vec!["mesh".to_string()]);
        let delay = route.fault.as_ref().unwrap().delay.as_ref().unwrap();
        assert_eq!((delay.percent, delay.share()), (Some(100), 100.0));
    }

    #[test]
    fn gateways_and_tls_origination_are_refused_by_field() {
        let vs = |gateways: &str, match_gateways: &str| {
            format!(
                r#"
apiVersion: outrigger.dev/v1alpha1
kind: VirtualService
metadata: {{ name: reviews, namespace: shop }}
spec:
  hosts: [reviews]
  gateways: {gateways}
  http:
    - match: [{{ uri: {{ prefix: / }}, gateways: {match_gateways} }}]
      route: [{{ destination: {{ host: reviews }} }}]
"#
            )
        };
        let m = mesh(&format!("{REVIEWS}---{}", vs("[bookinfo-gateway]", "[]")));
        let (r, msg) = refused(verdict(&m, "VirtualService", "shop", "reviews"));
        assert_eq!(r, "InvalidSpec");
        assert!(
            msg.starts_with("spec.gateways[0]: \"bookinfo-gateway\": gateways are not supported"),
            "{msg}"
        );
        let m = mesh(&format!(
            "{REVIEWS}---{}",
            vs("[mesh]", "[mesh, istio-system/ingress]")
        ));
        let (_, msg) = refused(verdict(&m, "VirtualService", "shop", "reviews"));
        assert!(
            msg.starts_with("spec.http[0].match[0].gateways[1]: \"istio-system/ingress\""),
            "{msg}"
        );

        let dr = |mode: &str| {
            format!(
                r#"
apiVersion: outrigger.dev/v1alpha1
kind: DestinationRule
metadata: {{ name: reviews, namespace: shop }}
spec:
  host: reviews
  trafficPolicy: {{ tls: {{ mode: {mode} }} }}
"#
            )
        };
        for mode in ["SIMPLE", "MUTUAL"] {
            let m = mesh(&format!("{REVIEWS}---{}", dr(mode)));
            let (r, msg) = refused(verdict(&m, "DestinationRule", "shop", "reviews"));
            assert_eq!(r, "InvalidSpec");
            assert!(
                msg.starts_with("spec.trafficPolicy.tls.mode: SIMPLE and MUTUAL"),
                "{msg}"
            );
        }
        let m = mesh(&format!("{REVIEWS}---{}", dr("DISABLE")));
        assert_eq!(
            verdict(&m, "DestinationRule", "shop", "reviews"),
            Verdict::Accepted
        );
    }

    #[test]
    fn port_names_and_app_protocols_pick_opaque_services() {
        assert_eq!(protocol_of(Some("tcp-db"), None), ServiceProtocol::Opaque);
        assert_eq!(protocol_of(Some("mysql"), None), ServiceProtocol::Opaque);
        assert_eq!(
            protocol_of(Some("http"), Some("redis")),
            ServiceProtocol::Opaque
        );
        assert_eq!(protocol_of(Some("grpc-api"), None), ServiceProtocol::Http2);
        assert_eq!(protocol_of(Some("http"), None), ServiceProtocol::Http);
        assert_eq!(protocol_of(Some("http-web"), None), ServiceProtocol::Http);
        assert_eq!(protocol_of(Some("http2-web"), None), ServiceProtocol::Http2);
        assert_eq!(
            protocol_of(Some("web"), Some("kubernetes.io/h2c")),
            ServiceProtocol::Http2
        );
        assert_eq!(protocol_of(Some("web"), None), ServiceProtocol::Detect);
        assert_eq!(protocol_of(None, None), ServiceProtocol::Detect);
    }

    #[test]
    fn export_to_parses_istio_values() {
        assert_eq!(ExportTo::parse(&[], "a"), Ok(ExportTo::All));
        assert_eq!(
            ExportTo::parse(&[".".into(), "b".into()], "a"),
            Ok(ExportTo::Namespaces(BTreeSet::from([
                "a".into(),
                "b".into()
            ])))
        );
        assert!(ExportTo::parse(&["~".into()], "a")
            .unwrap_err()
            .contains("not supported"));
        assert!(ExportTo::parse(&["Bad_NS".into()], "a").is_err());
    }

    #[test]
    fn a_refused_edit_keeps_the_last_accepted_version_in_force() {
        let dr = CANARY.split("---").next().unwrap();
        let vs = |subset: &str| {
            format!(
                r#"
apiVersion: outrigger.dev/v1alpha1
kind: VirtualService
metadata: {{ name: reviews, namespace: shop }}
spec:
  hosts: [reviews]
  http: [{{ route: [{{ destination: {{ host: reviews, subset: {subset} }} }}] }}]
"#
            )
        };
        let good = Mesh::build(
            &store(&format!("{REVIEWS}---{dr}---{}", vs("v1"))),
            &Options::default(),
        );
        assert_eq!(
            verdict(&good, "VirtualService", "shop", "reviews"),
            Verdict::Accepted
        );
        let bad_store = store(&format!("{REVIEWS}---{dr}---{}", vs("v9")));
        let next = Mesh::rebuild(&bad_store, &Options::default(), Some(&good));
        let (reason, message) = refused(verdict(&next, "VirtualService", "shop", "reviews"));
        assert_eq!(reason, "UnknownSubset");
        assert!(
            message.ends_with(&format!("({PREVIOUS_STAYS})")),
            "{message}"
        );
        let c = config(&next, "shop", "productpage-1");
        let reviews = c.services.iter().find(|s| s.name == "reviews").unwrap();
        assert_eq!(
            reviews.http[0].route[0].destination.subset.as_deref(),
            Some("v1"),
            "v1 stays"
        );
        // And again from that mesh: the good version is still the one in force.
        let again = Mesh::rebuild(&bad_store, &Options::default(), Some(&next));
        let c = config(&again, "shop", "productpage-1");
        assert_eq!(
            c.services
                .iter()
                .find(|s| s.name == "reviews")
                .unwrap()
                .http
                .len(),
            1
        );
        // Without history (a restarted control plane), the bad version is
        // not applied, and its host answers 503 instead of spreading.
        let fresh = Mesh::build(&bad_store, &Options::default());
        assert_fails_closed(&config(&fresh, "shop", "productpage-1"), "shop/reviews");
        // Deleting the resource is always taken.
        let gone = Mesh::rebuild(
            &store(&format!("{REVIEWS}---{dr}")),
            &Options::default(),
            Some(&next),
        );
        assert!(config(&gone, "shop", "productpage-1")
            .services
            .iter()
            .all(|s| s.http.is_empty()));
    }

    #[test]
    fn a_destination_rule_edit_that_drops_a_subset_in_use_is_refused() {
        let (dr, vs) = CANARY.split_once("---").unwrap();
        let good = mesh(&format!("{REVIEWS}---{CANARY}"));
        let dr_v1_only = dr.replace("    - { name: v2, labels: { version: v2 } }\n", "");
        assert_ne!(dr_v1_only, dr);
        // The rule loses v2 while the route still sends 25 % there.
        let edited = store(&format!("{REVIEWS}---{dr_v1_only}---{vs}"));
        let next = Mesh::rebuild(&edited, &Options::default(), Some(&good));
        let (reason, message) = refused(verdict(&next, "DestinationRule", "shop", "reviews"));
        assert_eq!(reason, "SubsetInUse");
        assert!(
            message.starts_with("spec.subsets: subset \"v2\" of reviews.shop is removed, but VirtualService shop/reviews routes to it")
                && message.ends_with(&format!("({PREVIOUS_STAYS})")),
            "{message}"
        );
        assert_eq!(
            verdict(&next, "VirtualService", "shop", "reviews"),
            Verdict::Accepted,
            "the route keeps working"
        );
        let c = config(&next, "shop", "productpage-1");
        let reviews = c.services.iter().find(|s| s.name == "reviews").unwrap();
        assert_eq!(reviews.subsets.len(), 2, "both subsets stay");
        // Route first, then rule (or both at once): taken.
        let vs_v1_only = vs.replace("          weight: 75\n", "").replace(
            "        - destination: { host: reviews, subset: v2 }\n          weight: 25\n",
            "",
        );
        let both = store(&format!("{REVIEWS}---{dr_v1_only}---{vs_v1_only}"));
        let after = Mesh::rebuild(&both, &Options::default(), Some(&next));
        assert_eq!(
            verdict(&after, "DestinationRule", "shop", "reviews"),
            Verdict::Accepted
        );
        assert_eq!(
            verdict(&after, "VirtualService", "shop", "reviews"),
            Verdict::Accepted
        );
        let c = config(&after, "shop", "productpage-1");
        let reviews = c.services.iter().find(|s| s.name == "reviews").unwrap();
        assert_eq!(reviews.subsets.len(), 1);
        assert_eq!(reviews.http[0].route.len(), 1);
    }

    #[test]
    fn a_destination_rule_moved_to_another_host_under_a_route_is_refused() {
        let (dr, vs) = CANARY.split_once("---").unwrap();
        let good = mesh(&format!("{REVIEWS}---{CANARY}"));
        let moved = dr.replace("host: reviews", "host: ratings");
        let next = Mesh::rebuild(
            &store(&format!("{REVIEWS}---{moved}---{vs}")),
            &Options::default(),
            Some(&good),
        );
        let (reason, message) = refused(verdict(&next, "DestinationRule", "shop", "reviews"));
        assert_eq!(reason, "SubsetInUse");
        assert!(
            message.starts_with("spec.host: subset \"v1\" of reviews.shop is removed"),
            "{message}"
        );
        assert_eq!(
            verdict(&next, "VirtualService", "shop", "reviews"),
            Verdict::Accepted
        );
    }

    #[test]
    fn the_route_in_force_counts_not_a_refused_edit_of_it() {
        let (dr, vs) = CANARY.split_once("---").unwrap();
        let good = mesh(&format!("{REVIEWS}---{CANARY}"));
        let dr_v1_only = dr.replace("    - { name: v2, labels: { version: v2 } }\n", "");
        // The route's edit drops v2 but is refused for another reason: the
        // version in force (which sends to v2) stays, so v2 must stay too.
        let vs_broken = vs.replace("host: reviews, subset: v2", "host: nowhere, subset: v2");
        let next = Mesh::rebuild(
            &store(&format!("{REVIEWS}---{dr_v1_only}---{vs_broken}")),
            &Options::default(),
            Some(&good),
        );
        assert_eq!(
            refused(verdict(&next, "DestinationRule", "shop", "reviews")).0,
            "SubsetInUse"
        );
        let c = config(&next, "shop", "productpage-1");
        let reviews = c.services.iter().find(|s| s.name == "reviews").unwrap();
        assert_eq!(
            reviews.http[0].route.len(),
            2,
            "the route in force still applies"
        );
        assert_eq!(reviews.subsets.len(), 2);
    }

    #[test]
    fn a_route_that_applies_nothing_does_not_hold_a_rule_back() {
        let (dr, vs) = CANARY.split_once("---").unwrap();
        // A second route for the same host, refused (Conflict: the oldest
        // wins), that sends to v2: it is not in force, so it does not count.
        let other = vs
            .replace(
                "name: reviews, namespace: shop",
                "name: reviews-old, namespace: shop",
            )
            .replace("subset: v1 }", "subset: v2 }");
        let before = format!("{REVIEWS}---{dr}---{vs}---{other}");
        let good = mesh(&before);
        assert_eq!(
            refused(verdict(&good, "VirtualService", "shop", "reviews-old")).0,
            "Conflict"
        );
        let vs_v1_only = vs.replace("subset: v2 }", "subset: v1 }");
        let dr_v1_only = dr.replace("    - { name: v2, labels: { version: v2 } }\n", "");
        let next = Mesh::rebuild(
            &store(&format!(
                "{REVIEWS}---{dr_v1_only}---{vs_v1_only}---{other}"
            )),
            &Options::default(),
            Some(&good),
        );
        assert_eq!(
            verdict(&next, "DestinationRule", "shop", "reviews"),
            Verdict::Accepted
        );
        assert_eq!(
            verdict(&next, "VirtualService", "shop", "reviews"),
            Verdict::Accepted
        );
    }

    #[test]
    fn a_route_exported_wider_than_its_destination_rule_brings_the_subsets_along() {
        let yaml = format!(
            "{REVIEWS}---{}",
            r#"
apiVersion: outrigger.dev/v1alpha1
kind: DestinationRule
metadata: { name: reviews, namespace: shop }
spec:
  host: reviews
  exportTo: ["."]
  subsets: [{ name: v1, labels: { version: v1 } }]
---
apiVersion: outrigger.dev/v1alpha1
kind: VirtualService
metadata: { name: reviews, namespace: shop }
spec:
  hosts: [reviews]
  http: [{ route: [{ destination: { host: reviews, subset: v1 } }] }]
"#
        );
        let all = Mesh::build(
            &store(&yaml),
            &Options {
                default_export_to: ExportTo::All,
                ..Options::default()
            },
        );
        // `config` validates the snapshot as the proxy would.
        let c = config(&all, "elsewhere", "p");
        let reviews = c.services.iter().find(|s| s.name == "reviews").unwrap();
        assert_eq!(reviews.http.len(), 1);
        assert_eq!(reviews.subsets.len(), 1, "the subset the route names");
        // A proxy whose routes name no subset of it does not get the rule.
        assert!(c
            .services
            .iter()
            .find(|s| s.name == "ratings")
            .unwrap()
            .subsets
            .is_empty());
    }

    #[test]
    fn an_unreadable_resource_is_refused_by_name_and_its_last_accepted_version_stays() {
        let good = Mesh::build(
            &store(&format!("{REVIEWS}---{CANARY}")),
            &Options::default(),
        );
        let mut bad = store(REVIEWS);
        let dr = store(CANARY).destination_rules;
        bad.destination_rules = dr;
        bad.invalid.insert(
            ("VirtualService", Key::new("shop", "reviews")),
            "spec: unknown field `mirror`".into(),
        );
        let next = Mesh::rebuild(&bad, &Options::default(), Some(&good));
        let (reason, message) = refused(verdict(&next, "VirtualService", "shop", "reviews"));
        assert_eq!(reason, "InvalidSpec");
        assert!(
            message.contains("mirror") && message.ends_with(&format!("({PREVIOUS_STAYS})")),
            "{message}"
        );
        let c = config(&next, "shop", "productpage-1");
        assert_eq!(
            c.services
                .iter()
                .find(|s| s.name == "reviews")
                .unwrap()
                .http[0]
                .route
                .len(),
            2
        );
        // With no history it applies nothing.
        let fresh = Mesh::build(&bad, &Options::default());
        assert!(
            refused(verdict(&fresh, "VirtualService", "shop", "reviews"))
                .1
                .ends_with("`mirror`")
        );
        assert!(config(&fresh, "shop", "productpage-1")
            .services
            .iter()
            .all(|s| s.http.is_empty()));
    }

    /// The deleted resources kept in force, as `kind key <- users`.
    fn kept(m: &Mesh) -> Vec<String> {
        m.kept_deleted()
            .iter()
            .map(|(id, users)| {
                let users: Vec<String> = users.iter().map(ToString::to_string).collect();
                format!("{id} <- {}", users.join(","))
            })
            .collect()
    }

    fn reviews_of(m: &Mesh) -> Service {
        config(m, "shop", "productpage-1")
            .services
            .into_iter()
            .find(|s| s.name == "reviews")
            .unwrap()
    }

    #[test]
    fn a_deleted_destination_rule_stays_in_force_while_a_route_uses_it() {
        let (dr, vs) = CANARY.split_once("---").unwrap();
        let good = mesh(&format!("{REVIEWS}---{CANARY}"));
        let without_rule = store(&format!("{REVIEWS}---{vs}"));
        let next = Mesh::rebuild(&without_rule, &Options::default(), Some(&good));
        // The route stays as it was, with the subsets it sends to: nothing
        // spreads over every version.
        let reviews = reviews_of(&next);
        assert_eq!(reviews.http, reviews_of(&good).http);
        assert_eq!(reviews.subsets, reviews_of(&good).subsets);
        assert_eq!(reviews.traffic_policy, reviews_of(&good).traffic_policy);
        let (reason, message) = refused(verdict(&next, "VirtualService", "shop", "reviews"));
        assert_eq!(reason, "UnknownSubset");
        assert_eq!(
            message,
            "spec.http[0].route[0].destination.subset: subset \"v1\" of reviews.shop is defined \
             by DestinationRule shop/reviews, which is deleted; its last accepted version stays \
             in force while routes in force use it"
        );
        assert_eq!(
            kept(&next),
            ["DestinationRule shop/reviews <- shop/reviews"]
        );
        assert!(
            !next
                .verdicts()
                .keys()
                .any(|id| id.kind == "DestinationRule"),
            "a deleted resource has no verdict"
        );
        // It stays from one change to the next.
        let again = Mesh::rebuild(&without_rule, &Options::default(), Some(&next));
        assert_eq!(reviews_of(&again).http, reviews.http);
        assert_eq!(kept(&again), kept(&next));
        // Put back: it applies as written, and nothing is kept.
        let back = Mesh::rebuild(
            &store(&format!(
                "{REVIEWS}---{}---{vs}",
                dr.replace("consecutive5xxErrors: 3", "consecutive5xxErrors: 5")
            )),
            &Options::default(),
            Some(&again),
        );
        assert_eq!(
            verdict(&back, "VirtualService", "shop", "reviews"),
            Verdict::Accepted
        );
        assert_eq!(
            verdict(&back, "DestinationRule", "shop", "reviews"),
            Verdict::Accepted
        );
        assert!(kept(&back).is_empty());
        assert_eq!(
            reviews_of(&back)
                .traffic_policy
                .unwrap()
                .outlier_detection
                .unwrap()
                .consecutive_5xx_errors,
            5
        );
        // Once no route in force uses it, the deletion is taken.
        let plain = vs
            .replace(", subset: v1 }", " }")
            .replace(
                "        - destination: { host: reviews, subset: v2 }\n          weight: 25\n",
                "",
            )
            .replace("          weight: 75\n", "");
        let released = Mesh::rebuild(
            &store(&format!("{REVIEWS}---{plain}")),
            &Options::default(),
            Some(&again),
        );
        assert_eq!(
            verdict(&released, "VirtualService", "shop", "reviews"),
            Verdict::Accepted
        );
        assert!(kept(&released).is_empty());
        let reviews = reviews_of(&released);
        assert!(reviews.subsets.is_empty() && reviews.traffic_policy.is_none());
        assert_eq!(reviews.http[0].route[0].destination.subset, None);
    }

    #[test]
    fn a_route_edited_onto_fewer_subsets_as_its_rule_is_deleted_keeps_the_rule() {
        let (_, vs) = CANARY.split_once("---").unwrap();
        let good = mesh(&format!("{REVIEWS}---{CANARY}"));
        let v1_only = vs
            .replace(
                "        - destination: { host: reviews, subset: v2 }\n          weight: 25\n",
                "",
            )
            .replace("          weight: 75\n", "");
        let next = Mesh::rebuild(
            &store(&format!("{REVIEWS}---{v1_only}")),
            &Options::default(),
            Some(&good),
        );
        // The edited route applies, on the rule it still needs.
        let reviews = reviews_of(&next);
        assert_eq!(reviews.http[0].route.len(), 1);
        assert_eq!(reviews.subsets.len(), 2);
        assert_eq!(
            refused(verdict(&next, "VirtualService", "shop", "reviews")).0,
            "UnknownSubset"
        );
        assert_eq!(
            kept(&next),
            ["DestinationRule shop/reviews <- shop/reviews"]
        );
    }

    /// `ratings` routed to the `reviews` Service (a dark launch), with
    /// reviews' rule; and a route on `reviews` itself to `ratings` half the time.
    fn routes_across(yaml: &str) -> String {
        let (dr, _) = CANARY.split_once("---").unwrap();
        format!(
            "{yaml}---{dr}---{}",
            r#"
apiVersion: outrigger.dev/v1alpha1
kind: VirtualService
metadata: { name: ratings, namespace: shop }
spec:
  hosts: [ratings]
  http: [{ route: [{ destination: { host: reviews, subset: v1 } }] }]
"#
        )
    }

    #[test]
    fn a_service_deleted_under_a_route_answers_503_and_never_spreads_elsewhere() {
        let good = mesh(&routes_across(REVIEWS));
        assert_eq!(
            verdict(&good, "VirtualService", "shop", "ratings"),
            Verdict::Accepted
        );
        // The reviews Service and its EndpointSlice are deleted.
        let gone: String = REVIEWS
            .split("---")
            .filter(|d| !d.contains("name: reviews,") && !d.contains("name: reviews-abc"))
            .collect::<Vec<_>>()
            .join("---");
        assert!(!gone.contains("kind: EndpointSlice") && gone.contains("name: ratings"));
        let next = Mesh::rebuild(
            &store(&routes_across(&gone)),
            &Options::default(),
            Some(&good),
        );
        let c = config(&next, "shop", "productpage-1");
        let ratings = c.services.iter().find(|s| s.name == "ratings").unwrap();
        assert_eq!(
            ratings.http,
            good.config_for(&ProxyId {
                namespace: "shop".into(),
                pod: "productpage-1".into()
            })
            .services
            .iter()
            .find(|s| s.name == "ratings")
            .unwrap()
            .http,
            "ratings keeps its route: its own endpoints get nothing it did not get before"
        );
        let reviews = c.services.iter().find(|s| s.name == "reviews").unwrap();
        assert!(
            reviews.endpoints.is_empty() && reviews.addresses.is_empty(),
            "what is routed to a deleted Service answers 503; nothing can dial it"
        );
        assert_eq!(reviews.subsets.len(), 2, "its rule still applies to it");
        let (reason, message) = refused(verdict(&next, "VirtualService", "shop", "ratings"));
        assert_eq!(reason, "UnknownHost");
        assert!(
            message.starts_with(
                "spec.http[0].route[0].destination.host: Service shop/reviews is deleted"
            ),
            "{message}"
        );
        assert_eq!(
            verdict(&next, "DestinationRule", "shop", "reviews"),
            Verdict::Accepted
        );
        assert_eq!(kept(&next), ["Service shop/reviews <- shop/ratings"]);
        // The route that made ratings send there goes: so does the Service.
        let without_route = store(&format!("{gone}---{}", CANARY.split_once("---").unwrap().0));
        let after = Mesh::rebuild(&without_route, &Options::default(), Some(&next));
        assert!(kept(&after).is_empty());
        assert!(config(&after, "shop", "productpage-1")
            .services
            .iter()
            .all(|s| s.name != "reviews"));
    }

    #[test]
    fn a_deleted_service_no_route_in_force_uses_any_more_is_not_kept() {
        let both = r#"
apiVersion: outrigger.dev/v1alpha1
kind: VirtualService
metadata: { name: reviews, namespace: shop }
spec:
  hosts: [reviews]
  http:
    - route:
        - { destination: { host: reviews, subset: v1 }, weight: 50 }
        - { destination: { host: ratings }, weight: 50 }
"#;
        let (dr, _) = CANARY.split_once("---").unwrap();
        let good = mesh(&format!("{REVIEWS}---{dr}---{both}"));
        assert_eq!(
            verdict(&good, "VirtualService", "shop", "reviews"),
            Verdict::Accepted
        );
        // In one change: the rule and the ratings Service are deleted, and
        // the route sends everything to v1.
        let no_ratings: String = REVIEWS
            .split("---")
            .filter(|d| !d.contains("name: ratings"))
            .collect::<Vec<_>>()
            .join("---");
        let v1 = both
            .replace(", weight: 50 }", " }")
            .replace("        - { destination: { host: ratings } }\n", "");
        let next = Mesh::rebuild(
            &store(&format!("{no_ratings}---{v1}")),
            &Options::default(),
            Some(&good),
        );
        assert_eq!(reviews_of(&next).http[0].route.len(), 1);
        assert_eq!(
            kept(&next),
            ["DestinationRule shop/reviews <- shop/reviews"]
        );
        assert!(config(&next, "shop", "productpage-1")
            .services
            .iter()
            .all(|s| s.name != "ratings"));
    }

    #[test]
    fn a_route_whose_every_host_is_deleted_keeps_nothing() {
        let good = mesh(&routes_across(REVIEWS));
        let no_ratings: String = REVIEWS
            .split("---")
            .filter(|d| !d.contains("name: ratings"))
            .collect::<Vec<_>>()
            .join("---");
        let next = Mesh::rebuild(
            &store(&routes_across(&no_ratings)),
            &Options::default(),
            Some(&good),
        );
        assert_eq!(
            refused(verdict(&next, "VirtualService", "shop", "ratings")).0,
            "UnknownHost"
        );
        assert!(kept(&next).is_empty());
    }

    #[test]
    fn a_route_keeps_its_other_hosts_when_one_of_them_is_deleted() {
        let (dr, _) = CANARY.split_once("---").unwrap();
        let two_hosts = r#"
apiVersion: outrigger.dev/v1alpha1
kind: VirtualService
metadata: { name: both, namespace: shop }
spec:
  hosts: [reviews, ratings]
  http: [{ route: [{ destination: { host: reviews, subset: v1 } }] }]
"#;
        let good = mesh(&format!("{REVIEWS}---{dr}---{two_hosts}"));
        assert_eq!(
            verdict(&good, "VirtualService", "shop", "both"),
            Verdict::Accepted
        );
        let no_ratings: String = REVIEWS
            .split("---")
            .filter(|d| !d.contains("name: ratings"))
            .collect::<Vec<_>>()
            .join("---");
        let next = Mesh::rebuild(
            &store(&format!("{no_ratings}---{dr}---{two_hosts}")),
            &Options::default(),
            Some(&good),
        );
        assert_eq!(
            reviews_of(&next).http,
            reviews_of(&good).http,
            "reviews keeps its route"
        );
        let (reason, message) = refused(verdict(&next, "VirtualService", "shop", "both"));
        assert_eq!(reason, "UnknownHost");
        assert!(
            message.starts_with("spec.hosts[1]: Service shop/ratings is deleted")
                && message.ends_with("nothing can dial it, and this VirtualService stays in force for its other hosts"),
            "{message}"
        );
        let ratings = config(&next, "shop", "productpage-1")
            .services
            .into_iter()
            .find(|s| s.name == "ratings")
            .unwrap();
        assert!(ratings.addresses.is_empty() && ratings.endpoints.is_empty());
    }
}
