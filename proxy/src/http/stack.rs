//! The request path as a stack of tower layers, composed in one place and
//! read top to bottom in the order a request meets them.
//! The layers' shared shape (always ready, boxed future, the proxy's own
//! error) is in [`crate::svc`].

use std::sync::Arc;

use arc_swap::ArcSwap;
use outrigger_api::ServiceRef;
use tower::ServiceBuilder;

use super::forward::Forward;
use crate::layers::admit::Admit;
use crate::layers::{
    authz::Authorize, balance::Balance, fault::Fault, outlier::RecordOutcome, pool::PoolLimit,
    rate_limit::RateLimit, retry::Retry, rewrite::Rewrite, route::Router, split::Split,
    timeout::Timeout,
};
use crate::metrics::{Metrics, Name};
use crate::svc::HttpService;
use outrigger_proxy_policy::chance::Chance;
use outrigger_proxy_policy::config::Config;

/// The outbound path to a service, top to bottom:
///
/// ```text
/// admit        path normalized (400 DPE), only allowed upgrades (403)
/// route        first matching route of the service (404 NR when none)
/// rate limit   the route's token bucket (429 RL)
/// fault        injected delay (DI) and abort (FI)
/// rewrite      request/response header operations, URI and authority rewrite
/// timeout      the route timeout, over every try and back-off (504 UT)
/// split        weighted choice of destination service and subset, once per
///              request: every try goes to the same destination
/// retry        budgeted retries with back-off, body replay, attempt count
/// timeout      the per-try timeout (504 UT, retryable)
/// balance      endpoint choice: P2C peak-EWMA (or RR, random, least-request),
///              skipping ejected endpoints and the ones already tried (503 UH)
/// pool         the service's connection-pool limits (503 UO)
/// outlier      feeds each outcome to the endpoint's outlier detector
/// forward      the pooled upstream connection (HTTP/1, HTTP/2, upgrades)
/// ```
pub fn outbound(
    config: Arc<ArcSwap<Config>>,
    target: ServiceRef,
    metrics: Arc<Metrics>,
    chance: Chance,
    forward: Forward,
) -> impl HttpService {
    ServiceBuilder::new()
        .layer_fn(|inner| Admit::new(inner, config.clone()))
        .layer_fn(|inner| Router::new(inner, config.clone(), target.clone()))
        .layer_fn(RateLimit::route)
        .layer_fn(|inner| Fault::new(inner, chance.clone()))
        .layer_fn(Rewrite::new)
        .layer_fn(Timeout::route)
        .layer_fn(|inner| Split::new(inner, chance.clone()))
        .layer_fn(|inner| Retry::new(inner, metrics.clone(), chance.clone()))
        .layer_fn(Timeout::per_try)
        .layer_fn(|inner| Balance::new(inner, chance.clone()))
        .layer_fn(|inner| PoolLimit::new(inner, metrics.clone()))
        .layer_fn(|inner| RecordOutcome::new(inner, metrics.clone()))
        .service(forward)
}

/// The inbound path to the local app: admitted as outbound is (the path
/// normalized before the policies see it), the workload's
/// AuthorizationPolicies (403 RBAC), the listener's rate limit for the app
/// port (429 RL), then the app.
pub fn inbound(config: Arc<ArcSwap<Config>>, listener: Name, forward: Forward) -> impl HttpService {
    ServiceBuilder::new()
        .layer_fn(|inner| Admit::new(inner, config.clone()))
        .layer_fn(|inner| Authorize::new(inner, config.clone()))
        .layer_fn(|inner| RateLimit::inbound(inner, config.clone(), listener.clone()))
        .service(forward)
}

/// Outbound to an address the config does not know: only allowed
/// upgrades (no path normalization: no rule sees these paths), then
/// straight through.
pub fn passthrough(config: Arc<ArcSwap<Config>>, forward: Forward) -> impl HttpService {
    ServiceBuilder::new()
        .layer_fn(|inner| Admit::upgrades_only(inner, config.clone()))
        .service(forward)
}
