//! Istio's own task manifests, each ported by changing only its apiVersion
//! (`istio_tasks/*.yaml`, each naming the page it comes from): every one is
//! accepted by `outrigger-control-plane check`, and each task's manifests,
//! applied in the task's order to a real folder-mode control plane that
//! streams to a real proxy in front of real upstreams, give the outcome the
//! task describes:
//!
//! | task | outcome here |
//! |---|---|
//! | request routing | every request to reviews v1; then `end-user: jason` to v2, everyone else to v1 |
//! | traffic shifting | 50/50 between reviews v1 and v3 within tolerance; then all to v3 |
//! | fault injection | jason's ratings held by the 7 s delay (unanswered after 1.5 s, the app untouched) while others are answered at once; then jason's aborted with 500 `FI` |
//! | request timeouts | reviews v2 → ratings delayed 2 s (`percent: 100`): 200 after 2 s; with `timeout: 0.5s`: 504 `UT` after 0.5 s |
//! | circuit breaking | 2 concurrent clients: every request answered; 3: some 503 `UO`, never two requests at httpbin at once, one upstream connection per request |
//! | retries | ratings with 3 of its 4 endpoints refusing connections: every request answered, by retries |
//! | mutual TLS (`destination-rule-all-mtls.yaml`) | requests to a meshed details ride mutual TLS; the same rule with `DISABLE` (not a task manifest) sends plaintext |
//!
//! The bookinfo apps are stand-ins that answer with their name and version;
//! reviews v2 and v3 call ratings through the proxy, forwarding `end-user`,
//! as bookinfo's reviews does. One proxy is every app's sidecar. Applying a
//! manifest is `kubectl apply`: each object replaces the one of its kind and
//! name (a file per object in the control plane's folder), and the test
//! waits until the proxy has the manifest's routes and rules in force as
//! written.
//!
//! The fault injection task's 7 s delay is not waited out: the test shows
//! the request held past 1.5 s with the manifest (7 s) in force, and the
//! request timeouts task's 2 s delay (the same fault, `percent` form) is
//! measured whole.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use http::Request;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use outrigger_api::policy::{HttpRoute, Subset, TrafficPolicy};
use outrigger_api::Snapshot;
use outrigger_identity::Ca;
use outrigger_proxy::identity::Identity;
use outrigger_proxy::{Options, Proxy};
use outrigger_tests::control_plane::{follow, waiting_proxy, ControlPlane, Dir};
use outrigger_tests::*;
use tokio::time::Instant;

/// Bookinfo's manifests name no namespace: the folder's default.
const NS: &str = "default";

/// Every task manifest, and whether it needs Bookinfo's default
/// destination rules (the subsets its routes name).
const TASKS: &[(&str, bool)] = &[
    ("destination-rule-all.yaml", false),
    ("destination-rule-all-mtls.yaml", false),
    ("virtual-service-all-v1.yaml", true),
    ("virtual-service-reviews-test-v2.yaml", true),
    ("virtual-service-reviews-50-v3.yaml", true),
    ("virtual-service-reviews-v3.yaml", true),
    ("virtual-service-ratings-test-delay.yaml", true),
    ("virtual-service-ratings-test-abort.yaml", true),
    ("request-timeouts-reviews-v2.yaml", true),
    ("request-timeouts-ratings-delay.yaml", true),
    ("request-timeouts-reviews-timeout.yaml", true),
    ("circuit-breaking-httpbin.yaml", false),
    ("retries-ratings.yaml", true),
];

fn manifest(file: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/istio_tasks")
        .join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// One object of a manifest.
struct Doc {
    kind: String,
    name: String,
    text: String,
    value: serde_json::Value,
}

/// The objects of a multi-document manifest (comment-only parts skipped).
fn docs(manifest: &str) -> Vec<Doc> {
    let mut parts = vec![String::new()];
    for line in manifest.lines() {
        if line.trim_end() == "---" {
            parts.push(String::new());
        } else {
            let part = parts.last_mut().expect("one part at least");
            part.push_str(line);
            part.push('\n');
        }
    }
    parts
        .into_iter()
        .filter(|p| {
            p.lines()
                .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        })
        .map(|text| {
            let value: serde_json::Value =
                serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
            Doc {
                kind: value["kind"].as_str().expect("a kind").to_string(),
                name: value["metadata"]["name"]
                    .as_str()
                    .expect("a name")
                    .to_string(),
                text,
                value,
            }
        })
        .collect()
}

/// One pod of the platform: `service` at `version`, serving at `addr`;
/// meshed (a proxy in front, with ServiceAccount `sa`) when `sa` is set.
struct Pod {
    service: &'static str,
    version: &'static str,
    addr: SocketAddr,
    sa: Option<&'static str>,
}

/// The port each service is dialed on (Bookinfo's 9080, httpbin's 8000),
/// and its name (`tcp` makes a service opaque).
fn service_port(service: &str) -> (u16, &'static str) {
    match service {
        "httpbin" => (8000, "http"),
        "mysqldb" => (3306, "tcp"),
        _ => (9080, "http"),
    }
}

/// The Kubernetes objects the tasks assume: a Service per app (port named
/// `http`), its Endpoints, and the pods with their `app` and `version`
/// labels.
fn platform(pods: &[Pod]) -> String {
    let mut services: Vec<&str> = Vec::new();
    for p in pods {
        if !services.contains(&p.service) {
            services.push(p.service);
        }
    }
    let mut out = String::new();
    for (i, svc) in services.iter().enumerate() {
        let (port, name) = service_port(svc);
        out.push_str(&format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{ name: {svc}, namespace: {NS} }}\n\
             spec: {{ clusterIP: 10.96.0.{}, ports: [{{ name: {name}, port: {port} }}] }}\n\
             ---\napiVersion: v1\nkind: Endpoints\nmetadata: {{ name: {svc}, namespace: {NS} }}\nsubsets:\n",
            10 + i
        ));
        for (j, p) in pods.iter().enumerate().filter(|(_, p)| p.service == *svc) {
            out.push_str(&format!(
                "  - addresses: [{{ ip: {}, targetRef: {{ kind: Pod, name: {svc}-{}-{j} }} }}]\n    \
                 ports: [{{ name: {name}, port: {} }}]\n",
                p.addr.ip(),
                p.version,
                p.addr.port()
            ));
        }
    }
    for (j, p) in pods.iter().enumerate() {
        let meshed = match p.sa {
            Some(_) => "annotations: { outrigger.dev/meshed: \"true\" }, ",
            None => "",
        };
        out.push_str(&format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{ name: {}-{}-{j}, namespace: {NS}, {meshed}\
             labels: {{ app: {}, version: {} }} }}\n\
             spec: {{ serviceAccountName: {}, containers: [{{ name: app, image: app }}] }}\n",
            p.service,
            p.version,
            p.service,
            p.version,
            p.sa.unwrap_or("default")
        ));
    }
    out
}

/// The proxy's bootstrap: an outbound listener `to-<service>` per service
/// (each app's calls to that service), waiting for the control plane.
fn bootstrap(services: &[&str]) -> Snapshot {
    let mut yaml = String::from(
        "version: bootstrap\nproxy: { workload: productpage-v1, namespace: default }\n\
         admin: { bind: \"127.0.0.1:0\" }\n\
         limits: { drain_timeout: 5s, detect_timeout: 300ms, connect_timeout: 1s }\nlisteners:\n",
    );
    for s in services {
        yaml.push_str(&format!(
            "  - {{ name: to-{s}, direction: outbound, bind: \"127.0.0.1:0\", \
             target: {{ name: {s}, namespace: {NS}, port: {} }} }}\n",
            service_port(s).0
        ));
    }
    yaml.push_str("services:\n");
    for s in services {
        yaml.push_str(&format!(
            "  - {{ name: {s}, namespace: {NS}, ports: [{}] }}\n",
            service_port(s).0
        ));
    }
    Snapshot::from_yaml(&yaml).unwrap()
}

/// What the proxy has in force for one host, as a manifest wrote it.
enum Expected {
    Routes(String, Vec<HttpRoute>),
    Rule(String, Vec<Subset>, Option<TrafficPolicy>),
}

impl Expected {
    /// The VirtualServices' routes (destinations qualified with the
    /// namespace, as the translator writes them) and the
    /// DestinationRules' subsets and policies of `manifest`.
    fn of(manifest: &str) -> Vec<Expected> {
        let mut out = Vec::new();
        for d in docs(manifest) {
            let spec = &d.value["spec"];
            match d.kind.as_str() {
                "VirtualService" => {
                    let mut routes: Vec<HttpRoute> =
                        serde_json::from_value(spec["http"].clone()).unwrap();
                    for rd in routes.iter_mut().flat_map(|r| r.route.iter_mut()) {
                        rd.destination.host = format!("{}.{NS}", rd.destination.host);
                    }
                    for host in spec["hosts"].as_array().unwrap() {
                        out.push(Expected::Routes(
                            host.as_str().unwrap().to_string(),
                            routes.clone(),
                        ));
                    }
                }
                "DestinationRule" => out.push(Expected::Rule(
                    spec["host"].as_str().unwrap().to_string(),
                    serde_json::from_value(spec["subsets"].clone()).unwrap_or_default(),
                    serde_json::from_value(spec["trafficPolicy"].clone()).unwrap(),
                )),
                other => panic!("unexpected kind {other}"),
            }
        }
        out
    }

    fn holds(&self, snap: &Snapshot) -> bool {
        let host = match self {
            Expected::Routes(h, _) | Expected::Rule(h, _, _) => h,
        };
        let mut entries = snap
            .services
            .iter()
            .filter(|s| &s.name == host && s.namespace == NS)
            .peekable();
        entries.peek().is_some()
            && entries.all(|s| match self {
                Expected::Routes(_, routes) => &s.http == routes,
                Expected::Rule(_, subsets, policy) => {
                    &s.subsets == subsets && &s.traffic_policy == policy
                }
            })
    }
}

/// The config a proxy has in force (its admin `/config`).
async fn in_force(p: &Proxy) -> Snapshot {
    Snapshot::from_json(&get(p.admin_addr, "/config").await.1).unwrap()
}

/// A control plane reading a folder, and a proxy following it.
struct Bed {
    dir: Dir,
    cp: ControlPlane,
    proxy: Proxy,
}

impl Bed {
    async fn start(pods: &[Pod], identity: Option<Arc<Identity>>) -> Bed {
        let dir = Dir::new("istio-task");
        dir.write("platform.yaml", &platform(pods));
        let cp = ControlPlane::bind_and_start(dir.path()).await;
        let mut services: Vec<&str> = Vec::new();
        for p in pods {
            if !services.contains(&p.service) {
                services.push(p.service);
            }
        }
        let boot = bootstrap(&services);
        let proxy = waiting_proxy(boot.clone(), identity).await;
        follow(&proxy, cp.addr, boot, NS, "productpage-v1-0", None);
        assert!(
            eventually(Duration::from_secs(10), || ready(&proxy)).await,
            "the proxy never got its first config"
        );
        Bed { dir, cp, proxy }
    }

    /// `kubectl apply -f`: each object of `text` replaces the one of its
    /// kind and name; then waits until the proxy has them in force.
    async fn apply_text(&self, text: &str) {
        for d in docs(text) {
            self.dir.write(
                &format!("{}-{}.yaml", d.kind.to_lowercase(), d.name),
                &d.text,
            );
        }
        let expected = Expected::of(text);
        assert!(
            eventually(Duration::from_secs(10), || async {
                let snap = in_force(&self.proxy).await;
                expected.iter().all(|e| e.holds(&snap))
            })
            .await,
            "the proxy never had this in force:\n{text}"
        );
    }

    /// Applies one of the task manifests.
    async fn apply(&self, file: &str) {
        self.apply_text(&manifest(file)).await
    }

    /// Where an app's calls to `service` go: the proxy's listener for it.
    fn to(&self, service: &str) -> SocketAddr {
        self.proxy
            .listener_addr(&format!("to-{service}"))
            .unwrap_or_else(|| panic!("no listener for {service}"))
    }
}

/// An answer as the client saw it.
struct Answer {
    status: u16,
    body: String,
    /// `outrigger-response-flags`, `-` when the upstream answered.
    flags: String,
}

/// One GET to `addr` on a fresh HTTP/1.1 connection, as `user` (the
/// `end-user` header Bookinfo forwards).
async fn try_call(addr: SocketAddr, path: &str, user: Option<&str>) -> Result<Answer, BoxError> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut c, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    send(&mut c, path, user).await
}

async fn call(addr: SocketAddr, path: &str, user: Option<&str>) -> Answer {
    try_call(addr, path, user).await.unwrap()
}

/// One GET on an open HTTP/1.1 connection.
async fn send(
    c: &mut hyper::client::conn::http1::SendRequest<Body>,
    path: &str,
    user: Option<&str>,
) -> Result<Answer, BoxError> {
    let mut req = Request::get(path).header("host", "bookinfo");
    if let Some(u) = user {
        req = req.header("end-user", u);
    }
    let resp = c.send_request(req.body(empty())?).await?;
    let status = resp.status().as_u16();
    let flags = resp
        .headers()
        .get("outrigger-response-flags")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_string();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok(Answer {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
        flags,
    })
}

/// A Bookinfo stand-in answering its name, counting requests. With
/// `ratings`, it first calls ratings there (through the proxy), forwarding
/// `end-user`, and adds the status it got, as Bookinfo's reviews v2 and v3
/// do.
async fn bookinfo_app(
    name: &'static str,
    ratings: Option<Arc<OnceLock<SocketAddr>>>,
) -> (SocketAddr, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = hits.clone();
    let addr = serve_http(move |req: Request<Incoming>| {
        counted.fetch_add(1, Ordering::SeqCst);
        let ratings = ratings.as_ref().map(|r| *r.get().expect("ratings is set"));
        async move {
            let body = match ratings {
                None => name.to_string(),
                Some(addr) => {
                    let user = req
                        .headers()
                        .get("end-user")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string);
                    let status = try_call(addr, "/ratings/0", user.as_deref())
                        .await
                        .map_or(0, |a| a.status);
                    format!("{name} ratings={status}")
                }
            };
            http::Response::new(full(body))
        }
    })
    .await;
    (addr, hits)
}

/// Bookinfo: productpage, reviews v1/v2/v3, ratings v1 and details v1,
/// and a proxy that is every app's sidecar.
struct Bookinfo {
    bed: Bed,
    hits: Vec<(&'static str, Arc<AtomicUsize>)>,
}

/// Changes to the plain Bookinfo.
#[derive(Default)]
struct Setup {
    /// Details is meshed: its pod is this proxy's inbound address, with
    /// this ServiceAccount.
    details: Option<(SocketAddr, &'static str)>,
    /// The sidecar's identity (mutual TLS to meshed endpoints).
    identity: Option<Arc<Identity>>,
    /// More pods.
    extra: Vec<Pod>,
}

impl Bookinfo {
    async fn start(setup: Setup) -> Self {
        let ratings_at = Arc::new(OnceLock::new());
        let mut pods = Vec::new();
        let mut hits = Vec::new();
        for (service, version, name, calls_ratings) in [
            ("productpage", "v1", "productpage-v1", false),
            ("reviews", "v1", "reviews-v1", false),
            ("reviews", "v2", "reviews-v2", true),
            ("reviews", "v3", "reviews-v3", true),
            ("ratings", "v1", "ratings-v1", false),
            ("details", "v1", "details-v1", false),
        ] {
            let (mut addr, count) =
                bookinfo_app(name, calls_ratings.then(|| ratings_at.clone())).await;
            let mut sa = None;
            if let (true, Some((inbound, account))) = (service == "details", setup.details) {
                (addr, sa) = (inbound, Some(account));
            }
            hits.push((name, count));
            pods.push(Pod {
                service,
                version,
                addr,
                sa,
            });
        }
        pods.extend(setup.extra);
        let bed = Bed::start(&pods, setup.identity).await;
        ratings_at.set(bed.to("ratings")).unwrap();
        Self { bed, hits }
    }

    fn hits(&self, name: &str) -> usize {
        let (_, h) = self.hits.iter().find(|(n, _)| *n == name).unwrap();
        h.load(Ordering::SeqCst)
    }

    /// `n` calls to reviews as `user`: how many each version answered.
    async fn reviews(&self, n: usize, user: Option<&str>) -> [usize; 3] {
        let mut seen = [0; 3];
        for _ in 0..n {
            let a = call(self.bed.to("reviews"), "/reviews/0", user).await;
            assert_eq!(a.status, 200, "{} {}", a.body, a.flags);
            let v = ["reviews-v1", "reviews-v2", "reviews-v3"]
                .iter()
                .position(|v| a.body.starts_with(v))
                .unwrap_or_else(|| panic!("not a reviews answer: {}", a.body));
            seen[v] += 1;
        }
        seen
    }
}

/// Each manifest, with what the tasks assume, is accepted by
/// `outrigger-control-plane check`; each is Istio's, ported by apiVersion.
#[test]
fn every_task_manifest_is_accepted_by_check() {
    let bin = workspace_bin("outrigger-control-plane").expect("the outrigger-control-plane binary");
    let at: SocketAddr = "10.244.0.1:9080".parse().unwrap();
    let pods: Vec<Pod> = [
        ("productpage", "v1"),
        ("reviews", "v1"),
        ("reviews", "v2"),
        ("reviews", "v3"),
        ("ratings", "v1"),
        ("details", "v1"),
        ("httpbin", "v1"),
    ]
    .into_iter()
    .map(|(service, version)| Pod {
        service,
        version,
        addr: at,
        sa: None,
    })
    .collect();
    let platform = platform(&pods);
    for (file, needs_rules) in TASKS {
        let text = manifest(file);
        let header: Vec<&str> = text.lines().take_while(|l| l.starts_with('#')).collect();
        assert!(
            header.iter().any(|l| l.contains("https://istio.io/"))
                && header
                    .iter()
                    .any(|l| l.contains("changing only apiVersion")),
            "{file}: the header names the source page and the port"
        );
        let objects = docs(&text);
        assert!(!objects.is_empty(), "{file}");
        for d in &objects {
            assert_eq!(d.value["apiVersion"], "outrigger.dev/v1alpha1", "{file}");
        }

        let folder = tempfile::tempdir().unwrap();
        std::fs::write(folder.path().join("platform.yaml"), &platform).unwrap();
        if *needs_rules {
            std::fs::write(
                folder.path().join("destination-rule-all.yaml"),
                manifest("destination-rule-all.yaml"),
            )
            .unwrap();
        }
        std::fs::write(folder.path().join(file), &text).unwrap();
        let out = std::process::Command::new(&bin)
            .args(["check", "--folder"])
            .arg(folder.path())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{file}:\n{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        for d in &objects {
            let line = format!("{} {NS}/{}: accepted", d.kind, d.name);
            assert!(stdout.contains(&line), "{file}: no {line:?} in\n{stdout}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_routing_sends_jason_to_reviews_v2_and_the_others_to_v1() {
    let b = Bookinfo::start(Setup::default()).await;
    b.bed.apply("destination-rule-all.yaml").await;
    b.bed.apply("virtual-service-all-v1.yaml").await;
    assert_eq!(b.reviews(20, None).await, [20, 0, 0]);
    assert_eq!(b.reviews(20, Some("jason")).await, [20, 0, 0]);

    b.bed.apply("virtual-service-reviews-test-v2.yaml").await;
    assert_eq!(b.reviews(20, Some("jason")).await, [0, 20, 0]);
    assert_eq!(b.reviews(20, None).await, [20, 0, 0]);
    assert_eq!(b.reviews(20, Some("bob")).await, [20, 0, 0]);
    // Reviews v2 calls ratings (v1), as in Bookinfo.
    let a = call(b.bed.to("reviews"), "/reviews/0", Some("jason")).await;
    assert_eq!(a.body, "reviews-v2 ratings=200");
    assert_eq!(b.hits("reviews-v3"), 0);
    b.bed.cp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_shifting_splits_reviews_50_50_then_moves_it_all_to_v3() {
    let b = Bookinfo::start(Setup::default()).await;
    b.bed.apply("destination-rule-all.yaml").await;
    b.bed.apply("virtual-service-all-v1.yaml").await;
    assert_eq!(b.reviews(20, None).await, [20, 0, 0]);

    b.bed.apply("virtual-service-reviews-50-v3.yaml").await;
    let n = 300;
    let [v1, v2, v3] = b.reviews(n, None).await;
    assert_eq!(v2, 0);
    // Each side is binomial(300, 0.5): 150 ± 8.7; ±45 is over 5 deviations.
    for (name, count) in [("v1", v1), ("v3", v3)] {
        assert!((105..=195).contains(&count), "{name}: {count} of {n}");
    }

    b.bed.apply("virtual-service-reviews-v3.yaml").await;
    assert_eq!(b.reviews(20, None).await, [0, 0, 20]);
    b.bed.cp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_injection_delays_then_aborts_jasons_ratings() {
    let b = Bookinfo::start(Setup::default()).await;
    b.bed.apply("destination-rule-all.yaml").await;
    b.bed.apply("virtual-service-all-v1.yaml").await;
    b.bed.apply("virtual-service-reviews-test-v2.yaml").await;

    // The 7 s delay for jason (in force as written: `fixedDelay: 7s`).
    b.bed.apply("virtual-service-ratings-test-delay.yaml").await;
    let ratings = b.bed.to("ratings");
    let before = b.hits("ratings-v1");
    let jason = tokio::spawn(call(ratings, "/ratings/0", Some("jason")));
    let page = tokio::spawn(call(b.bed.to("reviews"), "/reviews/0", Some("jason")));
    // Everyone else's ratings are answered at once meanwhile.
    let start = Instant::now();
    let a = call(ratings, "/ratings/0", None).await;
    assert_eq!((a.status, a.body.as_str()), (200, "ratings-v1"));
    assert!(start.elapsed() < Duration::from_millis(1000));
    assert_eq!(b.reviews(5, None).await, [5, 0, 0]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !jason.is_finished(),
        "jason's ratings answered within 1.5 s"
    );
    assert!(!page.is_finished(), "jason's reviews answered within 1.5 s");
    assert_eq!(
        b.hits("ratings-v1"),
        before + 1,
        "only the other user's request reached ratings"
    );
    jason.abort();
    page.abort();

    // The abort: jason's ratings answer 500 from the proxy.
    b.bed.apply("virtual-service-ratings-test-abort.yaml").await;
    let before = b.hits("ratings-v1");
    let a = call(ratings, "/ratings/0", Some("jason")).await;
    assert_eq!((a.status, a.flags.as_str()), (500, "FI"));
    let a = call(b.bed.to("reviews"), "/reviews/0", Some("jason")).await;
    assert_eq!(a.body, "reviews-v2 ratings=500", "reviews sees the abort");
    assert_eq!(
        b.hits("ratings-v1"),
        before,
        "the aborts never reached ratings"
    );
    let a = call(ratings, "/ratings/0", Some("bob")).await;
    assert_eq!((a.status, a.body.as_str()), (200, "ratings-v1"));
    b.bed.cp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_timeouts_cut_the_delayed_reviews_at_half_a_second() {
    let b = Bookinfo::start(Setup::default()).await;
    b.bed.apply("destination-rule-all.yaml").await;
    b.bed.apply("virtual-service-all-v1.yaml").await;
    b.bed.apply("request-timeouts-reviews-v2.yaml").await;
    let reviews = b.bed.to("reviews");
    let a = call(reviews, "/reviews/0", None).await;
    assert_eq!(a.body, "reviews-v2 ratings=200");

    // A 2 s delay on every call to ratings (`percent: 100`).
    b.bed.apply("request-timeouts-ratings-delay.yaml").await;
    let start = Instant::now();
    let a = call(reviews, "/reviews/0", None).await;
    let took = start.elapsed();
    assert_eq!((a.status, a.body.as_str()), (200, "reviews-v2 ratings=200"));
    assert!(
        (Duration::from_secs(2)..Duration::from_secs(4)).contains(&took),
        "{took:?}"
    );

    // Half a second for reviews: the delayed call is cut.
    b.bed.apply("request-timeouts-reviews-timeout.yaml").await;
    let start = Instant::now();
    let a = call(reviews, "/reviews/0", None).await;
    let took = start.elapsed();
    assert_eq!((a.status, a.flags.as_str()), (504, "UT"), "{}", a.body);
    assert!(
        (Duration::from_millis(500)..Duration::from_millis(1500)).contains(&took),
        "{took:?}"
    );
    b.bed.cp.stop().await;
}

/// A stand-in for httpbin's `/get`: answers after 50 ms; counts the
/// connections it accepted, the requests it answered and the most it had
/// in hand at once.
struct Httpbin {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    served: Arc<AtomicUsize>,
    in_hand: Arc<AtomicUsize>,
    most_in_hand: Arc<AtomicUsize>,
}

impl Httpbin {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let h = Httpbin {
            addr: listener.local_addr().unwrap(),
            connections: Default::default(),
            served: Default::default(),
            in_hand: Default::default(),
            most_in_hand: Default::default(),
        };
        let (connections, served, in_hand, most) = (
            h.connections.clone(),
            h.served.clone(),
            h.in_hand.clone(),
            h.most_in_hand.clone(),
        );
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                connections.fetch_add(1, Ordering::SeqCst);
                let (served, in_hand, most) = (served.clone(), in_hand.clone(), most.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |_req| {
                        let (served, in_hand, most) =
                            (served.clone(), in_hand.clone(), most.clone());
                        async move {
                            let now = in_hand.fetch_add(1, Ordering::SeqCst) + 1;
                            most.fetch_max(now, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            in_hand.fetch_sub(1, Ordering::SeqCst);
                            served.fetch_add(1, Ordering::SeqCst);
                            Ok::<_, std::convert::Infallible>(http::Response::new(full("httpbin")))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        h
    }
}

/// Fortio's `load -c <clients> -qps 0 -n <clients × each>`: each client
/// sends its requests one after another on one keep-alive connection.
async fn load(addr: SocketAddr, clients: usize, each: usize) -> Vec<Answer> {
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            tokio::spawn(async move {
                let mut c = http1(addr).await;
                let mut answers = Vec::new();
                for _ in 0..each {
                    c.ready().await.unwrap();
                    answers.push(send(&mut c, "/get", None).await.unwrap());
                }
                answers
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn circuit_breaking_overflows_a_third_concurrent_client_with_503_uo() {
    let httpbin = Httpbin::start().await;
    let bed = Bed::start(
        &[Pod {
            service: "httpbin",
            version: "v1",
            addr: httpbin.addr,
            sa: None,
        }],
        None,
    )
    .await;
    bed.apply("circuit-breaking-httpbin.yaml").await;
    let to = bed.to("httpbin");

    // Two clients: one request in hand, one waiting (http1MaxPendingRequests).
    // The task finds "almost all requests made it through"; here all do,
    // since a freed connection goes straight to the waiting request.
    let answers = load(to, 2, 10).await;
    assert!(
        answers.iter().all(|a| a.status == 200),
        "{:?}",
        answers
            .iter()
            .map(|a| (a.status, &a.flags))
            .collect::<Vec<_>>()
    );

    // Three: the third finds the connection busy and the queue full.
    let answers = load(to, 3, 10).await;
    let ok = answers.iter().filter(|a| a.status == 200).count();
    let overflowed: Vec<&Answer> = answers.iter().filter(|a| a.status != 200).collect();
    assert!(!overflowed.is_empty(), "no request tripped the breaker");
    assert!(ok > 0);
    for a in &overflowed {
        assert_eq!((a.status, a.flags.as_str()), (503, "UO"), "{}", a.body);
    }
    assert_eq!(
        metric(
            &scrape(&bed.proxy).await,
            "outrigger_pool_overflow_total",
            &[("destination_service", "httpbin.default")]
        ) as usize,
        overflowed.len()
    );
    // maxConnections: 1, and maxRequestsPerConnection: 1 (no keep-alive).
    assert_eq!(httpbin.most_in_hand.load(Ordering::SeqCst), 1);
    let served = httpbin.served.load(Ordering::SeqCst);
    assert_eq!(served, 20 + ok);
    assert_eq!(httpbin.connections.load(Ordering::SeqCst), served);
    bed.cp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_carry_every_request_past_three_refusing_endpoints() {
    let mut extra = Vec::new();
    for _ in 0..3 {
        // A port nothing listens on: connections are refused.
        let dead = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        extra.push(Pod {
            service: "ratings",
            version: "v1",
            addr: dead,
            sa: None,
        });
    }
    let b = Bookinfo::start(Setup {
        extra,
        ..Setup::default()
    })
    .await;
    let bed = &b.bed;
    bed.apply("destination-rule-all.yaml").await;
    bed.apply("retries-ratings.yaml").await;
    for _ in 0..30 {
        let a = call(bed.to("ratings"), "/ratings/0", None).await;
        assert_eq!(
            (a.status, a.body.as_str()),
            (200, "ratings-v1"),
            "{}",
            a.flags
        );
    }
    assert_eq!(b.hits("ratings-v1"), 30);
    let retries = metric(
        &scrape(&bed.proxy).await,
        "outrigger_retries_total",
        &[("destination_service", "ratings.default")],
    );
    assert!(retries > 0.0, "no request needed a retry");
    b.bed.cp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destination_rule_all_mtls_rides_mutual_tls_and_disable_sends_plaintext() {
    let ca = Ca::generate("cluster.local", SystemTime::now()).unwrap();
    let (details_app, _) = bookinfo_app("details-v1", None).await;
    let details = Proxy::start(
        server_snapshot(details_app),
        Options {
            identity: Some(held_identity(&ca, NS, "bookinfo-details")),
            ..Options::default()
        },
    )
    .await
    .unwrap();
    let inbound = details.listener_addr("inbound").unwrap();
    let b = Bookinfo::start(Setup {
        details: Some((inbound, "bookinfo-details")),
        identity: Some(held_identity(&ca, NS, "bookinfo-productpage")),
        ..Setup::default()
    })
    .await;
    b.bed.apply("destination-rule-all-mtls.yaml").await;
    b.bed.apply("virtual-service-all-v1.yaml").await;
    let requests = |p: &Proxy, direction: &'static str, policy: &'static str| {
        let admin = p.admin_addr;
        async move {
            metric(
                &get(admin, "/metrics").await.1,
                "outrigger_requests_total",
                &[
                    ("direction", direction),
                    ("connection_security_policy", policy),
                ],
            )
        }
    };

    let a = call(b.bed.to("details"), "/details/0", None).await;
    assert_eq!((a.status, a.body.as_str()), (200, "details-v1"));
    assert!(
        eventually(Duration::from_secs(5), || async {
            requests(&details, "inbound", "mutual_tls").await == 1.0
        })
        .await,
        "the details proxy saw no mutual TLS request"
    );
    let principal = metric(
        &scrape(&details).await,
        "outrigger_requests_total",
        &[(
            "source_principal",
            "spiffe://cluster.local/ns/default/sa/bookinfo-productpage",
        )],
    );
    assert_eq!(principal, 1.0);

    // The same rules with DISABLE for details: plaintext to its proxy
    // (PERMISSIVE here), which then knows no peer.
    let disabled = manifest("destination-rule-all-mtls.yaml").replace(
        "  host: details\n  trafficPolicy:\n    tls:\n      mode: ISTIO_MUTUAL\n",
        "  host: details\n  trafficPolicy:\n    tls:\n      mode: DISABLE\n",
    );
    assert!(disabled.contains("mode: DISABLE"));
    b.bed.apply_text(&disabled).await;
    let a = call(b.bed.to("details"), "/details/0", None).await;
    assert_eq!((a.status, a.body.as_str()), (200, "details-v1"));
    assert!(
        eventually(Duration::from_secs(5), || async {
            requests(&details, "inbound", "none").await == 1.0
        })
        .await,
        "the details proxy saw no plaintext request"
    );
    assert_eq!(requests(&details, "inbound", "mutual_tls").await, 1.0);
    assert_eq!(requests(&b.bed.proxy, "outbound", "none").await, 1.0);
    b.bed.cp.stop().await;
}

/// A listener whose accept queue is full: connections to it hang.
fn unanswering() -> (tokio::net::TcpListener, std::net::TcpStream) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(0).unwrap();
    // Linux queues backlog + 1 connections: this one fills the queue.
    let queued = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    (listener, queued)
}

/// The other fields of the section, end to end through the control
/// plane: `gateways: [mesh]` (also in a match), `ignoreUriCase`, and
/// `tcp.connectTimeout` for HTTP and for opaque TCP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_ignore_uri_case_and_connect_timeout_work_end_to_end() {
    let (hangs, _queued) = unanswering();
    let at = hangs.local_addr().unwrap();
    let b = Bookinfo::start(Setup {
        extra: vec![
            Pod {
                service: "reviews",
                version: "v9",
                addr: at,
                sa: None,
            },
            Pod {
                service: "mysqldb",
                version: "v1",
                addr: at,
                sa: None,
            },
        ],
        ..Setup::default()
    })
    .await;
    b.bed
        .apply_text(
            r#"
apiVersion: outrigger.dev/v1alpha1
kind: DestinationRule
metadata: { name: reviews }
spec:
  host: reviews
  trafficPolicy: { connectionPool: { tcp: { connectTimeout: 200ms } } }
  subsets:
  - { name: v1, labels: { version: v1 } }
  - { name: v2, labels: { version: v2 } }
  - { name: v9, labels: { version: v9 } }
---
apiVersion: outrigger.dev/v1alpha1
kind: DestinationRule
metadata: { name: mysqldb }
spec:
  host: mysqldb
  trafficPolicy: { connectionPool: { tcp: { connectTimeout: 200ms } } }
---
apiVersion: outrigger.dev/v1alpha1
kind: VirtualService
metadata: { name: reviews }
spec:
  hosts: [reviews]
  gateways: [mesh]
  http:
  - match: [{ uri: { prefix: /REVIEWS/ }, ignoreUriCase: true, gateways: [mesh] }]
    route: [{ destination: { host: reviews, subset: v2 } }]
  - match: [{ uri: { prefix: /stuck } }]
    route: [{ destination: { host: reviews, subset: v9 } }]
    retries: { attempts: 0 }
  - route: [{ destination: { host: reviews, subset: v1 } }]
"#,
        )
        .await;
    let reviews = b.bed.to("reviews");
    for path in ["/reviews/0", "/Reviews/0", "/REVIEWS/0"] {
        let a = call(reviews, path, None).await;
        assert!(a.body.starts_with("reviews-v2"), "{path}: {}", a.body);
    }
    assert_eq!(call(reviews, "/other", None).await.body, "reviews-v1");

    // The endpoint never answers the connect: given up after the rule's
    // 200 ms, not the proxy's 1 s.
    let start = Instant::now();
    let a = call(reviews, "/stuck", None).await;
    let took = start.elapsed();
    assert_eq!((a.status, a.flags.as_str()), (502, "UF"), "{}", a.body);
    assert!(
        (Duration::from_millis(200)..Duration::from_millis(900)).contains(&took),
        "{took:?}"
    );
    // Opaque TCP too: the client's connection is closed once the connect
    // to the endpoint is given up.
    let start = Instant::now();
    let mut db = tokio::net::TcpStream::connect(b.bed.to("mysqldb"))
        .await
        .unwrap();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read(&mut db, &mut buf),
    )
    .await
    .expect("the proxy kept the connection past 5 s");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    let took = start.elapsed();
    assert!(
        (Duration::from_millis(200)..Duration::from_millis(900)).contains(&took),
        "{took:?}"
    );
    b.bed.cp.stop().await;
}
