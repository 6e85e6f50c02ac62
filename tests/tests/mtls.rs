//! Mutual TLS between two real proxies with identities from one mesh CA:
//! the hop is TLS on the wire, the app sees plain HTTP, the server side
//! learns the client's identity (metrics, authorization), a server with
//! the wrong identity is refused, and a STRICT inbound side takes mutual
//! TLS only.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use outrigger_api::inbound::{Inbound, Mtls, MtlsMode};
use outrigger_identity::Ca;
use outrigger_proxy::identity::Identity;
use outrigger_proxy::{Options, Proxy};
use outrigger_tests::*;
use tokio::io::AsyncReadExt;

const TD: &str = "cluster.local";
const WEB: &str = "spiffe://cluster.local/ns/shop/sa/web";

/// An identity for `sa` in shop, holding a certificate from `ca`.
fn identity(ca: &Ca, sa: &str) -> Arc<Identity> {
    held_identity(ca, "shop", sa)
}

fn with(identity: Arc<Identity>) -> Options {
    Options {
        identity: Some(identity),
        ..Options::default()
    }
}

/// The client side's snapshot whose one `web` endpoint is `endpoint`,
/// meshed, expected to be `expected`.
fn to_meshed(endpoint: SocketAddr, expected: &str) -> outrigger_api::Snapshot {
    let mut snap = client_snapshot(&[(endpoint, true)]);
    snap.services[0].endpoints[0].identity = Some(expected.into());
    snap
}

/// A client proxy whose one `web` endpoint is `endpoint`, meshed, expected
/// to be `expected`.
async fn client(ca: &Ca, endpoint: SocketAddr, expected: &str) -> Proxy {
    Proxy::start(to_meshed(endpoint, expected), with(identity(ca, "client")))
        .await
        .unwrap()
}

/// [`client`] to [`WEB`] at `endpoint`, with `web` an opaque (TCP) service.
async fn opaque_client(ca: &Ca, endpoint: SocketAddr) -> Proxy {
    let mut snap = to_meshed(endpoint, WEB);
    snap.services[0].protocol = outrigger_api::ServiceProtocol::Opaque;
    Proxy::start(snap, with(identity(ca, "client")))
        .await
        .unwrap()
}

async fn server(
    ca: &Ca,
    app: SocketAddr,
    edit: impl FnOnce(&mut outrigger_api::Snapshot),
) -> Proxy {
    let mut snap = server_snapshot(app);
    edit(&mut snap);
    Proxy::start(snap, with(identity(ca, "web"))).await.unwrap()
}

#[tokio::test]
async fn requests_between_two_proxies_ride_mutual_tls() {
    let ca = Ca::generate(TD, SystemTime::now()).unwrap();
    let app = app("web").await;
    let server = server(&ca, app, |_| {}).await;
    let client = client(&ca, server.listener_addr("inbound").unwrap(), WEB).await;
    let (status, body) = get(client.listener_addr("outbound").unwrap(), "/").await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("web"),
        "the app answered in plain HTTP: {body}"
    );
    let text = scrape(&server).await;
    assert_eq!(
        metric(
            &text,
            "outrigger_requests_total",
            &[
                ("direction", "inbound"),
                ("connection_security_policy", "mutual_tls"),
                (
                    "source_principal",
                    "spiffe://cluster.local/ns/shop/sa/client"
                ),
                ("source_namespace", "shop"),
                // No workload in the configuration has its identity.
                ("source_workload", "unknown"),
            ]
        ),
        1.0,
        "{text}"
    );
    let text = scrape(&client).await;
    assert_eq!(
        metric(
            &text,
            "outrigger_requests_total",
            &[
                ("direction", "outbound"),
                ("connection_security_policy", "mutual_tls"),
                ("destination_principal", WEB),
            ]
        ),
        1.0,
        "{text}"
    );
    // A plaintext client still gets in (PERMISSIVE), with no identity.
    let (status, _) = get(server.listener_addr("inbound").unwrap(), "/").await;
    assert_eq!(status, 200);
    let text = scrape(&server).await;
    assert_eq!(
        metric(
            &text,
            "outrigger_requests_total",
            &[
                ("direction", "inbound"),
                ("connection_security_policy", "none")
            ]
        ),
        1.0,
        "{text}"
    );
}

/// The server's proxy names its caller only as a workload its configuration
/// shows the caller's identity serving: where two share it, the one the
/// calling proxy names (never what the app wrote); where none does, not at
/// all. The header never reaches the app.
#[tokio::test]
async fn the_calling_workload_is_one_its_identity_serves() {
    let ca = Ca::generate(TD, SystemTime::now()).unwrap();
    let app = app("web").await;
    let client_id = "spiffe://cluster.local/ns/shop/sa/client";
    let server = server(&ca, app, |s| {
        let ep = |addr: &str, workload: &str| outrigger_api::Endpoint {
            address: addr.into(),
            labels: Default::default(),
            workload: Some(workload.into()),
            identity: Some(client_id.into()),
            meshed: true,
        };
        let mut svc = s.services[0].clone();
        svc.name = "clients".into();
        svc.endpoints = vec![ep("127.0.0.2:80", "batch"), ep("127.0.0.3:80", "client")];
        s.services.push(svc);
    })
    .await;
    let client = client(&ca, server.listener_addr("inbound").unwrap(), WEB).await;
    // The app names another workload of the same identity, first thing on
    // a fresh connection: the client's proxy replaces it with its own.
    let mut c = http1(client.listener_addr("outbound").unwrap()).await;
    let req = hyper::Request::get("/headers")
        .header("host", "web.shop")
        .header("outrigger-source-workload", "batch")
        .body(empty())
        .unwrap();
    let seen = c.send_request(req).await.unwrap();
    let seen = http_body_util::BodyExt::collect(seen.into_body())
        .await
        .unwrap()
        .to_bytes();
    let seen = String::from_utf8_lossy(&seen);
    assert!(!seen.contains("outrigger-source-workload"), "{seen}");
    let named = |w: &'static str| [("direction", "inbound"), ("source_workload", w)];
    assert!(
        eventually(Duration::from_secs(10), || async {
            metric(
                &scrape(&server).await,
                "outrigger_requests_total",
                &named("client"),
            ) == 1.0
        })
        .await,
        "{}",
        scrape(&server).await
    );
    assert_eq!(
        metric(
            &scrape(&server).await,
            "outrigger_requests_total",
            &named("batch")
        ),
        0.0
    );
}

#[tokio::test]
async fn the_bytes_between_the_proxies_are_tls() {
    let ca = Ca::generate(TD, SystemTime::now()).unwrap();
    // A tap where the server proxy would be: it records what arrives.
    let tap = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tap_addr = tap.local_addr().unwrap();
    let seen = tokio::spawn(async move {
        let (mut s, _) = tap.accept().await.unwrap();
        let mut buf = vec![0u8; 512];
        let n = s.read(&mut buf).await.unwrap();
        buf.truncate(n);
        buf
    });
    let client = client(&ca, tap_addr, WEB).await;
    let out = client.listener_addr("outbound").unwrap();
    let request = tokio::spawn(async move { try_get(out, "/secret-path").await });
    let bytes = seen.await.unwrap();
    assert_eq!(bytes[0], 0x16, "a TLS handshake record");
    assert_eq!(
        &bytes[1..3],
        &[0x03, 0x01],
        "legacy record version of a ClientHello"
    );
    let text = String::from_utf8_lossy(&bytes);
    assert!(
        !text.contains("secret-path") && !text.contains("PRI * HTTP/2"),
        "{text}"
    );
    // The tap never answers the handshake: the request fails, nothing leaks.
    assert!(request
        .await
        .unwrap()
        .map(|(s, _)| s != 200)
        .unwrap_or(true));
}

#[tokio::test]
async fn a_server_proving_another_identity_is_refused() {
    let ca = Ca::generate(TD, SystemTime::now()).unwrap();
    let app = app("web").await;
    let server = server(&ca, app, |_| {}).await;
    // The snapshot says the endpoint is db; the certificate says web.
    let client = client(
        &ca,
        server.listener_addr("inbound").unwrap(),
        "spiffe://cluster.local/ns/shop/sa/db",
    )
    .await;
    let (status, _) = get(client.listener_addr("outbound").unwrap(), "/").await;
    assert!(status == 502 || status == 503, "{status}");
    let text = scrape(&client).await;
    let refused = metric(
        &text,
        "outrigger_requests_total",
        &[("response_flags", "UF")],
    ) + metric(
        &text,
        "outrigger_requests_total",
        &[("response_flags", "URX")],
    );
    assert!(refused >= 1.0, "{text}");
    assert_eq!(
        metric(&scrape(&server).await, "outrigger_requests_total", &[]),
        0.0,
        "nothing reached the app"
    );
}

#[tokio::test]
async fn principal_rules_match_the_mtls_peer() {
    let ca = Ca::generate(TD, SystemTime::now()).unwrap();
    let app = app("web").await;
    let server = server(&ca, app, |s| {
        s.inbound = serde_json::from_value::<Inbound>(serde_json::json!({ "authorization": [{
            "name": "shop/clients",
            "rules": [{ "from": [{ "source": { "principals": ["cluster.local/ns/shop/sa/client"] } }] }]
        }]}))
        .unwrap();
    })
    .await;
    let client = client(&ca, server.listener_addr("inbound").unwrap(), WEB).await;
    assert_eq!(
        get(client.listener_addr("outbound").unwrap(), "/").await.0,
        200
    );
    // Plaintext, straight to the inbound side: no principal, denied.
    assert_eq!(
        get(server.listener_addr("inbound").unwrap(), "/").await.0,
        403
    );
}

#[tokio::test]
async fn opaque_tcp_between_two_proxies_rides_mutual_tls() {
    let ca = Ca::generate(TD, SystemTime::now()).unwrap();
    let app = app("web").await;
    let server = server(&ca, app, |s| s.listeners[0].opaque_ports = vec![app.port()]).await;
    let client = opaque_client(&ca, server.listener_addr("inbound").unwrap()).await;
    // Raw bytes through the client's outbound listener, spliced end to end.
    let answer = raw_get(client.listener_addr("outbound").unwrap()).await;
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    let text = scrape(&client).await;
    assert_eq!(
        metric(
            &text,
            "outrigger_tcp_connections_opened_total",
            &[
                ("direction", "outbound"),
                ("protocol", "opaque"),
                ("connection_security_policy", "mutual_tls"),
            ]
        ),
        1.0,
        "{text}"
    );
    let text = scrape(&server).await;
    assert_eq!(
        metric(
            &text,
            "outrigger_tcp_connections_opened_total",
            &[
                ("direction", "inbound"),
                ("protocol", "opaque"),
                ("connection_security_policy", "mutual_tls"),
                (
                    "source_principal",
                    "spiffe://cluster.local/ns/shop/sa/client"
                ),
            ]
        ),
        1.0,
        "{text}"
    );
}

#[tokio::test]
async fn plaintext_is_accepted_only_where_the_mode_is_permissive() {
    use std::sync::atomic::Ordering;
    let ca = Ca::generate(TD, SystemTime::now()).unwrap();
    let (app, hits) = counted_app("web", |_, _| Answer::Status(200)).await;
    let with_mtls = |mtls: Mtls| {
        let mut s = server_snapshot(app);
        s.inbound.mtls = mtls;
        s
    };
    let server = Proxy::start(with_mtls(Mtls::strict([])), with(identity(&ca, "web")))
        .await
        .unwrap();
    let inbound = server.listener_addr("inbound").unwrap();
    let client = client(&ca, inbound, WEB).await;
    let outbound = client.listener_addr("outbound").unwrap();
    let refused = |text: &str| {
        metric(
            text,
            "outrigger_tcp_plaintext_refused_total",
            &[("direction", "inbound")],
        )
    };

    // STRICT: the meshed client gets through over mutual TLS...
    assert_eq!(get(outbound, "/").await.0, 200);
    // ...and a plaintext client is closed before anything reaches the app.
    assert!(try_get(inbound, "/").await.is_err(), "plaintext served");
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    assert_eq!(refused(&scrape(&server).await), 1.0);

    // A port-level PERMISSIVE exception for the app's port lets it in.
    server
        .apply(with_mtls(Mtls::strict([(
            app.port(),
            MtlsMode::Permissive,
        )])))
        .unwrap();
    assert_eq!(get(inbound, "/").await.0, 200);
    // An exception for another port does not.
    server
        .apply(with_mtls(Mtls::strict([(
            app.port() ^ 1,
            MtlsMode::Permissive,
        )])))
        .unwrap();
    assert!(try_get(inbound, "/").await.is_err(), "plaintext served");
    // PERMISSIVE: both.
    server.apply(with_mtls(Mtls::default())).unwrap();
    assert_eq!(get(inbound, "/").await.0, 200);
    assert_eq!(get(outbound, "/").await.0, 200);
    assert_eq!(hits.load(Ordering::SeqCst), 4);
    assert_eq!(refused(&scrape(&server).await), 2.0);
}

#[tokio::test]
async fn a_strict_port_closes_plaintext_opaque_tcp_and_a_proxy_without_identity() {
    let ca = Ca::generate(TD, SystemTime::now()).unwrap();
    let app = app("web").await;
    let strict_opaque = |s: &mut outrigger_api::Snapshot| {
        s.listeners[0].opaque_ports = vec![app.port()];
        s.inbound.mtls = Mtls::strict([]);
    };
    let server = server(&ca, app, strict_opaque).await;
    let inbound = server.listener_addr("inbound").unwrap();
    // Raw plaintext to an opaque STRICT port: closed, nothing comes back.
    let answer = raw_get(inbound).await;
    assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));
    assert!(
        eventually(Duration::from_secs(5), || async {
            metric(
                &scrape(&server).await,
                "outrigger_tcp_plaintext_refused_total",
                &[],
            ) == 1.0
        })
        .await
    );
    // A proxy with no identity cannot satisfy STRICT: its requests fail
    // (it speaks plaintext to the meshed endpoint).
    let bare = Proxy::start(to_meshed(inbound, WEB), Options::default())
        .await
        .unwrap();
    let (status, _) = get(bare.listener_addr("outbound").unwrap(), "/").await;
    assert!(status >= 500, "{status}");
    // With an identity, the opaque hop is mutual TLS and gets through.
    let meshed = opaque_client(&ca, inbound).await;
    let answer = raw_get(meshed.listener_addr("outbound").unwrap()).await;
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    // Refused: the raw connection, then each connection the bare proxy tried.
    let refused = metric(
        &scrape(&server).await,
        "outrigger_tcp_plaintext_refused_total",
        &[("direction", "inbound")],
    );
    assert!(refused >= 2.0, "{refused}");
}

#[tokio::test]
async fn an_apps_own_tls_passes_through_a_permissive_inbound_side_untouched() {
    let ca = Ca::generate(TD, SystemTime::now()).unwrap();
    let (tls_app, cert) = serve_https(|_req: http::Request<hyper::body::Incoming>| async {
        http::Response::new(full("tls app"))
    })
    .await;
    let server = server(&ca, tls_app, |_| {}).await;
    let inbound = server.listener_addr("inbound").unwrap();
    // A client speaking TLS to the app's port (server name app.example):
    // the proxy hands the bytes to the app, which terminates the TLS.
    let (status, body) = https_get(inbound, &cert, "/").await.unwrap();
    assert_eq!((status, body.as_str()), (200, "tls app"));
    let text = scrape(&server).await;
    assert_eq!(
        metric(
            &text,
            "outrigger_tcp_connections_opened_total",
            &[
                ("direction", "inbound"),
                ("protocol", "opaque"),
                ("connection_security_policy", "none")
            ]
        ),
        1.0,
        "{text}"
    );
    // STRICT: not mutual TLS from a peer proxy, so closed.
    let mut snap = server_snapshot(tls_app);
    snap.inbound.mtls = Mtls::strict([]);
    server.apply(snap).unwrap();
    assert!(https_get(inbound, &cert, "/").await.is_err());
}

#[tokio::test]
async fn an_inbound_side_waiting_for_its_first_config_takes_nothing() {
    // A proxy that restarts while its app runs must not serve the app with
    // the bootstrap's defaults (PERMISSIVE, no policies) before the control
    // plane says what applies: it closes connections until then.
    let (app, hits) = counted_app("web", |_, _| Answer::Status(200)).await;
    let boot = server_snapshot(app);
    let server = Proxy::start(
        boot.clone(),
        Options {
            wait_for_config: true,
            ..Options::default()
        },
    )
    .await
    .unwrap();
    let inbound = server.listener_addr("inbound").unwrap();
    assert!(
        try_get(inbound, "/").await.is_err(),
        "served before any config"
    );
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 0);
    server.apply(boot).unwrap();
    assert_eq!(get(inbound, "/").await.0, 200);
}

#[tokio::test]
async fn an_abandoned_request_is_labelled_with_where_it_went() {
    // A client gives up (a gRPC deadline, `curl --max-time`) while the app
    // is still working: the client proxy counts it `DC`, and the labels
    // still say where it went, over mutual TLS.
    let (app, mut arrived) = stalling_app().await;
    let ca = Ca::generate(TD, SystemTime::now()).unwrap();
    let server = server(&ca, app, |_| {}).await;
    let client = client(&ca, server.listener_addr("inbound").unwrap(), WEB).await;
    let mut raw = tokio::net::TcpStream::connect(client.listener_addr("outbound").unwrap())
        .await
        .unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut raw, b"GET /slow HTTP/1.1\r\nHost: web.shop\r\n\r\n")
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), arrived.recv())
        .await
        .unwrap();
    drop(raw);
    let dc = [
        ("direction", "outbound"),
        ("response_flags", "DC"),
        ("destination_workload", "web-0"),
        ("destination_principal", WEB),
        (
            "source_principal",
            "spiffe://cluster.local/ns/shop/sa/client",
        ),
        ("connection_security_policy", "mutual_tls"),
    ];
    assert!(
        eventually(Duration::from_secs(10), || async {
            metric(&scrape(&client).await, "outrigger_requests_total", &dc) == 1.0
        })
        .await,
        "{}",
        scrape(&client).await
    );
}

#[tokio::test]
async fn no_principal_is_claimed_on_a_hop_without_mutual_tls() {
    // The client proxy has an identity in its config but no certificate:
    // nothing proves it, so its traffic names no principal, either side.
    let mesh = Mesh::start_with(
        app("web").await,
        |s| s.proxy.identity = Some(WEB.into()),
        |c| c.proxy.identity = Some("spiffe://cluster.local/ns/shop/sa/client".into()),
    )
    .await;
    assert_eq!(get(mesh.outbound(), "/").await.0, 200);
    // A client that names a workload itself, in plaintext, straight to the
    // server's proxy: not believed either.
    let mut c = http1(mesh.server.listener_addr("inbound").unwrap()).await;
    let req = hyper::Request::get("/")
        .header("host", "web.shop")
        .header("outrigger-source-workload", "forged")
        .body(empty())
        .unwrap();
    let resp = c.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap();
    let forged = [("direction", "inbound"), ("source_workload", "forged")];
    assert_eq!(
        metric(
            &scrape(&mesh.server).await,
            "outrigger_requests_total",
            &forged
        ),
        0.0
    );
    // Nor a workload: a name sent over plaintext is not believed.
    for (proxy, direction, source) in [
        (&mesh.client, "outbound", "client"),
        (&mesh.server, "inbound", "unknown"),
    ] {
        let expected = if direction == "inbound" { 2.0 } else { 1.0 };
        let labels = [
            ("direction", direction),
            ("source_workload", source),
            ("source_principal", "unknown"),
            ("destination_principal", "unknown"),
            ("connection_security_policy", "none"),
        ];
        assert!(
            eventually(Duration::from_secs(10), || async {
                metric(&scrape(proxy).await, "outrigger_requests_total", &labels) == expected
            })
            .await,
            "{}",
            scrape(proxy).await
        );
    }
}

/// A server-speaks-first app (a MySQL-style greeting), then an echo.
async fn greeting_app() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                let _ = s.write_all(b"* greeting\n").await;
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

async fn read_greeting(addr: SocketAddr) -> Result<[u8; 11], String> {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut got = [0u8; 11];
    match tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut got)).await {
        Ok(Ok(_)) => Ok(got),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no greeting within 5 s".into()),
    }
}

#[tokio::test]
async fn a_server_first_protocol_crosses_the_mesh_when_only_the_client_side_knows() {
    // The Service port is declared opaque (named `mysql`, `tcp-…`): the
    // client proxy splices at once, over mutual TLS with no ALPN, and the
    // server proxy, which knows nothing of the port, takes that as opaque
    // instead of waiting for a first byte the client will never send.
    let ca = Ca::generate(TD, SystemTime::now()).unwrap();
    let app = greeting_app().await;
    let unmarked = server(&ca, app, |_| {}).await;
    let client = opaque_client(&ca, unmarked.listener_addr("inbound").unwrap()).await;
    assert_eq!(
        &read_greeting(client.listener_addr("outbound").unwrap())
            .await
            .unwrap(),
        b"* greeting\n"
    );
    // A plaintext client straight to a port the pod marks opaque (its
    // annotation) is greeted too, after at most the detection timeout.
    let marked = server(&ca, app, |s: &mut outrigger_api::Snapshot| {
        s.listeners[0].opaque_ports = vec![app.port()]
    })
    .await;
    assert_eq!(
        &read_greeting(marked.listener_addr("inbound").unwrap())
            .await
            .unwrap(),
        b"* greeting\n"
    );
}
