//! Kubelet's probes under STRICT mutual TLS: a plaintext probe of the app's
//! port is closed by the inbound side, and the same probes asked of the
//! admin port (`/app-health/...`, where the injector points them) reach the
//! app from inside the pod and report its health.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use outrigger_api::inbound::Mtls;
use outrigger_identity::Ca;
use outrigger_proxy::probe::Probes;
use outrigger_proxy::{Options, Proxy};
use outrigger_tests::*;

const TD: &str = "cluster.local";

/// A STRICT server-side proxy in front of `app` answering `probes`.
async fn strict_proxy(app: SocketAddr, probes: &str) -> Proxy {
    let ca = Ca::generate(TD, SystemTime::now()).unwrap();
    let mut snap = server_snapshot(app);
    snap.inbound.mtls = Mtls::strict([]);
    let opts = Options {
        identity: Some(held_identity(&ca, "shop", "web")),
        probes: Arc::new(Probes::parse(probes, "127.0.0.1".parse().unwrap()).unwrap()),
        ..Options::default()
    };
    Proxy::start(snap, opts).await.unwrap()
}

#[tokio::test]
async fn probes_keep_working_when_the_inbound_side_is_strict() {
    let (app, hits) = counted_app("web", |_, req| match req.uri().path() {
        // Healthy only when kubelet's header came through.
        "/healthz" if req.headers().get("x-probe").is_some_and(|v| v == "kubelet") => {
            Answer::Status(200)
        }
        "/healthz" => Answer::Status(400),
        "/moved" => Answer::Status(302),
        "/slow" => Answer::Slow(5_000, 200),
        _ => Answer::Status(500),
    })
    .await;
    let port = app.port();
    let gone = free_port();
    let probes = format!(
        r#"{{
        "/app-health/web/livez": {{"httpGet": {{"path": "/healthz", "port": {port},
            "httpHeaders": [{{"name": "x-probe", "value": "kubelet"}}]}}}},
        "/app-health/web/readyz": {{"httpGet": {{"path": "/sick", "port": {port}}}}},
        "/app-health/web/startupz": {{"tcpSocket": {{"port": {port}}}}},
        "/app-health/moved/livez": {{"httpGet": {{"path": "/moved", "port": {port}}}}},
        "/app-health/slow/livez": {{"httpGet": {{"path": "/slow", "port": {port}}}, "timeoutSeconds": 1}},
        "/app-health/gone/livez": {{"tcpSocket": {{"port": {gone}}}}}
    }}"#
    );
    let proxy = strict_proxy(app, &probes).await;

    // Kubelet's own plaintext probe of the app's port is closed (STRICT)...
    let inbound = proxy.listener_addr("inbound").unwrap();
    assert!(try_get(inbound, "/healthz").await.is_err());
    assert_eq!(hits.load(Ordering::SeqCst), 0);

    // ...while the rewritten probes on the admin port reach the app.
    let admin = proxy.admin_addr;
    let (status, body) = get(admin, "/app-health/web/livez").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, format!("http://127.0.0.1:{port}/healthz: 200\n"));
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    let (status, body) = get(admin, "/app-health/web/readyz").await;
    assert_eq!(
        (status, body.trim_end()),
        (500, &*format!("http://127.0.0.1:{port}/sick: 500"))
    );
    assert_eq!(get(admin, "/app-health/web/startupz").await.0, 200);
    // A redirect is success, answered 200 (kubelet must not follow it to
    // the admin port).
    assert_eq!(get(admin, "/app-health/moved/livez").await.0, 200);
    let (status, body) = get(admin, "/app-health/gone/livez").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.starts_with(&format!("tcp://127.0.0.1:{gone}: ")),
        "{body}"
    );
    let started = tokio::time::Instant::now();
    let (status, body) = get(admin, "/app-health/slow/livez").await;
    assert_eq!(status, 503);
    assert!(body.contains("no answer within 1s"), "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the probe's timeout was not kept"
    );
    let (status, body) = get(admin, "/app-health/other/livez").await;
    assert_eq!(status, 404);
    assert!(body.contains("/app-health/web/livez"), "{body}");
    // The proxy's own probes are unchanged.
    assert_eq!(get(admin, "/ready").await.0, 200);
}

#[tokio::test]
async fn an_https_probe_reaches_a_tls_app_without_verifying_its_certificate() {
    // An HTTPS app with a self-signed certificate, which nobody here trusts.
    let (tls_app, _cert) = serve_https(|req: http::Request<hyper::body::Incoming>| async move {
        let status = if req.uri().path() == "/healthz" {
            204
        } else {
            503
        };
        let mut r = http::Response::new(full(""));
        *r.status_mut() = status.try_into().unwrap();
        r
    })
    .await;
    let port = tls_app.port();
    let app = app("web").await;
    let probes = format!(
        r#"{{"/app-health/tls/livez": {{"httpGet": {{"path": "/healthz", "port": {port}, "scheme": "HTTPS"}}}},
            "/app-health/tls/readyz": {{"httpGet": {{"path": "/down", "port": {port}, "scheme": "HTTPS"}}}},
            "/app-health/plain/livez": {{"httpGet": {{"path": "/healthz", "port": {port}}}}}}}"#
    );
    let proxy = strict_proxy(app, &probes).await;
    let (status, body) = get(proxy.admin_addr, "/app-health/tls/livez").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body.trim_end(),
        format!("https://127.0.0.1:{port}/healthz: 204")
    );
    assert_eq!(get(proxy.admin_addr, "/app-health/tls/readyz").await.0, 503);
    // Plain HTTP to a TLS port fails as kubelet's would.
    assert_eq!(
        get(proxy.admin_addr, "/app-health/plain/livez").await.0,
        503
    );
}

#[tokio::test]
async fn a_grpc_probe_asks_the_apps_health_service() {
    use tonic_health::ServingStatus;
    // A real gRPC server with the standard health service (tonic-health):
    // the server as a whole SERVING, shop.Cart NOT_SERVING.
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("shop.Cart", ServingStatus::NotServing)
        .await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(health)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    // And an HTTP/1.1-only app, which no gRPC probe can pass.
    let http_app = app("web").await;
    let http_port = http_app.port();
    let probes = format!(
        r#"{{"/app-health/grpc/livez": {{"grpc": {{"port": {port}}}}},
            "/app-health/grpc/readyz": {{"grpc": {{"port": {port}, "service": "shop.Cart"}}}},
            "/app-health/grpc/startupz": {{"grpc": {{"port": {port}, "service": "shop.Nobody"}}}},
            "/app-health/http/livez": {{"grpc": {{"port": {http_port}}}}}}}"#
    );
    let proxy = strict_proxy(http_app, &probes).await;
    let admin = proxy.admin_addr;

    let (status, body) = get(admin, "/app-health/grpc/livez").await;
    assert_eq!(
        (status, body.trim_end()),
        (200, &*format!("grpc://127.0.0.1:{port}/: 200"))
    );
    let (status, body) = get(admin, "/app-health/grpc/readyz").await;
    assert_eq!(
        (status, body.trim_end()),
        (
            503,
            &*format!("grpc://127.0.0.1:{port}/shop.Cart: the app says NOT_SERVING")
        )
    );
    // An unknown service: the health service answers NOT_FOUND (5).
    let (status, body) = get(admin, "/app-health/grpc/startupz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("grpc-status 5"), "{body}");
    // tonic sends its message percent-encoded; it reads decoded.
    assert!(body.contains("service not registered"), "{body}");
    // Not a gRPC server at all.
    let (status, body) = get(admin, "/app-health/http/livez").await;
    assert_eq!(status, 503, "{body}");

    // The app turns healthy: the next probe says so.
    reporter
        .set_service_status("shop.Cart", ServingStatus::Serving)
        .await;
    assert_eq!(get(admin, "/app-health/grpc/readyz").await.0, 200);
}

/// The probes the injector hands the proxy are ones the proxy can run, for
/// every kind it rewrites (the two sides share only the JSON).
#[test]
fn the_probes_the_injector_writes_are_the_ones_the_proxy_runs() {
    use outrigger_injector::config::MeshConfig;
    use outrigger_injector::inject::{inject, Namespace, Outcome};
    let pod: serde_json::Value = serde_saphyr::from_str(
        r#"
metadata: { name: api-1, namespace: shop }
spec:
  containers:
    - name: api
      ports: [{ name: http, containerPort: 8080 }]
      livenessProbe: { httpGet: { path: /healthz, port: http, httpHeaders: [{ name: x-probe, value: k }] } }
      readinessProbe: { tcpSocket: { port: 8080 }, timeoutSeconds: 3 }
      startupProbe: { grpc: { port: 9000, service: shop.Cart } }
"#,
    )
    .unwrap();
    let ns = Namespace {
        name: "shop".into(),
        annotations: [("outrigger.dev/inject".to_string(), "enabled".to_string())].into(),
    };
    let cfg = MeshConfig::from_yaml("proxyImage: outrigger/proxy:test").unwrap();
    let Outcome::Inject { patch, .. } = inject(&pod, &ns, &cfg) else {
        panic!("not injected");
    };
    let mut doc = pod.clone();
    json_patch::patch(&mut doc, &patch).unwrap();
    let proxy = doc["spec"]["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "outrigger-proxy")
        .unwrap();
    let json = proxy["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "OUTRIGGER_APP_PROBES")
        .unwrap()["value"]
        .as_str()
        .unwrap();
    let probes = Probes::parse(json, "10.0.0.7".parse().unwrap()).unwrap();
    assert_eq!(
        probes.paths().collect::<Vec<_>>(),
        [
            "/app-health/api/livez",
            "/app-health/api/readyz",
            "/app-health/api/startupz"
        ]
    );
    for (path, target) in [
        ("/app-health/api/livez", "http://10.0.0.7:8080/healthz"),
        ("/app-health/api/readyz", "tcp://10.0.0.7:8080"),
        ("/app-health/api/startupz", "grpc://10.0.0.7:9000/shop.Cart"),
    ] {
        assert_eq!(probes.get(path).unwrap().target(), target);
    }
}
