//! The demo's network edges: the sample apps (HTTP servers in this
//! process), a plain HTTP/1.1 GET (through the client's proxy, to the
//! admin ports), and a GET to the control plane over TLS (its `/metrics`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::TokioIo;
use outrigger_identity::tls::{client_config, server_name, CurrentCert, TrustBundle};
use outrigger_identity::SpiffeId;

/// Why a GET got no answer.
#[derive(Debug, thiserror::Error)]
pub enum GetError {
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS to {addr}: {source}")]
    Tls {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("HTTP to {addr}: {message}")]
    Http { addr: SocketAddr, message: String },
    #[error("no answer from {addr} within 5 s")]
    Timeout { addr: SocketAddr },
}

/// Serves `hello from <name>` to every request on `listener`, until the
/// task is dropped.
pub async fn serve_app(listener: tokio::net::TcpListener, name: &'static str) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |_req| async move {
                Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from(
                    format!("hello from {name}\n"),
                ))))
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// `GET path` over HTTP/1.1 on a fresh connection: (status, body).
pub async fn get(addr: SocketAddr, path: &str) -> Result<(u16, String), GetError> {
    within(addr, async {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|source| GetError::Connect { addr, source })?;
        request(addr, TokioIo::new(tcp), path).await
    })
    .await
}

/// `GET path` over TLS to the control plane, which must prove
/// `identity` under `roots` (PEM); no client certificate is sent.
pub async fn get_tls(
    addr: SocketAddr,
    path: &str,
    roots_pem: &[u8],
    identity: &SpiffeId,
) -> Result<(u16, String), GetError> {
    use rustls::pki_types::pem::PemObject;
    let tls_err = |e: String| GetError::Tls {
        addr,
        source: std::io::Error::other(e),
    };
    let roots = rustls::pki_types::CertificateDer::pem_slice_iter(roots_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls_err(format!("the roots are not PEM certificates: {e}")))?;
    let trust =
        TrustBundle::new(identity.trust_domain(), &roots).map_err(|e| tls_err(e.to_string()))?;
    let config = client_config(
        Arc::new(CurrentCert::default()),
        &trust,
        identity.clone(),
        &[b"http/1.1"],
    )
    .map_err(|e| tls_err(e.to_string()))?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    within(addr, async {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|source| GetError::Connect { addr, source })?;
        let tls = connector
            .connect(server_name(), tcp)
            .await
            .map_err(|source| GetError::Tls { addr, source })?;
        request(addr, TokioIo::new(tls), path).await
    })
    .await
}

async fn within<F>(addr: SocketAddr, f: F) -> Result<(u16, String), GetError>
where
    F: std::future::Future<Output = Result<(u16, String), GetError>>,
{
    tokio::time::timeout(Duration::from_secs(5), f)
        .await
        .unwrap_or(Err(GetError::Timeout { addr }))
}

async fn request<T>(addr: SocketAddr, io: TokioIo<T>, path: &str) -> Result<(u16, String), GetError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let http = |e: hyper::Error| GetError::Http {
        addr,
        message: e.to_string(),
    };
    let (mut send, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(http)?;
    let conn = tokio::spawn(conn);
    let req = hyper::Request::get(path)
        .header(hyper::header::HOST, "web")
        .body(Empty::<Bytes>::new())
        .map_err(|e| GetError::Http {
            addr,
            message: e.to_string(),
        })?;
    let res = send.send_request(req).await.map_err(http)?;
    let status = res.status().as_u16();
    let body = res.into_body().collect().await.map_err(http)?.to_bytes();
    conn.abort();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}
