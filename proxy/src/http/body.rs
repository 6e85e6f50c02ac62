//! Bodies that meter what passes through them.
//!
//! [`CountedBody`] adds data bytes to a counter as frames pass. [`ResponseBody`]
//! also watches for the `grpc-status` trailer and, when the response ends (or
//! is dropped early), records the request: count, duration, access log line.
//! [`RequestBody`] is the client's request body: counted, and its failures
//! (the client went away, or sent a malformed body) typed and recorded in
//! the request's [`BodyFault`], so that what they cause upstream is put
//! down to the client, never to the endpoint.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::Request;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use pin_project_lite::pin_project;
use prometheus_client::metrics::counter::Counter;
use tokio::time::Instant;

use crate::access_log::{AccessLog, Ended};
use crate::metrics::{ByteMeters, GrpcStatus, Metrics, RequestLabels, ResponseFlag, RouteLabels};
use crate::svc::{Body, BodyFault, BoxError, ClientFault, RouteName};
use crate::trace::SpanRecord;

pin_project! {
    pub struct CountedBody<B> {
        #[pin]
        inner: B,
        bytes: Option<Counter>,
    }
}

impl<B> CountedBody<B> {
    /// Counts into `bytes`; with None, passes frames through uncounted.
    pub fn new(inner: B, bytes: Option<Counter>) -> Self {
        Self { inner, bytes }
    }
}

impl<B> HttpBody for CountedBody<B>
where
    B: HttpBody<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.project();
        let res = this.inner.poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &res {
            if let (Some(data), Some(bytes)) = (frame.data_ref(), this.bytes.as_ref()) {
                bytes.inc_by(data.len() as u64);
            }
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

impl ClientFault {
    /// What an error reading the client's body says about the client.
    pub fn of(e: &hyper::Error) -> Self {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
        while let Some(err) = source {
            if let Some(io) = err.downcast_ref::<std::io::Error>() {
                // hyper's HTTP/1 body decoder: framing errors are invalid
                // data or input; a body cut short is an unexpected end.
                return match io.kind() {
                    std::io::ErrorKind::InvalidData | std::io::ErrorKind::InvalidInput => {
                        ClientFault::Malformed
                    }
                    _ => ClientFault::Aborted,
                };
            }
            if let Some(h2) = err.downcast_ref::<h2::Error>() {
                return match h2.reason() {
                    Some(h2::Reason::PROTOCOL_ERROR | h2::Reason::FRAME_SIZE_ERROR)
                        if !h2.is_remote() =>
                    {
                        ClientFault::Malformed
                    }
                    _ => ClientFault::Aborted,
                };
            }
            source = err.source();
        }
        if e.is_parse() {
            ClientFault::Malformed
        } else {
            ClientFault::Aborted
        }
    }
}

/// An error reading the client's request body: the client's doing.
#[derive(Debug, thiserror::Error)]
#[error("request body from the client: {source}")]
pub struct ClientBodyError {
    pub fault: ClientFault,
    source: hyper::Error,
}

pin_project! {
    /// The client's request body, counted into the request's byte counter;
    /// its errors are [`ClientBodyError`]s, recorded in its [`BodyFault`].
    pub struct RequestBody {
        #[pin]
        inner: CountedBody<Incoming>,
        fault: Option<BodyFault>,
    }
}

impl RequestBody {
    /// The client's request with its body wrapped. A request with a body
    /// (only such a body can fail) carries the body's [`BodyFault`].
    pub fn wrap(req: Request<Incoming>, bytes: Counter) -> Request<Body> {
        let (mut parts, body) = req.into_parts();
        let fault = (!body.is_end_stream()).then(BodyFault::default);
        if let Some(f) = &fault {
            parts.extensions.insert(f.clone());
        }
        let body = RequestBody {
            inner: CountedBody::new(body, Some(bytes)),
            fault,
        };
        Request::from_parts(parts, body.map_err(Into::into).boxed_unsync())
    }
}

impl HttpBody for RequestBody {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Err(source))) => {
                let e = ClientBodyError {
                    fault: ClientFault::of(&source),
                    source,
                };
                if let Some(f) = this.fault.as_ref() {
                    f.set(e.fault, e.source.to_string());
                }
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(Ok(frame))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What to record once a response is over.
pub struct Record {
    pub metrics: Arc<Metrics>,
    pub labels: RequestLabels,
    pub start: Instant,
    pub access: Option<Box<AccessLog>>,
    /// The route the request took, for the per-route family.
    pub route: Option<RouteName>,
    /// Request body bytes read so far (a standalone counter, added to the
    /// family under the final labels).
    pub request_bytes: Counter,
    /// The hop's byte series, once the response head is labelled (else
    /// looked up at the end).
    pub bytes: Option<ByteMeters>,
    /// Response body bytes sent so far.
    pub response_size: u64,
    /// The request's span, when it is traced and sampled.
    pub span: Option<Box<SpanRecord>>,
}

impl Record {
    pub(crate) fn finish(mut self, completed: bool) {
        if !completed && self.labels.response_flags == ResponseFlag::None {
            self.labels.response_flags = ResponseFlag::DownstreamConnectionTermination;
        }
        self.labels.grpc_response_status = self
            .labels
            .grpc_response_status
            .resolved(self.labels.response_code);
        let elapsed = self.start.elapsed();
        if let Some(span) = self.span.take() {
            let route = self.route.as_ref().map(|r| r.route.clone());
            span.end(&self.labels, elapsed, route);
        }
        self.metrics.requests.get_or_create(&self.labels).inc();
        let sent = self.request_bytes.get();
        match &self.metrics.sizes {
            Some(sizes) => sizes
                .get_or_create(&self.labels)
                .finish(sent, self.response_size),
            None => {
                let bytes = self.bytes.take().unwrap_or_else(|| {
                    self.metrics
                        .bytes
                        .get_or_create(&self.labels.traffic)
                        .clone()
                });
                bytes.finish(sent, self.response_size);
            }
        }
        if let Some(r) = &self.route {
            self.metrics
                .route_requests
                .get_or_create(&RouteLabels {
                    direction: self.labels.traffic.direction,
                    destination_service: r.service.clone(),
                    route: r.route.clone(),
                    response_code: self.labels.response_code,
                    response_flags: self.labels.response_flags,
                })
                .inc();
        }
        self.metrics
            .request_duration
            .get_or_create(&self.labels)
            .observe(elapsed.as_secs_f64() * self.metrics.duration_scale);
        if let Some(log) = self.access {
            log.emit(&Ended {
                labels: &self.labels,
                duration: elapsed,
                bytes_received: sent,
            });
        }
    }
}

pin_project! {
    pub struct ResponseBody {
        #[pin]
        inner: CountedBody<Body>,
        record: Option<Record>,
    }

    impl PinnedDrop for ResponseBody {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(record) = this.record.take() {
                let completed = this.inner.is_end_stream();
                record.finish(completed);
            }
        }
    }
}

impl ResponseBody {
    pub fn new(inner: Body, bytes: Option<Counter>, record: Record) -> Self {
        Self {
            inner: CountedBody::new(inner, bytes),
            record: Some(record),
        }
    }
}

impl HttpBody for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.project();
        let res = this.inner.poll_frame(cx);
        match &res {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    if let Some(r) = this.record.as_mut() {
                        r.response_size += data.len() as u64;
                    }
                    if let Some(a) = this.record.as_mut().and_then(|r| r.access.as_mut()) {
                        a.bytes_sent += data.len() as u64;
                    }
                }
                if let Some(trailers) = frame.trailers_ref() {
                    if let (Some(v), Some(r)) = (trailers.get("grpc-status"), this.record.as_mut())
                    {
                        r.labels.grpc_response_status = GrpcStatus::parse(v.as_bytes());
                    }
                }
            }
            Poll::Ready(None) => {
                if let Some(r) = this.record.take() {
                    r.finish(true);
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(mut r) = this.record.take() {
                    if r.labels.response_flags == ResponseFlag::None {
                        r.labels.response_flags = ResponseFlag::UpstreamConnectionTermination;
                    }
                    r.finish(true);
                }
            }
            Poll::Pending => {}
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{unknown, Direction, SecurityPolicy, TrafficLabels};
    use http_body_util::{BodyExt, StreamBody};

    fn labels() -> RequestLabels {
        RequestLabels {
            traffic: TrafficLabels {
                direction: Direction::Inbound,
                source_workload: unknown(),
                source_namespace: unknown(),
                source_principal: unknown(),
                destination_workload: "web".into(),
                destination_namespace: "shop".into(),
                destination_principal: unknown(),
                destination_service: unknown(),
                connection_security_policy: SecurityPolicy::None,
            },
            response_code: 200,
            grpc_response_status: GrpcStatus(None),
            response_flags: ResponseFlag::None,
        }
    }

    fn body_of(frames: Vec<Frame<Bytes>>) -> Body {
        let stream = futures_util::stream::iter(frames.into_iter().map(Ok::<_, BoxError>));
        StreamBody::new(stream).boxed_unsync()
    }

    #[tokio::test]
    async fn a_finished_grpc_response_is_recorded_once_with_its_trailer_status() {
        let metrics = Arc::new(Metrics::new());
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", "14".parse().unwrap());
        let body = body_of(vec![
            Frame::data(Bytes::from_static(b"hello")),
            Frame::data(Bytes::from_static(b" world")),
            Frame::trailers(trailers),
        ]);
        let bytes = Counter::default();
        let record = Record {
            metrics: metrics.clone(),
            labels: labels(),
            start: Instant::now(),
            access: None,
            route: None,
            request_bytes: Counter::default(),
            bytes: None,
            response_size: 0,
            span: None,
        };
        let collected = ResponseBody::new(body, Some(bytes.clone()), record)
            .collect()
            .await
            .unwrap();
        assert_eq!(collected.trailers().unwrap()["grpc-status"], "14");
        assert_eq!(bytes.get(), 11);
        let mut expected = labels();
        expected.grpc_response_status = GrpcStatus(Some(14));
        assert_eq!(metrics.requests.get_or_create(&expected).get(), 1);
        assert_eq!(metrics.requests.get_or_create(&labels()).get(), 0);
    }

    #[tokio::test]
    async fn a_response_dropped_midway_is_recorded_as_downstream_termination() {
        let metrics = Arc::new(Metrics::new());
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(1);
        let body = StreamBody::new(tokio_stream_from(rx)).boxed_unsync();
        let record = Record {
            metrics: metrics.clone(),
            labels: labels(),
            start: Instant::now(),
            access: None,
            route: None,
            request_bytes: Counter::default(),
            bytes: None,
            response_size: 0,
            span: None,
        };
        let rb = ResponseBody::new(body, None, record);
        drop(rb);
        drop(tx);
        let mut dc = labels();
        dc.response_flags = ResponseFlag::DownstreamConnectionTermination;
        assert_eq!(metrics.requests.get_or_create(&dc).get(), 1);
    }

    #[tokio::test]
    async fn a_grpc_request_answered_without_a_status_ends_with_the_mapped_one() {
        let metrics = Arc::new(Metrics::new());
        let mut pending = labels();
        pending.grpc_response_status = GrpcStatus::PENDING;
        pending.response_code = 503;
        let record = Record {
            metrics: metrics.clone(),
            labels: pending,
            start: Instant::now(),
            access: None,
            route: None,
            request_bytes: Counter::default(),
            bytes: None,
            response_size: 0,
            span: None,
        };
        ResponseBody::new(body_of(vec![]), None, record)
            .collect()
            .await
            .unwrap();
        let mut expected = labels();
        expected.response_code = 503;
        expected.grpc_response_status = GrpcStatus(Some(14));
        assert_eq!(metrics.requests.get_or_create(&expected).get(), 1);
        assert!(metrics.encode().contains("grpc_response_status=\"14\""));
    }

    fn tokio_stream_from<T: Send + 'static>(
        mut rx: tokio::sync::mpsc::Receiver<T>,
    ) -> impl futures_util::Stream<Item = T> {
        futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }

    #[tokio::test]
    async fn counted_body_counts_data_only() {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("x", "yyyy".parse().unwrap());
        let body = body_of(vec![
            Frame::data(Bytes::from_static(b"abc")),
            Frame::trailers(trailers),
        ]);
        let c = Counter::default();
        CountedBody::new(body, Some(c.clone()))
            .collect()
            .await
            .unwrap();
        assert_eq!(c.get(), 3);
    }
}
