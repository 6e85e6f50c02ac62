//! The access-log format, one name shared by the mesh config and pod
//! annotation (the injector) and the proxy's `--access-log` flag.

use serde::{Deserialize, Serialize};

/// Whether and how a proxy logs each request (`off` by default).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessLogFormat {
    #[default]
    Off,
    /// Envoy's default access-log line.
    Text,
    /// One JSON object per line.
    Json,
}

impl AccessLogFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            AccessLogFormat::Off => "off",
            AccessLogFormat::Text => "text",
            AccessLogFormat::Json => "json",
        }
    }
}

impl std::fmt::Display for AccessLogFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for AccessLogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "off" => Ok(AccessLogFormat::Off),
            "text" => Ok(AccessLogFormat::Text),
            "json" => Ok(AccessLogFormat::Json),
            other => Err(format!(
                "{other:?} is not an access-log format: off, text or json"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_others_are_refused() {
        for f in [
            AccessLogFormat::Off,
            AccessLogFormat::Text,
            AccessLogFormat::Json,
        ] {
            assert_eq!(f.as_str().parse::<AccessLogFormat>(), Ok(f));
            assert_eq!(
                serde_json::to_string(&f).unwrap(),
                format!("{:?}", f.as_str())
            );
        }
        assert_eq!(
            "JSON".parse::<AccessLogFormat>().unwrap_err(),
            "\"JSON\" is not an access-log format: off, text or json"
        );
    }
}
