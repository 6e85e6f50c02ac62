//! Kubelet probes the proxy answers on the app's behalf.
//!
//! Under STRICT mutual TLS, kubelet's plaintext probes cannot reach the app
//! through the inbound side. The injector therefore points each HTTP, TCP
//! and gRPC probe of an app container at the proxy's admin port
//! (`/app-health/<container>/livez`, `readyz`, `startupz`) and hands the
//! proxy the original probes as JSON (`OUTRIGGER_APP_PROBES`, Istio's
//! `ISTIO_KUBE_APP_PROBERS` in spirit). The proxy runs the original probe
//! against the app from inside the pod and answers with its outcome.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The path prefix on the admin port under which app probes are answered.
pub const APP_HEALTH_PREFIX: &str = "/app-health/";

/// Admin path (`/app-health/...`) → the probe it stands for.
pub type AppProbes = BTreeMap<String, AppProbe>;

/// One original probe, with Kubernetes' field names. Exactly one of
/// `httpGet`, `tcpSocket` and `grpc`; ports are numbers (the injector
/// resolves named ports).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AppProbe {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_get: Option<HttpGetProbe>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_socket: Option<TcpSocketProbe>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc: Option<GrpcProbe>,
    /// Kubelet's default is 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u32>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpGetProbe {
    /// Default `/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    pub port: u16,
    /// Default: the pod's IP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// `HTTP` (default) or `HTTPS` (the certificate is not verified, as
    /// kubelet does not verify it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http_headers: Vec<ProbeHeader>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeHeader {
    pub name: String,
    pub value: String,
}

/// The gRPC Health Checking Protocol (`grpc.health.v1.Health/Check`) over
/// plaintext HTTP/2 to the pod's IP, as kubelet runs it: healthy when the
/// answer is `SERVING`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcProbe {
    pub port: u16,
    /// The service name asked about; empty (the default) asks about the
    /// server as a whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpSocketProbe {
    pub port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}
