//! HTTP/1.1 and HTTP/2 through two real proxies to a real upstream.

use std::time::Duration;

use bytes::Bytes;
use futures_util::stream;
use http::Request;
use http_body_util::{BodyExt, StreamBody};
use outrigger_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const LIMIT: Duration = Duration::from_secs(10);

/// A GET for `path` addressed to the test service.
fn get_req(path: impl AsRef<str>) -> Request<Body> {
    Request::get(path.as_ref())
        .header("host", "web.shop")
        .body(empty())
        .unwrap()
}

async fn send1(
    c: &mut hyper::client::conn::http1::SendRequest<Body>,
    req: Request<Body>,
) -> (u16, http::HeaderMap, Bytes) {
    c.ready().await.unwrap();
    let resp = tokio::time::timeout(LIMIT, c.send_request(req))
        .await
        .unwrap()
        .unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, headers, body)
}

#[tokio::test]
async fn keep_alive_requests_share_one_client_connection_and_one_mesh_connection() {
    let mesh = Mesh::start(app("web").await).await;
    let mut c = http1(mesh.outbound()).await;
    for i in 0..5 {
        let (status, _, body) = send1(
            &mut c,
            Request::get(format!("/n/{i}"))
                .header("host", "web.shop")
                .body(empty())
                .unwrap(),
        )
        .await;
        assert_eq!((status, &body[..]), (200, &b"hello from web"[..]));
    }
    // Three more client connections, concurrently.
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let addr = mesh.outbound();
        tasks.push(tokio::spawn(async move { get(addr, "/").await }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().0, 200);
    }
    let client = scrape(&mesh.client).await;
    assert_eq!(
        metric(
            &client,
            "outrigger_tcp_connections_opened_total",
            &[("protocol", "http1"), ("direction", "outbound")]
        ),
        4.0,
        "{client}"
    );
    // Every HTTP/1 request crossed the mesh over one HTTP/2 connection.
    let server = scrape(&mesh.server).await;
    assert_eq!(
        metric(
            &server,
            "outrigger_tcp_connections_opened_total",
            &[("direction", "inbound")]
        ),
        1.0,
        "{server}"
    );
    assert_eq!(
        metric(
            &server,
            "outrigger_tcp_connections_opened_total",
            &[("direction", "inbound"), ("protocol", "http2")]
        ),
        1.0
    );
    assert_eq!(
        metric(
            &server,
            "outrigger_requests_total",
            &[("direction", "inbound"), ("response_code", "200")]
        ),
        8.0
    );
}

#[tokio::test]
async fn the_app_sees_http1_with_its_host_and_no_hop_by_hop_or_internal_headers() {
    let mesh = Mesh::start(app("web").await).await;
    let mut c = http1(mesh.outbound()).await;
    let req = Request::get("/headers?q=1")
        .header("host", "web.shop:80")
        .header("connection", "keep-alive, x-secret")
        .header("x-secret", "hop")
        .header("keep-alive", "timeout=5")
        .header("proxy-connection", "keep-alive")
        .header("te", "gzip")
        .header("x-kept", "end-to-end")
        .body(empty())
        .unwrap();
    let (status, _, body) = send1(&mut c, req).await;
    assert_eq!(status, 200);
    let seen = String::from_utf8(body.to_vec()).unwrap();
    let lines: Vec<&str> = seen.lines().collect();
    assert!(lines.contains(&"host: web.shop:80"), "{seen}");
    assert!(lines.contains(&"x-kept: end-to-end"), "{seen}");
    assert!(lines.contains(&"version: HTTP/1.1"), "{seen}");
    assert!(lines.contains(&"uri: /headers?q=1"), "{seen}");
    for gone in [
        "x-secret",
        "keep-alive",
        "proxy-connection",
        "te:",
        "outrigger-orig-proto",
        "connection",
    ] {
        assert!(!seen.contains(gone), "{gone} reached the app:\n{seen}");
    }
}

#[tokio::test]
async fn http2_clients_stay_http2_to_the_app() {
    let mesh = Mesh::start(app("web").await).await;
    let mut c = http2(mesh.outbound()).await;
    let mut tasks = Vec::new();
    for i in 0..20 {
        let fut = c.send_request(
            Request::get(format!("http://web.shop/headers?i={i}"))
                .body(empty())
                .unwrap(),
        );
        tasks.push(tokio::spawn(async move {
            let resp = tokio::time::timeout(LIMIT, fut).await.unwrap().unwrap();
            assert_eq!(resp.status(), 200);
            String::from_utf8(
                resp.into_body()
                    .collect()
                    .await
                    .unwrap()
                    .to_bytes()
                    .to_vec(),
            )
            .unwrap()
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        let seen = t.await.unwrap();
        assert!(seen.contains("version: HTTP/2.0"), "{seen}");
        assert!(
            seen.contains(&format!("uri: http://web.shop/headers?i={i}")),
            "{seen}"
        );
    }
    c.ready().await.unwrap();
}

#[tokio::test]
async fn large_and_chunked_bodies_stream_both_ways() {
    let mesh = Mesh::start(app("web").await).await;
    let mut c = http1(mesh.outbound()).await;

    // 8 MiB request body with a known length, echoed back.
    let big: Vec<u8> = (0..8 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    let (status, _, body) = send1(
        &mut c,
        Request::post("/echo")
            .header("host", "web.shop")
            .body(full(big.clone()))
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body.len(), big.len());
    assert!(body == big, "echoed body differs");

    // A chunked request body (no length) in 300 pieces; the echo comes back chunked.
    let pieces: Vec<Result<hyper::body::Frame<Bytes>, BoxError>> = (0..300)
        .map(|i| {
            Ok(hyper::body::Frame::data(Bytes::from(format!(
                "chunk-{i:03};"
            ))))
        })
        .collect();
    let body = StreamBody::new(stream::iter(pieces)).boxed_unsync();
    let c2 = &mut c;
    c2.ready().await.unwrap();
    let resp = c2
        .send_request(
            Request::post("/echo")
                .header("host", "web.shop")
                .body(body)
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers().get("content-length").is_none(),
        "streamed, not buffered"
    );
    let got = resp.into_body().collect().await.unwrap().to_bytes();
    let want: String = (0..300).map(|i| format!("chunk-{i:03};")).collect();
    assert_eq!(String::from_utf8(got.to_vec()).unwrap(), want);

    // 16 MiB response body.
    let (status, headers, body) = send1(&mut c, get_req("/bytes/16777216")).await;
    assert_eq!(status, 200);
    assert_eq!(headers.get("content-length").unwrap(), "16777216");
    assert_eq!(body.len(), 16 * 1024 * 1024);

    let client = scrape(&mesh.client).await;
    let sent_up = metric(
        &client,
        "outrigger_request_bytes_total",
        &[("direction", "outbound")],
    );
    assert_eq!(sent_up, (big.len() + want.len()) as f64);
}

#[tokio::test]
async fn a_malformed_request_gets_400_and_the_proxy_keeps_serving() {
    let mesh = Mesh::start(app("web").await).await;
    let answer = raw_exchange(
        mesh.outbound(),
        b"GET / HTTP/1.1\r\nHost: web.shop\r\nthis is not a header\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    // The connection was closed (the read reached its end), and others are served.
    assert_eq!(
        get(mesh.outbound(), "/").await,
        (200, "hello from web".to_string())
    );

    // A bad Content-Length is refused the same way.
    let answer = raw_exchange(
        mesh.outbound(),
        b"POST / HTTP/1.1\r\nHost: web.shop\r\nContent-Length: nope\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert_eq!(get(mesh.outbound(), "/").await.0, 200);
}

/// Writes `request` on a new connection and reads until the proxy closes it.
async fn raw_exchange(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let mut raw = TcpStream::connect(addr).await.unwrap();
    raw.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(LIMIT, raw.read_to_end(&mut answer))
        .await
        .expect("the proxy closes the connection")
        .unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn oversized_headers_are_refused_with_431() {
    let mesh = Mesh::start(app("web").await).await;
    let mut raw = TcpStream::connect(mesh.outbound()).await.unwrap();
    let big = "a".repeat(100 * 1024);
    let req = format!("GET / HTTP/1.1\r\nHost: web.shop\r\nX-Big: {big}\r\n\r\n");
    // The proxy may close while we are still writing; that is fine.
    let _ = raw.write_all(req.as_bytes()).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(LIMIT, raw.read_to_end(&mut answer))
        .await
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    assert_eq!(get(mesh.outbound(), "/").await.0, 200);
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_cut_off() {
    let mesh = Mesh::start_with(
        app("web").await,
        |_| {},
        |c| {
            c.limits.header_read_timeout = outrigger_api::Duration::from_millis(200);
        },
    )
    .await;
    let mut raw = TcpStream::connect(mesh.outbound()).await.unwrap();
    raw.write_all(b"GET / HTTP/1.1\r\nHost: web.shop\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    // Closed by the proxy well before our own 10 s bound.
    tokio::time::timeout(LIMIT, raw.read_to_end(&mut answer))
        .await
        .expect("proxy closes the connection")
        .ok();
    assert!(!String::from_utf8_lossy(&answer).contains("200 OK"));
    assert_eq!(get(mesh.outbound(), "/").await.0, 200);
}

#[tokio::test]
async fn past_the_connection_limit_new_connections_are_closed_and_counted() {
    let mesh = Mesh::start_with(app("web").await, |_| {}, |c| c.limits.max_connections = 1).await;
    let mut first = http1(mesh.outbound()).await;
    let (status, _, _) = send1(&mut first, get_req("/")).await;
    assert_eq!(status, 200);

    let mut second = TcpStream::connect(mesh.outbound()).await.unwrap();
    let _ = second
        .write_all(b"GET / HTTP/1.1\r\nHost: web.shop\r\n\r\n")
        .await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(LIMIT, second.read_to_end(&mut answer))
        .await
        .unwrap();
    assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));
    let text = scrape(&mesh.client).await;
    assert_eq!(
        metric(
            &text,
            "outrigger_tcp_connections_rejected_total",
            &[("direction", "outbound")]
        ),
        1.0
    );

    // The first connection is unaffected; once it closes, a new one is served.
    let (status, _, _) = send1(&mut first, get_req("/")).await;
    assert_eq!(status, 200);
    drop(first);
    assert!(
        eventually(LIMIT, || async {
            matches!(
                tokio::time::timeout(Duration::from_secs(1), try_get(mesh.outbound(), "/")).await,
                Ok(Ok((200, _)))
            )
        })
        .await
    );
}

#[tokio::test]
async fn failures_the_proxy_answers_itself_carry_a_flag() {
    // An endpoint nobody listens on.
    let dead = {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let mut snap = client_snapshot(&[(dead, false)]);
    snap.services.push(outrigger_api::Service {
        name: "empty".into(),
        namespace: "shop".into(),
        addresses: vec![],
        ports: vec![81],
        protocol: Default::default(),
        endpoints: vec![],
        http: vec![],
        subsets: vec![],
        traffic_policy: None,
    });
    snap.listeners.push(outrigger_api::Listener {
        name: "to-empty".into(),
        direction: outrigger_api::Direction::Outbound,
        bind: "127.0.0.1:0".into(),
        target: Some(outrigger_api::ServiceRef {
            name: "empty".into(),
            namespace: "shop".into(),
            port: 81,
        }),
        app: None,
        opaque_ports: vec![],
        rate_limits: vec![],
    });
    let proxy = outrigger_proxy::Proxy::start(snap, Default::default())
        .await
        .unwrap();

    let mut c = http1(proxy.listener_addr("outbound").unwrap()).await;
    let (status, headers, body) = send1(&mut c, get_req("/")).await;
    assert_eq!(status, 502);
    assert_eq!(headers["outrigger-response-flags"], "UF");
    assert!(headers["outrigger-proxy-error"]
        .to_str()
        .unwrap()
        .contains(&dead.to_string()));
    assert!(String::from_utf8_lossy(&body).contains("connect to"));

    let mut c = http1(proxy.listener_addr("to-empty").unwrap()).await;
    let (status, headers, _) = send1(
        &mut c,
        Request::get("/")
            .header("host", "empty.shop")
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(status, 503);
    assert_eq!(headers["outrigger-response-flags"], "UH");

    let text = scrape(&proxy).await;
    assert_eq!(
        metric(
            &text,
            "outrigger_requests_total",
            &[("response_code", "502"), ("response_flags", "UF")]
        ),
        1.0,
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "outrigger_requests_total",
            &[
                ("response_code", "503"),
                ("response_flags", "UH"),
                ("destination_service", "empty.shop")
            ]
        ),
        1.0
    );
}

#[tokio::test]
async fn requests_are_spread_round_robin_over_endpoints_when_asked() {
    let a = app("a").await;
    let b = app("b").await;
    let mut snap = client_snapshot(&[(a, false), (b, false)]);
    snap.services[0].traffic_policy = Some(outrigger_api::policy::TrafficPolicy {
        load_balancer: Some(outrigger_api::policy::LoadBalancer {
            simple: Some(outrigger_api::policy::SimpleLb::RoundRobin),
            warmup_duration_secs: None,
        }),
        ..Default::default()
    });
    let proxy = outrigger_proxy::Proxy::start(snap, Default::default())
        .await
        .unwrap();
    let mut c = http1(proxy.listener_addr("outbound").unwrap()).await;
    let mut seen = Vec::new();
    for _ in 0..6 {
        let (_, _, body) = send1(&mut c, get_req("/")).await;
        seen.push(String::from_utf8(body.to_vec()).unwrap());
    }
    assert_eq!(seen, ["hello from a", "hello from b"].repeat(3));
}

/// A raw HTTP/1.1 server that accepts CONNECT with 200 and then echoes.
async fn connect_echo_server() -> std::net::SocketAddr {
    serve_tcp(|mut s| async move {
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        if !head.starts_with(b"CONNECT db.shop:5432 HTTP/1.1\r\n") {
            let _ = s
                .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
                .await;
            return;
        }
        s.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
        let (mut r, mut w) = s.split();
        let _ = tokio::io::copy(&mut r, &mut w).await;
    })
    .await
}

#[tokio::test]
async fn a_connect_tunnel_holds_its_connection_slot_until_it_closes() {
    let upstream = connect_echo_server().await;
    let mut snap = client_snapshot(&[(upstream, false)]);
    snap.limits.max_connections = 1;
    // CONNECT becomes a tunnel only where the settings allow it.
    snap.http.upgrades.push("CONNECT".into());
    let proxy = outrigger_proxy::Proxy::start(snap, Default::default())
        .await
        .unwrap();
    let outbound = proxy.listener_addr("outbound").unwrap();

    let mut tunnel = open_tunnel(outbound).await.expect("tunnel opens");
    tunnel
        .write_all(b"\x00binary after CONNECT\xff")
        .await
        .unwrap();
    let mut echoed = [0u8; 22];
    tokio::time::timeout(LIMIT, tunnel.read_exact(&mut echoed))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&echoed, b"\x00binary after CONNECT\xff");

    // The open tunnel still occupies the only slot, and is not counted closed.
    let mut second = TcpStream::connect(outbound).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(LIMIT, second.read_to_end(&mut answer))
        .await
        .unwrap();
    assert!(answer.is_empty());
    let text = scrape(&proxy).await;
    assert_eq!(
        metric(&text, "outrigger_tcp_connections_rejected_total", &[]),
        1.0,
        "{text}"
    );
    assert_eq!(
        metric(&text, "outrigger_tcp_connections_closed_total", &[]),
        0.0,
        "{text}"
    );

    drop(tunnel);
    assert!(
        eventually(LIMIT, || async {
            metric(
                &scrape(&proxy).await,
                "outrigger_tcp_connections_closed_total",
                &[],
            ) == 1.0
        })
        .await,
        "the tunnel's close is counted when it closes"
    );
    // The slot is free again: a new tunnel opens.
    assert!(eventually(LIMIT, || async { open_tunnel(outbound).await.is_some() }).await);
}

/// Sends CONNECT and reads the response head; `None` unless it is a 200.
async fn open_tunnel(proxy: std::net::SocketAddr) -> Option<TcpStream> {
    let mut tunnel = TcpStream::connect(proxy).await.ok()?;
    tunnel
        .write_all(b"CONNECT db.shop:5432 HTTP/1.1\r\nHost: db.shop:5432\r\n\r\n")
        .await
        .ok()?;
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        tokio::time::timeout(LIMIT, tunnel.read_exact(&mut byte))
            .await
            .ok()?
            .ok()?;
        head.push(byte[0]);
    }
    head.starts_with(b"HTTP/1.1 200 OK\r\n").then_some(tunnel)
}

#[tokio::test]
async fn a_client_giving_up_before_the_response_is_counted_as_dc() {
    let (upstream, mut arrived) = stalling_app().await;
    let proxy =
        outrigger_proxy::Proxy::start(client_snapshot(&[(upstream, false)]), Default::default())
            .await
            .unwrap();
    let mut raw = TcpStream::connect(proxy.listener_addr("outbound").unwrap())
        .await
        .unwrap();
    raw.write_all(b"GET /stuck HTTP/1.1\r\nHost: web.shop\r\n\r\n")
        .await
        .unwrap();
    tokio::time::timeout(LIMIT, arrived.recv()).await.unwrap();
    drop(raw);
    let dc = [
        ("response_code", "0"),
        ("response_flags", "DC"),
        ("destination_service", "web.shop"),
    ];
    assert!(
        eventually(LIMIT, || async {
            metric(&scrape(&proxy).await, "outrigger_requests_total", &dc) == 1.0
        })
        .await,
        "{}",
        scrape(&proxy).await
    );
}

#[tokio::test]
async fn connect_over_http2_is_refused_plainly() {
    let proxy = outrigger_proxy::Proxy::start(
        client_snapshot(&[(app("web").await, false)]),
        Default::default(),
    )
    .await
    .unwrap();
    let mut c = http2(proxy.listener_addr("outbound").unwrap()).await;
    let resp = c
        .send_request(
            Request::connect("db.shop:5432")
                .version(http::Version::HTTP_2)
                .body(empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 501);
    assert_eq!(resp.headers()["outrigger-response-flags"], "NR");
}

#[tokio::test]
async fn long_requests_to_a_peer_proxy_never_block_the_others() {
    // 250 requests the app holds open (long polls, slow uploads, streams)
    // ride HTTP/2 to the peer proxy, which allows 200 streams on one
    // connection: the client proxy opens more connections, and a short
    // request is answered beside them.
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    let held = gate.clone();
    let app = serve_http(move |req: Request<hyper::body::Incoming>| {
        let held = held.clone();
        async move {
            if req.uri().path() == "/slow" {
                let _ = held.acquire().await;
            }
            http::Response::new(full("ok"))
        }
    })
    .await;
    let mesh = Mesh::start(app).await;
    let outbound = mesh.outbound();
    let mut slow = Vec::new();
    for _ in 0..250 {
        slow.push(tokio::spawn(
            async move { try_get(outbound, "/slow").await },
        ));
    }
    // All 250 reached the app (each holds an inbound connection to it).
    assert!(
        eventually(LIMIT, || async {
            metric(
                &scrape(&mesh.server).await,
                "outrigger_tcp_connections_opened_total",
                &[("direction", "inbound")],
            ) >= 3.0
        })
        .await,
        "the client proxy opened more than one connection to its peer"
    );
    let (status, body) = tokio::time::timeout(LIMIT, get(outbound, "/fast"))
        .await
        .expect("a short request is not queued behind long ones");
    assert_eq!((status, body.as_str()), (200, "ok"));
    gate.add_permits(250);
    for t in slow {
        assert_eq!(t.await.unwrap().unwrap().0, 200);
    }
}

/// An app that speaks HTTP/1.1 only (an HTTP/2 preface is a parse error to
/// it), answering with the version it was spoken to in.
async fn http1_only_app() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
                        Ok::<_, std::convert::Infallible>(http::Response::new(full(format!(
                            "{:?}",
                            req.version()
                        ))))
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn an_http2_client_reaches_an_http1_app_on_a_port_declared_http() {
    let app = http1_only_app().await;
    let declared_http = |c: &mut outrigger_api::Snapshot| {
        c.services[0].protocol = outrigger_api::ServiceProtocol::Http;
    };
    // Through a peer proxy (HTTP/2 between the proxies), and straight to
    // an endpoint that is not meshed.
    let mesh = Mesh::start_with(app, |_| {}, declared_http).await;
    let mut direct = client_snapshot(&[(app, false)]);
    declared_http(&mut direct);
    let direct = outrigger_proxy::Proxy::start(direct, Default::default())
        .await
        .unwrap();
    for outbound in [mesh.outbound(), direct.listener_addr("outbound").unwrap()] {
        let mut c = http2(outbound).await;
        let resp = c
            .send_request(Request::get("http://web.shop/").body(empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(
            resp.version(),
            http::Version::HTTP_2,
            "the client keeps its protocol"
        );
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "HTTP/1.1", "the app is spoken to in its own protocol");
    }
}
