//! Why the proxy could not get an answer from an upstream, or refused to:
//! the kinds its layers decide on, each with the status the client gets.

use std::time::Duration;

use http::StatusCode;

/// Why the proxy could not get an answer from an upstream, or refused to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// No route matches, or the target is gone from the config (404 `NR`).
    NoRoute,
    /// Nothing to send to: no endpoints, or all ejected (503 `UH`).
    NoHealthyUpstream,
    /// Connection-pool limits full (503 `UO`).
    Overflow,
    /// The route or per-try timeout passed (504 `UT`).
    Timeout,
    /// A local rate limit refused it (429 `RL`); retry after this long.
    RateLimited { retry_after: Duration },
    /// Connecting to the endpoint failed (502 `UF`): the request never left.
    ConnectFailure,
    /// HTTP/2 `REFUSED_STREAM` (502 `UC`): the upstream did not process it.
    RefusedStream,
    /// Connection or stream closed before a response head (502 `UC`).
    Reset,
    /// The upstream broke the protocol (502 `UPE`).
    ProtocolError,
    /// A request form the proxy does not handle (501 `NR`).
    NotImplemented,
    /// An AuthorizationPolicy denied it (403 `RBAC`).
    Denied,
    /// The request itself is malformed or not acceptable as sent: a path
    /// that cannot be normalized, a request body that broke HTTP framing
    /// (400 `DPE`).
    BadRequest,
    /// An `Upgrade` (or `CONNECT`) the settings do not allow (403, no flag,
    /// as Envoy answers an upgrade it has no config for).
    UpgradeRefused,
    /// The client went away before its request body ended (400 `DC`): the
    /// client's doing, not the upstream's.
    ClientAborted,
}

impl ErrorKind {
    pub fn status(self) -> StatusCode {
        match self {
            ErrorKind::NoRoute => StatusCode::NOT_FOUND,
            ErrorKind::NotImplemented => StatusCode::NOT_IMPLEMENTED,
            ErrorKind::NoHealthyUpstream | ErrorKind::Overflow => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::Timeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorKind::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ErrorKind::Denied | ErrorKind::UpgradeRefused => StatusCode::FORBIDDEN,
            ErrorKind::BadRequest | ErrorKind::ClientAborted => StatusCode::BAD_REQUEST,
            ErrorKind::ConnectFailure
            | ErrorKind::RefusedStream
            | ErrorKind::Reset
            | ErrorKind::ProtocolError => StatusCode::BAD_GATEWAY,
        }
    }

    /// A failure of the endpoint itself (what outlier detection and the
    /// balancer hold against it), as opposed to a refusal by the proxy.
    pub fn is_endpoint_failure(self) -> bool {
        matches!(
            self,
            ErrorKind::ConnectFailure
                | ErrorKind::RefusedStream
                | ErrorKind::Reset
                | ErrorKind::ProtocolError
                | ErrorKind::Timeout
        )
    }

    /// The client's fault: it says nothing about the endpoint (no outlier
    /// outcome, no latency sample, no retry).
    pub fn is_client_fault(self) -> bool {
        matches!(self, ErrorKind::ClientAborted | ErrorKind::BadRequest)
    }

    /// The request provably never reached the upstream application, so even
    /// a non-idempotent request may be sent again.
    pub fn never_sent(self) -> bool {
        matches!(self, ErrorKind::ConnectFailure | ErrorKind::RefusedStream)
    }
}
