//! Every certificate verifier of the mesh, in one place. rustls verifies
//! chains but knows nothing of URI SANs, so these add the SPIFFE check:
//! - a mesh client accepts only the server identity it expects
//!   ([`ServerVerifier::expecting`]);
//! - a mesh server accepts a client of its trust domain
//!   ([`MeshClientVerifier`]);
//! - a probe client accepts any server certificate, as kubelet does
//!   ([`ServerVerifier::any`]);
//! - a certificate was signed by another's key ([`signed_by`]: whether a
//!   CA is under a root by its signature, not by its issuer's name).
//!
//! All of them check the handshake signatures with the provider's
//! algorithms, as rustls' own verifiers do.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::verify_server_cert_signed_by_trust_anchor;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::ParsedCertificate;
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, RootCertStore,
    SignatureScheme,
};

use crate::{Error, SpiffeId};

/// The SPIFFE identity of a peer's certificate chain (leaf first): the
/// leaf must carry exactly one `spiffe://` URI SAN.
pub fn peer_identity(chain: &[CertificateDer<'_>]) -> Result<SpiffeId, Error> {
    let leaf = chain
        .first()
        .ok_or_else(|| Error::Certificate("no certificate".into()))?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| Error::Certificate(format!("unreadable certificate: {e}")))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| Error::Certificate(format!("unreadable subjectAltName: {e}")))?;
    let uris: Vec<&str> = san
        .iter()
        .flat_map(|s| s.value.general_names.iter())
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::URI(u) if u.starts_with("spiffe://") => Some(*u),
            _ => None,
        })
        .collect();
    match uris[..] {
        [one] => Ok(one.parse::<SpiffeId>()?),
        [] => Err(Error::Certificate(
            "the certificate has no spiffe:// URI SAN".into(),
        )),
        _ => Err(Error::Certificate(format!(
            "the certificate has {} spiffe:// URI SANs, expected one",
            uris.len()
        ))),
    }
}

/// Whether `cert`'s signature verifies with `issuer`'s public key, by the
/// algorithm `cert` names (one of the provider's): what makes `issuer` its
/// issuer, whatever the names say. Validity dates are not looked at.
pub fn signed_by(cert: &CertificateDer<'_>, issuer: &CertificateDer<'_>) -> Result<(), Error> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert)
        .map_err(|e| Error::Certificate(format!("cannot parse the certificate: {e}")))?;
    let key = webpki::EndEntityCert::try_from(issuer)
        .map_err(|e| Error::Certificate(format!("cannot parse the issuer's certificate: {e}")))?;
    let oid = parsed.signature_algorithm.algorithm.as_bytes();
    // webpki's identifiers are the DER contents of an AlgorithmIdentifier:
    // the OID (tag, length, bytes), then any parameters.
    let names_oid =
        |id: &[u8]| id.len() >= 2 && id[0] == 0x06 && id.get(2..2 + id[1] as usize) == Some(oid);
    let candidates: Vec<_> = crate::tls::provider()
        .signature_verification_algorithms
        .all
        .iter()
        .filter(|alg| names_oid(alg.signature_alg_id().as_ref()))
        .copied()
        .collect();
    if candidates.is_empty() {
        return Err(Error::Certificate(format!(
            "the certificate's signature algorithm {} is not one this CLI verifies",
            parsed.signature_algorithm.algorithm
        )));
    }
    let message = parsed.tbs_certificate.as_ref();
    let signature = parsed.signature_value.data.as_ref();
    if candidates
        .iter()
        .any(|alg| key.verify_signature(*alg, message, signature).is_ok())
    {
        Ok(())
    } else {
        Err(Error::Certificate(
            "its signature does not verify with the issuer's public key".into(),
        ))
    }
}

fn refuse(reason: String) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(
        Error::Certificate(reason),
    ))))
}

/// The handshake-signature checks every verifier here makes, with the
/// provider's algorithms in `self.algorithms` (rustls' own verifiers do
/// the same).
macro_rules! signatures_checked_with_algorithms {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.algorithms.supported_schemes()
        }
    };
}

/// What a client accepts of a server's certificate.
#[derive(Debug)]
enum ServerCheck {
    /// A chain to the roots, and exactly this identity.
    Expected {
        roots: Arc<RootCertStore>,
        expected: SpiffeId,
    },
    /// Anything (handshake signatures are still checked).
    Any,
}

/// A client's verifier of the server's certificate.
#[derive(Debug)]
pub(crate) struct ServerVerifier {
    check: ServerCheck,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerVerifier {
    /// Checks the server's chain against `roots`, then that its identity
    /// is `expected`.
    pub(crate) fn expecting(
        roots: Arc<RootCertStore>,
        expected: SpiffeId,
        algorithms: WebPkiSupportedAlgorithms,
    ) -> Self {
        Self {
            check: ServerCheck::Expected { roots, expected },
            algorithms,
        }
    }

    /// Accepts any certificate: kubelet does not verify an app's HTTPS
    /// probe either.
    pub(crate) fn any(algorithms: WebPkiSupportedAlgorithms) -> Self {
        Self {
            check: ServerCheck::Any,
            algorithms,
        }
    }
}

impl ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // Every kind of check named here: a new one must say what it
        // accepts, never fall through to accepting anything.
        let (roots, expected) = match &self.check {
            ServerCheck::Expected { roots, expected } => (roots, expected),
            ServerCheck::Any => return Ok(ServerCertVerified::assertion()),
        };
        let cert = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &cert,
            roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        let id =
            peer_identity(std::slice::from_ref(end_entity)).map_err(|e| refuse(e.to_string()))?;
        if id != *expected {
            return Err(refuse(format!("the server is {id}, expected {expected}")));
        }
        Ok(ServerCertVerified::assertion())
    }

    signatures_checked_with_algorithms!();
}

/// rustls' own client-certificate verifier (chain, validity, clientAuth),
/// then: the identity must be of this trust domain.
#[derive(Debug)]
pub(crate) struct MeshClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    trust_domain: String,
    algorithms: WebPkiSupportedAlgorithms,
}

impl MeshClientVerifier {
    pub(crate) fn new(
        inner: Arc<dyn ClientCertVerifier>,
        trust_domain: String,
        algorithms: WebPkiSupportedAlgorithms,
    ) -> Self {
        Self {
            inner,
            trust_domain,
            algorithms,
        }
    }
}

impl ClientCertVerifier for MeshClientVerifier {
    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let id =
            peer_identity(std::slice::from_ref(end_entity)).map_err(|e| refuse(e.to_string()))?;
        if id.trust_domain() != self.trust_domain {
            return Err(refuse(format!(
                "the client is {id}, not of trust domain {}",
                self.trust_domain
            )));
        }
        Ok(ClientCertVerified::assertion())
    }

    signatures_checked_with_algorithms!();
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SignatureAlgorithm,
    };

    fn ca_params(name: &str) -> CertificateParams {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params
    }

    /// A root named `name` with a key of `alg`: (its DER, its issuer).
    fn root(
        name: &str,
        alg: &'static SignatureAlgorithm,
    ) -> (CertificateDer<'static>, Issuer<'static, KeyPair>) {
        let key = KeyPair::generate_for(alg).unwrap();
        let params = ca_params(name);
        let cert = params.self_signed(&key).unwrap();
        (cert.der().clone(), Issuer::new(params, key))
    }

    #[test]
    fn a_ca_is_signed_by_the_root_whose_key_signed_it_not_by_a_namesake() {
        for alg in [
            &rcgen::PKCS_ECDSA_P256_SHA256,
            &rcgen::PKCS_ECDSA_P384_SHA384,
            &rcgen::PKCS_ED25519,
        ] {
            let (root_der, issuer) = root("outrigger root", alg);
            // Another root of the same name, with its own key.
            let (namesake, _) = root("outrigger root", alg);
            let key = KeyPair::generate_for(alg).unwrap();
            let intermediate = ca_params("outrigger intermediate")
                .signed_by(&key, &issuer)
                .unwrap();
            let intermediate = intermediate.der();
            signed_by(intermediate, &root_der).unwrap();
            signed_by(&root_der, &root_der).unwrap();
            let e = signed_by(intermediate, &namesake).unwrap_err();
            assert_eq!(
                e.to_string(),
                "its signature does not verify with the issuer's public key",
                "{alg:?}"
            );
            let e = signed_by(&root_der, intermediate).unwrap_err();
            assert!(e.to_string().contains("does not verify"), "{e}");
        }
    }

    #[test]
    fn an_unreadable_certificate_is_an_error_naming_which() {
        let (root_der, _) = root("r", &rcgen::PKCS_ECDSA_P256_SHA256);
        let junk = CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x01]);
        let e = signed_by(&junk, &root_der).unwrap_err();
        assert!(
            e.to_string().starts_with("cannot parse the certificate"),
            "{e}"
        );
        let e = signed_by(&root_der, &junk).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("cannot parse the issuer's certificate"),
            "{e}"
        );
    }
}
