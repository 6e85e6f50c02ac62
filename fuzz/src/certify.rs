//! The certify request (`POST /v1/certify`): a bearer token and a JSON body
//! holding a PEM CSR, and the CSR itself as the CA reads it.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use outrigger_control_plane::authn::{
    service_account_of, Authenticate, AuthnError, AuthnFuture, Caller,
};
use outrigger_control_plane::certify::Certifier;
use outrigger_identity::inspect::{certificates, signed_by};
use outrigger_identity::tls::peer_identity;
use outrigger_identity::{Ca, SpiffeId};

const TRUST_DOMAIN: &str = "cluster.local";

/// Tokens of two workloads in `shop`; `down` stands for an API server
/// that cannot be reached.
struct Tokens;

impl Authenticate for Tokens {
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

struct Fixture {
    runtime: tokio::runtime::Runtime,
    ca: Arc<Ca>,
    certifier: Certifier,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let ca = Arc::new(Ca::generate(TRUST_DOMAIN, SystemTime::now()).expect("a CA"));
        let certifier = Certifier::new(
            ca.clone(),
            TRUST_DOMAIN,
            Duration::from_secs(3600),
            Arc::new(Tokens),
        )
        // Every case comes from one address; the limit is not under test.
        .with_rate_limit(1e12, 1e12);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime");
        Fixture {
            runtime,
            ca,
            certifier,
        }
    })
}

/// The input's first line is the `Authorization` header (and, read as a
/// TokenReview's username, [`service_account`]), the rest the body. Never panics; a refusal is 400, 401, 403 or 503 with a message;
/// a certificate is issued only to a known token, for exactly the
/// identity that token has, signed by the CA, with the CA's roots.
pub fn request(data: &[u8]) {
    let f = fixture();
    let (header, body) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let header = std::str::from_utf8(header).ok();
    if let Some(username) = header {
        service_account(username);
    }
    let peer = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7));
    match f.runtime.block_on(f.certifier.certify(header, body, peer)) {
        Ok((id, answer)) => {
            let token = header
                .and_then(|h| h.strip_prefix("Bearer "))
                .map(str::trim);
            assert!(
                matches!(token, Some("buyer" | "web")),
                "issued to {token:?}"
            );
            let expected = SpiffeId::new(TRUST_DOMAIN, "shop", token.unwrap_or_default());
            assert_eq!(Ok(&id), expected.as_ref());
            let chain = certificates(&answer.certificate_chain, "chain").expect("a PEM chain");
            assert_eq!(peer_identity(&chain).expect("a SPIFFE leaf"), id);
            signed_by(&chain[0], &chain[1]).expect("signed by the CA");
            assert_eq!(answer.trust_roots, f.ca.roots_pem());
        }
        Err(refusal) => {
            assert!(
                matches!(refusal.status, 400 | 401 | 403 | 503),
                "{} {}",
                refusal.status,
                refusal.message
            );
            assert!(!refusal.message.is_empty());
        }
    }
}

/// A TokenReview's username read as a ServiceAccount (the token's other
/// half: who the API server says the caller is): only
/// `system:serviceaccount:<ns>:<name>`, both parts non-empty and without
/// `:`, which it gives back exactly.
fn service_account(username: &str) {
    if let Ok(caller) = service_account_of(username) {
        let (ns, sa) = (&caller.namespace, &caller.service_account);
        assert!(!ns.is_empty() && !sa.is_empty() && !ns.contains(':') && !sa.contains(':'));
        assert_eq!(format!("system:serviceaccount:{ns}:{sa}"), username);
    }
}

/// The input as a CSR's DER. Never panics; a certificate is issued only
/// when the CSR asks for exactly the caller's identity, and it names that
/// identity alone.
pub fn csr_der(data: &[u8]) {
    let f = fixture();
    let id = SpiffeId::new(TRUST_DOMAIN, "shop", "buyer").expect("an identity");
    if let Ok(issued) =
        f.ca.issue(data, &id, Duration::from_secs(3600), SystemTime::now())
    {
        assert_eq!(peer_identity(&issued.chain).expect("a SPIFFE leaf"), id);
        signed_by(&issued.chain[0], &issued.chain[1]).expect("signed by the CA");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed(name: &str) -> Vec<u8> {
        std::fs::read(crate::budget::corpus_dir("certify_request").join(name)).unwrap()
    }

    /// The seeds reach the properties' deep end: one is certified, one is
    /// refused for asking another identity, one has no token.
    #[test]
    fn the_seeds_reach_issuance_and_each_refusal() {
        let f = fixture();
        let peer = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let status = |name: &str| {
            let data = seed(name);
            let at = data.iter().position(|&b| b == b'\n').unwrap();
            let header = std::str::from_utf8(&data[..at]).unwrap();
            let body = &data[at + 1..];
            let header = (!header.is_empty()).then_some(header);
            match f.runtime.block_on(f.certifier.certify(header, body, peer)) {
                Ok(_) => 200,
                Err(r) => r.status,
            }
        };
        assert_eq!(status("buyer"), 200);
        assert_eq!(status("wrong-identity"), 403);
        assert_eq!(status("not-pem"), 400);
        assert_eq!(status("no-token"), 401);
        let der = std::fs::read(crate::budget::corpus_dir("csr_der").join("buyer.der")).unwrap();
        let id = SpiffeId::new(TRUST_DOMAIN, "shop", "buyer").unwrap();
        assert!(f
            .ca
            .issue(&der, &id, Duration::from_secs(60), SystemTime::now())
            .is_ok());
    }
}
