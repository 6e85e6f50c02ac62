//! The webhook's HTTPS server (hyper + rustls) and its plaintext admin
//! port. The serving certificate is read from files and read again when
//! they change ([`ReloadingCert`]), so cert-manager's renewals and a
//! Helm-generated Secret both work without a restart; a file that fails to
//! load keeps the certificate in force.

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use outrigger_runtime::{drain, metrics, serve};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::TcpListener;

use crate::webhook::Webhook;

/// The path the API server posts AdmissionReviews to.
pub const MUTATE_PATH: &str = "/mutate";
/// Larger bodies are refused (the API server's own limit is 3 MiB).
pub const MAX_BODY: usize = 4 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// The serving certificate, from a certificate file (PEM chain) and a key
/// file (PEM), swapped when their content changes.
#[derive(Debug)]
pub struct ReloadingCert {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: ArcSwap<CertifiedKey>,
    /// The files' bytes behind `current`.
    loaded: Mutex<(Vec<u8>, Vec<u8>)>,
}

impl ReloadingCert {
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Self, CertError> {
        let (cert, key) = read_pair(cert_path, key_path)?;
        let certified = certified(cert_path, key_path, &cert, &key)?;
        Ok(Self {
            cert_path: cert_path.into(),
            key_path: key_path.into(),
            current: ArcSwap::from_pointee(certified),
            loaded: Mutex::new((cert, key)),
        })
    }

    /// Reads the files again; swaps the certificate when they changed and
    /// load. `Ok(true)`: swapped.
    pub fn reload_if_changed(&self) -> Result<bool, CertError> {
        let (cert, key) = read_pair(&self.cert_path, &self.key_path)?;
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        if loaded.0 == cert && loaded.1 == key {
            return Ok(false);
        }
        let certified = certified(&self.cert_path, &self.key_path, &cert, &key)?;
        self.current.store(Arc::new(certified));
        *loaded = (cert, key);
        Ok(true)
    }

    /// The leaf certificate in force (DER).
    pub fn leaf(&self) -> CertificateDer<'static> {
        self.current.load().cert[0].clone()
    }

    /// Checks the files every `every` until the process ends.
    pub async fn keep_reloading(self: Arc<Self>, every: Duration) {
        loop {
            tokio::time::sleep(every).await;
            match self.reload_if_changed() {
                Ok(true) => {
                    tracing::info!(cert = %self.cert_path.display(), "serving certificate reloaded")
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "serving certificate not reloaded; the one in force stays")
                }
            }
        }
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

fn read_pair(cert: &Path, key: &Path) -> Result<(Vec<u8>, Vec<u8>), CertError> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|source| CertError::Read {
            path: p.into(),
            source,
        })
    };
    Ok((read(cert)?, read(key)?))
}

fn certified(
    cert_path: &Path,
    key_path: &Path,
    cert: &[u8],
    key: &[u8],
) -> Result<CertifiedKey, CertError> {
    let invalid = |path: &Path, message: String| CertError::Invalid {
        path: path.into(),
        message,
    };
    let chain = CertificateDer::pem_slice_iter(cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(cert_path, format!("not PEM certificates: {e}")))?;
    if chain.is_empty() {
        return Err(invalid(cert_path, "no CERTIFICATE block".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(key)
        .map_err(|e| invalid(key_path, format!("not a PEM private key: {e}")))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| invalid(key_path, format!("unusable key: {e}")))?;
    let certified = CertifiedKey::new(chain, signing);
    certified
        .keys_match()
        .map_err(|e| invalid(key_path, format!("does not match the certificate: {e}")))?;
    Ok(certified)
}

/// The TLS config of the webhook: HTTP/2 or HTTP/1.1, the reloading
/// certificate.
pub fn tls_config(cert: Arc<ReloadingCert>) -> rustls::ServerConfig {
    let mut config =
        rustls::ServerConfig::builder_with_provider(outrigger_identity::tls::provider())
            .with_safe_default_protocol_versions()
            .expect("the ring provider supports the default versions")
            .with_no_client_auth()
            .with_cert_resolver(cert);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config
}

/// Serves `POST /mutate` (and `/ready`, `/live`) over TLS until `stop`.
pub async fn serve_webhook(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    webhook: Arc<Webhook>,
    stop: drain::Watch,
) {
    serve::accept(listener, stop, "webhook", move |tcp, peer| {
        let (tls, webhook) = (tls.clone(), webhook.clone());
        async move {
            let _ = tcp.set_nodelay(true);
            let Some(tls) = serve::handshake(tls, tcp, peer).await else {
                return;
            };
            let svc = hyper::service::service_fn(move |req| {
                let webhook = webhook.clone();
                async move { Ok::<_, Infallible>(route(&webhook, req).await) }
            });
            let _ = serve::http1_or_2(Duration::from_secs(30))
                .serve_connection(TokioIo::new(tls), svc)
                .await;
        }
    })
    .await
}

/// The webhook's routes.
pub async fn route(webhook: &Webhook, req: Request<Incoming>) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::POST, MUTATE_PATH) => {
            let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => {
                    webhook.metrics.requests.inc();
                    return text(
                        StatusCode::BAD_REQUEST,
                        format!("cannot read the body (at most {MAX_BODY} bytes): {e}\n"),
                    );
                }
            };
            match webhook.review(&body) {
                Ok(review) => {
                    let mut r =
                        Response::new(Full::new(Bytes::from(crate::webhook::encode(&review))));
                    r.headers_mut().insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    );
                    r
                }
                Err(e) => text(StatusCode::BAD_REQUEST, format!("{e}\n")),
            }
        }
        (_, MUTATE_PATH) => text(StatusCode::METHOD_NOT_ALLOWED, "use POST\n".into()),
        (&Method::GET, _) => health(webhook, &req),
        _ => text(StatusCode::NOT_FOUND, "not found; POST /mutate\n".into()),
    }
}

fn health<B>(webhook: &Webhook, req: &Request<B>) -> Response<Full<Bytes>> {
    match req.uri().path() {
        "/live" => text(StatusCode::OK, "live\n".into()),
        "/ready" if webhook.namespaces.is_synced() => text(StatusCode::OK, "ready\n".into()),
        "/ready" => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: namespaces not listed yet\n".into(),
        ),
        "/metrics" => metrics::answer(req.headers(), webhook.metrics.encode()).map(Full::new),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try /metrics /ready /live\n".into(),
        ),
    }
}

/// The plaintext admin port: `/metrics`, `/ready`, `/live`.
pub async fn serve_admin(listener: TcpListener, webhook: Arc<Webhook>, stop: drain::Watch) {
    serve::accept(listener, stop, "admin", move |tcp, _| {
        let webhook = webhook.clone();
        async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let webhook = webhook.clone();
                async move {
                    Ok::<_, Infallible>(if req.method() == Method::GET {
                        health(&webhook, &req)
                    } else {
                        text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n".into())
                    })
                }
            });
            let _ = serve::http1()
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        }
    })
    .await
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}
