//! The rate-limit layer: takes a token from the route's bucket (outbound)
//! or the app port's (inbound); without one the request is answered 429
//! with `Retry-After` (the time until the next fill) and the `RL` flag.

use std::sync::Arc;

use arc_swap::ArcSwap;
use tower::Service;

use crate::metrics::Name;
use crate::svc::{always_ready, ErrorKind, Fut, HttpService, ProxyError, Req, Upstream};
use outrigger_proxy_policy::config::Config;
use outrigger_proxy_policy::route::Route;

#[derive(Clone)]
enum Scope {
    /// The bucket of the request's route.
    Route,
    /// The bucket of the app port, from this listener's limits in the config.
    Inbound {
        config: Arc<ArcSwap<Config>>,
        listener: Name,
    },
}

#[derive(Clone)]
pub struct RateLimit<S> {
    inner: S,
    scope: Scope,
}

impl<S> RateLimit<S> {
    pub fn route(inner: S) -> Self {
        Self {
            inner,
            scope: Scope::Route,
        }
    }

    pub fn inbound(inner: S, config: Arc<ArcSwap<Config>>, listener: Name) -> Self {
        Self {
            inner,
            scope: Scope::Inbound { config, listener },
        }
    }

    fn check(&self, req: &Req) -> Result<(), ProxyError> {
        // The message is written only when the bucket is empty: a request
        // that passes pays for one `take`.
        let refuse = |what: String, retry_after| {
            ProxyError::new(
                ErrorKind::RateLimited { retry_after },
                format!("local rate limit of {what} exceeded"),
            )
        };
        match &self.scope {
            Scope::Route => {
                let Some(route) = req.extensions().get::<Arc<Route>>() else {
                    return Ok(());
                };
                let Some(bucket) = &route.rate_limit else {
                    return Ok(());
                };
                bucket.take().map_err(|retry_after| {
                    refuse(
                        format!("route {} of {}", route.label, route.service),
                        retry_after,
                    )
                })
            }
            Scope::Inbound { config, listener } => {
                let Some(port) = req.extensions().get::<Upstream>().map(|u| u.addr.port()) else {
                    return Ok(());
                };
                let cfg = config.load();
                let Some(bucket) = cfg.inbound_limits(listener).and_then(|l| l.for_port(port))
                else {
                    return Ok(());
                };
                bucket
                    .take()
                    .map_err(|retry_after| refuse(format!("inbound port {port}"), retry_after))
            }
        }
    }
}

impl<S: HttpService> Service<Req> for RateLimit<S> {
    always_ready!();

    fn call(&mut self, req: Req) -> Fut {
        if let Err(e) = self.check(&req) {
            return Box::pin(async move { Err(e) });
        }
        self.inner.call(req)
    }
}
