//! Certificates turning over under load between two real proxies that both
//! follow a real control plane (the mesh CA) and speak mutual TLS to each
//! other, with the server side STRICT so that nothing could fall back to
//! plaintext: renewals every two seconds, then a trust-anchor rotation in
//! three steps (new root trusted, new root signing, old root dropped), each
//! a control-plane restart. No request may fail. Requests ride a pooled
//! HTTP/2 hop and, to make a fresh handshake every time, an opaque TCP hop
//! (one mesh TLS connection per client connection).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use outrigger_api::Snapshot;
use outrigger_control_plane::certify::{CaReloader, CaSource};
use outrigger_control_plane::metrics::ResultLabel;
use outrigger_identity::Ca;
use outrigger_identity::TrustBundle;
use outrigger_proxy::Proxy;
use outrigger_tests::control_plane::{
    certified_follower, certifier, follow, waiting_proxy, ControlPlane, Dir, MountedSecret,
};
use outrigger_tests::identity::workload_identity;
use outrigger_tests::*;

const TD: &str = "cluster.local";
/// Certificates live three seconds: renewed about every 2.1 s.
const LIFETIME: Duration = Duration::from_secs(3);

fn mesh(inbound: SocketAddr) -> String {
    let port = inbound.port();
    format!(
        r#"
apiVersion: v1
kind: Service
metadata: {{ name: web, namespace: shop }}
spec: {{ clusterIP: 10.96.0.10, ports: [{{ name: http, port: 80 }}] }}
---
apiVersion: v1
kind: Service
metadata: {{ name: web-tcp, namespace: shop }}
spec: {{ clusterIP: 10.96.0.11, ports: [{{ name: tcp, port: 81 }}] }}
---
apiVersion: v1
kind: Endpoints
metadata: {{ name: web, namespace: shop }}
subsets:
  - addresses: [{{ ip: 127.0.0.1, targetRef: {{ kind: Pod, name: web-1 }} }}]
    ports: [{{ name: http, port: {port} }}]
---
apiVersion: v1
kind: Endpoints
metadata: {{ name: web-tcp, namespace: shop }}
subsets:
  - addresses: [{{ ip: 127.0.0.1, targetRef: {{ kind: Pod, name: web-1 }} }}]
    ports: [{{ name: tcp, port: {port} }}]
---
apiVersion: v1
kind: Pod
metadata: {{ name: web-1, namespace: shop, labels: {{ app: web }} }}
spec: {{ serviceAccountName: web, containers: [{{ name: web }}, {{ name: outrigger-proxy }}] }}
---
apiVersion: v1
kind: Pod
metadata: {{ name: client-1, namespace: shop, labels: {{ app: client }} }}
spec: {{ serviceAccountName: client, containers: [{{ name: client }}, {{ name: outrigger-proxy }}] }}
---
apiVersion: outrigger.dev/v1alpha1
kind: PeerAuthentication
metadata: {{ name: default, namespace: shop }}
spec: {{ mtls: {{ mode: STRICT }} }}
"#
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
  - { name: http, direction: outbound, bind: "127.0.0.1:0", target: { name: web, namespace: shop, port: 80 } }
  - { name: tcp, direction: outbound, bind: "127.0.0.1:0", target: { name: web-tcp, namespace: shop, port: 81 } }
services:
  - { name: web, namespace: shop, ports: [80] }
  - { name: web-tcp, namespace: shop, ports: [81], protocol: opaque }
"#,
    )
    .unwrap()
}

fn server_bootstrap(app: SocketAddr) -> Snapshot {
    let mut s = server_snapshot(app);
    s.version = "bootstrap".into();
    s
}

async fn renewals(p: &Proxy) -> f64 {
    metric(
        &scrape(p).await,
        "outrigger_identity_renewals_total",
        &[("result", "ok")],
    )
}

/// Fresh connections through the opaque hop, one request each, until
/// `stop`: (answered 200, failed).
fn keep_connecting(
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
) -> tokio::task::JoinHandle<(usize, usize)> {
    tokio::spawn(async move {
        let mut failed = 0;
        while !stop.load(Ordering::SeqCst) {
            match try_get(addr, "/").await {
                Ok((200, _)) => {
                    ok.fetch_add(1, Ordering::SeqCst);
                }
                _ => failed += 1,
            }
        }
        (ok.load(Ordering::SeqCst), failed)
    })
}

/// Requests through the client's proxy on pooled connections, and fresh
/// connections (a handshake each) through its opaque hop, until finished.
struct Load {
    stop: Arc<AtomicBool>,
    requesters: Vec<tokio::task::JoinHandle<(usize, usize)>>,
    fresh: Arc<AtomicUsize>,
    connector: tokio::task::JoinHandle<(usize, usize)>,
}

impl Load {
    fn start(client: &Proxy) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let fresh = Arc::new(AtomicUsize::new(0));
        Load {
            requesters: keep_requesting(client.listener_addr("http").unwrap(), stop.clone()),
            connector: keep_connecting(
                client.listener_addr("tcp").unwrap(),
                stop.clone(),
                fresh.clone(),
            ),
            stop,
            fresh,
        }
    }

    /// Waits until more fresh connections got through than when called.
    async fn fresh_connections_get_through(&self, step: &str) {
        let now = self.fresh.load(Ordering::SeqCst);
        assert!(
            eventually(Duration::from_secs(5), || async {
                self.fresh.load(Ordering::SeqCst) > now + 5
            })
            .await,
            "{step}: no fresh connection got through"
        );
    }

    /// Stops, and asserts that no request failed, pooled or fresh, and
    /// that enough of each went through: (pooled, fresh) answered.
    async fn finish_with_no_failure(self) -> (usize, usize) {
        self.stop.store(true, Ordering::SeqCst);
        let (ok, failed) = tally(self.requesters).await;
        let (fresh_ok, fresh_failed) = self.connector.await.unwrap();
        assert_eq!(failed, 0, "pooled: {failed} failed of {}", ok + failed);
        assert_eq!(
            fresh_failed,
            0,
            "fresh connections: {fresh_failed} failed of {}",
            fresh_ok + fresh_failed
        );
        assert!(ok > 100 && fresh_ok > 20, "{ok} pooled, {fresh_ok} fresh");
        (ok, fresh_ok)
    }
}

fn pem_of(ca: &Ca) -> (String, String) {
    let (c, k) = ca.generated_pem().unwrap();
    (c.to_string(), k.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewals_and_a_root_rotation_under_load_fail_no_request() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("outrigger_proxy=info,outrigger_control_plane=warn")
        .with_test_writer()
        .try_init();
    let app = app("web").await;
    let tokens = Dir::new("rotation-tokens");
    std::fs::create_dir_all(tokens.path().join("shop")).unwrap();
    std::fs::write(tokens.path().join("shop/web"), "token-web").unwrap();
    std::fs::write(tokens.path().join("shop/client"), "token-client").unwrap();
    let old = Ca::generate(TD, SystemTime::now()).unwrap();
    let new = Ca::generate(TD, SystemTime::now()).unwrap();
    let (old_cert, old_key) = pem_of(&old);
    let (new_cert, new_key) = pem_of(&new);
    let both_roots = format!("{old_cert}{new_cert}");
    // Both proxies call from 127.0.0.1, which the per-address rate limit
    // would treat as one pod renewing twice as often as it may: the
    // harness's certifier raises it.
    let mesh_ca = |ca: Ca| Some(certifier(Arc::new(ca), LIFETIME, tokens.path()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let cp_addr = listener.local_addr().unwrap();
    let server = certified_follower(
        server_bootstrap(app),
        "web-1",
        "web",
        cp_addr,
        &old,
        &tokens,
    )
    .await;
    let dir = Dir::new("rotation");
    dir.write("mesh.yaml", &mesh(server.listener_addr("inbound").unwrap()));
    let mut cp = ControlPlane::start_with(
        dir.path(),
        listener,
        mesh_ca(Ca::from_pem(&old_cert, &old_key, None).unwrap()),
    )
    .await;
    let client = certified_follower(
        client_bootstrap(),
        "client-1",
        "client",
        cp_addr,
        &old,
        &tokens,
    )
    .await;
    for p in [&server, &client] {
        assert!(
            eventually(Duration::from_secs(15), || ready(p)).await,
            "never ready"
        );
    }

    // The server side is STRICT: nothing could fall back to plaintext.
    let config = get(server.admin_addr, "/config").await.1;
    assert!(config.contains("\"STRICT\""), "{config}");
    let load = Load::start(&client);

    // Renewals under load: two each.
    for p in [&server, &client] {
        let before = renewals(p).await;
        assert!(
            eventually(Duration::from_secs(15), || async {
                renewals(p).await >= before + 2.0
            })
            .await,
            "no renewals"
        );
    }

    // The rotation: each step a control-plane restart on the same address,
    // then a renewal by both proxies from the new control plane.
    let steps = [
        (
            "the new root trusted beside the old",
            &old_cert,
            &old_key,
            Some(both_roots.as_str()),
        ),
        (
            "the new root signing, both trusted",
            &new_cert,
            &new_key,
            Some(both_roots.as_str()),
        ),
        ("the old root dropped", &new_cert, &new_key, None),
    ];
    for (step, cert, key, roots) in steps {
        cp.stop().await;
        let before = [renewals(&server).await, renewals(&client).await];
        let listener = tokio::net::TcpListener::bind(cp_addr).await.unwrap();
        cp = ControlPlane::start_with(
            dir.path(),
            listener,
            mesh_ca(Ca::from_pem(cert, key, roots).unwrap()),
        )
        .await;
        for (p, b) in [&server, &client].into_iter().zip(before) {
            assert!(
                eventually(Duration::from_secs(15), || async { renewals(p).await > b }).await,
                "{step}: no renewal"
            );
        }
        // Fresh handshakes happen after both renewed.
        load.fresh_connections_get_through(step).await;
    }

    let (_, fresh_ok) = load.finish_with_no_failure().await;
    // Every hop was mutual TLS: the STRICT side refused nothing and saw the
    // client's identity.
    let text = scrape(&server).await;
    assert_eq!(
        metric(&text, "outrigger_tcp_plaintext_refused_total", &[]),
        0.0
    );
    assert!(
        metric(
            &text,
            "outrigger_tcp_connections_opened_total",
            &[
                ("connection_security_policy", "mutual_tls"),
                (
                    "source_principal",
                    "spiffe://cluster.local/ns/shop/sa/client"
                )
            ]
        ) >= fresh_ok as f64,
        "{text}"
    );
    cp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_rotation_by_three_secret_updates_under_load_fails_no_request() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("outrigger_proxy=info,outrigger_control_plane=info")
        .with_test_writer()
        .try_init();
    let app = app("web").await;
    let tokens = Dir::new("secret-rotation-tokens");
    std::fs::create_dir_all(tokens.path().join("shop")).unwrap();
    std::fs::write(tokens.path().join("shop/web"), "token-web").unwrap();
    std::fs::write(tokens.path().join("shop/client"), "token-client").unwrap();
    let old = Ca::generate(TD, SystemTime::now()).unwrap();
    let new = Ca::generate(TD, SystemTime::now()).unwrap();
    let (old_cert, old_key) = pem_of(&old);
    let (new_cert, new_key) = pem_of(&new);
    let both_roots = format!("{old_cert}{new_cert}");
    let mut secret = MountedSecret::new(&[
        ("tls.crt", &old_cert),
        ("tls.key", &old_key),
        ("ca.crt", &old_cert),
    ]);
    let source = CaSource::Secret(secret.path().to_path_buf());
    let seen = source.fingerprint();
    let mesh_ca = certifier(Arc::new(source.load(TD).unwrap()), LIFETIME, tokens.path());

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let cp_addr = listener.local_addr().unwrap();
    let dir = Dir::new("secret-rotation");
    // The server proxy first, to know its inbound address for the mesh.
    let server_id = workload_identity("shop", "web", tokens.path().join("shop/web"), old.roots());
    let server = waiting_proxy(server_bootstrap(app), Some(server_id.clone())).await;
    dir.write("mesh.yaml", &mesh(server.listener_addr("inbound").unwrap()));
    let cp = ControlPlane::start_with(dir.path(), listener, Some(mesh_ca.clone())).await;
    // As the binary runs it, counting into the control plane's metrics.
    let reloads = cp.metrics.ca_reloads.clone();
    let (stop_reloads, reload_stop) = outrigger_runtime::drain::channel();
    tokio::spawn(CaReloader::new(source, TD, mesh_ca, seen).run(
        Duration::from_millis(100),
        reloads.clone(),
        reload_stop,
    ));
    follow(
        &server,
        cp_addr,
        server_bootstrap(app),
        "shop",
        "web-1",
        Some(server_id.clone()),
    );
    let client_id = workload_identity(
        "shop",
        "client",
        tokens.path().join("shop/client"),
        old.roots(),
    );
    let client = waiting_proxy(client_bootstrap(), Some(client_id.clone())).await;
    follow(
        &client,
        cp_addr,
        client_bootstrap(),
        "shop",
        "client-1",
        Some(client_id.clone()),
    );
    for p in [&server, &client] {
        assert!(
            eventually(Duration::from_secs(15), || ready(p)).await,
            "never ready"
        );
    }

    let load = Load::start(&client);

    let applied = || {
        reloads
            .get_or_create(&ResultLabel { result: "applied" })
            .get()
    };
    let steps = [
        (
            "the new root trusted beside the old",
            &old_cert,
            &old_key,
            &both_roots,
        ),
        (
            "the new root signing, both trusted",
            &new_cert,
            &new_key,
            &both_roots,
        ),
        ("the old root dropped", &new_cert, &new_key, &new_cert),
    ];
    for (n, (step, cert, key, roots)) in steps.into_iter().enumerate() {
        secret.update(&[("tls.crt", cert), ("tls.key", key), ("ca.crt", roots)]);
        assert!(
            eventually(Duration::from_secs(5), || async {
                applied() == n as u64 + 1
            })
            .await,
            "{step}: the control plane did not reload the Secret"
        );
        // Two renewals: the second was asked for after the reload.
        let before = [renewals(&server).await, renewals(&client).await];
        for (p, b) in [&server, &client].into_iter().zip(before) {
            assert!(
                eventually(Duration::from_secs(15), || async {
                    renewals(p).await >= b + 2.0
                })
                .await,
                "{step}: no renewal"
            );
        }
        load.fresh_connections_get_through(step).await;
    }

    load.finish_with_no_failure().await;
    assert_eq!(
        reloads
            .get_or_create(&ResultLabel { result: "refused" })
            .get(),
        0
    );
    // Every proxy holds a certificate from the new issuer and trusts only
    // the new root.
    let only_new = TrustBundle::new(TD, new.roots()).unwrap().root_keys();
    for (name, id) in [("web", &server_id), ("client", &client_id)] {
        let cert = id.cert.get().expect("a certificate");
        assert_eq!(
            cert.cert[1],
            new.roots()[0],
            "{name}: not issued by the new CA"
        );
        assert_eq!(
            id.trust().root_keys(),
            only_new,
            "{name}: trusts more than the new root"
        );
    }
    stop_reloads.stop();
    cp.stop().await;
}
