//! The proxy's configuration snapshot: the wire model.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::policy::{HttpRoute, PortRateLimit, Subset, TrafficPolicy};
use crate::Duration;

/// Everything one proxy needs to serve traffic. A static bootstrap file holds
/// one; the control plane streams a new one on every change.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Snapshot {
    /// Opaque version string; shown on `/config` and in the metrics.
    pub version: String,
    /// Who this proxy is (used for the source/destination metric labels).
    #[serde(default)]
    pub proxy: ProxyInfo,
    #[serde(default)]
    pub admin: Admin,
    #[serde(default)]
    pub limits: Limits,
    /// What the proxy accepts of an HTTP request before any policy sees it.
    #[serde(default, skip_serializing_if = "HttpSettings::is_default")]
    pub http: HttpSettings,
    #[serde(default)]
    pub listeners: Vec<Listener>,
    #[serde(default)]
    pub services: Vec<Service>,
    /// What the inbound side enforces (peer authentication, authorization).
    #[serde(default, skip_serializing_if = "crate::inbound::Inbound::is_empty")]
    pub inbound: crate::inbound::Inbound,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyInfo {
    /// The workload (Deployment, StatefulSet, ...) the proxy's pod belongs to.
    pub workload: String,
    pub namespace: String,
    /// The proxy's SPIFFE identity, once it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
}

impl Default for ProxyInfo {
    fn default() -> Self {
        Self {
            workload: "unknown".into(),
            namespace: "default".into(),
            identity: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    /// `IP:port` of the admin listener (`/metrics`, `/ready`, `/live`,
    /// `/config`, `POST /shutdown`).
    pub bind: String,
}

impl Default for Admin {
    fn default() -> Self {
        Self {
            bind: "0.0.0.0:4191".into(),
        }
    }
}

/// Guards and deadlines. Every field has a default, so a snapshot names only
/// what it changes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Open connections accepted per listener; past it new ones are closed at once.
    pub max_connections: u32,
    /// Time a client has to send a complete HTTP/1 request head.
    pub header_read_timeout: Duration,
    /// Largest request head (HTTP/1 buffer, HTTP/2 header list) accepted, in bytes.
    pub max_header_bytes: u32,
    /// Most header fields an HTTP/1 request head may carry (Envoy's
    /// `max_headers_count`); past it the request gets 431. HTTP/2 header
    /// lists are bounded by `max_header_bytes` alone.
    pub max_header_count: u32,
    /// How long protocol detection waits for a client's first bytes before the
    /// connection is treated as opaque TCP (server-speaks-first protocols).
    pub detect_timeout: Duration,
    /// Deadline for connecting to an upstream endpoint.
    pub connect_timeout: Duration,
    /// Idle pooled upstream connections are closed after this long.
    pub idle_timeout: Duration,
    /// The grace period: on shutdown, how long in-flight work may take
    /// before the proxy exits anyway. In Kubernetes the injector sets it
    /// from the pod's `terminationGracePeriodSeconds`, less a margin.
    pub drain_timeout: Duration,
    /// On shutdown, how long the listeners keep accepting new connections
    /// (served in drain mode: one request on HTTP/1, GOAWAY on HTTP/2)
    /// while Kubernetes removes the endpoint; at most half of
    /// `drain_timeout`. `0s` stops accepting at once.
    pub drain_accept: Duration,
    /// Whether the accept window ends early, as soon as no connection is
    /// open, so that an idle proxy exits at once (Istio's nearest setting,
    /// `EXIT_ON_ZERO_ACTIVE_CONNECTIONS`, first waits 5 s). On by default; the
    /// injector turns it off for a
    /// sidecar that is not native, whose app may still be running, and
    /// calling out, while the pod terminates.
    pub drain_exit_when_idle: bool,
    /// An opaque TCP connection with no byte either way for this long is
    /// closed (Istio's TCP idle timeout). It also bounds how long a client
    /// that has sent nothing is held before any upstream connection exists.
    pub tcp_idle_timeout: Duration,
    /// HTTP/2: streams one client connection may have open at once
    /// (`SETTINGS_MAX_CONCURRENT_STREAMS`); more are refused.
    pub http2_max_concurrent_streams: u32,
    /// HTTP/2: streams a client may open and reset before the proxy has
    /// accepted them (the rapid-reset attack); past it, GOAWAY
    /// `ENHANCE_YOUR_CALM`.
    pub http2_max_pending_accept_reset_streams: u32,
    /// HTTP/2: streams the proxy may reset for a client's protocol errors
    /// on one connection; past it, GOAWAY `ENHANCE_YOUR_CALM`.
    pub http2_max_local_error_reset_streams: u32,
    /// HTTP/2: PING and SETTINGS frames (not acknowledgements) a client may
    /// send per second, as a bucket of as many; past it, GOAWAY
    /// `ENHANCE_YOUR_CALM` and the connection is closed.
    pub http2_max_control_frames_per_second: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 64 * 1024,
            max_header_count: 100,
            detect_timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(3),
            idle_timeout: Duration::from_secs(90),
            drain_timeout: Duration::from_secs(20),
            drain_accept: Duration::from_secs(5),
            drain_exit_when_idle: true,
            tcp_idle_timeout: Duration::from_secs(3600),
            http2_max_concurrent_streams: 100,
            http2_max_pending_accept_reset_streams: 20,
            http2_max_local_error_reset_streams: 1024,
            http2_max_control_frames_per_second: 100,
        }
    }
}

/// Mesh-wide HTTP settings (Istio's `meshConfig.pathNormalization`, and
/// Envoy's `upgrade_configs`). Every field has a default.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSettings {
    /// How request paths are normalized before routing and authorization;
    /// the normalized path is the one forwarded.
    pub path_normalization: PathNormalization,
    /// `Upgrade` protocols that may become a tunnel, compared without
    /// case (`websocket`). `CONNECT` here allows HTTP/1.1 CONNECT. Any other
    /// upgrade is refused with 403; `h2c` upgrade requests are forwarded
    /// as plain requests without their upgrade headers.
    pub upgrades: Vec<String>,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            path_normalization: PathNormalization::default(),
            upgrades: vec!["websocket".into()],
        }
    }
}

impl HttpSettings {
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }

    /// The first entry of `upgrades` that is no protocol name (an RFC 9110
    /// token, `/` allowed for a version), with its index.
    pub fn bad_upgrade(&self) -> Option<(usize, &str)> {
        self.upgrades.iter().enumerate().find_map(|(i, u)| {
            let token = !u.is_empty()
                && u.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~/".contains(&b));
            (!token).then_some((i, u.as_str()))
        })
    }

    /// Whether this `Upgrade` protocol (or `CONNECT`) may become a tunnel.
    pub fn allows_upgrade(&self, protocol: &str) -> bool {
        self.upgrades
            .iter()
            .any(|u| u.eq_ignore_ascii_case(protocol.trim()))
    }
}

/// Istio's path normalization options, with their names. Each includes
/// the ones above it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PathNormalization {
    /// Paths are forwarded and matched exactly as received.
    None,
    /// RFC 3986: percent-encoded unreserved characters decoded, dot
    /// segments removed; backslashes become slashes; `%00` refused.
    Base,
    /// `BASE`, then runs of slashes merged into one. The default: Istio's
    /// default is `BASE`, which lets `//admin` past a rule on `/admin*`.
    #[default]
    MergeSlashes,
    /// `%2F` and `%5C` decoded first, then `MERGE_SLASHES`.
    DecodeAndMergeSlashes,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Traffic from this pod's app to the mesh (port 4140 by convention).
    Outbound,
    /// Traffic from the mesh to this pod's app (port 4143 by convention).
    Inbound,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Outbound => "outbound",
            Direction::Inbound => "inbound",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    pub name: String,
    pub direction: Direction,
    /// `IP:port` to bind. Port 0 picks a free port (tests).
    pub bind: String,
    /// Outbound only: send every connection to this service instead of looking
    /// up the original destination (static mode: no iptables needed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<ServiceRef>,
    /// Inbound only: the app's `IP:port` when a connection carries no original
    /// destination (static mode). With iptables, the app is reached on
    /// `127.0.0.1:<original port>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    /// Inbound only: app ports whose traffic skips protocol detection and is
    /// forwarded as opaque TCP (server-speaks-first protocols such as MySQL).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub opaque_ports: Vec<u16>,
    /// Inbound only: local token buckets per app port; requests past them are
    /// answered 429 with `Retry-After`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rate_limits: Vec<PortRateLimit>,
}

/// Names one port of one service.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceRef {
    pub name: String,
    pub namespace: String,
    pub port: u16,
}

/// A service the proxy may reach: its virtual addresses and ports, and the
/// endpoints behind them. A Kubernetes Service with several ports whose
/// endpoints differ per port is several `Service` entries with the same name.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    pub name: String,
    pub namespace: String,
    /// Virtual IPs (the ClusterIP): connections to `address:port` belong to
    /// this service.
    #[serde(default)]
    pub addresses: Vec<String>,
    /// Virtual ports.
    pub ports: Vec<u16>,
    #[serde(default)]
    pub protocol: ServiceProtocol,
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
    /// HTTP routes (Istio `VirtualService.http`), tried in order. None: every
    /// request goes to this service's endpoints with the default retry policy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http: Vec<HttpRoute>,
    /// Named endpoint subsets (Istio `DestinationRule.subsets`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subsets: Vec<Subset>,
    /// Balancing, connection-pool limits and outlier detection for requests
    /// sent to this service's endpoints (Istio `DestinationRule.trafficPolicy`).
    #[serde(
        rename = "trafficPolicy",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub traffic_policy: Option<TrafficPolicy>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceProtocol {
    /// Detect HTTP/1, HTTP/2 or opaque TCP from the client's first bytes;
    /// HTTP goes to the app in the protocol the client spoke.
    #[default]
    Detect,
    /// Skip detection: forward bytes as they come.
    Opaque,
    /// HTTP only: HTTP/1 (strictly), HTTP/2, or the app's own TLS; other
    /// bytes are answered 400, never forwarded. HTTP goes to the app as
    /// HTTP/1.1 whatever the client spoke (Istio: a port named `http`).
    Http,
    /// HTTP only, as `http`, and HTTP goes to the app as HTTP/2 (Istio:
    /// `http2`, `grpc`, `h2c`).
    Http2,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    /// `IP:port` to connect to.
    pub address: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// The workload serving at this endpoint (metrics `destination_workload`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<String>,
    /// The endpoint proxy's SPIFFE identity (`spiffe://...`), when meshed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// Whether an Outrigger proxy fronts this endpoint. Meshed endpoints get
    /// every HTTP request over one multiplexed HTTP/2 connection.
    #[serde(default)]
    pub meshed: bool,
}

/// A snapshot document that is not even well-formed.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("invalid YAML snapshot: {0}")]
    Yaml(String),
    #[error("invalid JSON snapshot: {0}")]
    Json(#[from] serde_json::Error),
}

impl Snapshot {
    /// Reads a snapshot from YAML (JSON is valid YAML too).
    pub fn from_yaml(text: &str) -> Result<Self, ParseError> {
        serde_saphyr::from_str(text).map_err(|e| ParseError::Yaml(e.to_string()))
    }

    pub fn from_json(text: &str) -> Result<Self, ParseError> {
        Ok(serde_json::from_str(text)?)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a snapshot always serializes")
    }

    pub fn service(&self, r: &ServiceRef) -> Option<&Service> {
        self.services
            .iter()
            .find(|s| s.name == r.name && s.namespace == r.namespace && s.ports.contains(&r.port))
    }
}

impl Admin {
    pub fn bind_addr(&self) -> Result<SocketAddr, String> {
        parse_socket_addr(&self.bind)
    }
}

impl Listener {
    pub fn bind_addr(&self) -> Result<SocketAddr, String> {
        parse_socket_addr(&self.bind)
    }

    pub fn app_addr(&self) -> Result<Option<SocketAddr>, String> {
        self.app.as_deref().map(parse_socket_addr).transpose()
    }
}

impl Service {
    pub fn virtual_ips(&self) -> Result<Vec<IpAddr>, String> {
        self.addresses.iter().map(|a| parse_ip(a)).collect()
    }

    /// `name.namespace`, the `destination_service` metric label.
    pub fn qualified_name(&self) -> String {
        format!("{}.{}", self.name, self.namespace)
    }
}

impl Endpoint {
    pub fn socket_addr(&self) -> Result<SocketAddr, String> {
        parse_socket_addr(&self.address)
    }
}

pub(crate) fn parse_socket_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse::<SocketAddr>()
        .map_err(|_| format!("{s:?} is not an IP:port"))
}

pub(crate) fn parse_ip(s: &str) -> Result<IpAddr, String> {
    s.parse::<IpAddr>()
        .map_err(|_| format!("{s:?} is not an IP address"))
}
