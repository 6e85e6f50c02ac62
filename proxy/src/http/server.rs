//! Serves one detected HTTP connection with hyper, under the drain watch.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::body::ResponseBody;
use super::proxy::HttpProxy;
use crate::detect::{Malformed, Protocol};
use crate::svc::{ErrorKind, ProxyError};
use crate::transport::h2_guard::H2Guard;
use crate::transport::idle::Activity;
use crate::transport::metered::{Observed, Observer};
use outrigger_proxy_policy::config::Limits;
use outrigger_runtime::drain;

/// How long an HTTP/1 connection must have been quiet (no byte either
/// way, no request in flight) during a drain before it is closed: a
/// client in the middle of sending its next request is served (with
/// `Connection: close`) rather than cut.
pub const DRAIN_QUIET: Duration = Duration::from_secs(1);

/// Serves HTTP/1 or HTTP/2 on `io` until the client is done.
///
/// On drain, HTTP/1 answers the next request with `Connection: close` and
/// closes after it; a connection with no request in flight is closed once
/// it has been quiet for [`DRAIN_QUIET`] (never while a request is being
/// read). HTTP/2 sends GOAWAY and finishes its open streams. The drain's
/// deadline is the process's (the grace period, `limits.drain_timeout`).
/// Once `revoked` completes (a new config refuses the connection), HTTP/1
/// closes after the request in flight and HTTP/2 sends GOAWAY, both for
/// at most `limits.drain_timeout`: what is still open then (a long stream,
/// a slow download) is closed.
pub async fn serve<I>(
    io: I,
    proto: Protocol,
    svc: HttpProxy,
    limits: &Limits,
    drain: &drain::Watch,
    revoked: impl Future<Output = ()>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // Either ends the connection gracefully: in-flight requests finish, on
    // revocation within the drain timeout (a drain has its own deadline,
    // the process's, which reports what it cut).
    let stop = async {
        tokio::select! {
            _ = drain.signaled() => None,
            _ = revoked => Some(limits.drain_timeout),
        }
    };
    let peer = svc.ctx.peer;
    let recorder = svc.clone();
    let result = match proto {
        Protocol::Http2 => {
            let h2 = &limits.http2;
            let io = TokioIo::new(H2Guard::new(io, h2.max_control_frames_per_second, peer));
            let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .keep_alive_interval(Duration::from_secs(20))
                .keep_alive_timeout(Duration::from_secs(20))
                .max_header_list_size(limits.max_header_bytes as u32)
                .max_concurrent_streams(h2.max_concurrent_streams)
                .max_pending_accept_reset_streams(h2.max_pending_accept_reset_streams)
                .max_local_error_reset_streams(h2.max_local_error_reset_streams)
                .adaptive_window(true)
                .serve_connection(io, svc);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => r,
                deadline = stop => {
                    conn.as_mut().graceful_shutdown();
                    finish(conn, deadline, peer).await
                }
            }
        }
        _ => {
            // A connection accepted just as draining began still gets its
            // first request served (already read during detection), then closes.
            let draining = drain.is_draining();
            let turns = Turns::new();
            let io = TokioIo::new(Observed::new(io, turns.clone()));
            let svc = Closing::new(svc, drain.clone(), turns.clone());
            let in_flight = svc.in_flight.clone();
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .max_buf_size(limits.max_header_bytes)
                .max_headers(limits.max_header_count)
                .keep_alive(!draining)
                .serve_connection(io, svc)
                .with_upgrades();
            tokio::pin!(conn);
            if draining {
                conn.await
            } else {
                tokio::select! {
                r = conn.as_mut() => r,
                    deadline = stop => match deadline {
                        Some(_) => {
                            conn.as_mut().graceful_shutdown();
                            finish(conn, deadline, peer).await
                        }
                        // Drain: the next response says `Connection:
                        // close` (see `Closing`); a quiet connection is
                        // closed between requests.
                        None => tokio::select! {
                            r = conn.as_mut() => r,
                            _ = quiet(&turns, &in_flight, patience(limits)) => {
                                conn.as_mut().graceful_shutdown();
                                conn.await
                            }
                        },
                    }
                }
            }
        }
    };
    if let Err(e) = result {
        if let Some(status) = answered_by_hyper(proto, &e) {
            recorder.record_unreadable(status);
        }
        tracing::debug!(%peer, error = %e, "HTTP connection ended with an error");
    }
}

/// How long a drain waits, in silence, for the rest of a request head
/// that has begun to arrive: the header read timeout, after which hyper
/// drops the head anyway, but at most half of the grace period. It also
/// bounds bytes taken for a next head that were not one (a request body
/// read after its response).
fn patience(limits: &Limits) -> Duration {
    limits.header_read_timeout.min(limits.drain_timeout / 2)
}

/// Completes once the connection has had no request in flight, no part of
/// a next request received (or nothing more of it for `patience`), and no
/// byte either way for [`DRAIN_QUIET`].
async fn quiet(turns: &Turns, in_flight: &AtomicUsize, patience: Duration) {
    loop {
        turns.activity.idle_for(DRAIN_QUIET).await;
        let waited_enough = turns.activity.quiet_for() >= patience;
        if in_flight.load(Ordering::Acquire) == 0 && (!turns.arriving() || waited_enough) {
            return;
        }
        // A request in flight with nothing passing (a slow upstream), or
        // a next request's head coming slowly (bounded by the header read
        // timeout): look again later.
        tokio::time::sleep(DRAIN_QUIET).await;
    }
}

/// An HTTP/1 connection as its drain sees it: when a byte last passed
/// either way, and whether the client has sent bytes since the last
/// request was taken or answered, which are the start of its next one.
#[derive(Debug)]
struct Turns {
    activity: Arc<Activity>,
    /// Bytes received from the client.
    read: AtomicU64,
    /// `read` when a request was last taken or answered.
    settled: AtomicU64,
}

impl Turns {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            activity: Activity::new(),
            read: AtomicU64::new(0),
            settled: AtomicU64::new(0),
        })
    }

    /// A request was taken or answered: what the client has sent so far
    /// belongs to it.
    fn settle(&self) {
        self.settled
            .store(self.read.load(Ordering::Acquire), Ordering::Release);
    }

    /// Whether bytes have come from the client since: a next request on
    /// its way.
    fn arriving(&self) -> bool {
        self.read.load(Ordering::Acquire) != self.settled.load(Ordering::Acquire)
    }
}

impl Observer for Arc<Turns> {
    fn read(&self, n: usize) {
        self.activity.read(n);
        self.read.fetch_add(n as u64, Ordering::AcqRel);
    }

    fn written(&self, n: usize) {
        self.activity.written(n);
    }
}

/// An HTTP/1 connection's service: counts the requests in flight, and once
/// draining has begun marks each response `Connection: close`, so that
/// hyper closes the connection after writing it (not a switch of
/// protocols, nor a CONNECT tunnel, which end the HTTP exchange anyway).
#[derive(Clone)]
struct Closing {
    inner: HttpProxy,
    drain: drain::Watch,
    in_flight: Arc<AtomicUsize>,
    turns: Arc<Turns>,
}

impl Closing {
    fn new(inner: HttpProxy, drain: drain::Watch, turns: Arc<Turns>) -> Self {
        Self {
            inner,
            drain,
            in_flight: Arc::default(),
            turns,
        }
    }
}

impl hyper::service::Service<Request<Incoming>> for Closing {
    type Response = Response<ResponseBody>;
    type Error = std::convert::Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let connect = req.method() == http::Method::CONNECT;
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.turns.settle();
        let in_flight = self.in_flight.clone();
        let turns = self.turns.clone();
        let drain = self.drain.clone();
        let answer = self.inner.call(req);
        Box::pin(async move {
            let mut resp = answer.await?;
            turns.settle();
            in_flight.fetch_sub(1, Ordering::AcqRel);
            let tunnel =
                resp.status().is_informational() || (connect && resp.status().is_success());
            if drain.is_draining() && !tunnel {
                resp.headers_mut().insert(
                    http::header::CONNECTION,
                    http::HeaderValue::from_static("close"),
                );
            }
            Ok(resp)
        })
    }
}

/// The status hyper answered an HTTP/1 request it could not read with
/// (its own reply, written before the connection ended with `e`): the
/// parse errors hyper's server answers (a bad method, header, URI or
/// version: 400; a head too large: 431; a URI too long: 414), and no
/// other (an HTTP/2 preface mid-connection, an internal error: no reply).
fn answered_by_hyper(proto: Protocol, e: &hyper::Error) -> Option<http::StatusCode> {
    use http::StatusCode;
    if proto == Protocol::Http2 || !e.is_parse() || e.is_parse_status() || e.is_parse_version_h2() {
        return None;
    }
    let text = e.to_string();
    if e.is_parse_too_large() {
        return Some(if text.contains("URI too long") {
            StatusCode::URI_TOO_LONG
        } else {
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        });
    }
    // The rest (method, header, URI, version) hyper answers 400, but for
    // its internal error, which has no predicate of its own.
    (!text.contains("internal error")).then_some(StatusCode::BAD_REQUEST)
}

/// How long a refused connection is read (and the bytes dropped) after
/// its answer, and how much of it: closing a socket with unread bytes
/// resets it, and a reset can destroy the answer before the client reads it.
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 64 * 1024;

/// Answers a client whose first bytes on a port declared HTTP are no HTTP
/// request (`why`): 400 with `Connection: close` and the proxy's error
/// headers (flag `DPE`), then the connection closed, and the request
/// recorded as one that could not be read. Nothing is forwarded.
pub async fn refuse_malformed<I>(mut io: I, svc: &HttpProxy, why: Malformed)
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    tracing::debug!(peer = %svc.ctx.peer, reason = %why, "refused: not HTTP on an HTTP port");
    let message = why.to_string();
    let resp =
        ProxyError::new(ErrorKind::BadRequest, message.clone()).to_response(http::Version::HTTP_11);
    let body = format!("{message}\n");
    let mut answer = format!("HTTP/1.1 {}\r\n", resp.status()).into_bytes();
    for (name, value) in resp.headers() {
        answer.extend_from_slice(name.as_str().as_bytes());
        answer.extend_from_slice(b": ");
        answer.extend_from_slice(value.as_bytes());
        answer.extend_from_slice(b"\r\n");
    }
    answer.extend_from_slice(format!("content-length: {}\r\n\r\n{body}", body.len()).as_bytes());
    let answered = async {
        io.write_all(&answer).await?;
        io.shutdown().await
    };
    if answered.await.is_ok() {
        let mut sink = [0u8; 4096];
        let mut left = LINGER_BYTES;
        let _ = tokio::time::timeout(LINGER, async {
            while left > 0 {
                match io.read(&mut sink).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => left = left.saturating_sub(n),
                }
            }
        })
        .await;
    }
    svc.record_unreadable(http::StatusCode::BAD_REQUEST);
}

/// A connection told to shut down gracefully, given `deadline` (if any) to
/// finish; dropped (closed) past it.
async fn finish<F, E>(
    conn: F,
    deadline: Option<Duration>,
    peer: std::net::SocketAddr,
) -> Result<(), E>
where
    F: Future<Output = Result<(), E>>,
{
    let Some(deadline) = deadline else {
        return conn.await;
    };
    match tokio::time::timeout(deadline, conn).await {
        Ok(r) => r,
        Err(_) => {
            tracing::debug!(%peer, ?deadline, "still busy at the shutdown deadline; closing");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::time::Instant;

    const PATIENCE: Duration = Duration::from_secs(60);

    #[tokio::test(start_paused = true)]
    async fn a_drain_waits_for_a_request_whose_head_is_arriving() {
        let turns = Turns::new();
        let in_flight = AtomicUsize::new(0);
        let (mut client, io) = tokio::io::duplex(64);
        let mut io = Observed::new(io, turns.clone());
        let mut buf = [0u8; 64];

        // Nothing received: quiet after DRAIN_QUIET.
        let start = Instant::now();
        quiet(&turns, &in_flight, PATIENCE).await;
        assert_eq!(start.elapsed(), DRAIN_QUIET);

        // Half a head, then a slow client: never quiet while it arrives.
        client.write_all(b"GET / HT").await.unwrap();
        assert_eq!(io.read(&mut buf).await.unwrap(), 8);
        assert!(turns.arriving());
        let wait = quiet(&turns, &in_flight, PATIENCE);
        tokio::pin!(wait);
        let long = Duration::from_secs(30);
        assert!(tokio::time::timeout(long, &mut wait).await.is_err());

        // The request is taken (and answered): quiet at the next look.
        turns.settle();
        assert!(!turns.arriving());
        let start = Instant::now();
        wait.await;
        assert!(start.elapsed() <= DRAIN_QUIET, "{:?}", start.elapsed());

        // Bytes that began no request (or a head never finished): quiet
        // once silent for the patience, not before.
        client.write_all(b"rest of a body").await.unwrap();
        assert!(io.read(&mut buf).await.unwrap() > 0);
        let start = Instant::now();
        quiet(&turns, &in_flight, PATIENCE).await;
        assert!(start.elapsed() >= PATIENCE, "{:?}", start.elapsed());
        assert!(
            start.elapsed() <= PATIENCE + DRAIN_QUIET,
            "{:?}",
            start.elapsed()
        );

        // A request in flight is never quiet, however silent.
        in_flight.store(1, Ordering::Release);
        assert!(
            tokio::time::timeout(long, quiet(&turns, &in_flight, PATIENCE))
                .await
                .is_err()
        );
    }
}
