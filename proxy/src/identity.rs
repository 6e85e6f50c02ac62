//! The proxy's workload identity: a key made here (it never leaves the
//! process), a certificate from the control plane's CA for
//! `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`, renewed
//! at 70 % of its lifetime with jittered retries, and kept in use while the
//! control plane is away (it is valid until it expires). The trust roots
//! start from `--trust-roots` and follow what the CA sends, so a root
//! rotation reaches every proxy.
//!
//! The connection to the control plane (`connect`) is TLS, checking the
//! control plane's own SPIFFE identity, and presents this proxy's
//! certificate once it has one (the config stream requires it).

use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use outrigger_api::certify::{CertifyRequest, CertifyResponse, CERTIFY_PATH};
use outrigger_identity::ca::pem;
use outrigger_identity::{tls, CurrentCert, SpiffeId, TrustBundle, WorkloadKey};
use outrigger_proxy_policy::backoff::Backoff;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::transport::tls::Io;
use outrigger_proxy_policy::chance::Chance;

pub use outrigger_identity::renewal::{renew_at, RENEW_AT};

/// How this proxy gets its identity.
#[derive(Clone, Debug)]
pub struct IdentityConfig {
    pub id: SpiffeId,
    /// The ServiceAccount token (projected, audience `outrigger`) or the
    /// bootstrap token file; read again at each request (tokens rotate).
    pub token_file: PathBuf,
    /// Who the control plane must be.
    pub control_plane: SpiffeId,
    /// The trust roots to start from.
    pub roots: Vec<CertificateDer<'static>>,
}

/// The proxy's identity as it stands.
pub struct Identity {
    pub id: SpiffeId,
    pub control_plane: SpiffeId,
    /// The certificate presented on every TLS connection.
    pub cert: Arc<CurrentCert>,
    trust: ArcSwap<TrustBundle>,
    token_file: PathBuf,
    held: watch::Sender<bool>,
    /// Mesh-hop configs, built once per peer identity (and protocol) and
    /// again when the trust roots change.
    clients: Mutex<HashMap<(SpiffeId, Alpn), Built<rustls::ClientConfig>>>,
    server: Mutex<Option<Built<rustls::ServerConfig>>>,
}

/// A TLS config and the trust roots it was built with.
type Built<C> = (Arc<TrustBundle>, Arc<C>);

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("id", &self.id)
            .field("held", &self.is_held())
            .finish()
    }
}

/// What a mesh connection carries, offered by ALPN.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Alpn {
    H2,
    Http1,
    /// Opaque TCP: no ALPN.
    Opaque,
}

impl Alpn {
    fn protocols(self) -> &'static [&'static [u8]] {
        match self {
            Alpn::H2 => &[b"h2"],
            Alpn::Http1 => &[b"http/1.1"],
            Alpn::Opaque => &[],
        }
    }
}

/// How long a mesh TLS handshake may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot read the token file {path}: {source}")]
    Token { path: PathBuf, source: io::Error },
    #[error("cannot connect to the control plane at {address}: {source}")]
    Connect { address: String, source: io::Error },
    #[error("the control plane's certify endpoint failed: {0}")]
    Http(String),
    #[error("the control plane refused the certificate request ({status}): {message}")]
    Refused { status: u16, message: String },
    #[error("{0}")]
    Certificate(#[from] outrigger_identity::Error),
}

impl Identity {
    pub fn new(config: IdentityConfig) -> Result<Arc<Self>, outrigger_identity::Error> {
        let trust = TrustBundle::new(config.id.trust_domain(), &config.roots)?;
        Ok(Arc::new(Self {
            id: config.id,
            control_plane: config.control_plane,
            cert: Arc::new(CurrentCert::default()),
            trust: ArcSwap::from_pointee(trust),
            token_file: config.token_file,
            held: watch::channel(false).0,
            clients: Mutex::default(),
            server: Mutex::default(),
        }))
    }

    /// Marks a certificate set directly on [`Identity::cert`] as held
    /// (tests, and a certificate from elsewhere).
    pub fn mark_held(&self) {
        self.held.send_replace(true);
    }

    fn client_config(
        &self,
        peer: &SpiffeId,
        alpn: Alpn,
    ) -> Result<Arc<rustls::ClientConfig>, outrigger_identity::Error> {
        let trust = self.trust();
        let mut cache = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((t, c)) = cache.get(&(peer.clone(), alpn)) {
            if Arc::ptr_eq(t, &trust) {
                return Ok(c.clone());
            }
        }
        let config = Arc::new(tls::client_config(
            self.cert.clone(),
            &trust,
            peer.clone(),
            alpn.protocols(),
        )?);
        cache.insert((peer.clone(), alpn), (trust, config.clone()));
        Ok(config)
    }

    fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, outrigger_identity::Error> {
        let trust = self.trust();
        let mut cache = self.server.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((t, c)) = cache.as_ref() {
            if Arc::ptr_eq(t, &trust) {
                return Ok(c.clone());
            }
        }
        let config = Arc::new(tls::server_config(
            self.cert.clone(),
            &trust,
            &[b"h2", b"http/1.1"],
        )?);
        *cache = Some((trust, config.clone()));
        Ok(config)
    }

    /// Mesh TLS over `tcp` to a peer proxy that must be `peer`.
    pub async fn connect_peer(
        &self,
        tcp: TcpStream,
        peer: &SpiffeId,
        alpn: Alpn,
    ) -> io::Result<Io> {
        let config = self.client_config(peer, alpn).map_err(io::Error::other)?;
        handshake(config, tcp).await
    }

    /// Accepts a peer proxy's mesh TLS on `tcp`, its certificate required
    /// and verified. Returns the connection, the peer's
    /// identity, and whether the peer offered no ALPN (it splices opaque
    /// TCP: an HTTP hop always offers `h2` or `http/1.1`).
    pub async fn accept_peer(&self, tcp: TcpStream) -> io::Result<(Io, SpiffeId, bool)> {
        let config = self.server_config().map_err(io::Error::other)?;
        let stream = tokio::time::timeout(
            HANDSHAKE_TIMEOUT,
            tokio_rustls::TlsAcceptor::from(config).accept(tcp),
        )
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "mesh TLS handshake timed out"))??;
        let peer = tls::peer_identity(stream.get_ref().1.peer_certificates().unwrap_or_default())
            .map_err(io::Error::other)?;
        let opaque = stream.get_ref().1.alpn_protocol().is_none();
        Ok((Io::Server(Box::new(stream)), peer, opaque))
    }

    pub fn trust(&self) -> Arc<TrustBundle> {
        self.trust.load_full()
    }

    /// Whether a certificate is held.
    pub fn is_held(&self) -> bool {
        *self.held.borrow()
    }

    /// Waits until the first certificate is held.
    pub async fn held(&self) {
        let mut rx = self.held.subscribe();
        let _ = rx.wait_for(|h| *h).await;
    }

    /// A TLS connection to the control plane at `address`, speaking
    /// HTTP/2, presenting this proxy's certificate (for the config stream).
    pub async fn connect(&self, address: &str) -> Result<Io, IdentityError> {
        self.connect_with(address, self.cert.clone()).await
    }

    async fn connect_with(
        &self,
        address: &str,
        cert: Arc<CurrentCert>,
    ) -> Result<Io, IdentityError> {
        let failed = |source| IdentityError::Connect {
            address: address.to_string(),
            source,
        };
        let tcp = tokio::time::timeout(HANDSHAKE_TIMEOUT, TcpStream::connect(address))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))
            .and_then(|r| r)
            .map_err(failed)?;
        let _ = tcp.set_nodelay(true);
        let config = tls::client_config(cert, &self.trust(), self.control_plane.clone(), &[b"h2"])?;
        handshake(Arc::new(config), tcp).await.map_err(failed)
    }

    /// One certificate request: a new key, a CSR, the token; on success the
    /// certificate is in use and its expiry is returned, with the fields of
    /// the answer this proxy did not know.
    pub async fn certify(&self, address: &str) -> Result<Certified, IdentityError> {
        let token =
            std::fs::read_to_string(&self.token_file).map_err(|source| IdentityError::Token {
                path: self.token_file.clone(),
                source,
            })?;
        let key = WorkloadKey::generate()?;
        let body = serde_json::to_vec(&CertifyRequest {
            csr: pem("CERTIFICATE REQUEST", &key.csr(&self.id)?),
        })
        .expect("serializes");
        // No client certificate here: the token proves who is asking, and a
        // certificate that expired while the control plane was away must not
        // stand in the way of getting a new one.
        let io = self
            .connect_with(address, Arc::new(CurrentCert::default()))
            .await?;
        let (mut send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(TokioIo::new(io))
            .await
            .map_err(|e| IdentityError::Http(e.to_string()))?;
        tokio::spawn(conn);
        let req = Request::post(format!("https://{address}{CERTIFY_PATH}"))
            .header(
                http::header::AUTHORIZATION,
                format!("Bearer {}", token.trim()),
            )
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .expect("a valid request");
        let resp = tokio::time::timeout(Duration::from_secs(30), send.send_request(req))
            .await
            .map_err(|_| IdentityError::Http("no answer within 30 s".into()))?
            .map_err(|e| IdentityError::Http(e.to_string()))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| IdentityError::Http(e.to_string()))?
            .to_bytes();
        if !status.is_success() {
            return Err(IdentityError::Refused {
                status: status.as_u16(),
                message: String::from_utf8_lossy(&body).trim().to_string(),
            });
        }
        // Read tolerantly: a newer control plane may add fields (version skew).
        let (answer, ignored) = outrigger_api::tolerant::from_json_slice::<CertifyResponse>(
            &body,
            outrigger_api::features::UNDERSTOOD_WHOLE,
        )
        .map_err(|e| IdentityError::Http(format!("unreadable answer: {e}")))?;
        let chain = certificates(&answer.certificate_chain, "certificate_chain")?;
        let roots = certificates(&answer.trust_roots, "trust_roots")?;
        let (id, certified) = key.certified(chain)?;
        if id != self.id {
            return Err(IdentityError::Refused {
                status: 200,
                message: format!("the certificate is for {id}, not {}", self.id),
            });
        }
        // The new roots first (a rotation adds one), then the certificate.
        self.trust
            .store(Arc::new(TrustBundle::new(self.id.trust_domain(), &roots)?));
        self.cert.set(certified);
        self.held.send_replace(true);
        Ok(Certified {
            not_after: SystemTime::UNIX_EPOCH + Duration::from_secs(answer.expires_unix_secs),
            ignored,
        })
    }
}

/// A TLS handshake as the client, bounded by [`HANDSHAKE_TIMEOUT`].
async fn handshake(config: Arc<rustls::ClientConfig>, tcp: TcpStream) -> io::Result<Io> {
    let stream = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        tokio_rustls::TlsConnector::from(config).connect(tls::server_name(), tcp),
    )
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
    Ok(Io::Client(Box::new(stream)))
}

fn certificates(
    pem: &str,
    field: &'static str,
) -> Result<Vec<CertificateDer<'static>>, IdentityError> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| IdentityError::Http(format!("{field}: {e}")))?;
    if certs.is_empty() {
        return Err(IdentityError::Http(format!("{field}: no certificate")));
    }
    Ok(certs)
}

/// The pause before retrying a failed request: jittered back-off, but
/// never so long that the certificate in force (expiring at `expiry`)
/// runs out first; with none, the back-off alone.
pub fn retry_pause(
    backoff: &mut Backoff,
    chance: &Chance,
    now: SystemTime,
    expiry: Option<SystemTime>,
) -> Duration {
    let pause = backoff.next_pause(chance.unit());
    match expiry.and_then(|e| e.duration_since(now).ok()) {
        // Leave at least a tenth of the time left for further tries, but
        // never retry more than once a second.
        Some(left) => pause.min(left / 10).max(Duration::from_secs(1)),
        None => pause,
    }
}

fn unix_secs(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs() as i64
}

/// A certificate request that succeeded.
pub struct Certified {
    /// When the new certificate expires.
    pub not_after: SystemTime,
    /// Fields of the answer left out (a newer control plane's).
    pub ignored: outrigger_api::tolerant::Ignored,
}

/// Keeps a certificate for as long as the process runs.
pub async fn keep(identity: Arc<Identity>, address: String, metrics: Arc<Metrics>) {
    let chance = Chance::default();
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(10));
    let mut expiry: Option<SystemTime> = None;
    loop {
        let wait = match identity.certify(&address).await {
            Ok(Certified { not_after, ignored }) => {
                if !ignored.is_empty() {
                    metrics.count_unknown_fields(crate::metrics::CERTIFY_RESPONSE, &ignored);
                    tracing::warn!(
                        count = ignored.count,
                        fields = %ignored,
                        "certificate answer carries fields this proxy does not know (a newer \
                         control plane); used without them"
                    );
                }
                backoff.reset();
                expiry = Some(not_after);
                metrics.identity_renewals.get_or_create(&OK).inc();
                metrics.identity_expiry.set(unix_secs(not_after));
                let now = SystemTime::now();
                let at = renew_at(now, not_after);
                metrics.identity_renew_at.set(unix_secs(at));
                tracing::info!(identity = %identity.id, renew_in = ?at.duration_since(now).unwrap_or_default(), "certificate held");
                at.duration_since(now).unwrap_or_default()
            }
            Err(e) => {
                metrics.identity_renewals.get_or_create(&FAILED).inc();
                let pause = retry_pause(&mut backoff, &chance, SystemTime::now(), expiry);
                tracing::warn!(identity = %identity.id, error = %e, retry_in = ?pause, "no new certificate; the one in force stays until it expires");
                pause
            }
        };
        tokio::time::sleep(wait).await;
    }
}

const OK: crate::metrics::ResultLabel = crate::metrics::ResultLabel { result: "ok" };
const FAILED: crate::metrics::ResultLabel = crate::metrics::ResultLabel { result: "error" };

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_comes_at_seventy_percent_of_the_life_left() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let day = Duration::from_secs(24 * 3600);
        assert_eq!(renew_at(now, now + day), now + day.mul_f64(0.7));
        assert_eq!(renew_at(now, now - day), now, "already expired: at once");
    }

    #[test]
    fn retries_never_wait_past_a_tenth_of_the_time_left() {
        let chance = Chance::seeded(3);
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mut b = Backoff::new(Duration::from_secs(10), Duration::from_secs(30));
        for _ in 0..10 {
            let p = retry_pause(&mut b, &chance, now, Some(now + Duration::from_secs(60)));
            assert!(p <= Duration::from_secs(6), "{p:?}");
        }
        // Nearly expired: retried quickly, but not in a busy loop.
        let p = retry_pause(&mut b, &chance, now, Some(now + Duration::from_millis(50)));
        assert_eq!(p, Duration::from_secs(1));
        // No certificate yet: the back-off alone.
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        for _ in 0..3 {
            assert!(retry_pause(&mut b, &chance, now, None) < Duration::from_secs(4));
        }
    }
}
