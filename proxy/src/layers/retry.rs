//! The retry layer: asks the route's [`RetryPolicy`] whether a try's
//! failure is worth another, waits the jittered [`backoff`], and replays the
//! request (body included, up to 64 KiB) to a different endpoint where one
//! exists, within the routed service's retry budget and the destination's
//! `maxRetries` (retries outstanding at once, Envoy's circuit breaker: one
//! past it is not made, and the answer is flagged `UO` as Envoy does).
//!
//! A non-idempotent request (POST, PATCH, ...) is sent again only when it
//! provably never reached the upstream (connect failure, `REFUSED_STREAM`),
//! unless its route sets `retryNonIdempotent`.

use std::net::SocketAddr;
use std::sync::Arc;

use http::{HeaderValue, Method};
use http_body::Body as _;
use tokio::sync::OwnedSemaphorePermit;
use tower::Service;

use super::replay::{ReplayBody, MAX_REPLAY_BYTES};
use crate::headers;
use crate::metrics::{Metrics, Name, ResponseFlag, ServiceLabel};
use crate::svc::{
    always_ready, Attempts, Body, Flagged, Fut, HttpService, ProxyError, Req, Rsp, Served,
    ATTEMPT_COUNT,
};
use crate::trace::{RetryEvent, RetryEvents};
use outrigger_proxy_policy::chance::Chance;
#[cfg(doc)]
use outrigger_proxy_policy::retry::RetryPolicy;
use outrigger_proxy_policy::retry::{backoff, TriedEndpoints, TryOutcome};
use outrigger_proxy_policy::route::Route;

#[derive(Clone)]
pub struct Retry<S> {
    inner: S,
    metrics: Arc<Metrics>,
    chance: Chance,
}

impl<S> Retry<S> {
    pub fn new(inner: S, metrics: Arc<Metrics>, chance: Chance) -> Self {
        Self {
            inner,
            metrics,
            chance,
        }
    }
}

/// The request without its body, to rebuild for every try.
struct Template {
    method: Method,
    uri: http::Uri,
    version: http::Version,
    headers: http::HeaderMap,
    extensions: http::Extensions,
}

impl Template {
    fn build(&self, body: Body, tried: &[SocketAddr]) -> Req {
        let mut req = Req::new(body);
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.version_mut() = self.version;
        *req.headers_mut() = self.headers.clone();
        *req.extensions_mut() = self.extensions.clone();
        if !tried.is_empty() {
            req.extensions_mut().insert(TriedEndpoints(tried.to_vec()));
        }
        req
    }
}

enum Replay {
    Empty,
    Body(ReplayBody),
}

impl<S: HttpService> Service<Req> for Retry<S> {
    always_ready!();

    fn call(&mut self, req: Req) -> Fut {
        let route = req.extensions().get::<Arc<Route>>().cloned();
        let upgrade = headers::is_upgrade(req.version(), req.method(), req.headers());
        let Some(route) = route.filter(|r| r.retry.attempts > 0 && !upgrade) else {
            return self.inner.call(req);
        };
        // Every try calls this one copy of the inner service.
        let mut inner = self.inner.clone();
        let metrics = self.metrics.clone();
        let chance = self.chance.clone();
        Box::pin(async move {
            let policy = &route.retry;
            let budget = &route.routed.runtime.budget;
            budget.deposit();
            let (parts, body) = req.into_parts();
            let template = Template {
                method: parts.method,
                uri: parts.uri,
                version: parts.version,
                headers: parts.headers,
                extensions: parts.extensions,
            };
            let replay = if body.is_end_stream() {
                Replay::Empty
            } else {
                Replay::Body(ReplayBody::new(body, MAX_REPLAY_BYTES))
            };
            let label = || ServiceLabel {
                destination_service: route.service.clone(),
            };
            let mut tried: Vec<SocketAddr> = Vec::new();
            // The `maxRetries` slots of the retry in flight.
            let mut outstanding: Vec<OwnedSemaphorePermit> = Vec::new();
            let mut n: u32 = 0;
            loop {
                n += 1;
                let body = match &replay {
                    Replay::Empty => Body::default(),
                    Replay::Body(b) => match b.try_clone() {
                        Some(c) => http_body_util::BodyExt::boxed_unsync(c),
                        None => unreachable!("checked before every retry"),
                    },
                };
                let result = inner.call(template.build(body, &tried)).await;
                // This try's answer is known: it no longer counts as an
                // outstanding retry.
                outstanding.clear();
                if let Some(addr) = served(&result).map(|s| s.addr) {
                    tried.push(addr);
                }
                let outcome = try_outcome(&result);
                let done = |mut result: Result<Rsp, ProxyError>, flag: Option<ResponseFlag>| {
                    match &mut result {
                        Ok(resp) => {
                            resp.headers_mut().insert(ATTEMPT_COUNT, attempt_count(n));
                            if n > 1 {
                                // Absent means one try (access log, metrics).
                                resp.extensions_mut().insert(Attempts(n));
                            }
                            if let Some(f) = flag {
                                resp.extensions_mut().insert(Flagged(f));
                            }
                        }
                        Err(e) => e.attempts = Some(Attempts(n)),
                    }
                    result
                };
                if !policy.retryable(outcome) {
                    if n > 1 {
                        metrics.retry_successes.get_or_create(&label()).inc();
                    }
                    return done(result, None);
                }
                let exhausted = Some(ResponseFlag::UpstreamRetryLimitExceeded);
                if n > policy.attempts {
                    return done(result, exhausted);
                }
                if !policy.may_repeat(&template.method, outcome) {
                    return done(result, None);
                }
                if let Replay::Body(b) = &replay {
                    if b.try_clone().is_none() {
                        // Past 64 KiB, or the last try still holds the body.
                        return done(result, None);
                    }
                }
                let destination = served(&result).map(|s| s.service.clone());
                outstanding = match retry_slots(&route, destination.as_ref()) {
                    Ok(slots) => slots,
                    Err(full) => {
                        metrics
                            .retry_overflow
                            .get_or_create(&ServiceLabel {
                                destination_service: full,
                            })
                            .inc();
                        return done(result, Some(ResponseFlag::UpstreamOverflow));
                    }
                };
                if !budget.withdraw() {
                    metrics.retry_budget_exhausted.get_or_create(&label()).inc();
                    return done(result, exhausted);
                }
                metrics.retries.get_or_create(&label()).inc();
                if let Some(events) = template.extensions.get::<RetryEvents>() {
                    events.push(RetryEvent {
                        at: std::time::SystemTime::now(),
                        attempt: n + 1,
                        previous: match &result {
                            Ok(resp) => resp.status().as_str().to_string(),
                            Err(e) => ResponseFlag::from(e.kind).as_str().to_string(),
                        },
                    });
                }
                drop(result);
                tokio::time::sleep(backoff(n, &chance)).await;
            }
        })
    }
}

/// The `maxRetries` slots a retry after a try to `destination` takes: that
/// service's, or, when the try reached no endpoint (a per-try timeout), those
/// of every destination of the route, since the retry may go to any. `Err`
/// names a service whose slots are all taken.
fn retry_slots(
    route: &Route,
    destination: Option<&Name>,
) -> Result<Vec<OwnedSemaphorePermit>, Name> {
    let services = route.backends.iter().map(|(_, b)| &b.service);
    let mut targets: Vec<_> = services
        .clone()
        .filter(|s| destination.is_some_and(|d| *d == s.label))
        .collect();
    if targets.is_empty() {
        targets = services.collect();
    }
    let mut slots = Vec::new();
    for (i, svc) in targets.iter().enumerate() {
        if targets[..i].iter().any(|t| Arc::ptr_eq(&t.pool, &svc.pool)) {
            continue;
        }
        match svc.pool.retry_slot() {
            Ok(Some(slot)) => slots.push(slot),
            Ok(None) => {}
            Err(_) => return Err(svc.label.clone()),
        }
    }
    Ok(slots)
}

/// The attempt-count header value; small counts are static (no allocation
/// on the hot path).
fn attempt_count(n: u32) -> HeaderValue {
    const SMALL: [&str; 10] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];
    match SMALL.get(n as usize) {
        Some(s) => HeaderValue::from_static(s),
        None => HeaderValue::from(n),
    }
}

fn served(result: &Result<Rsp, ProxyError>) -> Option<&Served> {
    match result {
        Ok(r) => r.extensions().get::<Served>(),
        Err(e) => e.served.as_deref(),
    }
}

/// How one try ended, as the retry policy sees it.
fn try_outcome(result: &Result<Rsp, ProxyError>) -> TryOutcome {
    match result {
        Ok(r) => TryOutcome::Response {
            status: r.status().as_u16(),
            grpc: r
                .headers()
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse().ok()),
        },
        Err(e) => TryOutcome::Error(e.kind),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::testing::retry_policy as policy;
    use crate::layers::testing::{request_on_route, route_with, Scripted, Step};
    use crate::svc::ErrorKind;
    use bytes::Bytes;
    use http_body_util::BodyExt;
    use outrigger_proxy_policy::retry::BACKOFF_BASE;
    use std::time::Duration;

    fn route(on: &str, attempts: u32) -> Arc<Route> {
        route_with(|r| r.retry = policy(on, attempts))
    }

    #[tokio::test(start_paused = true)]
    async fn a_flaky_get_is_saved_and_the_attempts_are_counted() {
        let upstream = Scripted::new([Step::Status(503), Step::Status(503), Step::Status(200)]);
        let metrics = Arc::new(Metrics::new());
        let mut svc = Retry::new(upstream.clone(), metrics.clone(), Chance::seeded(1));
        let resp = svc.call(request_on_route(&route("5xx", 2))).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()[ATTEMPT_COUNT], "3");
        assert_eq!(upstream.calls(), 3);
        let label = ServiceLabel {
            destination_service: "web.shop".into(),
        };
        assert_eq!(metrics.retries.get_or_create(&label).get(), 2);
        assert_eq!(metrics.retry_successes.get_or_create(&label).get(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn when_attempts_run_out_the_last_answer_is_flagged() {
        let upstream = Scripted::new([Step::Status(503); 5]);
        let mut svc = Retry::new(
            upstream.clone(),
            Arc::new(Metrics::new()),
            Chance::seeded(1),
        );
        let resp = svc.call(request_on_route(&route("5xx", 1))).await.unwrap();
        assert_eq!(resp.status(), 503);
        assert_eq!(upstream.calls(), 2);
        assert_eq!(
            resp.extensions().get::<Flagged>().map(|f| f.0),
            Some(ResponseFlag::UpstreamRetryLimitExceeded)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_post_the_upstream_saw_is_not_replayed() {
        let upstream = Scripted::new([Step::Status(503), Step::Status(200)]);
        let mut svc = Retry::new(
            upstream.clone(),
            Arc::new(Metrics::new()),
            Chance::seeded(1),
        );
        let mut req = request_on_route(&route("5xx,reset", 2));
        *req.method_mut() = Method::POST;
        let resp = svc.call(req).await.unwrap();
        assert_eq!(resp.status(), 503);
        assert_eq!(upstream.calls(), 1);
        assert_eq!(upstream.seen()[0].method, Method::POST);
        assert!(resp.extensions().get::<Flagged>().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_post_that_never_left_is_sent_again_with_its_body() {
        let upstream = Scripted::new([Step::Error(ErrorKind::ConnectFailure), Step::Status(200)]);
        let mut svc = Retry::new(
            upstream.clone(),
            Arc::new(Metrics::new()),
            Chance::seeded(1),
        );
        let mut req = request_on_route(&route("connect-failure", 2));
        *req.method_mut() = Method::POST;
        *req.body_mut() = crate::svc::full("payment #1");
        let resp = svc.call(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        let seen = upstream.seen();
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[1].body, Bytes::from_static(b"payment #1"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_over_64_kib_is_not_retried() {
        let upstream = Scripted::new([Step::Status(503), Step::Status(200)]);
        let mut svc = Retry::new(
            upstream.clone(),
            Arc::new(Metrics::new()),
            Chance::seeded(1),
        );
        let mut req = request_on_route(&route("5xx", 2));
        *req.method_mut() = Method::PUT;
        *req.body_mut() = crate::svc::full(vec![b'x'; MAX_REPLAY_BYTES + 1]);
        let resp = svc.call(req).await.unwrap();
        assert_eq!((resp.status().as_u16(), upstream.calls()), (503, 1));
        let mut req = request_on_route(&route("5xx", 2));
        *req.method_mut() = Method::PUT;
        *req.body_mut() = crate::svc::full(vec![b'x'; MAX_REPLAY_BYTES]);
        let upstream2 = Scripted::new([Step::Status(503), Step::Status(200)]);
        let mut svc = Retry::new(
            upstream2.clone(),
            Arc::new(Metrics::new()),
            Chance::seeded(1),
        );
        let resp = svc.call(req).await.unwrap();
        assert_eq!((resp.status().as_u16(), upstream2.calls()), (200, 2));
        assert_eq!(upstream2.seen()[1].body.len(), MAX_REPLAY_BYTES);
    }

    #[tokio::test(start_paused = true)]
    async fn retries_wait_a_jittered_backoff_and_avoid_tried_endpoints() {
        let upstream = Scripted::new([Step::Status(503), Step::Status(503), Step::Status(200)]);
        let mut svc = Retry::new(
            upstream.clone(),
            Arc::new(Metrics::new()),
            Chance::seeded(9),
        );
        let start = tokio::time::Instant::now();
        svc.call(request_on_route(&route("5xx", 2))).await.unwrap();
        let waited = start.elapsed();
        assert!(waited <= BACKOFF_BASE + BACKOFF_BASE * 2, "{waited:?}");
        let seen = upstream.seen();
        assert_eq!(seen[0].tried, Vec::<SocketAddr>::new());
        assert_eq!(seen[1].tried, vec![seen[0].served]);
        assert_eq!(seen[2].tried, vec![seen[0].served, seen[1].served]);
    }

    #[tokio::test(start_paused = true)]
    async fn the_budget_stops_a_retry_storm() {
        let upstream = Scripted::always(Step::Status(503));
        let metrics = Arc::new(Metrics::new());
        let mut svc = Retry::new(upstream.clone(), metrics.clone(), Chance::seeded(1));
        let route = route("5xx", 3);
        for _ in 0..500 {
            let resp = svc.call(request_on_route(&route)).await.unwrap();
            assert_eq!(resp.status(), 503);
        }
        // 500 requests; retries capped at 20 % of them plus 3/s over 10 s.
        let retries = upstream.calls() - 500;
        assert!(retries <= 100 + 30, "{retries} retries");
        assert!(retries >= 100, "{retries} retries");
        let label = ServiceLabel {
            destination_service: "web.shop".into(),
        };
        assert_eq!(
            metrics.retries.get_or_create(&label).get() as usize,
            retries
        );
        assert!(metrics.retry_budget_exhausted.get_or_create(&label).get() > 0);
    }

    #[tokio::test(start_paused = true)]
    async fn max_retries_bounds_the_retries_outstanding_to_the_destination() {
        use crate::layers::testing::{config, service_ref};
        let cfg = config(&[(
            "web",
            1,
            "trafficPolicy: { connectionPool: { http: { maxRetries: 1 } } }",
        )]);
        let mut route = (*cfg.routes(&service_ref("web")).unwrap()[0]).clone();
        route.retry = policy("5xx", 2);
        let route = Arc::new(route);
        // A: fails, then its retry takes 100 ms. B fails while A's retry is
        // out: no retry for B. C fails after A is done: retried.
        let upstream = Scripted::new([
            Step::Status(503),
            Step::Delay(Duration::from_millis(100), 200),
            Step::Status(503),
            Step::Status(503),
            Step::Status(200),
        ]);
        let metrics = Arc::new(Metrics::new());
        let svc = Retry::new(upstream.clone(), metrics.clone(), Chance::seeded(1));
        let a = {
            let (mut svc, route) = (svc.clone(), route.clone());
            tokio::spawn(async move { svc.call(request_on_route(&route)).await })
        };
        // Past A's back-off (at most 25 ms): its retry is in flight.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(upstream.calls(), 2);
        let b = svc.clone().call(request_on_route(&route)).await.unwrap();
        assert_eq!(b.status(), 503);
        assert_eq!(upstream.calls(), 3, "B was not retried");
        assert_eq!(
            b.extensions().get::<Flagged>().map(|f| f.0),
            Some(ResponseFlag::UpstreamOverflow)
        );
        let a = a.await.unwrap().unwrap();
        assert_eq!(a.status(), 200);
        assert_eq!(a.headers()[ATTEMPT_COUNT], "2");
        let c = svc.clone().call(request_on_route(&route)).await.unwrap();
        assert_eq!(c.status(), 200);
        assert_eq!(c.headers()[ATTEMPT_COUNT], "2");
        let label = ServiceLabel {
            destination_service: "web.shop".into(),
        };
        assert_eq!(metrics.retry_overflow.get_or_create(&label).get(), 1);
        assert_eq!(metrics.retries.get_or_create(&label).get(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_streamed_body_reaches_the_upstream_whole() {
        let upstream = Scripted::new([Step::Status(200)]);
        let mut svc = Retry::new(
            upstream.clone(),
            Arc::new(Metrics::new()),
            Chance::seeded(1),
        );
        let mut req = request_on_route(&route("5xx", 2));
        let frames = vec![
            Ok::<_, crate::svc::BoxError>(http_body::Frame::data(Bytes::from_static(b"ab"))),
            Ok(http_body::Frame::data(Bytes::from_static(b"cd"))),
        ];
        *req.body_mut() =
            http_body_util::StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync();
        svc.call(req).await.unwrap();
        assert_eq!(upstream.seen()[0].body, Bytes::from_static(b"abcd"));
    }
}
