//! Snapshot validation: every problem, each with the path of the field at fault.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;

use crate::snapshot::{parse_ip, parse_socket_addr};
use crate::{Direction, Snapshot};

/// One invalid field: `services[2].endpoints[0].address: "x" is not an IP:port`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    pub path: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// All the problems found in one snapshot, in document order.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ValidationErrors(pub Vec<FieldError>);

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid snapshot ({} errors):", self.0.len())?;
        for e in &self.0 {
            write!(f, "\n  {e}")?;
        }
        Ok(())
    }
}

impl ValidationErrors {
    pub fn paths(&self) -> Vec<&str> {
        self.0.iter().map(|e| e.path.as_str()).collect()
    }
}

#[derive(Default)]
struct Errors(Vec<FieldError>);

impl Errors {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            path: path.into(),
            message: message.into(),
        });
    }

    fn check<T>(&mut self, path: impl Into<String>, r: Result<T, String>) -> Option<T> {
        r.map_err(|m| self.push(path, m)).ok()
    }
}

const MIN_HEADER_BYTES: u32 = 8 * 1024;
const MAX_HEADER_BYTES: u32 = 1024 * 1024;

impl Snapshot {
    /// Checks the whole snapshot and returns every error found, each with its
    /// path. A snapshot that passes can be applied by the proxy as it is.
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut errs = Errors::default();

        if self.version.trim().is_empty() {
            errs.push("version", "must not be empty");
        }
        if self.proxy.workload.trim().is_empty() {
            errs.push("proxy.workload", "must not be empty");
        }
        if self.proxy.namespace.trim().is_empty() {
            errs.push("proxy.namespace", "must not be empty");
        }
        if let Some(id) = &self.proxy.identity {
            errs.check("proxy.identity", check_spiffe(id));
        }
        let admin = errs.check("admin.bind", self.admin.bind_addr());

        let l = &self.limits;
        if l.max_connections == 0 {
            errs.push("limits.max_connections", "must be at least 1");
        }
        if !(MIN_HEADER_BYTES..=MAX_HEADER_BYTES).contains(&l.max_header_bytes) {
            errs.push(
                "limits.max_header_bytes",
                format!(
                    "{} is out of range ({MIN_HEADER_BYTES}..={MAX_HEADER_BYTES})",
                    l.max_header_bytes
                ),
            );
        }
        for (name, d) in [
            ("header_read_timeout", l.header_read_timeout),
            ("detect_timeout", l.detect_timeout),
            ("connect_timeout", l.connect_timeout),
            ("idle_timeout", l.idle_timeout),
        ] {
            if d.get().is_zero() {
                errs.push(format!("limits.{name}"), "must be greater than zero");
            }
        }

        self.validate_services(&mut errs);
        self.validate_listeners(&mut errs, admin);

        if errs.0.is_empty() {
            Ok(())
        } else {
            Err(ValidationErrors(errs.0))
        }
    }

    fn validate_listeners(&self, errs: &mut Errors, admin: Option<SocketAddr>) {
        let mut names = HashSet::new();
        let mut binds: HashMap<SocketAddr, String> = HashMap::new();
        if let Some(a) = admin.filter(|a| a.port() != 0) {
            binds.insert(a, "admin.bind".into());
        }
        for (i, lis) in self.listeners.iter().enumerate() {
            let p = format!("listeners[{i}]");
            if lis.name.trim().is_empty() {
                errs.push(format!("{p}.name"), "must not be empty");
            } else if !names.insert(lis.name.as_str()) {
                errs.push(
                    format!("{p}.name"),
                    format!("{:?} is used by another listener", lis.name),
                );
            }
            if let Some(addr) = errs.check(format!("{p}.bind"), lis.bind_addr()) {
                if addr.port() != 0 {
                    if let Some(other) = binds.insert(addr, format!("{p}.bind")) {
                        errs.push(
                            format!("{p}.bind"),
                            format!("{addr} is also bound by {other}"),
                        );
                    }
                }
            }
            match lis.direction {
                Direction::Outbound => {
                    if lis.app.is_some() {
                        errs.push(
                            format!("{p}.app"),
                            "only inbound listeners forward to an app",
                        );
                    }
                    if !lis.opaque_ports.is_empty() {
                        errs.push(
                            format!("{p}.opaque_ports"),
                            "outbound opacity is set per service (services[].protocol: opaque)",
                        );
                    }
                    if let Some(t) = &lis.target {
                        if self.service(t).is_none() {
                            errs.push(
                                format!("{p}.target"),
                                format!(
                                    "no service {}.{} with port {} in this snapshot",
                                    t.name, t.namespace, t.port
                                ),
                            );
                        }
                    }
                }
                Direction::Inbound => {
                    if lis.target.is_some() {
                        errs.push(
                            format!("{p}.target"),
                            "only outbound listeners target a service",
                        );
                    }
                    errs.check(format!("{p}.app"), lis.app_addr());
                    for (j, port) in lis.opaque_ports.iter().enumerate() {
                        if *port == 0 {
                            errs.push(format!("{p}.opaque_ports[{j}]"), "port 0 is not a port");
                        }
                    }
                }
            }
        }
    }

    fn validate_services(&self, errs: &mut Errors) {
        let mut keys: HashMap<(&str, &str, u16), usize> = HashMap::new();
        let mut vips: HashMap<SocketAddr, usize> = HashMap::new();
        for (i, svc) in self.services.iter().enumerate() {
            let p = format!("services[{i}]");
            if svc.name.trim().is_empty() {
                errs.push(format!("{p}.name"), "must not be empty");
            }
            if svc.namespace.trim().is_empty() {
                errs.push(format!("{p}.namespace"), "must not be empty");
            }
            if svc.ports.is_empty() {
                errs.push(format!("{p}.ports"), "a service needs at least one port");
            }
            let mut seen_ports = HashSet::new();
            for (j, port) in svc.ports.iter().enumerate() {
                if *port == 0 {
                    errs.push(format!("{p}.ports[{j}]"), "port 0 is not a port");
                } else if !seen_ports.insert(*port) {
                    errs.push(
                        format!("{p}.ports[{j}]"),
                        format!("port {port} is listed twice"),
                    );
                } else if let Some(other) = keys.insert((&svc.name, &svc.namespace, *port), i) {
                    errs.push(
                        format!("{p}.ports[{j}]"),
                        format!(
                            "{}.{} port {port} is already defined by services[{other}]",
                            svc.name, svc.namespace
                        ),
                    );
                }
            }
            for (j, a) in svc.addresses.iter().enumerate() {
                let Some(ip) = errs.check(format!("{p}.addresses[{j}]"), parse_ip(a)) else {
                    continue;
                };
                for port in &svc.ports {
                    if let Some(other) = vips.insert(SocketAddr::new(ip, *port), i) {
                        if other != i {
                            errs.push(
                                format!("{p}.addresses[{j}]"),
                                format!("{ip}:{port} also belongs to services[{other}]"),
                            );
                        }
                    }
                }
            }
            let mut endpoints = HashSet::new();
            for (j, ep) in svc.endpoints.iter().enumerate() {
                let ep_p = format!("{p}.endpoints[{j}]");
                if let Some(addr) =
                    errs.check(format!("{ep_p}.address"), parse_socket_addr(&ep.address))
                {
                    if addr.port() == 0 {
                        errs.push(format!("{ep_p}.address"), "port 0 is not a port");
                    } else if !endpoints.insert(addr) {
                        errs.push(format!("{ep_p}.address"), format!("{addr} is listed twice"));
                    }
                }
                if let Some(id) = &ep.identity {
                    errs.check(format!("{ep_p}.identity"), check_spiffe(id));
                }
                for k in ep.labels.keys() {
                    if k.is_empty() {
                        errs.push(format!("{ep_p}.labels"), "label keys must not be empty");
                    }
                }
            }
        }
    }
}

fn check_spiffe(id: &str) -> Result<(), String> {
    match id.strip_prefix("spiffe://") {
        Some(rest) if rest.contains('/') && !rest.starts_with('/') => Ok(()),
        _ => Err(format!(
            "{id:?} is not a SPIFFE ID (spiffe://<trust-domain>/<path>)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
version: "1"
proxy: { workload: client, namespace: shop }
admin: { bind: "127.0.0.1:4191" }
listeners:
  - { name: outbound, direction: outbound, bind: "127.0.0.1:4140", target: { name: web, namespace: shop, port: 80 } }
  - { name: inbound, direction: inbound, bind: "127.0.0.1:4143", app: "127.0.0.1:8080", opaque_ports: [3306] }
services:
  - name: web
    namespace: shop
    addresses: ["10.96.0.10"]
    ports: [80]
    endpoints:
      - { address: "127.0.0.1:4143", meshed: true, workload: web, identity: "spiffe://cluster.local/ns/shop/sa/web", labels: { version: v1 } }
  - name: db
    namespace: shop
    addresses: ["10.96.0.11"]
    ports: [3306]
    protocol: opaque
    endpoints: [{ address: "10.0.0.9:3306" }]
"#;

    fn good() -> Snapshot {
        Snapshot::from_yaml(GOOD).unwrap()
    }

    #[test]
    fn a_good_snapshot_passes_and_round_trips_through_json() {
        let s = good();
        s.validate().unwrap();
        assert_eq!(Snapshot::from_json(&s.to_json()).unwrap(), s);
        assert_eq!(s.limits.detect_timeout.get().as_millis(), 1000);
        assert_eq!(s.services[1].protocol, crate::ServiceProtocol::Opaque);
    }

    #[test]
    fn every_error_is_listed_with_its_path() {
        let mut s = good();
        s.version = "".into();
        s.admin.bind = "localhost".into();
        s.listeners[0].target = Some(crate::ServiceRef {
            name: "nope".into(),
            namespace: "shop".into(),
            port: 80,
        });
        s.listeners[1].bind = "127.0.0.1:4140".into();
        s.listeners[1].app = Some("8080".into());
        s.services[0].endpoints[0].address = "10.0.0.1".into();
        s.services[0].endpoints[0].identity = Some("web".into());
        s.services[1].addresses[0] = "10.96.0.300".into();
        let ep = s.services[1].endpoints[0].clone();
        s.services[1].endpoints.push(ep);
        s.limits.max_header_bytes = 10;
        let errs = s.validate().unwrap_err();
        assert_eq!(
            errs.paths(),
            vec![
                "version",
                "admin.bind",
                "limits.max_header_bytes",
                "services[0].endpoints[0].address",
                "services[0].endpoints[0].identity",
                "services[1].addresses[0]",
                "services[1].endpoints[1].address",
                "listeners[0].target",
                "listeners[1].bind",
                "listeners[1].app",
            ],
            "{errs}"
        );
        let text = errs.to_string();
        assert!(text.starts_with("invalid snapshot (10 errors):"), "{text}");
        assert!(
            text.contains("services[0].endpoints[0].address: \"10.0.0.1\" is not an IP:port"),
            "{text}"
        );
        assert!(
            text.contains("listeners[1].bind: 127.0.0.1:4140 is also bound by listeners[0].bind"),
            "{text}"
        );
        assert!(
            text.contains("services[1].endpoints[1].address: 10.0.0.9:3306 is listed twice"),
            "{text}"
        );
        assert!(text.contains("no service nope.shop with port 80"), "{text}");
    }

    #[test]
    fn direction_specific_fields_are_refused_on_the_wrong_listener() {
        let mut s = good();
        s.listeners[0].app = Some("127.0.0.1:1".into());
        s.listeners[0].opaque_ports = vec![1];
        s.listeners[1].target = s.listeners[0].target.clone();
        s.listeners[1].opaque_ports = vec![0];
        let errs = s.validate().unwrap_err();
        assert_eq!(
            errs.paths(),
            vec![
                "listeners[0].app",
                "listeners[0].opaque_ports",
                "listeners[1].target",
                "listeners[1].opaque_ports[0]",
            ]
        );
    }

    #[test]
    fn service_keys_and_virtual_addresses_must_be_unique() {
        let mut s = good();
        let mut dup = s.services[0].clone();
        dup.addresses = vec!["10.96.0.10".into()];
        s.services.push(dup);
        s.services[0].ports = vec![80, 80, 0];
        let errs = s.validate().unwrap_err();
        assert_eq!(
            errs.paths(),
            vec![
                "services[0].ports[1]",
                "services[0].ports[2]",
                "services[2].ports[0]",
                "services[2].addresses[0]",
            ],
            "{errs}"
        );
        assert!(errs
            .to_string()
            .contains("web.shop port 80 is already defined by services[0]"));
        assert!(errs
            .to_string()
            .contains("10.96.0.10:80 also belongs to services[0]"));
    }

    #[test]
    fn empty_names_and_zero_limits_are_refused() {
        let mut s = good();
        s.proxy.workload = " ".into();
        s.proxy.namespace = "".into();
        s.listeners[1].name = "outbound".into();
        s.services[0].name = "".into();
        s.services[1].ports.clear();
        s.limits.max_connections = 0;
        s.limits.detect_timeout = crate::Duration::from_millis(0);
        let errs = s.validate().unwrap_err();
        assert_eq!(
            errs.paths(),
            vec![
                "proxy.workload",
                "proxy.namespace",
                "limits.max_connections",
                "limits.detect_timeout",
                "services[0].name",
                "services[1].ports",
                "listeners[0].target",
                "listeners[1].name",
            ],
            "{errs}"
        );
    }

    #[test]
    fn unknown_fields_and_bad_syntax_are_parse_errors() {
        let err = Snapshot::from_yaml("version: '1'\nlisteners: []\nroutez: []\n").unwrap_err();
        assert!(err.to_string().contains("routez"), "{err}");
        let err =
            Snapshot::from_yaml("version: '1'\nlimits: { detect_timeout: 10 }\n").unwrap_err();
        assert!(err.to_string().contains("has no unit"), "{err}");
        let err = Snapshot::from_yaml("version: [").unwrap_err();
        assert!(
            err.to_string().starts_with("invalid YAML snapshot"),
            "{err}"
        );
        let err = Snapshot::from_json("{\"version\": 1}").unwrap_err();
        assert!(err.to_string().contains("invalid type"), "{err}");
    }

    #[test]
    fn spiffe_ids_need_a_trust_domain_and_a_path() {
        assert!(check_spiffe("spiffe://cluster.local/ns/a/sa/b").is_ok());
        assert!(check_spiffe("spiffe://cluster.local").is_err());
        assert!(check_spiffe("spiffe:///ns/a").is_err());
        assert!(check_spiffe("https://x/y").is_err());
    }
}
