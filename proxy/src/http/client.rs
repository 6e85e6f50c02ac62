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
//! HTTP/1 connections past `idle_timeout` and forgets closed HTTP/2 ones.
//!
//! A request is sent again on a new connection only when hyper hands it back
//! unsent (a pooled connection that had just closed, an HTTP/2 connection
//! going away); a request that was written, even partly, is never replayed.
//!
//! Each request carries its destination's [`ConnSettings`] (DestinationRule
//! `connectionPool`): connect timeout, idle timeout and requests per
//! connection. Connections are pooled per endpoint and settings, so an edit
//! of the rule starts fresh connections and the old ones idle out.

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

use crate::identity::{Alpn, Identity};
use crate::svc::{Body, ConnectWait, ErrorKind, ProxyError, UpstreamProto};
use crate::transport;
use crate::transport::tls::Io;
use outrigger_identity::SpiffeId;
use outrigger_proxy_policy::pool::ConnSettings;

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

/// A pooled destination: the endpoint's address, for a meshed endpoint
/// reached over mutual TLS the identity it must prove, and the settings
/// its connections were opened with.
type PeerKey = (SocketAddr, Option<Arc<SpiffeId>>, ConnSettings);

/// Idle HTTP/1 connections to one endpoint, with when each went idle and
/// how many requests it has carried.
type IdleStack = Vec<(http1::SendRequest<Body>, Instant, u32)>;

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
    /// Requests it has carried (`maxRequestsPerConnection`).
    sent: u32,
    /// When it was last given a request (its idleness, for the idle timeout).
    last: Instant,
    /// When it was opened.
    opened: Instant,
}

/// A stream on an HTTP/2 connection, and when that connection was opened.
type Picked = (http2::SendRequest<Body>, Stream, Instant);

impl H2Pool {
    /// A connection with a free stream: the first open one that has room
    /// (filling connections in order keeps the spare ones idle, so that
    /// the sweeper can close them), or, when all are full and no more may
    /// be opened, the least busy. A connection idle past `idle` is dropped
    /// first (the requests it still carries finish on it).
    fn pick(&mut self, key: &PeerKey, idle: Option<Duration>) -> Option<Picked> {
        self.conns
            .retain(|c| !c.sender.is_closed() && !idled_out(c.last, idle));
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
        Some(self.take(i, key))
    }

    fn add(&mut self, key: &PeerKey, sender: http2::SendRequest<Body>) -> Picked {
        let now = Instant::now();
        self.conns.push(H2Conn {
            sender,
            streams: Arc::new(AtomicUsize::new(0)),
            idle_sweeps: 0,
            sent: 0,
            last: now,
            opened: now,
        });
        self.take(self.conns.len() - 1, key)
    }

    /// One more request on connection `i`. A connection given its last
    /// request (`maxRequestsPerConnection`) leaves the pool: it closes once
    /// its streams finish, and the next request opens another.
    fn take(&mut self, i: usize, key: &PeerKey) -> Picked {
        let c = &mut self.conns[i];
        c.sent += 1;
        c.last = Instant::now();
        let picked = (c.sender.clone(), Stream::new(c.streams.clone()), c.opened);
        if !key.2.reusable(c.sent) {
            self.conns.remove(i);
        }
        picked
    }

    /// Forgets closed connections and ones idle past `idle`, and closes all
    /// but the first once two sweeps in a row (`period` apart) found them
    /// with no stream open and no request given since the sweep before.
    /// Whether anything is left.
    fn sweep(&mut self, idle: Option<Duration>, period: Duration) -> bool {
        self.conns
            .retain(|c| !c.sender.is_closed() && !idled_out(c.last, idle));
        for c in &mut self.conns {
            if c.streams.load(Ordering::Relaxed) == 0 && c.last.elapsed() >= period {
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
        conn: ConnSettings,
        proto: UpstreamProto,
        req: Request<Body>,
    ) -> Result<Response<Body>, ClientError> {
        let key = self.key(addr, tls, conn);
        let (mut resp, waited) = match proto {
            UpstreamProto::Http1 => {
                let (resp, waited) = self.send_h1(key, req).await?;
                (resp.map(|b| b.map_err(Into::into).boxed_unsync()), waited)
            }
            UpstreamProto::Http2 => {
                let (resp, stream, waited) = self.send_h2(key, req).await?;
                // The stream stays counted until the response body is
                // done with (read to its end, or dropped).
                let resp = resp.map(|b| {
                    b.map_err(move |e| {
                        let _held = &stream;
                        e.into()
                    })
                    .boxed_unsync()
                });
                (resp, waited)
            }
        };
        if let Some(waited) = waited {
            resp.extensions_mut().insert(ConnectWait(waited));
        }
        Ok(resp)
    }

    /// Whether a hop to an endpoint with this identity is mutual TLS.
    pub fn uses_tls(&self, tls: Option<&Arc<SpiffeId>>) -> bool {
        tls.is_some() && self.inner.settings.identity.is_some()
    }

    /// The pool key: the identity counts only when TLS will be used.
    fn key(&self, addr: SocketAddr, tls: Option<&Arc<SpiffeId>>, conn: ConnSettings) -> PeerKey {
        let tls = tls.filter(|_| self.inner.settings.identity.is_some());
        (addr, tls.cloned(), conn)
    }

    /// Sends an upgrade or CONNECT request on a fresh HTTP/1 connection that
    /// can be taken over with `hyper::upgrade::on` on the response.
    pub async fn send_upgrade(
        &self,
        addr: SocketAddr,
        tls: Option<&Arc<SpiffeId>>,
        conn: ConnSettings,
        req: Request<Body>,
    ) -> Result<Response<Incoming>, ClientError> {
        let key = self.key(addr, tls, conn);
        let asked = Instant::now();
        let mut sender = self.connect_h1(&key, true).await?;
        let waited = asked.elapsed();
        let mut resp = sender
            .send_request(req)
            .await
            .map_err(|source| ClientError::Http { addr, source })?;
        resp.extensions_mut().insert(ConnectWait(waited));
        Ok(resp)
    }

    /// A connection to the key's endpoint: plain, or mesh TLS offering `alpn`.
    async fn connect(&self, key: &PeerKey, alpn: Alpn) -> Result<Io, ClientError> {
        let addr = key.0;
        let timeout = key
            .2
            .connect_timeout
            .unwrap_or(self.inner.settings.connect_timeout);
        let tcp = transport::connect(addr, timeout)
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

    /// The response, and how long the request waited for a new connection
    /// when it needed one.
    async fn send_h1(
        &self,
        key: PeerKey,
        req: Request<Body>,
    ) -> Result<(Response<Incoming>, Option<Duration>), ClientError> {
        let addr = key.0;
        let mut req = req;
        while let Some((mut sender, sent)) = self.take_idle_h1(&key) {
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    self.return_when_ready(key, sender, sent + 1);
                    return Ok((resp, None));
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
        let asked = Instant::now();
        let mut sender = self.connect_h1(&key, false).await?;
        let waited = asked.elapsed();
        let resp = sender
            .send_request(req)
            .await
            .map_err(|source| ClientError::Http { addr, source })?;
        self.return_when_ready(key, sender, 1);
        Ok((resp, Some(waited)))
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

    /// An idle connection and the requests it has carried.
    fn take_idle_h1(&self, key: &PeerKey) -> Option<(http1::SendRequest<Body>, u32)> {
        let timeout = self.inner.idle_timeout(key);
        let mut idle = self.inner.h1_idle.lock().unwrap_or_else(|p| p.into_inner());
        let stack = idle.get_mut(key)?;
        while let Some((sender, since, sent)) = stack.pop() {
            if sender.is_ready() && !idled_out(since, timeout) {
                return Some((sender, sent));
            }
        }
        None
    }

    /// Puts the connection back on the idle stack once its response has been
    /// read to the end (the connection is then ready for another request),
    /// unless it has carried its last request (`maxRequestsPerConnection`):
    /// then it is dropped, which closes it.
    fn return_when_ready(&self, key: PeerKey, mut sender: http1::SendRequest<Body>, sent: u32) {
        let inner = self.inner.clone();
        tokio::spawn(async move {
            if sender.ready().await.is_err() || !key.2.reusable(sent) {
                return;
            }
            let mut idle = inner.h1_idle.lock().unwrap_or_else(|p| p.into_inner());
            let stack = idle.entry(key).or_default();
            if stack.len() < MAX_IDLE_PER_ENDPOINT {
                stack.push((sender, Instant::now(), sent));
            }
        });
    }

    /// The response, its stream, and how long the request waited for a new
    /// connection when it needed one.
    async fn send_h2(
        &self,
        key: PeerKey,
        req: Request<Body>,
    ) -> Result<(Response<Incoming>, Stream, Option<Duration>), ClientError> {
        let addr = key.0;
        let slot = {
            let mut map = self.inner.h2.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(key.clone()).or_default().clone()
        };
        let mut req = req;
        // The second round only happens when the connection went away before
        // the request was sent (GOAWAY, close): then it gets one fresh connection.
        for _ in 0..2 {
            let (mut sender, stream, waited) = self.h2_sender(&key, &slot).await?;
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok((resp, stream, waited)),
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
        let (mut sender, stream, waited) = self.h2_sender(&key, &slot).await?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|source| ClientError::Http { addr, source })?;
        Ok((resp, stream, waited))
    }

    /// A connection with room for one more stream: an open one, or a new
    /// one; and, when it was opened while this request waited (by this
    /// request or by another holding the lock), how long the request waited.
    async fn h2_sender(
        &self,
        key: &PeerKey,
        slot: &H2Slot,
    ) -> Result<(http2::SendRequest<Body>, Stream, Option<Duration>), ClientError> {
        let asked = Instant::now();
        let (sender, stream, opened) = self.h2_connection(key, slot, asked).await?;
        let waited = (opened >= asked).then(|| asked.elapsed());
        Ok((sender, stream, waited))
    }

    async fn h2_connection(
        &self,
        key: &PeerKey,
        slot: &H2Slot,
        asked: Instant,
    ) -> Result<Picked, ClientError> {
        let addr = key.0;
        let idle = self.inner.idle_timeout(key);
        let mut pool = slot.lock().await;
        if let Some(picked) = pool.pick(key, idle) {
            return Ok(picked);
        }
        // A connect that failed while we waited for the lock fails us too.
        if let Some(f) = pool.failed.as_ref().filter(|f| f.at >= asked) {
            return Err(ClientError::Connect {
                addr,
                source: std::io::Error::new(f.kind, f.message.clone()),
            });
        }
        // A connection is opened under the lock: requests arriving meanwhile
        // share it (and its failure) instead of each opening its own. But
        // where every connection carries one request
        // (`maxRequestsPerConnection: 1`) there is nothing to share: each
        // opens its own without the lock, so handshakes run side by side
        // and a slow one holds up only its own request.
        if key.2.max_requests_per_connection == 1 {
            drop(pool);
            let s = self.connect_h2(key).await?;
            return Ok(slot.lock().await.add(key, s));
        }
        match self.connect_h2(key).await {
            Ok(s) => {
                pool.failed = None;
                Ok(pool.add(key, s))
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

impl Inner {
    /// How long a connection of `key` may idle: its destination's idle
    /// timeout, else the client's; `None`: for ever.
    fn idle_timeout(&self, key: &PeerKey) -> Option<Duration> {
        Some(key.2.idle_timeout.unwrap_or(self.settings.idle_timeout)).filter(|t| !t.is_zero())
    }
}

/// Whether a connection idle since `since` is past `timeout`.
fn idled_out(since: Instant, timeout: Option<Duration>) -> bool {
    timeout.is_some_and(|t| since.elapsed() >= t)
}

/// Every half idle-timeout (at most every 5 s): closes idle HTTP/1
/// connections past their timeout, drops HTTP/2 connections that carried
/// no request for as long (their streams in flight finish first), and
/// forgets endpoints with nothing pooled, so the maps do not grow with
/// every address ever dialed.
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
        {
            let mut idle = inner.h1_idle.lock().unwrap_or_else(|p| p.into_inner());
            idle.retain(|key, stack| {
                let timeout = inner.idle_timeout(key);
                stack.retain(|(s, since, _)| s.is_ready() && !idled_out(*since, timeout));
                !stack.is_empty()
            });
        }
        let mut h2 = inner.h2.lock().unwrap_or_else(|p| p.into_inner());
        h2.retain(|key, slot| match slot.try_lock() {
            Ok(mut pool) => pool.sweep(inner.idle_timeout(key), period),
            Err(_) => true, // in use right now
        });
    }
}

impl From<ClientError> for ProxyError {
    fn from(e: ClientError) -> Self {
        let kind = match &e {
            ClientError::Connect { .. } | ClientError::Handshake { .. } => {
                ErrorKind::ConnectFailure
            }
            ClientError::Http { source, .. } if source.is_parse() => ErrorKind::ProtocolError,
            ClientError::Http { source, .. } if is_refused_stream(source) => {
                ErrorKind::RefusedStream
            }
            ClientError::Http { .. } => ErrorKind::Reset,
        };
        ProxyError::new(kind, e.to_string())
    }
}

/// Whether an HTTP/2 stream was refused (`REFUSED_STREAM`) by the server.
fn is_refused_stream(e: &hyper::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(h2) = err.downcast_ref::<h2::Error>() {
            return h2.reason() == Some(h2::Reason::REFUSED_STREAM);
        }
        source = err.source();
    }
    false
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

    type Count = Arc<std::sync::atomic::AtomicUsize>;

    async fn server(h2: bool) -> (SocketAddr, Count) {
        let (addr, accepted, _) = server_counting(h2).await;
        (addr, accepted)
    }

    /// A server answering "ok", with the connections it accepted and the
    /// ones that have closed since.
    async fn server_counting(h2: bool) -> (SocketAddr, Count, Count) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conns = Count::default();
        let closed = Count::default();
        let (counted, ended) = (conns.clone(), closed.clone());
        tokio::spawn(async move {
            loop {
                let Ok((s, _)) = listener.accept().await else {
                    return;
                };
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let ended = ended.clone();
                tokio::spawn(async move {
                    let _closed = Closed(ended);
                    let svc = hyper::service::service_fn(|_req| async {
                        Ok::<_, std::convert::Infallible>(Response::new(crate::svc::full("ok")))
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
        (addr, conns, closed)
    }

    /// Counts a served connection as closed when dropped.
    struct Closed(Count);

    impl Drop for Closed {
        fn drop(&mut self) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
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
            .body(crate::svc::full(""))
            .unwrap()
    }

    /// One request; how long it waited for a new connection, if it did.
    async fn roundtrip(c: &Client, addr: SocketAddr, proto: UpstreamProto) -> Option<ConnectWait> {
        roundtrip_with(c, addr, proto, ConnSettings::default()).await
    }

    async fn roundtrip_with(
        c: &Client,
        addr: SocketAddr,
        proto: UpstreamProto,
        conn: ConnSettings,
    ) -> Option<ConnectWait> {
        let mut req = get();
        if proto == UpstreamProto::Http2 {
            *req.uri_mut() = format!("http://{addr}/").parse().unwrap();
            *req.version_mut() = http::Version::HTTP_2;
        }
        let resp = c.send(addr, None, conn, proto, req).await.unwrap();
        let waited = resp.extensions().get::<ConnectWait>().copied();
        assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "ok");
        waited
    }

    #[tokio::test]
    async fn only_a_request_that_opened_its_connection_says_how_long_it_waited() {
        for (h2, proto) in [(false, UpstreamProto::Http1), (true, UpstreamProto::Http2)] {
            let (addr, conns) = server(h2).await;
            let c = client(Duration::from_secs(10));
            assert!(roundtrip(&c, addr, proto).await.is_some(), "{proto:?}");
            until(|| c.pooled() != (0, 0)).await;
            assert_eq!(roundtrip(&c, addr, proto).await, None, "{proto:?}");
            assert_eq!(conns.load(std::sync::atomic::Ordering::SeqCst), 1);
        }
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
                            Ok::<_, std::convert::Infallible>(Response::new(crate::svc::full("ok")))
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
                c.send(
                    addr,
                    None,
                    ConnSettings::default(),
                    UpstreamProto::Http2,
                    req,
                )
                .await
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
            c.send(
                addr,
                None,
                ConnSettings::default(),
                UpstreamProto::Http2,
                request("/fast"),
            ),
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
        // the sweeper once unused (the first stays until the idle timeout,
        // 200 ms here, closes it too).
        until(|| {
            let slot = c.inner.h2.lock().unwrap().values().next().cloned();
            slot.is_none_or(|s| s.try_lock().is_ok_and(|p| p.conns.len() <= 1))
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
                c.send(
                    dead,
                    None,
                    ConnSettings::default(),
                    UpstreamProto::Http2,
                    req,
                )
                .await
                .unwrap_err()
            }));
        }
        for t in tasks {
            let err = crate::svc::ProxyError::from(t.await.unwrap());
            assert_eq!(
                ResponseFlag::from(err.kind),
                ResponseFlag::UpstreamConnectFailure
            );
        }
        // The failed slot is forgotten by the sweeper.
        until(|| c.pooled().1 == 0).await;
    }

    fn accepted(conns: &std::sync::atomic::AtomicUsize) -> usize {
        conns.load(std::sync::atomic::Ordering::SeqCst)
    }

    #[tokio::test]
    async fn max_requests_per_connection_retires_connections() {
        for proto in [UpstreamProto::Http1, UpstreamProto::Http2] {
            for max in [1u32, 2] {
                let (addr, conns, closed) = server_counting(proto == UpstreamProto::Http2).await;
                let c = client(Duration::from_secs(10));
                let conn = ConnSettings {
                    max_requests_per_connection: max,
                    ..Default::default()
                };
                for sent in 1..=5u32 {
                    roundtrip_with(&c, addr, proto, conn).await;
                    // A connection that carried its last request closes;
                    // one with requests left is pooled for the next.
                    until(|| accepted(&closed) == (sent / max) as usize).await;
                    if proto == UpstreamProto::Http1 && sent % max != 0 {
                        until(|| c.pooled().0 == 1).await;
                    }
                }
                assert_eq!(
                    accepted(&conns),
                    5usize.div_ceil(max as usize),
                    "{proto:?}, {max} per connection"
                );
            }
        }
    }

    #[tokio::test]
    async fn a_destination_idle_timeout_replaces_the_clients() {
        for proto in [UpstreamProto::Http1, UpstreamProto::Http2] {
            let h2 = proto == UpstreamProto::Http2;
            // The client keeps idle connections for 10 s; this destination's
            // for 100 ms.
            let (addr, conns) = server(h2).await;
            let c = client(Duration::from_secs(10));
            let short = ConnSettings {
                idle_timeout: Some(Duration::from_millis(100)),
                ..Default::default()
            };
            roundtrip_with(&c, addr, proto, short).await;
            until(|| c.pooled() != (0, 0)).await;
            roundtrip_with(&c, addr, proto, short).await;
            assert_eq!(accepted(&conns), 1, "{proto:?}: reused while fresh");
            tokio::time::sleep(Duration::from_millis(300)).await;
            roundtrip_with(&c, addr, proto, short).await;
            assert_eq!(accepted(&conns), 2, "{proto:?}: a new one once idle");

            // `0s`: never closed for idleness, whatever the client's timeout.
            let (addr, conns) = server(h2).await;
            let c = client(Duration::from_millis(100));
            let never = ConnSettings {
                idle_timeout: Some(Duration::ZERO),
                ..Default::default()
            };
            roundtrip_with(&c, addr, proto, never).await;
            until(|| c.pooled() != (0, 0)).await;
            tokio::time::sleep(Duration::from_millis(300)).await;
            roundtrip_with(&c, addr, proto, never).await;
            assert_eq!(accepted(&conns), 1, "{proto:?}: kept");
        }
    }

    #[tokio::test]
    async fn http2_connections_idle_past_the_clients_timeout_are_dropped() {
        let (addr, conns) = server(true).await;
        let c = client(Duration::from_millis(100));
        roundtrip(&c, addr, UpstreamProto::Http2).await;
        assert_eq!(c.pooled().1, 1);
        until(|| c.pooled().1 == 0).await;
        roundtrip(&c, addr, UpstreamProto::Http2).await;
        assert_eq!(accepted(&conns), 2);
    }

    /// A listener whose accept queue is full: a connect to it hangs.
    fn unanswering() -> (SocketAddr, tokio::net::TcpListener, std::net::TcpStream) {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(0).unwrap();
        let addr = listener.local_addr().unwrap();
        // Linux queues backlog + 1 connections; this one fills the queue.
        let queued = std::net::TcpStream::connect(addr).unwrap();
        (addr, listener, queued)
    }

    #[tokio::test(start_paused = true)]
    async fn a_destination_connect_timeout_replaces_the_clients() {
        let (addr, _listener, _queued) = unanswering();
        let c = Client::new(ClientSettings {
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(10),
            max_header_bytes: 65536,
            identity: None,
        });
        let conn = ConnSettings {
            connect_timeout: Some(Duration::from_millis(250)),
            ..Default::default()
        };
        for proto in [UpstreamProto::Http1, UpstreamProto::Http2] {
            let start = Instant::now();
            let mut req = get();
            if proto == UpstreamProto::Http2 {
                *req.version_mut() = http::Version::HTTP_2;
            }
            let err = c.send(addr, None, conn, proto, req).await.unwrap_err();
            assert_eq!(start.elapsed(), Duration::from_millis(250), "{proto:?}");
            let err = crate::svc::ProxyError::from(err);
            assert_eq!(
                ResponseFlag::from(err.kind),
                ResponseFlag::UpstreamConnectFailure
            );
        }
    }
}
