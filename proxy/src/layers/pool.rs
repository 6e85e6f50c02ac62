//! The pool layer: admits a request under its service's connection-pool
//! limits ([`Pool::admit`](outrigger_proxy_policy::pool::Pool::admit); 503 `UO` at
//! once past them) and holds its slots until the response body ends.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use tower::Service;

use crate::metrics::{Metrics, ServiceLabel};
use crate::svc::{
    always_ready, call, Body, BoxError, ErrorKind, Fut, HttpService, ProxyError, Req, Upstream,
    UpstreamProto,
};
use outrigger_proxy_policy::balance::Chosen;
use outrigger_proxy_policy::pool::{Overflow, Slots};

pin_project_lite::pin_project! {
    /// A response body that keeps the request's pool slots until it ends.
    struct Holding {
        #[pin]
        inner: Body,
        slots: Option<Slots>,
    }
}

impl HttpBody for Holding {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let res = this.inner.poll_frame(cx);
        if let Poll::Ready(None | Some(Err(_))) = &res {
            this.slots.take();
        }
        res
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[derive(Clone)]
pub struct PoolLimit<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S> PoolLimit<S> {
    pub fn new(inner: S, metrics: Arc<Metrics>) -> Self {
        Self { inner, metrics }
    }
}

impl<S: HttpService> Service<Req> for PoolLimit<S> {
    always_ready!();

    fn call(&mut self, req: Req) -> Fut {
        let Some(chosen) = req.extensions().get::<Chosen>().cloned() else {
            return self.inner.call(req);
        };
        let pool = chosen.service.pool.clone();
        if pool.is_unlimited() {
            return self.inner.call(req);
        }
        // Admission may wait (HTTP/1 pending requests): the inner service is
        // called once a slot is held.
        let inner = self.inner.clone();
        let http1 = req
            .extensions()
            .get::<Upstream>()
            .is_some_and(|u| u.proto == UpstreamProto::Http1);
        let metrics = self.metrics.clone();
        Box::pin(async move {
            let slots = match pool.admit(http1).await {
                Ok(s) => s,
                Err(why) => {
                    metrics
                        .pool_overflow
                        .get_or_create(&ServiceLabel {
                            destination_service: chosen.service.label.clone(),
                        })
                        .inc();
                    let what = match why {
                        Overflow::Requests(n) => format!("{n} requests in flight (http2MaxRequests)"),
                        Overflow::Pending(n) => format!(
                            "all connections busy and {n} requests waiting (http1MaxPendingRequests)"
                        ),
                    };
                    return Err(ProxyError::new(
                        ErrorKind::Overflow,
                        format!(
                            "service {} is at its pool limit: {what}",
                            chosen.service.label
                        ),
                    ));
                }
            };
            let resp = call(inner, req).await?;
            Ok(resp.map(|b| {
                Holding {
                    inner: b,
                    slots: Some(slots),
                }
                .boxed_unsync()
            }))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use outrigger_proxy_policy::pool::PoolLimits;

    #[tokio::test(start_paused = true)]
    async fn slots_are_held_until_the_response_body_ends() {
        use crate::layers::testing::{request_to_endpoint, request_to_endpoint_with, Scripted};
        let upstream = Scripted::ok();
        let limits = PoolLimits {
            max_requests: Some(1),
            ..Default::default()
        };
        let (req, svc_state) = request_to_endpoint(limits);
        let mut svc = PoolLimit::new(upstream, Arc::new(Metrics::new()));
        let resp = svc.call(req).await.unwrap();
        let err = svc
            .call(request_to_endpoint_with(&svc_state))
            .await
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::Overflow);
        assert!(err.message.contains("http2MaxRequests"), "{}", err.message);
        resp.into_body().collect().await.unwrap();
        assert!(svc.call(request_to_endpoint_with(&svc_state)).await.is_ok());
    }
}
