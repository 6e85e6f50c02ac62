//! Snapshot validation: every problem, each with the path of the field at fault.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;

use crate::policy::{
    HeaderOperations, Headers, HttpMatch, HttpRoute, Percent, RetryOn, StringMatch, TlsMode,
    TokenBucket, TrafficPolicy, GRPC_CODE_NAMES,
};
use crate::snapshot::{parse_ip, parse_socket_addr};
use crate::{Direction, Service, Snapshot};

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
/// The most header fields a request head may be allowed (each takes parser
/// slots on every request, whatever its size).
const MAX_HEADER_COUNT: u32 = 10_000;

impl Snapshot {
    /// Port-level mTLS modes name real ports; authorization policies:
    /// ports are numbers, paths are paths or patterns, no value is empty.
    fn validate_inbound(&self, errs: &mut Errors) {
        if self.inbound.mtls.ports.contains_key(&0) {
            errs.push("inbound.mtls.ports", "0 is not a port number (1-65535)");
        }
        for (i, policy) in self.inbound.authorization.iter().enumerate() {
            let p = format!("inbound.authorization[{i}]");
            if policy.name.trim().is_empty() {
                errs.push(format!("{p}.name"), "must not be empty");
            }
            for (j, rule) in policy.rules.iter().enumerate() {
                let r = format!("{p}.rules[{j}]");
                for (k, f) in rule.from.iter().enumerate() {
                    let s = &f.source;
                    for (field, values) in [
                        ("principals", &s.principals),
                        ("notPrincipals", &s.not_principals),
                        ("namespaces", &s.namespaces),
                        ("notNamespaces", &s.not_namespaces),
                    ] {
                        for (l, v) in values.iter().enumerate() {
                            if v.is_empty() {
                                errs.push(
                                    format!("{r}.from[{k}].source.{field}[{l}]"),
                                    "must not be empty",
                                );
                            }
                        }
                    }
                }
                for (k, t) in rule.to.iter().enumerate() {
                    let o = &t.operation;
                    let at = format!("{r}.to[{k}].operation");
                    for (field, values) in [("ports", &o.ports), ("notPorts", &o.not_ports)] {
                        for (l, v) in values.iter().enumerate() {
                            if !v.parse::<u16>().is_ok_and(|n| n > 0) {
                                errs.push(
                                    format!("{at}.{field}[{l}]"),
                                    format!("{v:?} is not a port number (1-65535)"),
                                );
                            }
                        }
                    }
                    for (field, values) in [("paths", &o.paths), ("notPaths", &o.not_paths)] {
                        for (l, v) in values.iter().enumerate() {
                            if !(v.starts_with('/') || v.starts_with('*')) {
                                errs.push(
                                    format!("{at}.{field}[{l}]"),
                                    format!(
                                        "{v:?} is not a path: start it with / (or * for a suffix)"
                                    ),
                                );
                            }
                        }
                    }
                    for (field, values) in [("methods", &o.methods), ("notMethods", &o.not_methods)]
                    {
                        for (l, v) in values.iter().enumerate() {
                            if v.is_empty() {
                                errs.push(format!("{at}.{field}[{l}]"), "must not be empty");
                            }
                        }
                    }
                }
            }
        }
    }

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
        if !(1..=MAX_HEADER_COUNT).contains(&l.max_header_count) {
            errs.push(
                "limits.max_header_count",
                format!(
                    "{} is out of range (1..={MAX_HEADER_COUNT})",
                    l.max_header_count
                ),
            );
        }
        for (name, n) in [
            (
                "http2_max_concurrent_streams",
                l.http2_max_concurrent_streams,
            ),
            (
                "http2_max_pending_accept_reset_streams",
                l.http2_max_pending_accept_reset_streams,
            ),
            (
                "http2_max_local_error_reset_streams",
                l.http2_max_local_error_reset_streams,
            ),
            (
                "http2_max_control_frames_per_second",
                l.http2_max_control_frames_per_second,
            ),
        ] {
            if n == 0 {
                errs.push(format!("limits.{name}"), "must be at least 1");
            }
        }
        for (name, d) in [
            ("header_read_timeout", l.header_read_timeout),
            ("detect_timeout", l.detect_timeout),
            ("connect_timeout", l.connect_timeout),
            ("idle_timeout", l.idle_timeout),
            ("tcp_idle_timeout", l.tcp_idle_timeout),
        ] {
            if d.get().is_zero() {
                errs.push(format!("limits.{name}"), "must be greater than zero");
            }
        }

        if let Some((i, u)) = self.http.bad_upgrade() {
            errs.push(
                format!("http.upgrades[{i}]"),
                format!("{u:?} is not an Upgrade protocol name (RFC 9110 §7.8)"),
            );
        }

        self.validate_services(&mut errs);
        self.validate_policies(&mut errs);
        self.validate_listeners(&mut errs, admin);
        self.validate_inbound(&mut errs);

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
                    if !lis.rate_limits.is_empty() {
                        errs.push(
                            format!("{p}.rate_limits"),
                            "rate limits apply on inbound listeners (outbound: a route's localRateLimit)",
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
                    let mut limited = HashSet::new();
                    for (j, rl) in lis.rate_limits.iter().enumerate() {
                        let rp = format!("{p}.rate_limits[{j}]");
                        if rl.port == Some(0) {
                            errs.push(format!("{rp}.port"), "port 0 is not a port");
                        } else if !limited.insert(rl.port) {
                            errs.push(
                                format!("{rp}.port"),
                                match rl.port {
                                    Some(port) => format!("port {port} has another rate limit"),
                                    None => "only one rate limit may omit the port".to_string(),
                                },
                            );
                        }
                        check_bucket(errs, &format!("{rp}.token_bucket"), &rl.token_bucket);
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

impl Snapshot {
    /// Routes, subsets and traffic policies of every service.
    fn validate_policies(&self, errs: &mut Errors) {
        for (i, svc) in self.services.iter().enumerate() {
            let p = format!("services[{i}]");
            let mut subsets = HashSet::new();
            for (j, sub) in svc.subsets.iter().enumerate() {
                if sub.name.trim().is_empty() {
                    errs.push(format!("{p}.subsets[{j}].name"), "must not be empty");
                } else if !subsets.insert(sub.name.as_str()) {
                    errs.push(
                        format!("{p}.subsets[{j}].name"),
                        format!("subset {:?} is defined twice", sub.name),
                    );
                }
            }
            if let Some(tp) = &svc.traffic_policy {
                check_traffic_policy(errs, &format!("{p}.trafficPolicy"), tp);
            }
            let mut names = HashSet::new();
            for (j, route) in svc.http.iter().enumerate() {
                let rp = format!("{p}.http[{j}]");
                if let Some(n) = &route.name {
                    if n.trim().is_empty() {
                        errs.push(format!("{rp}.name"), "must not be empty when given");
                    } else if !names.insert(n.as_str()) {
                        errs.push(
                            format!("{rp}.name"),
                            format!("route name {n:?} is used twice in this service"),
                        );
                    }
                }
                self.check_route(errs, &rp, svc, route);
            }
        }
    }

    fn check_route(&self, errs: &mut Errors, p: &str, svc: &Service, route: &HttpRoute) {
        for (k, m) in route.matches.iter().enumerate() {
            check_match(errs, &format!("{p}.match[{k}]"), m);
        }
        let several = route.route.len() > 1;
        let mut total: u64 = 0;
        for (k, rd) in route.route.iter().enumerate() {
            let dp = format!("{p}.route[{k}]");
            match rd.weight {
                Some(w) => total += u64::from(w),
                None if several => errs.push(
                    format!("{dp}.weight"),
                    "required when a route has several destinations",
                ),
                None => total += 100,
            }
            if let Some(h) = &rd.headers {
                check_headers(errs, &format!("{dp}.headers"), h);
            }
            let d = &rd.destination;
            let (name, namespace) = match d.host.split_once('.') {
                Some((n, ns)) => (n, ns),
                None => (d.host.as_str(), svc.namespace.as_str()),
            };
            let ports: Vec<u16> = match d.port {
                Some(port) => vec![port.number],
                None => svc.ports.clone(),
            };
            let mut target = None;
            for port in ports {
                let found = self.services.iter().find(|s| {
                    s.name == name && s.namespace == namespace && s.ports.contains(&port)
                });
                match found {
                    Some(s) => target = Some(s),
                    None => {
                        let hint = if d.port.is_none() {
                            " (the port clients dial here; set destination.port)"
                        } else {
                            ""
                        };
                        errs.push(
                            format!("{dp}.destination"),
                            format!("no service {name}.{namespace} with port {port} in this snapshot{hint}"),
                        );
                        target = None;
                        break;
                    }
                }
            }
            if let (Some(t), Some(subset)) = (target, &d.subset) {
                if !t.subsets.iter().any(|s| &s.name == subset) {
                    errs.push(
                        format!("{dp}.destination.subset"),
                        format!("service {name}.{namespace} has no subset {subset:?}"),
                    );
                }
            }
        }
        if !route.route.is_empty() && total == 0 {
            errs.push(format!("{p}.route"), "the weights add up to 0");
        }
        if let Some(d) = &route.direct_response {
            if !route.route.is_empty() {
                errs.push(
                    format!("{p}.directResponse"),
                    "a route answers directly or sends to destinations, not both",
                );
            }
            if !(200..=599).contains(&d.status) {
                errs.push(
                    format!("{p}.directResponse.status"),
                    format!("{} is not an HTTP status from 200 to 599", d.status),
                );
            }
        }
        if let Some(r) = &route.retries {
            if let Some(t) = r.per_try_timeout {
                if t.get().is_zero() {
                    errs.push(
                        format!("{p}.retries.perTryTimeout"),
                        "must be greater than zero",
                    );
                }
            }
            if let Some(on) = &r.retry_on {
                errs.check(format!("{p}.retries.retryOn"), RetryOn::parse_list(on));
            }
        }
        if let Some(f) = &route.fault {
            if let Some(d) = &f.delay {
                check_percent(errs, &format!("{p}.fault.delay.percentage"), d.percentage);
                if let Some(pct) = d.percent.filter(|pct| *pct > 100) {
                    errs.push(
                        format!("{p}.fault.delay.percent"),
                        format!("{pct} is not a percentage in 0..=100"),
                    );
                }
            }
            if let Some(a) = &f.abort {
                let ap = format!("{p}.fault.abort");
                match (a.http_status, &a.grpc_status) {
                    (Some(code), None) => {
                        if !(200..=599).contains(&code) {
                            errs.push(
                                format!("{ap}.httpStatus"),
                                format!("{code} is not an HTTP status in 200..=599"),
                            );
                        }
                    }
                    (None, Some(name)) => {
                        if !GRPC_CODE_NAMES[1..].contains(&name.as_str()) {
                            errs.push(
                                format!("{ap}.grpcStatus"),
                                format!(
                                    "{name:?} is not a gRPC error code name (e.g. UNAVAILABLE)"
                                ),
                            );
                        }
                    }
                    _ => errs.push(ap.clone(), "needs exactly one of httpStatus, grpcStatus"),
                }
                check_percent(errs, &format!("{ap}.percentage"), a.percentage);
            }
        }
        if let Some(rw) = &route.rewrite {
            if let Some(uri) = &rw.uri {
                if !uri.starts_with('/') || uri.chars().any(|c| c.is_whitespace() || c.is_control())
                {
                    errs.push(
                        format!("{p}.rewrite.uri"),
                        format!("{uri:?} is not an absolute path"),
                    );
                }
            }
            if let Some(a) = &rw.authority {
                if a.is_empty()
                    || a.chars()
                        .any(|c| c.is_whitespace() || c.is_control() || c == '/')
                {
                    errs.push(
                        format!("{p}.rewrite.authority"),
                        format!("{a:?} is not an authority (host[:port])"),
                    );
                }
            }
        }
        if let Some(h) = &route.headers {
            check_headers(errs, &format!("{p}.headers"), h);
        }
        if let Some(b) = &route.local_rate_limit {
            check_bucket(errs, &format!("{p}.localRateLimit"), b);
        }
    }
}

fn check_match(errs: &mut Errors, p: &str, m: &HttpMatch) {
    for (field, sm) in [
        ("uri", &m.uri),
        ("method", &m.method),
        ("authority", &m.authority),
    ] {
        if let Some(sm) = sm {
            if check_string_match(errs, &format!("{p}.{field}"), sm) == 0 {
                errs.push(format!("{p}.{field}"), "needs one of exact, prefix, regex");
            }
        }
    }
    if let Some(
        StringMatch { exact: Some(u), .. }
        | StringMatch {
            prefix: Some(u), ..
        },
    ) = &m.uri
    {
        if !u.starts_with('/') {
            errs.push(format!("{p}.uri"), format!("{u:?} does not start with /"));
        }
    }
    for (name, sm) in &m.headers {
        let hp = format!("{p}.headers.{name}");
        if let Err(e) = check_header_name(name) {
            errs.push(hp.clone(), e);
        }
        check_string_match(errs, &hp, sm);
    }
    for (k, g) in m.gateways.iter().enumerate() {
        if let Err(e) = check_gateway(g) {
            errs.push(format!("{p}.gateways[{k}]"), e);
        }
    }
}

/// The one gateway name this mesh knows: Istio's reserved `mesh` (every
/// sidecar). There are no gateways.
pub const MESH_GATEWAY: &str = "mesh";

/// Checks a `gateways` entry (a VirtualService's or a match block's).
pub fn check_gateway(name: &str) -> Result<(), String> {
    if name == MESH_GATEWAY {
        Ok(())
    } else {
        Err(format!(
            "{name:?}: gateways are not supported; the only gateway is \"{MESH_GATEWAY}\" \
             (every sidecar, also what an absent list means)"
        ))
    }
}

/// Checks a `StringMatch` and returns how many kinds it sets.
fn check_string_match(errs: &mut Errors, p: &str, m: &StringMatch) -> usize {
    let set = [m.exact.is_some(), m.prefix.is_some(), m.regex.is_some()]
        .iter()
        .filter(|s| **s)
        .count();
    if set > 1 {
        errs.push(p, "set only one of exact, prefix, regex");
    }
    if let Some(re) = &m.regex {
        if let Err(e) = compile_full_match(re) {
            errs.push(format!("{p}.regex"), format!("invalid regex {re:?}: {e}"));
        }
    }
    set
}

/// Compiles `re` so that it must match a whole value (Envoy's and Istio's
/// regex semantics).
pub fn compile_full_match(re: &str) -> Result<regex::Regex, String> {
    regex::RegexBuilder::new(&format!("^(?:{re})$"))
        .size_limit(1 << 20)
        .build()
        .map_err(|e| match e {
            regex::Error::Syntax(s) => s
                .lines()
                .last()
                .unwrap_or("syntax error")
                .trim()
                .to_string(),
            other => other.to_string(),
        })
}

fn check_header_name(name: &str) -> Result<(), String> {
    const SEPARATORS: &str = "\"(),/:;<=>?@[\\]{}";
    if name.is_empty() {
        return Err("header names must not be empty".into());
    }
    if name.starts_with(':') {
        return Err(format!(
            "{name:?}: pseudo-headers cannot be matched or changed"
        ));
    }
    if name
        .chars()
        .any(|c| !c.is_ascii() || c.is_ascii_control() || c == ' ' || SEPARATORS.contains(c))
    {
        return Err(format!("{name:?} is not a valid header name"));
    }
    Ok(())
}

fn check_headers(errs: &mut Errors, p: &str, h: &Headers) {
    for (side, ops) in [("request", &h.request), ("response", &h.response)] {
        let Some(HeaderOperations { set, add, remove }) = ops else {
            continue;
        };
        for (op, map) in [("set", set), ("add", add)] {
            for (name, value) in map {
                let hp = format!("{p}.{side}.{op}.{name}");
                if let Err(e) = check_header_name(name) {
                    errs.push(hp.clone(), e);
                }
                if value.chars().any(|c| c == '\r' || c == '\n' || c == '\0') {
                    errs.push(hp, "header values must not contain CR, LF or NUL");
                }
            }
        }
        for (k, name) in remove.iter().enumerate() {
            if let Err(e) = check_header_name(name) {
                errs.push(format!("{p}.{side}.remove[{k}]"), e);
            }
        }
    }
}

fn check_percent(errs: &mut Errors, p: &str, v: Option<Percent>) {
    if let Some(Percent { value }) = v {
        if !(0.0..=100.0).contains(&value) {
            errs.push(p, format!("{value} is not a percentage in 0..=100"));
        }
    }
}

fn check_bucket(errs: &mut Errors, p: &str, b: &TokenBucket) {
    if b.max_tokens == 0 {
        errs.push(format!("{p}.maxTokens"), "must be at least 1");
    }
    if b.tokens_per_fill == 0 {
        errs.push(format!("{p}.tokensPerFill"), "must be at least 1");
    }
    if b.fill_interval.get().is_zero() {
        errs.push(format!("{p}.fillInterval"), "must be greater than zero");
    }
}

fn check_traffic_policy(errs: &mut Errors, p: &str, tp: &TrafficPolicy) {
    if let Some(lb) = &tp.load_balancer {
        if let Some(w) = lb.warmup_duration_secs {
            if w.get().is_zero() {
                errs.push(
                    format!("{p}.loadBalancer.warmupDurationSecs"),
                    "must be greater than zero (omit it to turn slow start off)",
                );
            }
        }
    }
    if let Some(tls) = &tp.tls {
        if let TlsMode::Simple | TlsMode::Mutual = tls.mode {
            errs.push(
                format!("{p}.tls.mode"),
                "SIMPLE and MUTUAL (TLS origination with your own certificates) are not \
                 supported; ISTIO_MUTUAL (the mesh's own mutual TLS) and DISABLE are",
            );
        }
    }
    if let Some(cp) = &tp.connection_pool {
        let limits = [
            (
                "tcp.maxConnections",
                cp.tcp.as_ref().and_then(|t| t.max_connections),
            ),
            (
                "http.http1MaxPendingRequests",
                cp.http.as_ref().and_then(|h| h.http1_max_pending_requests),
            ),
            (
                "http.http2MaxRequests",
                cp.http.as_ref().and_then(|h| h.http2_max_requests),
            ),
            (
                "http.maxRetries",
                cp.http.as_ref().and_then(|h| h.max_retries),
            ),
        ];
        for (field, v) in limits {
            if v == Some(0) {
                errs.push(
                    format!("{p}.connectionPool.{field}"),
                    "must be at least 1 (omit it for no limit)",
                );
            }
        }
        if let Some(t) = cp.tcp.as_ref().and_then(|t| t.connect_timeout) {
            if t.get().is_zero() {
                errs.push(
                    format!("{p}.connectionPool.tcp.connectTimeout"),
                    "must be greater than zero",
                );
            }
        }
    }
    if let Some(od) = &tp.outlier_detection {
        let op = format!("{p}.outlierDetection");
        if od.max_ejection_percent > 100 {
            errs.push(
                format!("{op}.maxEjectionPercent"),
                format!("{} is more than 100", od.max_ejection_percent),
            );
        }
        if od.base_ejection_time.get().is_zero() {
            errs.push(
                format!("{op}.baseEjectionTime"),
                "must be greater than zero",
            );
        }
        if od.interval.get().is_zero() {
            errs.push(format!("{op}.interval"), "must be greater than zero");
        }
    }
}

/// The one SPIFFE parser ([`crate::spiffe::SpiffeId`]): what validates here
/// is what the proxy holds a peer to.
fn check_spiffe(id: &str) -> Result<(), String> {
    id.parse::<crate::spiffe::SpiffeId>()
        .map(drop)
        .map_err(|e| e.to_string())
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

    #[test]
    fn a_port_level_mtls_mode_needs_a_real_port() {
        let mut s = good();
        s.inbound = serde_json::from_value(serde_json::json!({
            "mtls": { "mode": "STRICT", "ports": { "0": "PERMISSIVE", "8080": "PERMISSIVE" } }
        }))
        .unwrap();
        let e = s.validate().unwrap_err().to_string();
        assert!(
            e.contains("inbound.mtls.ports: 0 is not a port number"),
            "{e}"
        );
    }

    #[test]
    fn authorization_values_are_checked_with_their_paths() {
        let mut s = good();
        s.inbound = serde_json::from_value(serde_json::json!({
            "authorization": [{
                "name": "shop/x",
                "rules": [{
                    "from": [{ "source": { "principals": [""] } }],
                    "to": [{ "operation": { "ports": ["http", "0", "8080"], "paths": ["admin", "/ok", "*.png"], "methods": [""] } }]
                }]
            }]
        }))
        .unwrap();
        let e = s.validate().unwrap_err().to_string();
        for expected in [
            "inbound.authorization[0].rules[0].from[0].source.principals[0]: must not be empty",
            "inbound.authorization[0].rules[0].to[0].operation.ports[0]: \"http\" is not a port number",
            "inbound.authorization[0].rules[0].to[0].operation.ports[1]: \"0\" is not a port number",
            "inbound.authorization[0].rules[0].to[0].operation.paths[0]: \"admin\" is not a path",
            "inbound.authorization[0].rules[0].to[0].operation.methods[0]: must not be empty",
        ] {
            assert!(e.contains(expected), "{expected} missing from {e}");
        }
        assert!(
            !e.contains("ports[2]") && !e.contains("paths[1]") && !e.contains("paths[2]"),
            "{e}"
        );
    }

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
        s.limits.max_header_count = 0;
        let errs = s.validate().unwrap_err();
        assert_eq!(
            errs.paths(),
            vec![
                "version",
                "admin.bind",
                "limits.max_header_bytes",
                "limits.max_header_count",
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
        assert!(text.starts_with("invalid snapshot (11 errors):"), "{text}");
        assert!(
            text.contains("limits.max_header_count: 0 is out of range (1..=10000)"),
            "{text}"
        );
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
    fn zero_http2_limits_are_refused_by_name() {
        let mut s = good();
        s.limits.http2_max_concurrent_streams = 0;
        s.limits.http2_max_pending_accept_reset_streams = 0;
        s.limits.http2_max_local_error_reset_streams = 0;
        s.limits.http2_max_control_frames_per_second = 0;
        let errs = s.validate().unwrap_err();
        assert_eq!(
            errs.paths(),
            vec![
                "limits.http2_max_concurrent_streams",
                "limits.http2_max_pending_accept_reset_streams",
                "limits.http2_max_local_error_reset_streams",
                "limits.http2_max_control_frames_per_second",
            ],
            "{errs}"
        );
        assert!(errs.to_string().contains("must be at least 1"), "{errs}");
        // A snapshot that names none of them gets the defaults.
        let s = Snapshot::from_yaml("version: '1'\nlisteners: []\n").unwrap();
        assert_eq!(s.limits.http2_max_concurrent_streams, 100);
        assert_eq!(s.limits.http2_max_pending_accept_reset_streams, 20);
        assert_eq!(s.limits.http2_max_local_error_reset_streams, 1024);
        assert_eq!(s.limits.http2_max_control_frames_per_second, 100);
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
        // What the proxy could not hold a peer to never validates: the
        // old check took any path, and the proxy then dropped the ID,
        // which read as a plaintext hop to a meshed endpoint.
        let e = check_spiffe("spiffe://td/x/y").unwrap_err();
        assert!(e.contains("/ns/<namespace>/sa/<service-account>"), "{e}");
    }

    const ROUTED: &str = r#"
version: "1"
listeners:
  - name: inbound
    direction: inbound
    bind: "127.0.0.1:4143"
    app: "127.0.0.1:8080"
    rate_limits:
      - { port: 8080, token_bucket: { maxTokens: 10, fillInterval: 1s } }
      - { token_bucket: { maxTokens: 100, tokensPerFill: 10, fillInterval: 100ms } }
services:
  - name: reviews
    namespace: shop
    ports: [9080]
    subsets: [{ name: v1, labels: { version: v1 } }, { name: v2, labels: { version: v2 } }]
    trafficPolicy:
      loadBalancer: { simple: LEAST_REQUEST, warmupDurationSecs: 30s }
      connectionPool: { tcp: { maxConnections: 10 }, http: { http1MaxPendingRequests: 5, http2MaxRequests: 100 } }
      outlierDetection: { consecutive5xxErrors: 3, interval: 5s, baseEjectionTime: 10s, maxEjectionPercent: 50 }
    http:
      - name: jason
        match: [{ headers: { end-user: { exact: jason } } }, { uri: { regex: "/api/v[0-9]+/.*" } }]
        route: [{ destination: { host: reviews, subset: v2 } }]
        fault: { abort: { grpcStatus: UNAVAILABLE, percentage: { value: 5 } } }
      - route:
          - { destination: { host: reviews.shop, subset: v1, port: { number: 9080 } }, weight: 90 }
          - { destination: { host: ratings }, weight: 10 }
        retries: { attempts: 3, perTryTimeout: 1s, retryOn: "5xx,409" }
        localRateLimit: { maxTokens: 5, fillInterval: 1s }
  - name: ratings
    namespace: shop
    ports: [9080]
"#;

    #[test]
    fn routes_subsets_and_policies_validate() {
        let s = Snapshot::from_yaml(ROUTED).unwrap();
        s.validate().unwrap();
        assert_eq!(Snapshot::from_json(&s.to_json()).unwrap(), s);
    }

    #[test]
    fn every_policy_error_is_listed_with_its_path() {
        let mut s = Snapshot::from_yaml(ROUTED).unwrap();
        let svc = &mut s.services[0];
        svc.subsets.push(svc.subsets[0].clone());
        let tp = svc.traffic_policy.as_mut().unwrap();
        tp.outlier_detection.as_mut().unwrap().max_ejection_percent = 101;
        tp.connection_pool
            .as_mut()
            .unwrap()
            .tcp
            .as_mut()
            .unwrap()
            .max_connections = Some(0);
        let r0 = &mut svc.http[0];
        r0.matches[0].headers.get_mut("end-user").unwrap().prefix = Some("j".into());
        r0.matches[1].uri.as_mut().unwrap().regex = Some("(".into());
        r0.route[0].destination.subset = Some("v9".into());
        r0.fault
            .as_mut()
            .unwrap()
            .abort
            .as_mut()
            .unwrap()
            .grpc_status = Some("NOPE".into());
        let r1 = &mut svc.http[1];
        r1.name = Some("jason".into());
        r1.route[1].weight = None;
        r1.route[1].destination.host = "ratings.other".into();
        r1.retries.as_mut().unwrap().retry_on = Some("5xx,sometimes".into());
        r1.local_rate_limit.as_mut().unwrap().max_tokens = 0;
        s.listeners[0].rate_limits[1].port = Some(8080);
        let errs = s.validate().unwrap_err();
        assert_eq!(
            errs.paths(),
            vec![
                "services[0].subsets[2].name",
                "services[0].trafficPolicy.connectionPool.tcp.maxConnections",
                "services[0].trafficPolicy.outlierDetection.maxEjectionPercent",
                "services[0].http[0].match[0].headers.end-user",
                "services[0].http[0].match[1].uri.regex",
                "services[0].http[0].route[0].destination.subset",
                "services[0].http[0].fault.abort.grpcStatus",
                "services[0].http[1].name",
                "services[0].http[1].route[1].weight",
                "services[0].http[1].route[1].destination",
                "services[0].http[1].retries.retryOn",
                "services[0].http[1].localRateLimit.maxTokens",
                "listeners[0].rate_limits[1].port",
            ],
            "{errs}"
        );
        let text = errs.to_string();
        for needle in [
            "subset \"v1\" is defined twice",
            "set only one of exact, prefix, regex",
            "invalid regex \"(\"",
            "service reviews.shop has no subset \"v9\"",
            "no service ratings.other with port 9080 in this snapshot",
            "unknown retry condition \"sometimes\"",
            "port 8080 has another rate limit",
            "101 is more than 100",
        ] {
            assert!(text.contains(needle), "{needle:?} not in {text}");
        }
    }

    #[test]
    fn istio_task_fields_are_checked_with_their_paths() {
        let mut s = Snapshot::from_yaml(ROUTED).unwrap();
        let svc = &mut s.services[0];
        let tp = svc.traffic_policy.as_mut().unwrap();
        tp.tls = Some(crate::policy::ClientTls {
            mode: TlsMode::IstioMutual,
        });
        let cp = tp.connection_pool.as_mut().unwrap();
        let http = cp.http.as_mut().unwrap();
        http.max_requests_per_connection = Some(0);
        http.max_retries = Some(2);
        http.idle_timeout = Some(crate::Duration::from_secs(0));
        cp.tcp.as_mut().unwrap().connect_timeout = Some(crate::Duration::from_millis(250));
        svc.http[0].matches[0].gateways = vec!["mesh".into()];
        svc.http[0].matches[0].ignore_uri_case = true;
        svc.http[0].fault.as_mut().unwrap().delay = Some(crate::policy::FaultDelay {
            fixed_delay: crate::Duration::from_secs(7),
            percentage: None,
            percent: Some(100),
        });
        // maxRequestsPerConnection 0 and idleTimeout 0s mean "no limit".
        s.validate().unwrap();

        let svc = &mut s.services[0];
        let tp = svc.traffic_policy.as_mut().unwrap();
        tp.tls.as_mut().unwrap().mode = TlsMode::Simple;
        let cp = tp.connection_pool.as_mut().unwrap();
        cp.http.as_mut().unwrap().max_retries = Some(0);
        cp.tcp.as_mut().unwrap().connect_timeout = Some(crate::Duration::from_secs(0));
        svc.http[0].matches[0].gateways = vec!["mesh".into(), "bookinfo-gateway".into()];
        svc.http[0]
            .fault
            .as_mut()
            .unwrap()
            .delay
            .as_mut()
            .unwrap()
            .percent = Some(101);
        let errs = s.validate().unwrap_err();
        assert_eq!(
            errs.paths(),
            vec![
                "services[0].trafficPolicy.tls.mode",
                "services[0].trafficPolicy.connectionPool.http.maxRetries",
                "services[0].trafficPolicy.connectionPool.tcp.connectTimeout",
                "services[0].http[0].match[0].gateways[1]",
                "services[0].http[0].fault.delay.percent",
            ],
            "{errs}"
        );
        let text = errs.to_string();
        for needle in [
            "SIMPLE and MUTUAL (TLS origination with your own certificates) are not supported",
            "\"bookinfo-gateway\": gateways are not supported",
            "101 is not a percentage",
        ] {
            assert!(text.contains(needle), "{needle:?} not in {text}");
        }
    }

    #[test]
    fn a_destination_without_port_needs_every_dialed_port() {
        let mut s = Snapshot::from_yaml(ROUTED).unwrap();
        s.services[0].ports.push(9443);
        let errs = s.validate().unwrap_err();
        assert_eq!(
            errs.paths(),
            vec!["services[0].http[1].route[1].destination"]
        );
        assert!(errs.to_string().contains("set destination.port"), "{errs}");
    }

    #[test]
    fn regexes_match_whole_values() {
        let re = compile_full_match("/api/v[0-9]+").unwrap();
        assert!(re.is_match("/api/v2"));
        assert!(!re.is_match("/api/v2/x"));
        assert!(!re.is_match("x/api/v2"));
        let re = compile_full_match("a|b").unwrap();
        assert!(re.is_match("a") && re.is_match("b") && !re.is_match("ab"));
    }

    #[test]
    fn header_names_are_checked() {
        assert!(check_header_name("x-user").is_ok());
        assert!(check_header_name(":path").is_err());
        assert!(check_header_name("a b").is_err());
        assert!(check_header_name("a:b").is_err());
        assert!(check_header_name("").is_err());
    }

    #[test]
    fn rate_limits_belong_to_inbound_listeners() {
        let mut s = good();
        s.listeners[0].rate_limits = s.listeners[1].rate_limits.clone();
        s.listeners[0]
            .rate_limits
            .push(crate::policy::PortRateLimit {
                port: None,
                token_bucket: TokenBucket {
                    max_tokens: 1,
                    tokens_per_fill: 1,
                    fill_interval: crate::Duration::from_secs(1),
                },
            });
        let errs = s.validate().unwrap_err();
        assert_eq!(errs.paths(), vec!["listeners[0].rate_limits"]);
    }
}
