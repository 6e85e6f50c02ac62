//! The fault layer: applies the route's drawn fault. A delayed response
//! carries the `DI` flag, an aborted one (answered here, the upstream never
//! called) `FI`.

use std::sync::Arc;

use http::{HeaderValue, StatusCode};
use tower::Service;

use crate::metrics::ResponseFlag;
use crate::svc::{
    always_ready, call, full, Body, Flagged, Fut, HttpService, Req, Rsp, RESPONSE_FLAGS,
};
use outrigger_proxy_policy::chance::Chance;
use outrigger_proxy_policy::fault::{Abort, Decision};
use outrigger_proxy_policy::route::Route;

fn abort_response(abort: Abort, version: http::Version) -> Rsp {
    let mut resp = match abort {
        Abort::Http(code) => {
            let mut r = http::Response::new(full("fault filter abort\n"));
            *r.status_mut() =
                StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            r
        }
        Abort::Grpc(code) => {
            let mut r = http::Response::new(Body::default());
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/grpc"),
            );
            r.headers_mut()
                .insert("grpc-status", HeaderValue::from(u16::from(code)));
            r.headers_mut().insert(
                "grpc-message",
                HeaderValue::from_static("fault filter abort"),
            );
            r
        }
    };
    *resp.version_mut() = crate::svc::response_version(version);
    resp.headers_mut().insert(
        RESPONSE_FLAGS,
        HeaderValue::from_static(ResponseFlag::FaultInjected.as_str()),
    );
    resp.extensions_mut()
        .insert(Flagged(ResponseFlag::FaultInjected));
    resp
}

#[derive(Clone)]
pub struct Fault<S> {
    inner: S,
    chance: Chance,
}

impl<S> Fault<S> {
    pub fn new(inner: S, chance: Chance) -> Self {
        Self { inner, chance }
    }
}

impl<S: HttpService> Service<Req> for Fault<S> {
    always_ready!();

    fn call(&mut self, req: Req) -> Fut {
        let decision = req
            .extensions()
            .get::<Arc<Route>>()
            .and_then(|r| r.fault.as_ref())
            .map(|f| f.decide(&self.chance))
            .unwrap_or_default();
        if decision == Decision::default() {
            return self.inner.call(req);
        }
        // The inner service is called after the delay.
        let inner = self.inner.clone();
        Box::pin(async move {
            if let Some(d) = decision.delay {
                tokio::time::sleep(d).await;
            }
            if let Some(a) = decision.abort {
                return Ok(abort_response(a, req.version()));
            }
            let mut resp = call(inner, req).await?;
            if decision.delay.is_some() && resp.extensions().get::<Flagged>().is_none() {
                resp.extensions_mut()
                    .insert(Flagged(ResponseFlag::DelayInjected));
            }
            Ok(resp)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::testing::fault_policy as policy;
    use crate::layers::testing::{request_on_route, route_with, Scripted};
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn a_delay_holds_the_request_then_flags_the_response() {
        let upstream = Scripted::ok();
        let mut svc = Fault::new(upstream.clone(), Chance::seeded(1));
        let route = route_with(|r| r.fault = Some(policy(Some((500, 100.0)), None)));
        let start = tokio::time::Instant::now();
        let resp = svc.call(request_on_route(&route)).await.unwrap();
        assert_eq!(start.elapsed(), Duration::from_millis(500));
        assert_eq!(upstream.calls(), 1);
        assert_eq!(
            resp.extensions().get::<Flagged>().map(|f| f.0),
            Some(ResponseFlag::DelayInjected)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_abort_answers_without_calling_the_upstream() {
        let upstream = Scripted::ok();
        let mut svc = Fault::new(upstream.clone(), Chance::seeded(1));
        let route = route_with(|r| r.fault = Some(policy(None, Some((Abort::Http(418), 100.0)))));
        let resp = svc.call(request_on_route(&route)).await.unwrap();
        assert_eq!(resp.status(), 418);
        assert_eq!(resp.headers()["outrigger-response-flags"], "FI");
        assert_eq!(upstream.calls(), 0);

        let route = route_with(|r| r.fault = Some(policy(None, Some((Abort::Grpc(14), 100.0)))));
        let resp = svc.call(request_on_route(&route)).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["grpc-status"], "14");
        assert_eq!(resp.headers()["content-type"], "application/grpc");
    }

    #[tokio::test(start_paused = true)]
    async fn no_fault_passes_straight_through() {
        let upstream = Scripted::ok();
        let mut svc = Fault::new(upstream.clone(), Chance::seeded(1));
        let route =
            route_with(|r| r.fault = Some(policy(Some((500, 0.0)), Some((Abort::Http(500), 0.0)))));
        let start = tokio::time::Instant::now();
        let resp = svc.call(request_on_route(&route)).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(start.elapsed(), Duration::ZERO);
        assert!(resp.extensions().get::<Flagged>().is_none());
    }
}
