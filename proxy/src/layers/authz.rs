//! The authorization layer of the inbound path: evaluates the workload's
//! AuthorizationPolicies on each request (403 `RBAC` when denied), with the
//! peer identity mutual TLS proved.

use std::sync::Arc;

use arc_swap::ArcSwap;
use tower::Service;

use crate::svc::{
    always_ready, ErrorKind, Fut, HttpService, PeerIdentity, ProxyError, Req, Upstream,
};
use outrigger_proxy_policy::authz::{evaluate, Decision, Facts};
use outrigger_proxy_policy::config::Config;

/// The inbound layer: evaluates the workload's AuthorizationPolicies on
/// each request (403 `RBAC` when denied).
#[derive(Clone)]
pub struct Authorize<S> {
    inner: S,
    config: Arc<ArcSwap<Config>>,
}

impl<S> Authorize<S> {
    pub fn new(inner: S, config: Arc<ArcSwap<Config>>) -> Self {
        Self { inner, config }
    }
}

impl<S: HttpService> Service<Req> for Authorize<S> {
    always_ready!();

    fn call(&mut self, req: Req) -> Fut {
        let cfg = self.config.load();
        let policies = &cfg.snapshot.inbound.authorization;
        if policies.is_empty() {
            return self.inner.call(req);
        }
        let peer = req.extensions().get::<PeerIdentity>();
        let facts = Facts {
            principal: peer.map(|p| &*p.principal),
            namespace: peer.map(|p| &*p.namespace),
            port: req
                .extensions()
                .get::<Upstream>()
                .map_or(0, |u| u.addr.port()),
            http: Some((req.method().as_str(), req.uri().path())),
        };
        match evaluate(policies, &facts) {
            Decision::Allow => self.inner.call(req),
            Decision::Deny { policy } => {
                let why = match policy {
                    Some(p) => format!("denied by AuthorizationPolicy {p}"),
                    None => "no ALLOW AuthorizationPolicy matches".to_string(),
                };
                Box::pin(async move { Err(ProxyError::new(ErrorKind::Denied, why)) })
            }
        }
    }
}
