//! Timeouts: the route timeout, over every try and the back-off between
//! them, and the per-try timeout, inside the retry layer. Both bound the
//! time to the response head and answer 504 with the `UT` flag.

use std::sync::Arc;
use std::time::Duration;

use tower::Service;

use crate::svc::{always_ready, Fut, HttpService, Req};
use crate::svc::{ErrorKind, ProxyError};
use outrigger_proxy_policy::route::Route;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Which {
    Route,
    PerTry,
}

#[derive(Clone)]
pub struct Timeout<S> {
    inner: S,
    which: Which,
}

impl<S> Timeout<S> {
    pub fn route(inner: S) -> Self {
        Self {
            inner,
            which: Which::Route,
        }
    }

    pub fn per_try(inner: S) -> Self {
        Self {
            inner,
            which: Which::PerTry,
        }
    }
}

impl<S: HttpService> Service<Req> for Timeout<S> {
    always_ready!();

    fn call(&mut self, req: Req) -> Fut {
        let limit: Option<Duration> = req.extensions().get::<Arc<Route>>().and_then(|r| match self
            .which
        {
            Which::Route => r.timeout,
            Which::PerTry => r.retry.per_try_timeout,
        });
        let fut = self.inner.call(req);
        let Some(limit) = limit else {
            return fut;
        };
        let which = self.which;
        Box::pin(async move {
            match tokio::time::timeout(limit, fut).await {
                Ok(r) => r,
                Err(_) => Err(ProxyError::new(
                    ErrorKind::Timeout,
                    match which {
                        Which::Route => format!("route timeout of {limit:?} passed"),
                        Which::PerTry => format!("per-try timeout of {limit:?} passed"),
                    },
                )),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::testing::{request_on_route, route_with, Scripted, Step};

    #[tokio::test(start_paused = true)]
    async fn a_slow_answer_times_out_at_exactly_the_limit() {
        let upstream = Scripted::new([Step::Delay(Duration::from_secs(5), 200)]);
        let mut svc = Timeout::route(upstream);
        let route = route_with(|r| r.timeout = Some(Duration::from_millis(250)));
        let start = tokio::time::Instant::now();
        let err = svc.call(request_on_route(&route)).await.unwrap_err();
        assert_eq!(err.kind, ErrorKind::Timeout);
        assert_eq!(start.elapsed(), Duration::from_millis(250));
        assert!(
            err.message.contains("route timeout of 250ms"),
            "{}",
            err.message
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_in_time_passes_and_no_timeout_means_none() {
        let upstream = Scripted::new([
            Step::Delay(Duration::from_millis(100), 200),
            Step::Delay(Duration::from_secs(3600), 201),
        ]);
        let route = route_with(|r| r.timeout = Some(Duration::from_millis(250)));
        let resp = Timeout::route(upstream.clone())
            .call(request_on_route(&route))
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        // The per-try layer reads only perTryTimeout, which this route lacks.
        let resp = Timeout::per_try(upstream)
            .call(request_on_route(&route))
            .await
            .unwrap();
        assert_eq!(resp.status(), 201);
    }

    #[tokio::test(start_paused = true)]
    async fn the_per_try_layer_uses_the_retry_policy() {
        let upstream = Scripted::new([Step::Hang]);
        let route = route_with(|r| r.retry.per_try_timeout = Some(Duration::from_secs(1)));
        let start = tokio::time::Instant::now();
        let err = Timeout::per_try(upstream)
            .call(request_on_route(&route))
            .await
            .unwrap_err();
        assert_eq!(
            (err.kind, start.elapsed()),
            (ErrorKind::Timeout, Duration::from_secs(1))
        );
    }
}
