//! `outrigger proxy-config`: the configuration in force in one proxy, read
//! from its admin `/config` (the snapshot in force, as the proxy holds it),
//! `/endpoints` (each endpoint's live state: ejected or not and until when,
//! requests in flight, latency estimate, slow start) and `/metrics` (the
//! certificate's expiry), shown as tables per view or whole as JSON/YAML.
//!
//! [`render`] and [`view_value`] are pure; [`fetch`] and [`run`] are the edge.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use outrigger_api::authz::{AuthorizationAction, AuthorizationPolicy};
use outrigger_api::health::{EndpointHealth, EndpointState, EndpointsHealth, ENDPOINTS_PATH};
use outrigger_api::policy::{HttpMatch, HttpRoute, StringMatch};
use outrigger_api::Snapshot;
use serde::Serialize;

use crate::cluster::{ClusterArgs, ClusterError};
use crate::output::{self, table, Format, OutputError};
use crate::prom;
use crate::proxy_admin::{self, Admin, AdminError};

/// Which part of the configuration to show.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum View {
    /// Each service's HTTP routes: match, destinations and weights, timeout, retries.
    Routes,
    /// Each service's endpoints: address, labels and subsets, meshed, ejections.
    Endpoints,
    /// The proxy's SPIFFE identity and its certificate's expiry.
    Identity,
    /// The inbound side: mutual TLS mode and authorization policies.
    Policies,
    /// All of the above.
    #[default]
    All,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ArgumentsError {
    #[error("name the pod: outrigger proxy-config POD [VIEW] (or --local ADDR [VIEW])")]
    NoPod,
    #[error("{0:?} is not a view: say routes, endpoints, identity, policies or all")]
    View(String),
    #[error("with --local, give the view only (got {0:?})")]
    LocalTakesAView(Vec<String>),
}

/// `POD [VIEW]`, or with `--local` just `[VIEW]`: the pod (without a
/// `pod/` prefix) and the view.
pub fn arguments(args: &[String], local: bool) -> Result<(Option<String>, View), ArgumentsError> {
    let view = |s: Option<&String>| match s {
        None => Ok(View::All),
        Some(s) => <View as clap::ValueEnum>::from_str(s, true)
            .map_err(|_| ArgumentsError::View(s.clone())),
    };
    if local {
        if args.len() > 1 {
            return Err(ArgumentsError::LocalTakesAView(args.to_vec()));
        }
        return Ok((None, view(args.first())?));
    }
    let pod = args.first().ok_or(ArgumentsError::NoPod)?;
    let pod = pod
        .strip_prefix("pod/")
        .or(pod.strip_prefix("pods/"))
        .unwrap_or(pod);
    Ok((Some(pod.to_string()), view(args.get(1))?))
}

/// What a proxy tells beyond its snapshot: from its `/metrics`, and each
/// endpoint's state from its `/endpoints`.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Live {
    /// When the certificate in use expires (Unix seconds); `None` before the
    /// first, or without one.
    pub cert_expiry_unix: Option<i64>,
    /// Service (`name.namespace`) → endpoints ejected right now.
    pub ejected: BTreeMap<String, u64>,
    /// Every endpoint's state; `None` from a proxy older than `/endpoints`.
    pub endpoints: Option<EndpointsHealth>,
}

impl Live {
    /// From a proxy's `/metrics` text.
    pub fn from_metrics(text: &str) -> Live {
        let mut live = Live::default();
        for s in prom::parse(text) {
            match s.name.as_str() {
                "outrigger_identity_cert_expiry_timestamp_seconds" if s.value > 0.0 => {
                    live.cert_expiry_unix = Some(s.value as i64);
                }
                "outrigger_outlier_ejected_endpoints" => {
                    live.ejected.insert(
                        s.label("destination_service").to_string(),
                        s.value.max(0.0) as u64,
                    );
                }
                _ => {}
            }
        }
        live
    }

    /// This endpoint's state, if the proxy told it.
    fn endpoint(
        &self,
        service: &outrigger_api::Service,
        address: &str,
    ) -> Option<(bool, &EndpointHealth)> {
        let s = self.endpoints.as_ref()?.services.iter().find(|s| {
            s.name == service.name && s.namespace == service.namespace && s.ports == service.ports
        })?;
        let e = s.endpoints.iter().find(|e| e.address == address)?;
        Some((s.outlier_detection, e))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(transparent)]
    Admin(#[from] AdminError),
    #[error("{at} answered /config with something that is not a proxy snapshot: {source}")]
    Snapshot {
        at: String,
        source: outrigger_api::ParseError,
    },
    #[error("{at} answered {ENDPOINTS_PATH} with something this CLI cannot read: {source}")]
    Endpoints {
        at: String,
        source: serde_json::Error,
    },
}

/// Reads the snapshot in force and the live state from one proxy, over one
/// connection.
pub async fn fetch(admin: &Admin) -> Result<(Snapshot, Live), FetchError> {
    let mut bodies = admin
        .get_all_found(&["/config", "/metrics", ENDPOINTS_PATH], &[ENDPOINTS_PATH])
        .await?;
    let endpoints = bodies.pop().flatten();
    let metrics = bodies.pop().flatten().unwrap_or_default();
    let config = bodies.pop().flatten().unwrap_or_default();
    let snapshot = Snapshot::from_json(&config).map_err(|source| FetchError::Snapshot {
        at: admin.describe(),
        source,
    })?;
    let mut live = Live::from_metrics(&metrics);
    live.endpoints = endpoints
        .map(|body| serde_json::from_str(&body))
        .transpose()
        .map_err(|source| FetchError::Endpoints {
            at: admin.describe(),
            source,
        })?;
    Ok((snapshot, live))
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyConfigError {
    #[error(transparent)]
    Arguments(#[from] ArgumentsError),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error("cannot read the configuration of the proxy at {at}: {source}")]
    Read { at: String, source: FetchError },
    #[error(
        "no pod {name} in namespace {namespace}: `kubectl get pods -n {namespace}` lists them \
         (or name another namespace with -n)"
    )]
    NoPod { namespace: String, name: String },
    #[error("cannot get pod {namespace}/{name}: {source} (may you get pods there?)")]
    GetPod {
        namespace: String,
        name: String,
        source: kube::Error,
    },
    #[error(
        "pod {namespace}/{name} has no {} container: is its namespace annotated \
         (kubectl annotate namespace {namespace} {}=enabled), and was the pod created after?",
        outrigger_injector::inject::PROXY_CONTAINER,
        outrigger_injector::annotations::INJECT
    )]
    NotMeshed { namespace: String, name: String },
    #[error(
        "pod {namespace}/{name} is {phase}, not Running: its proxy answers once it runs \
         (kubectl describe pod {name} -n {namespace} says why it does not)"
    )]
    NotRunning {
        namespace: String,
        name: String,
        phase: String,
    },
    #[error(transparent)]
    Output(#[from] OutputError),
    #[error("cannot write to stdout: {0}")]
    Stdout(#[from] std::io::Error),
}

/// `outrigger proxy-config`: `args` are `POD [VIEW]` (with `--local`,
/// `[VIEW]`). A pod is looked at first, so that one without a proxy, or
/// not running, says so before any port-forward is tried.
pub async fn run(
    cluster: &ClusterArgs,
    args: &[String],
    local: Option<std::net::SocketAddr>,
    format: Format,
) -> Result<(), ProxyConfigError> {
    let (pod, view) = arguments(args, local.is_some())?;
    let admin = match (local, pod) {
        (Some(addr), _) => Admin::Local(addr),
        (None, pod) => {
            let (client, namespace) = cluster.client_in().await?;
            let name = pod.unwrap_or_default();
            ready_for_port_forward(&client, &namespace, &name).await?;
            Admin::PortForward {
                client,
                namespace,
                name,
            }
        }
    };
    let (snapshot, live) = fetch(&admin)
        .await
        .map_err(|source| ProxyConfigError::Read {
            at: admin.describe(),
            source,
        })?;
    let text = match output::structured(format, &view_value(view, &snapshot, &live))? {
        Some(text) => text,
        None => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64);
            render(view, &snapshot, &live, now)
        }
    };
    Ok(output::print(&text)?)
}

/// The pod exists, runs an Outrigger proxy and is running; else why not.
async fn ready_for_port_forward(
    client: &kube::Client,
    namespace: &str,
    name: &str,
) -> Result<(), ProxyConfigError> {
    let api: kube::Api<k8s_openapi::api::core::v1::Pod> =
        kube::Api::namespaced(client.clone(), namespace);
    let pod = api
        .get_opt(name)
        .await
        .map_err(|source| ProxyConfigError::GetPod {
            namespace: namespace.into(),
            name: name.into(),
            source,
        })?
        .ok_or_else(|| ProxyConfigError::NoPod {
            namespace: namespace.into(),
            name: name.into(),
        })?;
    pod_problem(&pod, namespace, name).map_or(Ok(()), Err)
}

/// Why `pod` cannot be asked for its proxy's configuration, if it cannot.
fn pod_problem(
    pod: &k8s_openapi::api::core::v1::Pod,
    namespace: &str,
    name: &str,
) -> Option<ProxyConfigError> {
    if !proxy_admin::has_proxy(pod) {
        return Some(ProxyConfigError::NotMeshed {
            namespace: namespace.into(),
            name: name.into(),
        });
    }
    let phase = pod.status.as_ref().and_then(|s| s.phase.clone());
    match phase.as_deref() {
        Some("Running") => None,
        other => Some(ProxyConfigError::NotRunning {
            namespace: namespace.into(),
            name: name.into(),
            phase: other.unwrap_or("Unknown").into(),
        }),
    }
}

/// The tables for `view`; `now` (Unix seconds) says how far off expiry is.
pub fn render(view: View, snapshot: &Snapshot, live: &Live, now: i64) -> String {
    let mut out = String::new();
    let sections: &[View] = match view {
        View::All => &[
            View::Identity,
            View::Policies,
            View::Routes,
            View::Endpoints,
        ],
        one => std::slice::from_ref(match one {
            View::Routes => &View::Routes,
            View::Endpoints => &View::Endpoints,
            View::Identity => &View::Identity,
            _ => &View::Policies,
        }),
    };
    for (i, section) in sections.iter().enumerate() {
        if view == View::All {
            if i > 0 {
                out.push('\n');
            }
            let title = match section {
                View::Routes => "ROUTES",
                View::Endpoints => "ENDPOINTS",
                View::Identity => "IDENTITY",
                _ => "POLICIES",
            };
            let _ = writeln!(out, "# {title}");
        }
        out.push_str(&match section {
            View::Routes => routes(snapshot),
            View::Endpoints => endpoints(snapshot, live),
            View::Identity => identity(snapshot, live, now),
            _ => policies(snapshot),
        });
    }
    out
}

fn routes(snapshot: &Snapshot) -> String {
    let mut rows = Vec::new();
    for service in &snapshot.services {
        let name = format!("{}.{}", service.name, service.namespace);
        if service.http.is_empty() {
            rows.push(vec![
                name,
                "-".into(),
                "*".into(),
                format!("{} (its endpoints)", service.name),
                "-".into(),
                "-".into(),
            ]);
            continue;
        }
        for (i, route) in service.http.iter().enumerate() {
            rows.push(vec![
                name.clone(),
                // As the route metric label names it.
                route.name.clone().unwrap_or_else(|| format!("route-{i}")),
                route_match(&route.matches),
                destinations(route),
                route.timeout.map_or("-".into(), |t| t.to_string()),
                route.retries.as_ref().map_or("-".into(), |r| {
                    let mut s = format!("{} attempts", r.attempts);
                    if let Some(t) = r.per_try_timeout {
                        let _ = write!(s, ", {t} each");
                    }
                    if let Some(on) = &r.retry_on {
                        let _ = write!(s, ", on {on}");
                    }
                    s
                }),
            ]);
        }
    }
    if rows.is_empty() {
        return "no services\n".into();
    }
    table(
        &[
            "SERVICE",
            "ROUTE",
            "MATCH",
            "DESTINATIONS",
            "TIMEOUT",
            "RETRIES",
        ],
        &rows,
    )
}

fn string_match(m: &StringMatch) -> String {
    if let Some(v) = &m.exact {
        v.clone()
    } else if let Some(v) = &m.prefix {
        format!("{v}*")
    } else if let Some(v) = &m.regex {
        format!("~{v}")
    } else {
        "*".into()
    }
}

/// One match as `METHOD authority/path header=value`, alternatives by ` | `.
fn route_match(matches: &[HttpMatch]) -> String {
    if matches.is_empty() {
        return "*".into();
    }
    let one = |m: &HttpMatch| {
        let mut parts = Vec::new();
        if let Some(method) = &m.method {
            parts.push(string_match(method));
        }
        let mut target = String::new();
        if let Some(a) = &m.authority {
            target.push_str(&string_match(a));
        }
        if let Some(uri) = &m.uri {
            target.push_str(&string_match(uri));
        }
        if !target.is_empty() {
            parts.push(target);
        }
        for (name, value) in &m.headers {
            parts.push(format!("{name}={}", string_match(value)));
        }
        if parts.is_empty() {
            "*".to_string()
        } else {
            parts.join(" ")
        }
    };
    matches.iter().map(one).collect::<Vec<_>>().join(" | ")
}

fn destinations(route: &HttpRoute) -> String {
    if let Some(direct) = &route.direct_response {
        return format!("answer {}", direct.status);
    }
    let alone = route.route.len() == 1;
    // Weights are relative (an absent one is 100 alone, and validation
    // requires them when there are several): show the share of requests
    // each destination gets, as the proxy splits them.
    let total: u64 = route
        .route
        .iter()
        .map(|d| u64::from(d.weight.unwrap_or(0)))
        .sum();
    route
        .route
        .iter()
        .map(|d| {
            let mut s = d.destination.host.clone();
            if let Some(subset) = &d.destination.subset {
                let _ = write!(s, "/{subset}");
            }
            if let Some(port) = &d.destination.port {
                let _ = write!(s, ":{}", port.number);
            }
            if !alone {
                let w = u64::from(d.weight.unwrap_or(0));
                let _ = write!(s, " {}", share(w, total));
            }
            s
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// `w` of `total` as a percentage: whole when it is, else one decimal.
fn share(w: u64, total: u64) -> String {
    if total == 0 {
        return "0%".into();
    }
    if (w * 100).is_multiple_of(total) {
        return format!("{}%", w * 100 / total);
    }
    format!("{:.1}%", w as f64 * 100.0 / total as f64)
}

fn endpoints(snapshot: &Snapshot, live: &Live) -> String {
    let mut rows = Vec::new();
    for service in &snapshot.services {
        let name = format!("{}.{}", service.name, service.namespace);
        for ep in &service.endpoints {
            let subsets: Vec<&str> = service
                .subsets
                .iter()
                .filter(|s| s.labels.iter().all(|(k, v)| ep.labels.get(k) == Some(v)))
                .map(|s| s.name.as_str())
                .collect();
            let labels: Vec<String> = ep.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let mut row = vec![
                name.clone(),
                ep.address.clone(),
                ep.workload.clone().unwrap_or_else(|| "-".into()),
                or_dash(labels.join(",")),
                or_dash(subsets.join(",")),
                if ep.meshed { "yes" } else { "no" }.into(),
            ];
            row.extend(health_cells(live.endpoint(service, &ep.address)));
            rows.push(row);
        }
    }
    let mut out = if rows.is_empty() {
        "no endpoints\n".to_string()
    } else {
        table(
            &[
                "SERVICE",
                "ADDRESS",
                "WORKLOAD",
                "LABELS",
                "SUBSETS",
                "MESHED",
                "HEALTH",
                "EJECTED",
                "IN FLIGHT",
                "LATENCY",
            ],
            &rows,
        )
    };
    if live.endpoints.is_none() {
        // An older proxy: only how many are ejected, from its metrics.
        let _ = writeln!(
            out,
            "(health unknown: this proxy does not answer {ENDPOINTS_PATH}; it is older than this CLI)"
        );
        for (service, n) in live.ejected.iter().filter(|(_, n)| **n > 0) {
            let _ = writeln!(
                out,
                "{service}: {n} endpoint(s) ejected by outlier detection right now"
            );
        }
    }
    out
}

/// HEALTH, EJECTED, IN FLIGHT and LATENCY of one endpoint (with whether its
/// service has outlier detection); `?` where the proxy did not say.
fn health_cells(health: Option<(bool, &EndpointHealth)>) -> [String; 4] {
    let Some((detection, h)) = health else {
        return ["?".into(), "?".into(), "?".into(), "?".into()];
    };
    let state = match (h.state, h.warming) {
        (EndpointState::Healthy, Some(w)) => format!("WARMING {:.0}%", w * 100.0),
        (state, _) => state.as_str().to_string(),
    };
    let before = if h.ejections > 0 {
        format!(" ({}× so far)", h.ejections)
    } else {
        String::new()
    };
    let ejected = match h.state {
        _ if !detection => "-".to_string(),
        EndpointState::Healthy => format!("no{before}"),
        EndpointState::Ejected => format!(
            "{} left{before}",
            seconds(h.ejected_for_ms.unwrap_or_default())
        ),
        EndpointState::TrialDue | EndpointState::Trial => format!("time up{before}"),
    };
    [
        state,
        ejected,
        h.in_flight.to_string(),
        h.latency_ms
            .map_or("-".into(), |ms| format!("{}ms", output::millis(ms))),
    ]
}

/// A time left as kubectl prints ages: `0.4s` (under 10 s), `42s`, `90s`
/// (under 2 minutes), `3m5s`.
fn seconds(ms: u64) -> String {
    if ms < 10_000 {
        return format!("{:.1}s", ms as f64 / 1000.0);
    }
    let s = ms.div_ceil(1000);
    if s < 120 {
        format!("{s}s")
    } else {
        format!("{}m{}s", s / 60, s % 60)
    }
}

fn identity(snapshot: &Snapshot, live: &Live, now: i64) -> String {
    let proxy = &snapshot.proxy;
    let expiry = match live.cert_expiry_unix {
        Some(at) => format!("{} ({})", rfc3339(at), until(at - now)),
        None => "-".into(),
    };
    table(
        &["SPIFFE ID", "WORKLOAD", "NAMESPACE", "CERT EXPIRES"],
        &[vec![
            proxy
                .identity
                .clone()
                .unwrap_or_else(|| "none (plaintext)".into()),
            proxy.workload.clone(),
            proxy.namespace.clone(),
            expiry,
        ]],
    )
}

fn policies(snapshot: &Snapshot) -> String {
    let inbound = &snapshot.inbound;
    let mut out = format!("inbound mTLS: {}", inbound.mtls.mode.as_str());
    if !inbound.mtls.ports.is_empty() {
        let ports: Vec<String> = inbound
            .mtls
            .ports
            .iter()
            .map(|(p, m)| format!("{p} {}", m.as_str()))
            .collect();
        let _ = write!(out, " (ports: {})", ports.join(", "));
    }
    out.push('\n');
    if inbound.authorization.is_empty() {
        out.push_str("authorization: none (all callers allowed)\n");
        return out;
    }
    let rows: Vec<Vec<String>> = inbound
        .authorization
        .iter()
        .map(|p| vec![p.name.clone(), action(p), rules(p)])
        .collect();
    out.push_str(&table(&["AUTHORIZATION POLICY", "ACTION", "RULES"], &rows));
    out
}

fn action(p: &AuthorizationPolicy) -> String {
    match p.action {
        AuthorizationAction::Allow => "ALLOW",
        AuthorizationAction::Deny => "DENY",
    }
    .into()
}

fn rules(p: &AuthorizationPolicy) -> String {
    if p.rules.is_empty() {
        return match p.action {
            AuthorizationAction::Allow => "(none: matches nothing)".into(),
            AuthorizationAction::Deny => "(none: matches nothing)".into(),
        };
    }
    let list =
        |what: &str, v: &[String]| (!v.is_empty()).then(|| format!("{what}={}", v.join(",")));
    p.rules
        .iter()
        .map(|r| {
            let mut parts = Vec::new();
            for f in &r.from {
                let s = &f.source;
                parts.extend(list("principals", &s.principals));
                parts.extend(list("notPrincipals", &s.not_principals));
                parts.extend(list("namespaces", &s.namespaces));
                parts.extend(list("notNamespaces", &s.not_namespaces));
            }
            for t in &r.to {
                let o = &t.operation;
                parts.extend(list("ports", &o.ports));
                parts.extend(list("notPorts", &o.not_ports));
                parts.extend(list("methods", &o.methods));
                parts.extend(list("notMethods", &o.not_methods));
                parts.extend(list("paths", &o.paths));
                parts.extend(list("notPaths", &o.not_paths));
            }
            if parts.is_empty() {
                "any".to_string()
            } else {
                parts.join(" ")
            }
        })
        .collect::<Vec<_>>()
        .join(" | ")
}

/// The JSON/YAML of `view`: the parts of the snapshot it shows, and what is
/// live.
pub fn view_value(view: View, snapshot: &Snapshot, live: &Live) -> serde_json::Value {
    use serde_json::json;
    let services = |f: &dyn Fn(&outrigger_api::Service) -> serde_json::Value| {
        snapshot.services.iter().map(f).collect::<Vec<_>>()
    };
    match view {
        View::Routes => json!({ "services": services(&|s| json!({
            "name": s.name, "namespace": s.namespace, "http": s.http,
        })) }),
        View::Endpoints => json!({ "services": services(&|s| json!({
            "name": s.name, "namespace": s.namespace,
            "endpoints": s.endpoints.iter().map(|e| {
                let mut v = serde_json::to_value(e).unwrap_or_default();
                if let Some((_, h)) = live.endpoint(s, &e.address) {
                    v["health"] = serde_json::to_value(h).unwrap_or_default();
                }
                v
            }).collect::<Vec<_>>(),
            "subsets": s.subsets,
            "outlier_detection": s.traffic_policy.as_ref()
                .is_some_and(|t| t.outlier_detection.is_some()),
            "ejected": live.ejected.get(&format!("{}.{}", s.name, s.namespace)).copied().unwrap_or(0),
        })) }),
        View::Identity => json!({
            "identity": snapshot.proxy.identity,
            "workload": snapshot.proxy.workload,
            "namespace": snapshot.proxy.namespace,
            "certExpiryUnix": live.cert_expiry_unix,
        }),
        View::Policies => json!({ "inbound": snapshot.inbound }),
        View::All => json!({
            "snapshot": serde_json::from_str::<serde_json::Value>(&snapshot.to_json())
                .unwrap_or_default(),
            "live": live,
        }),
    }
}

fn or_dash(s: String) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s
    }
}

/// `in 29d 23h`, `in 5m`, or `EXPIRED 2h ago`.
fn until(seconds: i64) -> String {
    let span = |s: i64| {
        let (d, h, m) = (s / 86_400, s % 86_400 / 3600, s % 3600 / 60);
        if d > 0 {
            format!("{d}d {h}h")
        } else if h > 0 {
            format!("{h}h {m}m")
        } else {
            format!("{m}m")
        }
    };
    if seconds >= 0 {
        format!("in {}", span(seconds))
    } else {
        format!("EXPIRED {} ago", span(-seconds))
    }
}

pub use outrigger_runtime::timestamp::rfc3339;

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot() -> Snapshot {
        Snapshot::from_yaml(
            r#"
version: "7"
proxy: { workload: client, namespace: shop, identity: "spiffe://cluster.local/ns/shop/sa/client" }
listeners:
  - { name: outbound, direction: outbound, bind: "127.0.0.1:0", target: { name: reviews, namespace: shop, port: 80 } }
services:
  - name: reviews
    namespace: shop
    ports: [80]
    endpoints:
      - { address: "10.0.0.1:9080", labels: { version: v1 }, workload: reviews-v1, meshed: true }
      - { address: "10.0.0.2:9080", labels: { version: v2 }, workload: reviews-v2, meshed: false }
    subsets:
      - { name: v1, labels: { version: v1 } }
      - { name: v2, labels: { version: v2 } }
    http:
      - name: jason
        match: [{ headers: { end-user: { exact: jason } } }]
        route: [{ destination: { host: reviews, subset: v2 } }]
      - match: [{ uri: { prefix: /api }, method: { exact: GET } }]
        route:
          - { destination: { host: reviews, subset: v1 }, weight: 90 }
          - { destination: { host: reviews, subset: v2 }, weight: 10 }
        timeout: 2s
        retries: { attempts: 3, perTryTimeout: 500ms, retryOn: 5xx }
  - name: ratings
    namespace: shop
    ports: [9080]
inbound:
  mtls: { mode: STRICT, ports: { 8081: PERMISSIVE } }
  authorization:
    - name: only-frontend
      action: ALLOW
      rules:
        - from: [{ source: { principals: ["cluster.local/ns/shop/sa/frontend"] } }]
          to: [{ operation: { methods: [GET] } }]
"#,
        )
        .expect("a valid snapshot")
    }

    #[test]
    fn each_view_renders_its_table() {
        // From a proxy older than /endpoints: the count of the metrics.
        let live = Live {
            cert_expiry_unix: Some(1_800_000_000),
            ejected: [("reviews.shop".to_string(), 1)].into(),
            endpoints: None,
        };
        let now = 1_800_000_000 - 86_400 - 3600 * 2;
        let s = snapshot();
        assert_eq!(
            render(View::Routes, &s, &live, now),
            "SERVICE       ROUTE    MATCH           DESTINATIONS                    TIMEOUT  RETRIES\n\
             reviews.shop  jason    end-user=jason  reviews/v2                      -        -\n\
             reviews.shop  route-1  GET /api*       reviews/v1 90%, reviews/v2 10%  2s       3 attempts, 500ms each, on 5xx\n\
             ratings.shop  -        *               ratings (its endpoints)         -        -\n"
        );
        let all = render(View::All, &s, &live, now);
        for line in [
            "# IDENTITY\nSPIFFE ID                                 WORKLOAD  NAMESPACE  CERT EXPIRES\n",
            "spiffe://cluster.local/ns/shop/sa/client  client    shop       2027-01-15T08:00:00Z (in 1d 2h)\n",
            "inbound mTLS: STRICT (ports: 8081 PERMISSIVE)\n",
            "only-frontend         ALLOW   principals=cluster.local/ns/shop/sa/frontend methods=GET\n",
            "reviews.shop  10.0.0.2:9080  reviews-v2  version=v2  v2       no      ?       ?        ?          ?\n",
            "(health unknown: this proxy does not answer /endpoints; it is older than this CLI)\n",
            "reviews.shop: 1 endpoint(s) ejected by outlier detection right now\n",
        ] {
            assert!(all.contains(line), "{line:?} not in:\n{all}");
        }
    }

    #[test]
    fn each_endpoint_shows_its_health_ejection_and_load() {
        use outrigger_api::health::ServiceHealth;
        let endpoint = |address: &str, state, left: Option<u64>, ejections| EndpointHealth {
            address: address.into(),
            state,
            ejected_for_ms: left,
            ejected_until_unix_ms: left.map(|l| 1_800_000_000_000 + l),
            ejections,
            consecutive_5xx: 0,
            consecutive_gateway_errors: 0,
            in_flight: 0,
            latency_ms: None,
            warming: None,
        };
        let mut measured = endpoint("10.0.0.2:9080", EndpointState::Healthy, None, 2);
        measured.in_flight = 3;
        measured.latency_ms = Some(2.456);
        measured.warming = Some(0.4);
        let live = Live {
            endpoints: Some(EndpointsHealth {
                services: vec![
                    ServiceHealth {
                        name: "reviews".into(),
                        namespace: "shop".into(),
                        ports: vec![80],
                        outlier_detection: true,
                        endpoints: vec![
                            endpoint("10.0.0.1:9080", EndpointState::Ejected, Some(25_400), 1),
                            measured,
                        ],
                    },
                    // Another service's entry of the same name is not this one.
                    ServiceHealth {
                        name: "reviews".into(),
                        namespace: "shop".into(),
                        ports: vec![81],
                        outlier_detection: false,
                        endpoints: vec![endpoint("10.0.0.1:9080", EndpointState::Healthy, None, 0)],
                    },
                ],
            }),
            ..Live::default()
        };
        let table = render(View::Endpoints, &snapshot(), &live, 0);
        assert_eq!(
            table,
            "SERVICE       ADDRESS        WORKLOAD    LABELS      SUBSETS  MESHED  HEALTH       EJECTED               IN FLIGHT  LATENCY\n\
             reviews.shop  10.0.0.1:9080  reviews-v1  version=v1  v1       yes     EJECTED      26s left (1× so far)  0          -\n\
             reviews.shop  10.0.0.2:9080  reviews-v2  version=v2  v2       no      WARMING 40%  no (2× so far)        3          2.46ms\n"
        );
        let json = view_value(View::Endpoints, &snapshot(), &live);
        let first = &json["services"][0]["endpoints"][0];
        assert_eq!(first["address"], "10.0.0.1:9080");
        assert_eq!(first["health"]["state"], "ejected");
        assert_eq!(first["health"]["ejected_for_ms"], 25_400);
        assert_eq!(json["services"][1]["endpoints"], serde_json::json!([]));
        assert_eq!(seconds(400), "0.4s");
        assert_eq!(seconds(60_000), "60s");
        assert_eq!(seconds(185_000), "3m5s");
    }

    #[test]
    fn a_pod_without_the_proxy_or_not_running_says_so() {
        let pod = |containers: serde_json::Value, phase: &str| -> k8s_openapi::api::core::v1::Pod {
            serde_json::from_value(serde_json::json!({
                "metadata": { "name": "web-1", "namespace": "shop" },
                "spec": { "containers": containers },
                "status": { "phase": phase },
            }))
            .unwrap()
        };
        let plain = pod(serde_json::json!([{ "name": "web" }]), "Running");
        assert_eq!(
            pod_problem(&plain, "shop", "web-1").unwrap().to_string(),
            "pod shop/web-1 has no outrigger-proxy container: is its namespace annotated \
             (kubectl annotate namespace shop outrigger.dev/inject=enabled), and was the pod \
             created after?"
        );
        let meshed = serde_json::json!([{ "name": "web" }, { "name": "outrigger-proxy" }]);
        assert!(pod_problem(&pod(meshed.clone(), "Running"), "shop", "web-1").is_none());
        assert_eq!(
            pod_problem(&pod(meshed, "Pending"), "shop", "web-1")
                .unwrap()
                .to_string(),
            "pod shop/web-1 is Pending, not Running: its proxy answers once it runs \
             (kubectl describe pod web-1 -n shop says why it does not)"
        );
    }

    #[test]
    fn weights_are_shown_as_the_shares_the_proxy_splits_by() {
        // Weights are relative (api/src/policy.rs): 1 and 3 split 25/75.
        let split = |a: u32, b: u32| {
            let mut s = snapshot();
            let route = &mut s.services[0].http[1];
            route.route[0].weight = Some(a);
            route.route[1].weight = Some(b);
            render(View::Routes, &s, &Live::default(), 0)
        };
        let table = split(1, 3);
        assert!(table.contains("reviews/v1 25%, reviews/v2 75%"), "{table}");
        let table = split(0, 3);
        assert!(table.contains("reviews/v1 0%, reviews/v2 100%"), "{table}");
        let table = split(1, 2);
        assert!(
            table.contains("reviews/v1 33.3%, reviews/v2 66.7%"),
            "{table}"
        );
    }

    #[test]
    fn arguments_are_a_pod_then_a_view_or_with_local_a_view() {
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            arguments(&args(&["pod/web-0", "routes"]), false),
            Ok((Some("web-0".into()), View::Routes))
        );
        assert_eq!(
            arguments(&args(&["web-0"]), false),
            Ok((Some("web-0".into()), View::All))
        );
        assert_eq!(arguments(&args(&[]), false), Err(ArgumentsError::NoPod));
        assert_eq!(
            arguments(&args(&["web-0", "nope"]), false),
            Err(ArgumentsError::View("nope".into()))
        );
        assert_eq!(
            arguments(&args(&["identity"]), true),
            Ok((None, View::Identity))
        );
        assert_eq!(arguments(&args(&[]), true), Ok((None, View::All)));
        assert!(arguments(&args(&["web-0", "routes"]), true).is_err());
    }

    #[test]
    fn live_state_comes_from_the_metrics() {
        let text = "outrigger_identity_cert_expiry_timestamp_seconds 1800000000\n\
            outrigger_outlier_ejected_endpoints{destination_service=\"reviews.shop\"} 2\n";
        let live = Live::from_metrics(text);
        assert_eq!(live.cert_expiry_unix, Some(1_800_000_000));
        assert_eq!(live.ejected["reviews.shop"], 2);
        assert_eq!(
            Live::from_metrics("outrigger_identity_cert_expiry_timestamp_seconds 0\n")
                .cert_expiry_unix,
            None
        );
    }
}
