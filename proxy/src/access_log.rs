//! One line per request on the `outrigger::access` tracing target, when the
//! access log is on (`--access-log`). Fields follow Envoy's default format
//! where they overlap, so Istio users read it at a glance.

use std::net::SocketAddr;
use std::time::Duration;

use http::{Method, Uri, Version};

use crate::metrics::RequestLabels;

/// Longest path written to the log; longer ones are cut (with `...`).
const MAX_PATH: usize = 512;

pub struct AccessLog {
    /// `-` for a request the proxy could not read.
    pub method: Method,
    /// None for a request the proxy could not read (path `-`).
    pub uri: Option<Uri>,
    pub version: Version,
    pub peer: SocketAddr,
    pub upstream: Option<SocketAddr>,
    /// The route taken (outbound), by its metric label.
    pub route: Option<crate::metrics::Name>,
    pub attempts: Option<crate::svc::Attempts>,
}

impl AccessLog {
    pub fn emit(&self, labels: &RequestLabels, elapsed: Duration) {
        let path = match &self.uri {
            Some(uri) => uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"),
            None => "-",
        };
        let path = if path.len() > MAX_PATH {
            let mut end = MAX_PATH;
            while !path.is_char_boundary(end) {
                end -= 1;
            }
            format!("{}...", &path[..end])
        } else {
            path.to_string()
        };
        let upstream = self.upstream.map(|u| u.to_string());
        tracing::info!(
            target: "outrigger::access",
            direction = labels.traffic.direction.as_str(),
            method = %self.method,
            path = %path,
            protocol = version_str(self.version),
            status = labels.response_code,
            grpc_status = labels.grpc_response_status.0.map_or(-1, i16::from),
            response_flags = labels.response_flags.as_str(),
            duration_ms = elapsed.as_secs_f64() * 1000.0,
            downstream = %self.peer,
            upstream = upstream.as_deref().unwrap_or("-"),
            destination_service = &*labels.traffic.destination_service,
            route = self.route.as_deref().unwrap_or("-"),
            attempts = self.attempts.map_or(1, |a| a.0),
        );
    }
}

fn version_str(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/?",
    }
}
