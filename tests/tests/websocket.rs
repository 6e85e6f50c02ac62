//! WebSocket through the mesh: the client's upgrade request goes to the
//! outbound proxy, both proxies forward it on dedicated HTTP/1 connections,
//! and after `101 Switching Protocols` the frames are spliced byte for byte
//! to a tungstenite echo server.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use outrigger_tests::{eventually, metric, scrape, serve_tcp, Mesh};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

const LIMIT: Duration = Duration::from_secs(10);

/// What the echo server saw on one connection.
#[derive(Debug)]
enum Seen {
    /// The upgrade request: its target (path and query) and `Host`.
    Handshake { target: String, host: String },
    /// The client's close frame, as received.
    Close(Option<CloseFrame>),
}

/// An echo server: text and binary messages come back unchanged; pings are
/// answered by tungstenite itself; a close is answered and reported.
async fn echo_server() -> (SocketAddr, mpsc::UnboundedReceiver<Seen>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let addr = serve_tcp(move |stream| {
        let tx = tx.clone();
        async move {
            let seen = tx.clone();
            #[allow(clippy::result_large_err)] // the signature is tungstenite's
            let callback = move |req: &Request, resp: Response| {
                let host = req
                    .headers()
                    .get("host")
                    .and_then(|h| h.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                let _ = seen.send(Seen::Handshake {
                    target: req.uri().to_string(),
                    host,
                });
                Ok(resp)
            };
            let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else {
                return;
            };
            while let Some(msg) = ws.next().await {
                match msg {
                    Ok(m @ (Message::Text(_) | Message::Binary(_))) => {
                        if ws.send(m).await.is_err() {
                            return;
                        }
                    }
                    // Reading on flushes tungstenite's close reply, then ends.
                    Ok(Message::Close(frame)) => {
                        let _ = tx.send(Seen::Close(frame));
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        }
    })
    .await;
    (addr, rx)
}

type Ws = WebSocketStream<TcpStream>;

/// A WebSocket client connected through the outbound proxy.
async fn connect(mesh: &Mesh, uri: &str) -> Ws {
    let stream = TcpStream::connect(mesh.outbound()).await.unwrap();
    let (ws, resp) = tokio_tungstenite::client_async(uri, stream)
        .await
        .expect("the upgrade goes through both proxies");
    assert_eq!(resp.status(), 101);
    ws
}

/// The next data or control message the client receives.
async fn next(ws: &mut Ws) -> Message {
    ws.next()
        .await
        .expect("the connection is open")
        .expect("a well-formed frame")
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_be_bytes()[0] ^ seed)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_pings_and_a_clean_close_cross_the_mesh() {
    let (app, mut seen) = echo_server().await;
    let mesh = Mesh::start(app).await;
    timeout(LIMIT, async {
        let mut ws = connect(&mesh, "ws://web.shop/chat?room=1").await;
        match seen.recv().await.unwrap() {
            Seen::Handshake { target, host } => {
                assert_eq!(target, "/chat?room=1");
                assert_eq!(host, "web.shop", "the Host header reached the app");
            }
            other => panic!("expected the handshake first, got {other:?}"),
        }

        ws.send(Message::text("hello, mesh")).await.unwrap();
        assert_eq!(next(&mut ws).await, Message::text("hello, mesh"));

        let unicode = "żółw 🐢 — ".repeat(10_000);
        ws.send(Message::text(unicode.clone())).await.unwrap();
        match next(&mut ws).await {
            Message::Text(t) => assert!(t.as_str() == unicode, "large text echoed intact"),
            other => panic!("expected text, got {other:?}"),
        }

        let small = vec![0u8, 1, 2, 0xfe, 0xff];
        ws.send(Message::binary(small.clone())).await.unwrap();
        assert_eq!(next(&mut ws).await, Message::binary(small));

        let big = pattern(1 << 20, 7);
        ws.send(Message::binary(big.clone())).await.unwrap();
        match next(&mut ws).await {
            Message::Binary(b) => {
                assert_eq!(b.len(), big.len());
                assert!(b[..] == big[..], "1 MiB binary message echoed intact");
            }
            other => panic!("expected binary, got {other:?}"),
        }

        ws.send(Message::Ping(b"are you there".to_vec().into()))
            .await
            .unwrap();
        assert_eq!(
            next(&mut ws).await,
            Message::Pong(b"are you there".to_vec().into())
        );

        // Still usable after the control frames.
        ws.send(Message::text("after ping")).await.unwrap();
        assert_eq!(next(&mut ws).await, Message::text("after ping"));

        ws.close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "bye".into(),
        }))
        .await
        .unwrap();
        match next(&mut ws).await {
            Message::Close(Some(f)) => assert_eq!(f.code, CloseCode::Normal),
            other => panic!("expected the server's close, got {other:?}"),
        }
        assert!(
            ws.next().await.is_none(),
            "the stream ends after the close handshake"
        );

        match seen.recv().await.unwrap() {
            Seen::Close(Some(f)) => {
                assert_eq!(f.code, CloseCode::Normal);
                assert_eq!(f.reason.as_str(), "bye");
            }
            other => panic!("expected the client's close, got {other:?}"),
        }
    })
    .await
    .expect("the session finishes in time");

    // Each proxy counts the upgrade as one request answered with 101.
    for (proxy, direction) in [(&mesh.client, "outbound"), (&mesh.server, "inbound")] {
        let ok = eventually(LIMIT, || async {
            let text = scrape(proxy).await;
            metric(
                &text,
                "outrigger_requests_total",
                &[("direction", direction), ("response_code", "101")],
            ) == 1.0
        })
        .await;
        assert!(ok, "{direction}: {}", scrape(proxy).await);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_messages_echo_in_order() {
    let (app, _seen) = echo_server().await;
    let mesh = Mesh::start(app).await;
    const N: usize = 200;
    let message = |i: usize| match i % 3 {
        0 => Message::binary(pattern(i * 37 % 5000, i as u8)),
        _ => Message::text(format!("message {i} {}", "x".repeat(i))),
    };
    timeout(LIMIT, async {
        let ws = connect(&mesh, "ws://web.shop/stream").await;
        let (mut sink, mut stream) = ws.split();
        // Send everything without waiting for echoes, while reading them.
        let sender = tokio::spawn(async move {
            for i in 0..N {
                sink.feed(message(i)).await.unwrap();
            }
            sink.flush().await.unwrap();
            sink
        });
        for i in 0..N {
            let got = stream
                .next()
                .await
                .expect("the connection stays open")
                .expect("a well-formed frame");
            assert!(got == message(i), "message {i} out of order or changed");
        }
        let mut sink = sender.await.unwrap();
        sink.close().await.unwrap();
        match stream.next().await {
            Some(Ok(Message::Close(_))) => {}
            other => panic!("expected the server's close, got {other:?}"),
        }
    })
    .await
    .expect("all messages echo in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_websocket_sessions_stay_separate() {
    let (app, _seen) = echo_server().await;
    let mesh = Mesh::start(app).await;
    timeout(LIMIT, async {
        let mut sessions = Vec::new();
        for s in 0..8 {
            sessions.push(connect(&mesh, &format!("ws://web.shop/room/{s}")).await);
        }
        let tasks: Vec<_> = sessions
            .into_iter()
            .enumerate()
            .map(|(s, mut ws)| {
                tokio::spawn(async move {
                    for i in 0..20 {
                        let m = Message::text(format!("session {s} message {i}"));
                        ws.send(m.clone()).await.unwrap();
                        assert_eq!(next(&mut ws).await, m);
                    }
                    ws.close(None).await.unwrap();
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    })
    .await
    .expect("the sessions finish in time");
}
