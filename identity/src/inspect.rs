//! Reading certificates someone else made (a webhook's `caBundle`, its
//! serving certificate): when they expire, and whether a chain is valid for
//! a DNS name under given roots, as a TLS client (the API server) checks it,
//! and whether one certificate was signed by another's key ([`signed_by`],
//! a verifier, so in `verify.rs`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::client::danger::ServerCertVerifier as _;
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::RootCertStore;

use crate::Error;

pub use crate::verify::signed_by;

/// The certificates of a PEM text, in order; `what` names it in errors.
pub fn certificates(pem: &str, what: &'static str) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Pem {
            what,
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(Error::Pem {
            what,
            reason: "no CERTIFICATE block".into(),
        });
    }
    Ok(certs)
}

/// When `cert` stops being valid.
pub fn not_after(cert: &CertificateDer<'_>) -> Result<SystemTime, Error> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert)
        .map_err(|e| Error::Certificate(format!("cannot parse the certificate: {e}")))?;
    let secs = parsed.validity().not_after.timestamp();
    Ok(UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64))
}

/// The (subject, issuer) distinguished names of `cert`, as text.
pub fn names(cert: &CertificateDer<'_>) -> Result<(String, String), Error> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert)
        .map_err(|e| Error::Certificate(format!("cannot parse the certificate: {e}")))?;
    Ok((parsed.subject().to_string(), parsed.issuer().to_string()))
}

/// Whether `chain` (leaf first) is valid at `now` for `dns_name` under
/// `roots`, as a TLS client checks a server: the error says why not
/// (another name, expired, unknown issuer).
pub fn verify_server(
    roots: &[CertificateDer<'static>],
    chain: &[CertificateDer<'static>],
    dns_name: &str,
    now: SystemTime,
) -> Result<(), rustls::Error> {
    let mut store = RootCertStore::empty();
    for root in roots {
        store
            .add(root.clone())
            .map_err(|e| rustls::Error::General(format!("a root is not usable: {e}")))?;
    }
    let verifier =
        WebPkiServerVerifier::builder_with_provider(store.into(), crate::tls::provider())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
    let (leaf, intermediates) = chain
        .split_first()
        .ok_or_else(|| rustls::Error::General("no certificate".into()))?;
    let name = ServerName::try_from(dns_name.to_string())
        .map_err(|e| rustls::Error::General(format!("{dns_name}: {e}")))?;
    let now = UnixTime::since_unix_epoch(now.duration_since(UNIX_EPOCH).unwrap_or_default());
    verifier
        .verify_server_cert(leaf, intermediates, &name, &[], now)
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

    const DAY: Duration = Duration::from_secs(86_400);

    fn ca_and_leaf(
        name: &str,
        lifetime: Duration,
    ) -> (CertificateDer<'static>, CertificateDer<'static>) {
        let now = SystemTime::now();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.not_before = (now - DAY).into();
        params.not_after = (now + 365 * DAY).into();
        let ca = params.self_signed(&key).unwrap();
        let issuer = Issuer::new(params, key);
        let leaf_key = KeyPair::generate().unwrap();
        let mut leaf = CertificateParams::new(vec![name.to_string()]).unwrap();
        leaf.not_before = (now - DAY).into();
        leaf.not_after = (now + lifetime).into();
        let leaf = leaf.signed_by(&leaf_key, &issuer).unwrap();
        (ca.der().clone(), leaf.der().clone())
    }

    #[test]
    fn a_leaf_is_valid_for_its_name_only_and_until_it_expires() {
        let (ca, leaf) = ca_and_leaf("outrigger-injector.mesh.svc", 10 * DAY);
        let now = SystemTime::now();
        let chain = [leaf.clone()];
        let roots = [ca];
        verify_server(&roots, &chain, "outrigger-injector.mesh.svc", now).unwrap();
        let e = verify_server(&roots, &chain, "other.mesh.svc", now).unwrap_err();
        assert!(e.to_string().contains("not valid for name"), "{e}");
        let e = verify_server(
            &roots,
            &chain,
            "outrigger-injector.mesh.svc",
            now + 11 * DAY,
        )
        .unwrap_err();
        assert!(e.to_string().contains("expired"), "{e}");
        let left = not_after(&leaf).unwrap().duration_since(now).unwrap();
        assert!(left > 9 * DAY && left <= 10 * DAY, "{left:?}");
    }

    #[test]
    fn pem_without_a_certificate_is_refused() {
        let e = certificates("nothing", "caBundle").unwrap_err();
        assert_eq!(e.to_string(), "caBundle: no CERTIFICATE block");
    }
}
