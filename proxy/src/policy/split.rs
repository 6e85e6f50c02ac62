//! The weighted split: each request picks one of its route's destinations
//! (service and subset) in proportion to their weights, as a canary or
//! blue/green rollout sets them. The layer sits above retry, so the pick is
//! made once per request and every retry goes to the same destination (to
//! another of its endpoints), as Envoy's weighted clusters do. A new
//! snapshot changes the weights for the next pick; nothing in flight is
//! touched.

use std::sync::Arc;

use tower::Service;

use super::chance::Chance;
use super::route::{Backend, Route};
use crate::svc::{always_ready, Fut, HttpService, Req};
use crate::svc::{ErrorKind, ProxyError};

/// Picks a backend in proportion to the weights, given a uniform `u` in
/// `[0, 1)`; zero-weight backends are never picked.
pub fn pick(backends: &[(u32, Backend)], u: f64) -> Option<&Backend> {
    let total: u64 = backends.iter().map(|(w, _)| u64::from(*w)).sum();
    if total == 0 {
        return None;
    }
    let mut x = (u * total as f64) as u64;
    for (w, b) in backends {
        let w = u64::from(*w);
        if x < w {
            return Some(b);
        }
        x -= w;
    }
    backends.iter().rev().find(|(w, _)| *w > 0).map(|(_, b)| b)
}

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
    use crate::policy::testing::{backend_named, request_on_route, route_with, Scripted};

    fn names(backends: &[(u32, Backend)], us: &[f64]) -> Vec<String> {
        us.iter()
            .map(|u| pick(backends, *u).unwrap().service.label.to_string())
            .collect()
    }

    #[test]
    fn picks_follow_the_cumulative_weights() {
        let b = vec![(90, backend_named("stable")), (10, backend_named("canary"))];
        assert_eq!(
            names(&b, &[0.0, 0.5, 0.899, 0.9, 0.999]),
            [
                "stable.shop",
                "stable.shop",
                "stable.shop",
                "canary.shop",
                "canary.shop"
            ]
        );
    }

    #[test]
    fn zero_weights_are_never_picked() {
        let b = vec![
            (0, backend_named("blue")),
            (100, backend_named("green")),
            (0, backend_named("gray")),
        ];
        assert_eq!(names(&b, &[0.0, 0.3, 0.9999]), ["green.shop"; 3]);
        assert!(pick(&[(0, backend_named("x"))], 0.5).is_none());
    }

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
