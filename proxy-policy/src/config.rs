//! The configuration in force: a validated snapshot turned into the lookup
//! tables the data path uses. Built with `TryFrom`, which refuses a snapshot
//! that does not validate, so an applied `Config` is always a good one.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use outrigger_api::spiffe::SpiffeId;
use outrigger_api::{ServiceProtocol, ServiceRef, Snapshot, ValidationErrors};
use tokio::time::Instant;

use crate::balance::{LbPolicy, Load};
use crate::budget::RetryBudget;
use crate::outlier::{Detector, OutlierPolicy};
use crate::pool::{Pool, PoolLimits};
use crate::rate_limit::{PortLimits, TokenBucket};
use crate::route::{Backend, Route};
use crate::workload::{unknown, Name, Workload};

pub struct Config {
    pub snapshot: Arc<Snapshot>,
    /// This proxy's own workload, as the metrics name it.
    pub proxy: Workload,
    pub limits: Limits,
    services: Vec<Arc<ServiceState>>,
    by_virtual_addr: HashMap<SocketAddr, ServiceRef>,
    by_ref: HashMap<ServiceRef, usize>,
    /// Each service port's routes, in order.
    routes: HashMap<ServiceRef, Arc<[Arc<Route>]>>,
    /// Inbound listeners' rate limits, by listener name.
    inbound_limits: HashMap<String, Arc<PortLimits>>,
    /// The service this proxy's own workload serves at each of its ports
    /// (the inbound `destination_service`).
    own_services: HashMap<u16, Name>,
    /// The ports of this proxy's own workload that every service serving
    /// them declares HTTP (`http`, `http2`).
    own_http_ports: HashSet<u16>,
    /// The workloads each SPIFFE ID is seen serving in the snapshot's
    /// endpoints: what a peer proving that ID may be named.
    peer_workloads: HashMap<Name, Vec<Name>>,
}

#[derive(Clone, Debug)]
pub struct Limits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_header_count: usize,
    pub detect_timeout: Duration,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub drain_timeout: Duration,
    /// How long listeners keep accepting once a drain begins (already
    /// capped at half of `drain_timeout`: see [`Limits::accept_window`]).
    pub drain_accept: Duration,
    /// Whether the accept window ends as soon as no connection is open.
    pub drain_exit_when_idle: bool,
    pub tcp_idle_timeout: Duration,
    pub http2: Http2Limits,
}

/// What one HTTP/2 client connection may do (server side).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Http2Limits {
    pub max_concurrent_streams: u32,
    pub max_pending_accept_reset_streams: usize,
    pub max_local_error_reset_streams: usize,
    pub max_control_frames_per_second: u32,
}

impl Limits {
    /// How long listeners keep accepting new connections after a drain
    /// begins: `drain_accept`, but never more than half of the grace
    /// period (`drain_timeout`), so that the connections accepted last
    /// have the other half to finish.
    pub fn accept_window(drain_accept: Duration, drain_timeout: Duration) -> Duration {
        drain_accept.min(drain_timeout / 2)
    }
}

/// One service entry of the snapshot, with its endpoints and policies.
/// Rebuilt on every snapshot; what must outlive a snapshot (endpoint load
/// and outlier state, the retry budget, the pool's permits) is carried over
/// from the previous config by [`Config::build`].
pub struct ServiceState {
    /// `name.namespace`: the `destination_service` label.
    pub label: Name,
    pub protocol: ServiceProtocol,
    pub endpoints: Vec<EndpointState>,
    /// Indices of every endpoint, and of each subset's.
    pub all: Arc<[usize]>,
    subsets: HashMap<String, Arc<[usize]>>,
    pub lb: LbPolicy,
    pub outlier: Option<OutlierPolicy>,
    pub pool: Arc<Pool>,
    pub runtime: Arc<ServiceRuntime>,
}

/// Per-service state that lives across snapshots.
#[derive(Debug, Default)]
pub struct ServiceRuntime {
    pub budget: RetryBudget,
    /// Round-robin position.
    pub next: AtomicUsize,
}

#[derive(Clone, Debug)]
pub struct EndpointState {
    pub addr: SocketAddr,
    pub meshed: bool,
    /// The identity a meshed endpoint proves over mutual TLS.
    pub identity: Option<Arc<SpiffeId>>,
    /// Who serves at this endpoint (metric labels).
    pub peer: Workload,
    pub labels: BTreeMap<String, String>,
    pub stats: Arc<EndpointStats>,
}

/// An endpoint's live state: its load for the balancer and its outlier
/// detector. Kept across snapshots while the endpoint stays (the detector
/// is reset when its service's outlier policy changes, and retired when
/// the endpoint leaves).
#[derive(Debug)]
pub struct EndpointStats {
    pub load: Load,
    pub outlier: Detector,
    /// When the endpoint joined a service that already existed (slow
    /// start); `None` for endpoints present from the service's first snapshot.
    pub joined: Option<Instant>,
}

impl EndpointStats {
    pub fn new(outlier: Option<OutlierPolicy>, joined: Option<Instant>) -> Self {
        let now = Instant::now();
        Self {
            load: Load::new(),
            outlier: Detector::new(outlier, now),
            joined,
        }
    }
}

impl ServiceState {
    /// A subset's endpoint indices (validation guarantees it exists).
    pub fn subset(&self, name: &str) -> Option<&Arc<[usize]>> {
        self.subsets.get(name)
    }
}

impl TryFrom<Snapshot> for Config {
    type Error = ValidationErrors;

    fn try_from(snapshot: Snapshot) -> Result<Self, Self::Error> {
        Config::build(snapshot, None)
    }
}

/// Identifies a service entry across snapshots.
fn entry_key(svc: &outrigger_api::Service) -> (String, String, u16) {
    (
        svc.name.clone(),
        svc.namespace.clone(),
        svc.ports.first().copied().unwrap_or(0),
    )
}

impl Config {
    /// Validates `snapshot` and builds the tables, reusing the live state of
    /// services and endpoints that `previous` already had. Build only the
    /// config that is then put in force: an endpoint whose outlier policy
    /// changed has its detector reset here, and one that left `previous`
    /// has its detector retired (its ejection, if any, ends and is no
    /// longer counted).
    pub fn build(snapshot: Snapshot, previous: Option<&Config>) -> Result<Self, ValidationErrors> {
        snapshot.validate()?;
        let prev_services: HashMap<(String, String, u16), &Arc<ServiceState>> = previous
            .map(|p| {
                p.snapshot
                    .services
                    .iter()
                    .map(entry_key)
                    .zip(p.services.iter())
                    .collect()
            })
            .unwrap_or_default();

        let mut services = Vec::with_capacity(snapshot.services.len());
        let mut by_virtual_addr = HashMap::new();
        let mut by_ref = HashMap::new();
        for (i, svc) in snapshot.services.iter().enumerate() {
            let prev = prev_services.get(&entry_key(svc)).copied();
            services.push(Arc::new(build_service(svc, prev)));
            for port in &svc.ports {
                let r = ServiceRef {
                    name: svc.name.clone(),
                    namespace: svc.namespace.clone(),
                    port: *port,
                };
                for ip in svc.virtual_ips().unwrap_or_default() {
                    by_virtual_addr.insert(SocketAddr::new(ip, *port), r.clone());
                }
                by_ref.insert(r, i);
            }
        }

        if let Some(previous) = previous {
            retire_departed(previous, &services);
        }

        let mut routes = HashMap::new();
        for (i, svc) in snapshot.services.iter().enumerate() {
            for port in &svc.ports {
                let key = ServiceRef {
                    name: svc.name.clone(),
                    namespace: svc.namespace.clone(),
                    port: *port,
                };
                let mut list = build_routes(svc, *port, &services[i], |r| {
                    by_ref.get(r).map(|j| services[*j].clone())
                });
                if let Some(prev) = previous.and_then(|p| p.routes.get(&key)) {
                    carry_route_buckets(&mut list, prev);
                }
                routes.insert(key, list.into());
            }
        }

        let inbound_limits = snapshot
            .listeners
            .iter()
            .filter(|l| !l.rate_limits.is_empty())
            .map(|l| {
                let prev = previous.and_then(|p| p.inbound_limits.get(&l.name));
                let limits = l
                    .rate_limits
                    .iter()
                    .map(|rl| {
                        let bucket = TokenBucket::from(&rl.token_bucket);
                        let kept = prev
                            .and_then(|p| p.exactly(rl.port))
                            .filter(|b| b.same_fill(&bucket))
                            .cloned();
                        (rl.port, kept.unwrap_or_else(|| Arc::new(bucket)))
                    })
                    .collect();
                (l.name.clone(), Arc::new(PortLimits::new(limits)))
            })
            .collect();

        let l = &snapshot.limits;
        let limits = Limits {
            max_connections: l.max_connections as usize,
            header_read_timeout: l.header_read_timeout.get(),
            max_header_bytes: l.max_header_bytes as usize,
            max_header_count: l.max_header_count as usize,
            detect_timeout: l.detect_timeout.get(),
            connect_timeout: l.connect_timeout.get(),
            idle_timeout: l.idle_timeout.get(),
            drain_timeout: l.drain_timeout.get(),
            drain_accept: Limits::accept_window(l.drain_accept.get(), l.drain_timeout.get()),
            drain_exit_when_idle: l.drain_exit_when_idle,
            tcp_idle_timeout: l.tcp_idle_timeout.get(),
            http2: Http2Limits {
                max_concurrent_streams: l.http2_max_concurrent_streams,
                max_pending_accept_reset_streams: l.http2_max_pending_accept_reset_streams as usize,
                max_local_error_reset_streams: l.http2_max_local_error_reset_streams as usize,
                max_control_frames_per_second: l.http2_max_control_frames_per_second,
            },
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
        let own_services = own_services(&services, &proxy);
        let own_http_ports = own_http_ports(&services, &proxy);
        let peer_workloads = peer_workloads(&services);
        Ok(Config {
            snapshot: Arc::new(snapshot),
            proxy,
            limits,
            services,
            by_virtual_addr,
            by_ref,
            routes,
            inbound_limits,
            own_services,
            own_http_ports,
            peer_workloads,
        })
    }

    /// The service port whose virtual address a client dialed.
    pub fn service_at(&self, addr: SocketAddr) -> Option<&ServiceRef> {
        self.by_virtual_addr.get(&addr)
    }

    pub fn service(&self, r: &ServiceRef) -> Option<&Arc<ServiceState>> {
        self.by_ref.get(r).map(|i| &self.services[*i])
    }

    /// The routes of a service port, in order.
    pub fn routes(&self, r: &ServiceRef) -> Option<&Arc<[Arc<Route>]>> {
        self.routes.get(r)
    }

    pub fn inbound_limits(&self, listener: &str) -> Option<&Arc<PortLimits>> {
        self.inbound_limits.get(listener)
    }

    /// The service this proxy's workload serves at `port` (an inbound
    /// connection's original destination port): `unknown` when no service
    /// of the snapshot has this workload as an endpoint at that port.
    pub fn own_service(&self, port: u16) -> Name {
        self.own_services
            .get(&port)
            .cloned()
            .unwrap_or_else(unknown)
    }

    /// Whether this proxy's workload serves HTTP at `port` (an inbound
    /// connection's original destination port): some service of the
    /// snapshot has it as an endpoint at that port, and every such
    /// service declares the port `http` or `http2`.
    pub fn serves_http_at(&self, port: u16) -> bool {
        self.own_http_ports.contains(&port)
    }

    /// The workloads the snapshot's endpoints show `principal` (a
    /// `spiffe://` ID) serving: what a peer that proved it may be named
    /// (none: it stays `unknown`).
    pub fn workloads_of(&self, principal: &str) -> &[Name] {
        self.peer_workloads
            .get(principal)
            .map_or(&[], Vec::as_slice)
    }

    /// Every service entry (for the metrics of ejected endpoints).
    pub fn services(&self) -> &[Arc<ServiceState>] {
        &self.services
    }
}

/// A rate-limited route keeps the bucket of the route of the same name (or
/// index) before, when its limit did not change: a configuration pushed for
/// another reason (an endpoint came or went) must not hand out a full
/// bucket again, or the limit would not hold while the mesh changes.
fn carry_route_buckets(list: &mut [Arc<Route>], prev: &[Arc<Route>]) {
    for route in list.iter_mut() {
        let Some(bucket) = &route.rate_limit else {
            continue;
        };
        let kept = prev
            .iter()
            .find(|p| p.label == route.label)
            .and_then(|p| p.rate_limit.as_ref())
            .filter(|b| b.same_fill(bucket))
            .cloned();
        if let Some(kept) = kept {
            Arc::make_mut(route).rate_limit = Some(kept);
        }
    }
}

/// Retires the outlier detectors of `previous` that no service of the new
/// config carried over: their endpoints (or services) left.
fn retire_departed(previous: &Config, services: &[Arc<ServiceState>]) {
    let kept: HashSet<*const EndpointStats> = services
        .iter()
        .flat_map(|s| s.endpoints.iter().map(|e| Arc::as_ptr(&e.stats)))
        .collect();
    let now = Instant::now();
    for e in previous.services.iter().flat_map(|s| s.endpoints.iter()) {
        if !kept.contains(&Arc::as_ptr(&e.stats)) {
            e.stats.outlier.retire(now);
        }
    }
}

/// The services whose endpoints include `proxy`'s workload (same name and
/// namespace), by endpoint port; where several select the same port, the
/// first by label, so the choice does not depend on the snapshot's order.
fn own_services(services: &[Arc<ServiceState>], proxy: &Workload) -> HashMap<u16, Name> {
    let mut by_port: HashMap<u16, Name> = HashMap::new();
    if proxy.workload == unknown() {
        return by_port;
    }
    for svc in services {
        for ep in &svc.endpoints {
            let ours = ep.peer.workload == proxy.workload && ep.peer.namespace == proxy.namespace;
            if !ours {
                continue;
            }
            by_port
                .entry(ep.addr.port())
                .and_modify(|l| {
                    if svc.label < *l {
                        *l = svc.label.clone();
                    }
                })
                .or_insert_with(|| svc.label.clone());
        }
    }
    by_port
}

/// The endpoint ports of `proxy`'s workload that only services declaring
/// HTTP select: one that declares anything else (`detect`, `opaque`) keeps
/// the port to detection.
fn own_http_ports(services: &[Arc<ServiceState>], proxy: &Workload) -> HashSet<u16> {
    let mut http: HashMap<u16, bool> = HashMap::new();
    if proxy.workload == unknown() {
        return HashSet::new();
    }
    for svc in services {
        let declared = matches!(svc.protocol, ServiceProtocol::Http | ServiceProtocol::Http2);
        for ep in &svc.endpoints {
            if ep.peer.workload == proxy.workload && ep.peer.namespace == proxy.namespace {
                *http.entry(ep.addr.port()).or_insert(true) &= declared;
            }
        }
    }
    http.into_iter()
        .filter_map(|(p, h)| h.then_some(p))
        .collect()
}

/// Each endpoint identity's workloads, without repeats.
fn peer_workloads(services: &[Arc<ServiceState>]) -> HashMap<Name, Vec<Name>> {
    let mut by_id: HashMap<Name, Vec<Name>> = HashMap::new();
    for ep in services.iter().flat_map(|s| s.endpoints.iter()) {
        if ep.peer.principal == unknown() || ep.peer.workload == unknown() {
            continue;
        }
        let workloads = by_id.entry(ep.peer.principal.clone()).or_default();
        if !workloads.contains(&ep.peer.workload) {
            workloads.push(ep.peer.workload.clone());
        }
    }
    by_id
}

fn build_service(svc: &outrigger_api::Service, prev: Option<&Arc<ServiceState>>) -> ServiceState {
    let namespace: Name = Arc::from(svc.namespace.as_str());
    let tp = svc.traffic_policy.clone().unwrap_or_default();
    let outlier = tp.outlier_detection.as_ref().map(OutlierPolicy::from);
    let prev_stats: HashMap<SocketAddr, &Arc<EndpointStats>> = prev
        .map(|p| p.endpoints.iter().map(|e| (e.addr, &e.stats)).collect())
        .unwrap_or_default();
    // Endpoints that join a service already in force warm up; those of a
    // brand-new service (proxy start) do not.
    let now = Instant::now();
    let joined = prev.map(|_| now);
    let tp = svc.traffic_policy.clone().unwrap_or_default();
    // `tls.mode: DISABLE`: plaintext to every endpoint, meshed ones too.
    let plaintext = tp.tls_disabled();
    let endpoints: Vec<EndpointState> = svc
        .endpoints
        .iter()
        .filter_map(|ep| {
            let addr = ep.socket_addr().ok()?;
            let stats = match prev_stats.get(&addr) {
                Some(s) => {
                    // A changed outlier policy starts the endpoint afresh.
                    s.outlier.carry(outlier.as_ref(), now);
                    (*s).clone()
                }
                None => Arc::new(EndpointStats::new(outlier.clone(), joined)),
            };
            Some(EndpointState {
                addr,
                meshed: ep.meshed,
                // Validation parsed it with this same parser (one SPIFFE
                // type, `outrigger_api::spiffe`), so none is dropped here;
                // a meshed endpoint only, and not when the service's
                // DestinationRule disables TLS.
                identity: ep
                    .identity
                    .as_deref()
                    .filter(|_| ep.meshed && !plaintext)
                    .and_then(|i| i.parse().ok())
                    .map(Arc::new),
                peer: Workload {
                    workload: ep.workload.as_deref().map_or_else(unknown, Arc::from),
                    namespace: namespace.clone(),
                    principal: ep.identity.as_deref().map_or_else(unknown, Arc::from),
                },
                labels: ep.labels.clone(),
                stats,
            })
        })
        .collect();
    let all: Arc<[usize]> = (0..endpoints.len()).collect();
    let subsets = svc
        .subsets
        .iter()
        .map(|sub| {
            let members: Arc<[usize]> = endpoints
                .iter()
                .enumerate()
                .filter(|(_, ep)| sub.labels.iter().all(|(k, v)| ep.labels.get(k) == Some(v)))
                .map(|(i, _)| i)
                .collect();
            (sub.name.clone(), members)
        })
        .collect();
    let lb = LbPolicy::from(tp.load_balancer.as_ref());
    let pool_limits = PoolLimits::from(tp.connection_pool.as_ref());
    let pool = match prev {
        Some(p) if p.pool.limits == pool_limits => p.pool.clone(),
        _ => Arc::new(Pool::new(pool_limits)),
    };
    let runtime = prev.map(|p| p.runtime.clone()).unwrap_or_default();
    ServiceState {
        label: Arc::from(svc.qualified_name()),
        protocol: svc.protocol,
        endpoints,
        all,
        subsets,
        lb,
        outlier,
        pool,
        runtime,
    }
}

/// The routes of one port of a service; without routes in the snapshot,
/// one default route to the service itself.
fn build_routes(
    svc: &outrigger_api::Service,
    port: u16,
    this: &Arc<ServiceState>,
    lookup: impl Fn(&ServiceRef) -> Option<Arc<ServiceState>>,
) -> Vec<Arc<Route>> {
    if svc.http.is_empty() {
        return vec![Arc::new(Route::default_to(Backend::whole(this), this))];
    }
    svc.http
        .iter()
        .enumerate()
        .map(|(i, r)| {
            if r.direct_response.is_some() {
                return Arc::new(Route::build(i, r, Vec::new(), this));
            }
            if r.route.is_empty() {
                return Arc::new(Route::build(i, r, vec![(1, Backend::whole(this))], this));
            }
            let backends = r
                .route
                .iter()
                .filter_map(|rd| {
                    let d = &rd.destination;
                    let (name, namespace) = match d.host.split_once('.') {
                        Some((n, ns)) => (n.to_string(), ns.to_string()),
                        None => (d.host.clone(), svc.namespace.clone()),
                    };
                    let target = lookup(&ServiceRef {
                        name,
                        namespace,
                        port: d.port.map_or(port, |p| p.number),
                    })?;
                    let endpoints = match &d.subset {
                        Some(s) => target.subset(s)?.clone(),
                        None => target.all.clone(),
                    };
                    let weight = rd.weight.unwrap_or(100);
                    Some((
                        weight,
                        Backend {
                            service: target,
                            subset: d.subset.as_deref().map(Arc::from),
                            endpoints,
                            headers: rd.headers.as_ref().map(|h| Arc::new(h.into())),
                        },
                    ))
                })
                .collect();
            Arc::new(Route::build(i, r, backends, this))
        })
        .collect()
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
    fn the_accept_window_leaves_half_the_grace_period_to_finish() {
        let s = Duration::from_secs;
        assert_eq!(Limits::accept_window(s(5), s(25)), s(5));
        assert_eq!(Limits::accept_window(s(5), s(6)), s(3));
        assert_eq!(Limits::accept_window(s(0), s(25)), s(0));
        let mut snap = snapshot();
        snap.limits.drain_timeout = outrigger_api::Duration(Duration::from_millis(300));
        let cfg = Config::build(snap, None).unwrap();
        assert_eq!(cfg.limits.drain_accept, Duration::from_millis(150));
        assert_eq!(cfg.limits.http2.max_concurrent_streams, 100);
        assert_eq!(cfg.limits.http2.max_pending_accept_reset_streams, 20);
    }

    #[test]
    fn services_are_found_by_virtual_address_and_by_name() {
        let cfg = Config::try_from(snapshot()).unwrap();
        for addr in ["10.96.0.10:80", "10.96.0.10:8080", "[fd00::10]:80"] {
            let r = cfg.service_at(addr.parse().unwrap()).expect(addr);
            assert_eq!(&*cfg.service(r).unwrap().label, "web.shop");
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
    fn the_inbound_service_is_the_one_with_this_workload_at_the_port() {
        let cfg = |proxy: &str| {
            Config::try_from(
                Snapshot::from_yaml(&format!(
                    r#"
version: "1"
proxy: {proxy}
services:
  - name: web-canary
    namespace: shop
    ports: [80]
    endpoints: [{{ address: "10.0.0.1:8080", workload: web }}]
  - name: web
    namespace: shop
    ports: [80, 9090]
    endpoints:
      - {{ address: "10.0.0.1:8080", workload: web }}
      - {{ address: "10.0.0.1:9090", workload: web }}
      - {{ address: "10.0.0.3:7070", workload: other }}
  - name: web
    namespace: other-ns
    ports: [80]
    endpoints: [{{ address: "10.0.1.1:6060", workload: web }}]
"#
                ))
                .unwrap(),
            )
            .unwrap()
        };
        let web = cfg("{ workload: web, namespace: shop }");
        // Two services select port 8080: the first by label.
        assert_eq!(&*web.own_service(8080), "web-canary.shop");
        assert_eq!(&*web.own_service(9090), "web.shop");
        // Another workload's port, and a same-named workload elsewhere.
        assert_eq!(&*web.own_service(7070), "unknown");
        assert_eq!(&*web.own_service(6060), "unknown");
        // A proxy that does not know its workload claims nothing.
        let anon = cfg("{ workload: unknown, namespace: shop }");
        assert_eq!(&*anon.own_service(8080), "unknown");
    }

    #[test]
    fn an_app_port_serves_http_when_every_service_at_it_declares_http() {
        let cfg = Config::try_from(
            Snapshot::from_yaml(
                r#"
version: "1"
proxy: { workload: web, namespace: shop }
services:
  - { name: web, namespace: shop, ports: [80], protocol: http,
      endpoints: [{ address: "10.0.0.1:8080", workload: web }] }
  - { name: grpc, namespace: shop, ports: [90], protocol: http2,
      endpoints: [{ address: "10.0.0.1:9090", workload: web }] }
  - { name: web-any, namespace: shop, ports: [80], protocol: http,
      endpoints: [{ address: "10.0.0.1:7070", workload: web }] }
  - { name: web-also, namespace: shop, ports: [81],
      endpoints: [{ address: "10.0.0.1:7070", workload: web }] }
  - { name: other, namespace: shop, ports: [80], protocol: http,
      endpoints: [{ address: "10.0.0.2:6060", workload: other }] }
"#,
            )
            .unwrap(),
        )
        .unwrap();
        assert!(cfg.serves_http_at(8080));
        assert!(cfg.serves_http_at(9090));
        // Declared HTTP by one service, left to detection by another.
        assert!(!cfg.serves_http_at(7070));
        // Another workload's port; a port nobody serves.
        assert!(!cfg.serves_http_at(6060));
        assert!(!cfg.serves_http_at(5050));
    }

    /// A config pushed for another reason (an endpoint joined) keeps the
    /// rate limits' buckets as they were; a changed limit starts full.
    #[tokio::test(start_paused = true)]
    async fn an_unchanged_rate_limit_keeps_its_tokens_across_configs() {
        let snap = |endpoints: &str, max: u32| {
            Snapshot::from_yaml(&format!(
                r#"
version: "1"
listeners:
  - name: inbound
    direction: inbound
    bind: "127.0.0.1:0"
    app: "127.0.0.1:8080"
    rate_limits: [{{ port: 8080, token_bucket: {{ maxTokens: {max}, fillInterval: 60s }} }}]
services:
  - name: web
    namespace: shop
    ports: [80]
    endpoints: [{endpoints}]
    http:
      - name: limited
        localRateLimit: {{ maxTokens: {max}, fillInterval: 60s }}
        route: [{{ destination: {{ host: web }} }}]
"#
            ))
            .unwrap()
        };
        let web = ServiceRef {
            name: "web".into(),
            namespace: "shop".into(),
            port: 80,
        };
        let buckets = |cfg: &Config| {
            let route = cfg.routes(&web).unwrap()[0].rate_limit.clone().unwrap();
            let inbound = cfg
                .inbound_limits("inbound")
                .unwrap()
                .for_port(8080)
                .unwrap()
                .clone();
            [route, inbound]
        };
        let first = Config::try_from(snap(r#"{ address: "10.0.0.1:80" }"#, 2)).unwrap();
        for b in buckets(&first) {
            assert!(b.take().is_ok() && b.take().is_ok());
            assert!(b.take().is_err(), "spent");
        }
        // An endpoint joins: still spent.
        let joined = snap(
            r#"{ address: "10.0.0.1:80" }, { address: "10.0.0.2:80" }"#,
            2,
        );
        let second = Config::build(joined, Some(&first)).unwrap();
        for b in buckets(&second) {
            assert!(b.take().is_err(), "a push refilled an unchanged limit");
        }
        // The limit changes: a new, full bucket.
        let raised = snap(r#"{ address: "10.0.0.1:80" }"#, 3);
        let third = Config::build(raised, Some(&second)).unwrap();
        for b in buckets(&third) {
            assert!(b.take().is_ok() && b.take().is_ok() && b.take().is_ok());
            assert!(b.take().is_err());
        }
    }

    #[test]
    fn a_peer_may_be_named_only_as_a_workload_its_identity_serves() {
        let cfg = Config::try_from(
            Snapshot::from_yaml(
                r#"
version: "1"
services:
  - name: web
    namespace: shop
    ports: [80]
    endpoints:
      - { address: "10.0.0.1:80", workload: web-v1, identity: "spiffe://td/ns/shop/sa/web", meshed: true }
      - { address: "10.0.0.2:80", workload: web-v2, identity: "spiffe://td/ns/shop/sa/web", meshed: true }
      - { address: "10.0.0.3:80", workload: web-v1, identity: "spiffe://td/ns/shop/sa/web", meshed: true }
      - { address: "10.0.0.4:80", workload: other, meshed: true }
"#,
            )
            .unwrap(),
        )
        .unwrap();
        let names: Vec<&str> = cfg
            .workloads_of("spiffe://td/ns/shop/sa/web")
            .iter()
            .map(|n| &**n)
            .collect();
        assert_eq!(names, ["web-v1", "web-v2"]);
        assert!(cfg.workloads_of("spiffe://td/ns/shop/sa/client").is_empty());
    }

    #[test]
    fn endpoint_labels_default_to_unknown() {
        let cfg = Config::try_from(snapshot()).unwrap();
        let r = cfg.service_at("10.96.0.10:80".parse().unwrap()).unwrap();
        let eps = &cfg.service(r).unwrap().endpoints;
        assert_eq!((&*eps[0].peer.workload, eps[0].meshed), ("web-v1", true));
        assert_eq!((&*eps[1].peer.workload, eps[1].meshed), ("unknown", false));
        assert_eq!(&*eps[1].peer.namespace, "shop");
    }

    #[test]
    fn tls_disable_drops_the_identity_meshed_endpoints_prove() {
        let identity = |mode: Option<&str>| {
            let mut s = snapshot();
            s.services[0].endpoints[0].identity = Some("spiffe://td/ns/shop/sa/web".into());
            if let Some(mode) = mode {
                s.services[0].traffic_policy = Some(
                    serde_json::from_str(&format!(r#"{{ "tls": {{ "mode": "{mode}" }} }}"#))
                        .unwrap(),
                );
            }
            let cfg = Config::try_from(s).unwrap();
            let r = cfg.service_at("10.96.0.10:80".parse().unwrap()).unwrap();
            let ep = &cfg.service(r).unwrap().endpoints[0];
            (ep.meshed, ep.identity.as_ref().map(|i| i.to_string()))
        };
        let mtls = (true, Some("spiffe://td/ns/shop/sa/web".to_string()));
        assert_eq!(identity(None), mtls);
        assert_eq!(identity(Some("ISTIO_MUTUAL")), mtls);
        assert_eq!(
            identity(Some("DISABLE")),
            (true, None),
            "plaintext to the peer proxy"
        );
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

    #[test]
    fn an_identity_the_proxy_could_not_hold_a_peer_to_is_refused_whole() {
        // Before one SPIFFE parser served both, `spiffe://td/x/y` passed
        // validation, the proxy could not parse it and dropped it: a
        // meshed endpoint reached in plaintext.
        let mut snap = snapshot();
        let svc = snap
            .services
            .iter_mut()
            .find(|s| !s.endpoints.is_empty())
            .unwrap();
        svc.endpoints[0].meshed = true;
        svc.endpoints[0].identity = Some("spiffe://td/x/y".into());
        let e = Config::try_from(snap).err().expect("refused").to_string();
        assert!(e.contains(".endpoints[0].identity"), "{e}");
        assert!(e.contains("/ns/<namespace>/sa/<service-account>"), "{e}");
    }
}
