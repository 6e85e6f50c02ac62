//! Connections to upstreams, pooled per endpoint address.
//!
//! HTTP/2 (every meshed endpoint, and HTTP/2 apps): one multiplexed connection
//! per endpoint, reopened when it closes. HTTP/1: a stack of idle keep-alive
//! connections per endpoint; a connection goes back on the stack once its
//! response has been read to the end. Upgrades (WebSocket, CONNECT) get a
//! dedicated HTTP/1 connection that is never pooled.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::time::Instant;

use super::Body;
use crate::metrics::ResponseFlag;
use crate::transport;

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

impl ClientError {
    /// The response flag for a request this error failed.
    pub fn flag(&self) -> ResponseFlag {
        match self {
            ClientError::Connect { .. } => ResponseFlag::UpstreamConnectFailure,
            ClientError::Handshake { .. } => ResponseFlag::UpstreamConnectFailure,
            ClientError::Http { source, .. } if source.is_parse() => {
                ResponseFlag::UpstreamProtocolError
            }
            ClientError::Http { .. } => ResponseFlag::UpstreamConnectionTermination,
        }
    }
}

/// Most idle HTTP/1 connections kept per endpoint.
const MAX_IDLE_PER_ENDPOINT: usize = 256;

#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

/// Idle HTTP/1 connections to one endpoint, with when each went idle.
type IdleStack = Vec<(http1::SendRequest<Body>, Instant)>;

/// The one HTTP/2 connection to an endpoint; the async lock makes concurrent
/// first requests share a single connect.
type H2Slot = Arc<tokio::sync::Mutex<Option<http2::SendRequest<Body>>>>;

struct Inner {
    connect_timeout: Duration,
    idle_timeout: Duration,
    h1_idle: Mutex<HashMap<SocketAddr, IdleStack>>,
    h2: Mutex<HashMap<SocketAddr, H2Slot>>,
}

impl Client {
    pub fn new(connect_timeout: Duration, idle_timeout: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                connect_timeout,
                idle_timeout,
                h1_idle: Mutex::default(),
                h2: Mutex::default(),
            }),
        }
    }

    pub async fn send(
        &self,
        addr: SocketAddr,
        proto: UpstreamProto,
        req: Request<Body>,
    ) -> Result<Response<Incoming>, ClientError> {
        match proto {
            UpstreamProto::Http1 => self.send_h1(addr, req).await,
            UpstreamProto::Http2 => self.send_h2(addr, req).await,
        }
    }

    /// Sends an upgrade or CONNECT request on a fresh HTTP/1 connection that
    /// can be taken over with `hyper::upgrade::on` on the response.
    pub async fn send_upgrade(
        &self,
        addr: SocketAddr,
        req: Request<Body>,
    ) -> Result<Response<Incoming>, ClientError> {
        let stream = self.connect(addr).await?;
        let (mut sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|source| ClientError::Handshake { addr, source })?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(%addr, error = %e, "upgrade connection ended");
            }
        });
        sender
            .send_request(req)
            .await
            .map_err(|source| ClientError::Http { addr, source })
    }

    async fn connect(&self, addr: SocketAddr) -> Result<tokio::net::TcpStream, ClientError> {
        transport::connect(addr, self.inner.connect_timeout)
            .await
            .map_err(|source| ClientError::Connect { addr, source })
    }

    async fn send_h1(
        &self,
        addr: SocketAddr,
        req: Request<Body>,
    ) -> Result<Response<Incoming>, ClientError> {
        let mut req = req;
        // A pooled connection the server has just closed fails before the
        // request is written; then the request comes back and goes out on a
        // new connection. A request that was (partly) written is never resent.
        while let Some(mut sender) = self.take_idle_h1(addr) {
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    self.return_when_ready(addr, sender);
                    return Ok(resp);
                }
                Err(mut e) => match e.take_message() {
                    Some(r) => req = r,
                    None => {
                        return Err(ClientError::Http {
                            addr,
                            source: e.into_error(),
                        })
                    }
                },
            }
        }
        let stream = self.connect(addr).await?;
        let (mut sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|source| ClientError::Handshake { addr, source })?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%addr, error = %e, "HTTP/1 upstream connection ended");
            }
        });
        let resp = sender
            .send_request(req)
            .await
            .map_err(|source| ClientError::Http { addr, source })?;
        self.return_when_ready(addr, sender);
        Ok(resp)
    }

    fn take_idle_h1(&self, addr: SocketAddr) -> Option<http1::SendRequest<Body>> {
        let mut idle = self.inner.h1_idle.lock().unwrap_or_else(|p| p.into_inner());
        let stack = idle.get_mut(&addr)?;
        while let Some((sender, since)) = stack.pop() {
            if sender.is_ready() && since.elapsed() < self.inner.idle_timeout {
                return Some(sender);
            }
        }
        None
    }

    /// Puts the connection back on the idle stack once its response has been
    /// read to the end (the connection is then ready for another request).
    fn return_when_ready(&self, addr: SocketAddr, mut sender: http1::SendRequest<Body>) {
        let inner = self.inner.clone();
        tokio::spawn(async move {
            if sender.ready().await.is_err() {
                return;
            }
            let mut idle = inner.h1_idle.lock().unwrap_or_else(|p| p.into_inner());
            let stack = idle.entry(addr).or_default();
            if stack.len() < MAX_IDLE_PER_ENDPOINT {
                stack.push((sender, Instant::now()));
            }
        });
    }

    async fn send_h2(
        &self,
        addr: SocketAddr,
        req: Request<Body>,
    ) -> Result<Response<Incoming>, ClientError> {
        let slot = {
            let mut map = self.inner.h2.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(addr).or_default().clone()
        };
        let mut sender = {
            let mut guard = slot.lock().await;
            match guard.as_ref() {
                Some(s) if !s.is_closed() => s.clone(),
                _ => {
                    let s = self.connect_h2(addr).await?;
                    *guard = Some(s.clone());
                    s
                }
            }
        };
        sender
            .send_request(req)
            .await
            .map_err(|source| ClientError::Http { addr, source })
    }

    async fn connect_h2(&self, addr: SocketAddr) -> Result<http2::SendRequest<Body>, ClientError> {
        let stream = self.connect(addr).await?;
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .adaptive_window(true)
            .keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(3))
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
