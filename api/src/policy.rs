//! Traffic policy on the wire: HTTP routes (Istio `VirtualService.http[]`),
//! subsets and traffic policy (Istio `DestinationRule`), and local rate
//! limits. These objects keep Istio's field names and spelling (camelCase),
//! so a route reads the same in a snapshot as in a manifest.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::Duration;

/// One HTTP route of a service: requests that match go to its destinations.
/// A service's routes are tried in order; the first match wins.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRoute {
    /// Shown in the `route` metric label and the access log; `route-<index>`
    /// when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// ORed match blocks; each block ANDs its conditions. No blocks: every
    /// request matches.
    #[serde(rename = "match", default, skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<HttpMatch>,
    /// Weighted destinations. Empty: the routed service itself.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub route: Vec<RouteDestination>,
    /// Covers every attempt and the back-off between them, up to the response
    /// head. `0s` or absent: no route timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// Absent: the default policy (2 retries on connect-failure,
    /// refused-stream, unavailable, cancelled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<Retries>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<Fault>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<Rewrite>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<Headers>,
    /// A token bucket shared by every request this route matches (on this proxy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_rate_limit: Option<TokenBucket>,
    /// The proxy answers the request itself (Istio's `directResponse`);
    /// such a route has no destinations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct_response: Option<DirectResponse>,
}

/// Istio's `HTTPDirectResponse`: a fixed answer instead of forwarding.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DirectResponse {
    /// The status answered (200-599).
    pub status: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<DirectBody>,
}

/// The body of a direct response: text (`string`; Istio's `bytes` form is
/// not supported).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DirectBody {
    pub string: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<StringMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<StringMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<StringMatch>,
    /// Header name (any case) → match. An empty match (`{}`) only requires
    /// the header to be present, as in Istio.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, StringMatch>,
    /// Istio's `ignoreUriCase`: `uri.exact` and `uri.prefix` match whatever
    /// the ASCII case (a `uri.regex` is unaffected, as in Envoy).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ignore_uri_case: bool,
    /// Istio's `gateways` of a match block: only `mesh` (every sidecar, the
    /// one gateway this mesh has) is accepted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<String>,
}

/// Istio's `StringMatch`: one of `exact`, `prefix`, `regex` (RE2 syntax,
/// matched against the whole value).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct StringMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RouteDestination {
    pub destination: Destination,
    /// Relative weight. Absent counts as 100 when it is the only destination
    /// and as 0 otherwise, so a split names every weight it means.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    /// Header changes for requests sent to (and responses from) this destination.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<Headers>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Destination {
    /// `name` (a service in the routed service's namespace) or `name.namespace`.
    pub host: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subset: Option<String>,
    /// Absent: the port the client dialed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<PortSelector>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct PortSelector {
    pub number: u16,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Retries {
    /// Retries after the first try (Istio's meaning); 0 turns retries off.
    pub attempts: u32,
    /// Deadline of each try; absent: only the route timeout applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<Duration>,
    /// Comma-separated conditions (see [`RetryOn`]). Absent: the default set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_on: Option<String>,
    /// Outrigger's own field: also retry POST, PATCH and other non-idempotent
    /// requests after the upstream may have seen them. Off by default: such a
    /// request is retried only when it provably never reached the upstream.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub retry_non_idempotent: bool,
}

/// The default `retryOn` (Istio's defaults, minus status codes).
pub const DEFAULT_RETRY_ON: &str = "connect-failure,refused-stream,unavailable,cancelled";
/// The default number of retries.
pub const DEFAULT_RETRY_ATTEMPTS: u32 = 2;

/// One condition of `retryOn`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RetryOn {
    /// Any 5xx response, and a reset or connect failure.
    Http5xx,
    /// 502, 503, 504, and a reset or connect failure.
    GatewayError,
    /// The upstream closed or reset the connection or stream before answering.
    Reset,
    ConnectFailure,
    /// HTTP/2 `REFUSED_STREAM`: the upstream did not process the request.
    RefusedStream,
    /// 409.
    Retriable4xx,
    /// An explicit HTTP status.
    Status(u16),
    /// A gRPC status (in response headers: trailers-only responses).
    Grpc(GrpcCode),
}

/// The gRPC codes `retryOn` accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GrpcCode {
    Cancelled = 1,
    DeadlineExceeded = 4,
    ResourceExhausted = 8,
    Internal = 13,
    Unavailable = 14,
}

impl RetryOn {
    /// Parses a comma-separated `retryOn` value; the error names the first
    /// unknown condition.
    pub fn parse_list(s: &str) -> Result<Vec<RetryOn>, String> {
        s.split(',')
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(str::parse)
            .collect()
    }
}

impl FromStr for RetryOn {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "5xx" => RetryOn::Http5xx,
            "gateway-error" => RetryOn::GatewayError,
            "reset" => RetryOn::Reset,
            "connect-failure" => RetryOn::ConnectFailure,
            "refused-stream" => RetryOn::RefusedStream,
            "retriable-4xx" => RetryOn::Retriable4xx,
            "cancelled" => RetryOn::Grpc(GrpcCode::Cancelled),
            "deadline-exceeded" => RetryOn::Grpc(GrpcCode::DeadlineExceeded),
            "internal" => RetryOn::Grpc(GrpcCode::Internal),
            "resource-exhausted" => RetryOn::Grpc(GrpcCode::ResourceExhausted),
            "unavailable" => RetryOn::Grpc(GrpcCode::Unavailable),
            other => match other.parse::<u16>() {
                Ok(code) if (100..=599).contains(&code) => RetryOn::Status(code),
                _ => {
                    return Err(format!(
                        "unknown retry condition {other:?} (expected 5xx, gateway-error, reset, \
                         connect-failure, refused-stream, retriable-4xx, cancelled, \
                         deadline-exceeded, internal, resource-exhausted, unavailable, \
                         or an HTTP status code)"
                    ))
                }
            },
        })
    }
}

impl fmt::Display for RetryOn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RetryOn::Http5xx => f.write_str("5xx"),
            RetryOn::GatewayError => f.write_str("gateway-error"),
            RetryOn::Reset => f.write_str("reset"),
            RetryOn::ConnectFailure => f.write_str("connect-failure"),
            RetryOn::RefusedStream => f.write_str("refused-stream"),
            RetryOn::Retriable4xx => f.write_str("retriable-4xx"),
            RetryOn::Status(c) => write!(f, "{c}"),
            RetryOn::Grpc(GrpcCode::Cancelled) => f.write_str("cancelled"),
            RetryOn::Grpc(GrpcCode::DeadlineExceeded) => f.write_str("deadline-exceeded"),
            RetryOn::Grpc(GrpcCode::Internal) => f.write_str("internal"),
            RetryOn::Grpc(GrpcCode::ResourceExhausted) => f.write_str("resource-exhausted"),
            RetryOn::Grpc(GrpcCode::Unavailable) => f.write_str("unavailable"),
        }
    }
}

/// Istio's `HTTPFaultInjection`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Fault {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<FaultDelay>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<FaultAbort>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FaultDelay {
    pub fixed_delay: Duration,
    /// Share of requests delayed. Absent: `percent`, else none (Istio's rule).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentage: Option<Percent>,
    /// Istio's deprecated integer form of `percentage` (0..=100), used only
    /// when `percentage` is absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<u32>,
}

impl FaultDelay {
    /// The share of requests delayed, in percent: `percentage`, else the
    /// integer `percent`, else none (Istio injects nothing without either).
    pub fn share(&self) -> f64 {
        match (self.percentage, self.percent) {
            (Some(p), _) => p.value,
            (None, Some(p)) => f64::from(p),
            (None, None) => 0.0,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FaultAbort {
    /// The status answered (one of `httpStatus`, `grpcStatus`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
    /// A gRPC code name (`UNAVAILABLE`) answered as a trailers-only response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_status: Option<String>,
    /// Share of requests aborted; absent: none (Istio's rule). Istio removed
    /// the integer `percent` of an abort (1.5), so it is refused here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentage: Option<Percent>,
}

impl FaultAbort {
    /// The share of requests aborted, in percent (absent: none).
    pub fn share(&self) -> f64 {
        self.percentage.map_or(0.0, |p| p.value)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Percent {
    /// 0.0 ..= 100.0
    pub value: f64,
}

/// The gRPC status names Istio accepts in `abort.grpcStatus`, by code.
pub const GRPC_CODE_NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// Istio's `HTTPRewrite`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Rewrite {
    /// Replaces the matched prefix when the route matched on `uri.prefix`,
    /// otherwise the whole path. The query string is kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
}

/// Istio's `Headers`: operations on request and response headers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Headers {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<HeaderOperations>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<HeaderOperations>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct HeaderOperations {
    /// Replace the header's values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub set: BTreeMap<String, String>,
    /// Append a value.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub add: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

/// Istio's DestinationRule subset: endpoints whose labels include all of these.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Subset {
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// Istio's DestinationRule `trafficPolicy`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TrafficPolicy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancer>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_pool: Option<ConnectionPool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    /// TLS to the service's endpoints (Istio's `ClientTLSSettings`, `mode`
    /// only): `ISTIO_MUTUAL` is the mesh's own mutual TLS, which meshed
    /// endpoints get anyway; `DISABLE` sends plaintext even to meshed
    /// endpoints (their proxies then need PERMISSIVE). `SIMPLE` and `MUTUAL`
    /// (origination with your own certificates) are not supported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ClientTls>,
}

impl TrafficPolicy {
    /// Whether `tls.mode` is `DISABLE`: plaintext to every endpoint.
    pub fn tls_disabled(&self) -> bool {
        self.tls
            .as_ref()
            .is_some_and(|t| t.mode == TlsMode::Disable)
    }
}

/// Istio's `ClientTLSSettings`: the mode alone. The certificate fields of
/// `SIMPLE` and `MUTUAL` are refused by name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ClientTls {
    pub mode: TlsMode,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TlsMode {
    /// Plaintext to every endpoint, meshed ones included.
    Disable,
    /// TLS origination with the CA's certificates: not supported.
    Simple,
    /// Mutual TLS with your own client certificate: not supported.
    Mutual,
    /// The mesh's mutual TLS with the proxies' SPIFFE certificates (what
    /// meshed endpoints get without any `tls`).
    IstioMutual,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LoadBalancer {
    /// Absent or `UNSPECIFIED`: power of two choices over peak-EWMA latency.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub simple: Option<SimpleLb>,
    /// Slow start: an endpoint that joins an existing service ramps from 10 %
    /// to its full share of requests over this time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup_duration_secs: Option<Duration>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SimpleLb {
    /// Power of two choices over peak-EWMA latency (the default).
    #[default]
    Unspecified,
    RoundRobin,
    Random,
    /// Power of two choices over outstanding requests.
    LeastRequest,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ConnectionPool {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpPool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpPool>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TcpPool {
    /// HTTP/1 requests in flight to this service at once (each holds its own
    /// upstream connection). HTTP/2 multiplexes on one connection per
    /// endpoint and is bounded by `http2MaxRequests` instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    /// Deadline for connecting to an endpoint (HTTP and opaque TCP);
    /// absent: the proxy's `limits.connect_timeout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<Duration>,
    /// An opaque TCP connection with no byte either way for this long is
    /// closed; also the idle timeout of HTTP connections when
    /// `http.idleTimeout` is absent (Istio). `0s`: never. Absent: the
    /// proxy's `limits.tcp_idle_timeout` (1 h).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<Duration>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpPool {
    /// HTTP/1 requests that may wait for a connection once `maxConnections`
    /// are busy; past it a request is answered 503 at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http1_max_pending_requests: Option<u32>,
    /// Requests in flight to the service at once (any protocol).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http2_max_requests: Option<u32>,
    /// Requests sent on one upstream connection before it is retired (HTTP/1
    /// and HTTP/2); `1` turns keep-alive off; `0` or absent: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests_per_connection: Option<u32>,
    /// Retries outstanding to the service's endpoints at once, over all
    /// requests (Envoy's `max_retries` circuit breaker): a retry past it is
    /// not made. Applies on top of the retry budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
    /// A pooled upstream connection with no new request for this long is
    /// closed (HTTP/1 and HTTP/2); `0s`: never. Absent: the proxy's
    /// `limits.idle_timeout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<Duration>,
}

/// Istio's `OutlierDetection`, per endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct OutlierDetection {
    /// Consecutive 5xx answers (and connect failures and resets) that eject
    /// an endpoint; 0 turns the check off.
    #[serde(rename = "consecutive5xxErrors")]
    pub consecutive_5xx_errors: u32,
    /// Consecutive 502/503/504 answers (and connect failures and resets)
    /// that eject an endpoint; 0 turns the check off.
    pub consecutive_gateway_errors: u32,
    /// How often an ejected-and-recovered endpoint's ejection multiplier
    /// decays by one, while it stays healthy.
    pub interval: Duration,
    /// An ejection lasts this × the number of times the endpoint was ejected.
    pub base_ejection_time: Duration,
    /// Most endpoints of the service ejected at once, in percent (at least one
    /// endpoint may always be ejected when this is above 0).
    pub max_ejection_percent: u32,
}

impl Default for OutlierDetection {
    fn default() -> Self {
        Self {
            consecutive_5xx_errors: 5,
            consecutive_gateway_errors: 0,
            interval: Duration::from_secs(10),
            base_ejection_time: Duration::from_secs(30),
            max_ejection_percent: 10,
        }
    }
}

/// A local token bucket (Envoy's `token_bucket`): holds up to `maxTokens`,
/// gains `tokensPerFill` every `fillInterval`; a request takes one token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TokenBucket {
    pub max_tokens: u32,
    #[serde(default = "one")]
    pub tokens_per_fill: u32,
    pub fill_interval: Duration,
}

fn one() -> u32 {
    1
}

/// A rate limit on an inbound listener, for one app port or (without `port`)
/// for every port that has no limit of its own.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct PortRateLimit {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    pub token_bucket: TokenBucket,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_conditions_parse_and_print_back() {
        let all = "5xx,gateway-error,reset,connect-failure,refused-stream,retriable-4xx,503,\
                   cancelled,deadline-exceeded,internal,resource-exhausted,unavailable";
        let parsed = RetryOn::parse_list(all).unwrap();
        assert_eq!(parsed.len(), 12);
        assert_eq!(parsed[6], RetryOn::Status(503));
        let printed: Vec<String> = parsed.iter().map(ToString::to_string).collect();
        assert_eq!(printed.join(","), all);
        assert_eq!(
            RetryOn::parse_list(" 5xx , reset ,").unwrap(),
            vec![RetryOn::Http5xx, RetryOn::Reset]
        );
    }

    #[test]
    fn unknown_retry_conditions_are_named() {
        let err = RetryOn::parse_list("5xx,retriable-headers").unwrap_err();
        assert!(err.starts_with("unknown retry condition \"retriable-headers\""));
        assert!(RetryOn::parse_list("600").is_err());
        assert!(RetryOn::parse_list("99").is_err());
    }

    #[test]
    fn an_istio_route_reads_as_is() {
        let r: HttpRoute = serde_saphyr::from_str(
            r#"
name: reviews-v2
match:
  - headers: { end-user: { exact: jason } }
    uri: { prefix: /reviews }
route:
  - destination: { host: reviews, subset: v2, port: { number: 9080 } }
    weight: 90
  - destination: { host: reviews.shop, subset: v3 }
    weight: 10
timeout: 10s
retries: { attempts: 3, perTryTimeout: 2s, retryOn: "gateway-error,connect-failure" }
fault:
  delay: { fixedDelay: 5s, percentage: { value: 0.1 } }
  abort: { httpStatus: 400, percentage: { value: 10 } }
rewrite: { uri: /v1/reviews }
headers:
  request: { set: { x-a: "1" }, add: { x-b: "2" }, remove: [x-c] }
"#,
        )
        .unwrap();
        assert_eq!(
            r.matches[0].headers["end-user"].exact.as_deref(),
            Some("jason")
        );
        assert_eq!(
            r.route[0].destination.port,
            Some(PortSelector { number: 9080 })
        );
        assert_eq!(r.route[1].weight, Some(10));
        let retries = r.retries.unwrap();
        assert_eq!(retries.per_try_timeout, Some(Duration::from_secs(2)));
        assert_eq!(r.fault.unwrap().abort.unwrap().http_status, Some(400));
    }

    #[test]
    fn unsupported_istio_fields_are_refused_by_name() {
        let err = serde_saphyr::from_str::<HttpRoute>(
            "retries: { attempts: 1, retryRemoteLocalities: true }",
        )
        .unwrap_err();
        assert!(err.to_string().contains("retryRemoteLocalities"), "{err}");
        let err = serde_saphyr::from_str::<TrafficPolicy>(
            "outlierDetection: { splitExternalLocalOriginErrors: true }",
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("splitExternalLocalOriginErrors"),
            "{err}"
        );
        let err = serde_saphyr::from_str::<TrafficPolicy>("loadBalancer: { simple: PASSTHROUGH }")
            .unwrap_err();
        assert!(err.to_string().contains("PASSTHROUGH"), "{err}");
    }

    #[test]
    fn the_fields_of_istios_task_manifests_read_as_is() {
        let tp: TrafficPolicy = serde_saphyr::from_str(
            r#"
connectionPool:
  tcp: { maxConnections: 1, connectTimeout: 250ms }
  http: { http1MaxPendingRequests: 1, maxRequestsPerConnection: 1, maxRetries: 3, idleTimeout: 30s }
tls: { mode: ISTIO_MUTUAL }
"#,
        )
        .unwrap();
        let cp = tp.connection_pool.as_ref().unwrap();
        let tcp = cp.tcp.as_ref().unwrap();
        assert_eq!(tcp.connect_timeout, Some(Duration::from_millis(250)));
        let http = cp.http.as_ref().unwrap();
        assert_eq!(http.max_requests_per_connection, Some(1));
        assert_eq!(http.max_retries, Some(3));
        assert_eq!(http.idle_timeout, Some(Duration::from_secs(30)));
        assert_eq!(tp.tls.as_ref().unwrap().mode, TlsMode::IstioMutual);
        assert!(!tp.tls_disabled());
        let tp: TrafficPolicy = serde_saphyr::from_str("tls: { mode: DISABLE }").unwrap();
        assert!(tp.tls_disabled());

        let m: HttpMatch = serde_saphyr::from_str(
            "{ uri: { prefix: /Reviews }, ignoreUriCase: true, gateways: [mesh] }",
        )
        .unwrap();
        assert!(m.ignore_uri_case);
        assert_eq!(m.gateways, vec!["mesh".to_string()]);
    }

    #[test]
    fn fault_shares_follow_istio_percentage_then_percent_then_none() {
        let delay = |yaml: &str| serde_saphyr::from_str::<FaultDelay>(yaml).unwrap().share();
        assert_eq!(delay("{ fixedDelay: 7s, percent: 100 }"), 100.0);
        assert_eq!(
            delay("{ fixedDelay: 7s, percent: 100, percentage: { value: 0.5 } }"),
            0.5,
            "percentage wins over the deprecated percent"
        );
        assert_eq!(
            delay("{ fixedDelay: 7s }"),
            0.0,
            "neither: no request delayed"
        );
        let abort = |yaml: &str| serde_saphyr::from_str::<FaultAbort>(yaml).unwrap().share();
        assert_eq!(
            abort("{ httpStatus: 500, percentage: { value: 100.0 } }"),
            100.0
        );
        assert_eq!(
            abort("{ httpStatus: 500 }"),
            0.0,
            "absent: no request aborted"
        );
        // Istio removed `percent` from aborts: refused by name.
        let err =
            serde_saphyr::from_str::<FaultAbort>("{ httpStatus: 500, percent: 100 }").unwrap_err();
        assert!(err.to_string().contains("percent"), "{err}");
    }

    #[test]
    fn tls_origination_fields_are_refused_by_name() {
        let err = serde_saphyr::from_str::<TrafficPolicy>(
            "tls: { mode: SIMPLE, credentialName: my-secret }",
        )
        .unwrap_err();
        assert!(err.to_string().contains("credentialName"), "{err}");
        // Istio's unset mode is DISABLE: a mode is required here, so that
        // `tls: {}` never turns the mesh's TLS off by accident.
        let err = serde_saphyr::from_str::<TrafficPolicy>("tls: {}").unwrap_err();
        assert!(err.to_string().contains("mode"), "{err}");
    }

    #[test]
    fn outlier_detection_defaults_follow_istio() {
        let o: OutlierDetection = serde_saphyr::from_str("consecutiveGatewayErrors: 3").unwrap();
        assert_eq!(o.consecutive_5xx_errors, 5);
        assert_eq!(o.consecutive_gateway_errors, 3);
        assert_eq!(o.base_ejection_time, Duration::from_secs(30));
        assert_eq!(o.max_ejection_percent, 10);
    }
}
