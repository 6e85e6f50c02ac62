//! The accept loop of a server, the TLS handshake of each connection, and
//! the HTTP connection settings: what the control plane's config server,
//! the injector's webhook and every admin port share. Each accepted
//! connection runs on a task of its own; what is served on it (the
//! routes) stays with the caller. (The proxy's data path has its own
//! listener, with limits from its config.)

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;

use crate::drain::Watch;

/// How long a TLS handshake may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to send a request head, so that one that
/// stalls in it does not hold a connection for ever.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an HTTP/2 peer may take to answer a keep-alive ping.
pub const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// The pause after a failed accept (out of file descriptors, say) before
/// the next one.
pub const ACCEPT_RETRY: Duration = Duration::from_millis(50);

/// Accepts connections on `listener` until `stop` fires, and runs
/// `serve(connection, peer)` on a task of its own for each. A failed accept
/// is logged (`what` names the server) and tried again after
/// [`ACCEPT_RETRY`]. Connections already accepted are not waited for.
pub async fn accept<F, Fut>(listener: TcpListener, stop: Watch, what: &'static str, mut serve: F)
where
    F: FnMut(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.signaled() => break,
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "{what} accept failed");
                    tokio::time::sleep(ACCEPT_RETRY).await;
                    continue;
                }
            },
        };
        tokio::spawn(serve(stream, peer));
    }
}

/// HTTP/1.1 connections (the admin ports): a request head within
/// [`HEADER_READ_TIMEOUT`].
pub fn http1() -> hyper::server::conn::http1::Builder {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    builder
}

/// HTTP/1.1 or HTTP/2 connections (prior knowledge, or ALPN over TLS): an
/// HTTP/1 request head within [`HEADER_READ_TIMEOUT`]; an HTTP/2 peer
/// pinged every `keep_alive` and dropped when it does not answer within
/// [`KEEP_ALIVE_TIMEOUT`].
pub fn http1_or_2(keep_alive: Duration) -> hyper_util::server::conn::auto::Builder<TokioExecutor> {
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(keep_alive)
        .keep_alive_timeout(KEEP_ALIVE_TIMEOUT);
    builder
}

/// The server side of a TLS handshake on `tcp`, at most
/// [`HANDSHAKE_TIMEOUT`]; `None` (logged at debug, naming `peer`) when it
/// fails or takes too long.
pub async fn handshake(
    config: Arc<rustls::ServerConfig>,
    tcp: TcpStream,
    peer: SocketAddr,
) -> Option<TlsStream<TcpStream>> {
    let accepted = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        tokio_rustls::TlsAcceptor::from(config).accept(tcp),
    )
    .await;
    match accepted {
        Ok(Ok(s)) => Some(s),
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn every_connection_is_served_until_the_stop() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (signal, watch) = crate::drain::channel();
        let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
        let server = tokio::spawn(accept(listener, watch, "test", move |mut tcp, peer| {
            let seen = seen_tx.clone();
            async move {
                let mut byte = [0u8; 1];
                tcp.read_exact(&mut byte).await.unwrap();
                seen.send((peer, byte[0])).unwrap();
            }
        }));
        // A silent first connection does not hold up the second: each has
        // a task of its own.
        let _silent = TcpStream::connect(addr).await.unwrap();
        let mut talking = TcpStream::connect(addr).await.unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut talking, b"x")
            .await
            .unwrap();
        let (peer, byte) = seen.recv().await.unwrap();
        assert_eq!(byte, b'x');
        assert_eq!(peer, talking.local_addr().unwrap());
        signal.stop();
        server.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_client_is_dropped_after_the_handshake_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = TcpStream::connect(addr).await.unwrap();
        let (tcp, peer) = listener.accept().await.unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(NoCert));
        let start = tokio::time::Instant::now();
        assert!(handshake(Arc::new(config), tcp, peer).await.is_none());
        assert_eq!(start.elapsed(), HANDSHAKE_TIMEOUT);
    }

    #[derive(Debug)]
    struct NoCert;

    impl rustls::server::ResolvesServerCert for NoCert {
        fn resolve(
            &self,
            _hello: rustls::server::ClientHello<'_>,
        ) -> Option<Arc<rustls::sign::CertifiedKey>> {
            None
        }
    }
}
