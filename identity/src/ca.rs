//! The mesh CA: signs workload certificates for identities a caller has
//! proven (the control plane checks the caller; this module checks the
//! request). The CSR proves possession of the key; everything else in the
//! certificate is decided here, not taken from the request.

use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateSigningRequestDer};

use x509_parser::certificate::X509Certificate;

use crate::{Error, SpiffeId};

/// Slack before "now" in a new certificate's validity, for peers whose
/// clocks run a little behind.
pub const CLOCK_SKEW: Duration = Duration::from_secs(60);

/// How long a generated root lasts.
pub const GENERATED_ROOT_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Where the three parts of a mesh CA are in a Kubernetes Secret (and in
/// the folder it is mounted as): the signing certificate (then its
/// issuers), its key, and the trust roots proxies hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SecretLayout {
    pub cert: &'static str,
    pub key: &'static str,
    pub roots: &'static str,
}

impl SecretLayout {
    /// cert-manager's `kubernetes.io/tls` Secret: `ca.crt` the roots.
    pub const TLS: Self = Self {
        cert: "tls.crt",
        key: "tls.key",
        roots: "ca.crt",
    };
    /// Outrigger's own (the chart's `outrigger-ca`).
    pub const OUTRIGGER: Self = Self {
        cert: "ca.pem",
        key: "ca.key",
        roots: "roots.pem",
    };

    /// The layout of a Secret that holds the keys `has` says it holds:
    /// cert-manager's when `tls.crt` is there, else Outrigger's.
    pub fn of(has: impl Fn(&str) -> bool) -> Self {
        if has(Self::TLS.cert) {
            Self::TLS
        } else {
            Self::OUTRIGGER
        }
    }

    /// Its three keys: certificate, key, roots.
    pub fn keys(&self) -> [&'static str; 3] {
        [self.cert, self.key, self.roots]
    }
}

pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    /// The CA's own certificate, then its issuers (sent after each leaf).
    chain: Vec<CertificateDer<'static>>,
    /// The trust anchors workloads hold.
    roots: Vec<CertificateDer<'static>>,
    /// PEM of the certificate and key, when this CA was generated here.
    generated: Option<(String, String)>,
}

impl std::fmt::Debug for Ca {
    /// Never the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("chain", &self.chain.len())
            .field("roots", &self.roots.len())
            .field("generated", &self.generated.is_some())
            .finish()
    }
}

/// A signed workload certificate.
#[derive(Clone, Debug)]
pub struct Issued {
    /// The leaf, then the CA chain.
    pub chain: Vec<CertificateDer<'static>>,
    pub not_after: SystemTime,
}

impl Ca {
    /// A new self-signed root for `trust_domain` (local mode, when none is
    /// given); [`Ca::generated_pem`] returns it for saving.
    pub fn generate(trust_domain: &str, now: SystemTime) -> Result<Self, Error> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(ca_error)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Outrigger");
        dn.push(
            DnType::CommonName,
            format!("Outrigger mesh CA for {trust_domain}"),
        );
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(1));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = (now - Duration::from_secs(3600)).into();
        params.not_after = (now + GENERATED_ROOT_LIFETIME).into();
        params.serial_number = Some(serial());
        let cert = params.self_signed(&key).map_err(ca_error)?;
        let generated = Some((cert.pem(), key.serialize_pem()));
        let der = cert.der().clone();
        Ok(Self {
            issuer: Issuer::new(params, key),
            chain: vec![der.clone()],
            roots: vec![der],
            generated,
        })
    }

    /// A CA from PEM: `chain` holds the signing certificate first, then
    /// its issuers; `key` its private key; `roots` the trust anchors. With
    /// no `roots`, the last certificate of the chain is the root (a
    /// self-signed CA is its own root).
    pub fn from_pem(chain: &str, key: &str, roots: Option<&str>) -> Result<Self, Error> {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| Error::Pem {
                what: "CA certificate",
                reason: e.to_string(),
            })?;
        let first = chain.first().ok_or(Error::Pem {
            what: "CA certificate",
            reason: "no CERTIFICATE block".into(),
        })?;
        let key = KeyPair::from_pem(key).map_err(|e| Error::Pem {
            what: "CA key",
            reason: key_format_hint(key).unwrap_or_else(|| e.to_string()),
        })?;
        let issuer = Issuer::from_ca_cert_der(first, key).map_err(|e| Error::Pem {
            what: "CA certificate",
            reason: e.to_string(),
        })?;
        let roots = match roots {
            Some(pem) => CertificateDer::pem_slice_iter(pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| Error::Pem {
                    what: "trust roots",
                    reason: e.to_string(),
                })?,
            None => vec![chain.last().expect("not empty").clone()],
        };
        if roots.is_empty() {
            return Err(Error::Pem {
                what: "trust roots",
                reason: "no CERTIFICATE block".into(),
            });
        }
        check_key_matches(first, &issuer)?;
        check_chained(&chain, &roots)?;
        Ok(Self {
            issuer,
            chain,
            roots,
            generated: None,
        })
    }

    /// The trust anchors workloads should hold.
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    /// The trust anchors as PEM.
    pub fn roots_pem(&self) -> String {
        self.roots.iter().map(|c| pem("CERTIFICATE", c)).collect()
    }

    /// (certificate, key) PEM of a CA made by [`Ca::generate`].
    pub fn generated_pem(&self) -> Option<(&str, &str)> {
        self.generated
            .as_ref()
            .map(|(c, k)| (c.as_str(), k.as_str()))
    }

    /// Signs a certificate for `id` with the key of `csr` (DER), valid for
    /// `lifetime` from `now`. The request must ask for exactly `id` (a URI
    /// SAN) and nothing else; its other contents are ignored.
    pub fn issue(
        &self,
        csr: &[u8],
        id: &SpiffeId,
        lifetime: Duration,
        now: SystemTime,
    ) -> Result<Issued, Error> {
        let request = CertificateSigningRequestParams::from_der(
            &CertificateSigningRequestDer::from(csr.to_vec()),
        )
        .map_err(|e| Error::Csr(e.to_string()))?;
        let uri = id.to_string();
        let asked: Vec<String> = request
            .params
            .subject_alt_names
            .iter()
            .map(|san| match san {
                SanType::URI(u) => u.as_str().to_string(),
                other => format!("{other:?}"),
            })
            .collect();
        if asked != [uri.clone()] {
            return Err(Error::IdentityMismatch {
                requested: if asked.is_empty() {
                    "no identity".into()
                } else {
                    asked.join(", ")
                },
                allowed: uri,
            });
        }
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(
            uri.as_str()
                .try_into()
                .map_err(|e: rcgen::Error| Error::Csr(e.to_string()))?,
        )];
        params.distinguished_name = DistinguishedName::new();
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let not_after = now + lifetime;
        params.not_before = (now - CLOCK_SKEW).into();
        params.not_after = not_after.into();
        params.serial_number = Some(serial());
        let cert = CertificateSigningRequestParams {
            params,
            public_key: request.public_key,
        }
        .signed_by(&self.issuer)
        .map_err(ca_error)?;
        let mut chain = vec![cert.der().clone()];
        chain.extend(self.chain.iter().cloned());
        Ok(Issued { chain, not_after })
    }
}

fn parse<'a>(der: &'a [u8], what: &'static str) -> Result<X509Certificate<'a>, Error> {
    x509_parser::parse_x509_certificate(der)
        .map(|(_, c)| c)
        .map_err(|e| Error::Pem {
            what,
            reason: e.to_string(),
        })
}

/// The key must be the signing certificate's: a mismatch would sign
/// certificates no peer can verify.
fn check_key_matches(cert: &[u8], issuer: &Issuer<'static, KeyPair>) -> Result<(), Error> {
    let cert = parse(cert, "CA certificate")?;
    if *cert.public_key().subject_public_key.data != *issuer.key().public_key_raw() {
        return Err(Error::Pem {
            what: "CA key",
            reason: "it is not the key of the CA certificate (the first one)".into(),
        });
    }
    Ok(())
}

/// Each certificate of the chain is signed by the next, and the last is a
/// trust root or signed by one: a CA whose certificates the roots do not
/// verify would break every peer's handshake.
fn check_chained(chain: &[CertificateDer<'_>], roots: &[CertificateDer<'_>]) -> Result<(), Error> {
    let not_chained = |reason: String| Error::Pem {
        what: "CA certificate",
        reason,
    };
    for (i, pair) in chain.windows(2).enumerate() {
        let (child, parent) = (
            parse(&pair[0], "CA certificate")?,
            parse(&pair[1], "CA certificate")?,
        );
        child
            .verify_signature(Some(parent.public_key()))
            .map_err(|_| {
                not_chained(format!(
                    "certificate {} of the chain is not signed by certificate {}",
                    i + 1,
                    i + 2
                ))
            })?;
    }
    let last = chain.last().expect("not empty");
    if roots.contains(last) {
        return Ok(());
    }
    let last = parse(last, "CA certificate")?;
    for root in roots {
        let root = parse(root, "trust roots")?;
        if root.subject() == last.issuer() && last.verify_signature(Some(root.public_key())).is_ok()
        {
            return Ok(());
        }
    }
    Err(not_chained(format!(
        "issued by {:?}, which is not among the trust roots ({})",
        last.issuer().to_string(),
        roots
            .iter()
            .filter_map(|r| parse(r, "trust roots")
                .ok()
                .map(|r| format!("{:?}", r.subject().to_string())))
            .collect::<Vec<_>>()
            .join(", ")
    )))
}

/// What to do with a key in a PEM form other than PKCS#8, the one the
/// signer reads (cert-manager and `openssl genrsa`/`ecparam` write these).
fn key_format_hint(key: &str) -> Option<String> {
    let form = if key.contains("-----BEGIN RSA PRIVATE KEY-----") {
        "a PKCS#1 RSA key (BEGIN RSA PRIVATE KEY)"
    } else if key.contains("-----BEGIN EC PRIVATE KEY-----") {
        "a SEC1 EC key (BEGIN EC PRIVATE KEY)"
    } else {
        return None;
    };
    Some(format!(
        "{form}: give it as PKCS#8 (BEGIN PRIVATE KEY), e.g. `openssl pkcs8 -topk8 -nocrypt -in ca.key`"
    ))
}

/// One PEM block.
pub fn pem(label: &str, der: &[u8]) -> String {
    ::pem::encode_config(
        &::pem::Pem::new(label, der),
        ::pem::EncodeConfig::new().set_line_ending(::pem::LineEnding::LF),
    )
}

/// A random positive 128-bit serial number.
fn serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut bytes)
        .expect("the system random source works");
    bytes[0] &= 0x7f;
    SerialNumber::from_slice(&bytes)
}

fn ca_error(e: rcgen::Error) -> Error {
    Error::Ca(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::{peer_identity, WorkloadKey};

    const DAY: Duration = Duration::from_secs(24 * 3600);

    #[test]
    fn keys_not_in_pkcs8_are_refused_saying_how_to_convert() {
        let ca = Ca::generate("cluster.local", SystemTime::now()).unwrap();
        let (cert, _) = ca.generated_pem().unwrap();
        for (label, form) in [
            ("RSA PRIVATE KEY", "PKCS#1 RSA key"),
            ("EC PRIVATE KEY", "SEC1 EC key"),
        ] {
            let key = pem(label, b"not really a key");
            let e = Ca::from_pem(cert, &key, None).unwrap_err().to_string();
            assert!(
                e.contains(form) && e.contains("openssl pkcs8 -topk8 -nocrypt"),
                "{label}: {e}"
            );
        }
        // Other garbage keeps the parser's own reason.
        let e = Ca::from_pem(cert, "junk", None).unwrap_err().to_string();
        assert!(!e.contains("openssl"), "{e}");
    }

    fn id(sa: &str) -> SpiffeId {
        SpiffeId::new("cluster.local", "shop", sa).unwrap()
    }

    #[test]
    fn issues_exactly_the_identity_asked_for_with_the_lifetime_given() {
        let now = SystemTime::now();
        let ca = Ca::generate("cluster.local", now).unwrap();
        let key = WorkloadKey::generate().unwrap();
        let issued = ca
            .issue(&key.csr(&id("web")).unwrap(), &id("web"), DAY, now)
            .unwrap();
        assert_eq!(issued.chain.len(), 2, "leaf, then the CA");
        assert_eq!(issued.chain[1], ca.roots()[0]);
        assert_eq!(issued.not_after, now + DAY);
        assert_eq!(peer_identity(&issued.chain).unwrap(), id("web"));
        let (_, leaf) = x509_parser::parse_x509_certificate(&issued.chain[0]).unwrap();
        let eku = leaf.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth);
        assert!(!leaf.is_ca());
        let validity = leaf.validity();
        let secs =
            |t: SystemTime| t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs() as i64;
        assert_eq!(validity.not_after.timestamp(), secs(now + DAY));
        assert_eq!(validity.not_before.timestamp(), secs(now - CLOCK_SKEW));
        // The certificate belongs to the requester's key.
        assert!(key.certified(issued.chain).is_ok());
    }

    #[test]
    fn a_request_for_another_identity_is_refused_with_both_names() {
        let now = SystemTime::now();
        let ca = Ca::generate("cluster.local", now).unwrap();
        let key = WorkloadKey::generate().unwrap();
        let e = ca
            .issue(&key.csr(&id("admin")).unwrap(), &id("web"), DAY, now)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "certificate request refused: it asks for spiffe://cluster.local/ns/shop/sa/admin, \
             the caller may only have spiffe://cluster.local/ns/shop/sa/web"
        );
    }

    #[test]
    fn a_request_with_no_identity_or_a_bad_signature_is_refused() {
        let now = SystemTime::now();
        let ca = Ca::generate("cluster.local", now).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let bare = CertificateParams::default()
            .serialize_request(&key)
            .unwrap()
            .der()
            .to_vec();
        let e = ca
            .issue(&bare, &id("web"), DAY, now)
            .unwrap_err()
            .to_string();
        assert!(e.contains("asks for no identity"), "{e}");
        let mut tampered = WorkloadKey::generate().unwrap().csr(&id("web")).unwrap();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        let e = ca
            .issue(&tampered, &id("web"), DAY, now)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("certificate request refused"), "{e}");
        let e = ca
            .issue(b"not a csr", &id("web"), DAY, now)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("certificate request refused"), "{e}");
    }

    #[test]
    fn a_generated_ca_loads_back_from_its_pem() {
        let now = SystemTime::now();
        let ca = Ca::generate("cluster.local", now).unwrap();
        let (cert, key) = ca.generated_pem().unwrap();
        let loaded = Ca::from_pem(cert, key, None).unwrap();
        assert_eq!(loaded.roots(), ca.roots());
        assert_eq!(loaded.roots_pem(), cert);
        let wk = WorkloadKey::generate().unwrap();
        let issued = loaded
            .issue(&wk.csr(&id("web")).unwrap(), &id("web"), DAY, now)
            .unwrap();
        assert_eq!(issued.chain[1], ca.roots()[0]);
        let e = Ca::from_pem("junk", key, None).err().unwrap().to_string();
        assert!(e.starts_with("CA certificate: "), "{e}");
        let e = Ca::from_pem(cert, "junk", None).err().unwrap().to_string();
        assert!(e.starts_with("CA key: "), "{e}");
    }

    #[test]
    fn an_intermediate_under_a_user_root_sends_its_chain() {
        let now = SystemTime::now();
        let root = Ca::generate("cluster.local", now).unwrap();
        // An intermediate signed by the root, as an operator would bring.
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "intermediate");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = (now - DAY).into();
        params.not_after = (now + 30 * DAY).into();
        let inter = params.signed_by(&key, &root.issuer).unwrap();
        let chain = format!("{}{}", inter.pem(), root.roots_pem());
        let ca = Ca::from_pem(&chain, &key.serialize_pem(), Some(&root.roots_pem())).unwrap();
        assert_eq!(ca.roots(), root.roots());
        let wk = WorkloadKey::generate().unwrap();
        let issued = ca
            .issue(&wk.csr(&id("web")).unwrap(), &id("web"), DAY, now)
            .unwrap();
        assert_eq!(issued.chain.len(), 3, "leaf, intermediate, root");
        assert_eq!(issued.chain[1], *inter.der());
    }

    #[test]
    fn a_key_of_another_certificate_or_a_root_that_did_not_sign_is_refused() {
        let now = SystemTime::now();
        let a = Ca::generate("cluster.local", now).unwrap();
        let b = Ca::generate("cluster.local", now).unwrap();
        let (a_cert, a_key) = a.generated_pem().unwrap();
        let (_, b_key) = b.generated_pem().unwrap();
        let e = Ca::from_pem(a_cert, b_key, None).err().unwrap().to_string();
        assert!(e.starts_with("CA key: it is not the key"), "{e}");
        let e = Ca::from_pem(a_cert, a_key, Some(&b.roots_pem()))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("not among the trust roots"), "{e}");
        // A bundle holding both roots (a rotation's first step) is good.
        let both = format!("{}{}", b.roots_pem(), a.roots_pem());
        let ca = Ca::from_pem(a_cert, a_key, Some(&both)).unwrap();
        assert_eq!(ca.roots().len(), 2);
    }

    #[test]
    fn an_intermediate_alone_is_checked_against_its_root() {
        let now = SystemTime::now();
        let root = Ca::generate("cluster.local", now).unwrap();
        let other = Ca::generate("cluster.local", now).unwrap();
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, "issuer");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        params.not_before = (now - DAY).into();
        params.not_after = (now + DAY).into();
        let inter = params.signed_by(&key, &root.issuer).unwrap();
        // cert-manager's layout: tls.crt is the issuer alone, ca.crt the root.
        let key = key.serialize_pem();
        Ca::from_pem(&inter.pem(), &key, Some(&root.roots_pem())).unwrap();
        let e = Ca::from_pem(&inter.pem(), &key, Some(&other.roots_pem()))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("not among the trust roots"), "{e}");
    }

    #[test]
    fn pem_blocks_read_back() {
        let der: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        let text = pem("CERTIFICATE", &der);
        let back: Vec<CertificateDer> = CertificateDer::pem_slice_iter(text.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].as_ref(), &der[..]);
    }
}
