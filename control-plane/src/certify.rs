//! The identity server: `POST /v1/certify`. A proxy sends its token and a
//! CSR; the caller is authenticated (`authn.rs`), its identity is
//! `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`, and the
//! mesh CA signs a certificate for exactly that identity. Callers are
//! rate-limited by address before any token is checked.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use outrigger_api::certify::{CertifyRequest, CertifyResponse};
use outrigger_identity::ca::pem;
use outrigger_identity::{Ca, CurrentCert, SpiffeId, TrustBundle, WorkloadKey};
use outrigger_runtime::drain;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateSigningRequestDer;
use rustls::sign::CertifiedKey;
use tokio::time::Instant;

use crate::authn::{Authenticate, AuthnError};

/// Workload certificate lifetime unless configured.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// The largest request body read.
pub const MAX_BODY: usize = 64 * 1024;

pub struct Certifier {
    ca: Arc<Ca>,
    trust_domain: String,
    lifetime: Duration,
    authn: Arc<dyn Authenticate>,
    limits: Mutex<Buckets>,
}

/// Why a request got no certificate: the HTTP status and a message that
/// names what was wrong.
#[derive(Debug, PartialEq)]
pub struct Refusal {
    pub status: u16,
    pub message: String,
    /// For 429: when to come back.
    pub retry_after: Option<Duration>,
    /// The label of `outrigger_cp_certify_requests_total`.
    pub result: &'static str,
}

impl Refusal {
    fn new(status: u16, result: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            retry_after: None,
            result,
        }
    }
}

impl Certifier {
    pub fn new(
        ca: Arc<Ca>,
        trust_domain: impl Into<String>,
        lifetime: Duration,
        authn: Arc<dyn Authenticate>,
    ) -> Self {
        Self {
            ca,
            trust_domain: trust_domain.into(),
            lifetime,
            authn,
            limits: Mutex::new(Buckets::new(5.0, 0.5)),
        }
    }

    /// Per-address rate limit other than the default (a burst of 5, then
    /// one request every 2 s).
    pub fn with_rate_limit(self, burst: f64, per_second: f64) -> Self {
        Self {
            limits: Mutex::new(Buckets::new(burst, per_second)),
            ..self
        }
    }

    /// The PEM trust roots proxies need.
    pub fn roots_pem(&self) -> String {
        self.ca.roots_pem()
    }

    /// One request: `authorization` is the header's value, `body` the
    /// JSON [`CertifyRequest`], `peer` the caller's address.
    pub async fn certify(
        &self,
        authorization: Option<&str>,
        body: &[u8],
        peer: IpAddr,
    ) -> Result<(SpiffeId, CertifyResponse), Refusal> {
        if let Err(wait) = self
            .limits
            .lock()
            .expect("limits lock")
            .take(peer, Instant::now())
        {
            return Err(Refusal {
                retry_after: Some(wait),
                ..Refusal::new(
                    429,
                    "rate_limited",
                    format!("too many certificate requests from {peer}"),
                )
            });
        }
        let token = authorization
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                Refusal::new(
                    401,
                    "unauthenticated",
                    "missing \"Authorization: Bearer <ServiceAccount token>\"",
                )
            })?;
        let request: CertifyRequest = serde_json::from_slice(body)
            .map_err(|e| Refusal::new(400, "bad_request", format!("request body: {e}")))?;
        let csr =
            CertificateSigningRequestDer::from_pem_slice(request.csr.as_bytes()).map_err(|e| {
                Refusal::new(
                    400,
                    "bad_request",
                    format!("csr: not a PEM CERTIFICATE REQUEST: {e}"),
                )
            })?;
        let caller = self.authn.authenticate(token).await.map_err(|e| match e {
            AuthnError::Refused(_) => Refusal::new(401, "unauthenticated", e.to_string()),
            AuthnError::Unavailable(_) => Refusal::new(503, "unavailable", e.to_string()),
        })?;
        let id = SpiffeId::new(
            &self.trust_domain,
            &caller.namespace,
            &caller.service_account,
        )
        .map_err(|e| Refusal::new(403, "refused", e.to_string()))?;
        let issued = self
            .ca
            .issue(&csr, &id, self.lifetime, SystemTime::now())
            .map_err(|e| Refusal::new(403, "refused", e.to_string()))?;
        let chain: String = issued.chain.iter().map(|c| pem("CERTIFICATE", c)).collect();
        Ok((
            id,
            CertifyResponse {
                certificate_chain: chain,
                trust_roots: self.ca.roots_pem(),
                expires_unix_secs: issued
                    .not_after
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs(),
            },
        ))
    }
}

impl Certifier {
    /// A certificate for the control plane itself (its serving identity),
    /// with a key made here.
    pub fn own_certificate(
        &self,
        id: &SpiffeId,
    ) -> Result<(Arc<CertifiedKey>, SystemTime), outrigger_identity::Error> {
        let key = WorkloadKey::generate()?;
        let issued = self
            .ca
            .issue(&key.csr(id)?, id, self.lifetime, SystemTime::now())?;
        let (_, certified) = key.certified(issued.chain)?;
        Ok((certified, issued.not_after))
    }

    /// The CA's roots as a trust bundle.
    pub fn trust(&self) -> Result<TrustBundle, outrigger_identity::Error> {
        TrustBundle::new(&self.trust_domain, self.ca.roots())
    }

    /// The control plane's TLS config, serving as `own` with a certificate
    /// kept renewed until `stop`: client certificates are optional (a proxy
    /// asking for its first one has none) and verified when sent.
    pub fn server_tls(
        self: &Arc<Self>,
        own: SpiffeId,
        alpn: &[&[u8]],
        stop: drain::Watch,
    ) -> Result<rustls::ServerConfig, outrigger_identity::Error> {
        let cert = Arc::new(CurrentCert::default());
        cert.set(self.own_certificate(&own)?.0);
        let config = outrigger_identity::tls::server_config_with(
            cert.clone(),
            &self.trust()?,
            alpn,
            outrigger_identity::tls::ClientAuth::Optional,
        )?;
        tokio::spawn(self.clone().keep_own_certificate(own, cert, stop));
        Ok(config)
    }

    /// Keeps `cert` holding a valid certificate for `id`: renewed at half
    /// its lifetime, retried every 10 s after a failure.
    pub async fn keep_own_certificate(
        self: Arc<Self>,
        id: SpiffeId,
        cert: Arc<CurrentCert>,
        stop: drain::Watch,
    ) {
        loop {
            let wait = match self.own_certificate(&id) {
                Ok((c, not_after)) => {
                    cert.set(c);
                    not_after
                        .duration_since(SystemTime::now())
                        .unwrap_or_default()
                        / 2
                }
                Err(e) => {
                    tracing::error!(identity = %id, error = %e, "cannot renew the control plane's own certificate");
                    Duration::from_secs(10)
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.signaled() => return,
            }
        }
    }
}

/// Where the mesh CA comes from.
#[derive(Clone, Debug)]
pub enum CaSource {
    /// PEM files: the signing certificate (then its issuers), its key, and
    /// optionally the trust roots (default: the chain's last certificate).
    Files {
        cert: PathBuf,
        key: PathBuf,
        roots: Option<PathBuf>,
    },
    /// A CA kept in this folder (`ca.pem`, `ca.key`), generated there on
    /// first use; `roots.pem` is written next to them for proxies.
    Dir(PathBuf),
}

/// Why the mesh CA could not be had; names the file.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the CA in {place}: {source}")]
    Invalid {
        place: String,
        source: outrigger_identity::Error,
    },
}

impl CaSource {
    /// Loads the CA, or generates one into the folder.
    pub fn load(&self, trust_domain: &str) -> Result<Ca, CaError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| CaError::Io { path, source }
        };
        let read = |p: &Path| std::fs::read_to_string(p).map_err(io(p));
        match self {
            CaSource::Files { cert, key, roots } => {
                let roots = roots.as_deref().map(read).transpose()?;
                Ca::from_pem(&read(cert)?, &read(key)?, roots.as_deref()).map_err(|source| {
                    CaError::Invalid {
                        place: format!("{} and {}", cert.display(), key.display()),
                        source,
                    }
                })
            }
            CaSource::Dir(dir) => {
                let (cert, key) = (dir.join("ca.pem"), dir.join("ca.key"));
                let invalid = |source| CaError::Invalid {
                    place: dir.display().to_string(),
                    source,
                };
                let ca = if cert.exists() {
                    Ca::from_pem(&read(&cert)?, &read(&key)?, None).map_err(invalid)?
                } else {
                    let ca = Ca::generate(trust_domain, SystemTime::now()).map_err(invalid)?;
                    let (c, k) = ca.generated_pem().expect("generated");
                    std::fs::create_dir_all(dir).map_err(io(dir))?;
                    write_private(&key, k).map_err(io(&key))?;
                    std::fs::write(&cert, c).map_err(io(&cert))?;
                    tracing::info!(dir = %dir.display(), "generated a mesh CA for {trust_domain}");
                    ca
                };
                let roots = dir.join("roots.pem");
                std::fs::write(&roots, ca.roots_pem()).map_err(io(&roots))?;
                Ok(ca)
            }
        }
    }
}

/// Writes a new file only its owner can read.
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?
        .write_all(text.as_bytes())
}

/// Token buckets per caller address: `burst` requests at once, refilled at
/// `per_second`. Idle full buckets are dropped when the map grows.
#[derive(Debug)]
pub struct Buckets {
    burst: f64,
    per_second: f64,
    buckets: HashMap<IpAddr, (f64, Instant)>,
}

impl Buckets {
    pub fn new(burst: f64, per_second: f64) -> Self {
        Self {
            burst,
            per_second,
            buckets: HashMap::new(),
        }
    }

    /// Takes a token for `who`, or says how long until one is there.
    pub fn take(&mut self, who: IpAddr, now: Instant) -> Result<(), Duration> {
        if self.buckets.len() > 10_000 {
            let (burst, rate) = (self.burst, self.per_second);
            self.buckets.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() * rate < burst
            });
        }
        let (tokens, at) = self.buckets.entry(who).or_insert((self.burst, now));
        *tokens =
            (*tokens + now.duration_since(*at).as_secs_f64() * self.per_second).min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - *tokens) / self.per_second))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authn::{AuthnFuture, Caller};
    use outrigger_identity::WorkloadKey;

    /// Tokens "buyer" and "web" are ServiceAccounts of namespace shop;
    /// "down" finds the API server away.
    struct FakeAuthn;

    impl Authenticate for FakeAuthn {
        fn authenticate<'a>(&'a self, token: &'a str) -> AuthnFuture<'a> {
            Box::pin(async move {
                match token {
                    "buyer" | "web" => Ok(Caller {
                        namespace: "shop".into(),
                        service_account: token.into(),
                    }),
                    "down" => Err(AuthnError::Unavailable("connection refused".into())),
                    _ => Err(AuthnError::Refused("unknown token".into())),
                }
            })
        }
    }

    fn certifier() -> Certifier {
        let ca = Ca::generate("cluster.local", SystemTime::now()).unwrap();
        Certifier::new(
            Arc::new(ca),
            "cluster.local",
            DEFAULT_LIFETIME,
            Arc::new(FakeAuthn),
        )
    }

    fn body(sa: &str) -> Vec<u8> {
        let key = WorkloadKey::generate().unwrap();
        let id = SpiffeId::new("cluster.local", "shop", sa).unwrap();
        let csr = pem("CERTIFICATE REQUEST", &key.csr(&id).unwrap());
        serde_json::to_vec(&CertifyRequest { csr }).unwrap()
    }

    const PEER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 7));

    #[tokio::test]
    async fn a_caller_gets_a_certificate_for_its_own_service_account() {
        let c = certifier();
        let (id, answer) = c
            .certify(Some("Bearer buyer"), &body("buyer"), PEER)
            .await
            .unwrap();
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/shop/sa/buyer");
        assert_eq!(answer.trust_roots, c.roots_pem());
        assert_eq!(
            answer
                .certificate_chain
                .matches("BEGIN CERTIFICATE")
                .count(),
            2
        );
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(answer.expires_unix_secs.abs_diff(now + 24 * 3600) < 10);
    }

    #[tokio::test]
    async fn requests_that_get_no_certificate_say_why() {
        let c = certifier();
        let cases: Vec<(Option<&str>, Vec<u8>, u16, &str)> = vec![
            // A CSR for another ServiceAccount than the token's.
            (
                Some("Bearer buyer"),
                body("web"),
                403,
                "it asks for spiffe://cluster.local/ns/shop/sa/web, the caller may only have spiffe://cluster.local/ns/shop/sa/buyer",
            ),
            (None, body("buyer"), 401, "missing \"Authorization: Bearer"),
            (Some("Basic eA=="), body("buyer"), 401, "missing"),
            (Some("Bearer stolen"), body("buyer"), 401, "token refused: unknown token"),
            (Some("Bearer down"), body("buyer"), 503, "cannot check the token"),
            (Some("Bearer buyer"), b"{}".to_vec(), 400, "request body: missing field `csr`"),
            (
                Some("Bearer buyer"),
                br#"{"csr":"hello"}"#.to_vec(),
                400,
                "csr: not a PEM CERTIFICATE REQUEST",
            ),
        ];
        for (i, (auth, body, status, why)) in cases.into_iter().enumerate() {
            // A fresh address each time, so the rate limit stays out of it.
            let peer = IpAddr::V4(std::net::Ipv4Addr::new(10, 1, 0, i as u8));
            let r = c.certify(auth, &body, peer).await.unwrap_err();
            assert_eq!(r.status, status, "{r:?}");
            assert!(r.message.contains(why), "{r:?}");
        }
    }

    #[tokio::test]
    async fn a_caller_beyond_its_burst_is_told_when_to_come_back() {
        let c = certifier();
        let bad = b"{}".to_vec();
        for _ in 0..5 {
            assert_eq!(
                c.certify(Some("Bearer buyer"), &bad, PEER)
                    .await
                    .unwrap_err()
                    .status,
                400
            );
        }
        let r = c
            .certify(Some("Bearer buyer"), &bad, PEER)
            .await
            .unwrap_err();
        assert_eq!(r.status, 429);
        assert_eq!(r.result, "rate_limited");
        assert!(r.retry_after.unwrap() <= Duration::from_secs(2));
        // Another caller is not affected.
        let other = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 8));
        assert!(c
            .certify(Some("Bearer buyer"), &body("buyer"), other)
            .await
            .is_ok());
    }

    #[test]
    fn a_ca_folder_is_generated_once_then_reused() {
        let dir = tempfile::tempdir().unwrap();
        let source = CaSource::Dir(dir.path().join("ca"));
        let first = source.load("cluster.local").unwrap();
        let again = source.load("cluster.local").unwrap();
        assert_eq!(first.roots(), again.roots(), "a restart keeps the root");
        let roots = std::fs::read_to_string(dir.path().join("ca/roots.pem")).unwrap();
        assert_eq!(roots, first.roots_pem());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("ca/ca.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // Files: the same CA, named by path when broken.
        let files = CaSource::Files {
            cert: dir.path().join("ca/ca.pem"),
            key: dir.path().join("ca/ca.key"),
            roots: None,
        };
        assert_eq!(files.load("cluster.local").unwrap().roots(), first.roots());
        let missing = CaSource::Files {
            cert: dir.path().join("nope.pem"),
            key: dir.path().join("ca/ca.key"),
            roots: None,
        };
        let e = missing.load("cluster.local").unwrap_err().to_string();
        assert!(e.contains("nope.pem"), "{e}");
    }

    #[test]
    fn buckets_refill_at_their_rate_up_to_the_burst() {
        let mut b = Buckets::new(2.0, 0.5);
        let t0 = Instant::now();
        assert!(b.take(PEER, t0).is_ok());
        assert!(b.take(PEER, t0).is_ok());
        assert_eq!(b.take(PEER, t0), Err(Duration::from_secs(2)));
        assert_eq!(
            b.take(PEER, t0 + Duration::from_secs(1)),
            Err(Duration::from_secs(1))
        );
        assert!(b.take(PEER, t0 + Duration::from_secs(2)).is_ok());
        // A long pause refills to the burst, not beyond.
        let later = t0 + Duration::from_secs(3600);
        assert!(b.take(PEER, later).is_ok());
        assert!(b.take(PEER, later).is_ok());
        assert!(b.take(PEER, later).is_err());
    }
}
