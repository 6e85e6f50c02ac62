//! `outrigger stat`: golden metrics per workload, inbound and outbound:
//! requests per second, success rate, p50/p95/p99 latency and the share of
//! mutual TLS, as `linkerd viz stat` prints them, from two scrapes of the
//! proxies' `/metrics` a window apart.
//!
//! [`rows`] (counter and histogram deltas → rows), [`quantile`] and
//! [`render`] are pure; [`edge`] lists the pods and scrapes them, [`run`]
//! is the command.
//!
//! One proxy that cannot be read does not hide the others: their rows are
//! printed, and a warning on stderr names the proxy and why. The command
//! fails only when no proxy could be read.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::output::table;
use crate::prom::{self, Sample};

const REQUESTS: &str = "outrigger_requests_total";
const BUCKETS: &str = "outrigger_request_duration_seconds_bucket";

/// What `stat` was asked about: `deploy`, `ns` or `pod`, and maybe a name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selector {
    pub kind: Kind,
    pub name: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Deploy,
    Ns,
    Pod,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "cannot read {0:?}: say deploy, ns or pod, and maybe a name (deploy/web, ns/shop, pod/web-0)"
)]
pub struct SelectorError(String);

impl std::str::FromStr for Selector {
    type Err = SelectorError;
    fn from_str(s: &str) -> Result<Self, SelectorError> {
        let (kind, name) = match s.split_once('/') {
            Some((k, n)) if !n.is_empty() && !n.contains('/') => (k, Some(n.to_string())),
            Some(_) => return Err(SelectorError(s.into())),
            None => (s, None),
        };
        let kind = match kind {
            "deploy" | "deployment" | "deployments" | "deploy.apps" => Kind::Deploy,
            "ns" | "namespace" | "namespaces" => Kind::Ns,
            "pod" | "pods" | "po" => Kind::Pod,
            _ => return Err(SelectorError(s.into())),
        };
        Ok(Selector { kind, name })
    }
}

/// One proxy scraped twice: what its traffic is counted under, the first
/// and the second exposition.
#[derive(Clone, Debug)]
pub struct Scrape {
    pub counted_as: CountedAs,
    pub before: String,
    pub after: String,
}

/// What a proxy's traffic is counted under.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CountedAs {
    /// A name the caller knows (the pod's workload or name, in its
    /// namespace; or a namespace, with none).
    Named {
        namespace: Option<String>,
        name: String,
    },
    /// What the proxy's own samples name (`--local`): its namespace and
    /// workload (`deploy`), or its namespace (`ns`).
    Own(Kind),
}

/// One line of the result.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Row {
    /// The namespace of a workload's or a pod's row; none for a namespace's.
    pub namespace: Option<String>,
    pub name: String,
    pub direction: String,
    pub requests: f64,
    pub rps: f64,
    /// Share of requests answered without a 5xx (or a gRPC error, or no
    /// answer at all); `None` without requests.
    pub success: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// Share of requests over mutual TLS.
    pub mtls: Option<f64>,
}

/// The labels that name one series apart from its name.
fn key(s: &Sample) -> Vec<(String, String)> {
    s.labels
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// `after - before` per series of `name`; a series that went down (the
/// proxy restarted) counts from zero.
fn deltas(name: &str, before: &[Sample], after: &[Sample]) -> Vec<Sample> {
    let old: BTreeMap<Vec<(String, String)>, f64> = before
        .iter()
        .filter(|s| s.name == name)
        .map(|s| (key(s), s.value))
        .collect();
    after
        .iter()
        .filter(|s| s.name == name)
        .map(|s| {
            let was = old.get(&key(s)).copied().unwrap_or(0.0);
            let value = if s.value >= was {
                s.value - was
            } else {
                s.value
            };
            Sample { value, ..s.clone() }
        })
        .collect()
}

/// The (namespace, name, direction) a sample counts under.
fn name_of(counted_as: &CountedAs, s: &Sample) -> (Option<String>, String, String) {
    let direction = s.label("direction").to_string();
    let (namespace, name) = match counted_as {
        CountedAs::Named { namespace, name } => (namespace.clone(), name.clone()),
        CountedAs::Own(kind) => {
            // The proxy's own side of the traffic.
            let side = if direction == "inbound" {
                "destination"
            } else {
                "source"
            };
            let ns = s.label(&format!("{side}_namespace")).to_string();
            match kind {
                Kind::Ns => (None, ns),
                _ => (Some(ns), s.label(&format!("{side}_workload")).to_string()),
            }
        }
    };
    (namespace, name, direction)
}

fn successful(s: &Sample) -> bool {
    let code: u16 = s.label("response_code").parse().unwrap_or(0);
    let grpc = s.label("grpc_response_status");
    code != 0 && code < 500 && (grpc.is_empty() || grpc == "0")
}

/// The rows for these scrapes, `window` seconds apart: one per name and
/// direction that had traffic in either scrape, sorted.
pub fn rows(scrapes: &[Scrape], window: f64) -> Vec<Row> {
    #[derive(Default)]
    struct Acc {
        requests: f64,
        ok: f64,
        mtls: f64,
        buckets: BTreeMap<String, f64>,
    }
    let mut acc: BTreeMap<(Option<String>, String, String), Acc> = BTreeMap::new();
    for scrape in scrapes {
        let (before, after) = (prom::parse(&scrape.before), prom::parse(&scrape.after));
        for s in deltas(REQUESTS, &before, &after) {
            let a = acc.entry(name_of(&scrape.counted_as, &s)).or_default();
            a.requests += s.value;
            if successful(&s) {
                a.ok += s.value;
            }
            if s.label("connection_security_policy") == "mutual_tls" {
                a.mtls += s.value;
            }
        }
        for s in deltas(BUCKETS, &before, &after) {
            let a = acc.entry(name_of(&scrape.counted_as, &s)).or_default();
            *a.buckets.entry(s.label("le").to_string()).or_default() += s.value;
        }
    }
    acc.into_iter()
        .map(|((namespace, name, direction), a)| {
            let buckets: Vec<(f64, f64)> = a
                .buckets
                .iter()
                .filter_map(|(le, n)| Some((parse_le(le)?, *n)))
                .collect();
            let share = |n: f64| (a.requests > 0.0).then(|| n / a.requests);
            let q = |p: f64| quantile(p, &buckets).map(|s| s * 1000.0);
            Row {
                namespace,
                name,
                direction,
                requests: a.requests,
                rps: if window > 0.0 {
                    a.requests / window
                } else {
                    0.0
                },
                success: share(a.ok),
                p50_ms: q(0.5),
                p95_ms: q(0.95),
                p99_ms: q(0.99),
                mtls: share(a.mtls),
            }
        })
        .collect()
}

fn parse_le(le: &str) -> Option<f64> {
    match le {
        "+Inf" => Some(f64::INFINITY),
        v => v.parse().ok(),
    }
}

/// The `q` quantile of a cumulative histogram (`(upper bound, count)`
/// pairs, in any order), as Prometheus's `histogram_quantile` computes it:
/// linear within the bucket it falls in, the lowest bucket starting at 0,
/// and the highest finite bound when it falls in `+Inf`. `None` where
/// Prometheus answers NaN: an empty histogram, no `+Inf` bucket, or no
/// finite bucket below it.
pub fn quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    let mut b: Vec<(f64, f64)> = buckets.to_vec();
    b.sort_by(|x, y| x.0.total_cmp(&y.0));
    let &(top, total) = b.last()?;
    if total <= 0.0 || !top.is_infinite() || b.len() < 2 {
        return None;
    }
    let rank = q * total;
    let mut prev = (0.0, 0.0);
    for &(le, count) in &b {
        if count >= rank {
            if le.is_infinite() {
                return Some(prev.0);
            }
            let within = count - prev.1;
            if within <= 0.0 {
                return Some(le);
            }
            return Some(prev.0 + (le - prev.0) * (rank - prev.1) / within);
        }
        prev = (le, count);
    }
    Some(prev.0)
}

/// The table: one line per name and direction.
pub fn render(rows: &[Row]) -> String {
    if rows.is_empty() {
        return "no traffic in the window\n".into();
    }
    let pct = |v: Option<f64>| v.map_or("-".into(), |v| format!("{:.2}%", v * 100.0));
    let ms = |v: Option<f64>| v.map_or("-".into(), |v| format!("{}ms", crate::output::millis(v)));
    // kubectl's NAMESPACE column, for workloads and pods.
    let namespaced = rows.iter().any(|r| r.namespace.is_some());
    let lines: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let namespace = namespaced.then(|| r.namespace.clone().unwrap_or_default());
            namespace
                .into_iter()
                .chain([
                    r.name.clone(),
                    r.direction.clone(),
                    pct(r.success),
                    format!("{:.1}rps", r.rps),
                    ms(r.p50_ms),
                    ms(r.p95_ms),
                    ms(r.p99_ms),
                    pct(r.mtls),
                ])
                .collect()
        })
        .collect();
    let header = [
        "NAMESPACE",
        "NAME",
        "DIRECTION",
        "SUCCESS",
        "RPS",
        "LATENCY_P50",
        "LATENCY_P95",
        "LATENCY_P99",
        "MTLS",
    ];
    table(&header[usize::from(!namespaced)..], &lines)
}

/// A window such as `30s`, `1m`, `500ms`, in seconds.
pub fn parse_window(s: &str) -> Result<std::time::Duration, String> {
    let d: outrigger_api::Duration = s
        .parse()
        .map_err(|e| format!("cannot read the window {s:?}: {e} (e.g. 30s, 1m)"))?;
    let d = d.get();
    if d.is_zero() {
        return Err("the window must be longer than 0s".into());
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(name: &str) -> CountedAs {
        CountedAs::Named {
            namespace: None,
            name: name.into(),
        }
    }

    fn exposition(ok: u64, failed: u64, plain: u64, buckets: &[(&str, u64)]) -> String {
        let t = "direction=\"inbound\",destination_workload=\"web\",destination_namespace=\"shop\"";
        let mut s = format!(
            "# TYPE outrigger_requests_total counter\n\
             outrigger_requests_total{{{t},connection_security_policy=\"mutual_tls\",response_code=\"200\",grpc_response_status=\"\"}} {ok}\n\
             outrigger_requests_total{{{t},connection_security_policy=\"mutual_tls\",response_code=\"503\",grpc_response_status=\"\"}} {failed}\n\
             outrigger_requests_total{{{t},connection_security_policy=\"none\",response_code=\"200\",grpc_response_status=\"\"}} {plain}\n"
        );
        for (le, n) in buckets {
            s.push_str(&format!(
                "outrigger_request_duration_seconds_bucket{{{t},response_code=\"200\",le=\"{le}\"}} {n}\n"
            ));
        }
        s
    }

    #[test]
    fn rows_come_from_the_deltas_of_two_scrapes() {
        let before = exposition(
            100,
            10,
            0,
            &[("0.001", 50), ("0.005", 100), ("0.01", 110), ("+Inf", 110)],
        );
        // 80 more: 60 ok over mTLS, 10 failed, 10 plaintext ok; latency:
        // 20 under 1ms, 40 in (1ms, 5ms], 20 in (5ms, 10ms].
        let after = exposition(
            160,
            20,
            10,
            &[("0.001", 70), ("0.005", 160), ("0.01", 190), ("+Inf", 190)],
        );
        let rows = rows(
            &[Scrape {
                counted_as: named("web"),
                before,
                after,
            }],
            2.0,
        );
        assert_eq!(rows.len(), 1);
        let r = &rows[0];
        assert_eq!((r.name.as_str(), r.direction.as_str()), ("web", "inbound"));
        assert_eq!(r.requests, 80.0);
        assert_eq!(r.rps, 40.0);
        assert_eq!(r.success, Some(70.0 / 80.0));
        assert_eq!(r.mtls, Some(70.0 / 80.0));
        // p50: rank 40 falls in (1ms, 5ms] after 20: 1 + 4 * 20/40 = 3ms.
        assert!((r.p50_ms.unwrap() - 3.0).abs() < 1e-9, "{r:?}");
        assert_eq!(
            render(&rows),
            "NAME  DIRECTION  SUCCESS  RPS      LATENCY_P50  LATENCY_P95  LATENCY_P99  MTLS\n\
             web   inbound    87.50%   40.0rps  3ms          9ms          9.8ms        87.50%\n"
        );
    }

    #[test]
    fn a_restarted_proxy_counts_from_zero_and_no_traffic_is_dashes() {
        let before = exposition(100, 0, 0, &[("+Inf", 100)]);
        let after = exposition(5, 0, 0, &[("+Inf", 5)]);
        let r = &rows(
            &[Scrape {
                counted_as: named("web"),
                before: before.clone(),
                after,
            }],
            1.0,
        )[0];
        assert_eq!(r.requests, 5.0);
        let idle = rows(
            &[Scrape {
                counted_as: named("web"),
                before: before.clone(),
                after: before,
            }],
            1.0,
        );
        assert_eq!(idle[0].success, None);
        assert_eq!(
            render(&idle),
            "NAME  DIRECTION  SUCCESS  RPS     LATENCY_P50  LATENCY_P95  LATENCY_P99  MTLS\n\
             web   inbound    -        0.0rps  -            -            -            -\n"
        );
    }

    /// `--local`: the proxies name their own rows, by namespace and
    /// workload as the cluster's rows are (or by namespace for `ns`).
    #[test]
    fn local_rows_are_named_by_the_proxies_own_namespace_and_workload() {
        let before = exposition(0, 0, 0, &[("+Inf", 0)]);
        let after = exposition(10, 0, 0, &[("0.001", 10), ("+Inf", 10)]);
        let scrape = |kind| Scrape {
            counted_as: CountedAs::Own(kind),
            before: before.clone(),
            after: after.clone(),
        };
        let by_workload = rows(&[scrape(Kind::Deploy)], 1.0);
        assert_eq!(
            (
                by_workload[0].namespace.as_deref(),
                by_workload[0].name.as_str()
            ),
            (Some("shop"), "web")
        );
        assert_eq!(
            render(&by_workload),
            "NAMESPACE  NAME  DIRECTION  SUCCESS  RPS      LATENCY_P50  LATENCY_P95  LATENCY_P99  MTLS\n\
             shop       web   inbound    100.00%  10.0rps  0.5ms        0.95ms       0.99ms       100.00%\n"
        );
        let by_namespace = rows(&[scrape(Kind::Ns)], 1.0);
        assert_eq!(
            (
                by_namespace[0].namespace.as_deref(),
                by_namespace[0].name.as_str()
            ),
            (None, "shop")
        );
        assert!(render(&by_namespace).starts_with("NAME  DIRECTION"));
    }

    #[test]
    fn a_proxy_that_cannot_be_read_is_named_in_a_warning() {
        assert_eq!(
            warning("pod shop/web-0", &"GET /metrics failed: reset"),
            "warning: no rows from pod shop/web-0: GET /metrics failed: reset"
        );
    }

    #[test]
    fn quantiles_follow_histogram_quantile() {
        let b = [(0.1, 10.0), (0.2, 20.0), (f64::INFINITY, 20.0)];
        assert_eq!(quantile(0.5, &b), Some(0.1));
        let near = |v: Option<f64>, want: f64| (v.unwrap() - want).abs() < 1e-12;
        assert!(near(quantile(0.75, &b), 0.15));
        assert!(near(quantile(0.25, &b), 0.05));
        // In +Inf: the highest finite bound.
        let b = [(0.1, 1.0), (f64::INFINITY, 10.0)];
        assert_eq!(quantile(0.99, &b), Some(0.1));
        assert_eq!(quantile(0.5, &[(f64::INFINITY, 0.0)]), None);
        assert_eq!(quantile(0.5, &[]), None);
        // Where Prometheus answers NaN: no +Inf bucket, or only +Inf.
        assert_eq!(quantile(0.5, &[(0.1, 4.0), (0.2, 8.0)]), None);
        assert_eq!(quantile(0.5, &[(f64::INFINITY, 8.0)]), None);
    }

    #[test]
    fn selectors_read_like_kubectl() {
        let s = |t: &str| t.parse::<Selector>();
        assert_eq!(
            s("deploy/web"),
            Ok(Selector {
                kind: Kind::Deploy,
                name: Some("web".into())
            })
        );
        assert_eq!(s("ns").unwrap().kind, Kind::Ns);
        assert_eq!(s("pod/web-0").unwrap().name.as_deref(), Some("web-0"));
        assert!(s("svc/web").is_err());
        assert!(s("deploy/").is_err());
        assert!(s("deploy/a/b").is_err());
        assert_eq!(parse_window("1s"), Ok(std::time::Duration::from_secs(1)));
        assert!(parse_window("0s").is_err());
    }
}

/// The edge: which proxies to scrape, and the scraping.
pub mod edge {
    use std::time::Duration;

    use tokio::time::Instant;

    use k8s_openapi::api::core::v1::Pod;
    use kube::api::{Api, ListParams};

    use super::{CountedAs, Kind, Scrape, Selector};
    use crate::cluster::ClusterError;
    use crate::proxy_admin::{Admin, AdminError};

    #[derive(Debug, thiserror::Error)]
    pub enum StatError {
        #[error(transparent)]
        Admin(#[from] AdminError),
        #[error(transparent)]
        Cluster(#[from] ClusterError),
        #[error("could not read any of the {0} proxies' /metrics (the warnings above say why)")]
        NoneRead(usize),
        #[error("pod rows need the cluster: with --local, say deploy or ns")]
        LocalPods,
        #[error(transparent)]
        Output(#[from] crate::output::OutputError),
        #[error("cannot write to stdout: {0}")]
        Stdout(#[from] std::io::Error),
        #[error("cannot list the pods of namespace {namespace}: {source}")]
        List {
            namespace: String,
            source: kube::Error,
        },
        #[error("cannot use {url} as Prometheus: {why} (say http://HOST:PORT, e.g. http://localhost:9090)")]
        Url { url: String, why: String },
        #[error("Prometheus at {url} did not answer {query}: {why}")]
        Prometheus {
            url: String,
            query: String,
            why: String,
        },
        #[error(
            "no meshed, running pod matches {what} in namespace {namespace} \
             (is the namespace annotated, and were its pods restarted since?)"
        )]
        NoPods { what: String, namespace: String },
    }

    /// The meshed, running pods `selector` names in `namespace` (`ns/NAME`
    /// names the namespace itself), each with what its traffic is counted
    /// under.
    pub async fn pods(
        client: &kube::Client,
        selector: &Selector,
        namespace: &str,
    ) -> Result<Vec<(CountedAs, Admin)>, StatError> {
        let namespace = match (selector.kind, &selector.name) {
            (Kind::Ns, Some(ns)) => ns.clone(),
            _ => namespace.to_string(),
        };
        let api: Api<Pod> = Api::namespaced(client.clone(), &namespace);
        let list = api
            .list(&ListParams::default())
            .await
            .map_err(|source| StatError::List {
                namespace: namespace.clone(),
                source,
            })?;
        let mut out = Vec::new();
        for pod in list.items {
            if !meshed_and_running(&pod) {
                continue;
            }
            let name = pod.metadata.name.clone().unwrap_or_default();
            let counted_as = match selector.kind {
                Kind::Pod => name.clone(),
                Kind::Deploy => workload(&pod),
                Kind::Ns => namespace.clone(),
            };
            let wanted = match (selector.kind, &selector.name) {
                (Kind::Ns, _) | (_, None) => true,
                (_, Some(want)) => *want == counted_as,
            };
            if wanted {
                out.push((
                    CountedAs::Named {
                        namespace: (selector.kind != Kind::Ns).then(|| namespace.clone()),
                        name: counted_as,
                    },
                    Admin::Pod {
                        client: client.clone(),
                        namespace: namespace.clone(),
                        name,
                    },
                ));
            }
        }
        if out.is_empty() {
            let what = match (&selector.name, selector.kind) {
                (Some(n), Kind::Deploy) => format!("deploy/{n}"),
                (Some(n), Kind::Pod) => format!("pod/{n}"),
                _ => "any workload".into(),
            };
            return Err(StatError::NoPods { what, namespace });
        }
        Ok(out)
    }

    fn meshed_and_running(pod: &Pod) -> bool {
        let meshed = crate::proxy_admin::has_proxy(pod);
        let running = pod
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .is_some_and(|p| p == "Running");
        meshed && running
    }

    /// The pod's top controller as the metrics name it (docs/metrics.md):
    /// the control plane's own rule, which labels the proxies' traffic.
    pub fn workload(pod: &Pod) -> String {
        outrigger_control_plane::translate::workload_of(pod)
    }

    /// How long Prometheus may take to answer all of `stat`'s queries.
    const PROMETHEUS_TIMEOUT: Duration = Duration::from_secs(30);

    /// The rows from Prometheus at `url` (plain HTTP) over `window`.
    pub async fn from_prometheus(
        url: &str,
        selector: &Selector,
        namespace: &str,
        window: Duration,
    ) -> Result<Vec<super::Row>, StatError> {
        use super::promql;
        let bad = |why: &str| StatError::Url {
            url: url.to_string(),
            why: why.to_string(),
        };
        let uri: http::Uri = url.parse().map_err(|_| bad("not a URL"))?;
        if uri.scheme_str() != Some("http") {
            return Err(bad("only http:// is supported"));
        }
        let host = uri.host().ok_or_else(|| bad("no host"))?;
        let port = uri.port_u16().unwrap_or(80);
        let addr = tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| bad(&e.to_string()))?
            .next()
            .ok_or_else(|| bad("the host has no address"))?;
        let prefix = uri.path().trim_end_matches('/');
        let window_text = format!("{}ms", window.as_millis());
        let queries = promql::queries(selector, namespace, &window_text);
        // Prometheus's own now, so that every query is evaluated at it.
        let now = format!("{prefix}{}", promql::query_path("time()", None));
        let now =
            crate::proxy_admin::get_from(addr, "Prometheus", &[now.as_str()], PROMETHEUS_TIMEOUT)
                .await?;
        let now: serde_json::Value = serde_json::from_str(&now[0]).unwrap_or_default();
        let now = now["data"]["result"][0].as_f64();
        let paths: Vec<String> = queries
            .iter()
            .map(|q| format!("{prefix}{}", promql::query_path(&q.promql, now)))
            .collect();
        let path_refs: Vec<&str> = paths.iter().map(String::as_str).collect();
        let bodies =
            crate::proxy_admin::get_from(addr, "Prometheus", &path_refs, PROMETHEUS_TIMEOUT)
                .await?;
        let mut answers = Vec::new();
        for (query, body) in queries.into_iter().zip(bodies) {
            let failed = |why: String| StatError::Prometheus {
                url: url.to_string(),
                query: query.promql.clone(),
                why,
            };
            let answer: promql::Answer =
                serde_json::from_str(&body).map_err(|e| failed(e.to_string()))?;
            if answer.status != "success" {
                return Err(failed(answer.error.unwrap_or(answer.status)));
            }
            answers.push((query, answer));
        }
        let namespace = (selector.kind != Kind::Ns).then_some(namespace);
        Ok(promql::rows(&answers, window.as_secs_f64(), namespace))
    }

    /// Each target's `/metrics`, twice, `window` apart: the scrapes of
    /// the targets read both times, the seconds that really passed between
    /// the two rounds, and each target that could not be read (named as
    /// [`Admin::describe`] names it) with why.
    pub async fn scrape_twice(
        targets: &[(CountedAs, Admin)],
        window: Duration,
    ) -> (Vec<Scrape>, f64, Vec<(String, AdminError)>) {
        let started = Instant::now();
        let mut failed = Vec::new();
        let mut first = Vec::new();
        for (counted_as, admin) in targets {
            match admin.get("/metrics").await {
                Ok(before) => first.push((counted_as, admin, before)),
                Err(e) => failed.push((admin.describe(), e)),
            }
        }
        tokio::time::sleep_until(started + window).await;
        let second = Instant::now();
        let mut scrapes = Vec::new();
        for (counted_as, admin, before) in first {
            match admin.get("/metrics").await {
                Ok(after) => scrapes.push(Scrape {
                    counted_as: counted_as.clone(),
                    before,
                    after,
                }),
                Err(e) => failed.push((admin.describe(), e)),
            }
        }
        (scrapes, (second - started).as_secs_f64(), failed)
    }
}

/// `outrigger stat`: the rows for `selector`, from the cluster's pods, the
/// proxies at `local`, or the Prometheus at `from`, printed as `format`
/// says. A proxy that cannot be read is a warning on stderr; it fails only
/// when none could be.
pub async fn run(
    cluster: &crate::cluster::ClusterArgs,
    selector: Selector,
    window: std::time::Duration,
    local: Vec<std::net::SocketAddr>,
    from: Option<String>,
    format: crate::output::Format,
) -> Result<(), edge::StatError> {
    use crate::proxy_admin::Admin;
    use edge::StatError;
    let print = |rows: &[Row]| -> Result<(), StatError> {
        let text = match crate::output::structured(format, &rows)? {
            Some(text) => text,
            None => render(rows),
        };
        Ok(crate::output::print(&text)?)
    };
    if let Some(url) = from {
        let namespace = match cluster.namespace.clone() {
            Some(ns) => ns,
            // Without -n, the kubeconfig's namespace when there is one.
            None => cluster
                .config()
                .await
                .map_or_else(|_| "default".to_string(), |c| c.default_namespace),
        };
        let rows = edge::from_prometheus(&url, &selector, &namespace, window).await?;
        return print(&rows);
    }
    let local_mode = !local.is_empty();
    let targets = if !local_mode {
        let (client, namespace) = cluster.client_in().await?;
        edge::pods(&client, &selector, &namespace).await?
    } else {
        if selector.kind == Kind::Pod {
            return Err(StatError::LocalPods);
        }
        local
            .into_iter()
            .map(|a| (CountedAs::Own(selector.kind), Admin::Local(a)))
            .collect()
    };
    let (scrapes, elapsed, failed) = edge::scrape_twice(&targets, window).await;
    for (what, why) in &failed {
        eprintln!("{}", warning(what, why));
    }
    if scrapes.is_empty() {
        return Err(StatError::NoneRead(targets.len()));
    }
    let mut rows = rows(&scrapes, elapsed);
    if local_mode {
        // The proxies name themselves: keep what the selector names.
        if let Some(name) = &selector.name {
            rows.retain(|r| r.name == *name);
        }
    }
    print(&rows)
}

/// The stderr line for a proxy `stat` could not read.
pub fn warning(what: &str, why: &dyn std::fmt::Display) -> String {
    format!("warning: no rows from {what}: {why}")
}

#[cfg(test)]
mod edge_tests {
    use k8s_openapi::api::core::v1::Pod;

    fn pod(owner_kind: &str, owner: &str, labels: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p-1", "labels": labels, "ownerReferences": [
                {"apiVersion": "v1", "kind": owner_kind, "name": owner, "uid": "u",
                 "controller": true}]}
        }))
        .unwrap()
    }

    /// The names the proxies' `*_workload` labels carry (docs/metrics.md),
    /// or `stat deploy/NAME` finds no pod its metrics count under.
    #[test]
    fn pods_are_counted_under_the_workload_their_metrics_name() {
        let w = super::edge::workload;
        let none = serde_json::json!({});
        assert_eq!(w(&pod("Job", "nightly-28901234", none.clone())), "nightly");
        assert_eq!(
            w(&pod(
                "ReplicaSet",
                "web-6d7f",
                serde_json::json!({"rollouts-pod-template-hash": "6d7f"})
            )),
            "web"
        );
        assert_eq!(w(&pod("ReplicaSet", "web-5d8f9c7b6", none.clone())), "web");
        assert_eq!(w(&pod("StatefulSet", "db", none)), "db");
    }
}

/// `--from PROMETHEUS_URL`: the same rows from Prometheus, by PromQL over
/// the proxies' series (`rate` and `histogram_quantile` over the window).
pub mod promql {
    use std::collections::BTreeMap;

    use serde::Deserialize;

    use super::{Kind, Row, Selector};

    /// What one query gives for each name.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
    pub enum Measure {
        Rps,
        SuccessRps,
        MtlsRps,
        P50,
        P95,
        P99,
    }

    /// One query: what it measures, for which direction, by which label.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct Query {
        pub measure: Measure,
        pub direction: &'static str,
        pub by: &'static str,
        pub promql: String,
    }

    /// The label rows are named by: the proxy's own side of the traffic.
    fn by(kind: Kind, direction: &str) -> &'static str {
        match (kind, direction) {
            (Kind::Pod, _) => "pod",
            (Kind::Deploy, "inbound") => "destination_workload",
            (Kind::Deploy, _) => "source_workload",
            (Kind::Ns, "inbound") => "destination_namespace",
            (Kind::Ns, _) => "source_namespace",
        }
    }

    /// PromQL string literal.
    fn quote(s: &str) -> String {
        format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
    }

    /// The queries for `selector` in `namespace` over a `window` such as
    /// `30s`.
    pub fn queries(selector: &Selector, namespace: &str, window: &str) -> Vec<Query> {
        let mut out = Vec::new();
        for direction in ["inbound", "outbound"] {
            let by = by(selector.kind, direction);
            let own_ns = if direction == "inbound" {
                "destination_namespace"
            } else {
                "source_namespace"
            };
            let namespace = match (selector.kind, &selector.name) {
                (Kind::Ns, Some(ns)) => ns.as_str(),
                _ => namespace,
            };
            let mut filter = format!("direction=\"{direction}\",{own_ns}={}", quote(namespace));
            if let (Some(name), false) = (&selector.name, selector.kind == Kind::Ns) {
                filter.push_str(&format!(",{by}={}", quote(name)));
            }
            let rate = |family: &str, more: &str, extra_by: &str| {
                format!("sum by ({by}{extra_by}) (rate({family}{{{filter}{more}}}[{window}]))")
            };
            let requests = "outrigger_requests_total";
            let mut push = |measure, promql| {
                out.push(Query {
                    measure,
                    direction,
                    by,
                    promql,
                })
            };
            push(Measure::Rps, rate(requests, "", ""));
            push(
                Measure::SuccessRps,
                rate(
                    requests,
                    ",response_code!~\"5..|0\",grpc_response_status=~\"|0\"",
                    "",
                ),
            );
            push(
                Measure::MtlsRps,
                rate(requests, ",connection_security_policy=\"mutual_tls\"", ""),
            );
            let buckets = rate("outrigger_request_duration_seconds_bucket", "", ", le");
            for (measure, q) in [
                (Measure::P50, 0.5),
                (Measure::P95, 0.95),
                (Measure::P99, 0.99),
            ] {
                push(measure, format!("histogram_quantile({q}, {buckets})"));
            }
        }
        out
    }

    /// Prometheus's answer to an instant query.
    #[derive(Debug, Deserialize)]
    pub struct Answer {
        pub status: String,
        #[serde(default)]
        pub error: Option<String>,
        #[serde(default)]
        pub data: Option<Data>,
    }

    #[derive(Debug, Deserialize)]
    pub struct Data {
        pub result: Vec<Series>,
    }

    #[derive(Debug, Deserialize)]
    pub struct Series {
        pub metric: BTreeMap<String, String>,
        /// `[timestamp, "value"]`.
        pub value: (f64, String),
    }

    /// The rows from each query's answer; `window` in seconds; `namespace`
    /// the rows' (none for namespaces' rows).
    pub fn rows(answers: &[(Query, Answer)], window: f64, namespace: Option<&str>) -> Vec<Row> {
        let mut values: BTreeMap<(String, String), BTreeMap<Measure, f64>> = BTreeMap::new();
        for (query, answer) in answers {
            for s in answer.data.iter().flat_map(|d| &d.result) {
                let name = s.metric.get(query.by).cloned().unwrap_or_default();
                let Ok(v) = s.value.1.parse::<f64>() else {
                    continue;
                };
                if v.is_nan() {
                    continue;
                }
                values
                    .entry((name, query.direction.to_string()))
                    .or_default()
                    .insert(query.measure, v);
            }
        }
        values
            .into_iter()
            .filter_map(|((name, direction), m)| {
                let rps = *m.get(&Measure::Rps)?;
                let share = |k| (rps > 0.0).then(|| m.get(&k).copied().unwrap_or(0.0) / rps);
                let ms = |k| m.get(&k).map(|s| s * 1000.0);
                Some(Row {
                    namespace: namespace.map(str::to_string),
                    name,
                    direction,
                    requests: rps * window,
                    rps,
                    success: share(Measure::SuccessRps),
                    p50_ms: ms(Measure::P50),
                    p95_ms: ms(Measure::P95),
                    p99_ms: ms(Measure::P99),
                    mtls: share(Measure::MtlsRps),
                })
            })
            .collect()
    }

    /// `/api/v1/query?query=…`, percent-encoded, evaluated at `time` (Unix
    /// seconds) when given: every query of one `stat` is evaluated at the
    /// same instant, so that shares of the request rate stay within 0..=1.
    pub fn query_path(promql: &str, time: Option<f64>) -> String {
        let mut out = String::from("/api/v1/query");
        if let Some(t) = time {
            out.push_str(&format!("?time={t:.3}&query="));
        } else {
            out.push_str("?query=");
        }
        for b in promql.bytes() {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                out.push(b as char);
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
        out
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn queries_name_the_direction_namespace_and_workload() {
            let s: Selector = "deploy/web".parse().unwrap();
            let q = queries(&s, "shop", "30s");
            assert_eq!(q.len(), 12);
            assert_eq!(
                q[0].promql,
                "sum by (destination_workload) (rate(outrigger_requests_total{direction=\"inbound\",\
                 destination_namespace=\"shop\",destination_workload=\"web\"}[30s]))"
            );
            assert_eq!(
                q[1].promql,
                "sum by (destination_workload) (rate(outrigger_requests_total{direction=\"inbound\",\
                 destination_namespace=\"shop\",destination_workload=\"web\",\
                 response_code!~\"5..|0\",grpc_response_status=~\"|0\"}[30s]))"
            );
            assert_eq!(
                q[9].promql,
                "histogram_quantile(0.5, sum by (source_workload, le) \
                 (rate(outrigger_request_duration_seconds_bucket{direction=\"outbound\",\
                 source_namespace=\"shop\",source_workload=\"web\"}[30s])))"
            );
            let ns = queries(&"ns/prod".parse().unwrap(), "shop", "1m");
            assert_eq!(
                ns[6].promql,
                "sum by (source_namespace) (rate(outrigger_requests_total{direction=\"outbound\",\
                 source_namespace=\"prod\"}[1m]))"
            );
            assert_eq!(
                query_path("up{a=\"b c\"}", None),
                "/api/v1/query?query=up%7Ba%3D%22b%20c%22%7D"
            );
            assert_eq!(
                query_path("time()", Some(1_800_000_000.25)),
                "/api/v1/query?time=1800000000.250&query=time%28%29"
            );
        }

        #[test]
        fn rows_come_from_the_answers() {
            let s: Selector = "deploy".parse().unwrap();
            let q = queries(&s, "shop", "10s");
            let answer = |v: &str| Answer {
                status: "success".into(),
                error: None,
                data: Some(Data {
                    result: vec![Series {
                        metric: [("destination_workload".to_string(), "web".to_string())].into(),
                        value: (1.0, v.into()),
                    }],
                }),
            };
            let values = ["20", "19", "10", "0.003", "0.009", "NaN"];
            let answers: Vec<(Query, Answer)> = q[..6]
                .iter()
                .cloned()
                .zip(values.iter().map(|v| answer(v)))
                .collect();
            let rows = rows(&answers, 10.0, Some("shop"));
            assert_eq!(rows.len(), 1);
            let r = &rows[0];
            assert_eq!((r.name.as_str(), r.direction.as_str()), ("web", "inbound"));
            assert_eq!((r.rps, r.requests), (20.0, 200.0));
            assert_eq!((r.success, r.mtls), (Some(0.95), Some(0.5)));
            assert_eq!((r.p50_ms, r.p95_ms, r.p99_ms), (Some(3.0), Some(9.0), None));
        }
    }
}
