//! Connections to upstreams, pooled per endpoint address.
//!
//! HTTP/2 (every meshed endpoint, and HTTP/2 apps): one multiplexed connection
//! per endpoint, reopened when it closes. HTTP/1: a stack of idle keep-alive
//! connections per endpoint; a connection goes back on the stack once its
//! response has been read to the end. Upgrades (WebSocket, CONNECT) get a
//! dedicated HTTP/1 connection that is never pooled. A sweeper drops idle
//! HTTP/1 connections past `idle_timeout` and forgets closed HTTP/2 ones.
//!
//! A request is sent again on a new connection only when hyper hands it back
//! unsent (a pooled connection that had just closed, an HTTP/2 connection
//! going away); a request that was written, even partly, is never replayed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

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

/// The one HTTP/2 connection to an endpoint. The async lock makes concurrent
/// first requests share a single connect, and a failed connect fail every
/// request that was already waiting for it instead of retrying in turn.
type H2Slot = Arc<tokio::sync::Mutex<H2State>>;

#[derive(Default)]
enum H2State {
    #[default]
    Empty,
    Ready(http2::SendRequest<Body>),
    Failed {
        at: Instant,
        kind: std::io::ErrorKind,
        message: String,
    },
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
    ) -> Result<Response<Incoming>, ClientError> {
        let key = self.key(addr, tls);
        match proto {
            UpstreamProto::Http1 => self.send_h1(key, req).await,
            UpstreamProto::Http2 => self.send_h2(key, req).await,
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
    ) -> Result<Response<Incoming>, ClientError> {
        let addr = key.0;
        let slot = {
            let mut map = self.inner.h2.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(key.clone()).or_default().clone()
        };
        let mut req = req;
        // The second round only happens when the connection went away before
        // the request was sent (GOAWAY, close): then it gets one fresh connection.
        for _ in 0..2 {
            let mut sender = self.h2_sender(&key, &slot).await?;
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok(resp),
                Err(mut e) => match e.take_message() {
                    Some(unsent) => {
                        req = unsent;
                        let mut state = slot.lock().await;
                        if matches!(&*state, H2State::Ready(s) if s.is_closed()) {
                            *state = H2State::Empty;
                        }
                    }
                    None => {
                        return Err(ClientError::Http {
                            addr,
                            source: e.into_error(),
                        })
                    }
                },
            }
        }
        let mut sender = self.h2_sender(&key, &slot).await?;
        sender
            .send_request(req)
            .await
            .map_err(|source| ClientError::Http { addr, source })
    }

    async fn h2_sender(
        &self,
        key: &PeerKey,
        slot: &H2Slot,
    ) -> Result<http2::SendRequest<Body>, ClientError> {
        let addr = key.0;
        let asked = Instant::now();
        let mut state = slot.lock().await;
        match &*state {
            H2State::Ready(s) if !s.is_closed() => return Ok(s.clone()),
            // A connect that failed while we waited for the lock fails us too.
            H2State::Failed { at, kind, message } if *at >= asked => {
                return Err(ClientError::Connect {
                    addr,
                    source: std::io::Error::new(*kind, message.clone()),
                })
            }
            _ => {}
        }
        match self.connect_h2(key).await {
            Ok(s) => {
                *state = H2State::Ready(s.clone());
                Ok(s)
            }
            Err(e) => {
                let kind = match &e {
                    ClientError::Connect { source, .. } => source.kind(),
                    _ => std::io::ErrorKind::Other,
                };
                *state = H2State::Failed {
                    at: Instant::now(),
                    kind,
                    message: e.to_string(),
                };
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
            Ok(state) => matches!(&*state, H2State::Ready(s) if !s.is_closed()),
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
