//! Tracing's settings, one form shared by the mesh config and pod
//! annotations (the injector) and the proxy's `--trace-collector` and
//! `--trace-sampling` flags.

use serde::{Deserialize, Serialize};

/// A sampling percentage, 0 to 100 (Istio's `tracing.sampling`): the share
/// of the traces a proxy starts that are recorded. 1 % by default, as in
/// Istio.
#[derive(Clone, Copy, Debug, PartialEq, PartialOrd, Serialize, Deserialize)]
#[serde(try_from = "f64", into = "f64")]
pub struct TraceSampling(f64);

impl TraceSampling {
    pub fn get(self) -> f64 {
        self.0
    }
}

impl Default for TraceSampling {
    fn default() -> Self {
        Self(1.0)
    }
}

impl From<TraceSampling> for f64 {
    fn from(s: TraceSampling) -> f64 {
        s.0
    }
}

impl TryFrom<f64> for TraceSampling {
    type Error = String;

    fn try_from(v: f64) -> Result<Self, String> {
        if (0.0..=100.0).contains(&v) {
            Ok(Self(v))
        } else {
            Err(format!("{v} is not a percentage from 0 to 100"))
        }
    }
}

impl std::str::FromStr for TraceSampling {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let v: f64 = s
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not a number from 0 to 100"))?;
        Self::try_from(v)
    }
}

impl std::fmt::Display for TraceSampling {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Where spans go: an OpenTelemetry collector speaking OTLP over plain
/// HTTP, written `http://host[:port][/prefix]` or `host:port`; spans are
/// posted to `<prefix>/v1/traces` (a URL that already ends so is taken as
/// is). The port is 80 when not given, as in any `http://` URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceCollector {
    pub host: String,
    pub port: u16,
    /// The path posted to, ending in `/v1/traces`.
    pub path: String,
}

impl std::str::FromStr for TraceCollector {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let s = text.trim();
        let rest = match s.split_once("://") {
            None => s,
            Some(("http", rest)) => rest,
            Some((scheme, _)) => {
                return Err(format!(
                    "{text:?}: scheme {scheme:?} is not supported; OTLP over plain HTTP (http://)"
                ))
            }
        };
        let (authority, prefix) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        if authority.is_empty() {
            return Err(format!("{text:?} names no host"));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("{text:?}: an unclosed [ in the host"))?;
            match after {
                "" => (host, None),
                p => (
                    host,
                    Some(
                        p.strip_prefix(':')
                            .ok_or_else(|| format!("{text:?}: after ]"))?,
                    ),
                ),
            }
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        let host_ok = !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._:".contains(&b));
        if !host_ok {
            return Err(format!("{text:?}: {host:?} is not a host name or address"));
        }
        let port = match port {
            None => 80,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("{text:?}: {p:?} is not a port"))?,
        };
        if prefix.contains(|c: char| c.is_whitespace() || c == '?' || c == '#') {
            return Err(format!(
                "{text:?}: the path takes no spaces, query or fragment"
            ));
        }
        let prefix = prefix.trim_end_matches('/');
        let path = if prefix.ends_with("/v1/traces") {
            prefix.to_string()
        } else {
            format!("{prefix}/v1/traces")
        };
        Ok(Self {
            host: host.to_string(),
            port,
            path,
        })
    }
}

impl std::fmt::Display for TraceCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "http://[{}]:{}{}", self.host, self.port, self.path)
        } else {
            write!(f, "http://{}:{}{}", self.host, self.port, self.path)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages_are_checked() {
        assert_eq!("12.5".parse::<TraceSampling>().unwrap().get(), 12.5);
        assert!("101".parse::<TraceSampling>().unwrap_err().contains("101"));
        assert!("-1".parse::<TraceSampling>().is_err());
        assert!("lots"
            .parse::<TraceSampling>()
            .unwrap_err()
            .contains("lots"));
        assert_eq!(TraceSampling::default().get(), 1.0);
        let s: TraceSampling = serde_json::from_str("0.5").unwrap();
        assert_eq!(s.get(), 0.5);
        assert!(serde_json::from_str::<TraceSampling>("150").is_err());
    }

    #[test]
    fn collector_urls() {
        let c: TraceCollector = "http://otel-collector.observability:4318".parse().unwrap();
        assert_eq!(
            (c.host.as_str(), c.port, c.path.as_str()),
            ("otel-collector.observability", 4318, "/v1/traces")
        );
        let c: TraceCollector = "jaeger:4318".parse().unwrap();
        assert_eq!(c.to_string(), "http://jaeger:4318/v1/traces");
        let c: TraceCollector = "http://c:4318/otlp/".parse().unwrap();
        assert_eq!(c.path, "/otlp/v1/traces");
        let c: TraceCollector = "http://c/v1/traces".parse().unwrap();
        assert_eq!((c.port, c.path.as_str()), (80, "/v1/traces"));
        let c: TraceCollector = "http://[::1]:4318".parse().unwrap();
        assert_eq!((c.host.as_str(), c.port), ("::1", 4318));
        assert_eq!(c.to_string(), "http://[::1]:4318/v1/traces");
        for bad in [
            "https://c:4318",
            "http://",
            "http://c:port",
            "http://c:0",
            "c d:4318",
            "http://c:4318/a?b",
            "",
        ] {
            assert!(bad.parse::<TraceCollector>().is_err(), "{bad}");
        }
        assert!("https://c"
            .parse::<TraceCollector>()
            .unwrap_err()
            .contains("https"));
    }
}
