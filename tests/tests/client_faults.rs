//! A client's fault is the client's: a client that sends a malformed
//! request body gets 400 `DPE`, one that goes away mid-upload is recorded
//! as `DC`, and neither is held against the endpoint the body was
//! streaming to (no outlier outcome, no `UC`), with outlier detection set
//! to eject on the first error. Raw TCP clients through a real client
//! proxy to real upstreams, directly and through a server proxy (the hop
//! between the proxies is HTTP/2).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use outrigger_proxy::{Options, Proxy};
use outrigger_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A client proxy for `web.shop:80` on `endpoints` (address, meshed),
/// ejecting an endpoint for an hour on its first 5xx or gateway error.
async fn client_proxy(endpoints: &[(SocketAddr, bool)]) -> Proxy {
    let mut snapshot = client_snapshot(endpoints);
    snapshot.services[0].traffic_policy = Some(
        serde_json::from_value(serde_json::json!({
            "outlierDetection": {
                "consecutive5xxErrors": 1, "consecutiveGatewayErrors": 1,
                "baseEjectionTime": "1h", "maxEjectionPercent": 100
            }
        }))
        .unwrap(),
    );
    snapshot.validate().unwrap();
    Proxy::start(snapshot, Options::default()).await.unwrap()
}

/// Sends a request head and the start of its body, then waits until an
/// upstream has the request (`arrived` counts request heads upstream), so
/// the body is streaming to the endpoint when the client fails it.
async fn start_upload(to: SocketAddr, head: &str, arrived: &AtomicUsize) -> TcpStream {
    let before = arrived.load(Ordering::SeqCst);
    let mut s = TcpStream::connect(to).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    assert!(
        eventually(Duration::from_secs(5), || async {
            arrived.load(Ordering::SeqCst) > before
        })
        .await,
        "the upload never reached an upstream"
    );
    s
}

const CHUNKED: &str =
    "POST /upload HTTP/1.1\r\nhost: web.shop\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n";
const SIZED: &str =
    "POST /upload HTTP/1.1\r\nhost: web.shop\r\ncontent-length: 100000\r\n\r\n0123456789";

/// A bad chunk size after a good chunk; what the proxy answers.
async fn bad_chunk(to: SocketAddr, arrived: &AtomicUsize) -> String {
    let mut s = start_upload(to, CHUNKED, arrived).await;
    s.write_all(b"zz\r\nnot a chunk\r\n").await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Ten bytes of a 100000-byte upload, then the client goes away.
async fn abort(to: SocketAddr, arrived: &AtomicUsize) {
    drop(start_upload(to, SIZED, arrived).await);
}

/// An upstream that reads the whole body before answering (as an upload
/// endpoint does), counting request heads in `arrived`.
async fn upload_app(name: &'static str, arrived: Arc<AtomicUsize>) -> SocketAddr {
    serve_http(move |req: http::Request<hyper::body::Incoming>| {
        arrived.fetch_add(1, Ordering::SeqCst);
        async move {
            let _ = http_body_util::BodyExt::collect(req.into_body()).await;
            http::Response::new(full(format!("hello from {name}")))
        }
    })
    .await
}

/// Every request the proxy recorded, by response flag and code.
fn recorded(text: &str, flag: &str, code: &str) -> f64 {
    metric(
        text,
        "outrigger_requests_total",
        &[("response_flags", flag), ("response_code", code)],
    )
}

/// Nothing was ejected or put down to the upstream.
fn assert_no_upstream_blamed(text: &str) {
    assert_eq!(
        metric(
            text,
            "outrigger_requests_total",
            &[("response_flags", "UC")]
        ),
        0.0,
        "{text}"
    );
    assert_eq!(
        metric(text, "outrigger_outlier_ejections_total", &[]),
        0.0,
        "{text}"
    );
    assert_eq!(
        metric(text, "outrigger_outlier_ejected_endpoints", &[]),
        0.0,
        "{text}"
    );
}

/// Ten aborted uploads, then ten bad chunks through `proxy`; then `GET`s
/// reach every app in `apps`.
async fn client_faults_are_the_clients(proxy: &Proxy, arrived: &AtomicUsize, apps: &[&str]) {
    let to = proxy.listener_addr("outbound").unwrap();
    for _ in 0..10 {
        abort(to, arrived).await;
    }
    assert!(
        eventually(Duration::from_secs(5), || async {
            let text = scrape(proxy).await;
            metric(
                &text,
                "outrigger_requests_total",
                &[("response_flags", "DC")],
            ) == 10.0
        })
        .await,
        "{}",
        scrape(proxy).await
    );
    assert_no_upstream_blamed(&scrape(proxy).await);

    for i in 0..10 {
        let answer = bad_chunk(to, arrived).await;
        assert!(
            answer.starts_with("HTTP/1.1 400 "),
            "bad chunk {i}: {answer}"
        );
        assert!(
            answer.contains("outrigger-response-flags: DPE"),
            "bad chunk {i}: {answer}"
        );
        assert!(answer.contains("malformed request body"), "{answer}");
    }
    let text = scrape(proxy).await;
    assert_eq!(recorded(&text, "DPE", "400"), 10.0, "{text}");
    assert_no_upstream_blamed(&text);

    // Every endpoint still serves.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..40 {
        let (status, body) = get(to, "/").await;
        assert_eq!(status, 200, "{body}");
        seen.insert(body);
    }
    let expected: std::collections::BTreeSet<String> =
        apps.iter().map(|a| format!("hello from {a}")).collect();
    assert_eq!(seen, expected);
}

#[tokio::test]
async fn a_clients_broken_upload_is_not_held_against_the_endpoints() {
    let arrived = Arc::new(AtomicUsize::new(0));
    let a = upload_app("a", arrived.clone()).await;
    let b = upload_app("b", arrived.clone()).await;
    let proxy = client_proxy(&[(a, false), (b, false)]).await;
    client_faults_are_the_clients(&proxy, &arrived, &["a", "b"]).await;
}

#[tokio::test]
async fn a_clients_broken_upload_is_not_held_against_a_meshed_endpoint() {
    // Client proxy → HTTP/2 → server proxy → app: the body's failure
    // reaches the upstream hop as a reset stream.
    let arrived = Arc::new(AtomicUsize::new(0));
    let app = upload_app("web", arrived.clone()).await;
    let server = Proxy::start(server_snapshot(app), Options::default())
        .await
        .unwrap();
    let inbound = server.listener_addr("inbound").unwrap();
    let client = client_proxy(&[(inbound, true)]).await;
    client_faults_are_the_clients(&client, &arrived, &["web"]).await;
    // The server side saw a client (the client proxy) go away, not an
    // app failure.
    let text = scrape(&server).await;
    assert_eq!(
        metric(
            &text,
            "outrigger_requests_total",
            &[("response_flags", "UC")]
        ),
        0.0,
        "{text}"
    );
}
