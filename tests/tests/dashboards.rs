//! The shipped Grafana dashboards and Prometheus rules
//! (`charts/outrigger/dashboards/`, `charts/outrigger/rules/`, published as
//! `dashboards/` and `rules/`), tested the way an operator would use them:
//! a real Prometheus scrapes two real proxies (a mutual-TLS hop, both
//! certified by a real control plane), the control plane and the injector,
//! while known traffic and the events the panels show happen (a 5xx,
//! retries, an outlier ejection, a connection-pool overflow `UO`, a rate
//! limit `RL`, an authorization denial, config pushes, a refused resource,
//! injector errors), with the rules loaded. Then every PromQL expression of
//! every panel target and every rule, read from the files (so a new panel
//! is tested without editing this test), runs through Prometheus's HTTP API
//! and must return data within the tolerance of its class (see [`Class`]).
//!
//! Substitutions: template variables by the values their own queries find
//! (all of them, as "All" would), `$__rate_interval` and every range in the
//! rules by [`WINDOW`] (the test's scrape interval is 1 s; rules use 5 m and
//! 10 m windows). Each expression must pass once while the traffic runs.
//!
//! The control plane is scraped on its TLS port without verifying its
//! certificate (it names only its SPIFFE ID).
//!
//! Needs Debian's `prometheus` package (prometheus and promtool); without
//! it the tests say so and pass, unless `OUTRIGGER_REQUIRE_PROMETHEUS=1`
//! (CI).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use outrigger_api::Snapshot;
use outrigger_identity::Ca;
use outrigger_tests::control_plane::{certified_follower, certifier, ControlPlane, Dir};
use outrigger_tests::*;
use serde_json::Value;

/// What `$__rate_interval` and the rules' ranges become: ten scrapes.
const WINDOW: &str = "10s";
/// Requests per second of the steady load on `web`.
const RATE: f64 = 20.0;
/// Alerts the test's traffic must fire (their expression returns data)...
const FIRING: &[&str] = &[
    "OutriggerSuccessRateLow", // 503s on web
    "OutriggerLatencyHigh",    // /slow/600 on web, 1 in 26 requests
    "OutriggerInjectorErrors", // unreadable AdmissionReviews
];
/// ...and those it must leave silent (the expression runs, with no data).
const SILENT: &[&str] = &[
    "OutriggerControlPlaneDown",       // it is up and scraped
    "OutriggerProxiesRefusingUpdates", // nothing invalid is pushed
    // Certificates live 1 h and are renewed on time: within 6 h of their
    // end from the start, but not overdue (rules/outrigger.rules.test.yaml
    // has it fire).
    "OutriggerCertificateExpiringSoon",
];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The files of `dir` (under the repository), by name.
fn files_in(dir: &str) -> BTreeMap<String, String> {
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(repo().join(dir)).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        files.insert(name, std::fs::read_to_string(&path).unwrap());
    }
    files
}

/// The dashboards, as the chart ships them: (file name, JSON).
fn dashboards() -> Vec<(String, Value)> {
    let files = files_in("charts/outrigger/dashboards");
    assert_eq!(files.len(), 4, "four dashboards: {:?}", files.keys());
    files
        .into_iter()
        .map(|(name, text)| {
            let json = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
            (name, json)
        })
        .collect()
}

fn rules_text() -> String {
    std::fs::read_to_string(repo().join("charts/outrigger/rules/outrigger.rules.yaml")).unwrap()
}

/// The panels of a dashboard, rows' nested panels included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut all = Vec::new();
    for p in dashboard["panels"].as_array().expect("panels") {
        all.push(p);
        if let Some(nested) = p["panels"].as_array() {
            all.extend(nested);
        }
    }
    all
}

/// The one place each file lives is the chart (Helm reads only files
/// inside it); `dashboards/` and `rules/` at the top are published copies
/// and must never drift.
#[test]
fn the_published_copies_equal_the_charts_files() {
    let charted = files_in("charts/outrigger/dashboards");
    let published = files_in("dashboards");
    assert_eq!(
        charted.keys().collect::<Vec<_>>(),
        published.keys().collect::<Vec<_>>(),
        "dashboards/ and charts/outrigger/dashboards/ hold different files"
    );
    for (name, text) in &charted {
        assert!(
            published[name] == *text,
            "dashboards/{name} differs from charts/outrigger/dashboards/{name} (the source): cp charts/outrigger/dashboards/{name} dashboards/"
        );
    }
    let published = std::fs::read_to_string(repo().join("rules/outrigger.rules.yaml")).unwrap();
    assert!(
        published == rules_text(),
        "rules/outrigger.rules.yaml differs from charts/outrigger/rules/outrigger.rules.yaml (the source): cp charts/outrigger/rules/outrigger.rules.yaml rules/"
    );
}

/// The certificate alert is the inequality `outrigger check` and the proxy
/// share (`outrigger_identity::renewal`): its numbers are those constants.
#[test]
fn the_certificate_alert_uses_the_renewal_definition() {
    use outrigger_identity::renewal::{EXPIRING_WITHIN, WINDOW_LEFT};
    let expr = rules()
        .into_iter()
        .find(|r| r.alert.as_deref() == Some("OutriggerCertificateExpiringSoon"))
        .expect("the alert OutriggerCertificateExpiringSoon")
        .expr
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let expected = format!(
        "outrigger_identity_cert_expiry_timestamp_seconds - time() < clamp_max( \
         (outrigger_identity_cert_expiry_timestamp_seconds - \
         outrigger_identity_cert_renew_at_timestamp_seconds) * {WINDOW_LEFT}, {} * 3600) \
         and outrigger_identity_cert_expiry_timestamp_seconds > 0",
        EXPIRING_WITHIN.as_secs() / 3600
    );
    assert_eq!(expr, expected);
}

/// Every dashboard picks its data source from a `datasource` variable
/// (no hard-coded UID), and every panel states its unit, one the
/// Prometheus test has a tolerance for, on a query of its shape.
#[test]
fn dashboards_take_their_data_source_from_a_variable_and_state_units() {
    for (name, d) in dashboards() {
        assert!(
            d["schemaVersion"].as_u64() >= Some(41),
            "{name}: schemaVersion"
        );
        assert!(
            d["uid"]
                .as_str()
                .is_some_and(|u| u.starts_with("outrigger-")),
            "{name}: uid"
        );
        let vars = d["templating"]["list"].as_array().expect("templating.list");
        let ds = vars
            .iter()
            .find(|v| v["name"] == "datasource")
            .unwrap_or_else(|| panic!("{name}: no datasource variable"));
        assert_eq!(ds["type"], "datasource", "{name}");
        assert_eq!(ds["query"], "prometheus", "{name}");
        for v in vars.iter().filter(|v| v["type"] == "query") {
            assert_eq!(
                v["datasource"]["uid"], "${datasource}",
                "{name}: variable {}",
                v["name"]
            );
        }
        let mut uids = Vec::new();
        collect_uids(&d, &mut uids);
        assert!(
            uids.iter()
                .all(|u| u == "${datasource}" || u == "-- Grafana --"),
            "{name}: a hard-coded datasource UID: {uids:?}"
        );
        let mut ids = std::collections::BTreeSet::new();
        for p in panels(&d) {
            let title = &p["title"];
            assert!(
                ids.insert(p["id"].as_u64().unwrap()),
                "{name}: id of {title} repeated"
            );
            if p["type"] == "row" {
                continue;
            }
            let unit = p["fieldConfig"]["defaults"]["unit"]
                .as_str()
                .unwrap_or_default();
            assert!(!unit.is_empty(), "{name}: panel {title} has no unit");
            assert_eq!(
                p["datasource"]["uid"], "${datasource}",
                "{name}: panel {title}"
            );
            let targets = p["targets"].as_array().expect("targets");
            assert!(!targets.is_empty(), "{name}: panel {title} has no query");
            for t in targets {
                assert_eq!(
                    t["datasource"]["uid"], "${datasource}",
                    "{name}: panel {title}"
                );
                let expr = t["expr"].as_str().unwrap_or_default();
                assert!(!expr.is_empty(), "{name}: {title}");
                // A tolerance for its unit, and a query of the unit's shape.
                Class::of_unit(unit, expr);
            }
        }
    }
}

fn collect_uids(v: &Value, into: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            if let Some(Value::Object(ds)) = m.get("datasource") {
                if let Some(u) = ds.get("uid").and_then(Value::as_str) {
                    into.push(u.to_string());
                }
            }
            m.values().for_each(|v| collect_uids(v, into));
        }
        Value::Array(a) => a.iter().for_each(|v| collect_uids(v, into)),
        _ => {}
    }
}

/// `promtool check rules` passes both copies, and `promtool test rules`
/// runs the unit test of every alert (rules/outrigger.rules.test.yaml),
/// which must name each alert of the file.
#[test]
fn promtool_checks_the_rules_and_passes_their_unit_tests() {
    let Some(promtool) = promtool() else {
        return;
    };
    let run = |args: &[&str]| {
        let out = std::process::Command::new(&promtool)
            .args(args)
            .current_dir(repo())
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "promtool {args:?}:\n{text}");
        text
    };
    for file in [
        "charts/outrigger/rules/outrigger.rules.yaml",
        "rules/outrigger.rules.yaml",
    ] {
        let text = run(&["check", "rules", file]);
        assert!(text.contains("SUCCESS"), "{text}");
    }
    let text = run(&["test", "rules", "rules/outrigger.rules.test.yaml"]);
    assert!(text.contains("SUCCESS"), "{text}");
    let tests = std::fs::read_to_string(repo().join("rules/outrigger.rules.test.yaml")).unwrap();
    for rule in rules() {
        if let Some(alert) = rule.alert {
            assert!(
                tests.contains(&format!("alertname: {alert}\n")),
                "no promtool test for the alert {alert}"
            );
        }
    }
    assert!(FIRING.iter().chain(SILENT).all(|a| tests.contains(*a)));
}

/// One rule of the rules file.
struct Rule {
    record: Option<String>,
    alert: Option<String>,
    expr: String,
}

fn rules() -> Vec<Rule> {
    let file: Value = serde_saphyr::from_str(&rules_text()).expect("the rules file is YAML");
    let mut all = Vec::new();
    for group in file["groups"].as_array().expect("groups") {
        for r in group["rules"].as_array().expect("rules") {
            all.push(Rule {
                record: r["record"].as_str().map(String::from),
                alert: r["alert"].as_str().map(String::from),
                expr: r["expr"].as_str().expect("expr").to_string(),
            });
        }
    }
    all
}

/// How an expression's answer is judged. Rates are bounded by what the
/// test sends (about 26 requests per second reach web).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Class {
    /// Requests per second: each ≥ 0 and ≤ 2 × [`RATE`], one > 0; for all
    /// requests (`outrigger_requests_total` without a filter on the
    /// response), the largest within [`RATE`] / 2 .. 2 × [`RATE`].
    Requests,
    /// Events per second (retries, pushes, refusals): each in 0 .. 2 × [`RATE`].
    Events,
    /// A success ratio: each in [0, 1], one below 1 (the 5xx were seen), one ≥ 0.5.
    Success,
    /// The mTLS share: 1 inbound (every hop is mutual TLS), in [0, 1] outbound.
    Mtls,
    /// Any other ratio: each in [0, 1].
    Ratio,
    /// A latency in seconds: each > 0 and < 5 s.
    Latency,
    /// Bytes, bytes per second, a time left or an uptime: each > 0, one at least.
    Positive,
    /// A count or gauge: each ≥ 0.
    NonNegative,
    /// An alert's expression: data when it fires, none when it does not.
    Alert { firing: bool },
}

impl Class {
    fn of_unit(unit: &str, expr: &str) -> Class {
        // What the unit says the query computes, by its shape.
        let per_second = ["reqps", "ops", "Bps"].contains(&unit);
        assert!(
            !per_second || (expr.contains("rate(") && !expr.contains('/')),
            "a per-second unit ({unit}) on a query that takes no rate() or divides: {expr}"
        );
        assert!(
            unit != "percentunit" || expr.contains('/') || expr.contains("mutual_tls"),
            "a ratio unit on a query that divides nothing: {expr}"
        );
        assert!(
            unit != "s" || expr.contains("histogram_quantile("),
            "a latency unit on a query that takes no quantile: {expr}"
        );
        match unit {
            "reqps" => Class::Requests,
            "ops" => Class::Events,
            "percentunit" if expr.contains("mutual_tls") => Class::Mtls,
            "percentunit" if expr.contains(r#"!~"5..""#) => Class::Success,
            "percentunit" => Class::Ratio,
            "s" => Class::Latency,
            "bytes" | "Bps" | "dtdurations" => Class::Positive,
            "short" => Class::NonNegative,
            other => panic!("no tolerance for the unit {other}: add it to Class::of_unit"),
        }
    }

    fn of_rule(rule: &Rule) -> Class {
        if let Some(alert) = &rule.alert {
            let firing = FIRING.contains(&alert.as_str());
            assert!(
                firing || SILENT.contains(&alert.as_str()),
                "the alert {alert} is in neither FIRING nor SILENT: make the test provoke it, or say why it stays silent"
            );
            return Class::Alert { firing };
        }
        let record = rule.record.as_deref().unwrap();
        match record {
            r if r.contains(":objective:") => Class::Positive,
            r if r.contains("mtls_ratio") => Class::Mtls,
            r if r.contains("success_ratio") => Class::Success,
            r if r.contains("_duration_seconds:p") => Class::Latency,
            r if r.starts_with("workload:outrigger_requests:rate") => Class::Requests,
            r if r.starts_with("workload_code:") || r.starts_with("workload_le:") => Class::Events,
            r => panic!("no tolerance for the recording rule {r}: add it to Class::of_rule"),
        }
    }

    /// Whether `result` (an instant vector) is sane for this class, or why not.
    fn judge(self, expr: &str, result: &[Value]) -> Result<(), String> {
        let values: Vec<(String, f64)> = result
            .iter()
            .map(|s| {
                let v = s["value"][1].as_str().unwrap_or("NaN");
                (
                    s["metric"].to_string(),
                    v.parse::<f64>().unwrap_or(f64::NAN),
                )
            })
            .collect();
        if let Class::Alert { firing } = self {
            return match (firing, values.is_empty()) {
                (true, false) | (false, true) => Ok(()),
                (true, true) => Err("does not fire".into()),
                (false, false) => Err(format!("fires: {values:?}")),
            };
        }
        if values.is_empty() {
            return Err("no data".into());
        }
        let each = |ok: &dyn Fn(&str, f64) -> bool, what: &str| -> Result<(), String> {
            match values.iter().find(|(m, v)| !ok(m, *v)) {
                Some((m, v)) => Err(format!("{m} = {v}: {what}")),
                None => Ok(()),
            }
        };
        let max = values.iter().map(|(_, v)| *v).fold(f64::MIN, f64::max);
        let min = values.iter().map(|(_, v)| *v).fold(f64::MAX, f64::min);
        match self {
            Class::Requests => {
                each(&|_, v| (0.0..=2.0 * RATE).contains(&v), "not in 0..2×RATE")?;
                if max <= 0.0 {
                    return Err("every rate is 0".into());
                }
                if expr.contains("rate(outrigger_requests_total{")
                    && !expr.contains("response_")
                    && max < RATE / 2.0
                {
                    return Err(format!("the largest rate {max} is below RATE/2"));
                }
                Ok(())
            }
            Class::Events => each(&|_, v| (0.0..=2.0 * RATE).contains(&v), "not in 0..2×RATE"),
            Class::Success => {
                each(&|_, v| (0.0..=1.0).contains(&v), "not a ratio")?;
                if min >= 1.0 || max < 0.5 {
                    return Err(format!("min {min}, max {max}: the 5xx sent are not seen"));
                }
                Ok(())
            }
            Class::Mtls => each(
                &|m, v| {
                    if m.contains(r#""direction":"outbound""#) {
                        (0.0..=1.0).contains(&v)
                    } else {
                        v == 1.0
                    }
                },
                "every inbound request rode mutual TLS",
            ),
            Class::Ratio => each(&|_, v| (0.0..=1.0).contains(&v), "not a ratio"),
            Class::Latency => each(&|_, v| v > 0.0 && v < 5.0, "not a latency in 0..5 s"),
            Class::Positive => each(&|_, v| v > 0.0 && v.is_finite(), "not > 0"),
            Class::NonNegative => each(&|_, v| v >= 0.0 && v.is_finite(), "not ≥ 0"),
            Class::Alert { .. } => unreachable!(),
        }
    }
}

/// Every range `[5m]` of a rule (and `$__rate_interval`) as [`WINDOW`].
fn short_windows(expr: &str) -> String {
    let mut out = String::new();
    let mut rest = expr.replace("$__rate_interval", WINDOW);
    while let Some(open) = rest.find('[') {
        let close = open + rest[open..].find(']').expect("a closed range");
        let inside = &rest[open + 1..close];
        let is_range = !inside.is_empty()
            && inside.chars().all(|c| c.is_ascii_alphanumeric())
            && inside.ends_with(['s', 'm', 'h', 'd']);
        out.push_str(&rest[..=open]);
        out.push_str(if is_range { WINDOW } else { inside });
        out.push(']');
        rest = rest[close + 1..].to_string();
    }
    out + &rest
}

/// The mesh: services `web` (a retried route for `/status/`, a
/// rate-limited one for `/limited`, an AuthorizationPolicy denying
/// `/admin`), `flaky` (outlier detection ejecting at the first 5xx) and
/// `pooled` (one request in flight), all served by the server proxy's
/// inbound port, STRICT mutual TLS; `extra.yaml` changes every round.
fn mesh(inbound: SocketAddr) -> String {
    let port = inbound.port();
    let mut text = String::new();
    for (name, ip, svc_port) in [("web", 10, 80), ("flaky", 11, 82), ("pooled", 12, 83)] {
        text.push_str(&format!(
            r#"
---
apiVersion: v1
kind: Service
metadata: {{ name: {name}, namespace: shop }}
spec: {{ clusterIP: 10.96.0.{ip}, ports: [{{ name: http, port: {svc_port} }}] }}
---
apiVersion: v1
kind: Endpoints
metadata: {{ name: {name}, namespace: shop }}
subsets:
  - addresses: [{{ ip: 127.0.0.1, targetRef: {{ kind: Pod, name: web-1 }} }}]
    ports: [{{ name: http, port: {port} }}]
"#
        ));
    }
    text.push_str(
        r#"
---
apiVersion: v1
kind: Pod
metadata: { name: web-1, namespace: shop, labels: { app: web } }
spec: { serviceAccountName: web, containers: [{ name: web }, { name: outrigger-proxy }] }
---
apiVersion: v1
kind: Pod
metadata: { name: client-1, namespace: shop, labels: { app: client } }
spec: { serviceAccountName: client, containers: [{ name: client }, { name: outrigger-proxy }] }
---
apiVersion: outrigger.dev/v1alpha1
kind: PeerAuthentication
metadata: { name: default, namespace: shop }
spec: { mtls: { mode: STRICT } }
---
apiVersion: outrigger.dev/v1alpha1
kind: VirtualService
metadata: { name: web, namespace: shop }
spec:
  hosts: [web]
  http:
    - match: [{ uri: { prefix: /limited } }]
      localRateLimit: { maxTokens: 1, tokensPerFill: 1, fillInterval: 60s }
      route: [{ destination: { host: web } }]
    - match: [{ uri: { prefix: /status/ } }]
      retries: { attempts: 2, retryOn: 5xx }
      route: [{ destination: { host: web } }]
    - route: [{ destination: { host: web } }]
---
apiVersion: outrigger.dev/v1alpha1
kind: DestinationRule
metadata: { name: flaky, namespace: shop }
spec:
  host: flaky
  trafficPolicy:
    outlierDetection: { consecutive5xxErrors: 1, interval: 1s, baseEjectionTime: 1s, maxEjectionPercent: 100 }
---
apiVersion: outrigger.dev/v1alpha1
kind: DestinationRule
metadata: { name: pooled, namespace: shop }
spec:
  host: pooled
  trafficPolicy: { connectionPool: { http: { http2MaxRequests: 1 } } }
---
apiVersion: outrigger.dev/v1alpha1
kind: AuthorizationPolicy
metadata: { name: no-admin, namespace: shop }
spec:
  selector: { matchLabels: { app: web } }
  action: DENY
  rules: [{ to: [{ operation: { paths: [/admin] } }] }]
"#,
    );
    text
}

/// A Service that changes every round (so the control plane pushes), and
/// a VirtualService it refuses (a wildcard host).
fn extra(round: u32) -> String {
    format!(
        r#"
apiVersion: v1
kind: Service
metadata: {{ name: extra-{round}, namespace: shop }}
spec: {{ clusterIP: 10.96.1.{ip}, ports: [{{ name: http, port: 80 }}] }}
---
apiVersion: outrigger.dev/v1alpha1
kind: VirtualService
metadata: {{ name: wildcard, namespace: shop }}
spec:
  hosts: ["*"]
  http: [{{ route: [{{ destination: {{ host: web }} }}] }}]
"#,
        ip = round % 250 + 1
    )
}

fn client_bootstrap() -> Snapshot {
    Snapshot::from_yaml(
        r#"
version: "bootstrap"
proxy: { workload: client, namespace: shop }
admin: { bind: "127.0.0.1:0" }
limits: { drain_timeout: 5s, detect_timeout: 300ms, connect_timeout: 1s }
listeners:
  - { name: web, direction: outbound, bind: "127.0.0.1:0", target: { name: web, namespace: shop, port: 80 } }
  - { name: flaky, direction: outbound, bind: "127.0.0.1:0", target: { name: flaky, namespace: shop, port: 82 } }
  - { name: pooled, direction: outbound, bind: "127.0.0.1:0", target: { name: pooled, namespace: shop, port: 83 } }
services:
  - { name: web, namespace: shop, ports: [80] }
  - { name: flaky, namespace: shop, ports: [82] }
  - { name: pooled, namespace: shop, ports: [83] }
"#,
    )
    .unwrap()
}

/// One expression to run: where it comes from, the PromQL (substituted),
/// and its class.
struct Check {
    source: String,
    promql: String,
    class: Class,
}

/// The value of each template variable of `dashboard`: every value its
/// query (`label_values(selector, label)`, or `query_result(promql)` with a
/// regex taking one label) finds, as a regex alternation, as "All" would.
async fn variables(
    prom: &Prometheus,
    name: &str,
    dashboard: &Value,
) -> Result<Vec<(String, String)>, String> {
    let mut found: Vec<(String, String)> = Vec::new();
    for v in dashboard["templating"]["list"].as_array().unwrap() {
        if v["type"] != "query" {
            continue;
        }
        let var = v["name"].as_str().unwrap();
        // The query as a string (Grafana reads the older object form too).
        let q = v["query"]
            .as_str()
            .or(v["query"]["query"].as_str())
            .unwrap_or_else(|| panic!("{name}: variable {var} has no query"));
        let values: Vec<String> = if let Some(promql) = q
            .strip_prefix("query_result(")
            .and_then(|q| q.strip_suffix(')'))
        {
            // Grafana's query_result with a regex taking one label's value:
            // `/label="([^"]+)"/`.
            let regex = v["regex"].as_str().unwrap_or_default();
            let label = regex
                .strip_prefix('/')
                .and_then(|r| r.strip_suffix(r#"="([^"]+)"/"#))
                .unwrap_or_else(|| {
                    panic!("{name}: variable {var}: a regex this test cannot apply: {regex}")
                });
            let result = prom.query(&substitute(promql, &found)).await?;
            result
                .iter()
                .filter_map(|s| s["metric"][label].as_str().map(String::from))
                .collect()
        } else {
            let inner = q
                .strip_prefix("label_values(")
                .and_then(|q| q.strip_suffix(')'))
                .unwrap_or_else(|| {
                    panic!(
                        "{name}: variable {var}: neither label_values(…) nor query_result(…): {q}"
                    )
                });
            let (selector, label) = inner.rsplit_once(',').unwrap_or(("", inner));
            let selector = substitute(selector.trim(), &found);
            let mut params = vec![];
            if !selector.is_empty() {
                params.push(("match[]", selector.as_str()));
            }
            let answer = prom
                .api(&format!("/api/v1/label/{}/values", label.trim()), &params)
                .await?;
            answer["data"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default()
        };
        if values.is_empty() {
            return Err(format!("{name}: variable {var} finds no value ({q})"));
        }
        found.push((var.to_string(), format!("({})", values.join("|"))));
    }
    Ok(found)
}

fn substitute(expr: &str, vars: &[(String, String)]) -> String {
    let mut e = short_windows(expr);
    for (k, v) in vars {
        e = e
            .replace(&format!("${{{k}}}"), v)
            .replace(&format!("${k}"), v);
    }
    e
}

/// Every expression of the dashboards (variables resolved against `prom`)
/// and of the rules.
async fn checks(prom: &Prometheus) -> Result<Vec<Check>, String> {
    let mut all = Vec::new();
    for (name, d) in dashboards() {
        let vars = variables(prom, &name, &d).await?;
        for p in panels(&d) {
            if p["type"] == "row" {
                continue;
            }
            let unit = p["fieldConfig"]["defaults"]["unit"]
                .as_str()
                .unwrap_or_default();
            for t in p["targets"].as_array().unwrap() {
                let expr = t["expr"].as_str().unwrap();
                let promql = substitute(expr, &vars);
                assert!(
                    !promql.contains('$'),
                    "{name}: an unknown variable in {promql}"
                );
                all.push(Check {
                    source: format!("{name}: {} {}", p["title"], t["refId"]),
                    class: Class::of_unit(unit, expr),
                    promql,
                });
            }
        }
    }
    for r in rules() {
        all.push(Check {
            source: format!(
                "rules: {}",
                r.record.as_deref().or(r.alert.as_deref()).unwrap()
            ),
            class: Class::of_rule(&r),
            promql: short_windows(&r.expr),
        });
    }
    Ok(all)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_and_rule_query_answers_with_sane_values() {
    let Some(prometheus) = PrometheusBin::find() else {
        return;
    };
    // The mesh: a control plane (the CA, certificates living 1 h) and two
    // proxies following it.
    let app = app("web").await;
    let tokens = Dir::new("dashboards-tokens");
    std::fs::create_dir_all(tokens.path().join("shop")).unwrap();
    std::fs::write(tokens.path().join("shop/web"), "token-web").unwrap();
    std::fs::write(tokens.path().join("shop/client"), "token-client").unwrap();
    let ca = Ca::generate("cluster.local", SystemTime::now()).unwrap();
    let (cert, key) = ca.generated_pem().unwrap();
    let cp_ca = Ca::from_pem(cert, key, None).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let cp_addr = listener.local_addr().unwrap();
    let mut server_boot = server_snapshot(app);
    server_boot.version = "bootstrap".into();
    let server = certified_follower(server_boot, "web-1", "web", cp_addr, &ca, &tokens).await;
    let dir = Dir::new("dashboards");
    dir.write("mesh.yaml", &mesh(server.listener_addr("inbound").unwrap()));
    dir.write("extra.yaml", &extra(0));
    let cp = ControlPlane::start_with(
        dir.path(),
        listener,
        Some(certifier(
            Arc::new(cp_ca),
            Duration::from_secs(3600),
            tokens.path(),
        )),
    )
    .await;
    // Its plain metrics port (the chart's --metrics-listen), which the
    // chart's annotations and monitors name: Prometheus scrapes there.
    let cp_metrics = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let cp_metrics_addr = cp_metrics.local_addr().unwrap();
    let (_cp_metrics_stop, cp_metrics_watch) = outrigger_runtime::drain::channel();
    let cp_encode = cp.metrics.clone();
    tokio::spawn(outrigger_runtime::metrics::listener::serve_metrics(
        cp_metrics,
        cp_metrics_watch,
        move || cp_encode.encode(),
    ));
    let client = certified_follower(
        client_bootstrap(),
        "client-1",
        "client",
        cp_addr,
        &ca,
        &tokens,
    )
    .await;
    for p in [&server, &client] {
        assert!(
            eventually(Duration::from_secs(15), || ready(p)).await,
            "never ready"
        );
    }
    // The injector's admin port, in process.
    let webhook = Arc::new(outrigger_injector::webhook::Webhook {
        config: Arc::new(outrigger_injector::config::MeshConfig::with_image(
            "ghcr.io/outrigger/proxy:0.1.0",
        ))
        .into(),
        namespaces: Arc::new(outrigger_injector::namespaces::Namespaces::fixed([])),
        metrics: Arc::new(outrigger_injector::metrics::Metrics::new()),
    });
    let injector_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let injector = injector_listener.local_addr().unwrap();
    let (_stop_injector, injector_stopped) = outrigger_runtime::drain::channel();
    tokio::spawn(outrigger_injector::server::serve_admin(
        injector_listener,
        webhook.clone(),
        injector_stopped,
    ));

    // Traffic: RATE requests per second to web, and every second a round
    // of events.
    let stop = Arc::new(AtomicBool::new(false));
    let web = client.listener_addr("web").unwrap();
    let flaky = client.listener_addr("flaky").unwrap();
    let pooled = client.listener_addr("pooled").unwrap();
    let load = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / RATE));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut statuses = BTreeMap::<u16, usize>::new();
            while !stop.load(Ordering::SeqCst) {
                tick.tick().await;
                let status = try_get(web, "/").await.map(|r| r.0).unwrap_or(0);
                *statuses.entry(status).or_default() += 1;
            }
            statuses
        })
    };
    let events = {
        let stop = stop.clone();
        let dir_path = dir.path().to_path_buf();
        let webhook = webhook.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            let mut round = 0;
            let mut seen = BTreeMap::<(&str, u16), usize>::new();
            while !stop.load(Ordering::SeqCst) {
                tick.tick().await;
                round += 1;
                let answers = futures_util::future::join_all(
                    [
                        ("5xx, retried", web, "/status/503"),
                        // Two, so the second finds the bucket empty: each
                        // config update (one a round) starts a full bucket.
                        ("rate-limited", web, "/limited"),
                        ("rate-limited", web, "/limited"),
                        ("denied", web, "/admin"),
                        ("ejecting", flaky, "/status/503"),
                        ("pooled", pooled, "/slow/600"),
                        ("pooled", pooled, "/slow/600"),
                    ]
                    .map(|(what, addr, path)| async move {
                        (what, try_get(addr, path).await.map(|r| r.0).unwrap_or(0))
                    }),
                )
                .await;
                for a in answers {
                    *seen.entry(a).or_default() += 1;
                }
                webhook.review(b"not a review").unwrap_err();
                let tmp = dir_path.join(".extra.yaml.tmp");
                std::fs::write(&tmp, extra(round)).unwrap();
                std::fs::rename(&tmp, dir_path.join("extra.yaml")).unwrap();
            }
            seen
        })
    };

    let proxy_target = |addr, pod: &str| Target {
        job: "outrigger",
        addr,
        labels: vec![("namespace", "shop".into()), ("pod", pod.into())],
        tls: false,
    };
    let system_target = |addr, pod: &str| Target {
        job: "outrigger",
        addr,
        labels: vec![
            ("namespace", "outrigger-system".into()),
            ("pod", pod.into()),
        ],
        tls: false,
    };
    let mut prom = prometheus.start_with(
        &[
            proxy_target(server.admin_addr, "web-1"),
            proxy_target(client.admin_addr, "client-1"),
            system_target(cp_metrics_addr, "outrigger-control-plane-0"),
            system_target(injector, "outrigger-injector-0"),
        ],
        Some(&short_windows(&rules_text())),
    );

    // Every rule loads and evaluates.
    let rules_ok = eventually(Duration::from_secs(30), || async {
        let Ok(a) = prom.api("/api/v1/rules", &[]).await else {
            return false;
        };
        let groups = a["data"]["groups"].as_array().cloned().unwrap_or_default();
        groups.len() == 3
            && groups.iter().all(|g| {
                g["rules"]
                    .as_array()
                    .is_some_and(|r| r.iter().all(|r| r["health"] == "ok"))
            })
    })
    .await;
    let rules_answer = prom.api("/api/v1/rules", &[]).await;
    assert!(
        rules_ok,
        "the rules did not all load and evaluate: {rules_answer:?}"
    );

    // The variables find their values once the first scrapes are in; then
    // every expression, until each has passed once (the windows fill up).
    // Each round resolves the variables again (their values grow as the
    // first scrapes come in) and runs every expression that has not passed
    // yet; each expression must pass once. An expression keeps its index:
    // the files are read the same way each round.
    let list = std::sync::Mutex::new(Vec::<Check>::new());
    let failing = std::sync::Mutex::new(BTreeMap::<usize, String>::new());
    let why = std::sync::Mutex::new(String::from("never ran"));
    eventually(Duration::from_secs(90), || async {
        let checks = match checks(&prom).await {
            Ok(c) => c,
            Err(e) => {
                *why.lock().unwrap() = e;
                return false;
            }
        };
        if list.lock().unwrap().is_empty() {
            *failing.lock().unwrap() = (0..checks.len()).map(|i| (i, "never run".into())).collect();
        }
        let todo: Vec<usize> = failing.lock().unwrap().keys().copied().collect();
        for i in todo {
            let check = &checks[i];
            let verdict = match prom.query(&check.promql).await {
                Ok(result) => check.class.judge(&check.promql, &result),
                Err(e) => Err(format!("Prometheus refused it: {e}")),
            };
            let mut failing = failing.lock().unwrap();
            match verdict {
                Ok(()) => drop(failing.remove(&i)),
                Err(e) => drop(failing.insert(i, e)),
            }
        }
        let done = failing.lock().unwrap().is_empty();
        *list.lock().unwrap() = checks;
        done
    })
    .await;
    let list = list.into_inner().unwrap();
    assert!(!list.is_empty(), "{}", why.lock().unwrap());
    let failing = failing.into_inner().unwrap();
    assert!(!prom.exited(), "prometheus exited early");
    stop.store(true, Ordering::SeqCst);
    let statuses = load.await.unwrap();
    let seen = events.await.unwrap();

    let report: Vec<String> = failing
        .iter()
        .map(|(i, reason)| {
            format!(
                "{} [{:?}]: {reason}\n    {}",
                list[*i].source, list[*i].class, list[*i].promql
            )
        })
        .collect();
    assert!(
        report.is_empty(),
        "{} of {} expressions never answered sanely (load {statuses:?}, events {seen:?}):\n{}",
        report.len(),
        list.len(),
        report.join("\n")
    );
    // The traffic was what the tolerances assume.
    assert!(
        statuses.get(&200).copied().unwrap_or(0) > 100,
        "{statuses:?}"
    );
    for (what, status) in [
        ("5xx, retried", 503),
        ("rate-limited", 429),
        ("denied", 403),
        ("pooled", 503),
    ] {
        assert!(
            seen.contains_key(&(what, status)),
            "{what}: no {status}: {seen:?}"
        );
    }
    // Every family this traffic brought to life is in the reference.
    for (who, addr) in [
        ("the server-side proxy", server.admin_addr),
        ("the client-side proxy", client.admin_addr),
        ("the control plane", cp_metrics_addr),
        ("the injector", injector),
    ] {
        let (code, text) = get(addr, "/metrics").await;
        assert_eq!(code, 200, "{who}: {text}");
        assert_documented(who, &text);
    }
    cp.stop().await;
}
