//! Istio's standard metrics (`--metrics-format istio`): the same families
//! and the same per-request keys as the `outrigger_*` ones, named and
//! labelled Istio's way when they are encoded, at scrape time. Nothing of
//! this runs per request.
//!
//! A family registered under an Istio name is wrapped in [`View`], which
//! puts the [`Context`] (cluster domain and name, the workloads' canonical
//! service, revision, app and version) in a thread-local while the registry
//! encodes it; the label sets ([`TrafficLabels`], [`RequestLabels`],
//! [`TcpLabels`]) encode Istio's labels when they find it there, and their
//! own otherwise.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::{Arc, RwLock};

use prometheus_client::encoding::{
    EncodeLabel, EncodeLabelValue, EncodeMetric, LabelSetEncoder, LabelValueEncoder, MetricEncoder,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Metric;

use super::{unknown, Direction, Name, RequestLabels, SecurityPolicy, TrafficLabels};

/// Envoy's default histogram buckets, which Istio's duration (in
/// milliseconds) and size (in bytes) histograms use.
pub const BUCKETS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

/// What Istio's labels say of one workload besides its name: from its
/// pod's labels, in Istio's order of fallbacks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    /// `app`, else `app.kubernetes.io/name`, else `unknown`.
    pub app: Name,
    /// `version`, else `app.kubernetes.io/version`, else `unknown`.
    pub version: Name,
    /// `service.istio.io/canonical-name`, else `app.kubernetes.io/name`,
    /// else `app`, else the workload's name.
    pub canonical_service: Name,
    /// `service.istio.io/canonical-revision`, else
    /// `app.kubernetes.io/version`, else `version`, else `latest`.
    pub canonical_revision: Name,
}

pub const CANONICAL_NAME: &str = "service.istio.io/canonical-name";
pub const CANONICAL_REVISION: &str = "service.istio.io/canonical-revision";
const NAME_LABELS: [&str; 3] = [CANONICAL_NAME, "app.kubernetes.io/name", "app"];
const REVISION_LABELS: [&str; 3] = [CANONICAL_REVISION, "app.kubernetes.io/version", "version"];
const APP_LABELS: [&str; 2] = ["app", "app.kubernetes.io/name"];
const VERSION_LABELS: [&str; 2] = ["version", "app.kubernetes.io/version"];

/// The pod labels the Istio labels are derived from (what the injector
/// hands the proxy of its own pod).
pub const LABELS: [&str; 6] = [
    CANONICAL_NAME,
    CANONICAL_REVISION,
    "app.kubernetes.io/name",
    "app.kubernetes.io/version",
    "app",
    "version",
];

fn first(labels: &BTreeMap<String, String>, keys: &[&str]) -> Option<Name> {
    keys.iter()
        .find_map(|k| labels.get(*k))
        .map(|v| Name::from(v.as_str()))
}

impl Peer {
    /// The values of a known workload `workload` whose pods carry `labels`.
    pub fn of(labels: &BTreeMap<String, String>, workload: &Name) -> Self {
        Self {
            app: first(labels, &APP_LABELS).unwrap_or_else(unknown),
            version: first(labels, &VERSION_LABELS).unwrap_or_else(unknown),
            canonical_service: first(labels, &NAME_LABELS).unwrap_or_else(|| workload.clone()),
            canonical_revision: first(labels, &REVISION_LABELS).unwrap_or_else(latest),
        }
    }
}

fn latest() -> Name {
    Name::from("latest")
}

/// What the Istio labels need beyond a series' key: set once, and the
/// workloads' values kept current by [`super::Metrics::applied`].
#[derive(Debug)]
pub struct Context {
    /// `.svc.<cluster domain>`, appended to `name.namespace`.
    svc_suffix: String,
    /// `source_cluster` / `destination_cluster` of known workloads.
    cluster: Name,
    /// This proxy's own pod labels (its workload's values).
    own_labels: BTreeMap<String, String>,
    /// (namespace, workload) → values, from the endpoints of every config
    /// applied (kept after a workload leaves, so its series keep their
    /// labels; bounded by the workloads the mesh has shown this proxy).
    workloads: RwLock<HashMap<(Name, Name), Arc<Peer>>>,
}

impl Context {
    pub fn new(cluster_domain: &str, cluster: &str, own_labels: BTreeMap<String, String>) -> Self {
        Self {
            svc_suffix: format!(".svc.{cluster_domain}"),
            cluster: Name::from(cluster),
            own_labels,
            workloads: RwLock::default(),
        }
    }

    /// Learns the workloads of a configuration: its endpoints' and this
    /// proxy's own.
    pub fn learn(&self, cfg: &outrigger_proxy_policy::config::Config) {
        let mut found = Vec::new();
        for svc in cfg.services() {
            for ep in &svc.endpoints {
                if ep.peer.workload != unknown() {
                    found.push((&ep.peer, &ep.labels));
                }
            }
        }
        let mut map = self.workloads.write().unwrap_or_else(|p| p.into_inner());
        for (w, labels) in found {
            map.insert(
                (w.namespace.clone(), w.workload.clone()),
                Arc::new(Peer::of(labels, &w.workload)),
            );
        }
        if cfg.proxy.workload != unknown() {
            map.insert(
                (cfg.proxy.namespace.clone(), cfg.proxy.workload.clone()),
                Arc::new(Peer::of(&self.own_labels, &cfg.proxy.workload)),
            );
        }
    }

    /// The values of the workload `workload` of `namespace`.
    fn peer(&self, namespace: &Name, workload: &Name) -> Side {
        if *workload == unknown() {
            return Side {
                peer: Peer {
                    app: unknown(),
                    version: unknown(),
                    canonical_service: unknown(),
                    canonical_revision: latest(),
                },
                cluster: unknown(),
            };
        }
        let map = self.workloads.read().unwrap_or_else(|p| p.into_inner());
        let peer = map
            .get(&(namespace.clone(), workload.clone()))
            .map(|p| Peer::clone(p))
            .unwrap_or_else(|| Peer::of(&BTreeMap::new(), workload));
        Side {
            peer,
            cluster: self.cluster.clone(),
        }
    }
}

struct Side {
    peer: Peer,
    cluster: Name,
}

thread_local! {
    /// The context of the Istio family being encoded on this thread.
    static CONTEXT: RefCell<Option<Arc<Context>>> = const { RefCell::new(None) };
    /// Which side of a [`super::ByteMeters`] the family being encoded shows.
    static BYTES_SIDE: Cell<BytesSide> = const { Cell::new(BytesSide::Request) };
}

/// The request or the response side of a byte meter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BytesSide {
    Request,
    Response,
}

pub(super) fn bytes_side() -> BytesSide {
    BYTES_SIDE.with(Cell::get)
}

/// Runs `f` with the Istio context `ctx` (or none) in force on this thread.
fn with_context<T>(ctx: Option<&Arc<Context>>, f: impl FnOnce() -> T) -> T {
    let previous = CONTEXT.with(|c| c.replace(ctx.cloned()));
    let out = f();
    CONTEXT.with(|c| *c.borrow_mut() = previous);
    out
}

/// The Istio context of the family being encoded on this thread, if any.
pub(super) fn context() -> Option<Arc<Context>> {
    CONTEXT.with(|c| c.borrow().clone())
}

/// A family as one of Istio's: its series encoded with `ctx` in force.
#[derive(Debug)]
pub struct View {
    pub inner: Box<dyn Metric>,
    pub ctx: Option<Arc<Context>>,
    /// For a family of [`super::ByteMeters`]: the side it shows, and the
    /// type (counter or histogram) it has.
    pub bytes: Option<(BytesSide, MetricType)>,
}

impl EncodeMetric for View {
    fn encode(&self, encoder: MetricEncoder) -> std::fmt::Result {
        if let Some((side, _)) = self.bytes {
            BYTES_SIDE.with(|s| s.set(side));
        }
        with_context(self.ctx.as_ref(), || self.inner.encode(encoder))
    }

    fn metric_type(&self) -> MetricType {
        match self.bytes {
            Some((_, t)) => t,
            None => self.inner.metric_type(),
        }
    }

    fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }
}

/// One label whose value is written in pieces.
fn label(
    e: &mut LabelSetEncoder,
    key: &str,
    value: &dyn Fn(&mut LabelValueEncoder) -> std::fmt::Result,
) -> std::fmt::Result {
    struct Piecewise<'a>(&'a dyn Fn(&mut LabelValueEncoder) -> std::fmt::Result);
    impl EncodeLabelValue for Piecewise<'_> {
        fn encode(&self, e: &mut LabelValueEncoder) -> std::fmt::Result {
            (self.0)(e)
        }
    }
    (key, Piecewise(value)).encode(e.encode_label())
}

fn text(e: &mut LabelSetEncoder, key: &str, value: &str) -> std::fmt::Result {
    (key, value).encode(e.encode_label())
}

/// Istio's labels of a hop (the ones every family has), `protocol` being
/// `request_protocol`.
pub(super) fn encode_traffic(
    t: &TrafficLabels,
    ctx: &Context,
    protocol: &str,
    e: &mut LabelSetEncoder,
) -> std::fmt::Result {
    let (reporter, policy) = match t.direction {
        // The client side cannot know what the server side enforced.
        Direction::Outbound => ("source", "unknown"),
        Direction::Inbound => (
            "destination",
            match t.connection_security_policy {
                SecurityPolicy::MutualTls => "mutual_tls",
                SecurityPolicy::None => "none",
            },
        ),
    };
    let src = ctx.peer(&t.source_namespace, &t.source_workload);
    let dst = ctx.peer(&t.destination_namespace, &t.destination_workload);
    text(e, "reporter", reporter)?;
    text(e, "source_workload", &t.source_workload)?;
    text(e, "source_canonical_service", &src.peer.canonical_service)?;
    text(e, "source_canonical_revision", &src.peer.canonical_revision)?;
    text(e, "source_workload_namespace", &t.source_namespace)?;
    text(e, "source_principal", &t.source_principal)?;
    text(e, "source_app", &src.peer.app)?;
    text(e, "source_version", &src.peer.version)?;
    text(e, "source_cluster", &src.cluster)?;
    text(e, "destination_workload", &t.destination_workload)?;
    text(
        e,
        "destination_workload_namespace",
        &t.destination_namespace,
    )?;
    text(e, "destination_principal", &t.destination_principal)?;
    text(e, "destination_app", &dst.peer.app)?;
    text(e, "destination_version", &dst.peer.version)?;
    let service = &*t.destination_service;
    // `name.namespace` (service names hold no dot), or `unknown`.
    let (name, namespace) = service.split_once('.').unwrap_or((service, "unknown"));
    label(e, "destination_service", &|v| {
        v.write_str(service)?;
        if service != "unknown" {
            v.write_str(&ctx.svc_suffix)?;
        }
        Ok(())
    })?;
    text(e, "destination_service_name", name)?;
    text(e, "destination_service_namespace", namespace)?;
    text(
        e,
        "destination_canonical_service",
        &dst.peer.canonical_service,
    )?;
    text(
        e,
        "destination_canonical_revision",
        &dst.peer.canonical_revision,
    )?;
    text(e, "destination_cluster", &dst.cluster)?;
    text(e, "request_protocol", protocol)?;
    text(e, "connection_security_policy", policy)
}

/// Istio's labels of a request.
pub(super) fn encode_request(
    r: &RequestLabels,
    ctx: &Context,
    e: &mut LabelSetEncoder,
) -> std::fmt::Result {
    // gRPC: the request said so (its content type), or its response did
    // (a `grpc-status`).
    let grpc = r.grpc_response_status;
    let protocol = if grpc.is_grpc() { "grpc" } else { "http" };
    encode_traffic(&r.traffic, ctx, protocol, e)?;
    ("response_code", r.response_code).encode(e.encode_label())?;
    ("grpc_response_status", grpc).encode(e.encode_label())?;
    text(e, "response_flags", r.response_flags.as_str())
}

/// Istio's labels of an opaque TCP connection.
pub(super) fn encode_tcp(
    t: &TrafficLabels,
    ctx: &Context,
    e: &mut LabelSetEncoder,
) -> std::fmt::Result {
    encode_traffic(t, ctx, "tcp", e)?;
    text(e, "response_flags", "-")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::Protocol;
    use crate::metrics::{
        GrpcStatus, Metrics, MetricsFormat, MetricsOptions, ResponseFlag, TcpLabels, Workload,
    };

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn canonical_service_and_revision_follow_istios_order() {
        let w: Name = "reviews-v1".into();
        let p = Peer::of(
            &labels(&[
                (CANONICAL_NAME, "reviews-canon"),
                ("app.kubernetes.io/name", "reviews-k8s"),
                ("app", "reviews"),
                (CANONICAL_REVISION, "r7"),
                ("app.kubernetes.io/version", "k8s-v1"),
                ("version", "v1"),
            ]),
            &w,
        );
        assert_eq!(
            (&*p.canonical_service, &*p.canonical_revision),
            ("reviews-canon", "r7")
        );
        // `app` and `version` come first for Istio's app and version labels.
        assert_eq!((&*p.app, &*p.version), ("reviews", "v1"));
        let p = Peer::of(
            &labels(&[
                ("app.kubernetes.io/name", "reviews-k8s"),
                ("app", "reviews"),
                ("app.kubernetes.io/version", "k8s-v1"),
                ("version", "v1"),
            ]),
            &w,
        );
        assert_eq!(
            (&*p.canonical_service, &*p.canonical_revision),
            ("reviews-k8s", "k8s-v1")
        );
        let p = Peer::of(&labels(&[("app", "reviews"), ("version", "v1")]), &w);
        assert_eq!(
            (&*p.canonical_service, &*p.canonical_revision),
            ("reviews", "v1")
        );
        let p = Peer::of(
            &labels(&[
                ("app.kubernetes.io/name", "reviews-k8s"),
                ("app.kubernetes.io/version", "k8s-v1"),
            ]),
            &w,
        );
        assert_eq!((&*p.app, &*p.version), ("reviews-k8s", "k8s-v1"));
        // Nothing: the workload's name, `latest`, and unknown app/version.
        let p = Peer::of(&BTreeMap::new(), &w);
        assert_eq!(
            (
                &*p.canonical_service,
                &*p.canonical_revision,
                &*p.app,
                &*p.version
            ),
            ("reviews-v1", "latest", "unknown", "unknown")
        );
    }

    /// Two workloads of `shop`: this proxy (`productpage`, labels from its
    /// pod) and `reviews-v1` behind `reviews.shop`.
    fn istio_metrics(domain: &str) -> Metrics {
        let m = Metrics::with_options(&MetricsOptions {
            format: MetricsFormat::Istio,
            cluster_domain: domain.into(),
            cluster_name: "east".into(),
            pod_labels: labels(&[("app", "productpage"), ("version", "v1")]),
        });
        let snapshot = outrigger_api::Snapshot::from_yaml(
            r#"
version: "1"
proxy: { workload: productpage, namespace: shop }
services:
  - name: reviews
    namespace: shop
    ports: [9080]
    endpoints:
      - address: "10.0.0.2:9080"
        workload: reviews-v1
        identity: "spiffe://cluster.local/ns/shop/sa/reviews"
        meshed: true
        labels: { app: reviews, version: v1, "service.istio.io/canonical-name": reviews-canon }
"#,
        )
        .unwrap();
        let cfg = outrigger_proxy_policy::config::Config::try_from(snapshot).unwrap();
        m.applied(&cfg);
        m
    }

    fn me() -> Workload {
        Workload {
            workload: "productpage".into(),
            namespace: "shop".into(),
            principal: "spiffe://cluster.local/ns/shop/sa/productpage".into(),
        }
    }

    fn reviews() -> Workload {
        Workload {
            workload: "reviews-v1".into(),
            namespace: "shop".into(),
            principal: "spiffe://cluster.local/ns/shop/sa/reviews".into(),
        }
    }

    /// The labels of the one line of `family` (`name{...} value`).
    fn series(text: &str, family: &str) -> (BTreeMap<String, String>, String) {
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with(&format!("{family}{{")))
            .collect();
        assert_eq!(lines.len(), 1, "{family}:\n{text}");
        parse(lines[0])
    }

    fn parse(line: &str) -> (BTreeMap<String, String>, String) {
        let open = line.find('{').unwrap();
        let close = line.rfind('}').unwrap();
        let mut out = BTreeMap::new();
        let body = &line[open + 1..close];
        let mut rest = body;
        while let Some(eq) = rest.find("=\"") {
            let key = rest[..eq].trim_start_matches(',').to_string();
            let after = &rest[eq + 2..];
            let end = after.find('"').unwrap();
            out.insert(key, after[..end].to_string());
            rest = &after[end + 1..];
        }
        (out, line[close + 1..].trim().to_string())
    }

    /// A plain HTTP request's labels: `traffic`, answered `code`, no gRPC
    /// status, no response flag.
    fn answered(traffic: TrafficLabels, code: u16) -> RequestLabels {
        RequestLabels {
            traffic,
            response_code: code,
            grpc_response_status: GrpcStatus(None),
            response_flags: ResponseFlag::None,
        }
    }

    fn expect(got: &BTreeMap<String, String>, want: &[(&str, &str)]) {
        for (k, v) in want {
            assert_eq!(
                got.get(*k).map(String::as_str),
                Some(*v),
                "label {k} in {got:?}"
            );
        }
    }

    #[test]
    fn outbound_grpc_over_mutual_tls_is_reported_by_the_source() {
        let m = istio_metrics("cluster.local");
        let mut traffic = TrafficLabels::new(
            Direction::Outbound,
            &me(),
            &reviews(),
            "reviews.shop".into(),
        );
        traffic.connection_security_policy = SecurityPolicy::MutualTls;
        let r = RequestLabels {
            traffic,
            response_code: 200,
            grpc_response_status: GrpcStatus(Some(14)),
            response_flags: ResponseFlag::None,
        };
        m.requests.get_or_create(&r).inc();
        let text = m.encode();
        let (l, v) = series(&text, "istio_requests_total");
        assert_eq!(v, "1");
        expect(
            &l,
            &[
                ("reporter", "source"),
                ("source_workload", "productpage"),
                ("source_workload_namespace", "shop"),
                (
                    "source_principal",
                    "spiffe://cluster.local/ns/shop/sa/productpage",
                ),
                ("source_app", "productpage"),
                ("source_version", "v1"),
                ("source_canonical_service", "productpage"),
                ("source_canonical_revision", "v1"),
                ("source_cluster", "east"),
                ("destination_workload", "reviews-v1"),
                ("destination_workload_namespace", "shop"),
                (
                    "destination_principal",
                    "spiffe://cluster.local/ns/shop/sa/reviews",
                ),
                ("destination_app", "reviews"),
                ("destination_version", "v1"),
                ("destination_service", "reviews.shop.svc.cluster.local"),
                ("destination_service_name", "reviews"),
                ("destination_service_namespace", "shop"),
                ("destination_canonical_service", "reviews-canon"),
                ("destination_canonical_revision", "v1"),
                ("destination_cluster", "east"),
                ("request_protocol", "grpc"),
                ("response_code", "200"),
                ("grpc_response_status", "14"),
                ("response_flags", "-"),
                // Istio's client side does not know the server's policy.
                ("connection_security_policy", "unknown"),
            ],
        );
        assert_eq!(l.len(), 25, "{l:?}");
        assert!(!text.contains("outrigger_requests"), "{text}");
        assert!(
            text.lines()
                .filter(|l| l.starts_with("istio_"))
                .all(|l| !l.contains("direction=")),
            "{text}"
        );
    }

    #[test]
    fn inbound_http_is_reported_by_the_destination_with_its_policy() {
        let m = istio_metrics("corp.example");
        // Over mutual TLS, from a peer the snapshot shows.
        let mut t = TrafficLabels::new(
            Direction::Inbound,
            &me(),
            &reviews(),
            "productpage.shop".into(),
        );
        t.connection_security_policy = SecurityPolicy::MutualTls;
        let r = RequestLabels {
            traffic: t,
            response_code: 503,
            grpc_response_status: GrpcStatus(None),
            response_flags: ResponseFlag::UpstreamOverflow,
        };
        m.requests.get_or_create(&r).inc();
        let text = m.encode();
        let (l, _) = series(&text, "istio_requests_total");
        expect(
            &l,
            &[
                ("reporter", "destination"),
                ("source_workload", "reviews-v1"),
                ("source_app", "reviews"),
                ("source_canonical_service", "reviews-canon"),
                ("destination_workload", "productpage"),
                ("destination_app", "productpage"),
                ("destination_service", "productpage.shop.svc.corp.example"),
                ("destination_service_name", "productpage"),
                ("destination_service_namespace", "shop"),
                ("request_protocol", "http"),
                ("response_code", "503"),
                ("grpc_response_status", ""),
                ("response_flags", "UO"),
                ("connection_security_policy", "mutual_tls"),
            ],
        );
        // Plaintext, from a client nobody knows: unknown, and `none`.
        let m = istio_metrics("cluster.local");
        let t =
            TrafficLabels::new(Direction::Inbound, &me(), &Workload::unknown(), unknown()).proven();
        let r = answered(t, 200);
        m.requests.get_or_create(&r).inc();
        let text = m.encode();
        let (l, _) = series(&text, "istio_requests_total");
        expect(
            &l,
            &[
                ("source_workload", "unknown"),
                ("source_workload_namespace", "unknown"),
                ("source_principal", "unknown"),
                ("source_app", "unknown"),
                ("source_version", "unknown"),
                ("source_canonical_service", "unknown"),
                ("source_canonical_revision", "latest"),
                ("source_cluster", "unknown"),
                ("destination_principal", "unknown"),
                ("destination_service", "unknown"),
                ("destination_service_name", "unknown"),
                ("destination_service_namespace", "unknown"),
                ("destination_cluster", "east"),
                ("connection_security_policy", "none"),
            ],
        );
    }

    #[test]
    fn outbound_plaintext_names_no_principal_and_the_policy_unknown() {
        let m = istio_metrics("cluster.local");
        let details = Workload {
            workload: "details-v1".into(),
            namespace: "shop".into(),
            principal: unknown(),
        };
        let t = TrafficLabels::new(Direction::Outbound, &me(), &details, "details.shop".into())
            .proven();
        m.requests.get_or_create(&answered(t, 404)).inc();
        let (l, _) = series(&m.encode(), "istio_requests_total");
        expect(
            &l,
            &[
                ("reporter", "source"),
                ("source_principal", "unknown"),
                ("destination_principal", "unknown"),
                ("destination_workload", "details-v1"),
                ("destination_canonical_service", "details-v1"),
                ("destination_service", "details.shop.svc.cluster.local"),
                ("request_protocol", "http"),
                ("response_code", "404"),
                ("grpc_response_status", ""),
                ("connection_security_policy", "unknown"),
            ],
        );
    }

    #[test]
    fn a_workload_the_snapshot_does_not_show_falls_back_to_its_name() {
        let m = istio_metrics("cluster.local");
        let stranger = Workload {
            workload: "ratings-v2".into(),
            namespace: "other".into(),
            principal: unknown(),
        };
        let t = TrafficLabels::new(
            Direction::Inbound,
            &me(),
            &stranger,
            "productpage.shop".into(),
        );
        m.requests.get_or_create(&answered(t, 200)).inc();
        let (l, _) = series(&m.encode(), "istio_requests_total");
        expect(
            &l,
            &[
                ("source_workload", "ratings-v2"),
                ("source_canonical_service", "ratings-v2"),
                ("source_canonical_revision", "latest"),
                ("source_app", "unknown"),
                ("source_version", "unknown"),
                ("source_cluster", "east"),
            ],
        );
    }

    fn bucket(text: &str, family: &str, le: &str) -> String {
        let line = text
            .lines()
            .find(|l| {
                l.starts_with(&format!("{family}_bucket{{")) && l.contains(&format!("le=\"{le}\""))
            })
            .unwrap_or_else(|| panic!("{family} le={le}\n{text}"));
        parse(line).1
    }

    #[test]
    fn durations_are_milliseconds_in_envoys_buckets() {
        let m = istio_metrics("cluster.local");
        let t = TrafficLabels::new(
            Direction::Outbound,
            &me(),
            &reviews(),
            "reviews.shop".into(),
        );
        let r = answered(t, 200);
        // As `Record::finish` observes: seconds times the scale.
        assert_eq!(m.duration_scale, 1000.0);
        m.request_duration
            .get_or_create(&r)
            .observe(0.003 * m.duration_scale);
        let text = m.encode();
        let f = "istio_request_duration_milliseconds";
        assert!(text.contains(&format!("# TYPE {f} histogram")), "{text}");
        let les: Vec<String> = text
            .lines()
            .filter(|l| l.starts_with(&format!("{f}_bucket{{")))
            .map(|l| parse(l).0["le"].clone())
            .collect();
        assert_eq!(
            les,
            [
                "0.5",
                "1.0",
                "5.0",
                "10.0",
                "25.0",
                "50.0",
                "100.0",
                "250.0",
                "500.0",
                "1000.0",
                "2500.0",
                "5000.0",
                "10000.0",
                "30000.0",
                "60000.0",
                "300000.0",
                "600000.0",
                "1800000.0",
                "3600000.0",
                "+Inf"
            ]
        );
        assert_eq!(bucket(&text, f, "1.0"), "0");
        assert_eq!(bucket(&text, f, "5.0"), "1");
        let sum = text
            .lines()
            .find(|l| l.starts_with(&format!("{f}_sum{{")))
            .map(|l| parse(l).1)
            .unwrap();
        assert!((sum.parse::<f64>().unwrap() - 3.0).abs() < 1e-9, "{sum}");
    }

    #[test]
    fn request_and_response_sizes_are_histograms_per_request() {
        let m = istio_metrics("cluster.local");
        let t = TrafficLabels::new(
            Direction::Outbound,
            &me(),
            &reviews(),
            "reviews.shop".into(),
        );
        let labels = answered(t, 200);
        // Keyed by the whole request's labels, as Istio's are: the
        // response code and flags are on the size series too.
        let sizes = m.sizes.as_ref().expect("Istio's format has sizes");
        let bytes = sizes.get_or_create(&labels).clone();
        bytes.finish(100, 2000);
        bytes.finish(0, 7);
        let text = m.encode();
        assert!(
            !text.contains("outrigger_request_bytes") && !text.contains("outrigger_response_bytes"),
            "{text}"
        );
        for f in ["istio_request_bytes", "istio_response_bytes"] {
            assert!(text.contains(&format!("# TYPE {f} histogram")), "{text}");
        }
        assert_eq!(bucket(&text, "istio_request_bytes", "0.5"), "1");
        assert_eq!(bucket(&text, "istio_request_bytes", "50.0"), "1");
        assert_eq!(bucket(&text, "istio_request_bytes", "100.0"), "2");
        assert_eq!(bucket(&text, "istio_response_bytes", "10.0"), "1");
        assert_eq!(bucket(&text, "istio_response_bytes", "1000.0"), "1");
        assert_eq!(bucket(&text, "istio_response_bytes", "2500.0"), "2");
        let (l, v) = series(&text, "istio_request_bytes_count");
        assert_eq!(v, "2");
        expect(
            &l,
            &[
                ("reporter", "source"),
                ("request_protocol", "http"),
                ("response_code", "200"),
                ("response_flags", "-"),
            ],
        );
        let (_, v) = series(&text, "istio_response_bytes_sum");
        assert_eq!(v, "2007.0");
    }

    #[test]
    fn outrigger_byte_families_stay_counters() {
        let m = Metrics::new();
        assert_eq!(m.duration_scale, 1.0);
        let t = TrafficLabels::new(
            Direction::Outbound,
            &me(),
            &reviews(),
            "reviews.shop".into(),
        );
        let bytes = m.bytes.get_or_create(&t).clone();
        bytes.response().inc_by(2000);
        bytes.finish(100, 2000);
        bytes.finish(0, 0);
        let text = m.encode();
        assert!(
            text.contains("# TYPE outrigger_request_bytes counter"),
            "{text}"
        );
        let (l, v) = series(&text, "outrigger_request_bytes_total");
        assert_eq!(v, "100");
        assert_eq!(l["direction"], "outbound");
        assert_eq!(series(&text, "outrigger_response_bytes_total").1, "2000");
        assert!(!text.contains("istio_"), "{text}");
    }

    #[test]
    fn tcp_families_count_opaque_connections_labelled_tcp() {
        let m = istio_metrics("cluster.local");
        assert!(m.counts_connection(Protocol::Opaque));
        assert!(!m.counts_connection(Protocol::Http1));
        assert!(!m.counts_connection(Protocol::Http2));
        assert!(Metrics::new().counts_connection(Protocol::Http1));
        let mut t = TrafficLabels::new(
            Direction::Inbound,
            &me(),
            &reviews(),
            "productpage.shop".into(),
        );
        t.connection_security_policy = SecurityPolicy::MutualTls;
        let l = TcpLabels {
            traffic: t,
            protocol: Protocol::Opaque,
        };
        m.tcp_opened.get_or_create(&l).inc();
        m.tcp_closed.get_or_create(&l).inc();
        m.tcp_received_bytes.get_or_create(&l).inc_by(10);
        m.tcp_sent_bytes.get_or_create(&l).inc_by(20);
        let text = m.encode();
        for (f, v) in [
            ("istio_tcp_connections_opened_total", "1"),
            ("istio_tcp_connections_closed_total", "1"),
            ("istio_tcp_received_bytes_total", "10"),
            ("istio_tcp_sent_bytes_total", "20"),
        ] {
            let (l, got) = series(&text, f);
            assert_eq!(got, v, "{f}");
            expect(
                &l,
                &[
                    ("reporter", "destination"),
                    ("request_protocol", "tcp"),
                    ("response_flags", "-"),
                    ("connection_security_policy", "mutual_tls"),
                    ("destination_service", "productpage.shop.svc.cluster.local"),
                ],
            );
            assert!(!l.contains_key("protocol"), "{l:?}");
        }
    }

    #[test]
    fn the_other_families_keep_their_names() {
        let text = istio_metrics("cluster.local").encode();
        for f in [
            "outrigger_config_applied_total",
            "outrigger_retries_total{",
            "outrigger_build_info",
            "outrigger_tcp_connections_rejected_total",
        ] {
            assert!(text.contains(f), "{f}\n{text}");
        }
    }
}
