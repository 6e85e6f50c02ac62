//! HTTP/2 flood attacks on the proxy's plain listener, in hand-written
//! frames over a TCP socket: rapid reset, CONTINUATION, SETTINGS and PING
//! floods, and the configured stream limits. Each attacker must be sent
//! GOAWAY with ENHANCE_YOUR_CALM (error code 0xb) and have its connection
//! closed, while a normal HTTP/2 client on another connection keeps being
//! answered 200 during the flood and after it.
//!
//! Who answers what: rapid reset, CONTINUATION and the local-error-reset
//! limit are h2's own guards (configured from `limits.http2_*`); SETTINGS
//! and PING floods, which h2 acknowledges for ever, are the proxy's guard
//! (`proxy/src/transport/h2_guard.rs`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::Request;
use http_body_util::BodyExt;
use outrigger_api::Snapshot;
use outrigger_proxy::{Options, Proxy};
use outrigger_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const LIMIT: Duration = Duration::from_secs(20);
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const ENHANCE_YOUR_CALM: u32 = 0xb;
const REFUSED_STREAM: u32 = 0x7;

const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    f.extend_from_slice(&[kind, flags]);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// `GET /` for `web.shop` in HPACK, from the static table only (no
/// dynamic-table state to keep): `:method GET`, `:scheme http`, `:path /`,
/// and `:authority` as a literal without indexing.
fn get_block() -> Vec<u8> {
    let mut b = vec![0x82, 0x86, 0x84, 0x01, 8];
    b.extend_from_slice(b"web.shop");
    b
}

/// What the server sent an attacker: each GOAWAY's (last stream, code),
/// each RST_STREAM's (stream, code), and whether the connection ended.
#[derive(Debug, Default)]
struct Seen {
    goaways: Vec<(u32, u32)>,
    resets: Vec<(u32, u32)>,
    headers: Vec<u32>,
    closed: bool,
}

/// An attacker's connection: the preface and an empty SETTINGS sent, and a
/// task reading every frame the server sends back.
struct Attacker {
    write: tokio::net::tcp::OwnedWriteHalf,
    seen: Arc<std::sync::Mutex<Seen>>,
    reader: tokio::task::JoinHandle<()>,
}

impl Attacker {
    async fn connect(addr: SocketAddr) -> Self {
        let s = TcpStream::connect(addr).await.unwrap();
        let (mut read, mut write) = s.into_split();
        let mut hello = PREFACE.to_vec();
        hello.extend(frame(SETTINGS, 0, 0, &[]));
        write.write_all(&hello).await.unwrap();
        let seen = Arc::new(std::sync::Mutex::new(Seen::default()));
        let log = seen.clone();
        let reader = tokio::spawn(async move {
            let mut head = [0u8; 9];
            loop {
                if read.read_exact(&mut head).await.is_err() {
                    break;
                }
                let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
                let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
                let mut payload = vec![0u8; len];
                if read.read_exact(&mut payload).await.is_err() {
                    break;
                }
                let word = |i: usize| {
                    u32::from_be_bytes([payload[i], payload[i + 1], payload[i + 2], payload[i + 3]])
                };
                let mut s = log.lock().unwrap();
                match head[3] {
                    GOAWAY => s.goaways.push((word(0) & 0x7fff_ffff, word(4))),
                    RST_STREAM => s.resets.push((stream, word(0))),
                    HEADERS => s.headers.push(stream),
                    _ => {}
                }
            }
            log.lock().unwrap().closed = true;
        });
        Self {
            write,
            seen,
            reader,
        }
    }

    /// Sends `batch` again and again until the server closes the
    /// connection (a write fails, or the reader sees the end), at most
    /// `most` times; how many batches went out.
    async fn flood(&mut self, batch: impl Fn(u32) -> Vec<u8>, most: u32) -> u32 {
        for i in 0..most {
            if self.seen.lock().unwrap().closed {
                return i;
            }
            if self.write.write_all(&batch(i)).await.is_err() {
                return i;
            }
        }
        most
    }

    /// Waits until the server has closed the connection; what it sent.
    async fn closed(self) -> Seen {
        tokio::time::timeout(LIMIT, self.reader)
            .await
            .expect("the server closes the attacker's connection")
            .unwrap();
        Arc::try_unwrap(self.seen).unwrap().into_inner().unwrap()
    }
}

/// A proxy whose outbound listener sends `web.shop` to an app, with the
/// snapshot edited by `edit`.
async fn proxy(edit: impl FnOnce(&mut Snapshot)) -> (Proxy, SocketAddr) {
    let app = app("web").await;
    let mut s = client_snapshot(&[(app, false)]);
    edit(&mut s);
    s.validate().unwrap();
    let p = Proxy::start(s, Options::default()).await.unwrap();
    let addr = p.listener_addr("outbound").unwrap();
    (p, addr)
}

/// A normal HTTP/2 client on its own connection, sending `GET /` in a
/// loop until `stop`: (answered 200, anything else).
fn normal_client(
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        let mut h2 = http2(addr).await;
        let mut failed = 0;
        while !stop.load(Ordering::SeqCst) {
            let req = Request::get("/")
                .header("host", "web.shop")
                .body(empty())
                .unwrap();
            match h2.send_request(req).await {
                Ok(r) if r.status() == 200 => {
                    r.into_body().collect().await.unwrap();
                    ok.fetch_add(1, Ordering::SeqCst);
                }
                _ => failed += 1,
            }
        }
        failed
    })
}

/// Runs `attack` against a proxy edited by `edit` while a normal client
/// keeps requesting: the attacker is sent GOAWAY `code` and closed, and the
/// normal client is answered 200 throughout (some during the attack, 20
/// more after it) with no failure. What the attacker saw.
async fn under_attack<F, Fut>(edit: impl FnOnce(&mut Snapshot), attack: F) -> Seen
where
    F: FnOnce(Attacker) -> Fut,
    Fut: std::future::Future<Output = Seen>,
{
    let (_proxy, addr) = proxy(edit).await;
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let normal = normal_client(addr, stop.clone(), ok.clone());
    assert!(
        eventually(LIMIT, || async { ok.load(Ordering::SeqCst) >= 5 }).await,
        "the normal client is served before the attack"
    );
    let before = ok.load(Ordering::SeqCst);
    let seen = attack(Attacker::connect(addr).await).await;
    let during = ok.load(Ordering::SeqCst) - before;
    let after_attack = ok.load(Ordering::SeqCst);
    assert!(
        eventually(LIMIT, || async {
            ok.load(Ordering::SeqCst) >= after_attack + 20
        })
        .await,
        "the normal client is served after the attack"
    );
    stop.store(true, Ordering::SeqCst);
    let failed = normal.await.unwrap();
    assert_eq!(failed, 0, "the normal client saw failures");
    eprintln!(
        "normal client: {during} answered during the attack, {} in all; attacker saw {seen:?}",
        ok.load(Ordering::SeqCst)
    );
    assert!(seen.closed, "{seen:?}");
    seen
}

fn assert_calm(seen: &Seen) {
    assert!(
        seen.goaways
            .iter()
            .any(|(_, code)| *code == ENHANCE_YOUR_CALM),
        "GOAWAY ENHANCE_YOUR_CALM expected: {seen:?}"
    );
}

/// Rapid reset (CVE-2023-44487): streams opened and reset at once, in
/// batches, so that the server sees them reset before it accepts them.
#[tokio::test]
async fn rapid_reset_gets_goaway_enhance_your_calm() {
    let seen = under_attack(
        |s| s.limits.http2_max_pending_accept_reset_streams = 20,
        |mut a| async move {
            let block = get_block();
            let sent = a
                .flood(
                    |i| {
                        (0..50)
                            .flat_map(|j| {
                                let id = 1 + 2 * (i * 50 + j);
                                let mut f = frame(HEADERS, END_STREAM | END_HEADERS, id, &block);
                                f.extend(frame(RST_STREAM, 0, id, &0x8u32.to_be_bytes()));
                                f
                            })
                            .collect()
                    },
                    2_000,
                )
                .await;
            assert!(sent < 2_000, "still open after 100,000 reset streams");
            a.closed().await
        },
    )
    .await;
    assert_calm(&seen);
}

/// CONTINUATION flood (CVE-2024-27316 and kin): HEADERS without
/// END_HEADERS, then CONTINUATION frames without end.
#[tokio::test]
async fn continuation_flood_gets_goaway_enhance_your_calm() {
    let seen = under_attack(
        |_| {},
        |mut a| async move {
            let first = frame(HEADERS, END_STREAM, 1, &get_block());
            a.write.write_all(&first).await.unwrap();
            // Each CONTINUATION a whole header field (`x-a: aaa…`, a
            // literal without indexing), so that HPACK decodes as it goes.
            let mut field = vec![0x00, 3];
            field.extend_from_slice(b"x-a");
            field.push(50);
            field.extend_from_slice(&[b'a'; 50]);
            let sent = a
                .flood(|_| frame(CONTINUATION, 0, 1, &field), 100_000)
                .await;
            assert!(
                sent < 100_000,
                "still open after 100,000 CONTINUATION frames"
            );
            a.closed().await
        },
    )
    .await;
    assert_calm(&seen);
}

/// SETTINGS flood: h2 acknowledges each for ever; the proxy's guard
/// allows `http2_max_control_frames_per_second`.
#[tokio::test]
async fn settings_flood_gets_goaway_enhance_your_calm() {
    let seen = under_attack(
        |_| {},
        |mut a| async move {
            let sent = a
                .flood(
                    |_| (0..100).flat_map(|_| frame(SETTINGS, 0, 0, &[])).collect(),
                    10_000,
                )
                .await;
            assert!(sent < 10_000, "still open after 1,000,000 SETTINGS frames");
            a.closed().await
        },
    )
    .await;
    assert_calm(&seen);
}

/// PING flood, by a client that reads every PONG (so that h2's
/// back-pressure never stops it).
#[tokio::test]
async fn ping_flood_gets_goaway_enhance_your_calm() {
    let seen = under_attack(
        |_| {},
        |mut a| async move {
            let sent = a
                .flood(
                    |_| (0..100).flat_map(|_| frame(PING, 0, 0, &[7; 8])).collect(),
                    10_000,
                )
                .await;
            assert!(sent < 10_000, "still open after 1,000,000 PING frames");
            a.closed().await
        },
    )
    .await;
    assert_calm(&seen);
}

/// A client that keeps making the server reset its streams (a request
/// with a `connection` header is malformed in HTTP/2: a stream error) hits
/// `http2_max_local_error_reset_streams`.
#[tokio::test]
async fn stream_errors_past_the_local_reset_limit_get_goaway_enhance_your_calm() {
    let seen = under_attack(
        |s| s.limits.http2_max_local_error_reset_streams = 10,
        |mut a| async move {
            let mut block = get_block();
            block.extend_from_slice(&[0x00, 10]);
            block.extend_from_slice(b"connection");
            block.push(5);
            block.extend_from_slice(b"close");
            let sent = a
                .flood(
                    |i| frame(HEADERS, END_STREAM | END_HEADERS, 1 + 2 * i, &block),
                    1_000,
                )
                .await;
            // Fewer than the default 1,024: closed before 1,000 shows the
            // configured 10 in force.
            assert!(sent < 1_000, "still open after 1,000 stream errors");
            a.closed().await
        },
    )
    .await;
    assert_calm(&seen);
}

/// `http2_max_concurrent_streams` is what the proxy advertises and
/// enforces: with 2, a third stream open at once is refused
/// (REFUSED_STREAM) and the connection stays up.
#[tokio::test]
async fn streams_past_the_concurrency_limit_are_refused() {
    let (_proxy, addr) = proxy(|s| s.limits.http2_max_concurrent_streams = 2).await;
    let mut a = Attacker::connect(addr).await;
    let block = get_block();
    // Three requests whose bodies never end: all three stay open.
    for id in [1u32, 3, 5] {
        a.write
            .write_all(&frame(HEADERS, END_HEADERS, id, &block))
            .await
            .unwrap();
    }
    let seen = a.seen.clone();
    assert!(
        eventually(LIMIT, || async {
            seen.lock().unwrap().resets.contains(&(5, REFUSED_STREAM))
        })
        .await,
        "{:?}",
        seen.lock().unwrap()
    );
    // The first two are served (their answers come back), and the
    // connection stays up.
    assert!(
        eventually(LIMIT, || async {
            let s = seen.lock().unwrap();
            s.headers.contains(&1) && s.headers.contains(&3)
        })
        .await,
        "{:?}",
        seen.lock().unwrap()
    );
    let s = seen.lock().unwrap();
    assert!(!s.resets.contains(&(1, REFUSED_STREAM)), "{s:?}");
    assert!(!s.resets.contains(&(3, REFUSED_STREAM)), "{s:?}");
    assert!(s.goaways.is_empty() && !s.closed, "{s:?}");
}
