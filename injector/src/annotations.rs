//! What a pod's annotations ask of injection, read and checked. A value
//! that cannot be used is an error naming the annotation; an unknown
//! `config.outrigger.dev/` key is one too (a typo must not be ignored).

use crate::quantity;
use std::collections::BTreeMap;

/// `enabled` / `disabled`, on a namespace or a pod (the pod's wins).
pub const INJECT: &str = "outrigger.dev/inject";
/// Set by injection: the version of the proxy image injected (its tag,
/// digest, or both). A pod that carries it is injected already (as
/// Linkerd's `linkerd.io/proxy-version`).
pub const PROXY_VERSION: &str = "outrigger.dev/proxy-version";
pub const PREFIX: &str = "config.outrigger.dev/";
pub const SKIP_INBOUND_PORTS: &str = "config.outrigger.dev/skip-inbound-ports";
pub const SKIP_OUTBOUND_PORTS: &str = "config.outrigger.dev/skip-outbound-ports";
pub const SKIP_SUBNETS: &str = "config.outrigger.dev/skip-subnets";
pub const OPAQUE_PORTS: &str = "config.outrigger.dev/opaque-ports";
pub const PROXY_CPU_REQUEST: &str = "config.outrigger.dev/proxy-cpu-request";
pub const PROXY_CPU_LIMIT: &str = "config.outrigger.dev/proxy-cpu-limit";
pub const PROXY_MEMORY_REQUEST: &str = "config.outrigger.dev/proxy-memory-request";
pub const PROXY_MEMORY_LIMIT: &str = "config.outrigger.dev/proxy-memory-limit";
pub const PROXY_LOG_LEVEL: &str = "config.outrigger.dev/proxy-log-level";
pub const NATIVE_SIDECAR: &str = "config.outrigger.dev/native-sidecar";
/// `off`, `text` or `json`: the proxy's access log (`--access-log`).
pub const ACCESS_LOG: &str = "config.outrigger.dev/access-log";
/// The percentage (0-100) of new traces the pod's proxy samples
/// (`--trace-sampling`), when the mesh has a collector.
pub const TRACE_SAMPLING: &str = "config.outrigger.dev/trace-sampling";

const KNOWN: [&str; 12] = [
    SKIP_INBOUND_PORTS,
    SKIP_OUTBOUND_PORTS,
    SKIP_SUBNETS,
    OPAQUE_PORTS,
    PROXY_CPU_REQUEST,
    PROXY_CPU_LIMIT,
    PROXY_MEMORY_REQUEST,
    PROXY_MEMORY_LIMIT,
    PROXY_LOG_LEVEL,
    NATIVE_SIDECAR,
    ACCESS_LOG,
    TRACE_SAMPLING,
];

/// The most ports a range may expand to in an opaque-ports list.
const MAX_OPAQUE_PORTS: usize = 1024;

pub use outrigger_api::redirect::{parse_port_ranges, parse_subnets, PortRange, Subnet};

/// What a pod asks for; `None`: the mesh config's default.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Overrides {
    pub skip_inbound_ports: Vec<PortRange>,
    pub skip_outbound_ports: Vec<PortRange>,
    pub skip_subnets: Vec<Subnet>,
    pub opaque_ports: Vec<u16>,
    /// Resource name (`cpu`, `memory`) → quantity.
    pub requests: BTreeMap<String, String>,
    pub limits: BTreeMap<String, String>,
    pub log_level: Option<String>,
    pub native_sidecar: Option<bool>,
    pub access_log: Option<outrigger_api::AccessLogFormat>,
    pub trace_sampling: Option<outrigger_api::TraceSampling>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("annotation {annotation}: {message}")]
pub struct AnnotationError {
    pub annotation: String,
    pub message: String,
}

fn error(annotation: &str, message: impl Into<String>) -> AnnotationError {
    AnnotationError {
        annotation: annotation.to_string(),
        message: message.into(),
    }
}

/// Whether injection was asked for: `Some(true)` for `enabled`,
/// `Some(false)` for `disabled`, `None` when the annotation is absent.
pub fn inject(annotations: &BTreeMap<String, String>) -> Result<Option<bool>, AnnotationError> {
    match annotations.get(INJECT).map(|v| v.trim()) {
        None => Ok(None),
        Some("enabled") => Ok(Some(true)),
        Some("disabled") => Ok(Some(false)),
        Some(other) => Err(error(
            INJECT,
            format!("{other:?} is neither \"enabled\" nor \"disabled\""),
        )),
    }
}

/// Reads every `config.outrigger.dev/` annotation of a pod.
pub fn overrides(annotations: &BTreeMap<String, String>) -> Result<Overrides, AnnotationError> {
    let mut o = Overrides::default();
    for (key, value) in annotations {
        if !key.starts_with(PREFIX) {
            continue;
        }
        let v = value.trim();
        match key.as_str() {
            SKIP_INBOUND_PORTS => {
                o.skip_inbound_ports = parse_port_ranges(v).map_err(|m| error(key, m))?
            }
            SKIP_OUTBOUND_PORTS => {
                o.skip_outbound_ports = parse_port_ranges(v).map_err(|m| error(key, m))?
            }
            SKIP_SUBNETS => o.skip_subnets = parse_subnets(v).map_err(|m| error(key, m))?,
            OPAQUE_PORTS => {
                let ranges = parse_port_ranges(v).map_err(|m| error(key, m))?;
                let count: usize = ranges.iter().map(PortRange::len).sum();
                if count > MAX_OPAQUE_PORTS {
                    return Err(error(
                        key,
                        format!("{count} ports; at most {MAX_OPAQUE_PORTS}"),
                    ));
                }
                o.opaque_ports = ranges.iter().flat_map(|r| r.first..=r.last).collect();
            }
            PROXY_CPU_REQUEST | PROXY_CPU_LIMIT | PROXY_MEMORY_REQUEST | PROXY_MEMORY_LIMIT => {
                quantity::parse(v).map_err(|m| error(key, m))?;
                let resource = if key.contains("-cpu-") {
                    "cpu"
                } else {
                    "memory"
                };
                let map = if key.ends_with("-request") {
                    &mut o.requests
                } else {
                    &mut o.limits
                };
                map.insert(resource.to_string(), v.to_string());
            }
            PROXY_LOG_LEVEL => {
                tracing_subscriber::EnvFilter::try_new(v)
                    .map_err(|e| error(key, format!("{v:?} is not a log filter: {e}")))?;
                o.log_level = Some(v.to_string());
            }
            NATIVE_SIDECAR => {
                o.native_sidecar = Some(match v {
                    "true" => true,
                    "false" => false,
                    other => {
                        return Err(error(
                            key,
                            format!("{other:?} is neither \"true\" nor \"false\""),
                        ))
                    }
                })
            }
            ACCESS_LOG => o.access_log = Some(v.parse().map_err(|m: String| error(key, m))?),
            TRACE_SAMPLING => {
                o.trace_sampling = Some(v.parse().map_err(|m: String| error(key, m))?)
            }
            _ => {
                return Err(error(
                    key,
                    format!("not an Outrigger setting; known: {}", KNOWN.join(", ")),
                ))
            }
        }
    }
    Ok(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn every_setting_is_read() {
        let o = overrides(&map(&[
            (SKIP_INBOUND_PORTS, "8081, 9000-9002"),
            (SKIP_OUTBOUND_PORTS, "5432"),
            (SKIP_SUBNETS, "10.0.0.0/8,fd00::/8"),
            (OPAQUE_PORTS, "3306,6379-6380"),
            (PROXY_CPU_REQUEST, "50m"),
            (PROXY_MEMORY_LIMIT, "256Mi"),
            (PROXY_LOG_LEVEL, "debug"),
            (NATIVE_SIDECAR, "false"),
            (ACCESS_LOG, " json "),
            (TRACE_SAMPLING, "12.5"),
            ("prometheus.io/scrape", "true"),
        ]))
        .unwrap();
        assert_eq!(
            o.skip_inbound_ports,
            [
                PortRange {
                    first: 8081,
                    last: 8081
                },
                PortRange {
                    first: 9000,
                    last: 9002
                }
            ]
        );
        assert_eq!(o.skip_inbound_ports[1].to_string(), "9000:9002");
        assert_eq!(o.skip_outbound_ports[0].to_string(), "5432");
        let subnets: Vec<&str> = o.skip_subnets.iter().map(|s| s.text.as_str()).collect();
        assert_eq!(subnets, ["10.0.0.0/8", "fd00::/8"]);
        assert_eq!(o.opaque_ports, [3306, 6379, 6380]);
        assert_eq!(o.requests["cpu"], "50m");
        assert_eq!(o.limits["memory"], "256Mi");
        assert_eq!(o.log_level.as_deref(), Some("debug"));
        assert_eq!(o.native_sidecar, Some(false));
        assert_eq!(o.access_log, Some(outrigger_api::AccessLogFormat::Json));
        assert_eq!(o.trace_sampling.map(|s| s.get()), Some(12.5));
        assert_eq!(overrides(&map(&[])).unwrap(), Overrides::default());
    }

    #[test]
    fn bad_values_name_their_annotation() {
        for (key, value, want) in [
            (SKIP_INBOUND_PORTS, "http", "\"http\" is not a port number"),
            (SKIP_INBOUND_PORTS, "0", "\"0\" is not a port number"),
            (SKIP_OUTBOUND_PORTS, "9010-9000", "runs backwards"),
            (SKIP_SUBNETS, "10.0.0.0", "is not a CIDR"),
            (SKIP_SUBNETS, "10.0.0.0/33", "prefix length must be 0-32"),
            (SKIP_SUBNETS, "ten/8", "is not an IP address"),
            (OPAQUE_PORTS, "1-65535", "at most 1024"),
            (PROXY_CPU_REQUEST, "lots", "not a Kubernetes quantity"),
            (PROXY_MEMORY_LIMIT, "64MB", "not a Kubernetes quantity"),
            (PROXY_LOG_LEVEL, "[[", "is not a log filter"),
            (NATIVE_SIDECAR, "yes", "neither \"true\" nor \"false\""),
            (
                ACCESS_LOG,
                "on",
                "\"on\" is not an access-log format: off, text or json",
            ),
            (ACCESS_LOG, "JSON", "is not an access-log format"),
            (
                "config.outrigger.dev/skip-inbound-port",
                "80",
                "not an Outrigger setting",
            ),
        ] {
            let e = overrides(&map(&[(key, value)])).unwrap_err();
            assert_eq!(e.annotation, key);
            assert!(e.to_string().starts_with(&format!("annotation {key}: ")));
            assert!(e.message.contains(want), "{key}={value}: {e}");
        }
        let e = inject(&map(&[(INJECT, "true")])).unwrap_err();
        assert!(e.to_string().contains("outrigger.dev/inject"), "{e}");
        assert_eq!(inject(&map(&[(INJECT, "enabled")])), Ok(Some(true)));
        assert_eq!(inject(&map(&[(INJECT, "disabled")])), Ok(Some(false)));
        assert_eq!(inject(&map(&[])), Ok(None));
    }
}
