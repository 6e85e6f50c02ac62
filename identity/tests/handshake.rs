//! Real TLS handshakes (tokio-rustls over an in-memory pipe) between mesh
//! configs: who is accepted, who is refused, and what each side learns.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use outrigger_identity::tls::{self, peer_identity};
use outrigger_identity::{Ca, CurrentCert, SpiffeId, TrustBundle, WorkloadKey};
use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::{TlsAcceptor, TlsConnector};

const TD: &str = "cluster.local";
const DAY: Duration = Duration::from_secs(24 * 3600);

fn id(ns: &str, sa: &str) -> SpiffeId {
    SpiffeId::new(TD, ns, sa).unwrap()
}

/// A workload certificate for `who` from `ca`, issued at `at`.
fn workload(ca: &Ca, who: &SpiffeId, at: SystemTime, lifetime: Duration) -> Arc<CurrentCert> {
    let key = WorkloadKey::generate().unwrap();
    let issued = ca.issue(&key.csr(who).unwrap(), who, lifetime, at).unwrap();
    let (got, certified) = key.certified(issued.chain).unwrap();
    assert_eq!(&got, who);
    let cert = Arc::new(CurrentCert::default());
    cert.set(certified);
    cert
}

fn bundle(roots: &[&Ca]) -> TrustBundle {
    let all: Vec<CertificateDer<'static>> = roots
        .iter()
        .flat_map(|c| c.roots().iter().cloned())
        .collect();
    TrustBundle::new(TD, &all).unwrap()
}

/// What each side of one handshake saw: the client's result (the ALPN
/// agreed and the server's leaf certificate), and the server's (the client
/// identity it verified).
async fn handshake(
    server: rustls::ServerConfig,
    client: rustls::ClientConfig,
) -> (Result<(Vec<u8>, Vec<u8>), String>, Result<SpiffeId, String>) {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let acceptor = TlsAcceptor::from(Arc::new(server));
    let connector = TlsConnector::from(Arc::new(client));
    let server_side = tokio::spawn(async move {
        let mut tls = acceptor.accept(b).await.map_err(|e| e.to_string())?;
        // A server that let a client in without a certificate still talks.
        let peer = peer_identity(tls.get_ref().1.peer_certificates().unwrap_or_default())
            .map_err(|e| e.to_string());
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        tls.write_all(b"pong").await.map_err(|e| e.to_string())?;
        tls.shutdown().await.map_err(|e| e.to_string())?;
        peer
    });
    let client_side = async move {
        let mut tls = connector
            .connect(tls::server_name(), a)
            .await
            .map_err(|e| e.to_string())?;
        let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
        let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
        tls.write_all(b"ping").await.map_err(|e| e.to_string())?;
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        assert_eq!(&buf, b"pong");
        Ok::<_, String>((alpn.unwrap_or_default(), leaf))
    }
    .await;
    let server_result = server_side.await.unwrap();
    (client_side, server_result)
}

#[tokio::test]
async fn mutual_tls_between_two_workloads_of_one_ca() {
    let now = SystemTime::now();
    let ca = Ca::generate(TD, now).unwrap();
    let (web, buyer) = (id("shop", "web"), id("shop", "buyer"));
    let server =
        tls::server_config(workload(&ca, &web, now, DAY), &bundle(&[&ca]), &[b"h2"]).unwrap();
    let client = tls::client_config(
        workload(&ca, &buyer, now, DAY),
        &bundle(&[&ca]),
        web,
        &[b"h2"],
    )
    .unwrap();
    let (c, s) = handshake(server, client).await;
    assert_eq!(c.unwrap().0, b"h2", "ALPN h2 agreed");
    assert_eq!(s.unwrap(), buyer, "the server learns the client's identity");
}

#[tokio::test]
async fn a_server_of_another_ca_is_refused() {
    let now = SystemTime::now();
    let (ca, other) = (
        Ca::generate(TD, now).unwrap(),
        Ca::generate(TD, now).unwrap(),
    );
    let web = id("shop", "web");
    let server =
        tls::server_config(workload(&other, &web, now, DAY), &bundle(&[&ca]), &[]).unwrap();
    let client = tls::client_config(
        workload(&ca, &id("shop", "buyer"), now, DAY),
        &bundle(&[&ca]),
        web,
        &[],
    )
    .unwrap();
    let (c, s) = handshake(server, client).await;
    let e = c.unwrap_err();
    // Generated roots of one trust domain share a subject name, so webpki
    // finds the wrong root by name and its signature check fails.
    assert!(
        e.contains("BadSignature") || e.contains("UnknownIssuer"),
        "{e}"
    );
    assert!(s.is_err());
}

#[tokio::test]
async fn a_client_of_another_ca_is_refused() {
    let now = SystemTime::now();
    let (ca, other) = (
        Ca::generate(TD, now).unwrap(),
        Ca::generate(TD, now).unwrap(),
    );
    let web = id("shop", "web");
    let server = tls::server_config(workload(&ca, &web, now, DAY), &bundle(&[&ca]), &[]).unwrap();
    let client = tls::client_config(
        workload(&other, &id("shop", "buyer"), now, DAY),
        &bundle(&[&ca]),
        web,
        &[],
    )
    .unwrap();
    let (c, s) = handshake(server, client).await;
    let e = s.unwrap_err();
    assert!(
        e.contains("BadSignature") || e.contains("UnknownIssuer"),
        "{e}"
    );
    assert!(c.is_err());
}

#[tokio::test]
async fn an_expired_certificate_is_refused() {
    let now = SystemTime::now();
    let ca = Ca::generate(TD, now - 3 * DAY).unwrap();
    let web = id("shop", "web");
    // Issued two days ago for one day.
    let server = tls::server_config(
        workload(&ca, &web, now - 2 * DAY, DAY),
        &bundle(&[&ca]),
        &[],
    )
    .unwrap();
    let client = tls::client_config(
        workload(&ca, &id("shop", "buyer"), now, DAY),
        &bundle(&[&ca]),
        web,
        &[],
    )
    .unwrap();
    let (c, _) = handshake(server, client).await;
    let e = c.unwrap_err();
    assert!(e.contains("certificate expired"), "{e}");
}

#[tokio::test]
async fn a_server_with_another_identity_is_refused_by_name() {
    let now = SystemTime::now();
    let ca = Ca::generate(TD, now).unwrap();
    // The endpoint should be web, but the certificate says db.
    let server = tls::server_config(
        workload(&ca, &id("shop", "db"), now, DAY),
        &bundle(&[&ca]),
        &[],
    )
    .unwrap();
    let client = tls::client_config(
        workload(&ca, &id("shop", "buyer"), now, DAY),
        &bundle(&[&ca]),
        id("shop", "web"),
        &[],
    )
    .unwrap();
    let (c, _) = handshake(server, client).await;
    let e = c.unwrap_err();
    assert!(
        e.contains("the server is spiffe://cluster.local/ns/shop/sa/db, expected spiffe://cluster.local/ns/shop/sa/web"),
        "{e}"
    );
}

#[tokio::test]
async fn a_client_without_a_certificate_is_refused() {
    let now = SystemTime::now();
    let ca = Ca::generate(TD, now).unwrap();
    let web = id("shop", "web");
    let server = tls::server_config(workload(&ca, &web, now, DAY), &bundle(&[&ca]), &[]).unwrap();
    // A client with no certificate yet.
    let client =
        tls::client_config(Arc::new(CurrentCert::default()), &bundle(&[&ca]), web, &[]).unwrap();
    let (c, s) = handshake(server, client).await;
    let e = s.unwrap_err();
    assert!(e.contains("peer sent no certificates"), "{e}");
    assert!(c.is_err());
}

#[tokio::test]
async fn a_client_of_another_trust_domain_is_refused() {
    let now = SystemTime::now();
    let ca = Ca::generate(TD, now).unwrap();
    let web = id("shop", "web");
    let stranger = SpiffeId::new("example.org", "shop", "buyer").unwrap();
    let server = tls::server_config(workload(&ca, &web, now, DAY), &bundle(&[&ca]), &[]).unwrap();
    let client = tls::client_config(
        workload(&ca, &stranger, now, DAY),
        &bundle(&[&ca]),
        web,
        &[],
    )
    .unwrap();
    let (_, s) = handshake(server, client).await;
    let e = s.unwrap_err();
    assert!(e.contains("not of trust domain cluster.local"), "{e}");
}

#[tokio::test]
async fn during_a_root_rotation_both_roots_are_trusted() {
    let now = SystemTime::now();
    let (old, new) = (
        Ca::generate(TD, now).unwrap(),
        Ca::generate(TD, now).unwrap(),
    );
    let both = bundle(&[&old, &new]);
    let web = id("shop", "web");
    let buyer = id("shop", "buyer");
    // Every pairing of old and new certificates works while both are trusted.
    for (server_ca, client_ca) in [(&old, &new), (&new, &old), (&new, &new)] {
        let server = tls::server_config(workload(server_ca, &web, now, DAY), &both, &[]).unwrap();
        let client = tls::client_config(
            workload(client_ca, &buyer, now, DAY),
            &both,
            web.clone(),
            &[],
        )
        .unwrap();
        let (c, s) = handshake(server, client).await;
        assert!(c.is_ok(), "{c:?}");
        assert_eq!(s.unwrap(), buyer);
    }
    // Once the old root is gone, its certificates are not.
    let server = tls::server_config(workload(&old, &web, now, DAY), &bundle(&[&new]), &[]).unwrap();
    let client =
        tls::client_config(workload(&new, &buyer, now, DAY), &bundle(&[&new]), web, &[]).unwrap();
    assert!(handshake(server, client).await.0.is_err());
}

#[tokio::test]
async fn a_renewed_certificate_is_used_by_new_handshakes() {
    let now = SystemTime::now();
    let ca = Ca::generate(TD, now).unwrap();
    let web = id("shop", "web");
    let cert = workload(&ca, &web, now, DAY);
    let server = tls::server_config(cert.clone(), &bundle(&[&ca]), &[]).unwrap();
    let before = cert.get().unwrap().cert[0].clone();
    // Renew: a new key and certificate, swapped in place.
    let renewed = workload(&ca, &web, now, DAY).get().unwrap();
    cert.set(renewed.clone());
    let client = tls::client_config(
        workload(&ca, &id("shop", "buyer"), now, DAY),
        &bundle(&[&ca]),
        web,
        &[],
    )
    .unwrap();
    let (c, _) = handshake(server, client).await;
    let presented = c.unwrap().1;
    assert_ne!(presented, before.to_vec());
    assert_eq!(
        presented,
        renewed.cert[0].to_vec(),
        "the renewed certificate"
    );
}

#[tokio::test]
async fn an_optional_client_certificate_is_verified_when_sent() {
    let now = SystemTime::now();
    let (ca, other) = (
        Ca::generate(TD, now).unwrap(),
        Ca::generate(TD, now).unwrap(),
    );
    let cp = id("outrigger-system", "outrigger-control-plane");
    let optional = || {
        tls::server_config_with(
            workload(&ca, &cp, now, DAY),
            &bundle(&[&ca]),
            &[],
            tls::ClientAuth::Optional,
        )
        .unwrap()
    };
    // No certificate yet: let in, with no identity.
    let client = tls::client_config(
        Arc::new(CurrentCert::default()),
        &bundle(&[&ca]),
        cp.clone(),
        &[],
    )
    .unwrap();
    let (c, s) = handshake(optional(), client).await;
    assert!(c.is_ok(), "{c:?}");
    assert!(s.unwrap_err().contains("no certificate"));
    // A certificate of the mesh: its identity is known.
    let buyer = id("shop", "buyer");
    let client = tls::client_config(
        workload(&ca, &buyer, now, DAY),
        &bundle(&[&ca]),
        cp.clone(),
        &[],
    )
    .unwrap();
    assert_eq!(handshake(optional(), client).await.1.unwrap(), buyer);
    // A certificate of another CA: refused, not ignored.
    let client = tls::client_config(
        workload(&other, &buyer, now, DAY),
        &bundle(&[&ca]),
        cp.clone(),
        &[],
    )
    .unwrap();
    assert!(handshake(optional(), client).await.1.is_err());
}
