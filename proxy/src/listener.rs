//! Accepting connections: the accept loop with its connection limit, and the
//! per-connection path from a socket to HTTP or opaque TCP.
//!
//! ```text
//! accept → limit → target (outbound: static target | original dst → service | passthrough;
//!                          inbound: original dst port on localhost | configured app)
//!        → opaque? (service protocol / inbound opaque port) or detect (deadline;
//!          strict on a port declared HTTP: no opaque TCP but TLS, the rest 400)
//!        → HTTP/1 | HTTP/2 → http::server  |  opaque → tcp::forward
//! ```

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use outrigger_api::{Direction as ApiDirection, ServiceProtocol, ServiceRef};
use outrigger_identity::tls::MESH_SERVER_NAME;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::detect::{self, Expect, Hello, Protocol};
use crate::http::hold::{refusal, refused, until_revoked, ConnGuard, Hold, Refusal};
use crate::http::proxy::{stack_for, ConnContext, HttpProxy, Shared, Target};
use crate::metrics::{
    unknown, Direction, DirectionLabel, Name, SecurityPolicy, TcpLabels, TrafficLabels, Workload,
};
use crate::svc::PeerIdentity;
use crate::tcp;
use crate::transport::tls::Io;
use crate::transport::{self, metered::MeteredIo, orig_dst::original_dst, prefixed::PrefixedIo};
use outrigger_proxy_policy::balance::{self, Choice};
use outrigger_proxy_policy::config::Config;
use outrigger_runtime::drain;

/// Completes [`DRAIN_QUIET`](crate::http::server::DRAIN_QUIET) after a
/// drain begins: a connection not yet past its handshake and protocol
/// detection by then is closed.
async fn silent_in_drain(drain: &drain::Watch) {
    drain.signaled().await;
    tokio::time::sleep(crate::http::server::DRAIN_QUIET).await;
}

/// One listener's settings, from its snapshot entry.
pub struct ListenerSpec {
    pub name: String,
    pub direction: ApiDirection,
    pub target: Option<ServiceRef>,
    pub app: Option<SocketAddr>,
    pub opaque_ports: Vec<u16>,
}

pub struct Listener {
    pub spec: ListenerSpec,
    pub config: Arc<ArcSwap<Config>>,
    pub shared: Arc<Shared>,
    pub connections: Arc<Semaphore>,
}

impl Listener {
    /// Accepts until `accepting` is signaled (during a drain, after the
    /// accept window: connections accepted while draining are served in
    /// drain mode). Past `limits.max_connections` open connections, new
    /// ones are closed at once and counted.
    pub async fn run(
        self: Arc<Self>,
        listener: TcpListener,
        drain: drain::Watch,
        accepting: drain::Watch,
    ) {
        let direction = Direction::from(self.spec.direction);
        loop {
            let accepted = tokio::select! {
                _ = accepting.signaled() => break,
                r = listener.accept() => r,
            };
            let (stream, peer) = match accepted {
                Ok(s) => s,
                Err(e) => {
                    // EMFILE and friends: back off a little rather than spin.
                    tracing::warn!(listener = %self.spec.name, error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = self.connections.clone().try_acquire_owned() else {
                self.shared
                    .metrics
                    .tcp_rejected
                    .get_or_create(&DirectionLabel { direction })
                    .inc();
                tracing::warn!(listener = %self.spec.name, %peer, "connection limit reached; closing");
                drop(stream);
                continue;
            };
            let _ = stream.set_nodelay(true);
            transport::set_keepalive(&stream);
            let this = self.clone();
            let drain = drain.clone();
            let guard = ConnGuard {
                permit,
                closed: None,
            };
            tokio::spawn(async move { this.serve(stream, peer, drain, guard).await });
        }
        tracing::debug!(listener = %self.spec.name, "stopped accepting");
    }

    /// On an inbound listener of a proxy with an identity, a connection
    /// that opens with a TLS ClientHello naming the mesh's server name is
    /// mesh TLS from a peer proxy: accepted with the peer's certificate
    /// required, and its identity kept. Anything else stays as it is: a
    /// plaintext client, or an app's own TLS (another server name, or none),
    /// which goes to the app untouched. A client that sends nothing within
    /// `tcp_idle_timeout`, or closes first, is an error (the caller closes
    /// it): nothing is opened for a client that has said nothing. On an
    /// `opaque_port` (server speaks first) a client silent for
    /// `detect_timeout` is plaintext instead, for the app to greet.
    ///
    /// The last value says the peer proxy splices opaque TCP (it offered
    /// no ALPN), so detection is skipped: a server-speaks-first protocol
    /// from a meshed client works whatever this side knows of the port.
    async fn accept_mesh_tls(
        &self,
        stream: TcpStream,
        cfg: &Config,
        opaque_port: bool,
    ) -> std::io::Result<(Io, Option<PeerIdentity>, bool)> {
        let Some(identity) = self
            .shared
            .identity
            .as_ref()
            .filter(|_| self.spec.direction == ApiDirection::Inbound)
        else {
            return Ok((Io::Plain(stream), None, false));
        };
        let wait = if opaque_port {
            cfg.limits.detect_timeout
        } else {
            cfg.limits.tcp_idle_timeout
        };
        // A silent client holds no buffer while it is waited for.
        match tokio::time::timeout(wait, stream.peek(&mut [0u8; 1])).await {
            Ok(Ok(n)) if n > 0 => {}
            Ok(Err(e)) => return Err(e),
            Ok(Ok(_)) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "closed without sending anything",
                ))
            }
            Err(_) if opaque_port => return Ok((Io::Plain(stream), None, false)),
            Err(_) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "sent nothing within the TCP idle timeout",
                ))
            }
        }
        let deadline = Instant::now() + cfg.limits.detect_timeout;
        // Most ClientHellos fit the first 2 KiB; a larger one (big key
        // shares, tickets) gets room for a whole record.
        let mut first = vec![0u8; 2048];
        let mut pause = std::time::Duration::from_millis(1);
        let mesh = loop {
            let peeked = tokio::time::timeout_at(deadline, stream.peek(&mut first)).await;
            // A client that stopped after its first bytes is plaintext
            // (detection then decides what it speaks).
            let n = match peeked {
                Ok(Ok(n)) if n > 0 => n,
                _ => return Ok((Io::Plain(stream), None, false)),
            };
            match detect::client_hello(&first[..n]) {
                Hello::NotTls => break false,
                Hello::ClientHello { server_name } => break server_name == Some(MESH_SERVER_NAME),
                // Not readable: taken for mesh TLS, which the handshake
                // then settles.
                Hello::Unreadable => break true,
                Hello::NeedMore if n == first.len() && first.len() < detect::MAX_HELLO => {
                    first.resize(detect::MAX_HELLO, 0);
                }
                Hello::NeedMore if n == first.len() => break true,
                // A ClientHello split over segments: peek again after a
                // growing pause (peeking does not wait for more than is
                // there, so this must not spin).
                Hello::NeedMore => {
                    if Instant::now() >= deadline {
                        return Ok((Io::Plain(stream), None, false));
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(std::time::Duration::from_millis(50));
                }
            }
        };
        if !mesh {
            return Ok((Io::Plain(stream), None, false));
        }
        let (io, id, opaque) = identity.accept_peer(stream).await?;
        let uri = id.to_string();
        let principal: Arc<str> = Arc::from(uri.strip_prefix("spiffe://").unwrap_or(&uri));
        Ok((
            io,
            Some(PeerIdentity {
                uri: Arc::from(uri.as_str()),
                principal,
                namespace: Arc::from(id.namespace()),
            }),
            opaque,
        ))
    }

    fn resolve(&self, cfg: &Config, orig: Option<SocketAddr>) -> Result<(Target, bool), String> {
        match self.spec.direction {
            ApiDirection::Outbound => {
                if let Some(r) = &self.spec.target {
                    let svc = cfg.service(r).ok_or_else(|| {
                        format!(
                            "target {}.{}:{} is not in the snapshot",
                            r.name, r.namespace, r.port
                        )
                    })?;
                    return Ok((
                        Target::Service(r.clone()),
                        svc.protocol == ServiceProtocol::Opaque,
                    ));
                }
                let orig =
                    orig.ok_or("no original destination (not redirected) and no static target")?;
                Ok(match cfg.service_at(orig) {
                    Some(r) => {
                        let opaque = cfg
                            .service(r)
                            .is_some_and(|s| s.protocol == ServiceProtocol::Opaque);
                        (Target::Service(r.clone()), opaque)
                    }
                    None => (Target::Passthrough(orig), false),
                })
            }
            ApiDirection::Inbound => {
                // The app is reached where the client meant to reach it (the
                // pod IP), never on localhost: a socket the app bound to
                // 127.0.0.1 only stays private to the pod.
                let app = orig
                    .or(self.spec.app)
                    .ok_or("no original destination (not redirected) and no app address")?;
                Ok((
                    Target::App(app),
                    self.spec.opaque_ports.contains(&app.port()),
                ))
            }
        }
    }

    fn refused(&self, r: &Refusal, peer: SocketAddr, port: u16, revoked: bool) {
        refused(&self.shared, r, peer, port, revoked)
    }

    async fn serve(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        drain: drain::Watch,
        mut guard: ConnGuard,
    ) {
        let direction = Direction::from(self.spec.direction);
        // Until the control plane's first config, the inbound side does
        // not know the workload's mTLS mode or policies: it fails closed.
        if self.spec.direction == ApiDirection::Inbound
            && !self
                .shared
                .configured
                .load(std::sync::atomic::Ordering::Acquire)
        {
            tracing::info!(listener = %self.spec.name, %peer, "no config from the control plane yet; closing");
            return;
        }
        let cfg = self.config.load_full();
        let (target, opaque) = match self.resolve(&cfg, original_dst(&stream)) {
            Ok(t) => t,
            Err(reason) => {
                tracing::warn!(listener = %self.spec.name, %peer, %reason, "closing connection with nowhere to go");
                return;
            }
        };
        // A peer proxy speaks mutual TLS to the inbound side; anyone else
        // (plaintext, or an app's own TLS) is taken only on a PERMISSIVE port.
        let accepted = tokio::select! {
            a = self.accept_mesh_tls(stream, &cfg, opaque) => a,
            _ = silent_in_drain(&drain) => return,
        };
        let (mut stream, peer_identity, peer_opaque) = match accepted {
            Ok(s) => s,
            Err(e) => {
                tracing::info!(listener = %self.spec.name, %peer, error = %e, "no mesh TLS handshake; closing");
                return;
            }
        };
        let opaque = opaque || peer_opaque;
        // Protocol not known yet: only the mTLS mode can refuse it here.
        if let Target::App(app) = &target {
            if let Some(r) = refusal(&cfg, app.port(), peer_identity.as_ref(), false) {
                self.refused(&r, peer, app.port(), false);
                return;
            }
        }
        // A client that has sent nothing (yet) gets no upstream connection:
        // detection waits for its first byte, up to the TCP idle timeout.
        // A port marked opaque (server speaks first), or a peer proxy that
        // splices opaque TCP, connects at once. A passthrough destination
        // cannot be marked, so there silence is opaque after the deadline.
        let first_byte = match &target {
            Target::Passthrough(_) => None,
            _ => Some(cfg.limits.tcp_idle_timeout),
        };
        // A port declared HTTP (the service's, or the app port's) takes
        // HTTP alone, and the app's own TLS: no other bytes are forwarded.
        let expect = match &target {
            Target::Service(r) => cfg
                .service(r)
                .filter(|s| matches!(s.protocol, ServiceProtocol::Http | ServiceProtocol::Http2))
                .map_or(Expect::Any, |_| Expect::Http),
            Target::App(app) if cfg.serves_http_at(app.port()) => Expect::Http,
            Target::App(_) | Target::Passthrough(_) => Expect::Any,
        };
        let (detected, prefix) = if opaque {
            (Ok(Protocol::Opaque), Default::default())
        } else {
            let detected = tokio::select! {
                d = detect::detect(
                    &mut stream,
                    cfg.limits.detect_timeout,
                    cfg.limits.max_header_bytes,
                    first_byte,
                    expect,
                ) => d,
                // A client still silent once draining has begun holds
                // nothing up (one accepted during the drain, or sending its
                // first bytes, has a moment to be detected and served).
                _ = silent_in_drain(&drain) => return,
            };
            match detected {
                Ok(d) => d,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "connection closed during protocol detection");
                    return;
                }
            }
        };
        // Not HTTP on an HTTP port: an HTTP/1 connection, answered 400.
        let (protocol, malformed) = match detected {
            Ok(p) => (p, None),
            Err(m) => (Protocol::Http1, Some(m)),
        };

        // Opaque connections to the app answer to its AuthorizationPolicies
        // here: ports and peers (no methods or paths in TCP). HTTP requests
        // answer to them one by one.
        let opaque_app = protocol == Protocol::Opaque;
        if let (Target::App(app), true) = (&target, opaque_app) {
            if let Some(r) = refusal(&cfg, app.port(), peer_identity.as_ref(), true) {
                self.refused(&r, peer, app.port(), false);
                return;
            }
        }
        // And it stays held to them: a later config that would refuse it
        // closes it (as Envoy drains the connections of a changed chain).
        // Only a connection to the app without mesh TLS, or an opaque one,
        // can be refused; the rest hold nothing.
        let hold = match &target {
            Target::App(app) if peer_identity.is_none() || opaque_app => Some(Arc::new(Hold {
                shared: self.shared.clone(),
                config: self.config.clone(),
                peer,
                port: app.port(),
                peer_identity: peer_identity.clone(),
                opaque: opaque_app,
            })),
            _ => None,
        };

        // Opaque connections go to one endpoint, known now.
        let opaque_upstream = match (&target, protocol) {
            (Target::Service(r), Protocol::Opaque) => {
                let svc = cfg.service(r).expect("resolved above");
                match balance::choose(svc, &svc.all, &[], Instant::now(), &self.shared.chance) {
                    Choice::Endpoint { index, .. } => {
                        let ep = &svc.endpoints[index];
                        Some((ep.addr, Some(ep.clone())))
                    }
                    Choice::Empty | Choice::AllEjected(_) => {
                        tracing::warn!(%peer, service = %svc.label, flag = "UH", "no endpoint for opaque connection; closing");
                        return;
                    }
                }
            }
            (Target::Passthrough(a) | Target::App(a), Protocol::Opaque) => Some((*a, None)),
            _ => None,
        };

        let local = self.shared.local_workload(&cfg);
        let upstream_workload = match opaque_upstream.as_ref().and_then(|(_, ep)| ep.as_ref()) {
            Some(ep) => ep.peer.clone(),
            None => Workload::unknown(),
        };
        let service = match &target {
            Target::Service(r) => cfg.service(r).map_or_else(unknown, |s| s.label.clone()),
            // Inbound: the service this workload serves at the port the
            // client dialed.
            Target::App(a) => cfg.own_service(a.port()),
            Target::Passthrough(_) => unknown(),
        };
        let mut traffic =
            TrafficLabels::new(direction, &local, &upstream_workload, service.clone());
        // An opaque hop to a meshed endpoint with an identity is mutual TLS.
        let outbound_mtls = self.shared.identity.is_some()
            && opaque_upstream
                .as_ref()
                .and_then(|(_, ep)| ep.as_ref())
                .is_some_and(|ep| ep.identity.is_some());
        if outbound_mtls {
            traffic.connection_security_policy = SecurityPolicy::MutualTls;
        }
        if let Some(id) = &peer_identity {
            traffic.source_principal = id.uri.clone();
            traffic.source_namespace = id.namespace.clone();
            // The one workload the configuration shows the identity serving.
            if let [w] = cfg.workloads_of(&id.uri) {
                traffic.source_workload = w.clone();
            }
            traffic.connection_security_policy = SecurityPolicy::MutualTls;
        }
        let labels = TcpLabels {
            traffic: traffic.proven(),
            protocol,
        };
        let m = &self.shared.metrics;
        let (received, sent) = if m.counts_connection(protocol) {
            m.tcp_opened.get_or_create(&labels).inc();
            guard.closed = Some(m.tcp_closed.get_or_create(&labels).clone());
            (
                m.tcp_received_bytes.get_or_create(&labels).clone(),
                m.tcp_sent_bytes.get_or_create(&labels).clone(),
            )
        } else {
            // Istio's format counts opaque connections alone.
            (
                prometheus_client::metrics::counter::Counter::default(),
                prometheus_client::metrics::counter::Counter::default(),
            )
        };
        received.inc_by(prefix.len() as u64);
        let io = PrefixedIo::new(prefix, MeteredIo::metered(stream, received, sent));

        match opaque_upstream {
            Some((addr, ep)) => {
                let tls = self
                    .shared
                    .identity
                    .as_deref()
                    .zip(ep.as_ref().and_then(|e| e.identity.as_ref()));
                // The service's DestinationRule `tcp.connectTimeout`, else the proxy's.
                let connect_timeout = match &target {
                    Target::Service(r) => cfg
                        .service(r)
                        .and_then(|s| s.pool.limits.conn.connect_timeout),
                    _ => None,
                }
                .unwrap_or(cfg.limits.connect_timeout);
                // The DestinationRule's `tcp.idleTimeout` (`0s`: never),
                // else the proxy's.
                let idle = match &target {
                    Target::Service(r) => {
                        cfg.service(r).and_then(|s| s.pool.limits.tcp_idle_timeout)
                    }
                    _ => None,
                }
                .unwrap_or(cfg.limits.tcp_idle_timeout);
                let idle = Some(idle).filter(|d| !d.is_zero());
                tokio::select! {
                    r = tcp::forward(io, addr, tls, connect_timeout, idle) => {
                        match r {
                            Ok(tcp::Ended::Idle) => tracing::debug!(%peer, upstream = %addr, ?idle, "opaque connection idle; closed"),
                            Ok(tcp::Ended::Closed(..)) => {}
                            Err(e) => tracing::debug!(%peer, upstream = %addr, error = %e, "opaque connection ended"),
                        }
                    }
                    () = until_revoked(hold.as_deref()) => {}
                }
                drop(guard);
            }
            None => {
                // Who the peer may be: the workloads its identity serves.
                let peer_workloads: Vec<Name> = peer_identity
                    .as_ref()
                    .map(|id| cfg.workloads_of(&id.uri).to_vec())
                    .unwrap_or_default();
                let peer_workload = std::sync::OnceLock::new();
                if let [only] = peer_workloads.as_slice() {
                    let _ = peer_workload.set(only.clone());
                }
                let ctx = Arc::new(ConnContext {
                    direction,
                    target,
                    service,
                    proxy: local,
                    peer,
                    peer_identity,
                    peer_workload,
                    peer_workloads,
                    drain: drain.clone(),
                    hold,
                    _guard: guard,
                });
                let hold = ctx.hold.clone();
                let stack = stack_for(
                    &ctx.target,
                    Arc::from(self.spec.name.as_str()),
                    self.config.clone(),
                    &self.shared,
                    ctx.clone(),
                    hold.clone(),
                );
                let svc = HttpProxy {
                    ctx,
                    shared: self.shared.clone(),
                    stack,
                };
                if let Some(why) = malformed {
                    crate::http::server::refuse_malformed(io, &svc, why).await;
                    return;
                }
                let revoked = async move { until_revoked(hold.as_deref()).await };
                crate::http::server::serve(io, protocol, svc, &cfg.limits, &drain, revoked).await;
            }
        }
    }
}
