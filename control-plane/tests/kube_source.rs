//! The Kubernetes source against a mocked API server (kube's tower-test
//! pattern): initial lists fill the store, a watch event adds an object, a
//! watch error (410 Gone) makes the watcher re-list (a resync that changes
//! a resource), and every verdict is written back as a status patch.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Full};
use outrigger_control_plane::kubernetes::{self, Shared};
use outrigger_control_plane::metrics::Metrics;
use outrigger_control_plane::publish::Debounce;
use outrigger_control_plane::server::Published;
use outrigger_control_plane::translate::{Options, ProxyId};
use outrigger_runtime::drain;
use serde_json::{json, Value};
use tokio::sync::watch;

type MockBody = Full<Bytes>;

/// What the fake API server answers, per collection path: the lists in
/// order (the last one repeats), then the watches in order (after the last
/// one, a watch stays open with no events).
#[derive(Default)]
struct Script {
    lists: HashMap<&'static str, Vec<Value>>,
    watches: HashMap<&'static str, Vec<String>>,
    served_lists: HashMap<String, usize>,
    served_watches: HashMap<String, usize>,
    /// (path, body) of every PATCH received.
    patches: Vec<(String, Value)>,
    /// How many PATCHes to answer with a 500 first.
    failing_patches: usize,
}

const COLLECTIONS: [(&str, &str, &str); 8] = [
    ("/api/v1/namespaces", "v1", "NamespaceList"),
    ("/api/v1/services", "v1", "ServiceList"),
    ("/api/v1/pods", "v1", "PodList"),
    (
        "/apis/discovery.k8s.io/v1/endpointslices",
        "discovery.k8s.io/v1",
        "EndpointSliceList",
    ),
    (
        "/apis/outrigger.dev/v1alpha1/virtualservices",
        "outrigger.dev/v1alpha1",
        "VirtualServiceList",
    ),
    (
        "/apis/outrigger.dev/v1alpha1/destinationrules",
        "outrigger.dev/v1alpha1",
        "DestinationRuleList",
    ),
    (
        "/apis/outrigger.dev/v1alpha1/authorizationpolicies",
        "outrigger.dev/v1alpha1",
        "AuthorizationPolicyList",
    ),
    (
        "/apis/outrigger.dev/v1alpha1/peerauthentications",
        "outrigger.dev/v1alpha1",
        "PeerAuthenticationList",
    ),
];

fn list(path: &str, rv: &str, items: Vec<Value>) -> Value {
    let (_, api, kind) = COLLECTIONS.iter().find(|(p, _, _)| *p == path).unwrap();
    json!({ "apiVersion": api, "kind": kind, "metadata": { "resourceVersion": rv }, "items": items })
}

fn respond(body: Value) -> Response<MockBody> {
    Response::new(Full::new(Bytes::from(serde_json::to_vec(&body).unwrap())))
}

/// Serves the mock until the test ends. Unscripted watches are held open.
async fn serve(
    mut handle: tower_test::mock::Handle<Request<kube::client::Body>, Response<MockBody>>,
    script: Arc<Mutex<Script>>,
) {
    let mut held = Vec::new();
    while let Some((req, send)) = handle.next_request().await {
        let path = req.uri().path().to_string();
        let query = req.uri().query().unwrap_or("").to_string();
        if req.method() == Method::PATCH {
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let patch: Value = serde_json::from_slice(&body).unwrap();
            // Answer with an object of the patched kind carrying the status.
            let name = path
                .trim_end_matches("/status")
                .rsplit('/')
                .next()
                .unwrap()
                .to_string();
            let ns = path.split('/').nth(5).unwrap().to_string();
            let kind_path = path.split('/').nth(6).unwrap().to_string();
            let kind = match kind_path.as_str() {
                "virtualservices" => "VirtualService",
                "destinationrules" => "DestinationRule",
                "authorizationpolicies" => "AuthorizationPolicy",
                _ => "PeerAuthentication",
            };
            let mut obj = json!({
                "apiVersion": "outrigger.dev/v1alpha1", "kind": kind,
                "metadata": { "name": name, "namespace": ns },
                "spec": if kind == "VirtualService" { json!({ "hosts": ["web"] }) } else if kind == "DestinationRule" { json!({ "host": "web" }) } else { json!({}) },
            });
            obj["status"] = patch["status"].clone();
            let mut s = script.lock().unwrap();
            s.patches.push((path, patch));
            if s.failing_patches > 0 {
                s.failing_patches -= 1;
                let mut r = respond(
                    json!({ "apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
                                            "message": "etcdserver: request timed out", "reason": "InternalError", "code": 500 }),
                );
                *r.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
                send.send_response(r);
            } else {
                send.send_response(respond(obj));
            }
            continue;
        }
        let mut s = script.lock().unwrap();
        let key = COLLECTIONS
            .iter()
            .map(|(p, _, _)| *p)
            .find(|p| path == *p)
            .unwrap_or_else(|| panic!("unexpected request {} {path}?{query}", req.method()));
        if query.contains("watch=true") {
            let n = *s
                .served_watches
                .entry(path.clone())
                .and_modify(|n| *n += 1)
                .or_insert(0);
            match s.watches.get(key).and_then(|w| w.get(n)) {
                Some(events) => {
                    send.send_response(Response::new(Full::new(Bytes::from(events.clone()))))
                }
                None => held.push(send), // an open watch with nothing to say
            }
        } else {
            let n = *s
                .served_lists
                .entry(path.clone())
                .and_modify(|n| *n += 1)
                .or_insert(0);
            let lists = s.lists.get(key).cloned().unwrap_or_default();
            let body = match lists.get(n).or(lists.last()) {
                Some(l) => l.clone(),
                None => list(key, "1", vec![]),
            };
            send.send_response(respond(body));
        }
    }
}

fn service(name: &str, ip: &str) -> Value {
    json!({ "metadata": { "name": name, "namespace": "shop", "resourceVersion": "5" },
            "spec": { "clusterIP": ip, "ports": [{ "name": "http", "port": 80 }] } })
}

fn virtual_service(subset: Option<&str>, generation: i64) -> Value {
    let mut dest = json!({ "host": "web" });
    if let Some(s) = subset {
        dest["subset"] = json!(s);
    }
    json!({ "apiVersion": "outrigger.dev/v1alpha1", "kind": "VirtualService",
            "metadata": { "name": "web", "namespace": "shop", "generation": generation, "resourceVersion": format!("{generation}0") },
            "spec": { "hosts": ["web"], "http": [{ "route": [{ "destination": dest }] }] } })
}

/// A VirtualService using Istio's `mirror`, which Outrigger does not
/// support: it must be refused by name without failing the watch.
fn unsupported() -> Value {
    json!({ "apiVersion": "outrigger.dev/v1alpha1", "kind": "VirtualService",
            "metadata": { "name": "mirrored", "namespace": "shop", "generation": 4, "resourceVersion": "11" },
            "spec": { "hosts": ["web"], "http": [{ "route": [{ "destination": { "host": "web" } }], "mirror": { "host": "web" } }] } })
}

async fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    check()
}

fn config(rx: &Mesh) -> Option<outrigger_control_plane::translate::ProxyConfig> {
    rx.borrow().as_ref().map(|p| {
        p.mesh.config_for(&ProxyId {
            namespace: "shop".into(),
            pod: "client".into(),
        })
    })
}

type Mesh = watch::Receiver<Option<Arc<Published>>>;

/// The Kubernetes source against the mock, leading: its published meshes,
/// its metrics, and the sender that stops it.
fn start(script: Arc<Mutex<Script>>) -> (Mesh, Arc<Metrics>, drain::Signal) {
    let (leading_tx, leading) = watch::channel(true);
    tokio::spawn(async move {
        leading_tx.closed().await;
    });
    start_with(script, leading)
}

/// [`start`], leading while `leading` says so (as the Lease election
/// would tell it).
fn start_with(
    script: Arc<Mutex<Script>>,
    leading: watch::Receiver<bool>,
) -> (Mesh, Arc<Metrics>, drain::Signal) {
    let (mock, handle) =
        tower_test::mock::pair::<Request<kube::client::Body>, Response<MockBody>>();
    tokio::spawn(serve(handle, script));
    let client = kube::Client::new(mock, "default");
    let metrics = Arc::new(Metrics::new());
    let shared = Arc::new(Shared::default());
    let (tx, rx) = watch::channel(None);
    let (stop_tx, stop) = drain::channel();
    kubernetes::spawn_watchers(client.clone(), shared.clone(), metrics.clone());
    tokio::spawn(kubernetes::run(
        client,
        shared,
        Options::default(),
        Debounce::new(Duration::from_millis(10), Duration::from_millis(100)),
        tx,
        leading,
        metrics.clone(),
        stop,
    ));
    (rx, metrics, stop_tx)
}

fn counter(metrics: &Metrics, name: &str) -> f64 {
    metrics
        .encode()
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name}"))
}

#[tokio::test(start_paused = true)]
async fn a_failed_status_write_is_tried_again() {
    let script = Arc::new(Mutex::new(Script {
        failing_patches: 1,
        ..Script::default()
    }));
    {
        let mut s = script.lock().unwrap();
        s.lists.insert(
            "/api/v1/services",
            vec![list(
                "/api/v1/services",
                "10",
                vec![service("web", "10.96.0.10")],
            )],
        );
        s.lists.insert(
            "/apis/outrigger.dev/v1alpha1/virtualservices",
            vec![list(
                "/apis/outrigger.dev/v1alpha1/virtualservices",
                "10",
                vec![virtual_service(Some("v9"), 1)],
            )],
        );
    }
    let t0 = tokio::time::Instant::now();
    let (rx, metrics, _stop) = start(script.clone());
    assert!(
        eventually(Duration::from_secs(10), || script
            .lock()
            .unwrap()
            .patches
            .len()
            == 1)
        .await,
        "no status write"
    );
    assert!(config(&rx).is_some(), "the mesh was published");
    assert!(
        eventually(Duration::from_secs(30), || script
            .lock()
            .unwrap()
            .patches
            .len()
            == 2)
        .await,
        "the failed write was not tried again"
    );
    assert!(
        t0.elapsed() >= kubernetes::STATUS_RETRY,
        "tried again after {:?}",
        t0.elapsed()
    );
    let s = script.lock().unwrap();
    let without_time = |(path, body): &(String, Value)| {
        let mut c = body["status"]["conditions"][0].clone();
        c.as_object_mut().unwrap().remove("lastTransitionTime");
        (path.clone(), c)
    };
    assert_eq!(
        without_time(&s.patches[0]),
        without_time(&s.patches[1]),
        "the same status, written again"
    );
    assert_eq!(
        counter(&metrics, "outrigger_cp_status_write_errors_total"),
        1.0
    );
    assert_eq!(counter(&metrics, "outrigger_cp_status_writes_total"), 1.0);
}

/// Statuses are written only while the replica leads: none while it
/// follows (the mesh is published all the same), every one that differs
/// when it gains the lead, and no retry of a failed write once it has lost
/// it.
#[tokio::test(start_paused = true)]
async fn statuses_are_written_only_while_leading() {
    let script = Arc::new(Mutex::new(Script {
        failing_patches: 1,
        ..Script::default()
    }));
    script.lock().unwrap().lists.insert(
        "/apis/outrigger.dev/v1alpha1/virtualservices",
        vec![list(
            "/apis/outrigger.dev/v1alpha1/virtualservices",
            "10",
            vec![virtual_service(Some("v9"), 1)],
        )],
    );
    let patches = || script.lock().unwrap().patches.len();
    let (leading_tx, leading) = watch::channel(false);
    let (rx, metrics, _stop) = start_with(script.clone(), leading);
    assert!(
        eventually(Duration::from_secs(10), || config(&rx).is_some()).await,
        "the mesh is published by a follower too"
    );
    tokio::time::sleep(kubernetes::STATUS_RETRY * 4).await;
    assert_eq!(patches(), 0, "a follower writes nothing");

    leading_tx.send_replace(true);
    assert!(
        eventually(Duration::from_secs(1), || patches() == 1).await,
        "gaining the lead writes the status that differs"
    );
    // That write failed; the lead is lost before it is tried again.
    leading_tx.send_replace(false);
    tokio::time::sleep(kubernetes::STATUS_RETRY * 4).await;
    assert_eq!(patches(), 1, "no retry once the lead is lost");
    assert_eq!(counter(&metrics, "outrigger_cp_status_writes_total"), 0.0);

    leading_tx.send_replace(true);
    assert!(
        eventually(kubernetes::STATUS_RETRY / 2, || patches() == 2).await,
        "the lead regained: written at once, not at the next retry"
    );
    assert!(
        eventually(Duration::from_secs(1), || counter(
            &metrics,
            "outrigger_cp_status_writes_total"
        ) == 1.0)
        .await
    );
}

#[tokio::test]
async fn lists_watches_a_resync_after_a_watch_error_and_status_writes() {
    let script = Arc::new(Mutex::new(Script::default()));
    {
        let mut s = script.lock().unwrap();
        s.lists.insert(
            "/api/v1/services",
            vec![list(
                "/api/v1/services",
                "10",
                vec![service("web", "10.96.0.10")],
            )],
        );
        s.lists.insert(
            "/apis/discovery.k8s.io/v1/endpointslices",
            vec![list(
                "/apis/discovery.k8s.io/v1/endpointslices",
                "10",
                vec![json!({
                    "metadata": { "name": "web-1", "namespace": "shop", "labels": { "kubernetes.io/service-name": "web" } },
                    "addressType": "IPv4",
                    "ports": [{ "name": "http", "port": 8080 }],
                    "endpoints": [{ "addresses": ["10.0.0.1"], "conditions": { "ready": true } }]
                })],
            )],
        );
        // The VirtualService names a subset no DestinationRule defines: refused.
        // Its watch fails with 410 Gone; the re-list finds it fixed.
        s.lists.insert(
            "/apis/outrigger.dev/v1alpha1/virtualservices",
            vec![
                list(
                    "/apis/outrigger.dev/v1alpha1/virtualservices",
                    "10",
                    vec![virtual_service(Some("v9"), 1), unsupported()],
                ),
                list(
                    "/apis/outrigger.dev/v1alpha1/virtualservices",
                    "30",
                    vec![virtual_service(None, 2), unsupported()],
                ),
            ],
        );
        s.watches.insert(
            "/apis/outrigger.dev/v1alpha1/virtualservices",
            vec![json!({ "type": "ERROR", "object": { "apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
                         "message": "too old resource version", "reason": "Expired", "code": 410 } })
            .to_string()
                + "\n"],
        );
        // A watch event adds a Service.
        s.watches.insert(
            "/api/v1/services",
            vec![
                json!({ "type": "ADDED", "object": service("api", "10.96.0.11") }).to_string()
                    + "\n",
            ],
        );
    }
    let (rx, metrics, _stop) = start(script.clone());

    // The lists and the watch event: web with its endpoint, and api.
    assert!(
        eventually(Duration::from_secs(10), || {
            config(&rx).is_some_and(|c| c.services.iter().any(|s| s.name == "api"))
        })
        .await,
        "the added Service never showed up"
    );
    let c = config(&rx).unwrap();
    let web = c.services.iter().find(|s| s.name == "web").unwrap();
    assert_eq!(web.endpoints[0].address, "10.0.0.1:8080");

    // The refused VirtualService got a status saying why...
    let vs_status = "/apis/outrigger.dev/v1alpha1/namespaces/shop/virtualservices/web/status";
    let refused = |s: &Script| {
        s.patches.iter().any(|(p, b)| {
            let c = &b["status"]["conditions"][0];
            p == vs_status
                && c["status"] == "False"
                && c["reason"] == "UnknownSubset"
                && c["message"]
                    .as_str()
                    .unwrap()
                    .contains("spec.http[0].route[0].destination.subset")
                && c["observedGeneration"] == 1
        })
    };
    assert!(
        eventually(Duration::from_secs(10), || refused(&script.lock().unwrap())).await,
        "{:?}",
        script.lock().unwrap().patches
    );

    // ...then the watch error made the watcher re-list, which found it fixed.
    let accepted = |s: &Script| {
        s.patches.iter().any(|(p, b)| {
            let c = &b["status"]["conditions"][0];
            p == vs_status && c["status"] == "True" && c["observedGeneration"] == 2
        })
    };
    assert!(
        eventually(Duration::from_secs(15), || accepted(
            &script.lock().unwrap()
        ))
        .await,
        "{:?}",
        script.lock().unwrap().patches
    );
    assert!(
        eventually(Duration::from_secs(5), || {
            config(&rx).is_some_and(|c| {
                c.services
                    .iter()
                    .find(|s| s.name == "web")
                    .is_some_and(|w| w.http.len() == 1)
            })
        })
        .await,
        "the fixed routes never reached the mesh"
    );
    assert!(
        *script
            .lock()
            .unwrap()
            .served_lists
            .get("/apis/outrigger.dev/v1alpha1/virtualservices")
            .unwrap()
            >= 1,
        "re-listed"
    );
    // The VirtualService with an unsupported field: refused by name, and
    // the watch of its kind kept working (the fix above came through it).
    let named = |s: &Script| {
        s.patches.iter().any(|(p, b)| {
            let c = &b["status"]["conditions"][0];
            p == "/apis/outrigger.dev/v1alpha1/namespaces/shop/virtualservices/mirrored/status"
                && c["status"] == "False"
                && c["reason"] == "InvalidSpec"
                && c["message"].as_str().unwrap().contains("mirror")
                && c["observedGeneration"] == 4
        })
    };
    assert!(
        named(&script.lock().unwrap()),
        "{:?}",
        script.lock().unwrap().patches
    );
    let writes = counter(&metrics, "outrigger_cp_status_writes_total");
    assert!(writes >= 2.0, "{writes} status writes counted");
}
