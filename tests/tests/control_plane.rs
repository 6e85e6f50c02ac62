//! A real control plane (folder mode, in-process) streaming to a real proxy
//! that routes real traffic: a VirtualService edit moves a split live with no
//! failed request; a bad manifest is refused while the previous config keeps
//! serving; the proxy rides out a control-plane restart and reconnects; a
//! DestinationRule or Service deleted under a route, or a file rewritten in
//! two halves, never sends a request where no route sends it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use outrigger_api::Snapshot;
use outrigger_identity::Ca;
use outrigger_proxy::identity::Identity;
use outrigger_proxy::Proxy;
use outrigger_tests::control_plane::{certifier, follow, waiting_proxy, ControlPlane, Dir};
use outrigger_tests::*;

/// The mesh the folder describes: Service `web` in `shop` with a blue and a
/// green pod (each an app on loopback), their DestinationRule, and the
/// client's pod.
fn services(blue: SocketAddr, green: SocketAddr) -> String {
    format!(
        r#"
apiVersion: v1
kind: Service
metadata: {{ name: web, namespace: shop }}
spec: {{ clusterIP: 10.96.0.10, ports: [{{ name: http, port: 80 }}] }}
---
apiVersion: v1
kind: Endpoints
metadata: {{ name: web, namespace: shop }}
subsets:
  - addresses: [{{ ip: 127.0.0.1, targetRef: {{ kind: Pod, name: web-blue }} }}]
    ports: [{{ name: http, port: {} }}]
  - addresses: [{{ ip: 127.0.0.1, targetRef: {{ kind: Pod, name: web-green }} }}]
    ports: [{{ name: http, port: {} }}]
---
apiVersion: v1
kind: Pod
metadata: {{ name: web-blue, namespace: shop, labels: {{ app: web, version: blue }} }}
spec: {{ containers: [{{ name: web, image: web }}] }}
---
apiVersion: v1
kind: Pod
metadata: {{ name: web-green, namespace: shop, labels: {{ app: web, version: green }} }}
spec: {{ containers: [{{ name: web, image: web }}] }}
---
apiVersion: outrigger.dev/v1alpha1
kind: DestinationRule
metadata: {{ name: web, namespace: shop }}
spec:
  host: web
  subsets: [{{ name: blue, labels: {{ version: blue }} }}, {{ name: green, labels: {{ version: green }} }}]
"#,
        blue.port(),
        green.port()
    )
}

fn split(blue: u32, green: u32) -> String {
    format!(
        r#"apiVersion: outrigger.dev/v1alpha1
kind: VirtualService
metadata: {{ name: web, namespace: shop }}
spec:
  hosts: [web]
  http:
    - route:
        - {{ destination: {{ host: web, subset: blue }}, weight: {blue} }}
        - {{ destination: {{ host: web, subset: green }}, weight: {green} }}
"#
    )
}

/// The client proxy's bootstrap: an outbound listener bound to `web.shop:80`
/// (a placeholder entry with no endpoints until the control plane speaks).
fn bootstrap() -> Snapshot {
    web_snapshot("bootstrap", "")
}

/// A client-side proxy waiting for its first config.
async fn waiting_client() -> Proxy {
    waiting_proxy(bootstrap(), None).await
}

/// A client-side proxy following the control plane at `cp`.
async fn following_proxy(cp: SocketAddr) -> Proxy {
    let p = waiting_client().await;
    follow_client(&p, cp, None);
    p
}

/// Starts following the control plane at `cp` as the client's pod; with
/// `identity`, over mutual TLS.
fn follow_client(p: &Proxy, cp: SocketAddr, identity: Option<Arc<Identity>>) {
    follow(p, cp, bootstrap(), "shop", "client-1", identity);
}

/// Once `p` is ready, four clients request through its outbound listener
/// until `stop`; returns when `hits` shows their traffic arriving:
/// (the listener's address, the stop flag, the clients).
async fn load_through(
    p: &Proxy,
    hits: &AtomicUsize,
) -> (
    SocketAddr,
    Arc<AtomicBool>,
    Vec<tokio::task::JoinHandle<(usize, usize)>>,
) {
    assert!(
        eventually(Duration::from_secs(10), || ready(p)).await,
        "never ready"
    );
    let addr = p.listener_addr("outbound").unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let clients = keep_requesting(addr, stop.clone());
    assert!(
        eventually(Duration::from_secs(5), || async {
            hits.load(Ordering::SeqCst) > 50
        })
        .await
    );
    (addr, stop, clients)
}

/// Stops the clients and asserts that none of their requests failed;
/// returns how many were answered.
async fn stop_with_none_failed(
    stop: &AtomicBool,
    clients: Vec<tokio::task::JoinHandle<(usize, usize)>>,
) -> usize {
    stop.store(true, Ordering::SeqCst);
    let (ok, failed) = tally(clients).await;
    assert_eq!(failed, 0, "{failed} failed of {}", ok + failed);
    ok
}

fn counted(
    name: &'static str,
) -> impl std::future::Future<Output = (SocketAddr, Arc<AtomicUsize>)> {
    counted_app(name, |_, _| Answer::Slow(1, 200))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_virtual_service_edit_moves_the_split_live_with_no_failed_request() {
    let (blue, blue_hits) = counted("blue").await;
    let (green, green_hits) = counted("green").await;
    let dir = Dir::new("split");
    dir.write("mesh.yaml", &services(blue, green));
    dir.write("web-vs.yaml", &split(100, 0));
    let cp = ControlPlane::bind_and_start(dir.path()).await;
    let p = waiting_client().await;
    assert!(!ready(&p).await, "not ready before the first update");
    follow_client(&p, cp.addr, None);
    let (_, stop, clients) = load_through(&p, &blue_hits).await;
    assert_eq!(
        green_hits.load(Ordering::SeqCst),
        0,
        "100/0 sends nothing to green"
    );

    dir.write("web-vs.yaml", &split(0, 100));
    // Once green has taken requests, blue must stop getting new ones.
    assert!(
        eventually(Duration::from_secs(10), || async {
            green_hits.load(Ordering::SeqCst) > 20
        })
        .await,
        "the edit never reached the proxy"
    );
    let blue_after = blue_hits.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop_with_none_failed(&stop, clients).await;
    // Requests already on their way to blue when the switch landed may finish there.
    assert!(
        blue_hits.load(Ordering::SeqCst) <= blue_after + 4,
        "blue kept getting requests after the switch"
    );
    let text = cp.metrics.encode();
    assert!(text.contains("outrigger_cp_connected_proxies 1"), "{text}");
    cp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_manifest_is_refused_and_the_previous_config_keeps_serving() {
    let (blue, blue_hits) = counted("blue").await;
    let (green, green_hits) = counted("green").await;
    let dir = Dir::new("bad");
    dir.write("mesh.yaml", &services(blue, green));
    dir.write("web-vs.yaml", &split(100, 0));
    let cp = ControlPlane::bind_and_start(dir.path()).await;
    let p = following_proxy(cp.addr).await;
    assert!(eventually(Duration::from_secs(10), || ready(&p)).await);
    let addr = p.listener_addr("outbound").unwrap();
    let version_before = metric(&scrape(&p).await, "outrigger_config_applied_total", &[]);
    let pushes_before = metric(&cp.metrics.encode(), "outrigger_cp_pushes_total", &[]);

    // Broken YAML: the file's last good content stays.
    dir.write(
        "web-vs.yaml",
        "apiVersion: outrigger.dev/v1alpha1\nkind: VirtualService\nmetadata: { name: web\n",
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            cp.metrics
                .encode()
                .contains("outrigger_cp_manifest_errors 1")
        })
        .await
    );
    // A well-formed VirtualService that names a missing subset: refused,
    // and the accepted version stays in force.
    dir.write(
        "web-vs.yaml",
        &split(0, 100).replace("subset: green", "subset: purple"),
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            cp.metrics
                .encode()
                .contains("outrigger_cp_rejected_resources{kind=\"VirtualService\"} 1")
        })
        .await
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    for _ in 0..50 {
        assert_eq!(get(addr, "/").await.0, 200);
    }
    assert_eq!(
        green_hits.load(Ordering::SeqCst),
        0,
        "the refused edit changed nothing"
    );
    assert!(blue_hits.load(Ordering::SeqCst) >= 50);
    let text = scrape(&p).await;
    assert_eq!(
        metric(&text, "outrigger_config_applied_total", &[]),
        version_before,
        "no update reached the proxy: nothing it sees changed"
    );
    assert_eq!(metric(&text, "outrigger_config_rejected_total", &[]), 0.0);
    assert_eq!(
        metric(&cp.metrics.encode(), "outrigger_cp_pushes_total", &[]),
        pushes_before,
        "the control plane sent nothing: the refused edit changed nothing any proxy sees"
    );
    cp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_flows_through_a_control_plane_restart_and_the_proxy_reconnects() {
    let (blue, blue_hits) = counted("blue").await;
    let (green, _green_hits) = counted("green").await;
    let dir = Dir::new("restart");
    dir.write("mesh.yaml", &services(blue, green));
    dir.write("web-vs.yaml", &split(100, 0));
    let cp = ControlPlane::bind_and_start(dir.path()).await;
    let cp_addr = cp.addr;
    let p = following_proxy(cp_addr).await;
    assert!(eventually(Duration::from_secs(10), || ready(&p)).await);
    let addr = p.listener_addr("outbound").unwrap();
    let connected = |p: &Proxy| {
        let p = p.metrics.clone();
        async move { metric(&p.encode(), "outrigger_control_plane_connected", &[]) == 1.0 }
    };
    assert!(eventually(Duration::from_secs(5), || connected(&p)).await);

    let stop = Arc::new(AtomicBool::new(false));
    let clients = keep_requesting(addr, stop.clone());
    cp.stop().await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            metric(
                &p.metrics.encode(),
                "outrigger_control_plane_connected",
                &[],
            ) == 0.0
        })
        .await,
        "the proxy never noticed the control plane left"
    );
    let served_while_away = blue_hits.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        blue_hits.load(Ordering::SeqCst) > served_while_away,
        "traffic stopped"
    );
    assert!(ready(&p).await, "still ready with the last good snapshot");

    // The control plane comes back on the same address; the proxy reconnects.
    let listener = tokio::net::TcpListener::bind(cp_addr).await.unwrap();
    let cp = ControlPlane::start(dir.path(), listener).await;
    assert!(
        eventually(Duration::from_secs(15), || connected(&p)).await,
        "the proxy did not reconnect"
    );
    stop_with_none_failed(&stop, clients).await;
    cp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_with_an_identity_follows_over_mtls_and_renews_across_an_outage() {
    // The proxy's log shows with a failure (the test harness captures it).
    let _ = tracing_subscriber::fmt()
        .with_env_filter("outrigger_proxy=info,outrigger_control_plane=info")
        .with_test_writer()
        .try_init();
    let (blue, _) = counted("blue").await;
    let (green, _) = counted("green").await;
    let dir = Dir::new("identity");
    dir.write("mesh.yaml", &services(blue, green));
    dir.write("web-vs.yaml", &split(100, 0));
    let tokens = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tokens.path().join("shop")).unwrap();
    std::fs::write(tokens.path().join("shop/client"), "token-client").unwrap();
    let token_file = tokens.path().join("shop/client");
    let ca = Arc::new(Ca::generate("cluster.local", std::time::SystemTime::now()).unwrap());
    // Three-second certificates: renewed every 2.1 s, and more often while
    // the control plane is away, so the per-address limit (made for
    // 24-hour certificates) is raised.
    let mesh_ca = || certifier(ca.clone(), Duration::from_secs(3), tokens.path());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let cp = ControlPlane::start_with(dir.path(), listener, Some(mesh_ca())).await;
    let identity = workload_identity("shop", "client", token_file, ca.roots());
    let p = waiting_client().await;
    follow_client(&p, cp.addr, Some(identity.clone()));
    assert!(
        eventually(Duration::from_secs(10), || ready(&p)).await,
        "never ready"
    );
    assert!(identity.is_held());
    let renewals = |text: &str| {
        metric(
            text,
            "outrigger_identity_renewals_total",
            &[("result", "ok")],
        )
    };
    assert!(
        eventually(Duration::from_secs(10), || async {
            renewals(&scrape(&p).await) >= 2.0
        })
        .await,
        "no renewal"
    );
    let left = outrigger_tests::cert_left(&p).await;
    assert!(
        left.is_some_and(|l| l > 0.0 && l <= 4.0),
        "{left:?} seconds left"
    );

    // The control plane goes away for longer than a renewal interval:
    // traffic keeps flowing on the config in force, renewals fail...
    let stop = Arc::new(AtomicBool::new(false));
    let addr = p.listener_addr("outbound").unwrap();
    let clients = keep_requesting(addr, stop.clone());
    let cp_addr = cp.addr;
    cp.stop().await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            metric(
                &scrape(&p).await,
                "outrigger_identity_renewals_total",
                &[("result", "error")],
            ) >= 1.0
        })
        .await,
        "no failed renewal counted"
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    // ...and once it is back (same CA, same address) they succeed again.
    let before = renewals(&scrape(&p).await);
    let listener = tokio::net::TcpListener::bind(cp_addr).await.unwrap();
    let cp = ControlPlane::start_with(dir.path(), listener, Some(mesh_ca())).await;
    assert!(
        eventually(Duration::from_secs(20), || async {
            renewals(&scrape(&p).await) > before
        })
        .await,
        "never renewed after the control plane came back"
    );
    let ok = stop_with_none_failed(&stop, clients).await;
    assert!(ok > 0);
    cp.stop().await;
}

/// [`services`] without its DestinationRule, and the rule alone.
fn services_and_rule(blue: SocketAddr, green: SocketAddr) -> (String, String) {
    let all = services(blue, green);
    let at = all
        .find("apiVersion: outrigger.dev/v1alpha1\nkind: DestinationRule")
        .unwrap();
    (
        all[..at].trim_end_matches("---\n").to_string(),
        all[at..].to_string(),
    )
}

/// A control-plane gauge.
fn cp_gauge(cp: &ControlPlane, name: &str, kind: &str) -> f64 {
    metric(&cp.metrics.encode(), name, &[("kind", kind)])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_destination_rule_a_route_uses_keeps_it_and_no_request_spreads() {
    let (blue, blue_hits) = counted("blue").await;
    let (green, green_hits) = counted("green").await;
    let dir = Dir::new("dr-deleted");
    let (mesh, rule) = services_and_rule(blue, green);
    dir.write("mesh.yaml", &mesh);
    dir.write("web-dr.yaml", &rule);
    dir.write("web-vs.yaml", &split(100, 0));
    let cp = ControlPlane::bind_and_start(dir.path()).await;
    let p = following_proxy(cp.addr).await;
    let (_, stop, clients) = load_through(&p, &blue_hits).await;

    // The rule the route's subsets come from is deleted under load: it
    // stays in force, as last accepted, and the VirtualService says why.
    std::fs::remove_file(dir.path().join("web-dr.yaml")).unwrap();
    assert!(
        eventually(Duration::from_secs(5), || async {
            cp_gauge(&cp, "outrigger_cp_rejected_resources", "VirtualService") == 1.0
        })
        .await,
        "the deletion was never published (the VirtualService names a rule that is gone)"
    );
    let blue_then = blue_hits.load(Ordering::SeqCst);
    assert!(
        eventually(Duration::from_secs(5), || async {
            blue_hits.load(Ordering::SeqCst) > blue_then + 100
        })
        .await,
        "traffic stopped"
    );
    assert_eq!(
        green_hits.load(Ordering::SeqCst),
        0,
        "a request reached the subset no route sends to"
    );
    assert_eq!(
        cp_gauge(&cp, "outrigger_cp_deleted_in_force", "DestinationRule"),
        1.0
    );

    // Put back: accepted again, nothing kept, and the route follows edits.
    dir.write("web-dr.yaml", &rule);
    assert!(
        eventually(Duration::from_secs(5), || async {
            cp_gauge(&cp, "outrigger_cp_deleted_in_force", "DestinationRule") == 0.0
                && cp_gauge(&cp, "outrigger_cp_rejected_resources", "VirtualService") == 0.0
        })
        .await,
        "never recovered"
    );
    assert_eq!(green_hits.load(Ordering::SeqCst), 0);
    dir.write("web-vs.yaml", &split(0, 100));
    assert!(
        eventually(Duration::from_secs(5), || async {
            green_hits.load(Ordering::SeqCst) > 20
        })
        .await,
        "the restored rule's subsets do not route"
    );
    stop_with_none_failed(&stop, clients).await;
    cp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_rewritten_in_two_halves_never_spreads_traffic() {
    let (blue, blue_hits) = counted("blue").await;
    let (green, green_hits) = counted("green").await;
    let dir = Dir::new("halves");
    let (mesh, rule) = services_and_rule(blue, green);
    let route = split(100, 0);
    let vs_first = format!("{route}---\n{rule}");
    let dr_first = format!("{rule}---\n{route}");
    dir.write("mesh.yaml", &mesh);
    dir.write("routes.yaml", &vs_first);
    let cp = ControlPlane::bind_and_start(dir.path()).await;
    let p = following_proxy(cp.addr).await;
    let (_, stop, clients) = load_through(&p, &blue_hits).await;
    let errors =
        |cp: &ControlPlane| metric(&cp.metrics.encode(), "outrigger_cp_manifest_errors", &[]);
    // Each rewrite, written non-atomically as far as the control plane can
    // tell: the first part of the new text, then 0.8 s later all of it. Cut
    // at the end of the route's document, the file has no rule for that
    // time (the rule stays: the route uses it); cut inside a document, that
    // document is broken and the one after it missing (both stay: a file
    // with a bad document deletes nothing).
    let cuts: [(&str, String, &str); 4] = [
        (
            "the route alone",
            vs_first[..route.len()].to_string(),
            "rule gone",
        ),
        (
            "cut inside the route",
            dr_first[..dr_first.find("  hosts: [web]").unwrap()].to_string(),
            "bad document",
        ),
        (
            "cut inside the rule's spec",
            dr_first[..dr_first.find("  host: web").unwrap()].to_string(),
            "bad document",
        ),
        (
            "cut inside the rule's metadata",
            dr_first[..dr_first.find("{ name: web, namespace").unwrap() + 8].to_string(),
            "bad document",
        ),
    ];
    for (what, half, shows) in cuts {
        let whole = if half.starts_with(&route) {
            &vs_first
        } else {
            &dr_first
        };
        dir.write("routes.yaml", &half);
        let seen = eventually(Duration::from_secs(5), || async {
            match shows {
                "rule gone" => {
                    cp_gauge(&cp, "outrigger_cp_rejected_resources", "VirtualService") == 1.0
                }
                _ => errors(&cp) == 1.0,
            }
        })
        .await;
        assert!(seen, "{what}: never read");
        tokio::time::sleep(Duration::from_millis(800)).await;
        dir.write("routes.yaml", whole);
        assert!(
            eventually(Duration::from_secs(5), || async {
                errors(&cp) == 0.0
                    && cp_gauge(&cp, "outrigger_cp_rejected_resources", "VirtualService") == 0.0
            })
            .await,
            "{what}: the whole file never read"
        );
        assert_eq!(
            green_hits.load(Ordering::SeqCst),
            0,
            "{what}: a request reached the subset no route sends to"
        );
    }
    stop_with_none_failed(&stop, clients).await;
    assert_eq!(green_hits.load(Ordering::SeqCst), 0);
    cp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_deleted_under_a_route_answers_503_and_nothing_goes_elsewhere() {
    let (blue, blue_hits) = counted("blue").await;
    let (green, green_hits) = counted("green").await;
    let dir = Dir::new("svc-deleted");
    // web's own endpoint is blue; its route sends everything to the
    // web-green Service.
    let web = format!(
        r#"
apiVersion: v1
kind: Service
metadata: {{ name: web, namespace: shop }}
spec: {{ clusterIP: 10.96.0.10, ports: [{{ name: http, port: 80 }}] }}
---
apiVersion: v1
kind: Endpoints
metadata: {{ name: web, namespace: shop }}
subsets: [{{ addresses: [{{ ip: 127.0.0.1 }}], ports: [{{ name: http, port: {} }}] }}]
---
apiVersion: outrigger.dev/v1alpha1
kind: VirtualService
metadata: {{ name: web, namespace: shop }}
spec:
  hosts: [web]
  http: [{{ route: [{{ destination: {{ host: web-green, port: {{ number: 80 }} }} }}] }}]
"#,
        blue.port()
    );
    let web_green = format!(
        r#"
apiVersion: v1
kind: Service
metadata: {{ name: web-green, namespace: shop }}
spec: {{ clusterIP: 10.96.0.11, ports: [{{ name: http, port: 80 }}] }}
---
apiVersion: v1
kind: Endpoints
metadata: {{ name: web-green, namespace: shop }}
subsets: [{{ addresses: [{{ ip: 127.0.0.1 }}], ports: [{{ name: http, port: {} }}] }}]
"#,
        green.port()
    );
    dir.write("web.yaml", &web);
    dir.write("web-green.yaml", &web_green);
    let cp = ControlPlane::bind_and_start(dir.path()).await;
    let p = following_proxy(cp.addr).await;
    assert!(eventually(Duration::from_secs(10), || ready(&p)).await);
    let addr = p.listener_addr("outbound").unwrap();
    assert!(
        eventually(Duration::from_secs(5), || async {
            get(addr, "/").await.0 == 200
        })
        .await
    );
    assert!(green_hits.load(Ordering::SeqCst) >= 1);

    std::fs::remove_file(dir.path().join("web-green.yaml")).unwrap();
    assert!(
        eventually(Duration::from_secs(5), || async {
            cp_gauge(&cp, "outrigger_cp_rejected_resources", "VirtualService") == 1.0
        })
        .await,
        "the deletion was never published (the VirtualService names a Service that is gone)"
    );
    // Traffic keeps coming while the proxy takes the update.
    for _ in 0..20 {
        let _ = get(addr, "/").await;
    }
    assert_eq!(
        blue_hits.load(Ordering::SeqCst),
        0,
        "traffic went where no route sends it"
    );
    assert_eq!(
        cp_gauge(&cp, "outrigger_cp_deleted_in_force", "Service"),
        1.0
    );
    // What the route sends to is gone: 503, and web's own endpoint (where
    // no route sends) gets nothing.
    assert!(
        eventually(Duration::from_secs(5), || async {
            get(addr, "/").await.0 == 503
        })
        .await,
        "the proxy never saw the deletion"
    );
    for _ in 0..20 {
        assert_eq!(get(addr, "/").await.0, 503);
    }
    assert_eq!(
        blue_hits.load(Ordering::SeqCst),
        0,
        "traffic went where no route sends it"
    );

    // Back: routed to it again.
    let green_then = green_hits.load(Ordering::SeqCst);
    dir.write("web-green.yaml", &web_green);
    assert!(
        eventually(Duration::from_secs(5), || async {
            get(addr, "/").await.0 == 200
        })
        .await,
        "never recovered"
    );
    assert!(green_hits.load(Ordering::SeqCst) > green_then);
    assert_eq!(
        cp_gauge(&cp, "outrigger_cp_deleted_in_force", "Service"),
        0.0
    );
    assert_eq!(blue_hits.load(Ordering::SeqCst), 0);
    cp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_files_good_documents_apply_while_its_bad_one_keeps_its_last_version() {
    let (blue, blue_hits) = counted("blue").await;
    let (green, green_hits) = counted("green").await;
    let dir = Dir::new("per-document");
    let (mesh, rule) = services_and_rule(blue, green);
    dir.write("mesh.yaml", &mesh);
    dir.write("routes.yaml", &format!("{rule}---\n{}", split(100, 0)));
    let cp = ControlPlane::bind_and_start(dir.path()).await;
    let p = following_proxy(cp.addr).await;
    let (_, stop, clients) = load_through(&p, &blue_hits).await;
    assert_eq!(green_hits.load(Ordering::SeqCst), 0);

    // One edit: the route moves to green (good), the rule gains a field
    // Outrigger does not support (bad: its last good version, which has
    // the green subset, stays).
    let bad_rule = rule.replace("  host: web\n", "  host: web\n  notAField: true\n");
    assert_ne!(bad_rule, rule);
    dir.write("routes.yaml", &format!("{bad_rule}---\n{}", split(0, 100)));
    assert!(
        eventually(Duration::from_secs(5), || async {
            green_hits.load(Ordering::SeqCst) > 20
        })
        .await,
        "the file's good document never applied"
    );
    assert_eq!(
        metric(&cp.metrics.encode(), "outrigger_cp_manifest_errors", &[]),
        1.0
    );
    let blue_after = blue_hits.load(Ordering::SeqCst);
    let green_then = green_hits.load(Ordering::SeqCst);
    assert!(
        eventually(Duration::from_secs(5), || async {
            green_hits.load(Ordering::SeqCst) > green_then + 100
        })
        .await
    );
    // Requests already on their way to blue when the switch landed may finish there.
    assert!(
        blue_hits.load(Ordering::SeqCst) <= blue_after + 4,
        "blue kept getting requests after the route left it"
    );

    // Fixed, then routed back: the file reads whole again and the rule's
    // subsets follow.
    dir.write("routes.yaml", &format!("{rule}---\n{}", split(100, 0)));
    let blue_then = blue_hits.load(Ordering::SeqCst);
    assert!(
        eventually(Duration::from_secs(5), || async {
            blue_hits.load(Ordering::SeqCst) > blue_then + 20
                && metric(&cp.metrics.encode(), "outrigger_cp_manifest_errors", &[]) == 0.0
        })
        .await,
        "never recovered"
    );
    stop_with_none_failed(&stop, clients).await;
    cp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_a_route_whose_rule_is_gone_answers_503_and_never_spreads() {
    // A DestinationRule a route uses is deleted, and the control plane then
    // restarts: its history of what was in force is gone, so the route
    // cannot be kept as last accepted. It must not fall back to the
    // service's every endpoint either: its host answers 503 until the rule
    // is back.
    let (blue, blue_hits) = counted("blue").await;
    let (green, green_hits) = counted("green").await;
    let dir = Dir::new("restart-rule-gone");
    let (mesh, rule) = services_and_rule(blue, green);
    dir.write("mesh.yaml", &mesh);
    dir.write("web-dr.yaml", &rule);
    dir.write("web-vs.yaml", &split(100, 0));
    let cp = ControlPlane::bind_and_start(dir.path()).await;
    let cp_addr = cp.addr;
    let p = following_proxy(cp_addr).await;
    let (addr, stop, clients) = load_through(&p, &blue_hits).await;
    std::fs::remove_file(dir.path().join("web-dr.yaml")).unwrap();
    assert!(
        eventually(Duration::from_secs(5), || async {
            cp_gauge(&cp, "outrigger_cp_deleted_in_force", "DestinationRule") == 1.0
        })
        .await
    );
    cp.stop().await;
    let listener = tokio::net::TcpListener::bind(cp_addr).await.unwrap();
    let cp = ControlPlane::start(dir.path(), listener).await;
    assert!(
        eventually(Duration::from_secs(15), || async {
            let (status, body) = get(addr, "/").await;
            status == 503 && body.contains("VirtualService shop/web is refused")
        })
        .await,
        "the route's host does not answer 503 after the restart"
    );
    // Watched for a while: nothing reaches an endpoint now (but a request
    // each of the four clients had already sent under the old config).
    let blue_then = blue_hits.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        blue_hits.load(Ordering::SeqCst) <= blue_then + 4,
        "traffic still flowed"
    );
    assert_eq!(
        green_hits.load(Ordering::SeqCst),
        0,
        "traffic spread to green"
    );

    // The rule is back: the route applies again.
    dir.write("web-dr.yaml", &rule);
    assert!(
        eventually(Duration::from_secs(5), || async {
            blue_hits.load(Ordering::SeqCst) > blue_then + 20
        })
        .await,
        "the route did not come back with its rule"
    );
    stop.store(true, Ordering::SeqCst);
    let _ = tally(clients).await;
    assert_eq!(
        green_hits.load(Ordering::SeqCst),
        0,
        "traffic spread to green"
    );
    cp.stop().await;
}
