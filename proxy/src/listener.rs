//! Accepting connections: the accept loop with its connection limit, and the
//! per-connection path from a socket to HTTP or opaque TCP.
//!
//! ```text
//! accept → limit → target (outbound: static target | original dst → service | passthrough;
//!                          inbound: original dst port on localhost | configured app)
//!        → opaque? (service protocol / inbound opaque port) or detect (deadline)
//!        → HTTP/1 | HTTP/2 → http::server  |  opaque → tcp::forward
//! ```

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use outrigger_api::inbound::MtlsMode;
use outrigger_api::{Direction as ApiDirection, ServiceProtocol, ServiceRef};
use outrigger_identity::tls::MESH_SERVER_NAME;
use prometheus_client::metrics::counter::Counter;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::config::Config;
use crate::detect::{self, Hello, Protocol};
use crate::drain;
use crate::http::proxy::{stack_for, ConnContext, HttpProxy, Shared, Target};
use crate::metrics::{
    unknown, Direction, DirectionLabel, Revocation, RevokedLabels, SecurityPolicy, TcpLabels,
    TrafficLabels, Workload,
};
use crate::policy::authz::{self, PeerIdentity};
use crate::policy::balance::{self, Choice};
use crate::tcp;
use crate::transport::tls::Io;
use crate::transport::{self, metered::MeteredIo, orig_dst::original_dst, prefixed::PrefixedIo};

/// Held for as long as anything still uses an accepted connection (its HTTP
/// server, an upgraded tunnel spliced from it): releases its slot under
/// `limits.max_connections` and counts the close when the last holder is done.
pub struct ConnGuard {
    _permit: OwnedSemaphorePermit,
    closed: Option<Counter>,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        if let Some(c) = &self.closed {
            c.inc();
        }
    }
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
    /// Accepts until drain begins. Past `limits.max_connections` open
    /// connections, new ones are closed at once and counted.
    pub async fn run(self: Arc<Self>, listener: TcpListener, drain: drain::Watch) {
        let direction = Direction::from(self.spec.direction);
        loop {
            let accepted = tokio::select! {
                _ = drain.signaled() => break,
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
                _permit: permit,
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
            _ = drain.signaled() => return,
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
        let (protocol, prefix) = if opaque {
            (Protocol::Opaque, Default::default())
        } else {
            let detected = tokio::select! {
                d = detect::detect(
                    &mut stream,
                    cfg.limits.detect_timeout,
                    cfg.limits.max_header_bytes,
                    first_byte,
                ) => d,
                // A client still silent when draining begins holds nothing up.
                _ = drain.signaled() => return,
            };
            match detected {
                Ok(d) => d,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "connection closed during protocol detection");
                    return;
                }
            }
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
            _ => unknown(),
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
            traffic.connection_security_policy = SecurityPolicy::MutualTls;
        }
        let labels = TcpLabels {
            traffic: traffic.proven(),
            protocol,
        };
        let m = &self.shared.metrics;
        m.tcp_opened.get_or_create(&labels).inc();
        guard.closed = Some(m.tcp_closed.get_or_create(&labels).clone());
        let received = m.tcp_received_bytes.get_or_create(&labels).clone();
        received.inc_by(prefix.len() as u64);
        let sent = m.tcp_sent_bytes.get_or_create(&labels).clone();
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
                let ctx = Arc::new(ConnContext {
                    direction,
                    target,
                    service,
                    proxy: local,
                    peer,
                    peer_identity,
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
                let revoked = async move { until_revoked(hold.as_deref()).await };
                crate::http::server::serve(io, protocol, svc, &cfg.limits, &drain, revoked).await;
            }
        }
    }
}

/// Why the config in force refuses an inbound connection to the app on
/// `port`: a peer without mesh TLS on a STRICT port, or (for opaque TCP,
/// whose AuthorizationPolicies are applied per connection) a denial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    PlaintextOnStrict,
    Denied { policy: Option<String> },
}

pub fn refusal(
    cfg: &Config,
    port: u16,
    peer: Option<&PeerIdentity>,
    opaque: bool,
) -> Option<Refusal> {
    if peer.is_none() && cfg.snapshot.inbound.mtls.mode_for(port) == MtlsMode::Strict {
        return Some(Refusal::PlaintextOnStrict);
    }
    if !opaque {
        return None;
    }
    let facts = authz::Facts {
        principal: peer.map(|p| &*p.principal),
        namespace: peer.map(|p| &*p.namespace),
        port,
        http: None,
    };
    match authz::evaluate(&cfg.snapshot.inbound.authorization, &facts) {
        authz::Decision::Allow => None,
        authz::Decision::Deny { policy } => Some(Refusal::Denied { policy }),
    }
}

/// An open inbound connection to the app that a later config may refuse
/// (it has no mesh TLS, or it is opaque): what to re-check, against what.
/// Shared by everything that serves the connection, including a tunnel
/// spliced after an HTTP upgrade.
pub struct Hold {
    shared: Arc<Shared>,
    config: Arc<ArcSwap<Config>>,
    peer: SocketAddr,
    port: u16,
    peer_identity: Option<PeerIdentity>,
    opaque: bool,
}

impl Hold {
    /// Completes, counted and logged, once the config in force refuses
    /// the connection: checked at once, then at every change of the
    /// inbound policies.
    pub async fn revoked(&self) {
        let r = revoked(self.shared.inbound_changes.subscribe(), || {
            refusal(
                &self.config.load(),
                self.port,
                self.peer_identity.as_ref(),
                self.opaque,
            )
        })
        .await;
        refused(&self.shared, &r, self.peer, self.port, true);
    }
}

/// [`Hold::revoked`]; never, for a connection nothing can refuse.
pub async fn until_revoked(hold: Option<&Hold>) {
    match hold {
        Some(h) => h.revoked().await,
        None => std::future::pending().await,
    }
}

/// Completes once `refuses` says why: asked at once, then whenever
/// `changes` announces a change; never completes when it never does.
/// Asking at once covers any change made before the subscription.
async fn revoked<T>(
    mut changes: tokio::sync::watch::Receiver<u64>,
    refuses: impl Fn() -> Option<T>,
) -> T {
    loop {
        if let Some(why) = refuses() {
            return why;
        }
        if changes.changed().await.is_err() {
            // The proxy is gone; its drain closes the connection.
            return std::future::pending().await;
        }
    }
}

/// Counts and logs a refused inbound connection: refused as it was
/// accepted, or `revoked` by a config applied later.
fn refused(shared: &Shared, r: &Refusal, peer: SocketAddr, port: u16, revoked: bool) {
    let direction = Direction::Inbound;
    let m = &shared.metrics;
    let action = if revoked {
        "a new config refuses it; closing"
    } else {
        "closing"
    };
    let (reason, at_accept) = match r {
        Refusal::PlaintextOnStrict => (Revocation::PlaintextOnStrict, &m.tcp_plaintext_refused),
        Refusal::Denied { .. } => (Revocation::Denied, &m.tcp_denied),
    };
    if revoked {
        m.tcp_revoked
            .get_or_create(&RevokedLabels { direction, reason })
            .inc();
    } else {
        at_accept.get_or_create(&DirectionLabel { direction }).inc();
    }
    match r {
        Refusal::PlaintextOnStrict => {
            tracing::info!(%peer, port, has_identity = shared.identity.is_some(), "plaintext connection to a STRICT port; {action}");
        }
        Refusal::Denied { policy } => {
            tracing::info!(%peer, port, policy = policy.as_deref().unwrap_or("(no ALLOW policy matches)"), "connection denied by authorization; {action}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn revoked_asks_at_once_then_at_every_change() {
        let changes = tokio::sync::watch::Sender::new(0u64);
        // Refusing already (a change made before the subscription): at once.
        let fut = revoked(changes.subscribe(), || Some("refused"));
        assert_eq!(fut.await, "refused");

        let refuse = Arc::new(AtomicBool::new(false));
        let r = refuse.clone();
        let fut = revoked(changes.subscribe(), move || {
            r.load(Ordering::SeqCst).then_some("refused")
        });
        tokio::pin!(fut);
        let wait = Duration::from_secs(3600);
        assert!(tokio::time::timeout(wait, &mut fut).await.is_err());
        // A change that still admits it: still open.
        changes.send_modify(|g| *g += 1);
        assert!(tokio::time::timeout(wait, &mut fut).await.is_err());
        // Refusing without a change being announced: not seen yet.
        refuse.store(true, Ordering::SeqCst);
        assert!(tokio::time::timeout(wait, &mut fut).await.is_err());
        refuse.store(false, Ordering::SeqCst);
        // A change that refuses it.
        refuse.store(true, Ordering::SeqCst);
        changes.send_modify(|g| *g += 1);
        assert_eq!(tokio::time::timeout(wait, &mut fut).await, Ok("refused"));
    }

    #[tokio::test(start_paused = true)]
    async fn revoked_never_completes_once_the_proxy_is_gone() {
        let changes = tokio::sync::watch::Sender::new(0u64);
        let fut = revoked(changes.subscribe(), || None::<()>);
        drop(changes);
        assert!(tokio::time::timeout(Duration::from_secs(3600), fut)
            .await
            .is_err());
    }
}
