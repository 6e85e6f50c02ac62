//! Services, endpoints and pods: a Kubernetes Service becomes the wire
//! model's [`Service`] entries, one per TCP port, with the ready endpoints
//! of its EndpointSlices (or of a hand-written Endpoints object), each
//! endpoint described by its Pod (labels, workload, identity, meshed or
//! not). Also the port's protocol as Istio selects it.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ObjectReference, Pod, Service as KubeService};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use outrigger_api::policy::{HttpRoute, Subset, TrafficPolicy};
use outrigger_api::{Endpoint, Service, ServiceProtocol};

use super::export::{ExportTo, Overlay};
use crate::store::{Key, Store};

/// The label EndpointSlices carry to name their Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The name of the injected proxy container; a pod that has it is meshed.
pub const PROXY_CONTAINER: &str = "outrigger-proxy";
/// A pod annotation that marks a pod as meshed where no container shows it
/// (hand-written local manifests).
pub const MESHED_ANNOTATION: &str = "outrigger.dev/meshed";

/// One Kubernetes Service, resolved.
#[derive(Clone, Debug)]
pub(super) struct MeshService {
    pub(super) export: ExportTo,
    /// One per Service port, without routes, subsets or policy.
    pub(super) entries: Vec<Service>,
    pub(super) routes: Option<Overlay<Vec<HttpRoute>>>,
    pub(super) rule: Option<Overlay<(Vec<Subset>, Option<TrafficPolicy>)>>,
}

/// Pod facts the snapshots use.
#[derive(Clone, Debug)]
pub(super) struct PodFacts {
    pub(super) labels: BTreeMap<String, String>,
    pub(super) workload: String,
    pub(super) service_account: String,
    pub(super) meshed: bool,
}

/// The SPIFFE identity of a ServiceAccount's workloads.
pub(super) fn identity(trust_domain: &str, namespace: &str, service_account: &str) -> String {
    format!("spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}")
}

/// Each Service's EndpointSlices (by their [`SERVICE_NAME_LABEL`]), found
/// once rather than by a scan of every slice per Service.
pub(super) fn slices_by_service(store: &Store) -> BTreeMap<Key, Vec<&EndpointSlice>> {
    let mut slices: BTreeMap<Key, Vec<&EndpointSlice>> = BTreeMap::new();
    for (k, slice) in &store.endpoint_slices {
        if let Some(name) = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
        {
            slices
                .entry(Key::new(&k.namespace, name))
                .or_default()
                .push(slice);
        }
    }
    slices
}

/// What a Service's endpoints are resolved against: the pods the store
/// has, and the trust domain of their identities.
pub(super) struct Workloads<'a> {
    pub(super) pods: &'a BTreeMap<Key, PodFacts>,
    pub(super) trust_domain: &'a str,
}

impl Workloads<'_> {
    /// A Service with its endpoints, one entry per port. Headless and
    /// ExternalName Services have no virtual address and are left out.
    pub(super) fn resolve_service(
        &self,
        store: &Store,
        slices: &[&EndpointSlice],
        key: &Key,
        svc: &KubeService,
        export: ExportTo,
    ) -> Option<MeshService> {
        let spec = svc.spec.as_ref()?;
        if spec.type_.as_deref() == Some("ExternalName") {
            return None;
        }
        let mut addresses: Vec<String> = spec.cluster_ips.clone().unwrap_or_default();
        if addresses.is_empty() {
            addresses.extend(spec.cluster_ip.clone());
        }
        addresses.retain(|a| a != "None" && !a.is_empty());
        let mut entries = Vec::new();
        for port in spec.ports.iter().flatten() {
            let Ok(number) = u16::try_from(port.port) else {
                continue;
            };
            if number == 0 || port.protocol.as_deref().is_some_and(|p| p != "TCP") {
                continue;
            }
            let endpoints =
                self.endpoints_of(store, slices, key, port.name.as_deref().unwrap_or(""));
            entries.push(Service {
                name: key.name.clone(),
                namespace: key.namespace.clone(),
                addresses: addresses.clone(),
                ports: vec![number],
                protocol: protocol_of(port.name.as_deref(), port.app_protocol.as_deref()),
                endpoints,
                http: Vec::new(),
                subsets: Vec::new(),
                traffic_policy: None,
            });
        }
        if entries.is_empty() {
            return None;
        }
        Some(MeshService {
            export,
            entries,
            routes: None,
            rule: None,
        })
    }

    /// The ready endpoints of one Service port, from its EndpointSlices and
    /// from a hand-written Endpoints object of the same name.
    fn endpoints_of(
        &self,
        store: &Store,
        slices: &[&EndpointSlice],
        svc: &Key,
        port_name: &str,
    ) -> Vec<Endpoint> {
        let mut out: BTreeMap<String, Endpoint> = BTreeMap::new();
        for slice in slices {
            if slice.address_type == "FQDN" {
                continue;
            }
            let Some(port) = slice
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref().unwrap_or("") == port_name)
                .and_then(|p| p.port)
                .and_then(|p| u16::try_from(p).ok())
            else {
                continue;
            };
            for ep in &slice.endpoints {
                let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
                if !ready {
                    continue;
                }
                let pod = self.pod_of(ep.target_ref.as_ref(), &svc.namespace);
                for addr in &ep.addresses {
                    let e = self.endpoint(addr, port, pod, &svc.namespace);
                    out.insert(e.address.clone(), e);
                }
            }
        }
        if let Some(eps) = store.endpoints.get(svc) {
            for subset in eps.subsets.iter().flatten() {
                let Some(port) = subset
                    .ports
                    .iter()
                    .flatten()
                    .find(|p| p.name.as_deref().unwrap_or("") == port_name)
                    .and_then(|p| u16::try_from(p.port).ok())
                else {
                    continue;
                };
                for a in subset.addresses.iter().flatten() {
                    let pod = self.pod_of(a.target_ref.as_ref(), &svc.namespace);
                    let e = self.endpoint(&a.ip, port, pod, &svc.namespace);
                    out.insert(e.address.clone(), e);
                }
            }
        }
        out.into_values().collect()
    }

    /// The pod an endpoint's `targetRef` names, when the store has it.
    fn pod_of(&self, target: Option<&ObjectReference>, namespace: &str) -> Option<&PodFacts> {
        let target = target.filter(|r| r.kind.as_deref() == Some("Pod"))?;
        self.pods.get(&Key::new(namespace, target.name.as_ref()?))
    }

    fn endpoint(&self, ip: &str, port: u16, pod: Option<&PodFacts>, namespace: &str) -> Endpoint {
        let address = if ip.contains(':') {
            format!("[{ip}]:{port}")
        } else {
            format!("{ip}:{port}")
        };
        match pod {
            Some(p) => Endpoint {
                address,
                labels: p.labels.clone(),
                workload: Some(p.workload.clone()),
                identity: p
                    .meshed
                    .then(|| identity(self.trust_domain, namespace, &p.service_account)),
                meshed: p.meshed,
            },
            None => Endpoint {
                address,
                labels: BTreeMap::new(),
                workload: None,
                identity: None,
                meshed: false,
            },
        }
    }
}

/// Istio's protocol selection: `appProtocol`, else the port name's prefix
/// (`tcp-db`, `mysql`, `http-web`, `grpc-api`). Protocols we cannot parse
/// as HTTP skip detection; a declared HTTP protocol also says what the app
/// speaks (HTTP/1.1 for `http`, HTTP/2 for `http2`, `grpc`, `h2c`).
pub(super) fn protocol_of(name: Option<&str>, app_protocol: Option<&str>) -> ServiceProtocol {
    const OPAQUE: [&str; 6] = ["tcp", "mysql", "mongo", "redis", "postgres", "postgresql"];
    let proto = app_protocol
        .or_else(|| name.map(|n| n.split('-').next().unwrap_or(n)))
        .unwrap_or("")
        .to_ascii_lowercase();
    match proto.as_str() {
        p if OPAQUE.contains(&p) => ServiceProtocol::Opaque,
        "http" | "grpc-web" => ServiceProtocol::Http,
        "http2" | "grpc" | "h2c" | "kubernetes.io/h2c" => ServiceProtocol::Http2,
        _ => ServiceProtocol::Detect,
    }
}

pub(super) fn pod_facts(pod: &Pod) -> PodFacts {
    let meta = &pod.metadata;
    let labels = meta.labels.clone().unwrap_or_default();
    let spec = pod.spec.as_ref();
    let meshed = meta
        .annotations
        .as_ref()
        .and_then(|a| a.get(MESHED_ANNOTATION))
        .is_some_and(|v| v == "true")
        || spec.is_some_and(|s| {
            s.containers.iter().any(|c| c.name == PROXY_CONTAINER)
                || s.init_containers
                    .iter()
                    .flatten()
                    .any(|c| c.name == PROXY_CONTAINER)
        });
    PodFacts {
        workload: workload_of(pod),
        service_account: spec
            .and_then(|s| s.service_account_name.clone())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "default".into()),
        meshed,
        labels,
    }
}

/// The workload a pod belongs to, as Istio names it (its
/// `GetDeployMetaFromPod`): the pod's controller (else its first owner),
/// where
/// - a ReplicaSet stands for its Deployment: its name without the pod's
///   `pod-template-hash` label (Argo Rollouts: `rollouts-pod-template-hash`);
///   without the label, without a trailing `-<hash>` of the shape the
///   Deployment controller generates ([`is_pod_template_hash`]);
/// - a Job whose name ends in `-<8 to 10 digits>` (the scheduled time a
///   CronJob's Jobs are named by) stands for its CronJob;
/// - a ReplicationController with a `deploymentconfig` label (OpenShift)
///   for that DeploymentConfig;
///
/// and the pod's own name when it has no owner. Unlike Istio, an owner
/// counts without the pod having a `generateName`, so a StatefulSet's
/// pods are its workload, not one workload each.
pub fn workload_of(pod: &Pod) -> String {
    let meta = &pod.metadata;
    let label = |k: &str| {
        meta.labels
            .as_ref()
            .and_then(|l| l.get(k))
            .filter(|v| !v.is_empty())
    };
    let owner = meta
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
        .or_else(|| meta.owner_references.iter().flatten().next());
    let Some(o) = owner.filter(|o| !o.name.is_empty()) else {
        return meta.name.clone().unwrap_or_default();
    };
    let name = o.name.as_str();
    let strip = |hash: &str| name.strip_suffix(hash)?.strip_suffix('-');
    let top = match o.kind.as_str() {
        "ReplicaSet" => match (
            label("pod-template-hash"),
            label("rollouts-pod-template-hash"),
        ) {
            (Some(h), _) => strip(h),
            (None, Some(h)) => strip(h),
            (None, None) => name
                .rsplit_once('-')
                .filter(|(d, h)| !d.is_empty() && is_pod_template_hash(h))
                .map(|(d, _)| d),
        },
        "Job" => name.rsplit_once('-').and_then(|(cron, minutes)| {
            let digits =
                (8..=10).contains(&minutes.len()) && minutes.bytes().all(|b| b.is_ascii_digit());
            (!cron.is_empty() && digits).then_some(cron)
        }),
        "ReplicationController" => label("deploymentconfig").map(String::as_str),
        _ => None,
    };
    top.unwrap_or(name).to_string()
}

/// Whether `s` has the shape of a pod-template hash as the Deployment
/// controller writes it: the decimal digits of a 32-bit hash, each
/// written as one of `bcdf456789` (`rand.SafeEncodeString`); at least 6
/// of them (a shorter hash is one in a thousand, and a short word of
/// these letters is likelier a name).
fn is_pod_template_hash(s: &str) -> bool {
    (6..=10).contains(&s.len()) && s.bytes().all(|b| b"bcdf456789".contains(&b))
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::Pod;
    use outrigger_api::ServiceProtocol;

    use super::*;
    use crate::translate::fixtures::*;

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
}
