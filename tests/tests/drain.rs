//! Drain with a grace period, on the real proxy binary: clients keep
//! requesting over keep-alive connections from a slow upstream (each
//! answer takes 200 ms) when the proxy gets SIGTERM. No request may fail:
//! HTTP/1 clients are told `Connection: close` on their next answer and
//! reconnect (to the same proxy while it still accepts, or stop when it
//! refuses), HTTP/2 clients are sent GOAWAY and their open streams finish;
//! and the proxy exits, cleanly, well within its grace period.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::Request;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use outrigger_tests::*;
use tokio::net::TcpStream;

const LIMIT: Duration = Duration::from_secs(20);
/// The proxy's grace period (`limits.drain_timeout`) in these tests.
const GRACE: Duration = Duration::from_secs(10);
/// What the end of a drain may add to the grace period (the access log's
/// and the spans' flush, process exit).
const MARGIN: Duration = Duration::from_secs(3);
const CLIENTS: usize = 16;

/// The proxy binary, its outbound listener sending `web.shop` to `app`;
/// killed if still running when dropped.
struct Running {
    child: Child,
    outbound: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_proxy(app: SocketAddr, drain_accept: &str) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let outbound: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = dir.path().join("proxy.yaml");
    std::fs::write(
        &config,
        format!(
            r#"
version: "drain"
proxy: {{ workload: client, namespace: shop }}
admin: {{ bind: "{admin}" }}
limits: {{ drain_timeout: {}s, drain_accept: {drain_accept} }}
listeners:
  - {{ name: outbound, direction: outbound, bind: "{outbound}", target: {{ name: web, namespace: shop, port: 80 }} }}
services:
  - {{ name: web, namespace: shop, ports: [80], endpoints: [{{ address: "{app}" }}] }}
"#,
            GRACE.as_secs()
        ),
    )
    .unwrap();
    let child = Command::new(workspace_bin("outrigger-proxy").expect("cargo build --workspace"))
        .args([
            "run",
            "--config",
            config.to_str().unwrap(),
            "--threads",
            "2",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let running = Running {
        child,
        outbound,
        _dir: dir,
    };
    assert!(
        eventually(LIMIT, || async {
            matches!(try_get(admin, "/ready").await, Ok((200, _)))
        })
        .await,
        "the proxy never became ready"
    );
    running
}

/// Sends SIGTERM; returns how long the proxy took to exit, and its logs.
async fn terminate(p: &mut Running) -> (Duration, std::process::ExitStatus, String) {
    let sent = Command::new("kill")
        .args(["-TERM", &p.child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let start = tokio::time::Instant::now();
    let mut status = None;
    let exited = eventually(GRACE + MARGIN + LIMIT, || {
        status = status.or(p.child.try_wait().unwrap());
        async move { status.is_some() }
    })
    .await;
    let took = start.elapsed();
    assert!(exited, "still running {took:?} after SIGTERM");
    let mut logs = String::new();
    use std::io::Read;
    p.child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut logs)
        .unwrap();
    (took, status.unwrap(), logs)
}

/// What the clients saw, added up.
#[derive(Default)]
struct Tally {
    answered: AtomicUsize,
    failed: AtomicUsize,
    /// Answers that said `Connection: close` (HTTP/1), connections that
    /// were sent GOAWAY (HTTP/2).
    told: AtomicUsize,
    reconnected: AtomicUsize,
    refused: AtomicUsize,
}

impl Tally {
    fn get(&self, n: &AtomicUsize) -> usize {
        n.load(Ordering::SeqCst)
    }
}

async fn h1_connect(
    addr: SocketAddr,
) -> std::io::Result<hyper::client::conn::http1::SendRequest<Body>> {
    let stream = TcpStream::connect(addr).await?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(conn);
    Ok(sender)
}

/// One HTTP/1.1 keep-alive client: `GET /slow/200` in a loop; told
/// `Connection: close`, it reconnects, and stops once the proxy refuses.
async fn h1_client(addr: SocketAddr, tally: Arc<Tally>) {
    let mut conn = h1_connect(addr).await.expect("connects before the drain");
    loop {
        let req = Request::get("/slow/200")
            .header("host", "web.shop")
            .body(empty())
            .unwrap();
        let answer = match conn.send_request(req).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("request failed: {e:?}");
                tally.failed.fetch_add(1, Ordering::SeqCst);
                return;
            }
        };
        let status = answer.status();
        let close = answer
            .headers()
            .get(http::header::CONNECTION)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
        let body = answer.into_body().collect().await;
        if status != 200 || body.is_err() {
            eprintln!("answer failed: {status} {body:?}");
            tally.failed.fetch_add(1, Ordering::SeqCst);
            return;
        }
        tally.answered.fetch_add(1, Ordering::SeqCst);
        if close {
            tally.told.fetch_add(1, Ordering::SeqCst);
            match h1_connect(addr).await {
                Ok(c) => {
                    tally.reconnected.fetch_add(1, Ordering::SeqCst);
                    conn = c;
                }
                Err(_) => {
                    tally.refused.fetch_add(1, Ordering::SeqCst);
                    return;
                }
            }
        }
    }
}

/// 16 HTTP/1.1 keep-alive clients under load, SIGTERM mid-load: every
/// request is answered 200, every client is told `Connection: close`,
/// those that reconnect while the proxy accepts are served, and the proxy
/// exits cleanly within its grace period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_http1_keep_alive_load_loses_no_request() {
    let app = app("web").await;
    let mut proxy = start_proxy(app, "1s").await;
    let tally = Arc::new(Tally::default());
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| tokio::spawn(h1_client(proxy.outbound, tally.clone())))
        .collect();
    // Every client has been answered a few times: mid-load.
    assert!(
        eventually(LIMIT, || async {
            tally.get(&tally.answered) >= CLIENTS * 3
        })
        .await,
        "load never got going"
    );
    let (took, status, logs) = terminate(&mut proxy).await;
    for c in clients {
        tokio::time::timeout(LIMIT, c)
            .await
            .expect("every client ends")
            .unwrap();
    }
    eprintln!(
        "exited {took:?} after SIGTERM; answered {}, failed {}, told to close {}, reconnected {}, refused {}",
        tally.get(&tally.answered),
        tally.get(&tally.failed),
        tally.get(&tally.told),
        tally.get(&tally.reconnected),
        tally.get(&tally.refused),
    );
    assert_eq!(tally.get(&tally.failed), 0, "{logs}");
    assert!(status.success(), "{status:?}\n{logs}");
    assert!(logs.contains("drained"), "{logs}");
    assert!(took < GRACE + MARGIN, "took {took:?}");
    // Each client was told to close at least once, and stopped only when
    // refused: the accept window (1 s) served the reconnects in it.
    assert!(
        tally.get(&tally.told) >= CLIENTS,
        "told {}",
        tally.get(&tally.told)
    );
    assert_eq!(tally.get(&tally.refused), CLIENTS);
    assert!(
        tally.get(&tally.reconnected) >= CLIENTS,
        "reconnects were served"
    );
}

/// HTTP/2: four connections, four streams each in a loop, SIGTERM
/// mid-load: every connection is sent GOAWAY, no stream fails, the proxy
/// exits cleanly within its grace period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_http2_load_sends_goaway_and_loses_no_stream() {
    let app = app("web").await;
    let mut proxy = start_proxy(app, "0s").await;
    let tally = Arc::new(Tally::default());
    let mut connections = Vec::new();
    for _ in 0..4 {
        let stream = TcpStream::connect(proxy.outbound).await.unwrap();
        let (sender, conn) = h2::client::handshake(stream).await.unwrap();
        let driver = tokio::spawn(conn);
        let streams: Vec<_> = (0..4)
            .map(|_| {
                let sender = sender.clone();
                let tally = tally.clone();
                tokio::spawn(async move {
                    loop {
                        // A connection sent GOAWAY takes no new stream:
                        // the request is not sent, and this loop ends.
                        let mut ready = match sender.clone().ready().await {
                            Ok(r) => r,
                            Err(e) => return Some(e),
                        };
                        let req = Request::get("http://web.shop/slow/200").body(()).unwrap();
                        let (answer, _) = match ready.send_request(req, true) {
                            Ok(a) => a,
                            Err(e) => return Some(e),
                        };
                        match answer.await {
                            Ok(r) if r.status() == 200 => {
                                let mut body = r.into_body();
                                while let Some(chunk) = body.data().await {
                                    if chunk.is_err() {
                                        tally.failed.fetch_add(1, Ordering::SeqCst);
                                        return None;
                                    }
                                }
                                tally.answered.fetch_add(1, Ordering::SeqCst);
                            }
                            other => {
                                eprintln!("stream failed: {other:?}");
                                tally.failed.fetch_add(1, Ordering::SeqCst);
                                return None;
                            }
                        }
                    }
                })
            })
            .collect();
        connections.push((driver, streams));
    }
    assert!(
        eventually(LIMIT, || async { tally.get(&tally.answered) >= 16 * 3 }).await,
        "load never got going"
    );
    let (took, status, logs) = terminate(&mut proxy).await;
    for (driver, streams) in connections {
        let mut goaway = false;
        for s in streams {
            let ended = tokio::time::timeout(LIMIT, s)
                .await
                .expect("streams end")
                .unwrap();
            if let Some(e) = ended {
                assert!(e.is_go_away() && e.is_remote(), "not a GOAWAY: {e:?}");
                assert_eq!(e.reason(), Some(h2::Reason::NO_ERROR), "{e:?}");
                goaway = true;
            }
        }
        let closed = tokio::time::timeout(LIMIT, driver)
            .await
            .expect("connection ends")
            .unwrap();
        assert!(closed.is_ok(), "the connection ends cleanly: {closed:?}");
        assert!(goaway, "each connection was sent GOAWAY");
        tally.told.fetch_add(1, Ordering::SeqCst);
    }
    eprintln!(
        "exited {took:?} after SIGTERM; streams answered {}, failed {}, connections sent GOAWAY {}",
        tally.get(&tally.answered),
        tally.get(&tally.failed),
        tally.get(&tally.told),
    );
    assert_eq!(tally.get(&tally.failed), 0, "{logs}");
    assert!(status.success(), "{status:?}\n{logs}");
    assert!(took < GRACE + MARGIN, "took {took:?}");
}

/// Reads until the peer closes; what it sent. An error (a reset) ends it
/// too: what came before is kept.
async fn read_to_close(s: &mut TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(LIMIT, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => panic!(
                "still open after {LIMIT:?}: {}",
                String::from_utf8_lossy(&out)
            ),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// In a drain, an HTTP/1 keep-alive connection is closed only between
/// requests: one that is idle is closed (after a quiet second), one whose
/// next request is being read when the drain begins is answered, with
/// `Connection: close`, then closed.
#[tokio::test]
async fn a_drain_closes_idle_http1_connections_and_serves_a_request_being_read() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = app("web").await;
    let mut snapshot = client_snapshot(&[(app, false)]);
    snapshot.limits.drain_timeout = outrigger_api::Duration(GRACE);
    let proxy = outrigger_proxy::Proxy::start(snapshot, outrigger_proxy::Options::default())
        .await
        .unwrap();
    let addr = proxy.listener_addr("outbound").unwrap();
    let admin = proxy.admin_addr;
    let request = "GET / HTTP/1.1\r\nHost: web.shop\r\n\r\n";
    // Two keep-alive connections, each answered once.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    let mut busy = TcpStream::connect(addr).await.unwrap();
    for s in [&mut idle, &mut busy] {
        s.write_all(request.as_bytes()).await.unwrap();
        let mut buf = [0u8; 1024];
        let n = s.read(&mut buf).await.unwrap();
        let head = String::from_utf8_lossy(&buf[..n]);
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(
            !head.to_ascii_lowercase().contains("connection: close"),
            "{head}"
        );
    }
    // The next request's first half is on its way when the drain begins.
    busy.write_all(&request.as_bytes()[..20]).await.unwrap();
    let drained = tokio::spawn(proxy.stop(GRACE + MARGIN));
    assert!(
        eventually(LIMIT, || async {
            matches!(try_get(admin, "/ready").await, Ok((503, _)))
        })
        .await,
        "draining"
    );
    // A slow client: the rest comes after the drain has closed the quiet
    // connections (DRAIN_QUIET, 1 s). This one is not quiet: its head is
    // arriving.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    busy.write_all(&request.as_bytes()[20..]).await.unwrap();
    let answer = read_to_close(&mut busy).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    assert!(answer.ends_with("hello from web"), "{answer}");
    // The idle one is closed without a word.
    assert_eq!(read_to_close(&mut idle).await, "");
    assert_eq!(
        drained.await.unwrap(),
        outrigger_proxy::Drained::Clean,
        "nothing left open"
    );
}
