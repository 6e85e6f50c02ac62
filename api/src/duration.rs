//! Durations as operators write them in manifests: `250ms`, `1.5s`, `2m`, `1h`
//! (the same shape as Istio's `timeout: 0.5s`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A non-negative duration written with a unit suffix (`ms`, `s`, `m`, `h`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Duration(pub std::time::Duration);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("empty duration")]
    Empty,
    #[error("{0:?} has no unit: write it as e.g. \"250ms\", \"1.5s\", \"2m\" or \"1h\"")]
    NoUnit(String),
    #[error("{0:?} has an unknown unit (use ms, s, m or h)")]
    BadUnit(String),
    #[error("{0:?} is not a non-negative number followed by a unit")]
    BadNumber(String),
}

impl Duration {
    pub const fn from_millis(ms: u64) -> Self {
        Self(std::time::Duration::from_millis(ms))
    }

    pub const fn from_secs(s: u64) -> Self {
        Self(std::time::Duration::from_secs(s))
    }

    pub const fn get(self) -> std::time::Duration {
        self.0
    }
}

impl FromStr for Duration {
    type Err = DurationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.is_empty() {
            return Err(DurationError::Empty);
        }
        let split = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| DurationError::NoUnit(s.to_string()))?;
        let (num, unit) = s.split_at(split);
        let millis_per_unit = match unit {
            "ms" => 1.0,
            "s" => 1_000.0,
            "m" => 60_000.0,
            "h" => 3_600_000.0,
            _ => return Err(DurationError::BadUnit(s.to_string())),
        };
        let value: f64 = num
            .parse()
            .map_err(|_| DurationError::BadNumber(s.to_string()))?;
        if !value.is_finite() || value < 0.0 {
            return Err(DurationError::BadNumber(s.to_string()));
        }
        let nanos = value * millis_per_unit * 1_000_000.0;
        if nanos > u64::MAX as f64 {
            return Err(DurationError::BadNumber(s.to_string()));
        }
        Ok(Self(std::time::Duration::from_nanos(nanos.round() as u64)))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        if d.subsec_nanos() == 0 && d.as_secs() > 0 {
            write!(f, "{}s", d.as_secs())
        } else if d.as_nanos().is_multiple_of(1_000_000) {
            write!(f, "{}ms", d.as_millis())
        } else {
            write!(f, "{}s", d.as_secs_f64())
        }
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// In a CRD schema a duration is a string in this same notation; the API
/// server checks the pattern, the control plane the value.
#[cfg(feature = "schema")]
impl schemars::JsonSchema for Duration {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": SCHEMA_PATTERN,
            "description": "A duration with a unit: 250ms, 1.5s, 2m, 1h."
        })
    }
}

/// The notation [`Duration`] parses, as a regular expression (CRD schemas).
#[cfg(feature = "schema")]
pub const SCHEMA_PATTERN: &str = r"^[0-9]+(\.[0-9]+)?(ms|s|m|h)$";

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(s: &str) -> u128 {
        s.parse::<Duration>().unwrap().0.as_millis()
    }

    #[test]
    fn parses_every_unit() {
        assert_eq!(ms("250ms"), 250);
        assert_eq!(ms("1.5s"), 1500);
        assert_eq!(ms("0.5s"), 500);
        assert_eq!(ms("2m"), 120_000);
        assert_eq!(ms("1h"), 3_600_000);
        assert_eq!(ms(" 10s "), 10_000);
        assert_eq!(ms("0s"), 0);
    }

    #[test]
    fn rejects_malformed_values_with_reason() {
        assert_eq!("".parse::<Duration>(), Err(DurationError::Empty));
        assert_eq!(
            "10".parse::<Duration>(),
            Err(DurationError::NoUnit("10".into()))
        );
        assert_eq!(
            "10d".parse::<Duration>(),
            Err(DurationError::BadUnit("10d".into()))
        );
        assert_eq!(
            "1.2.3s".parse::<Duration>(),
            Err(DurationError::BadNumber("1.2.3s".into()))
        );
        assert_eq!(
            "-1s".parse::<Duration>(),
            Err(DurationError::BadUnit("-1s".into()))
        );
        assert_eq!(
            "s".parse::<Duration>(),
            Err(DurationError::BadNumber("s".into()))
        );
    }

    #[test]
    fn display_round_trips() {
        for s in ["250ms", "3s", "1500ms", "0ms"] {
            let d: Duration = s.parse().unwrap();
            assert_eq!(d.to_string().parse::<Duration>().unwrap(), d, "{s}");
        }
        assert_eq!(Duration::from_millis(1500).to_string(), "1500ms");
        assert_eq!(Duration::from_secs(3).to_string(), "3s");
    }
}
