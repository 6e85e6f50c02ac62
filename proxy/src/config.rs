//! The configuration in force: a validated snapshot turned into the lookup
//! tables the data path uses. Built with `TryFrom`, which refuses a snapshot
//! that does not validate, so an applied `Config` is always a good one.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use outrigger_api::{ServiceProtocol, ServiceRef, Snapshot, ValidationErrors};

use crate::balance::RoundRobin;
use crate::metrics::{unknown, Name, Workload};

pub struct Config {
    pub snapshot: Arc<Snapshot>,
    /// This proxy's own workload, as the metrics name it.
    pub proxy: Workload,
    pub limits: Limits,
    services: Vec<Arc<ServiceState>>,
    by_virtual_addr: HashMap<SocketAddr, usize>,
    by_ref: HashMap<ServiceRef, usize>,
}

#[derive(Clone, Debug)]
pub struct Limits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
    pub detect_timeout: Duration,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub drain_timeout: Duration,
}

pub struct ServiceState {
    /// `name.namespace`: the `destination_service` label.
    pub label: Name,
    pub protocol: ServiceProtocol,
    pub endpoints: Vec<EndpointState>,
    balancer: RoundRobin,
}

#[derive(Clone, Debug)]
pub struct EndpointState {
    pub addr: SocketAddr,
    pub meshed: bool,
    /// Who serves at this endpoint (metric labels).
    pub peer: Workload,
}

impl ServiceState {
    /// The next endpoint, round robin; `None` when the service has none.
    pub fn pick(&self) -> Option<&EndpointState> {
        self.balancer.pick(&self.endpoints)
    }
}

impl TryFrom<Snapshot> for Config {
    type Error = ValidationErrors;

    fn try_from(snapshot: Snapshot) -> Result<Self, Self::Error> {
        snapshot.validate()?;
        let mut services = Vec::with_capacity(snapshot.services.len());
        let mut by_virtual_addr = HashMap::new();
        let mut by_ref = HashMap::new();
        for (i, svc) in snapshot.services.iter().enumerate() {
            let namespace: Name = Arc::from(svc.namespace.as_str());
            let endpoints = svc
                .endpoints
                .iter()
                .filter_map(|ep| {
                    Some(EndpointState {
                        addr: ep.socket_addr().ok()?,
                        meshed: ep.meshed,
                        peer: Workload {
                            workload: ep.workload.as_deref().map_or_else(unknown, Arc::from),
                            namespace: namespace.clone(),
                            principal: ep.identity.as_deref().map_or_else(unknown, Arc::from),
                        },
                    })
                })
                .collect();
            services.push(Arc::new(ServiceState {
                label: Arc::from(svc.qualified_name()),
                protocol: svc.protocol,
                endpoints,
                balancer: RoundRobin::default(),
            }));
            for ip in svc.virtual_ips().unwrap_or_default() {
                for port in &svc.ports {
                    by_virtual_addr.insert(SocketAddr::new(ip, *port), i);
                }
            }
            for port in &svc.ports {
                by_ref.insert(
                    ServiceRef {
                        name: svc.name.clone(),
                        namespace: svc.namespace.clone(),
                        port: *port,
                    },
                    i,
                );
            }
        }
        let l = &snapshot.limits;
        let limits = Limits {
            max_connections: l.max_connections as usize,
            header_read_timeout: l.header_read_timeout.get(),
            max_header_bytes: l.max_header_bytes as usize,
            detect_timeout: l.detect_timeout.get(),
            connect_timeout: l.connect_timeout.get(),
            idle_timeout: l.idle_timeout.get(),
            drain_timeout: l.drain_timeout.get(),
        };
        let proxy = Workload {
            workload: Arc::from(snapshot.proxy.workload.as_str()),
            namespace: Arc::from(snapshot.proxy.namespace.as_str()),
            principal: snapshot
                .proxy
                .identity
                .as_deref()
                .map_or_else(unknown, Arc::from),
        };
        Ok(Config {
            snapshot: Arc::new(snapshot),
            proxy,
            limits,
            services,
            by_virtual_addr,
            by_ref,
        })
    }
}

impl Config {
    /// The service whose virtual address a client dialed.
    pub fn service_at(&self, addr: SocketAddr) -> Option<&Arc<ServiceState>> {
        self.by_virtual_addr.get(&addr).map(|i| &self.services[*i])
    }

    pub fn service(&self, r: &ServiceRef) -> Option<&Arc<ServiceState>> {
        self.by_ref.get(r).map(|i| &self.services[*i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot() -> Snapshot {
        Snapshot::from_yaml(
            r#"
version: "7"
proxy: { workload: client, namespace: shop, identity: "spiffe://td/ns/shop/sa/client" }
services:
  - name: web
    namespace: shop
    addresses: ["10.96.0.10", "fd00::10"]
    ports: [80, 8080]
    endpoints:
      - { address: "10.0.0.1:8080", workload: web-v1, meshed: true }
      - { address: "10.0.0.2:8080" }
"#,
        )
        .unwrap()
    }

    #[test]
    fn services_are_found_by_virtual_address_and_by_name() {
        let cfg = Config::try_from(snapshot()).unwrap();
        for addr in ["10.96.0.10:80", "10.96.0.10:8080", "[fd00::10]:80"] {
            let svc = cfg.service_at(addr.parse().unwrap()).expect(addr);
            assert_eq!(&*svc.label, "web.shop");
        }
        assert!(cfg.service_at("10.96.0.10:81".parse().unwrap()).is_none());
        let r = ServiceRef {
            name: "web".into(),
            namespace: "shop".into(),
            port: 8080,
        };
        assert_eq!(cfg.service(&r).unwrap().endpoints.len(), 2);
        assert_eq!(&*cfg.proxy.principal, "spiffe://td/ns/shop/sa/client");
    }

    #[test]
    fn endpoint_labels_default_to_unknown() {
        let cfg = Config::try_from(snapshot()).unwrap();
        let svc = cfg.service_at("10.96.0.10:80".parse().unwrap()).unwrap();
        let eps = &svc.endpoints;
        assert_eq!((&*eps[0].peer.workload, eps[0].meshed), ("web-v1", true));
        assert_eq!((&*eps[1].peer.workload, eps[1].meshed), ("unknown", false));
        assert_eq!(&*eps[1].peer.namespace, "shop");
    }

    #[test]
    fn an_invalid_snapshot_is_refused_with_all_its_errors() {
        let mut s = snapshot();
        s.services[0].endpoints[0].address = "nope".into();
        s.services[0].addresses[1] = "also-nope".into();
        let errs = Config::try_from(s).err().unwrap();
        assert_eq!(
            errs.paths(),
            vec![
                "services[0].addresses[1]",
                "services[0].endpoints[0].address"
            ]
        );
    }
}
