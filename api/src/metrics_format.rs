//! The metrics format, one name shared by the mesh config (the injector)
//! and the proxy's `--metrics-format` flag.

use serde::{Deserialize, Serialize};

/// Which names and labels a proxy's request and TCP families carry
/// (`outrigger` by default).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MetricsFormat {
    /// `outrigger_requests_total`, `outrigger_tcp_*`, ... (seconds, byte
    /// counters, `direction`).
    #[default]
    Outrigger,
    /// Istio's standard metrics: `istio_requests_total`,
    /// `istio_request_duration_milliseconds`, byte-size histograms,
    /// `istio_tcp_*`, with Istio's labels (`reporter`, ...).
    Istio,
}

impl MetricsFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            MetricsFormat::Outrigger => "outrigger",
            MetricsFormat::Istio => "istio",
        }
    }
}

impl std::fmt::Display for MetricsFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for MetricsFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "outrigger" => Ok(MetricsFormat::Outrigger),
            "istio" => Ok(MetricsFormat::Istio),
            other => Err(format!(
                "{other:?} is not a metrics format: outrigger or istio"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_others_are_refused() {
        for f in [MetricsFormat::Outrigger, MetricsFormat::Istio] {
            assert_eq!(f.as_str().parse::<MetricsFormat>(), Ok(f));
            assert_eq!(
                serde_json::to_string(&f).unwrap(),
                format!("{:?}", f.as_str())
            );
        }
        assert_eq!(MetricsFormat::default(), MetricsFormat::Outrigger);
        assert_eq!(
            "prometheus".parse::<MetricsFormat>().unwrap_err(),
            "\"prometheus\" is not a metrics format: outrigger or istio"
        );
    }
}
