//! Open connections are held to the policies in force: a config that
//! would refuse a connection closes it when it is applied (as Envoy drains
//! the connections of a changed filter chain), and a config that would
//! still take it leaves it alone.
//!
//! - plaintext HTTP on a port turned STRICT: closed gracefully, the
//!   request in flight still answered;
//! - a plaintext WebSocket (an upgraded, spliced connection) on a port
//!   turned STRICT: closed;
//! - plaintext opaque TCP on a port turned STRICT: closed;
//! - a meshed opaque connection an AuthorizationPolicy now denies: closed.
//!
//! And the outbound traffic policy follows config changes under load:
//!
//! - an ejected endpoint is back once its outlierDetection is deleted, or
//!   once it leaves and comes back, and the gauge follows;
//! - an endpoint that joins gets its share within moments.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use outrigger_api::inbound::{Inbound, Mtls, MtlsMode};
use outrigger_api::{ServiceProtocol, Snapshot};
use outrigger_identity::Ca;
use outrigger_proxy::{Options, Proxy};
use outrigger_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;

const TD: &str = "cluster.local";
const WEB: &str = "spiffe://cluster.local/ns/shop/sa/web";

fn with_identity(ca: &Ca, sa: &str) -> Options {
    Options {
        identity: Some(held_identity(ca, "shop", sa)),
        ..Options::default()
    }
}

/// The server's snapshot, `edit`ed, as version `version`.
fn server_config(app: SocketAddr, version: &str, edit: impl FnOnce(&mut Snapshot)) -> Snapshot {
    let mut s = server_snapshot(app);
    s.version = version.into();
    edit(&mut s);
    s
}

/// One keep-alive GET / over a held TCP connection, read up to the body.
async fn exchange(s: &mut TcpStream) -> std::io::Result<String> {
    s.write_all(b"GET / HTTP/1.1\r\nhost: web\r\n\r\n").await?;
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&got).contains("hello from web") {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        got.extend_from_slice(&buf[..n]);
    }
    Ok(String::from_utf8_lossy(&got).into_owned())
}

/// Whether the peer closes `s` within `limit` (a read returns end of
/// stream or an error).
async fn closes(s: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(limit, s.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

/// Open connections a later config closed, for `reason`.
fn revoked(text: &str, reason: &str) -> f64 {
    metric(
        text,
        "outrigger_tcp_connections_revoked_total",
        &[("direction", "inbound"), ("reason", reason)],
    )
}

#[tokio::test]
async fn plaintext_http_closes_gracefully_when_its_port_turns_strict() {
    let ca = Ca::generate(TD, SystemTime::now()).unwrap();
    // `/gate` is answered only once the test releases it.
    let arrived = Arc::new(Notify::new());
    let release = Arc::new(Notify::new());
    let app = {
        let (arrived, release) = (arrived.clone(), release.clone());
        serve_http(move |req: http::Request<hyper::body::Incoming>| {
            let (arrived, release) = (arrived.clone(), release.clone());
            async move {
                if req.uri().path() == "/gate" {
                    arrived.notify_one();
                    release.notified().await;
                }
                http::Response::new(full("hello from web"))
            }
        })
        .await
    };
    let server = Proxy::start(server_config(app, "v1", |_| {}), with_identity(&ca, "web"))
        .await
        .unwrap();
    let inbound = server.listener_addr("inbound").unwrap();
    let mut snap = client_snapshot(&[(inbound, true)]);
    snap.services[0].endpoints[0].identity = Some(WEB.into());
    let client = Proxy::start(snap, with_identity(&ca, "client"))
        .await
        .unwrap();
    let outbound = client.listener_addr("outbound").unwrap();

    // Held connections: plaintext straight to the inbound side, and one
    // through the meshed client (mutual TLS between the proxies).
    let mut plain = http1(inbound).await;
    let mut meshed = http1(outbound).await;
    let send = |c: &mut hyper::client::conn::http1::SendRequest<Body>, path: &str| {
        let req = http::Request::get(path)
            .header("host", "web.shop")
            .body(empty())
            .unwrap();
        c.send_request(req)
    };
    assert_eq!(send(&mut plain, "/").await.unwrap().status(), 200);
    assert_eq!(send(&mut meshed, "/").await.unwrap().status(), 200);

    // A change of the inbound policies that still takes plaintext on the
    // app's port leaves the connection open.
    server
        .apply(server_config(app, "v2", |s| {
            s.inbound.mtls = Mtls::strict([(app.port(), MtlsMode::Permissive)])
        }))
        .unwrap();
    assert_eq!(send(&mut plain, "/").await.unwrap().status(), 200);

    // STRICT, applied while a request is in flight on the plaintext
    // connection: that request is still answered, then the connection
    // closes.
    plain.ready().await.unwrap();
    let in_flight = tokio::spawn(send(&mut plain, "/gate"));
    tokio::time::timeout(Duration::from_secs(5), arrived.notified())
        .await
        .expect("the request never reached the app");
    server
        .apply(server_config(app, "v3", |s| {
            s.inbound.mtls = Mtls::strict([])
        }))
        .unwrap();
    release.notify_one();
    let answered = in_flight.await.unwrap().unwrap();
    assert_eq!(answered.status(), 200);
    assert!(
        eventually(Duration::from_secs(5), || {
            let closed = plain.is_closed();
            async move { closed }
        })
        .await,
        "the plaintext connection stayed open under STRICT"
    );
    assert!(try_get(inbound, "/").await.is_err(), "new plaintext served");
    // The meshed connection, and the pooled mTLS hop behind it, stay.
    assert_eq!(send(&mut meshed, "/").await.unwrap().status(), 200);
    let text = scrape(&server).await;
    assert_eq!(revoked(&text, "plaintext_on_strict"), 1.0, "{text}");
    assert_eq!(
        metric(&text, "outrigger_tcp_plaintext_refused_total", &[]),
        1.0,
        "{text}"
    );
}

#[tokio::test]
async fn opaque_connections_close_when_a_new_config_refuses_them() {
    let ca = Ca::generate(TD, SystemTime::now()).unwrap();
    let app = app("web").await;
    let opaque = |s: &mut Snapshot| s.listeners[0].opaque_ports = vec![app.port()];
    let server = Proxy::start(server_config(app, "v1", opaque), with_identity(&ca, "web"))
        .await
        .unwrap();
    let inbound = server.listener_addr("inbound").unwrap();
    let mut snap = client_snapshot(&[(inbound, true)]);
    snap.services[0].endpoints[0].identity = Some(WEB.into());
    snap.services[0].protocol = ServiceProtocol::Opaque;
    let client = Proxy::start(snap, with_identity(&ca, "client"))
        .await
        .unwrap();
    let outbound = client.listener_addr("outbound").unwrap();

    // Held spliced connections: plaintext to the inbound side, and mutual
    // TLS through the client proxy.
    let mut plain = TcpStream::connect(inbound).await.unwrap();
    let mut meshed = TcpStream::connect(outbound).await.unwrap();
    exchange(&mut plain).await.unwrap();
    exchange(&mut meshed).await.unwrap();

    // STRICT closes the plaintext splice, not the meshed one.
    server
        .apply(server_config(app, "v2", |s| {
            opaque(s);
            s.inbound.mtls = Mtls::strict([]);
        }))
        .unwrap();
    assert!(
        closes(&mut plain, Duration::from_secs(5)).await,
        "the plaintext splice stayed open under STRICT"
    );
    exchange(&mut meshed).await.unwrap();
    let text = scrape(&server).await;
    assert_eq!(revoked(&text, "plaintext_on_strict"), 1.0, "{text}");

    // An AuthorizationPolicy that allows only another principal closes
    // the meshed splice too.
    server
        .apply(server_config(app, "v3", |s| {
            opaque(s);
            s.inbound = serde_json::from_value::<Inbound>(serde_json::json!({
                "mtls": { "mode": "STRICT" },
                "authorization": [{
                    "name": "shop/only-admin",
                    "rules": [{ "from": [{ "source": { "principals": ["cluster.local/ns/shop/sa/admin"] } }] }]
                }]
            }))
            .unwrap();
        }))
        .unwrap();
    assert!(
        closes(&mut meshed, Duration::from_secs(5)).await,
        "the denied splice stayed open"
    );
    let text = scrape(&server).await;
    assert_eq!(revoked(&text, "denied"), 1.0, "{text}");
    // A new meshed connection is denied as well, at accept.
    let mut again = TcpStream::connect(outbound).await.unwrap();
    assert!(exchange(&mut again).await.is_err());
    assert!(
        eventually(Duration::from_secs(5), || async {
            metric(&scrape(&server).await, "outrigger_tcp_denied_total", &[]) == 1.0
        })
        .await
    );
}

#[tokio::test]
async fn an_upgraded_plaintext_connection_closes_when_its_port_turns_strict() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let ca = Ca::generate(TD, SystemTime::now()).unwrap();
    // A WebSocket echo app.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                let (tx, rx) = ws.split();
                let _ = rx
                    .filter(|m| std::future::ready(m.as_ref().is_ok_and(|m| m.is_text())))
                    .forward(tx)
                    .await;
            });
        }
    });
    let server = Proxy::start(server_config(app, "v1", |_| {}), with_identity(&ca, "web"))
        .await
        .unwrap();
    let inbound = server.listener_addr("inbound").unwrap();
    let tcp = TcpStream::connect(inbound).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://{inbound}/chat"), tcp)
        .await
        .unwrap();
    ws.send(Message::text("one")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("one"));

    server
        .apply(server_config(app, "v2", |s| {
            s.inbound.mtls = Mtls::strict([])
        }))
        .unwrap();
    // The tunnel is closed: the stream ends (or errors) without an echo.
    let next = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("the WebSocket stayed open under STRICT");
    assert!(!matches!(next, Some(Ok(Message::Text(_)))), "{next:?}");
    let text = scrape(&server).await;
    assert_eq!(revoked(&text, "plaintext_on_strict"), 1.0, "{text}");
}

#[tokio::test]
async fn a_revoked_http2_connection_gets_the_drain_timeout_to_finish_then_closes() {
    let ca = Ca::generate(TD, SystemTime::now()).unwrap();
    // `/hang` is never answered.
    let app = serve_http(|req: http::Request<hyper::body::Incoming>| async move {
        if req.uri().path() == "/hang" {
            std::future::pending::<()>().await;
        }
        http::Response::new(full("hello from web"))
    })
    .await;
    // A short drain timeout (connections take the one in force when they
    // were accepted).
    let short = |s: &mut Snapshot| {
        s.limits.drain_timeout = outrigger_api::Duration(Duration::from_millis(300));
    };
    let server = Proxy::start(server_config(app, "v1", short), with_identity(&ca, "web"))
        .await
        .unwrap();
    let inbound = server.listener_addr("inbound").unwrap();
    // Plaintext HTTP/2 (prior knowledge), with a stream held open.
    let mut h2 = http2(inbound).await;
    let get = |path: &str| {
        http::Request::get(format!("http://web.shop{path}"))
            .body(empty())
            .unwrap()
    };
    assert_eq!(h2.send_request(get("/")).await.unwrap().status(), 200);
    let held = tokio::spawn(h2.send_request(get("/hang")));

    // STRICT: the held stream is given the drain timeout after the
    // GOAWAY, then the connection is closed under it.
    server
        .apply(server_config(app, "v2", |s| {
            short(s);
            s.inbound.mtls = Mtls::strict([]);
        }))
        .unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(5), held)
        .await
        .expect("the held stream outlived the drain timeout");
    assert!(ended.unwrap().is_err(), "the hanging request was answered");
    assert!(
        eventually(Duration::from_secs(5), || {
            let closed = h2.is_closed();
            async move { closed }
        })
        .await
    );
    let text = scrape(&server).await;
    assert_eq!(revoked(&text, "plaintext_on_strict"), 1.0, "{text}");
}

/// The client side's snapshot: `web.shop:80` on `endpoints`, with
/// `service_yaml` (trafficPolicy, http: YAML indented under the service).
fn outbound_config(version: &str, endpoints: &[SocketAddr], service_yaml: &str) -> Snapshot {
    let eps: String = endpoints
        .iter()
        .map(|a| format!("  - {{ address: \"{a}\" }}\n"))
        .collect();
    web_snapshot(version, &format!("endpoints:\n{eps}{service_yaml}"))
}

fn hits(h: &std::sync::atomic::AtomicUsize) -> usize {
    h.load(std::sync::atomic::Ordering::SeqCst)
}

#[tokio::test]
async fn an_ejection_ends_when_its_rule_or_its_endpoint_goes_under_load() {
    use std::sync::atomic::{AtomicBool, Ordering};
    // `flaky` answers 500 while `failing` is set. One 500 ejects it for an
    // hour; retries hide the 500s from the clients.
    let failing = Arc::new(AtomicBool::new(true));
    let cue = failing.clone();
    let (flaky, flaky_hits) = counted_app("flaky", move |_, _| {
        Answer::Status(if cue.load(Ordering::SeqCst) { 500 } else { 200 })
    })
    .await;
    let (steady, _) = counted_app("steady", |_, _| Answer::Status(200)).await;
    const RULE: &str = "trafficPolicy:
  outlierDetection: { consecutive5xxErrors: 1, baseEjectionTime: 1h, maxEjectionPercent: 50 }
";
    const RETRIES: &str = "http:
  - retries: { attempts: 2, retryOn: 5xx }
";
    let both = [flaky, steady];
    let with_rule = format!("{RULE}{RETRIES}");
    let p = Proxy::start(outbound_config("1", &both, &with_rule), Options::default())
        .await
        .unwrap();
    let ejected = || async {
        metric(
            &scrape(&p).await,
            "outrigger_outlier_ejected_endpoints",
            &[("destination_service", "web.shop")],
        )
    };
    let stop = Arc::new(AtomicBool::new(false));
    let clients = keep_requesting(p.listener_addr("outbound").unwrap(), stop.clone());
    let limit = Duration::from_secs(5);

    assert!(eventually(limit, || async { ejected().await == 1.0 }).await);
    failing.store(false, Ordering::SeqCst);
    let at_ejection = hits(&flaky_hits);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(hits(&flaky_hits), at_ejection, "ejected: no traffic");

    // The rule is deleted during the ejection: the endpoint is back.
    p.apply(outbound_config("2", &both, RETRIES)).unwrap();
    assert!(
        eventually(limit, || async { hits(&flaky_hits) > at_ejection + 20 }).await,
        "the ejected endpoint got no traffic after its rule was deleted"
    );
    assert_eq!(ejected().await, 0.0);

    // The rule comes back: the endpoint stays in, and ejects again.
    p.apply(outbound_config("3", &both, &with_rule)).unwrap();
    let now = hits(&flaky_hits);
    assert!(eventually(limit, || async { hits(&flaky_hits) > now + 20 }).await);
    assert_eq!(ejected().await, 0.0);
    failing.store(true, Ordering::SeqCst);
    assert!(eventually(limit, || async { ejected().await == 1.0 }).await);
    failing.store(false, Ordering::SeqCst);

    // The ejected endpoint leaves: it is no longer counted; it comes
    // back healthy.
    p.apply(outbound_config("4", &[steady], &with_rule))
        .unwrap();
    assert_eq!(ejected().await, 0.0);
    p.apply(outbound_config("5", &both, &with_rule)).unwrap();
    let now = hits(&flaky_hits);
    assert!(eventually(limit, || async { hits(&flaky_hits) > now + 20 }).await);
    assert_eq!(ejected().await, 0.0);

    stop.store(true, Ordering::SeqCst);
    let (ok, failed) = tally(clients).await;
    assert_eq!(failed, 0, "{ok} answered");
    let text = scrape(&p).await;
    assert_eq!(
        metric(
            &text,
            "outrigger_requests_total",
            &[("response_flags", "UH")]
        ),
        0.0,
        "{text}"
    );
}

/// A light-load client: one request at a time on one HTTP/1.1 connection
/// until `stop`; (answered 200, failed).
fn one_at_a_time(
    addr: SocketAddr,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<(usize, usize)> {
    tokio::spawn(async move {
        let (mut ok, mut failed) = (0, 0);
        let mut c = http1(addr).await;
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            let req = http::Request::get("/")
                .header("host", "web.shop")
                .body(empty())
                .unwrap();
            match c.send_request(req).await {
                Ok(r) if r.status() == 200 => {
                    http_body_util::BodyExt::collect(r.into_body())
                        .await
                        .unwrap();
                    ok += 1;
                }
                _ => failed += 1,
            }
        }
        (ok, failed)
    })
}

#[tokio::test]
async fn a_joining_endpoint_gets_traffic_at_once_under_light_load() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let (a, a_hits) = counted_app("a", |_, _| Answer::Status(200)).await;
    let (b, b_hits) = counted_app("b", |_, _| Answer::Status(200)).await;
    let (c, c_hits) = counted_app("c", |_, _| Answer::Status(200)).await;
    let (d, d_hits) = counted_app("d", |_, _| Answer::Status(200)).await;
    let p = Proxy::start(outbound_config("1", &[a, b], ""), Options::default())
        .await
        .unwrap();
    let addr = p.listener_addr("outbound").unwrap();
    // Requests one at a time: the light load under which a pessimistic
    // start starves a new endpoint.
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = vec![one_at_a_time(addr, stop.clone())];
    // Both measured before `c` joins. Not "both fast": on a loaded machine
    // one first answer can be slow, and peak-EWMA then rightly leaves that
    // endpoint alone until its estimate decays (seconds), so the old pair's
    // shares are not asserted, only that each was probed.
    assert!(
        eventually(Duration::from_secs(5), || async {
            hits(&a_hits) > 0 && hits(&b_hits) > 0 && hits(&a_hits) + hits(&b_hits) > 100
        })
        .await
    );

    // Scaled up: `c` gets traffic within a second. Its share is not
    // asserted: one request at a time, nothing is ever in flight when an
    // endpoint is chosen, so two choices over peak-EWMA send nearly all of
    // it to whichever endpoint's estimate is lowest (as Linkerd's and
    // Finagle's balancers do); equal endpoints split it by chance.
    p.apply(outbound_config("2", &[a, b, c], "")).unwrap();
    let joined = tokio::time::Instant::now();
    assert!(
        eventually(Duration::from_secs(1), || async { hits(&c_hits) > 0 }).await,
        "the new endpoint got nothing"
    );
    let first = joined.elapsed();

    // Under more load, `d` joins as `a` leaves: `d` gets traffic at once,
    // `a` none once the requests in flight are done, nothing fails. (How
    // much `d` gets is not asserted either: peak-EWMA rightly avoids an
    // endpoint for seconds after one slow answer, and on a loaded test
    // machine a scheduling stall makes one.)
    clients.extend(keep_requesting(addr, stop.clone()));
    tokio::time::sleep(Duration::from_millis(200)).await;
    p.apply(outbound_config("3", &[b, c, d], "")).unwrap();
    let after = hits(&a_hits);
    assert!(
        eventually(Duration::from_secs(1), || async { hits(&d_hits) > 0 }).await,
        "the new endpoint got nothing under load"
    );
    assert!(
        hits(&a_hits) <= after + 5,
        "the departed endpoint kept getting traffic"
    );
    stop.store(true, Ordering::SeqCst);
    let (ok, failed) = tally(clients).await;
    assert_eq!(failed, 0, "{ok} answered");
    eprintln!("the new endpoint's first request came {first:?} after it joined");
}
