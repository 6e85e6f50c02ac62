//! Per-proxy views: what one proxy receives from the resolved mesh. Its
//! identity (from its Pod), the Services of its namespace and those
//! exported to it, with the routes and rules exported to it, plus every
//! Service those routes send to; and its inbound policies.

use std::collections::{BTreeMap, BTreeSet};

use outrigger_api::inbound::{Inbound, Mtls};
use outrigger_api::{ProxyInfo, Service, Snapshot};

use super::mesh::{host_key, Mesh};
use super::services::identity;
use crate::store::Key;

/// Who a proxy says it is: its pod, from the downward API.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProxyId {
    pub namespace: String,
    pub pod: String,
}

/// What one proxy receives: who it is and the services it may reach.
#[derive(Clone, Debug, PartialEq)]
pub struct ProxyConfig {
    pub proxy: ProxyInfo,
    pub inbound: Inbound,
    pub services: Vec<Service>,
}

impl ProxyConfig {
    /// The config as a snapshot with no listeners (they belong to the
    /// proxy's own bootstrap), for validation.
    pub fn to_snapshot(&self, version: &str) -> Snapshot {
        Snapshot {
            version: version.to_string(),
            proxy: self.proxy.clone(),
            admin: Default::default(),
            limits: Default::default(),
            http: Default::default(),
            listeners: Vec::new(),
            services: self.services.clone(),
            inbound: self.inbound.clone(),
        }
    }
}

impl Mesh {
    /// What the proxy of `id` receives. A pod the store does not know gets
    /// its namespace's view, with the pod name as its workload.
    pub fn config_for(&self, id: &ProxyId) -> ProxyConfig {
        ProxyConfig {
            proxy: self.proxy_info(id),
            inbound: self.inbound_for(id),
            services: self.services_for(&id.namespace),
        }
    }

    /// The ServiceAccount of a pod the store knows.
    pub fn service_account_of(&self, id: &ProxyId) -> Option<&str> {
        self.pods
            .get(&Key::new(&id.namespace, &id.pod))
            .map(|p| p.service_account.as_str())
    }

    /// Who the proxy is: its workload and identity, from its Pod.
    pub fn proxy_info(&self, id: &ProxyId) -> ProxyInfo {
        let pod = self.pods.get(&Key::new(&id.namespace, &id.pod));
        ProxyInfo {
            workload: pod
                .map(|p| p.workload.clone())
                .unwrap_or_else(|| id.pod.clone()),
            namespace: id.namespace.clone(),
            identity: pod.map(|p| {
                identity(
                    &self.options.trust_domain,
                    &id.namespace,
                    &p.service_account,
                )
            }),
        }
    }

    /// The services a proxy in namespace `ns` receives. They depend on the
    /// namespace alone, so the config server computes them once per
    /// namespace and shares them between its proxies.
    pub fn services_for(&self, ns: &str) -> Vec<Service> {
        // The services the proxy may address, then every service their
        // visible routes send to (which it must know to route there).
        let mut wanted: Vec<&Key> = self
            .services
            .iter()
            .filter(|(k, s)| k.namespace == ns || s.export.includes(ns))
            .map(|(k, _)| k)
            .collect();
        let mut included: BTreeSet<&Key> = BTreeSet::new();
        // Destinations a visible route names a subset of: their rule comes
        // along even where its own exportTo would not reach, or the route
        // would name a subset the proxy does not have (and the proxy would
        // refuse the whole update).
        let mut rule_needed: BTreeSet<&Key> = BTreeSet::new();
        while let Some(key) = wanted.pop() {
            if !included.insert(key) {
                continue;
            }
            let Some(ms) = self.services.get(key) else {
                continue;
            };
            if let Some(routes) = ms.routes.as_ref().filter(|r| r.export.includes(ns)) {
                for route in &routes.value {
                    for rd in &route.route {
                        if let Some((dest, _)) = self
                            .services
                            .get_key_value(&host_key(&rd.destination.host, &key.namespace))
                        {
                            if rd.destination.subset.is_some() {
                                rule_needed.insert(dest);
                            }
                            wanted.push(dest);
                        }
                    }
                }
            }
        }
        let mut services = Vec::new();
        for key in included {
            let ms = &self.services[key];
            let routes = ms.routes.as_ref().filter(|r| r.export.includes(ns));
            let rule = ms
                .rule
                .as_ref()
                .filter(|r| r.export.includes(ns) || rule_needed.contains(key));
            for entry in &ms.entries {
                let mut e = entry.clone();
                if let Some(r) = routes {
                    e.http = r.value.clone();
                }
                if let Some(r) = rule {
                    e.subsets = r.value.0.clone();
                    e.traffic_policy = r.value.1.clone();
                }
                services.push(e);
            }
        }
        services
    }

    /// What the inbound side of the proxy of `id` enforces: its
    /// peer-authentication mode and the AuthorizationPolicies that select it.
    pub fn inbound_for(&self, id: &ProxyId) -> Inbound {
        Inbound {
            mtls: self.mtls_for(id),
            authorization: self
                .security
                .authorization_for(&id.namespace, self.pod_labels(id)),
        }
    }

    /// The peer-authentication mode of the proxy of `id`, as Istio resolves
    /// it: the oldest policy that selects the pod, else its namespace's
    /// (no selector), else the mesh's (the root namespace's, no selector);
    /// an UNSET mode inherits from the next of these, and PERMISSIVE is
    /// the default. Port-level modes come from the selecting policy only.
    pub fn mtls_for(&self, id: &ProxyId) -> Mtls {
        self.security.mtls_for(&id.namespace, self.pod_labels(id))
    }

    fn pod_labels(&self, id: &ProxyId) -> Option<&BTreeMap<String, String>> {
        self.pods
            .get(&Key::new(&id.namespace, &id.pod))
            .map(|p| &p.labels)
    }
}

#[cfg(test)]
mod tests {
    use crate::translate::fixtures::*;
    use crate::translate::{ExportTo, Mesh, Options, ProxyId};

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
        let reviews = service(&c, "reviews");
        assert_eq!(reviews.http.len(), 1);
        assert_eq!(reviews.subsets.len(), 1, "the subset the route names");
        // A proxy whose routes name no subset of it does not get the rule.
        assert!(service(&c, "ratings").subsets.is_empty());
    }
}
