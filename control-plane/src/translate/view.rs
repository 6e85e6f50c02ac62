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

    /// The peer-authentication mode of the proxy of `id` (see
    /// [`Security::mtls_for`]).
    pub fn mtls_for(&self, id: &ProxyId) -> Mtls {
        self.security.mtls_for(&id.namespace, self.pod_labels(id))
    }

    fn pod_labels(&self, id: &ProxyId) -> Option<&BTreeMap<String, String>> {
        self.pods
            .get(&Key::new(&id.namespace, &id.pod))
            .map(|p| &p.labels)
    }
}
