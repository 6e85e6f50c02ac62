//! The split layer: each request picks one of its route's destinations
//! (service and subset) in proportion to their weights, as a canary or
//! blue/green rollout sets them. The layer sits above retry, so the pick is
//! made once per request and every retry goes to the same destination (to
//! another of its endpoints), as Envoy's weighted clusters do. A new
//! snapshot changes the weights for the next pick; nothing in flight is
//! touched.

use std::sync::Arc;

use tower::Service;

use crate::svc::{always_ready, ErrorKind, Fut, HttpService, ProxyError, Req};
use outrigger_proxy_policy::chance::Chance;
use outrigger_proxy_policy::route::Route;
use outrigger_proxy_policy::split::pick;

#[derive(Clone)]
pub struct Split<S> {
    inner: S,
    chance: Chance,
}

impl<S> Split<S> {
    pub fn new(inner: S, chance: Chance) -> Self {
        Self { inner, chance }
    }
}

impl<S: HttpService> Service<Req> for Split<S> {
    always_ready!();

    fn call(&mut self, mut req: Req) -> Fut {
        let Some(route) = req.extensions().get::<Arc<Route>>().cloned() else {
            return self.inner.call(req);
        };
        let u = if route.backends.len() == 1 {
            0.0
        } else {
            self.chance.unit()
        };
        let Some(backend) = pick(&route.backends, u).cloned() else {
            let e = ProxyError::new(
                ErrorKind::NoHealthyUpstream,
                format!("every destination of route {} has weight 0", route.label),
            );
            return Box::pin(async move { Err(e) });
        };
        let headers = backend.headers.clone();
        if let Some(h) = &headers {
            h.request.apply(req.headers_mut());
        }
        req.extensions_mut().insert(backend);
        let fut = self.inner.call(req);
        if headers.is_none() {
            return fut;
        }
        Box::pin(async move {
            let mut resp = fut.await?;
            if let Some(h) = &headers {
                h.response.apply(resp.headers_mut());
            }
            Ok(resp)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::testing::{backend_named, request_on_route, route_with, Scripted};

    #[tokio::test]
    async fn a_ninety_ten_split_lands_within_two_points_over_ten_thousand_picks() {
        let upstream = Scripted::ok();
        let route = route_with(|r| {
            r.backends = vec![(90, backend_named("stable")), (10, backend_named("canary"))]
        });
        let mut svc = Split::new(upstream.clone(), Chance::seeded(42));
        for _ in 0..10_000 {
            svc.call(request_on_route(&route)).await.unwrap();
        }
        let canary = upstream
            .seen()
            .iter()
            .filter(|s| s.backend.as_deref() == Some("canary.shop"))
            .count();
        assert!(
            (800..=1200).contains(&canary),
            "{canary} of 10000 went to the canary"
        );
    }
}
