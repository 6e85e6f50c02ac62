//! rustls configurations for mesh hops: TLS 1.3 only, both sides present a
//! workload certificate, and each side checks the other's SPIFFE identity
//! (the verifiers are in `verify.rs`): the client side accepts only
//! the identity it expects for the endpoint; the server side accepts any
//! identity of its trust domain (authorization decides what that identity
//! may do). Also the workload's key and the certificate it presents, and
//! the one client that checks no certificate (for kubelet's HTTPS probes).

use std::sync::Arc;

use arc_swap::ArcSwapOption;
use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig, SignatureScheme};

pub use crate::verify::peer_identity;
use crate::verify::{MeshClientVerifier, ServerVerifier};
use crate::{Error, SpiffeId};

/// The crypto provider every mesh config uses (ring).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The trust anchors of one trust domain. During a root rotation it holds
/// the old and the new root, so certificates from either verify.
#[derive(Clone, Debug)]
pub struct TrustBundle {
    trust_domain: String,
    roots: Arc<RootCertStore>,
}

impl TrustBundle {
    pub fn new(trust_domain: &str, roots: &[CertificateDer<'static>]) -> Result<Self, Error> {
        let mut store = RootCertStore::empty();
        for r in roots {
            store.add(r.clone()).map_err(|e| Error::Pem {
                what: "trust root",
                reason: e.to_string(),
            })?;
        }
        if store.is_empty() {
            return Err(Error::Pem {
                what: "trust roots",
                reason: "no root".into(),
            });
        }
        Ok(Self {
            trust_domain: trust_domain.to_string(),
            roots: Arc::new(store),
        })
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The roots' public keys (DER SubjectPublicKeyInfo contents), which
    /// tell two bundles apart where subjects may be the same.
    pub fn root_keys(&self) -> Vec<Vec<u8>> {
        self.roots
            .roots
            .iter()
            .map(|a| a.subject_public_key_info.as_ref().to_vec())
            .collect()
    }
}

/// A workload's private key. It is generated in the workload and never
/// leaves it: only CSRs do.
pub struct WorkloadKey {
    key: rcgen::KeyPair,
}

impl WorkloadKey {
    /// A new ECDSA P-256 key.
    pub fn generate() -> Result<Self, Error> {
        Ok(Self {
            key: rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
                .map_err(|e| Error::Csr(e.to_string()))?,
        })
    }

    /// A CSR (DER) asking for `id`, signed with this key.
    pub fn csr(&self, id: &SpiffeId) -> Result<Vec<u8>, Error> {
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.subject_alt_names = vec![rcgen::SanType::URI(
            id.to_string()
                .try_into()
                .map_err(|e: rcgen::Error| Error::Csr(e.to_string()))?,
        )];
        let csr = params
            .serialize_request(&self.key)
            .map_err(|e| Error::Csr(e.to_string()))?;
        Ok(csr.der().to_vec())
    }

    /// This key with a certificate chain issued for it (leaf first). Fails
    /// when the leaf is not for this key or carries no SPIFFE identity.
    pub fn certified(
        &self,
        chain: Vec<CertificateDer<'static>>,
    ) -> Result<(SpiffeId, Arc<CertifiedKey>), Error> {
        let id = peer_identity(&chain)?;
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.serialize_der()));
        let signer = provider()
            .key_provider
            .load_private_key(der)
            .map_err(|e| Error::Certificate(e.to_string()))?;
        let certified = CertifiedKey::new(chain, signer);
        certified
            .keys_match()
            .map_err(|e| Error::Certificate(format!("not issued for this key: {e}")))?;
        Ok((id, Arc::new(certified)))
    }
}

/// The certificate a proxy presents, swapped in place on renewal: new
/// handshakes use the new one, established connections are untouched.
#[derive(Debug, Default)]
pub struct CurrentCert(ArcSwapOption<CertifiedKey>);

impl CurrentCert {
    pub fn set(&self, cert: Arc<CertifiedKey>) {
        self.0.store(Some(cert));
    }

    pub fn get(&self) -> Option<Arc<CertifiedKey>> {
        self.0.load_full()
    }
}

impl ResolvesServerCert for CurrentCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.get()
    }
}

impl ResolvesClientCert for CurrentCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.get()
    }

    fn has_certs(&self) -> bool {
        self.get().is_some()
    }
}

/// Whether a server requires a client certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// Mesh hops: no certificate, no connection.
    Required,
    /// The control plane: proxies without a certificate yet may connect
    /// (to ask for one); a certificate, when sent, is verified all the same.
    Optional,
}

/// The server side of a mesh hop: requires a client certificate of the
/// bundle's trust domain. `alpn`: the protocols offered (e.g. `h2`).
pub fn server_config(
    cert: Arc<CurrentCert>,
    trust: &TrustBundle,
    alpn: &[&[u8]],
) -> Result<ServerConfig, Error> {
    server_config_with(cert, trust, alpn, ClientAuth::Required)
}

/// [`server_config`] with the client certificate required or optional.
pub fn server_config_with(
    cert: Arc<CurrentCert>,
    trust: &TrustBundle,
    alpn: &[&[u8]],
    client_auth: ClientAuth,
) -> Result<ServerConfig, Error> {
    let provider = provider();
    let mut builder =
        WebPkiClientVerifier::builder_with_provider(trust.roots.clone(), provider.clone());
    if client_auth == ClientAuth::Optional {
        builder = builder.allow_unauthenticated();
    }
    let inner = builder
        .build()
        .map_err(|e| Error::Certificate(e.to_string()))?;
    let verifier = Arc::new(MeshClientVerifier::new(
        inner,
        trust.trust_domain.clone(),
        provider.signature_verification_algorithms,
    ));
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Error::Certificate(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(cert);
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// The client side of a mesh hop to a server that must be `expected`.
pub fn client_config(
    cert: Arc<CurrentCert>,
    trust: &TrustBundle,
    expected: SpiffeId,
    alpn: &[&[u8]],
) -> Result<ClientConfig, Error> {
    let provider = provider();
    let verifier = Arc::new(ServerVerifier::expecting(
        trust.roots.clone(),
        expected,
        provider.signature_verification_algorithms,
    ));
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Error::Certificate(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(cert);
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// A TLS client that accepts any server certificate (handshake signatures
/// still checked) and sends none: what kubelet's HTTPS probes do, and so
/// what the proxy does when it runs them for kubelet. Never for mesh hops.
pub fn any_server_client_config() -> ClientConfig {
    let provider = provider();
    let verifier = Arc::new(ServerVerifier::any(
        provider.signature_verification_algorithms,
    ));
    ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("the ring provider supports the default versions")
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth()
}

/// The server name a mesh client puts in its ClientHello. Mesh hops are
/// addressed by identity, not DNS, so the verifier ignores it; the inbound
/// side reads it to tell mesh TLS from an app's own TLS.
pub const MESH_SERVER_NAME: &str = "outrigger.mesh";

/// [`MESH_SERVER_NAME`] as rustls takes it.
pub fn server_name() -> ServerName<'static> {
    ServerName::try_from(MESH_SERVER_NAME).expect("a valid DNS name")
}
