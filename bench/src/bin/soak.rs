//! The soak driver: steady, modest-rate mixed traffic through an Outrigger
//! client-side proxy for a given time, every failure counted with its reason.
//!
//! Kinds of traffic, each its own `kind` in the output:
//! - `h1`: HTTP/1.1 keep-alive connections, alternating `GET /` and
//!   `POST /echo` (the echoed body is checked);
//! - `h2`: one HTTP/2 (prior knowledge) connection shared by several paced
//!   workers, the same requests;
//! - `grpc`: long-lived gRPC-style bidirectional streams (length-prefixed
//!   messages, `content-type: application/grpc`), one message every
//!   `--message-every`, each echo timed; a stream is ended by the driver after
//!   `--session-life` (its trailers must say `grpc-status: 0`) and reopened;
//! - `ws`: WebSocket echo sessions on `/ws`, the same pacing and life;
//! - `tcp`: opaque TCP connections to the proxy's TCP port, the same pacing and
//!   life, every byte echoed.
//!
//! A request (h1, h2) or an echoed message (grpc, ws, tcp) is one sample.
//! Opening a stream, session or connection is not a sample, but a failure to
//! open one is a failure of its kind. Every `--bucket` a JSON line per kind
//! goes to `--out`: `{"t", "unix", "kind", "count", "failures", "opened",
//! "p50_ms", "p99_ms", "max_ms", "errors": {reason: n}}`; at the end one line
//! `{"summary": {...}}` with the totals. The first failures of each kind are
//! also logged on stderr with their time.
//!
//! `bench/soak.sh` runs it; `bench/report_soak.py` reads its output.

#![allow(
    clippy::disallowed_methods,
    reason = "a benchmark: it times real latencies on the wall clock"
)]

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser, Clone)]
#[command(
    about = "Soak driver: mixed traffic through an Outrigger proxy, failures and latency per kind"
)]
struct Args {
    /// The client-side proxy's listener for HTTP (h1, h2, grpc, ws).
    #[arg(long)]
    http: SocketAddr,
    /// The client-side proxy's listener for opaque TCP.
    #[arg(long)]
    tcp: SocketAddr,
    /// How long to drive traffic, in seconds.
    #[arg(long)]
    duration: u64,
    /// JSON lines go here.
    #[arg(long)]
    out: PathBuf,
    /// The `Host` (authority) of every request.
    #[arg(long, default_value = "bench-upstream.bench")]
    authority: String,
    /// Seconds per output bucket.
    #[arg(long, default_value_t = 10)]
    bucket: u64,
    /// HTTP/1.1 requests per second (spread over `--h1-conns` connections).
    #[arg(long, default_value_t = 80)]
    h1_rate: u32,
    #[arg(long, default_value_t = 4)]
    h1_conns: u32,
    /// HTTP/2 requests per second (spread over `--h2-workers` on one connection).
    #[arg(long, default_value_t = 80)]
    h2_rate: u32,
    #[arg(long, default_value_t = 4)]
    h2_workers: u32,
    /// Concurrent gRPC streams, WebSocket sessions and TCP connections.
    #[arg(long, default_value_t = 4)]
    grpc_streams: u32,
    #[arg(long, default_value_t = 4)]
    ws_sessions: u32,
    #[arg(long, default_value_t = 4)]
    tcp_conns: u32,
    /// Milliseconds between two messages of a stream, session or connection.
    #[arg(long, default_value_t = 100)]
    message_every: u64,
    /// Seconds a stream, session or connection lives before the driver ends it
    /// cleanly and opens another.
    #[arg(long, default_value_t = 60)]
    session_life: u64,
    /// Seconds a request or an echo may take before it counts as failed.
    #[arg(long, default_value_t = 10)]
    timeout: u64,
}

const KINDS: [&str; 5] = ["h1", "h2", "grpc", "ws", "tcp"];
/// Failures of each kind logged on stderr as they happen.
const LOGGED_FAILURES: u64 = 20;

#[derive(Default)]
struct Bucket {
    latencies_us: Vec<u64>,
    failures: u64,
    opened: u64,
    errors: BTreeMap<String, u64>,
}

#[derive(Default, Serialize, Clone)]
struct Total {
    count: u64,
    failures: u64,
    opened: u64,
    errors: BTreeMap<String, u64>,
}

struct Stats {
    start: Instant,
    buckets: Mutex<BTreeMap<&'static str, Bucket>>,
    totals: Mutex<BTreeMap<&'static str, Total>>,
}

impl Stats {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            buckets: Mutex::new(KINDS.iter().map(|k| (*k, Bucket::default())).collect()),
            totals: Mutex::new(KINDS.iter().map(|k| (*k, Total::default())).collect()),
        }
    }

    fn ok(&self, kind: &'static str, took: Duration) {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        lock(&self.buckets)
            .entry(kind)
            .or_default()
            .latencies_us
            .push(us);
        lock(&self.totals).entry(kind).or_default().count += 1;
    }

    fn opened(&self, kind: &'static str) {
        lock(&self.buckets).entry(kind).or_default().opened += 1;
        lock(&self.totals).entry(kind).or_default().opened += 1;
    }

    fn fail(&self, kind: &'static str, reason: impl std::fmt::Display) {
        // The chain of an anyhow error in one line, without numbers that
        // would make every reason distinct (ports, sequence numbers).
        let mut reason = format!("{reason:#}");
        reason.truncate(200);
        let n = {
            let mut totals = lock(&self.totals);
            let total = totals.entry(kind).or_default();
            total.count += 1;
            total.failures += 1;
            *total.errors.entry(reason.clone()).or_default() += 1;
            total.failures
        };
        if n <= LOGGED_FAILURES {
            eprintln!(
                "soak: {:.1}s {kind} failure {n}: {reason}",
                self.start.elapsed().as_secs_f64()
            );
        }
        let mut buckets = lock(&self.buckets);
        let bucket = buckets.entry(kind).or_default();
        bucket.failures += 1;
        *bucket.errors.entry(reason).or_default() += 1;
    }

    /// One JSON line per kind for the bucket just ended, which is reset.
    fn flush(&self, out: &mut impl std::io::Write) -> anyhow::Result<()> {
        let mut buckets = std::mem::take(&mut *lock(&self.buckets));
        let t = self.start.elapsed().as_secs_f64();
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        for kind in KINDS {
            let mut b = buckets.remove(kind).unwrap_or_default();
            b.latencies_us.sort_unstable();
            let q = |p: f64| -> Option<f64> {
                if b.latencies_us.is_empty() {
                    return None;
                }
                #[allow(
                    clippy::cast_possible_truncation,
                    clippy::cast_sign_loss,
                    clippy::cast_precision_loss,
                    reason = "an index into a short vector"
                )]
                let i = ((b.latencies_us.len() as f64 * p).ceil() as usize)
                    .clamp(1, b.latencies_us.len())
                    - 1;
                #[allow(clippy::cast_precision_loss, reason = "microseconds")]
                Some(b.latencies_us[i] as f64 / 1000.0)
            };
            let line = serde_json::json!({
                "t": (t * 10.0).round() / 10.0,
                "unix": unix.round(),
                "kind": kind,
                "count": b.latencies_us.len() as u64 + b.failures,
                "failures": b.failures,
                "opened": b.opened,
                "p50_ms": q(0.5),
                "p99_ms": q(0.99),
                "max_ms": q(1.0),
                "errors": b.errors,
            });
            writeln!(out, "{line}")?;
        }
        out.flush()?;
        Ok(())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The shared state of every worker.
struct Ctx {
    args: Args,
    stats: Stats,
    end: Instant,
}

impl Ctx {
    fn running(&self) -> bool {
        Instant::now() < self.end
    }

    /// Sleeps until `at`, or until the end of the run; false at the end.
    async fn pace(&self, at: Instant) -> bool {
        tokio::time::sleep_until(at.min(self.end).into()).await;
        self.running()
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs(self.args.timeout)
    }

    fn session_end(&self, life: Duration) -> Instant {
        (Instant::now() + life).min(self.end)
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?
        .block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let mut out = std::io::BufWriter::new(
        std::fs::File::create(&args.out)
            .with_context(|| format!("creating {}", args.out.display()))?,
    );
    let ctx = Arc::new(Ctx {
        stats: Stats::new(),
        end: Instant::now() + Duration::from_secs(args.duration),
        args: args.clone(),
    });
    let mut tasks = Vec::new();
    // All sessions open at once, but the first of each lives a different
    // share of `--session-life`, so that they do not all reopen together.
    let first_life = |i: u32, n: u32| {
        Duration::from_millis(args.session_life * 1000 * u64::from(i + 1) / u64::from(n.max(1)))
    };
    for i in 0..args.h1_conns {
        tasks.push(tokio::spawn(h1_worker(ctx.clone(), i)));
    }
    tasks.push(tokio::spawn(h2_driver(ctx.clone())));
    for (kind, n) in [
        ("grpc", args.grpc_streams),
        ("ws", args.ws_sessions),
        ("tcp", args.tcp_conns),
    ] {
        for i in 0..n {
            tasks.push(tokio::spawn(session_loop(
                ctx.clone(),
                kind,
                first_life(i, n),
            )));
        }
    }
    eprintln!(
        "soak: driving {} s of traffic through {} (HTTP) and {} (TCP)",
        args.duration, args.http, args.tcp
    );
    let bucket = Duration::from_secs(args.bucket.max(1));
    let mut next = Instant::now() + bucket;
    while Instant::now() < ctx.end {
        tokio::time::sleep_until(next.min(ctx.end).into()).await;
        if Instant::now() >= next {
            ctx.stats.flush(&mut out)?;
            next += bucket;
        }
    }
    // Sessions end cleanly at the end; give them the timeout to do so.
    for task in tasks {
        let _ = tokio::time::timeout(ctx.timeout() + Duration::from_secs(1), task).await;
    }
    ctx.stats.flush(&mut out)?;
    let totals = lock(&ctx.stats.totals).clone();
    writeln!(
        out,
        "{}",
        serde_json::json!({"summary": {"duration_s": args.duration, "kinds": totals}})
    )?;
    out.flush()?;
    let failures: u64 = totals.values().map(|t| t.failures).sum();
    let count: u64 = totals.values().map(|t| t.count).sum();
    eprintln!("soak: {count} samples, {failures} failed");
    Ok(())
}

// ---------------------------------------------------------------------------
// HTTP/1.1 and HTTP/2 requests

type ReqBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn request(ctx: &Ctx, n: u64) -> (Request<ReqBody>, Option<Bytes>) {
    let builder = Request::builder().header(http::header::HOST, &ctx.args.authority);
    if n.is_multiple_of(2) {
        let req = builder
            .method("GET")
            .uri("/")
            .body(Full::new(Bytes::new()).boxed())
            .unwrap_or_default();
        (req, None)
    } else {
        let body = Bytes::from(format!("soak echo {n}\n"));
        let req = builder
            .method("POST")
            .uri("/echo")
            .body(Full::new(body.clone()).boxed())
            .unwrap_or_default();
        (req, Some(body))
    }
}

/// Checks an answer: 200 and, for an echo, the body sent; else the upstream's greeting.
async fn check_response(
    response: hyper::Response<Incoming>,
    echo: Option<Bytes>,
) -> anyhow::Result<()> {
    let status = response.status();
    let flags = response
        .headers()
        .get("outrigger-response-flags")
        .or_else(|| response.headers().get("x-outrigger-response-flags"))
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = response
        .into_body()
        .collect()
        .await
        .context("reading the response body")?
        .to_bytes();
    if status != http::StatusCode::OK {
        anyhow::bail!(
            "status {status}{}: {}",
            flags.map(|f| format!(" flags {f}")).unwrap_or_default(),
            String::from_utf8_lossy(&body[..body.len().min(80)]).trim()
        );
    }
    match echo {
        Some(sent) if body != sent => anyhow::bail!("echo body differs"),
        None if !body.starts_with(b"hello from") => anyhow::bail!("unexpected body"),
        _ => Ok(()),
    }
}

async fn h1_worker(ctx: Arc<Ctx>, i: u32) {
    let every = Duration::from_secs_f64(
        f64::from(ctx.args.h1_conns.max(1)) / f64::from(ctx.args.h1_rate.max(1)),
    );
    let mut next =
        Instant::now() + every.mul_f64(f64::from(i) / f64::from(ctx.args.h1_conns.max(1)));
    let mut n = u64::from(i);
    let mut sender: Option<hyper::client::conn::http1::SendRequest<ReqBody>> = None;
    while ctx.pace(next).await {
        next += every;
        n += 1;
        let start = Instant::now();
        let result = tokio::time::timeout(ctx.timeout(), async {
            if let Some(s) = sender.as_mut() {
                if s.ready().await.is_err() {
                    sender = None;
                }
            }
            let s = match sender.as_mut() {
                Some(s) => s,
                None => {
                    let stream = TcpStream::connect(ctx.args.http)
                        .await
                        .with_context(|| format!("connecting to the proxy at {}", ctx.args.http))?;
                    let _ = stream.set_nodelay(true);
                    let (s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                        .await
                        .context("HTTP/1.1 handshake")?;
                    tokio::spawn(conn);
                    sender.insert(s)
                }
            };
            let (req, echo) = request(&ctx, n);
            let response = s.send_request(req).await.context("HTTP/1.1 request")?;
            check_response(response, echo).await
        })
        .await;
        match result {
            Ok(Ok(())) => ctx.stats.ok("h1", start.elapsed()),
            Ok(Err(e)) => {
                sender = None;
                ctx.stats.fail("h1", e);
            }
            Err(_) => {
                sender = None;
                ctx.stats.fail("h1", "timed out");
            }
        }
    }
}

async fn h2_connect(ctx: &Ctx) -> anyhow::Result<hyper::client::conn::http2::SendRequest<ReqBody>> {
    let stream = TcpStream::connect(ctx.args.http)
        .await
        .with_context(|| format!("connecting to the proxy at {}", ctx.args.http))?;
    let _ = stream.set_nodelay(true);
    let (s, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .context("HTTP/2 handshake")?;
    tokio::spawn(conn);
    Ok(s)
}

/// One shared HTTP/2 connection, reopened when it fails, and paced workers on it.
async fn h2_driver(ctx: Arc<Ctx>) {
    let conn: Arc<tokio::sync::Mutex<Option<hyper::client::conn::http2::SendRequest<ReqBody>>>> =
        Arc::new(tokio::sync::Mutex::new(None));
    let workers = ctx.args.h2_workers.max(1);
    let every = Duration::from_secs_f64(f64::from(workers) / f64::from(ctx.args.h2_rate.max(1)));
    let mut tasks = Vec::new();
    for i in 0..workers {
        let ctx = ctx.clone();
        let conn = conn.clone();
        tasks.push(tokio::spawn(async move {
            let mut next = Instant::now() + every.mul_f64(f64::from(i) / f64::from(workers));
            let mut n = u64::from(i);
            while ctx.pace(next).await {
                next += every;
                n += 1;
                let start = Instant::now();
                let result = tokio::time::timeout(ctx.timeout(), async {
                    let mut s = {
                        let mut guard = conn.lock().await;
                        match guard.as_ref() {
                            Some(s) if !s.is_closed() => s.clone(),
                            _ => guard.insert(h2_connect(&ctx).await?).clone(),
                        }
                    };
                    s.ready().await.context("HTTP/2 connection")?;
                    let (req, echo) = request(&ctx, n);
                    let response = s.send_request(req).await.context("HTTP/2 request")?;
                    check_response(response, echo).await
                })
                .await;
                match result {
                    Ok(Ok(())) => ctx.stats.ok("h2", start.elapsed()),
                    Ok(Err(e)) => ctx.stats.fail("h2", e),
                    Err(_) => ctx.stats.fail("h2", "timed out"),
                }
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
}

// ---------------------------------------------------------------------------
// Long-lived sessions: gRPC streams, WebSockets, TCP connections

async fn session_loop(ctx: Arc<Ctx>, kind: &'static str, first_life: Duration) {
    let mut seq = 0u64;
    let mut life = first_life;
    while ctx.running() {
        let started = Instant::now();
        let until = ctx.session_end(life);
        life = Duration::from_secs(ctx.args.session_life);
        let result = match kind {
            "grpc" => grpc_session(&ctx, until, &mut seq).await,
            "ws" => ws_session(&ctx, until, &mut seq).await,
            _ => tcp_session(&ctx, until, &mut seq).await,
        };
        if let Err(e) = result {
            ctx.stats.fail(kind, e);
            // Do not spin on a refused connection.
            let retry = started + Duration::from_millis(ctx.args.message_every);
            if !ctx.pace(retry).await {
                return;
            }
        }
    }
}

/// Times echoed messages: the sent ones wait here in order.
struct Pending {
    sent: VecDeque<(Bytes, Instant)>,
}

impl Pending {
    fn new() -> Self {
        Self {
            sent: VecDeque::new(),
        }
    }

    fn got(&mut self, ctx: &Ctx, kind: &'static str, msg: &[u8]) -> anyhow::Result<()> {
        let Some((expected, at)) = self.sent.pop_front() else {
            anyhow::bail!("an echo nothing was sent for");
        };
        if msg != expected.as_ref() {
            anyhow::bail!("echo out of order or corrupted");
        }
        ctx.stats.ok(kind, at.elapsed());
        Ok(())
    }

    /// The oldest message unanswered for longer than the timeout.
    fn overdue(&self, ctx: &Ctx) -> bool {
        self.sent
            .front()
            .is_some_and(|(_, at)| at.elapsed() > ctx.timeout())
    }
}

fn message(kind: &str, seq: u64) -> Bytes {
    Bytes::from(format!("soak {kind} message {seq:012}\n"))
}

/// A request body fed by a channel: each message one data frame; the body
/// ends when the sender is dropped.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|m| m.map(|b| Ok(Frame::data(b))))
    }
}

fn grpc_frame(msg: &Bytes) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + msg.len());
    b.put_u8(0);
    b.put_u32(u32::try_from(msg.len()).unwrap_or(u32::MAX));
    b.put_slice(msg);
    b.freeze()
}

async fn grpc_session(ctx: &Ctx, until: Instant, seq: &mut u64) -> anyhow::Result<()> {
    let mut s = tokio::time::timeout(ctx.timeout(), h2_connect(ctx))
        .await
        .context("gRPC: connecting timed out")?
        .context("gRPC")?;
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    let req = Request::builder()
        .method("POST")
        .uri("/soak.Echo/Stream")
        .header(http::header::HOST, &ctx.args.authority)
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header(http::header::TE, "trailers")
        .body(ChannelBody(rx).boxed())
        .context("gRPC request")?;
    let response = tokio::time::timeout(ctx.timeout(), async {
        s.ready().await?;
        s.send_request(req).await
    })
    .await
    .context("gRPC: no response head in time")?
    .context("gRPC: opening the stream")?;
    if response.status() != http::StatusCode::OK {
        anyhow::bail!("gRPC: status {}", response.status());
    }
    if let Some(status) = response.headers().get("grpc-status") {
        anyhow::bail!("gRPC: trailers-only answer, grpc-status {status:?}");
    }
    ctx.stats.opened("grpc");
    let mut body = response.into_body();
    let mut pending = Pending::new();
    let mut buf = BytesMut::new();
    let every = Duration::from_millis(ctx.args.message_every.max(1));
    let mut next = Instant::now();
    let mut tx = Some(tx);
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(next.into()), if tx.is_some() => {
                if Instant::now() >= until {
                    // End the stream: the echo ends with its trailers.
                    tx = None;
                    continue;
                }
                next += every;
                *seq += 1;
                let msg = message("grpc", *seq);
                if let Some(sender) = tx.as_ref() {
                    if sender.send(grpc_frame(&msg)).await.is_err() {
                        anyhow::bail!("gRPC: the request stream was closed");
                    }
                }
                pending.sent.push_back((msg, Instant::now()));
                if pending.overdue(ctx) {
                    anyhow::bail!("gRPC: no echo within {} s", ctx.args.timeout);
                }
            }
            frame = tokio::time::timeout(ctx.timeout(), body.frame()) => {
                let frame = match frame {
                    Err(_) => anyhow::bail!("gRPC: nothing received for {} s", ctx.args.timeout),
                    Ok(None) => anyhow::bail!("gRPC: the response ended without trailers"),
                    Ok(Some(Err(e))) => return Err(anyhow::Error::new(e).context("gRPC: response stream")),
                    Ok(Some(Ok(frame))) => frame,
                };
                match frame.into_data() {
                    Ok(data) => {
                        buf.extend_from_slice(&data);
                        while buf.len() >= 5 {
                            let len = usize::try_from(u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]))
                                .unwrap_or(usize::MAX);
                            if buf.len() < 5 + len {
                                break;
                            }
                            buf.advance(5);
                            let msg = buf.split_to(len);
                            pending.got(ctx, "grpc", &msg)?;
                        }
                    }
                    Err(frame) => {
                        let trailers = frame.into_trailers().ok().unwrap_or_default();
                        let status = trailers.get("grpc-status").map(|v| v.as_bytes().to_vec());
                        if status.as_deref() != Some(b"0") {
                            anyhow::bail!("gRPC: trailers with grpc-status {:?}", status.map(|s| String::from_utf8_lossy(&s).into_owned()));
                        }
                        if tx.is_some() {
                            anyhow::bail!("gRPC: the stream ended before the driver ended it");
                        }
                        if !pending.sent.is_empty() {
                            anyhow::bail!("gRPC: {} messages were not echoed", pending.sent.len());
                        }
                        return Ok(());
                    }
                }
            }
        }
    }
}

async fn ws_session(ctx: &Ctx, until: Instant, seq: &mut u64) -> anyhow::Result<()> {
    let (mut ws, response) = tokio::time::timeout(ctx.timeout(), async {
        let stream = TcpStream::connect(ctx.args.http)
            .await
            .with_context(|| format!("WebSocket: connecting to the proxy at {}", ctx.args.http))?;
        let _ = stream.set_nodelay(true);
        let url = format!("ws://{}/ws", ctx.args.authority);
        tokio_tungstenite::client_async(url, stream)
            .await
            .context("WebSocket handshake")
    })
    .await
    .context("WebSocket: the handshake timed out")??;
    drop(response);
    ctx.stats.opened("ws");
    let mut pending = Pending::new();
    let every = Duration::from_millis(ctx.args.message_every.max(1));
    let mut next = Instant::now();
    let mut closing = false;
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(next.into()), if !closing => {
                if Instant::now() >= until && pending.sent.is_empty() {
                    closing = true;
                    ws.close(None).await.context("WebSocket: sending the close")?;
                    continue;
                }
                next += every;
                if Instant::now() < until {
                    *seq += 1;
                    let msg = message("ws", *seq);
                    ws.send(Message::binary(msg.clone())).await.context("WebSocket: sending")?;
                    pending.sent.push_back((msg, Instant::now()));
                }
                if pending.overdue(ctx) {
                    anyhow::bail!("WebSocket: no echo within {} s", ctx.args.timeout);
                }
            }
            msg = tokio::time::timeout(ctx.timeout(), ws.next()) => {
                match msg {
                    Err(_) => anyhow::bail!("WebSocket: nothing received for {} s", ctx.args.timeout),
                    Ok(None) if closing => return Ok(()),
                    Ok(None) => anyhow::bail!("WebSocket: the connection ended before the driver closed it"),
                    Ok(Some(Err(e))) if closing => {
                        // After our close, the peer closing the TCP connection
                        // without its own close frame is not a data loss.
                        let _ = e;
                        return Ok(());
                    }
                    Ok(Some(Err(e))) => return Err(anyhow::Error::new(e).context("WebSocket: receiving")),
                    Ok(Some(Ok(Message::Binary(data)))) => pending.got(ctx, "ws", &data)?,
                    Ok(Some(Ok(Message::Close(_)))) if closing => return Ok(()),
                    Ok(Some(Ok(Message::Close(frame)))) => anyhow::bail!("WebSocket: closed by the peer: {frame:?}"),
                    Ok(Some(Ok(_))) => {}
                }
            }
        }
    }
}

async fn tcp_session(ctx: &Ctx, until: Instant, seq: &mut u64) -> anyhow::Result<()> {
    let mut stream = tokio::time::timeout(ctx.timeout(), TcpStream::connect(ctx.args.tcp))
        .await
        .context("TCP: connecting timed out")?
        .with_context(|| format!("TCP: connecting to the proxy at {}", ctx.args.tcp))?;
    let _ = stream.set_nodelay(true);
    ctx.stats.opened("tcp");
    let every = Duration::from_millis(ctx.args.message_every.max(1));
    let mut next = Instant::now();
    let mut buf = vec![0u8; 4096];
    while Instant::now() < until {
        tokio::time::sleep_until(next.into()).await;
        next += every;
        *seq += 1;
        let msg = message("tcp", *seq);
        let at = Instant::now();
        let mut got = 0;
        tokio::time::timeout(ctx.timeout(), async {
            stream.write_all(&msg).await.context("TCP: sending")?;
            while got < msg.len() {
                let n = stream
                    .read(&mut buf[got..msg.len()])
                    .await
                    .context("TCP: receiving")?;
                if n == 0 {
                    anyhow::bail!("TCP: the connection was closed by the peer");
                }
                got += n;
            }
            Ok(())
        })
        .await
        .with_context(|| format!("TCP: no echo within {} s", ctx.args.timeout))??;
        if buf[..msg.len()] != msg[..] {
            anyhow::bail!("TCP: echo corrupted");
        }
        ctx.stats.ok("tcp", at.elapsed());
    }
    // A clean end: our FIN, then the echo's.
    stream.shutdown().await.context("TCP: shutting down")?;
    let n = tokio::time::timeout(ctx.timeout(), stream.read(&mut buf))
        .await
        .context("TCP: the peer did not close")?
        .context("TCP: reading the close")?;
    if n != 0 {
        anyhow::bail!("TCP: {n} unexpected bytes after the last echo");
    }
    Ok(())
}
