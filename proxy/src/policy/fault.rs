//! Fault injection (Istio `fault`): delay a share of requests, abort a share
//! with a chosen HTTP or gRPC status, for chaos testing a service through
//! the mesh. Delayed responses carry the `DI` flag, aborted ones `FI`.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, StatusCode};
use tower::Service;

use super::chance::Chance;
use super::route::Route;
use crate::metrics::ResponseFlag;
use crate::svc::{always_ready, call, Fut, HttpService, Req, Rsp};
use crate::svc::{full, Body};
use crate::svc::{Flagged, RESPONSE_FLAGS};

#[derive(Clone, Debug, PartialEq)]
pub struct FaultPolicy {
    pub delay: Option<(Duration, f64)>,
    pub abort: Option<(Abort, f64)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Abort {
    Http(u16),
    /// A trailers-only gRPC response with this code.
    Grpc(u8),
}

impl From<&outrigger_api::policy::Fault> for FaultPolicy {
    fn from(f: &outrigger_api::policy::Fault) -> Self {
        Self {
            delay: f.delay.as_ref().map(|d| (d.fixed_delay.get(), d.share())),
            abort: f.abort.as_ref().map(|a| {
                let abort = match (&a.http_status, &a.grpc_status) {
                    (Some(code), _) => Abort::Http(*code),
                    (None, Some(name)) => Abort::Grpc(
                        outrigger_api::policy::GRPC_CODE_NAMES
                            .iter()
                            .position(|n| n == name)
                            .expect("validated gRPC code name") as u8,
                    ),
                    (None, None) => unreachable!("validated: one of httpStatus, grpcStatus"),
                };
                (abort, a.share())
            }),
        }
    }
}

/// What to do to one request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Decision {
    pub delay: Option<Duration>,
    pub abort: Option<Abort>,
}

impl FaultPolicy {
    /// Draws the faults for one request (delay and abort independently).
    pub fn decide(&self, chance: &Chance) -> Decision {
        Decision {
            delay: self
                .delay
                .filter(|(_, pct)| chance.percent(*pct))
                .map(|(d, _)| d),
            abort: self
                .abort
                .filter(|(_, pct)| chance.percent(*pct))
                .map(|(a, _)| a),
        }
    }
}

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
    *resp.version_mut() = crate::http::forward::response_version(version);
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
    use crate::policy::testing::{request_on_route, route_with, Scripted};

    fn policy(delay: Option<(u64, f64)>, abort: Option<(Abort, f64)>) -> FaultPolicy {
        FaultPolicy {
            delay: delay.map(|(ms, p)| (Duration::from_millis(ms), p)),
            abort,
        }
    }

    #[test]
    fn percentages_are_drawn_independently() {
        let c = Chance::seeded(11);
        let p = policy(Some((10, 20.0)), Some((Abort::Http(503), 50.0)));
        let (mut delays, mut aborts) = (0, 0);
        for _ in 0..10_000 {
            let d = p.decide(&c);
            delays += usize::from(d.delay.is_some());
            aborts += usize::from(d.abort.is_some());
        }
        assert!((1_900..2_100).contains(&delays), "{delays}");
        assert!((4_850..5_150).contains(&aborts), "{aborts}");
    }

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

    fn from_json(json: &str) -> FaultPolicy {
        FaultPolicy::from(&serde_json::from_str::<outrigger_api::policy::Fault>(json).unwrap())
    }

    #[test]
    fn shares_follow_istio_percentage_then_percent_then_none() {
        // Istio's request-timeouts task writes the deprecated integer form.
        let p = from_json(r#"{ "delay": { "percent": 100, "fixedDelay": "2s" } }"#);
        assert_eq!(p.delay, Some((Duration::from_secs(2), 100.0)));
        let p = from_json(
            r#"{ "delay": { "percent": 100, "percentage": { "value": 10 }, "fixedDelay": "2s" } }"#,
        );
        assert_eq!(p.delay, Some((Duration::from_secs(2), 10.0)));
        // Without a share Istio injects nothing, and neither does the proxy.
        let p = from_json(r#"{ "delay": { "fixedDelay": "2s" }, "abort": { "httpStatus": 503 } }"#);
        assert_eq!(
            (p.delay, p.abort),
            (
                Some((Duration::from_secs(2), 0.0)),
                Some((Abort::Http(503), 0.0))
            )
        );
        let c = Chance::seeded(3);
        assert!((0..1000).all(|_| p.decide(&c) == Decision::default()));
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
