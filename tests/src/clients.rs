//! Clients that talk to a proxy (or a server) on loopback: connections
//! ([`http1`], [`http2`]), one-shot requests ([`get`], [`try_get`],
//! [`raw_get`], [`https_get`]), and steady load from long-lived connections
//! ([`keep_requesting`], added up by [`tally`]).

use std::net::SocketAddr;

use http::Request;
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::body::{empty, Body, BoxError};
use crate::servers::APP_TLS_NAME;

/// An HTTP/1.1 connection to `addr`.
pub async fn http1(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<Body> {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn.with_upgrades());
    sender
}

/// An HTTP/2 (prior knowledge) connection to `addr`.
pub async fn http2(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<Body> {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    sender
}

/// One GET over a fresh HTTP/1.1 connection; returns status and body.
pub async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    try_get(addr, path).await.unwrap()
}

/// [`get`] that reports failure (refused, closed, reset) instead of panicking.
pub async fn try_get(addr: SocketAddr, path: &str) -> Result<(u16, String), BoxError> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut c, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let resp = c
        .send_request(
            Request::get(path)
                .header("host", "web.shop")
                .body(empty())?,
        )
        .await?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Raw bytes of one HTTP/1.1 GET on a fresh TCP connection to `addr`, and
/// whatever came back before the peer closed (empty when it closed at once).
pub async fn raw_get(addr: SocketAddr) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    // A peer that closes at once may refuse the write too.
    let _ = s
        .write_all(b"GET / HTTP/1.1\r\nhost: web\r\nconnection: close\r\n\r\n")
        .await;
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    out
}

/// One GET over a fresh TLS connection to `addr` asking for
/// [`APP_TLS_NAME`] and trusting `cert` only; returns status and body.
pub async fn https_get(
    addr: SocketAddr,
    cert: &rustls::pki_types::CertificateDer<'static>,
    path: &str,
) -> Result<(u16, String), BoxError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.clone())?;
    let config = rustls::ClientConfig::builder_with_provider(outrigger_identity::tls::provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from(APP_TLS_NAME)?;
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await?;
    let (mut c, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    tokio::spawn(conn);
    let resp = c
        .send_request(
            Request::get(path)
                .header("host", APP_TLS_NAME)
                .body(empty())?,
        )
        .await?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Four clients on long-lived connections to `addr` (two HTTP/1.1, two
/// HTTP/2), each sending `GET /` for `web.shop` until `stop`; each returns
/// (answered 200, failed). [`tally`] adds them up.
pub fn keep_requesting(
    addr: SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Vec<tokio::task::JoinHandle<(usize, usize)>> {
    (0..4)
        .map(|i| {
            let stop = stop.clone();
            tokio::spawn(async move {
                let (mut ok, mut failed) = (0, 0);
                let mut h1 = http1(addr).await;
                let mut h2 = http2(addr).await;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let req = Request::get("/")
                        .header("host", "web.shop")
                        .body(empty())
                        .unwrap();
                    let resp = if i % 2 == 0 {
                        h1.send_request(req).await
                    } else {
                        h2.send_request(req).await
                    };
                    match resp {
                        Ok(r) if r.status() == 200 => {
                            r.into_body().collect().await.unwrap();
                            ok += 1;
                        }
                        _ => failed += 1,
                    }
                }
                (ok, failed)
            })
        })
        .collect()
}

/// Waits for [`keep_requesting`]'s clients: (answered 200, failed) in all.
pub async fn tally(clients: Vec<tokio::task::JoinHandle<(usize, usize)>>) -> (usize, usize) {
    let (mut ok, mut failed) = (0, 0);
    for c in clients {
        let (o, f) = c.await.unwrap();
        ok += o;
        failed += f;
    }
    (ok, failed)
}
