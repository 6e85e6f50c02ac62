//! Opaque TCP through two real proxies: detection, silent clients (held
//! by the proxy alone), ports marked opaque, and byte accounting.

use std::net::SocketAddr;
use std::time::Duration;

use outrigger_api::{Duration as ApiDuration, ServiceProtocol};
use outrigger_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const LIMIT: Duration = Duration::from_secs(10);

/// A raw TCP echo server; with `banner`, it speaks first.
async fn echo_server(banner: Option<&'static [u8]>) -> SocketAddr {
    serve_tcp(move |mut s| async move {
        if let Some(b) = banner {
            s.write_all(b).await.unwrap();
        }
        let (mut r, mut w) = s.split();
        let _ = tokio::io::copy(&mut r, &mut w).await;
    })
    .await
}

#[tokio::test]
async fn client_first_binary_protocols_are_echoed_byte_for_byte() {
    let mesh = Mesh::start(echo_server(None).await).await;
    let mut s = TcpStream::connect(mesh.outbound()).await.unwrap();
    // Not HTTP: detection decides "opaque" on the first byte, no waiting.
    let payload: Vec<u8> = (0..1024 * 1024).map(|i| (i * 7 % 256) as u8).collect();
    let mut first = vec![0x00, 0xff, 0x10];
    first.extend_from_slice(&payload);
    let (mut r, mut w) = s.split();
    let write = async {
        w.write_all(&first).await.unwrap();
        w.shutdown().await.unwrap();
    };
    let mut back = Vec::new();
    let read = r.read_to_end(&mut back);
    let (_, n) = tokio::time::timeout(LIMIT, async { tokio::join!(write, read) })
        .await
        .unwrap();
    n.unwrap();
    assert_eq!(back.len(), first.len());
    assert!(back == first, "echo differs");
    drop(s);

    // Exact byte accounting on both proxies, labelled opaque.
    let want = first.len() as f64;
    let labels = [("protocol", "opaque")];
    assert!(
        eventually(LIMIT, || async {
            let c = scrape(&mesh.client).await;
            metric(&c, "outrigger_tcp_connections_closed_total", &labels) == 1.0
        })
        .await
    );
    let c = scrape(&mesh.client).await;
    assert_eq!(
        metric(&c, "outrigger_tcp_received_bytes_total", &labels),
        want,
        "{c}"
    );
    assert_eq!(metric(&c, "outrigger_tcp_sent_bytes_total", &labels), want);
    assert_eq!(
        metric(
            &c,
            "outrigger_tcp_connections_opened_total",
            &[
                ("protocol", "opaque"),
                ("destination_service", "web.shop"),
                ("destination_workload", "web-0")
            ]
        ),
        1.0
    );
    let s = scrape(&mesh.server).await;
    assert_eq!(
        metric(
            &s,
            "outrigger_tcp_received_bytes_total",
            &[("protocol", "opaque"), ("direction", "inbound")]
        ),
        want,
        "{s}"
    );
}

/// A raw TCP echo server with a banner that counts the connections it
/// accepted.
async fn counting_banner_server(
    banner: &'static [u8],
) -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = accepted.clone();
    let addr = serve_tcp(move |mut s| {
        counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        async move {
            let _ = s.write_all(banner).await;
            let (mut r, mut w) = s.split();
            let _ = tokio::io::copy(&mut r, &mut w).await;
        }
    })
    .await;
    (addr, accepted)
}

#[tokio::test]
async fn a_silent_client_gets_no_upstream_connection_on_a_port_not_marked_opaque() {
    // A client that says nothing is held by the proxy alone, never spliced
    // to the app (10,000 of them once held 20,000 descriptors in the
    // server proxy and 10,000 at the app), and closed after the TCP idle
    // timeout (1 s here, 1 h by default). Server-speaks-first protocols
    // need their port marked opaque (the next test).
    let (app, accepted) = counting_banner_server(b"220 smtp.example ESMTP ready\r\n").await;
    let idle =
        |s: &mut outrigger_api::Snapshot| s.limits.tcp_idle_timeout = ApiDuration::from_secs(1);
    let mesh = Mesh::start_with(app, idle, idle).await;
    let mut silent = Vec::new();
    for addr in [mesh.outbound(), mesh.inbound()] {
        for _ in 0..5 {
            silent.push(TcpStream::connect(addr).await.unwrap());
        }
    }
    for mut s in silent {
        let mut got = Vec::new();
        tokio::time::timeout(LIMIT, s.read_to_end(&mut got))
            .await
            .expect("closed after the idle timeout")
            .unwrap();
        assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
    }
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 0);

    // A client that speaks does get through, its bytes spliced.
    let mut s = TcpStream::connect(mesh.outbound()).await.unwrap();
    s.write_all(b"\x00\x01binary").await.unwrap();
    let mut back = [0u8; 38];
    tokio::time::timeout(LIMIT, s.read_exact(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&back, b"220 smtp.example ESMTP ready\r\n\x00\x01binary");
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test]
async fn ports_marked_opaque_skip_detection() {
    // A detection deadline far beyond the test's bound: the banner can only
    // arrive in time if neither proxy waits for the client to speak.
    let app = echo_server(Some(b"* MYSQL greeting\n")).await;
    let mesh = Mesh::start_with(
        app,
        |s| {
            s.limits.detect_timeout = ApiDuration::from_secs(600);
            s.listeners[0].opaque_ports = vec![app.port()];
        },
        |c| {
            c.limits.detect_timeout = ApiDuration::from_secs(600);
            c.services[0].protocol = ServiceProtocol::Opaque;
        },
    )
    .await;
    let mut s = TcpStream::connect(mesh.outbound()).await.unwrap();
    let mut banner = [0u8; 17];
    tokio::time::timeout(LIMIT, s.read_exact(&mut banner))
        .await
        .expect("no detection wait")
        .unwrap();
    assert_eq!(&banner, b"* MYSQL greeting\n");
    // Even bytes that look like HTTP stay opaque on an opaque port.
    s.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let mut back = [0u8; 18];
    tokio::time::timeout(LIMIT, s.read_exact(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&back, b"GET / HTTP/1.1\r\n\r\n");
    let c = scrape(&mesh.client).await;
    assert_eq!(
        metric(
            &c,
            "outrigger_tcp_connections_opened_total",
            &[("protocol", "opaque")]
        ),
        1.0,
        "{c}"
    );
    // Scrapes go to the admin port: the data listeners saw no HTTP at all.
    assert_eq!(
        metric(
            &c,
            "outrigger_tcp_connections_opened_total",
            &[("protocol", "http1")]
        ),
        0.0,
        "{c}"
    );
}

#[tokio::test]
async fn a_destination_rules_tcp_idle_timeout_closes_an_idle_opaque_connection() {
    // The proxy's own TCP idle timeout is an hour; the service's
    // `connectionPool.tcp.idleTimeout` (1 s) closes the idle splice.
    let mesh = Mesh::start_with(
        echo_server(None).await,
        |_| {},
        |c| {
            c.services[0].protocol = ServiceProtocol::Opaque;
            c.services[0].traffic_policy = Some(
                serde_json::from_value(serde_json::json!({
                    "connectionPool": { "tcp": { "idleTimeout": "1s" } }
                }))
                .unwrap(),
            );
            c.validate().unwrap();
        },
    )
    .await;
    let mut s = TcpStream::connect(mesh.outbound()).await.unwrap();
    s.write_all(b"\x00ping").await.unwrap();
    let mut back = [0u8; 5];
    tokio::time::timeout(LIMIT, s.read_exact(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&back, b"\x00ping");
    let quiet = tokio::time::Instant::now();
    let mut rest = Vec::new();
    tokio::time::timeout(LIMIT, s.read_to_end(&mut rest))
        .await
        .expect("closed by the service's idle timeout, not the proxy's hour")
        .unwrap();
    assert!(rest.is_empty());
    assert!(quiet.elapsed() >= Duration::from_millis(900));
}
