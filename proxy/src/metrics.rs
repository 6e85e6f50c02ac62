//! The proxy's Prometheus metrics (`prometheus-client`), served on the admin
//! port at `/metrics`. Every label value is bounded: names come from the
//! snapshot, codes from small enumerations; no paths, no per-request values.

use std::collections::BTreeMap;
use std::sync::Arc;

use prometheus_client::encoding::{
    EncodeLabel, EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelSetEncoder,
    LabelValueEncoder, MetricEncoder,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Metric, Registry};

use crate::detect::Protocol;
pub use outrigger_api::MetricsFormat;
pub use outrigger_proxy_policy::workload::{unknown, Name, Workload};
use prometheus_client::metrics::{MetricType, TypedMetric};

pub mod istio;
use istio::{BytesSide, View};

/// How the request and TCP families are named and labelled
/// (`--metrics-format`), and what Istio's labels need to know.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetricsOptions {
    pub format: MetricsFormat,
    /// The cluster DNS suffix: Istio's `destination_service` is
    /// `name.namespace.svc.<cluster_domain>`.
    pub cluster_domain: String,
    /// Istio's `source_cluster` and `destination_cluster` of known workloads.
    pub cluster_name: String,
    /// This proxy's own pod labels (its canonical service and revision,
    /// app and version), as the injector hands them over.
    pub pod_labels: BTreeMap<String, String>,
}

impl Default for MetricsOptions {
    fn default() -> Self {
        Self {
            format: MetricsFormat::Outrigger,
            cluster_domain: "cluster.local".into(),
            cluster_name: "Kubernetes".into(),
            pod_labels: BTreeMap::new(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    Inbound,
    Outbound,
}

impl From<outrigger_api::Direction> for Direction {
    fn from(d: outrigger_api::Direction) -> Self {
        match d {
            outrigger_api::Direction::Inbound => Direction::Inbound,
            outrigger_api::Direction::Outbound => Direction::Outbound,
        }
    }
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

impl EncodeLabelValue for Direction {
    fn encode(&self, e: &mut LabelValueEncoder) -> std::fmt::Result {
        std::fmt::Write::write_str(e, self.as_str())
    }
}

impl EncodeLabelValue for Protocol {
    fn encode(&self, e: &mut LabelValueEncoder) -> std::fmt::Result {
        std::fmt::Write::write_str(e, self.as_str())
    }
}

/// `connection_security_policy`: `mutual_tls` once the identity work lands;
/// plaintext hops say `none`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SecurityPolicy {
    None,
    MutualTls,
}

impl EncodeLabelValue for SecurityPolicy {
    fn encode(&self, e: &mut LabelValueEncoder) -> std::fmt::Result {
        std::fmt::Write::write_str(
            e,
            match self {
                SecurityPolicy::None => "none",
                SecurityPolicy::MutualTls => "mutual_tls",
            },
        )
    }
}

/// Why the proxy answered a request itself, as Envoy's short response flags
/// (familiar from Istio access logs); `-` when the upstream answered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ResponseFlag {
    #[default]
    None,
    /// No endpoint to send to (`UH`).
    NoHealthyUpstream,
    /// Connecting to the upstream failed (`UF`).
    UpstreamConnectFailure,
    /// The upstream closed or reset before a complete response (`UC`).
    UpstreamConnectionTermination,
    /// The upstream broke the protocol (`UPE`).
    UpstreamProtocolError,
    /// The connection has nowhere to go (`NR`).
    NoRoute,
    /// The client went away before the response ended (`DC`).
    DownstreamConnectionTermination,
    /// The client's request broke HTTP or a rule the proxy holds requests
    /// to (a malformed head or body, a path that cannot be normalized):
    /// answered 400, 414 or 431 (`DPE`, Envoy's flag).
    DownstreamProtocolError,
    /// The service's connection-pool limits were full (`UO`).
    UpstreamOverflow,
    /// The route timeout or the per-try timeout passed (`UT`).
    UpstreamRequestTimeout,
    /// The upstream failed in a retryable way and no retry was left: the
    /// attempts ran out, or the retry budget was spent (`URX`).
    UpstreamRetryLimitExceeded,
    /// A local rate limit refused the request (`RL`).
    RateLimited,
    /// A fault-injection delay was applied (`DI`).
    DelayInjected,
    /// A fault-injection abort answered the request (`FI`).
    FaultInjected,
    /// An AuthorizationPolicy denied the request (`RBAC`, Envoy's flag).
    Denied,
}

impl ResponseFlag {
    pub fn as_str(self) -> &'static str {
        match self {
            ResponseFlag::None => "-",
            ResponseFlag::NoHealthyUpstream => "UH",
            ResponseFlag::UpstreamConnectFailure => "UF",
            ResponseFlag::UpstreamConnectionTermination => "UC",
            ResponseFlag::UpstreamProtocolError => "UPE",
            ResponseFlag::NoRoute => "NR",
            ResponseFlag::Denied => "RBAC",
            ResponseFlag::DownstreamConnectionTermination => "DC",
            ResponseFlag::DownstreamProtocolError => "DPE",
            ResponseFlag::UpstreamOverflow => "UO",
            ResponseFlag::UpstreamRequestTimeout => "UT",
            ResponseFlag::UpstreamRetryLimitExceeded => "URX",
            ResponseFlag::RateLimited => "RL",
            ResponseFlag::DelayInjected => "DI",
            ResponseFlag::FaultInjected => "FI",
        }
    }
}

impl EncodeLabelValue for ResponseFlag {
    fn encode(&self, e: &mut LabelValueEncoder) -> std::fmt::Result {
        std::fmt::Write::write_str(e, self.as_str())
    }
}

/// gRPC status code 0..=16, or empty for non-gRPC responses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct GrpcStatus(pub Option<u8>);

/// What [`GrpcStatus::PENDING`] holds: no gRPC code.
const PENDING_CODE: u8 = u8::MAX;

impl GrpcStatus {
    /// A gRPC request (`content-type: application/grpc…`) whose response
    /// has said no status yet; [`GrpcStatus::resolved`] when it ends, so
    /// never part of a series' key.
    pub const PENDING: GrpcStatus = GrpcStatus(Some(PENDING_CODE));

    /// The status a request ends with: the one its response said, or, for
    /// a gRPC request whose response said none (the proxy's own answer, a
    /// response broken off), its HTTP status `http` mapped (as Envoy and
    /// Istio do); none for other requests.
    pub fn resolved(self, http: u16) -> Self {
        if self == Self::PENDING {
            GrpcStatus(Some(Self::from_http(http)))
        } else {
            self
        }
    }

    /// [`GrpcStatus::PENDING`] for a gRPC request, else none.
    pub fn of_request(headers: &http::HeaderMap) -> Self {
        let grpc = headers
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        if grpc {
            Self::PENDING
        } else {
            GrpcStatus(None)
        }
    }

    /// The status the response said (0..=16), if any.
    pub fn code(self) -> Option<u8> {
        self.0.filter(|c| *c != PENDING_CODE)
    }

    /// Whether the request or its response was gRPC.
    pub fn is_grpc(self) -> bool {
        self.0.is_some()
    }

    /// The status of a gRPC exchange that ended with the HTTP status `http`
    /// and no `grpc-status`: gRPC's mapping of HTTP statuses (UNKNOWN for
    /// any other, a 200 included).
    pub fn from_http(http: u16) -> u8 {
        match http {
            400 => 13,
            401 => 16,
            403 => 7,
            404 => 12,
            429 | 502 | 503 | 504 => 14,
            _ => 2,
        }
    }

    /// Parses a `grpc-status` value; out-of-range codes become 2 (UNKNOWN), as
    /// gRPC clients treat them.
    pub fn parse(v: &[u8]) -> Self {
        let code = std::str::from_utf8(v)
            .ok()
            .and_then(|s| s.trim().parse::<u8>().ok())
            .filter(|c| *c <= 16)
            .unwrap_or(2);
        GrpcStatus(Some(code))
    }
}

impl EncodeLabelValue for GrpcStatus {
    fn encode(&self, e: &mut LabelValueEncoder) -> std::fmt::Result {
        match self.code() {
            Some(c) => c.encode(e),
            None => "".encode(e),
        }
    }
}

/// Who talks to whom, over what: shared by the request and byte families.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TrafficLabels {
    pub direction: Direction,
    pub source_workload: Name,
    pub source_namespace: Name,
    pub source_principal: Name,
    pub destination_workload: Name,
    pub destination_namespace: Name,
    pub destination_principal: Name,
    pub destination_service: Name,
    pub connection_security_policy: SecurityPolicy,
}

impl TrafficLabels {
    /// Labels for a hop between this proxy's own workload and a peer: on
    /// outbound traffic the proxy's workload is the source, on inbound the
    /// destination.
    pub fn new(direction: Direction, local: &Workload, peer: &Workload, service: Name) -> Self {
        let (src, dst) = match direction {
            Direction::Outbound => (local, peer),
            Direction::Inbound => (peer, local),
        };
        Self {
            direction,
            source_workload: src.workload.clone(),
            source_namespace: src.namespace.clone(),
            source_principal: src.principal.clone(),
            destination_workload: dst.workload.clone(),
            destination_namespace: dst.namespace.clone(),
            destination_principal: dst.principal.clone(),
            destination_service: service,
            connection_security_policy: SecurityPolicy::None,
        }
    }

    /// Principals are what mutual TLS proved: on a hop without it, neither
    /// side's identity was shown to anyone, so both are `unknown` (a proxy
    /// without a certificate yet must not claim its configured identity).
    pub fn proven(mut self) -> Self {
        if self.connection_security_policy != SecurityPolicy::MutualTls {
            self.source_principal = unknown();
            self.destination_principal = unknown();
        }
        self
    }
}

/// One label of the `outrigger_*` families.
fn pair(e: &mut LabelSetEncoder, key: &str, value: impl EncodeLabelValue) -> std::fmt::Result {
    (key, value).encode(e.encode_label())
}

impl TrafficLabels {
    fn encode_outrigger(&self, e: &mut LabelSetEncoder) -> std::fmt::Result {
        pair(e, "direction", self.direction)?;
        pair(e, "source_workload", &*self.source_workload)?;
        pair(e, "source_namespace", &*self.source_namespace)?;
        pair(e, "source_principal", &*self.source_principal)?;
        pair(e, "destination_workload", &*self.destination_workload)?;
        pair(e, "destination_namespace", &*self.destination_namespace)?;
        pair(e, "destination_principal", &*self.destination_principal)?;
        pair(e, "destination_service", &*self.destination_service)?;
        pair(
            e,
            "connection_security_policy",
            self.connection_security_policy,
        )
    }
}

/// In an Istio family (see [`istio`]) Istio's labels, else Outrigger's.
impl EncodeLabelSet for TrafficLabels {
    fn encode(&self, e: &mut LabelSetEncoder) -> std::fmt::Result {
        match istio::context() {
            Some(ctx) => istio::encode_traffic(self, &ctx, "http", e),
            None => self.encode_outrigger(e),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RequestLabels {
    pub traffic: TrafficLabels,
    pub response_code: u16,
    pub grpc_response_status: GrpcStatus,
    pub response_flags: ResponseFlag,
}

impl EncodeLabelSet for RequestLabels {
    fn encode(&self, e: &mut LabelSetEncoder) -> std::fmt::Result {
        match istio::context() {
            Some(ctx) => istio::encode_request(self, &ctx, e),
            None => {
                self.traffic.encode_outrigger(e)?;
                pair(e, "response_code", self.response_code)?;
                pair(e, "grpc_response_status", self.grpc_response_status)?;
                pair(e, "response_flags", self.response_flags)
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TcpLabels {
    pub traffic: TrafficLabels,
    pub protocol: Protocol,
}

impl EncodeLabelSet for TcpLabels {
    fn encode(&self, e: &mut LabelSetEncoder) -> std::fmt::Result {
        match istio::context() {
            Some(ctx) => istio::encode_tcp(&self.traffic, &ctx, e),
            None => {
                self.traffic.encode_outrigger(e)?;
                pair(e, "protocol", self.protocol)
            }
        }
    }
}

/// Istio's per-request body sizes, by the request's labels.
pub type SizeFamily = Family<RequestLabels, ByteMeters, fn() -> ByteMeters>;

/// The bytes of one hop's requests and responses: counters (`outrigger`)
/// or per-request size histograms (`istio`). One series per hop serves
/// both sides, so a request looks its byte series up once.
#[derive(Clone, Debug)]
pub struct ByteMeters(Arc<ByteMetersInner>);

#[derive(Debug)]
struct ByteMetersInner {
    request: Counter,
    response: Counter,
    /// `Some` in Istio's format: per-request sizes.
    sizes: Option<(Histogram, Histogram)>,
}

impl ByteMeters {
    fn totals() -> Self {
        Self(Arc::new(ByteMetersInner {
            request: Counter::default(),
            response: Counter::default(),
            sizes: None,
        }))
    }

    fn sizes() -> Self {
        Self(Arc::new(ByteMetersInner {
            request: Counter::default(),
            response: Counter::default(),
            sizes: Some((
                Histogram::new(istio::BUCKETS),
                Histogram::new(istio::BUCKETS),
            )),
        }))
    }

    /// What the response body's bytes are counted into as they pass.
    pub fn response(&self) -> Counter {
        self.0.response.clone()
    }

    /// Records a finished request that read `request` body bytes from the
    /// client and sent `response` body bytes back (the latter already
    /// counted into [`ByteMeters::response`] as they passed).
    pub fn finish(&self, request: u64, response: u64) {
        match &self.0.sizes {
            None => {
                self.0.request.inc_by(request);
            }
            Some((req, rsp)) => {
                req.observe(request as f64);
                rsp.observe(response as f64);
            }
        }
    }
}

impl TypedMetric for ByteMeters {}

impl EncodeMetric for ByteMeters {
    fn encode(&self, encoder: MetricEncoder) -> std::fmt::Result {
        let side = istio::bytes_side();
        match (&self.0.sizes, side) {
            (None, BytesSide::Request) => self.0.request.encode(encoder),
            (None, BytesSide::Response) => self.0.response.encode(encoder),
            (Some((req, _)), BytesSide::Request) => req.encode(encoder),
            (Some((_, rsp)), BytesSide::Response) => rsp.encode(encoder),
        }
    }

    fn metric_type(&self) -> MetricType {
        if self.0.sizes.is_some() {
            MetricType::Histogram
        } else {
            MetricType::Counter
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct DirectionLabel {
    pub direction: Direction,
}

/// Why a config applied after a connection was accepted closed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Revocation {
    /// Not mutual TLS, and its port is STRICT now.
    PlaintextOnStrict,
    /// Opaque, and an AuthorizationPolicy denies it now.
    Denied,
}

impl EncodeLabelValue for Revocation {
    fn encode(&self, e: &mut LabelValueEncoder) -> std::fmt::Result {
        std::fmt::Write::write_str(
            e,
            match self {
                Revocation::PlaintextOnStrict => "plaintext_on_strict",
                Revocation::Denied => "denied",
            },
        )
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RevokedLabels {
    pub direction: Direction,
    pub reason: Revocation,
}

/// Per-route counts: the routed service and the route's name from the
/// snapshot (or `route-<index>`), so the label stays bounded.
#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RouteLabels {
    pub direction: Direction,
    pub destination_service: Name,
    pub route: Name,
    pub response_code: u16,
    pub response_flags: ResponseFlag,
}

/// Families about one upstream service (retries, ejections, pool).
#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ServiceLabel {
    pub destination_service: Name,
}

/// Latency buckets in seconds: 0.5 ms to 30 s.
const LATENCY_BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0,
    30.0,
];

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// Istio's (Envoy's) buckets, in milliseconds.
fn istio_histogram() -> Histogram {
    Histogram::new(istio::BUCKETS)
}

/// Every metric family of the proxy. Cloning is cheap (handles to shared state).
#[derive(Clone)]
pub struct Metrics {
    pub requests: Family<RequestLabels, Counter>,
    pub request_duration: Family<RequestLabels, Histogram, fn() -> Histogram>,
    /// Request and response body bytes, one series per hop for both
    /// (`outrigger` format).
    pub bytes: Family<TrafficLabels, ByteMeters, fn() -> ByteMeters>,
    /// Istio's format: each request's body sizes, by its request labels.
    pub sizes: Option<SizeFamily>,
    pub tcp_opened: Family<TcpLabels, Counter>,
    pub tcp_closed: Family<TcpLabels, Counter>,
    pub tcp_received_bytes: Family<TcpLabels, Counter>,
    pub tcp_sent_bytes: Family<TcpLabels, Counter>,
    pub tcp_rejected: Family<DirectionLabel, Counter>,
    /// Opaque connections an AuthorizationPolicy refused.
    pub tcp_denied: Family<DirectionLabel, Counter>,
    /// Plaintext connections a STRICT PeerAuthentication refused.
    pub tcp_plaintext_refused: Family<DirectionLabel, Counter>,
    /// Open connections a later config refuses, closed.
    pub tcp_revoked: Family<RevokedLabels, Counter>,
    pub route_requests: Family<RouteLabels, Counter>,
    pub retries: Family<ServiceLabel, Counter>,
    pub retry_successes: Family<ServiceLabel, Counter>,
    pub retry_budget_exhausted: Family<ServiceLabel, Counter>,
    /// Retries not made: the destination's `maxRetries` were outstanding.
    pub retry_overflow: Family<ServiceLabel, Counter>,
    pub ejections: Family<ServiceLabel, Counter>,
    pub ejected: Family<ServiceLabel, Gauge>,
    pub pool_overflow: Family<ServiceLabel, Counter>,
    pub config_applied: Counter,
    pub config_rejected: Counter,
    pub config_last_applied: Gauge,
    pub control_plane_connected: Gauge,
    /// Fields of control-plane messages this proxy does not know, left out.
    pub control_plane_unknown_fields: Family<MessageLabel, Counter>,
    /// When the certificate in use expires (Unix seconds; 0 before the first).
    pub identity_expiry: Gauge,
    /// When the proxy renews the certificate in use (Unix seconds; 0 before
    /// the first; in the past while renewal keeps failing).
    pub identity_renew_at: Gauge,
    /// Certificate requests to the control plane, by result (ok, error).
    pub identity_renewals: Family<ResultLabel, Counter>,
    /// Access-log lines dropped because the writer's queue was full.
    pub access_log_dropped: Counter,
    pub ready: Gauge,
    /// Spans exported and dropped (distributed tracing).
    pub tracing: crate::trace::Counters,
    /// The services of the configuration in force, whose per-service
    /// series [`Metrics::applied`] keeps.
    services: Arc<std::sync::Mutex<std::collections::HashSet<Name>>>,
    registry: Arc<Registry>,
    /// What a request's duration in seconds is multiplied by before it is
    /// observed: 1 (`outrigger`, seconds) or 1000 (`istio`, milliseconds).
    pub duration_scale: f64,
    /// In Istio's format, the context its labels are encoded with.
    istio: Option<Arc<istio::Context>>,
}

/// Which control-plane message: [`CONFIG_UPDATE`] or [`CERTIFY_RESPONSE`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct MessageLabel {
    pub message: &'static str,
}

pub const CONFIG_UPDATE: MessageLabel = MessageLabel { message: "config" };
pub const CERTIFY_RESPONSE: MessageLabel = MessageLabel { message: "certify" };

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

impl Metrics {
    /// Counts the fields a tolerant read of a `message` left out.
    pub fn count_unknown_fields(
        &self,
        message: MessageLabel,
        ignored: &outrigger_api::tolerant::Ignored,
    ) {
        self.control_plane_unknown_fields
            .get_or_create(&message)
            .inc_by(ignored.count as u64);
    }

    pub fn new() -> Self {
        Self::with_options(&MetricsOptions::default())
    }

    /// The families, the request and TCP ones named and labelled in
    /// `opts.format`.
    pub fn with_options(opts: &MetricsOptions) -> Self {
        let mut reg = Registry::default();
        outrigger_runtime::metrics::register_build_and_process(&mut reg);
        let istio = (opts.format == MetricsFormat::Istio).then(|| {
            Arc::new(istio::Context::new(
                &opts.cluster_domain,
                &opts.cluster_name,
                opts.pod_labels.clone(),
            ))
        });
        // Registers a request or TCP family: as it is, or as Istio's.
        let mut family = |names: (&str, &str), help: &str, m: Box<dyn Metric>, bytes| match &istio {
            None => reg.register(
                names.0,
                help,
                View {
                    inner: m,
                    ctx: None,
                    bytes,
                },
            ),
            Some(ctx) => reg.register(
                names.1,
                help,
                View {
                    inner: m,
                    ctx: Some(ctx.clone()),
                    bytes,
                },
            ),
        };
        let requests = Family::<RequestLabels, Counter>::default();
        family(
            ("outrigger_requests", "istio_requests"),
            "HTTP requests handled, counted when the response ends",
            Box::new(requests.clone()),
            None,
        );
        let (buckets, duration_scale): (fn() -> Histogram, f64) = match istio {
            None => (latency_histogram, 1.0),
            Some(_) => (istio_histogram, 1000.0),
        };
        let request_duration =
            Family::<RequestLabels, Histogram, fn() -> Histogram>::new_with_constructor(buckets);
        family(
            (
                "outrigger_request_duration_seconds",
                "istio_request_duration_milliseconds",
            ),
            "Time from receiving the request head to the end of the response",
            Box::new(request_duration.clone()),
            None,
        );
        // Bytes: counters per hop (`outrigger`, looked up at the response
        // head and counted as frames pass), or per-request size histograms
        // with every request label (`istio`, as Istio's have them: looked
        // up once, at the end). One lookup per request either way.
        let bytes = Family::<TrafficLabels, ByteMeters, fn() -> ByteMeters>::new_with_constructor(
            ByteMeters::totals,
        );
        let sizes = istio
            .is_some()
            .then(|| SizeFamily::new_with_constructor(ByteMeters::sizes));
        let (shown, bytes_type): (Box<dyn Fn() -> Box<dyn Metric>>, _) = match &sizes {
            None => {
                let b = bytes.clone();
                (Box::new(move || Box::new(b.clone())), MetricType::Counter)
            }
            Some(s) => {
                let s = s.clone();
                (Box::new(move || Box::new(s.clone())), MetricType::Histogram)
            }
        };
        family(
            ("outrigger_request_bytes", "istio_request_bytes"),
            "HTTP request body bytes received from clients (istio: per request)",
            shown(),
            Some((BytesSide::Request, bytes_type)),
        );
        family(
            ("outrigger_response_bytes", "istio_response_bytes"),
            "HTTP response body bytes sent to clients (istio: per request)",
            shown(),
            Some((BytesSide::Response, bytes_type)),
        );
        let tcp_opened = Family::<TcpLabels, Counter>::default();
        family(
            (
                "outrigger_tcp_connections_opened",
                "istio_tcp_connections_opened",
            ),
            "Client connections accepted (istio: opaque TCP only)",
            Box::new(tcp_opened.clone()),
            None,
        );
        let tcp_closed = Family::<TcpLabels, Counter>::default();
        family(
            (
                "outrigger_tcp_connections_closed",
                "istio_tcp_connections_closed",
            ),
            "Client connections closed (istio: opaque TCP only)",
            Box::new(tcp_closed.clone()),
            None,
        );
        let tcp_received_bytes = Family::<TcpLabels, Counter>::default();
        family(
            ("outrigger_tcp_received_bytes", "istio_tcp_received_bytes"),
            "Bytes received from clients on accepted connections (istio: opaque TCP only)",
            Box::new(tcp_received_bytes.clone()),
            None,
        );
        let tcp_sent_bytes = Family::<TcpLabels, Counter>::default();
        family(
            ("outrigger_tcp_sent_bytes", "istio_tcp_sent_bytes"),
            "Bytes sent to clients on accepted connections (istio: opaque TCP only)",
            Box::new(tcp_sent_bytes.clone()),
            None,
        );
        let tcp_rejected = Family::<DirectionLabel, Counter>::default();
        let tcp_denied = Family::<DirectionLabel, Counter>::default();
        reg.register(
            "outrigger_tcp_denied",
            "Opaque TCP connections refused by an AuthorizationPolicy (closed at once)",
            tcp_denied.clone(),
        );
        let tcp_plaintext_refused = Family::<DirectionLabel, Counter>::default();
        reg.register(
            "outrigger_tcp_plaintext_refused",
            "Connections closed at once because they were not mutual TLS and the port is STRICT",
            tcp_plaintext_refused.clone(),
        );
        let tcp_revoked = Family::<RevokedLabels, Counter>::default();
        reg.register(
            "outrigger_tcp_connections_revoked",
            "Open connections closed because a config applied after they were accepted refuses them (HTTP ones gracefully)",
            tcp_revoked.clone(),
        );
        reg.register(
            "outrigger_tcp_connections_rejected",
            "Connections closed at once because the listener was at limits.max_connections",
            tcp_rejected.clone(),
        );
        let route_requests = Family::<RouteLabels, Counter>::default();
        reg.register(
            "outrigger_route_requests",
            "HTTP requests per route of the service they were sent to",
            route_requests.clone(),
        );
        let retries = Family::<ServiceLabel, Counter>::default();
        reg.register(
            "outrigger_retries",
            "Retry attempts sent (tries after the first)",
            retries.clone(),
        );
        let retry_successes = Family::<ServiceLabel, Counter>::default();
        reg.register(
            "outrigger_retry_successes",
            "Requests that failed at first and succeeded on a retry",
            retry_successes.clone(),
        );
        let retry_budget_exhausted = Family::<ServiceLabel, Counter>::default();
        reg.register(
            "outrigger_retry_budget_exhausted",
            "Retries refused because the service's retry budget was spent",
            retry_budget_exhausted.clone(),
        );
        let retry_overflow = Family::<ServiceLabel, Counter>::default();
        reg.register(
            "outrigger_retry_overflow",
            "Retries not made because the destination's maxRetries retries were outstanding",
            retry_overflow.clone(),
        );
        let ejections = Family::<ServiceLabel, Counter>::default();
        reg.register(
            "outrigger_outlier_ejections",
            "Endpoints ejected by outlier detection (first ejections and failed trials)",
            ejections.clone(),
        );
        let ejected = Family::<ServiceLabel, Gauge>::default();
        reg.register(
            "outrigger_outlier_ejected_endpoints",
            "Endpoints ejected right now",
            ejected.clone(),
        );
        let pool_overflow = Family::<ServiceLabel, Counter>::default();
        reg.register(
            "outrigger_pool_overflow",
            "Requests answered 503 at once because the connection-pool limits were full",
            pool_overflow.clone(),
        );
        let config_applied = Counter::default();
        reg.register(
            "outrigger_config_applied",
            "Configuration snapshots applied",
            config_applied.clone(),
        );
        let config_rejected = Counter::default();
        reg.register(
            "outrigger_config_rejected",
            "Configuration updates refused (invalid); the snapshot in force stayed",
            config_rejected.clone(),
        );
        let control_plane_connected = Gauge::default();
        reg.register(
            "outrigger_control_plane_connected",
            "1 while the config stream from the control plane is open",
            control_plane_connected.clone(),
        );
        let control_plane_unknown_fields = Family::<MessageLabel, Counter>::default();
        reg.register(
            "outrigger_control_plane_unknown_fields",
            "Fields of control-plane messages this proxy does not know, left out (a newer control plane)",
            control_plane_unknown_fields.clone(),
        );
        let identity_expiry = Gauge::default();
        reg.register(
            "outrigger_identity_cert_expiry_timestamp_seconds",
            "When the workload certificate in use expires (0 before the first)",
            identity_expiry.clone(),
        );
        let identity_renew_at = Gauge::default();
        reg.register(
            "outrigger_identity_cert_renew_at_timestamp_seconds",
            "When the proxy renews the workload certificate in use (0 before the first; in the past while renewal fails)",
            identity_renew_at.clone(),
        );
        let identity_renewals = Family::<ResultLabel, Counter>::default();
        reg.register(
            "outrigger_identity_renewals",
            "Certificate requests to the control plane, by result",
            identity_renewals.clone(),
        );
        let config_last_applied = Gauge::default();
        reg.register(
            "outrigger_config_last_applied_timestamp_seconds",
            "Unix time when the snapshot in force was applied",
            config_last_applied.clone(),
        );
        let access_log_dropped = Counter::default();
        reg.register(
            "outrigger_access_log_dropped",
            "Access-log lines dropped because stdout did not keep up (the writer's queue was full)",
            access_log_dropped.clone(),
        );
        let ready = Gauge::default();
        reg.register(
            "outrigger_ready",
            "1 when the proxy has a valid config and is not draining",
            ready.clone(),
        );
        let tracing = crate::trace::Counters::register(&mut reg);
        // Families whose label values are all known now start at zero.
        for direction in [Direction::Inbound, Direction::Outbound] {
            let d = DirectionLabel { direction };
            drop(tcp_rejected.get_or_create(&d));
            drop(tcp_denied.get_or_create(&d));
            drop(tcp_plaintext_refused.get_or_create(&d));
            for reason in [Revocation::PlaintextOnStrict, Revocation::Denied] {
                drop(tcp_revoked.get_or_create(&RevokedLabels { direction, reason }));
            }
        }
        for result in ["ok", "error"] {
            drop(identity_renewals.get_or_create(&ResultLabel { result }));
        }
        for message in [CONFIG_UPDATE, CERTIFY_RESPONSE] {
            drop(control_plane_unknown_fields.get_or_create(&message));
        }
        Self {
            requests,
            request_duration,
            bytes,
            sizes,
            tcp_opened,
            tcp_closed,
            tcp_received_bytes,
            tcp_sent_bytes,
            tcp_rejected,
            tcp_denied,
            tcp_plaintext_refused,
            tcp_revoked,
            route_requests,
            retries,
            retry_successes,
            retry_budget_exhausted,
            retry_overflow,
            ejections,
            ejected,
            pool_overflow,
            config_applied,
            config_rejected,
            config_last_applied,
            control_plane_connected,
            control_plane_unknown_fields,
            identity_expiry,
            identity_renew_at,
            identity_renewals,
            access_log_dropped,
            ready,
            tracing,
            services: Default::default(),
            registry: Arc::new(reg),
            duration_scale,
            istio,
        }
    }

    /// Counts a configuration applied, and gives every per-service family a
    /// series at zero for each of its services, so that each exists before
    /// its first event and Prometheus's `increase()` counts that event.
    pub fn applied(&self, cfg: &outrigger_proxy_policy::config::Config) {
        self.config_applied.inc();
        if let Some(ctx) = &self.istio {
            ctx.learn(cfg);
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        self.config_last_applied.set(now as i64);
        let now: std::collections::HashSet<Name> =
            cfg.services().iter().map(|s| s.label.clone()).collect();
        let mut listed = self.services.lock().unwrap_or_else(|p| p.into_inner());
        let counters = [
            &self.retries,
            &self.retry_successes,
            &self.retry_budget_exhausted,
            &self.retry_overflow,
            &self.ejections,
            &self.pool_overflow,
        ];
        // A service gone from the configuration takes its series along, so
        // they do not pile up as services come and go.
        for gone in listed.difference(&now) {
            let l = ServiceLabel {
                destination_service: gone.clone(),
            };
            for family in counters {
                family.remove(&l);
            }
            self.ejected.remove(&l);
        }
        for svc in &now {
            let l = ServiceLabel {
                destination_service: svc.clone(),
            };
            for family in counters {
                drop(family.get_or_create(&l));
            }
            drop(self.ejected.get_or_create(&l));
        }
        *listed = now;
    }

    /// Whether a connection of `protocol` is counted in the TCP families:
    /// every one in Outrigger's format, opaque ones alone in Istio's
    /// (Istio's TCP metrics are those of its TCP proxy).
    pub fn counts_connection(&self, protocol: Protocol) -> bool {
        self.istio.is_none() || protocol == Protocol::Opaque
    }

    /// The Prometheus text exposition of every family.
    pub fn encode(&self) -> String {
        outrigger_runtime::metrics::encode(&self.registry)
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn traffic() -> TrafficLabels {
        TrafficLabels {
            direction: Direction::Outbound,
            source_workload: "client".into(),
            source_namespace: "shop".into(),
            source_principal: unknown(),
            destination_workload: "web".into(),
            destination_namespace: "shop".into(),
            destination_principal: unknown(),
            destination_service: "web.shop".into(),
            connection_security_policy: SecurityPolicy::None,
        }
    }

    #[test]
    fn families_encode_with_their_labels() {
        let m = Metrics::new();
        let labels = RequestLabels {
            traffic: traffic(),
            response_code: 200,
            grpc_response_status: GrpcStatus(Some(0)),
            response_flags: ResponseFlag::None,
        };
        m.requests.get_or_create(&labels).inc_by(3);
        m.request_duration.get_or_create(&labels).observe(0.003);
        let text = m.encode();
        let line = text
            .lines()
            .find(|l| l.starts_with("outrigger_requests_total{"))
            .expect(&text);
        assert_eq!(
            line,
            "outrigger_requests_total{direction=\"outbound\",source_workload=\"client\",source_namespace=\"shop\",\
source_principal=\"unknown\",destination_workload=\"web\",destination_namespace=\"shop\",destination_principal=\"unknown\",\
destination_service=\"web.shop\",connection_security_policy=\"none\",response_code=\"200\",grpc_response_status=\"0\",\
response_flags=\"-\"} 3"
        );
        let bucket = |le: &str| {
            let prefix = format!(
                "outrigger_request_duration_seconds_bucket{{le=\"{le}\",direction=\"outbound\""
            );
            let line = text
                .lines()
                .find(|l| l.starts_with(&prefix))
                .expect(&prefix);
            line.rsplit(' ').next().unwrap().to_string()
        };
        assert_eq!(bucket("0.0025"), "0");
        assert_eq!(bucket("0.005"), "1");
        assert_eq!(bucket("+Inf"), "1");
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn the_proxy_is_the_source_outbound_and_the_destination_inbound() {
        let me = Workload {
            workload: "client".into(),
            namespace: "shop".into(),
            principal: unknown(),
        };
        let peer = Workload {
            workload: "web".into(),
            namespace: "shop".into(),
            principal: unknown(),
        };
        assert_eq!(
            TrafficLabels::new(Direction::Outbound, &me, &peer, "web.shop".into()),
            traffic()
        );
        let inbound = TrafficLabels::new(Direction::Inbound, &me, &peer, "web.shop".into());
        assert_eq!(
            (&*inbound.source_workload, &*inbound.destination_workload),
            ("web", "client")
        );
    }

    #[test]
    fn series_whose_labels_are_known_start_at_zero() {
        let m = Metrics::new();
        let cfg = outrigger_proxy_policy::testing::config(&[("web", 1, ""), ("db", 1, "")]);
        m.applied(&cfg);
        let text = m.encode();
        let has = |line: &str| assert!(text.lines().any(|l| l == line), "{line}\n{text}");
        for svc in ["web.shop", "db.shop"] {
            for family in [
                "outrigger_retries_total",
                "outrigger_retry_successes_total",
                "outrigger_retry_budget_exhausted_total",
                "outrigger_retry_overflow_total",
                "outrigger_outlier_ejections_total",
                "outrigger_pool_overflow_total",
                "outrigger_outlier_ejected_endpoints",
            ] {
                has(&format!("{family}{{destination_service=\"{svc}\"}} 0"));
            }
        }
        for d in ["inbound", "outbound"] {
            for family in [
                "outrigger_tcp_connections_rejected_total",
                "outrigger_tcp_denied_total",
                "outrigger_tcp_plaintext_refused_total",
            ] {
                has(&format!("{family}{{direction=\"{d}\"}} 0"));
            }
            has(&format!(
                "outrigger_tcp_connections_revoked_total{{direction=\"{d}\",reason=\"denied\"}} 0"
            ));
        }
        has("outrigger_identity_renewals_total{result=\"error\"} 0");
        has("outrigger_config_applied_total 1");
        // db leaves: its series go, web's stay (with their counts).
        m.retries
            .get_or_create(&ServiceLabel {
                destination_service: "web.shop".into(),
            })
            .inc();
        m.applied(&outrigger_proxy_policy::testing::config(&[("web", 1, "")]));
        let text = m.encode();
        assert!(!text.contains("db.shop"), "{text}");
        assert!(
            text.lines()
                .any(|l| l == "outrigger_retries_total{destination_service=\"web.shop\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn a_grpc_request_without_a_status_ends_with_its_http_status_mapped() {
        let mut h = http::HeaderMap::new();
        assert_eq!(GrpcStatus::of_request(&h), GrpcStatus(None));
        h.insert("content-type", "application/grpc+proto".parse().unwrap());
        let pending = GrpcStatus::of_request(&h);
        assert!(pending.is_grpc());
        assert_eq!(pending.code(), None);
        for (http, grpc) in [
            (400, 13),
            (401, 16),
            (403, 7),
            (404, 12),
            (429, 14),
            (502, 14),
            (503, 14),
            (504, 14),
            (200, 2),
            (0, 2),
        ] {
            assert_eq!(pending.resolved(http), GrpcStatus(Some(grpc)), "{http}");
        }
        // What the response said stays; other requests have none.
        assert_eq!(GrpcStatus(Some(0)).resolved(503), GrpcStatus(Some(0)));
        assert_eq!(GrpcStatus(None).resolved(503), GrpcStatus(None));
    }

    #[test]
    fn grpc_status_is_bounded() {
        assert_eq!(GrpcStatus::parse(b"0"), GrpcStatus(Some(0)));
        assert_eq!(GrpcStatus::parse(b"14"), GrpcStatus(Some(14)));
        assert_eq!(GrpcStatus::parse(b"99"), GrpcStatus(Some(2)));
        assert_eq!(GrpcStatus::parse(b"x"), GrpcStatus(Some(2)));
    }
}
