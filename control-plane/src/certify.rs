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

use arc_swap::ArcSwap;
use outrigger_api::certify::{CertifyRequest, CertifyResponse};
use outrigger_identity::ca::pem;
use outrigger_identity::{Ca, CurrentCert, SecretLayout, SpiffeId, TrustBundle, WorkloadKey};
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
    /// The CA in force: replaced whole when its Secret changes.
    ca: ArcSwap<Ca>,
    /// The control plane's own serving TLS, rebuilt when the CA changes.
    serving: Mutex<Option<Serving>>,
    trust_domain: String,
    lifetime: Duration,
    authn: Arc<dyn Authenticate>,
    limits: Mutex<Buckets>,
}

/// The control plane's TLS as a server: its own certificate and the
/// config clients are verified with (the CA's roots).
struct Serving {
    own: SpiffeId,
    alpn: Vec<Vec<u8>>,
    cert: Arc<CurrentCert>,
    config: Arc<ArcSwap<rustls::ServerConfig>>,
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
            ca: ArcSwap::new(ca),
            serving: Mutex::new(None),
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
        self.ca.load().roots_pem()
    }

    /// How many trust roots the CA in force has.
    pub fn roots_count(&self) -> usize {
        self.ca.load().roots().len()
    }

    /// Puts `ca` in force: new certificates are signed by it, answers carry
    /// its roots (proxies follow them), and the control plane's own
    /// certificate and client verification move to it at once.
    pub fn replace_ca(&self, ca: Ca) -> Result<(), outrigger_identity::Error> {
        let previous = self.ca.swap(Arc::new(ca));
        if let Err(e) = self.reserve() {
            self.ca.store(previous);
            let _ = self.reserve();
            return Err(e);
        }
        Ok(())
    }

    /// Rebuilds the serving TLS (when serving) under the CA in force.
    fn reserve(&self) -> Result<(), outrigger_identity::Error> {
        let serving = self.serving.lock().expect("serving lock");
        let Some(s) = serving.as_ref() else {
            return Ok(());
        };
        let (certified, _) = self.own_certificate(&s.own)?;
        let alpn: Vec<&[u8]> = s.alpn.iter().map(Vec::as_slice).collect();
        let config = outrigger_identity::tls::server_config_with(
            s.cert.clone(),
            &self.trust()?,
            &alpn,
            outrigger_identity::tls::ClientAuth::Optional,
        )?;
        s.cert.set(certified);
        s.config.store(Arc::new(config));
        Ok(())
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
        // One CA for the certificate and the roots sent with it.
        let ca = self.ca.load_full();
        let issued = ca
            .issue(&csr, &id, self.lifetime, SystemTime::now())
            .map_err(|e| Refusal::new(403, "refused", e.to_string()))?;
        let chain: String = issued.chain.iter().map(|c| pem("CERTIFICATE", c)).collect();
        Ok((
            id,
            CertifyResponse {
                certificate_chain: chain,
                trust_roots: ca.roots_pem(),
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
            .load()
            .issue(&key.csr(id)?, id, self.lifetime, SystemTime::now())?;
        let (_, certified) = key.certified(issued.chain)?;
        Ok((certified, issued.not_after))
    }

    /// The CA's roots as a trust bundle.
    pub fn trust(&self) -> Result<TrustBundle, outrigger_identity::Error> {
        TrustBundle::new(&self.trust_domain, self.ca.load().roots())
    }

    /// The control plane's TLS config, serving as `own` with a certificate
    /// kept renewed until `stop`: client certificates are optional (a proxy
    /// asking for its first one has none) and verified when sent. The
    /// config is replaced when the CA is ([`Certifier::replace_ca`]).
    pub fn server_tls(
        self: &Arc<Self>,
        own: SpiffeId,
        alpn: &[&[u8]],
        stop: drain::Watch,
    ) -> Result<Arc<ArcSwap<rustls::ServerConfig>>, outrigger_identity::Error> {
        let cert = Arc::new(CurrentCert::default());
        cert.set(self.own_certificate(&own)?.0);
        let config = outrigger_identity::tls::server_config_with(
            cert.clone(),
            &self.trust()?,
            alpn,
            outrigger_identity::tls::ClientAuth::Optional,
        )?;
        let config = Arc::new(ArcSwap::from_pointee(config));
        *self.serving.lock().expect("serving lock") = Some(Serving {
            own: own.clone(),
            alpn: alpn.iter().map(|a| a.to_vec()).collect(),
            cert: cert.clone(),
            config: config.clone(),
        });
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
    /// A mounted Secret: cert-manager's `kubernetes.io/tls` layout
    /// (`tls.crt`, `tls.key`, and `ca.crt` the trust roots) when `tls.crt`
    /// is there, else Outrigger's own (`ca.pem`, `ca.key`, `roots.pem`).
    /// Without a roots file, the chain's last certificate is the root.
    Secret(PathBuf),
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
                let roots_path = roots;
                let roots = roots.as_deref().map(read).transpose()?;
                Ca::from_pem(&read(cert)?, &read(key)?, roots.as_deref()).map_err(|source| {
                    CaError::Invalid {
                        place: match &roots_path {
                            Some(r) => {
                                format!("{}, {} and {}", cert.display(), key.display(), r.display())
                            }
                            None => format!("{} and {}", cert.display(), key.display()),
                        },
                        source,
                    }
                })
            }
            CaSource::Secret(dir) => {
                let (cert, key, roots) = Self::secret_files(dir);
                let roots = roots.filter(|r| r.exists());
                CaSource::Files { cert, key, roots }.load(trust_domain)
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

impl CaSource {
    /// The files of a Secret's directory, in the layout found there:
    /// cert-manager's when `tls.crt` is there, else Outrigger's.
    fn secret_files(dir: &Path) -> (PathBuf, PathBuf, Option<PathBuf>) {
        let layout = SecretLayout::of(|f| dir.join(f).exists());
        let [cert, key, roots] = layout.keys().map(|f| dir.join(f));
        (cert, key, Some(roots))
    }

    /// The files whose content makes this CA; a change in any of them is
    /// a new CA to load. A generated CA (`Dir`) is not reloaded.
    pub fn watched_files(&self) -> Vec<PathBuf> {
        match self {
            CaSource::Files { cert, key, roots } => {
                let mut files = vec![cert.clone(), key.clone()];
                files.extend(roots.clone());
                files
            }
            CaSource::Secret(dir) => SecretLayout::TLS
                .keys()
                .iter()
                .chain(SecretLayout::OUTRIGGER.keys().iter())
                .map(|f| dir.join(f))
                .collect(),
            CaSource::Dir(_) => Vec::new(),
        }
    }

    /// A hash of the watched files' contents (a missing file counts as
    /// such): kubelet updates a mounted Secret by swapping a symlink, so
    /// the content, not a modification time, says what changed.
    pub fn fingerprint(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::hash::DefaultHasher::new();
        for f in self.watched_files() {
            std::fs::read(&f).ok().hash(&mut h);
        }
        h.finish()
    }
}

/// What a look at the CA's files found.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Reload {
    Unchanged,
    /// A new CA is in force.
    Applied,
    /// The files changed to something that is not a good CA; the CA in
    /// force stays.
    Refused,
}

impl Reload {
    /// The label of `outrigger_cp_ca_reloads_total`.
    pub fn result(self) -> Option<&'static str> {
        match self {
            Reload::Unchanged => None,
            Reload::Applied => Some("applied"),
            Reload::Refused => Some("refused"),
        }
    }
}

/// Follows the CA's files: when their content changes, loads them and puts
/// the new CA in force, or refuses it (logged, naming the files) and keeps
/// the one in force. Never fails open.
pub struct CaReloader {
    source: CaSource,
    trust_domain: String,
    certifier: Arc<Certifier>,
    seen: u64,
}

impl CaReloader {
    /// `seen` is the fingerprint taken before the CA in force was loaded.
    pub fn new(
        source: CaSource,
        trust_domain: impl Into<String>,
        certifier: Arc<Certifier>,
        seen: u64,
    ) -> Self {
        Self {
            source,
            trust_domain: trust_domain.into(),
            certifier,
            seen,
        }
    }

    /// One look at the files.
    pub fn check(&mut self) -> Reload {
        let now = self.source.fingerprint();
        if now == self.seen {
            return Reload::Unchanged;
        }
        // A half-swapped read fails to load and is refused; the next look
        // sees the finished content as another change.
        self.seen = now;
        let loaded = self
            .source
            .load(&self.trust_domain)
            .map_err(|e| e.to_string())
            .and_then(|ca| {
                self.certifier
                    .replace_ca(ca)
                    .map_err(|e| format!("the control plane's own certificate: {e}"))
            });
        match loaded {
            Ok(()) => {
                tracing::info!(source = ?self.source, roots = %self.certifier.roots_count(), "mesh CA reloaded: new certificates are signed by it and proxies get its roots");
                Reload::Applied
            }
            Err(e) => {
                tracing::error!(source = ?self.source, error = %e, "mesh CA not reloaded: the CA in force stays");
                Reload::Refused
            }
        }
    }

    /// Looks every `every` until `stop`, counting each reload by result.
    pub async fn run(
        mut self,
        every: Duration,
        reloads: prometheus_client::metrics::family::Family<
            crate::metrics::ResultLabel,
            prometheus_client::metrics::counter::Counter,
        >,
        stop: drain::Watch,
    ) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.signaled() => return,
            }
            if let Some(result) = self.check().result() {
                reloads
                    .get_or_create(&crate::metrics::ResultLabel { result })
                    .inc();
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

    use crate::mounted_secret::MountedSecret;

    fn source(secret: &MountedSecret) -> CaSource {
        CaSource::Secret(secret.path().to_path_buf())
    }

    /// The CA certificate that signed the first certificate of an answer.
    fn issuer_of(answer: &CertifyResponse) -> String {
        let certs: Vec<String> = answer
            .certificate_chain
            .split_inclusive("-----END CERTIFICATE-----\n")
            .map(str::to_string)
            .collect();
        certs[1].clone()
    }

    #[tokio::test]
    async fn a_trust_anchor_rotation_in_three_secret_updates_and_bad_secrets_refused() {
        let now = SystemTime::now();
        let old = Ca::generate("cluster.local", now).unwrap();
        let new = Ca::generate("cluster.local", now).unwrap();
        let (old_crt, old_key) = old.generated_pem().unwrap();
        let (new_crt, new_key) = new.generated_pem().unwrap();
        let both = format!("{old_crt}{new_crt}");
        let mut secret = MountedSecret::new(&[
            ("tls.crt", old_crt),
            ("tls.key", old_key),
            ("ca.crt", old_crt),
        ]);
        let source = source(&secret);
        let seen = source.fingerprint();
        let c = Arc::new(
            Certifier::new(
                Arc::new(source.load("cluster.local").unwrap()),
                "cluster.local",
                DEFAULT_LIFETIME,
                Arc::new(FakeAuthn),
            )
            .with_rate_limit(100.0, 100.0),
        );
        let mut reloader = CaReloader::new(source, "cluster.local", c.clone(), seen);
        assert_eq!(reloader.check(), Reload::Unchanged);
        let ask = || async {
            c.certify(Some("Bearer web"), &body("web"), PEER)
                .await
                .unwrap()
                .1
        };

        // 1. The new root joins the bundle; the old issuer still signs.
        secret.update(&[
            ("tls.crt", old_crt),
            ("tls.key", old_key),
            ("ca.crt", &both),
        ]);
        assert_eq!(reloader.check(), Reload::Applied);
        let answer = ask().await;
        assert_eq!(answer.trust_roots, both);
        assert_eq!(issuer_of(&answer), old_crt);

        // A key of another certificate is refused; the CA in force stays.
        secret.update(&[
            ("tls.crt", old_crt),
            ("tls.key", new_key),
            ("ca.crt", &both),
        ]);
        assert_eq!(reloader.check(), Reload::Refused);
        assert_eq!(reloader.check(), Reload::Unchanged, "refused once");
        assert_eq!(ask().await.trust_roots, both);
        // So is junk.
        secret.update(&[("tls.crt", "junk"), ("tls.key", old_key), ("ca.crt", &both)]);
        assert_eq!(reloader.check(), Reload::Refused);
        assert_eq!(issuer_of(&ask().await), old_crt);

        // 2. The new issuer signs; both roots are still trusted.
        secret.update(&[
            ("tls.crt", new_crt),
            ("tls.key", new_key),
            ("ca.crt", &both),
        ]);
        assert_eq!(reloader.check(), Reload::Applied);
        let answer = ask().await;
        assert_eq!(issuer_of(&answer), new_crt);
        assert_eq!(answer.trust_roots, both);

        // An issuer not chained to the bundle is refused (here: step 3
        // done wrong, removing the new root instead of the old one).
        secret.update(&[
            ("tls.crt", new_crt),
            ("tls.key", new_key),
            ("ca.crt", old_crt),
        ]);
        assert_eq!(reloader.check(), Reload::Refused);
        assert_eq!(ask().await.trust_roots, both);

        // 3. The old root leaves the bundle.
        secret.update(&[
            ("tls.crt", new_crt),
            ("tls.key", new_key),
            ("ca.crt", new_crt),
        ]);
        assert_eq!(reloader.check(), Reload::Applied);
        let answer = ask().await;
        assert_eq!(answer.trust_roots, new_crt);
        assert_eq!(issuer_of(&answer), new_crt);
    }

    #[test]
    fn a_secret_in_outriggers_own_layout_loads_and_a_refusal_names_the_files() {
        let ca = Ca::generate("cluster.local", SystemTime::now()).unwrap();
        let (crt, key) = ca.generated_pem().unwrap();
        let secret = MountedSecret::new(&[("ca.pem", crt), ("ca.key", key)]);
        let loaded = source(&secret).load("cluster.local").unwrap();
        assert_eq!(loaded.roots(), ca.roots());
        let other = Ca::generate("cluster.local", SystemTime::now()).unwrap();
        let bad = MountedSecret::new(&[
            ("tls.crt", crt),
            ("tls.key", other.generated_pem().unwrap().1),
            ("ca.crt", crt),
        ]);
        let e = source(&bad).load("cluster.local").unwrap_err().to_string();
        let dir = bad.path().display().to_string();
        assert!(
            e.contains(&format!("{dir}/tls.crt, {dir}/tls.key and {dir}/ca.crt")),
            "{e}"
        );
        assert!(e.contains("CA key: it is not the key"), "{e}");
    }

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
