//! What every layer of the request path shares, at the bottom of the
//! proxy's HTTP side: the request, response and body types, the service
//! shape each layer has (always ready, boxed future), the proxy's own
//! error with its kinds (status and response flag of each), and the
//! request and response extensions that carry what a request learned on its
//! way down (its route, the endpoint that served it, its tries, whether the
//! client's body failed) back up to the metrics and the access log.
//!
//! Every layer is a `tower::Service<Request<Body>>` that answers
//! `Response<Body>` or a [`ProxyError`]; none applies back-pressure through
//! `poll_ready` (a full pool answers 503 at once, as Envoy does), so each
//! layer is always ready and its future is boxed.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Response, Version};
use http_body_util::{BodyExt, Full};
use outrigger_identity::SpiffeId;
use tower::Service;

use crate::metrics::{Name, ResponseFlag, Workload};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type on the proxy's inside: upstream bodies and local answers alike.
pub type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub type Req = Request<Body>;
pub type Rsp = Response<Body>;
pub type Fut = Pin<Box<dyn Future<Output = Result<Rsp, ProxyError>> + Send + 'static>>;

/// A layer's inner service: what every layer wraps.
pub trait HttpService:
    Service<Req, Response = Rsp, Error = ProxyError, Future = Fut> + Clone + Send + 'static
{
}

impl<T> HttpService for T where
    T: Service<Req, Response = Rsp, Error = ProxyError, Future = Fut> + Clone + Send + 'static
{
}

/// The associated types and `poll_ready` every layer shares: always ready,
/// answering `Response<Body>` or a [`ProxyError`] through a boxed future.
macro_rules! always_ready {
    () => {
        type Response = $crate::svc::Rsp;
        type Error = $crate::svc::ProxyError;
        type Future = $crate::svc::Fut;

        fn poll_ready(
            &mut self,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), $crate::svc::ProxyError>> {
            std::task::Poll::Ready(Ok(()))
        }
    };
}
pub(crate) use always_ready;

/// Calls an inner service. Every service of the stack is always ready (see
/// above), so `poll_ready` is not awaited; the concrete future type keeps
/// the layers' async blocks simple for the compiler.
pub fn call<S: HttpService>(mut inner: S, req: Req) -> Fut {
    inner.call(req)
}

/// The HTTP version of a response to a client that spoke `client`: HTTP/2
/// to HTTP/2, HTTP/1.1 to any HTTP/1.
pub fn response_version(client: Version) -> Version {
    if client == Version::HTTP_2 {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    }
}

/// Where and how one try of a request is sent (request extension).
#[derive(Clone, Debug)]
pub struct Upstream {
    pub addr: SocketAddr,
    /// For a meshed endpoint: the identity it must prove over mutual TLS
    /// (used when this proxy has an identity itself).
    pub tls: Option<Arc<SpiffeId>>,
    pub proto: UpstreamProto,
    /// Carrying a request over HTTP/2 to a peer proxy whose app gets HTTP/1.1
    /// (the client spoke HTTP/1, or the service port says `http`).
    pub mark_http1: bool,
    /// Keep an absolute-form request target (a client talking to a forward
    /// proxy that we pass through to).
    pub keep_absolute: bool,
    pub served: Served,
}

/// The HTTP version a try is sent upstream in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UpstreamProto {
    Http1,
    Http2,
}

/// The peer identity of a request's connection, when mutual TLS gave one
/// (a request extension set by the inbound side).
#[derive(Clone, Debug)]
pub struct PeerIdentity {
    /// `spiffe://<td>/ns/<ns>/sa/<sa>`: the metric labels' form.
    pub uri: Arc<str>,
    /// `<td>/ns/<ns>/sa/<sa>`: the form AuthorizationPolicies use.
    pub principal: Arc<str>,
    pub namespace: Arc<str>,
}

/// On answers the proxy makes itself: why.
pub static PROXY_ERROR: HeaderName = HeaderName::from_static("outrigger-proxy-error");

pub use outrigger_proxy_policy::error::ErrorKind;

/// The response flag of an error kind (`UH`, `UF`, …).
impl From<ErrorKind> for ResponseFlag {
    fn from(kind: ErrorKind) -> Self {
        match kind {
            ErrorKind::NoRoute | ErrorKind::NotImplemented => ResponseFlag::NoRoute,
            ErrorKind::NoHealthyUpstream => ResponseFlag::NoHealthyUpstream,
            ErrorKind::Overflow => ResponseFlag::UpstreamOverflow,
            ErrorKind::Timeout => ResponseFlag::UpstreamRequestTimeout,
            ErrorKind::RateLimited { .. } => ResponseFlag::RateLimited,
            ErrorKind::ConnectFailure => ResponseFlag::UpstreamConnectFailure,
            ErrorKind::RefusedStream | ErrorKind::Reset => {
                ResponseFlag::UpstreamConnectionTermination
            }
            ErrorKind::ProtocolError => ResponseFlag::UpstreamProtocolError,
            ErrorKind::Denied => ResponseFlag::Denied,
            ErrorKind::BadRequest => ResponseFlag::DownstreamProtocolError,
            ErrorKind::UpgradeRefused => ResponseFlag::None,
            ErrorKind::ClientAborted => ResponseFlag::DownstreamConnectionTermination,
        }
    }
}

/// The endpoint a request went to (response and error extension).
#[derive(Clone, Debug)]
pub struct Served {
    pub addr: SocketAddr,
    pub peer: Workload,
    /// The `destination_service` label: the service the endpoint belongs to.
    pub service: Name,
    /// The hop was mutual TLS (`connection_security_policy`).
    pub mtls: bool,
}

/// The route a request took (response and error extension).
#[derive(Clone, Debug)]
pub struct RouteName {
    /// The routed service (the one the client addressed).
    pub service: Name,
    pub route: Name,
}

/// A response the proxy passed on but still flags (`URX`, `DI`).
#[derive(Clone, Copy, Debug)]
pub struct Flagged(pub ResponseFlag);

/// How long a request waited for a connection to its endpoint to be opened
/// (response extension, set only when it waited for one): the balancer
/// leaves it out of the endpoint's latency.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectWait(pub std::time::Duration);

/// How many tries a request took (response extension; also the
/// `outrigger-attempt-count` header).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attempts(pub u32);

pub const ATTEMPT_COUNT: http::HeaderName =
    http::HeaderName::from_static("outrigger-attempt-count");
pub const RESPONSE_FLAGS: http::HeaderName =
    http::HeaderName::from_static("outrigger-response-flags");

#[derive(Debug)]
pub struct ProxyError {
    pub kind: ErrorKind,
    pub message: String,
    pub served: Option<Box<Served>>,
    pub route: Option<Box<RouteName>>,
    pub attempts: Option<Attempts>,
}

impl std::fmt::Display for ProxyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({})",
            self.message,
            ResponseFlag::from(self.kind).as_str()
        )
    }
}

impl std::error::Error for ProxyError {}

impl ProxyError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            served: None,
            route: None,
            attempts: None,
        }
    }

    /// Puts an upstream error down to the client whose request body failed
    /// first (see [`BodyFault`]): whatever the upstream connection did
    /// next followed from it.
    pub fn blame_client(&mut self, fault: &BodyFault) {
        if let Some((f, why)) = fault.get() {
            self.kind = match f {
                ClientFault::Aborted => ErrorKind::ClientAborted,
                ClientFault::Malformed => ErrorKind::BadRequest,
            };
            self.message = match f {
                ClientFault::Aborted => format!("the client's request body ended early: {why}"),
                ClientFault::Malformed => format!("malformed request body: {why}"),
            };
        }
    }

    /// The proxy's own answer for this error, in the client's HTTP version:
    /// the status, the reason in the body and in `outrigger-proxy-error`, and
    /// the response flag in `outrigger-response-flags`.
    pub fn to_response(&self, client_version: Version) -> http::Response<Body> {
        let mut resp = http::Response::new(full(format!("{}\n", self.message)));
        *resp.status_mut() = self.kind.status();
        *resp.version_mut() = client_version;
        let h = resp.headers_mut();
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        if let Ok(v) = HeaderValue::from_str(&self.message) {
            h.insert(PROXY_ERROR.clone(), v);
        }
        h.insert(
            RESPONSE_FLAGS,
            HeaderValue::from_static(ResponseFlag::from(self.kind).as_str()),
        );
        if let ErrorKind::RateLimited { retry_after } = self.kind {
            // Whole seconds, rounded up: never invite a retry too early.
            let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
            h.insert(http::header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        if let Some(a) = self.attempts {
            h.insert(ATTEMPT_COUNT, HeaderValue::from(a.0));
        }
        // A request that could not be taken as sent ends its HTTP/1
        // connection (as Envoy closes after a protocol error): what follows
        // it on the connection is never read as another request.
        if matches!(self.kind, ErrorKind::BadRequest) && client_version != Version::HTTP_2 {
            h.insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}

/// How a client's request body failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientFault {
    /// The client went away (or reset its stream) before the body ended.
    Aborted,
    /// The body broke HTTP framing (a bad chunk size, an HTTP/2 protocol
    /// error, a length that does not add up).
    Malformed,
}

/// Whether the client's request body failed, and how (request extension,
/// shared by every try). Set before the failure reaches the upstream
/// connection, so an upstream error that follows it can be recognised as
/// the client's: over HTTP/2 hyper resets the stream and the error it
/// returns does not carry the body's.
#[derive(Clone, Debug, Default)]
pub struct BodyFault(Arc<OnceLock<(ClientFault, String)>>);

impl BodyFault {
    /// How the body failed, and why, if it did.
    pub fn get(&self) -> Option<&(ClientFault, String)> {
        self.0.get()
    }

    /// Records the body's first failure; later ones change nothing.
    pub fn set(&self, fault: ClientFault, why: String) {
        let _ = self.0.set((fault, why));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn every_kind_has_its_status_and_flag() {
        let cases = [
            (ErrorKind::NoRoute, 404, "NR"),
            (ErrorKind::NoHealthyUpstream, 503, "UH"),
            (ErrorKind::Overflow, 503, "UO"),
            (ErrorKind::Timeout, 504, "UT"),
            (
                ErrorKind::RateLimited {
                    retry_after: Duration::ZERO,
                },
                429,
                "RL",
            ),
            (ErrorKind::ConnectFailure, 502, "UF"),
            (ErrorKind::RefusedStream, 502, "UC"),
            (ErrorKind::Reset, 502, "UC"),
            (ErrorKind::ProtocolError, 502, "UPE"),
            (ErrorKind::NotImplemented, 501, "NR"),
            (ErrorKind::Denied, 403, "RBAC"),
            (ErrorKind::BadRequest, 400, "DPE"),
            (ErrorKind::UpgradeRefused, 403, "-"),
            (ErrorKind::ClientAborted, 400, "DC"),
        ];
        for (kind, status, flag) in cases {
            assert_eq!(kind.status().as_u16(), status, "{kind:?}");
            assert_eq!(ResponseFlag::from(kind).as_str(), flag, "{kind:?}");
        }
    }

    #[test]
    fn a_local_answer_says_why_and_when_to_come_back() {
        let e = ProxyError::new(
            ErrorKind::RateLimited {
                retry_after: Duration::from_millis(1200),
            },
            "rate limit of inbound port 8080",
        );
        let r = e.to_response(Version::HTTP_11);
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers()["retry-after"], "2");
        assert_eq!(r.headers()["outrigger-response-flags"], "RL");
        assert_eq!(
            r.headers()["outrigger-proxy-error"],
            "rate limit of inbound port 8080"
        );
    }
}
