//! Connections to upstreams, pooled per endpoint address.
//!
//! HTTP/2 (every meshed endpoint, and HTTP/2 apps): multiplexed connections
//! per endpoint, each carrying at most [`H2_STREAMS_PER_CONNECTION`] requests
//! at a time; a request that finds them all full opens another (up to
//! [`MAX_H2_CONNECTIONS_PER_ENDPOINT`]), so long-lived streams (uploads,
//! long polls, SSE, gRPC streams) never hold up other requests. A request
//! holds its stream until its response body ends. HTTP/1: a stack of idle keep-alive
//! connections per endpoint; a connection goes back on the stack once its
//! response has been read to the end. Upgrades (WebSocket, CONNECT) get a
//! dedicated HTTP/1 connection that is never pooled. A sweeper drops idle
//! HTTP/1 connections past `idle_timeout`, forgets closed HTTP/2 ones, and
//! closes extra HTTP/2 connections left unused for two sweeps.
//!
//! A request is sent again on a new connection only when hyper hands it back
//! unsent (a pooled connection that had just closed, an HTTP/2 connection
//! going away); a request that was written, even partly, is never replayed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::time::Instant;

use super::Body;
use crate::identity::{Alpn, Identity};
use crate::transport;
use crate::transport::tls::Io;
use outrigger_identity::SpiffeId;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UpstreamProto {
    Http1,
    Http2,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("HTTP handshake with {addr}: {source}")]
    Handshake {
        addr: SocketAddr,
        source: hyper::Error,
    },
    #[error("upstream {addr}: {source}")]
    Http {
        addr: SocketAddr,
        source: hyper::Error,
    },
}

/// Most idle HTTP/1 connections kept per endpoint.
const MAX_IDLE_PER_ENDPOINT: usize = 256;

/// A pooled destination: the endpoint's address and, for a meshed endpoint
/// reached over mutual TLS, the identity it must prove.
type PeerKey = (SocketAddr, Option<Arc<SpiffeId>>);

/// Idle HTTP/1 connections to one endpoint, with when each went idle.
type IdleStack = Vec<(http1::SendRequest<Body>, Instant)>;

/// Requests one HTTP/2 connection carries at a time before another is
/// opened: below what servers commonly allow (hyper and the proxy's own
/// inbound side 200, nginx 128, Go 250), so the peer's limit is not what
/// holds a request back.
pub const H2_STREAMS_PER_CONNECTION: usize = 100;

/// HTTP/2 connections kept per endpoint; past them, requests share the
/// least busy one (the pool limits of a DestinationRule bound them first).
pub const MAX_H2_CONNECTIONS_PER_ENDPOINT: usize = 64;

/// The HTTP/2 connections to an endpoint. The async lock makes concurrent
/// requests that need a new connection share a single connect, and a failed
/// connect fail every request that was already waiting for it instead of
/// retrying in turn.
type H2Slot = Arc<tokio::sync::Mutex<H2Pool>>;

#[derive(Default)]
struct H2Pool {
    conns: Vec<H2Conn>,
    failed: Option<Failed>,
}

struct Failed {
    at: Instant,
    kind: std::io::ErrorKind,
    message: String,
}

struct H2Conn {
    sender: http2::SendRequest<Body>,
    /// Requests in flight on it (each holds a [`Stream`]).
    streams: Arc<AtomicUsize>,
    /// Sweeps in a row that found it unused.
    idle_sweeps: u8,
}

impl H2Pool {
    /// A connection with a free stream: the first open one that has room
    /// (filling connections in order keeps the spare ones idle, so that
    /// the sweeper can close them), or, when all are full and no more may
    /// be opened, the least busy.
    fn pick(&mut self) -> Option<(http2::SendRequest<Body>, Stream)> {
        self.conns.retain(|c| !c.sender.is_closed());
        let room = self
            .conns
            .iter()
            .position(|c| c.streams.load(Ordering::Relaxed) < H2_STREAMS_PER_CONNECTION);
        let i = match room {
            Some(i) => i,
            None if self.conns.len() < MAX_H2_CONNECTIONS_PER_ENDPOINT => return None,
            None => (0..self.conns.len())
                .min_by_key(|&i| self.conns[i].streams.load(Ordering::Relaxed))?,
        };
        let c = &self.conns[i];
        Some((c.sender.clone(), Stream::new(c.streams.clone())))
    }

    fn add(&mut self, sender: http2::SendRequest<Body>) -> (http2::SendRequest<Body>, Stream) {
        let streams = Arc::new(AtomicUsize::new(0));
        let stream = Stream::new(streams.clone());
        self.conns.push(H2Conn {
            sender: sender.clone(),
            streams,
            idle_sweeps: 0,
        });
        (sender, stream)
    }

    /// Forgets closed connections, and closes all but the first once they
    /// have been unused for two sweeps. Whether anything is left.
    fn sweep(&mut self) -> bool {
        self.conns.retain(|c| !c.sender.is_closed());
        for c in &mut self.conns {
            if c.streams.load(Ordering::Relaxed) == 0 {
                c.idle_sweeps = c.idle_sweeps.saturating_add(1);
            } else {
                c.idle_sweeps = 0;
            }
        }
        let mut first = true;
        self.conns.retain(|c| {
            let keep = first || c.idle_sweeps < 2;
            first = false;
            keep
        });
        !self.conns.is_empty()
    }
}

/// One request's stream on an HTTP/2 connection, counted until dropped.
struct Stream(Arc<AtomicUsize>);

impl Stream {
    fn new(streams: Arc<AtomicUsize>) -> Self {
        streams.fetch_add(1, Ordering::Relaxed);
        Self(streams)
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

pub struct ClientSettings {
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_header_bytes: usize,
    /// This proxy's identity: with one, connections to meshed endpoints
    /// with an identity are mutual TLS, verifying that identity.
    pub identity: Option<Arc<Identity>>,
}

struct Inner {
    settings: ClientSettings,
    h1_idle: Mutex<HashMap<PeerKey, IdleStack>>,
    h2: Mutex<HashMap<PeerKey, H2Slot>>,
}

impl Client {
    /// Must be called within a tokio runtime: it starts the idle sweeper,
    /// which ends when the last clone of the client is dropped.
    pub fn new(settings: ClientSettings) -> Self {
        let inner = Arc::new(Inner {
            settings,
            h1_idle: Mutex::default(),
            h2: Mutex::default(),
        });
        tokio::spawn(sweep(Arc::downgrade(&inner)));
        Self { inner }
    }

    /// Sends `req` to `addr`; over mutual TLS when `tls` names the
    /// identity the endpoint must prove and this proxy has one itself.
    pub async fn send(
        &self,
        addr: SocketAddr,
        tls: Option<&Arc<SpiffeId>>,
        proto: UpstreamProto,
        req: Request<Body>,
    ) -> Result<Response<Body>, ClientError> {
        let key = self.key(addr, tls);
        match proto {
            UpstreamProto::Http1 => Ok(self
                .send_h1(key, req)
                .await?
                .map(|b| b.map_err(Into::into).boxed_unsync())),
            UpstreamProto::Http2 => {
                let (resp, stream) = self.send_h2(key, req).await?;
                // The stream stays counted until the response body is
                // done with (read to its end, or dropped).
                Ok(resp.map(|b| {
                    b.map_err(move |e| {
                        let _held = &stream;
                        e.into()
                    })
                    .boxed_unsync()
                }))
            }
        }
    }

    /// Whether a hop to an endpoint with this identity is mutual TLS.
    pub fn uses_tls(&self, tls: Option<&Arc<SpiffeId>>) -> bool {
        tls.is_some() && self.inner.settings.identity.is_some()
    }

    /// The pool key: the identity counts only when TLS will be used.
    fn key(&self, addr: SocketAddr, tls: Option<&Arc<SpiffeId>>) -> PeerKey {
        let tls = tls.filter(|_| self.inner.settings.identity.is_some());
        (addr, tls.cloned())
    }

    /// Sends an upgrade or CONNECT request on a fresh HTTP/1 connection that
    /// can be taken over with `hyper::upgrade::on` on the response.
    pub async fn send_upgrade(
        &self,
        addr: SocketAddr,
        tls: Option<&Arc<SpiffeId>>,
        req: Request<Body>,
    ) -> Result<Response<Incoming>, ClientError> {
        let key = self.key(addr, tls);
        let mut sender = self.connect_h1(&key, true).await?;
        sender
            .send_request(req)
            .await
            .map_err(|source| ClientError::Http { addr, source })
    }

    /// A connection to the key's endpoint: plain, or mesh TLS offering `alpn`.
    async fn connect(&self, key: &PeerKey, alpn: Alpn) -> Result<Io, ClientError> {
        let addr = key.0;
        let tcp = transport::connect(addr, self.inner.settings.connect_timeout)
            .await
            .map_err(|source| ClientError::Connect { addr, source })?;
        match (&key.1, &self.inner.settings.identity) {
            (Some(peer), Some(identity)) => identity
                .connect_peer(tcp, peer, alpn)
                .await
                .map_err(|source| ClientError::Connect { addr, source }),
            _ => Ok(Io::Plain(tcp)),
        }
    }

    async fn send_h1(
        &self,
        key: PeerKey,
        req: Request<Body>,
    ) -> Result<Response<Incoming>, ClientError> {
        let addr = key.0;
        let mut req = req;
        while let Some(mut sender) = self.take_idle_h1(&key) {
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    self.return_when_ready(key, sender);
                    return Ok(resp);
                }
                Err(mut e) => match e.take_message() {
                    Some(unsent) => req = unsent,
                    None => {
                        return Err(ClientError::Http {
                            addr,
                            source: e.into_error(),
                        })
                    }
                },
            }
        }
        let mut sender = self.connect_h1(&key, false).await?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|source| ClientError::Http { addr, source })?;
        self.return_when_ready(key, sender);
        Ok(resp)
    }

    /// A new HTTP/1 connection; with `upgrades`, one that can be taken over
    /// after a 101 or a CONNECT's 2xx.
    async fn connect_h1(
        &self,
        key: &PeerKey,
        upgrades: bool,
    ) -> Result<http1::SendRequest<Body>, ClientError> {
        let addr = key.0;
        let stream = self.connect(key, Alpn::Http1).await?;
        let (sender, conn) = http1::Builder::new()
            .max_buf_size(self.inner.settings.max_header_bytes.max(8192))
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|source| ClientError::Handshake { addr, source })?;
        tokio::spawn(async move {
            let ended = if upgrades {
                conn.with_upgrades().await
            } else {
                conn.await
            };
            if let Err(e) = ended {
                tracing::debug!(%addr, error = %e, "HTTP/1 upstream connection ended");
            }
        });
        Ok(sender)
    }

    fn take_idle_h1(&self, key: &PeerKey) -> Option<http1::SendRequest<Body>> {
        let mut idle = self.inner.h1_idle.lock().unwrap_or_else(|p| p.into_inner());
        let stack = idle.get_mut(key)?;
        while let Some((sender, since)) = stack.pop() {
            if sender.is_ready() && since.elapsed() < self.inner.settings.idle_timeout {
                return Some(sender);
            }
        }
        None
    }

    /// Puts the connection back on the idle stack once its response has been
    /// read to the end (the connection is then ready for another request).
    fn return_when_ready(&self, key: PeerKey, mut sender: http1::SendRequest<Body>) {
        let inner = self.inner.clone();
        tokio::spawn(async move {
            if sender.ready().await.is_err() {
                return;
            }
            let mut idle = inner.h1_idle.lock().unwrap_or_else(|p| p.into_inner());
            let stack = idle.entry(key).or_default();
            if stack.len() < MAX_IDLE_PER_ENDPOINT {
                stack.push((sender, Instant::now()));
            }
        });
    }

    async fn send_h2(
        &self,
        key: PeerKey,
        req: Request<Body>,
    ) -> Result<(Response<Incoming>, Stream), ClientError> {
        let addr = key.0;
        let slot = {
            let mut map = self.inner.h2.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(key.clone()).or_default().clone()
        };
        let mut req = req;
        // The second round only happens when the connection went away before
        // the request was sent (GOAWAY, close): then it gets one fresh connection.
        for _ in 0..2 {
            let (mut sender, stream) = self.h2_sender(&key, &slot).await?;
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok((resp, stream)),
                Err(mut e) => match e.take_message() {
                    Some(unsent) => req = unsent,
                    None => {
                        return Err(ClientError::Http {
                            addr,
                            source: e.into_error(),
                        })
                    }
                },
            }
        }
        let (mut sender, stream) = self.h2_sender(&key, &slot).await?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|source| ClientError::Http { addr, source })?;
        Ok((resp, stream))
    }

    /// A connection with room for one more stream: an open one, or a new one.
    async fn h2_sender(
        &self,
        key: &PeerKey,
        slot: &H2Slot,
    ) -> Result<(http2::SendRequest<Body>, Stream), ClientError> {
        let addr = key.0;
        let asked = Instant::now();
        let mut pool = slot.lock().await;
        if let Some(picked) = pool.pick() {
            return Ok(picked);
        }
        // A connect that failed while we waited for the lock fails us too.
        if let Some(f) = pool.failed.as_ref().filter(|f| f.at >= asked) {
            return Err(ClientError::Connect {
                addr,
                source: std::io::Error::new(f.kind, f.message.clone()),
            });
        }
        match self.connect_h2(key).await {
            Ok(s) => {
                pool.failed = None;
                Ok(pool.add(s))
            }
            Err(e) => {
                let kind = match &e {
                    ClientError::Connect { source, .. } => source.kind(),
                    _ => std::io::ErrorKind::Other,
                };
                pool.failed = Some(Failed {
                    at: Instant::now(),
                    kind,
                    message: e.to_string(),
                });
                Err(e)
            }
        }
    }

    async fn connect_h2(&self, key: &PeerKey) -> Result<http2::SendRequest<Body>, ClientError> {
        let addr = key.0;
        let stream = self.connect(key, Alpn::H2).await?;
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .adaptive_window(true)
            .max_header_list_size(self.inner.settings.max_header_bytes as u32)
            .keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(10))
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|source| ClientError::Handshake { addr, source })?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%addr, error = %e, "HTTP/2 upstream connection ended");
            }
        });
        Ok(sender)
    }
}

/// Every half idle-timeout (at most every 5 s): closes idle HTTP/1
/// connections past the timeout, and forgets endpoints with nothing pooled,
/// so the maps do not grow with every address ever dialed.
async fn sweep(inner: Weak<Inner>) {
    let period = match inner.upgrade() {
        Some(i) => {
            (i.settings.idle_timeout / 2).clamp(Duration::from_millis(50), Duration::from_secs(5))
        }
        None => return,
    };
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        let timeout = inner.settings.idle_timeout;
        {
            let mut idle = inner.h1_idle.lock().unwrap_or_else(|p| p.into_inner());
            idle.retain(|_, stack| {
                stack.retain(|(s, since)| s.is_ready() && since.elapsed() < timeout);
                !stack.is_empty()
            });
        }
        let mut h2 = inner.h2.lock().unwrap_or_else(|p| p.into_inner());
        h2.retain(|_, slot| match slot.try_lock() {
            Ok(mut pool) => pool.sweep(),
            Err(_) => true, // in use right now
        });
    }
}

#[cfg(test)]
impl Client {
    fn pooled(&self) -> (usize, usize) {
        let h1 = self
            .inner
            .h1_idle
            .lock()
            .unwrap()
            .values()
            .map(Vec::len)
            .sum();
        let h2 = self.inner.h2.lock().unwrap().len();
        (h1, h2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::ResponseFlag;
    use http_body_util::BodyExt;

    async fn server(h2: bool) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conns = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = conns.clone();
        tokio::spawn(async move {
            loop {
                let Ok((s, _)) = listener.accept().await else {
                    return;
                };
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(|_req| async {
                        Ok::<_, std::convert::Infallible>(Response::new(super::super::full("ok")))
                    });
                    if h2 {
                        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(s), svc)
                            .await;
                    } else {
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(s), svc)
                            .await;
                    }
                });
            }
        });
        (addr, conns)
    }

    fn client(idle: Duration) -> Client {
        Client::new(ClientSettings {
            connect_timeout: Duration::from_secs(1),
            idle_timeout: idle,
            max_header_bytes: 65536,
            identity: None,
        })
    }

    fn get() -> Request<Body> {
        Request::get("/")
            .header("host", "x")
            .body(super::super::full(""))
            .unwrap()
    }

    async fn roundtrip(c: &Client, addr: SocketAddr, proto: UpstreamProto) {
        let mut req = get();
        if proto == UpstreamProto::Http2 {
            *req.uri_mut() = format!("http://{addr}/").parse().unwrap();
            *req.version_mut() = http::Version::HTTP_2;
        }
        let resp = c.send(addr, None, proto, req).await.unwrap();
        assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "ok");
    }

    async fn until(mut f: impl FnMut() -> bool) {
        for _ in 0..500 {
            if f() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("condition never held");
    }

    #[tokio::test]
    async fn http1_connections_are_reused_then_swept_when_idle() {
        let (addr, conns) = server(false).await;
        let c = client(Duration::from_millis(200));
        for _ in 0..5 {
            roundtrip(&c, addr, UpstreamProto::Http1).await;
            until(|| c.pooled().0 == 1).await;
        }
        assert_eq!(
            conns.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "one connection, reused"
        );
        until(|| c.pooled().0 == 0).await;
        roundtrip(&c, addr, UpstreamProto::Http1).await;
        assert_eq!(
            conns.load(std::sync::atomic::Ordering::SeqCst),
            2,
            "a new one after the idle timeout"
        );
    }

    #[tokio::test]
    async fn http2_multiplexes_on_one_connection() {
        let (addr, conns) = server(true).await;
        let c = client(Duration::from_secs(10));
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let c = c.clone();
            tasks.push(tokio::spawn(async move {
                roundtrip(&c, addr, UpstreamProto::Http2).await
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(conns.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn long_streams_never_hold_up_other_requests_on_http2() {
        // A peer that allows 200 streams per connection, as hyper (and the
        // proxy's own inbound side) does, with 250 long requests open.
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conns = Arc::new(AtomicUsize::new(0));
        let (counted, held) = (conns.clone(), gate.clone());
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                let held = held.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let held = held.clone();
                        async move {
                            if req.uri().path() == "/slow" {
                                let _ = held.acquire().await;
                            }
                            Ok::<_, std::convert::Infallible>(Response::new(super::super::full(
                                "ok",
                            )))
                        }
                    });
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .max_concurrent_streams(200)
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        // Sweeps every 100 ms.
        let c = client(Duration::from_millis(200));
        let request = |path: &str| {
            let mut req = get();
            *req.uri_mut() = format!("http://{addr}{path}").parse().unwrap();
            *req.version_mut() = http::Version::HTTP_2;
            req
        };
        let mut slow = Vec::new();
        for _ in 0..250 {
            let (c, req) = (c.clone(), request("/slow"));
            slow.push(tokio::spawn(async move {
                c.send(addr, None, UpstreamProto::Http2, req).await
            }));
        }
        // Each long request holds its stream: three connections of 100.
        until(|| {
            let slot = c.inner.h2.lock().unwrap().values().next().cloned();
            slot.and_then(|s| {
                s.try_lock().ok().map(|p| {
                    p.conns
                        .iter()
                        .map(|c| c.streams.load(Ordering::SeqCst))
                        .sum::<usize>()
                })
            }) == Some(250)
        })
        .await;
        assert_eq!(conns.load(Ordering::SeqCst), 3);
        // A short request is answered at once, beside them.
        let resp = tokio::time::timeout(
            Duration::from_secs(5),
            c.send(addr, None, UpstreamProto::Http2, request("/fast")),
        )
        .await
        .expect("not queued behind the long streams")
        .unwrap();
        assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "ok");
        gate.add_permits(250);
        for t in slow {
            let resp = t.await.unwrap().unwrap();
            assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "ok");
        }
        // Their streams are returned; the spare connections are closed by
        // the sweeper once unused, the first is kept.
        until(|| {
            let slot = c.inner.h2.lock().unwrap().values().next().cloned().unwrap();
            let n = slot.try_lock().map(|p| p.conns.len()).unwrap_or(0);
            n == 1
        })
        .await;
    }

    #[tokio::test]
    async fn a_failed_http2_connect_fails_its_requests_and_is_forgotten() {
        let dead = {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            l.local_addr().unwrap()
        };
        let c = client(Duration::from_secs(10));
        let mut tasks = Vec::new();
        for _ in 0..10 {
            let c = c.clone();
            tasks.push(tokio::spawn(async move {
                let mut req = get();
                *req.version_mut() = http::Version::HTTP_2;
                c.send(dead, None, UpstreamProto::Http2, req)
                    .await
                    .unwrap_err()
            }));
        }
        for t in tasks {
            let err = crate::http::error::ProxyError::from(t.await.unwrap());
            assert_eq!(err.kind.flag(), ResponseFlag::UpstreamConnectFailure);
        }
        // The failed slot is forgotten by the sweeper.
        until(|| c.pooled().1 == 0).await;
    }
}
