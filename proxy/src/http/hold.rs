//! An accepted connection's hold on the proxy: its slot under the
//! connection limit ([`ConnGuard`]), and, for an inbound connection a later
//! config may refuse, what to re-check against the config in force
//! ([`Hold`]). The listener takes both when it accepts; the HTTP server,
//! the forwarder and spliced tunnels keep them for as long as they serve
//! the connection.

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use outrigger_api::inbound::MtlsMode;
use prometheus_client::metrics::counter::Counter;
use tokio::sync::OwnedSemaphorePermit;

use super::proxy::Shared;
use crate::metrics::{Direction, DirectionLabel, Revocation, RevokedLabels};
use crate::svc::PeerIdentity;
use outrigger_proxy_policy::authz;
use outrigger_proxy_policy::config::Config;

/// Held for as long as anything still uses an accepted connection (its HTTP
/// server, an upgraded tunnel spliced from it): releases its slot under
/// `limits.max_connections` and counts the close when the last holder is done.
pub struct ConnGuard {
    pub permit: OwnedSemaphorePermit,
    pub closed: Option<Counter>,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        if let Some(c) = &self.closed {
            c.inc();
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
    pub shared: Arc<Shared>,
    pub config: Arc<ArcSwap<Config>>,
    pub peer: SocketAddr,
    pub port: u16,
    pub peer_identity: Option<PeerIdentity>,
    pub opaque: bool,
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
pub fn refused(shared: &Shared, r: &Refusal, peer: SocketAddr, port: u16, revoked: bool) {
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
