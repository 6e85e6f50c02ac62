//! The control plane as the mesh CA, over real TLS: a proxy with no
//! certificate asks for one with its token, then opens its config stream
//! with it; a certificate of another namespace or ServiceAccount gets no
//! config, and a request for another identity gets no certificate.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use outrigger_api::certify::{CertifyRequest, CertifyResponse, CERTIFY_PATH};
use outrigger_control_plane::authn::TokenFiles;
use outrigger_control_plane::certify::{Certifier, DEFAULT_LIFETIME};
use outrigger_control_plane::metrics::Metrics;
use outrigger_control_plane::server::{Published, Server};
use outrigger_control_plane::store::Store;
use outrigger_control_plane::translate::{Mesh, Options};
use outrigger_identity::ca::pem;
use outrigger_identity::tls::{self, ClientAuth};
use outrigger_identity::{Ca, CurrentCert, SpiffeId, TrustBundle, WorkloadKey};
use outrigger_runtime::drain;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use tokio::sync::watch;

const TD: &str = "cluster.local";

struct Plane {
    addr: std::net::SocketAddr,
    trust: TrustBundle,
    own: SpiffeId,
    _tokens: tempfile::TempDir,
    _stop: drain::Signal,
    _mesh: watch::Sender<Option<Arc<Published>>>,
}

/// A control plane with a mesh CA, bootstrap tokens for shop/buyer and
/// shop/web, and a mesh where pod shop/buyer-1 runs as buyer.
async fn start() -> Plane {
    let tokens = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tokens.path().join("shop")).unwrap();
    std::fs::write(tokens.path().join("shop/buyer"), "token-buyer").unwrap();
    std::fs::write(tokens.path().join("shop/web"), "token-web").unwrap();
    let ca = Arc::new(Ca::generate(TD, SystemTime::now()).unwrap());
    let certifier = Arc::new(Certifier::new(
        ca,
        TD,
        DEFAULT_LIFETIME,
        Arc::new(TokenFiles::new(tokens.path())),
    ));
    let own = SpiffeId::new(TD, "outrigger-system", "outrigger-control-plane").unwrap();
    let cert = Arc::new(CurrentCert::default());
    cert.set(certifier.own_certificate(&own).unwrap().0);
    let trust = certifier.trust().unwrap();
    let server_tls =
        tls::server_config_with(cert, &trust, &[b"h2", b"http/1.1"], ClientAuth::Optional).unwrap();
    let yaml = "apiVersion: v1\nkind: Service\nmetadata: { name: web, namespace: shop }\nspec: { clusterIP: 10.0.0.1, ports: [{ port: 80 }] }\n---\napiVersion: v1\nkind: Pod\nmetadata: { name: buyer-1, namespace: shop }\nspec: { serviceAccountName: buyer, containers: [{ name: app }] }\n";
    let parsed = outrigger_control_plane::manifest::parse("t.yaml", yaml, "default").unwrap();
    let mesh = Mesh::build(&Store::from_objects(parsed.objects), &Options::default());
    let (mesh_tx, rx) = watch::channel(Some(Arc::new(Published::new(
        Arc::new(mesh),
        tokio::time::Instant::now().into_std(),
    ))));
    let (stop_tx, stop) = drain::channel();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = Server::new(rx, Arc::new(Metrics::new()))
        .with_certifier(certifier)
        .with_tls(Arc::new(server_tls));
    tokio::spawn(server.run(listener, stop));
    Plane {
        addr,
        trust,
        own,
        _tokens: tokens,
        _stop: stop_tx,
        _mesh: mesh_tx,
    }
}

/// An HTTP/2 connection over TLS to the control plane, presenting `cert`
/// (possibly empty) and expecting the control plane's identity.
async fn connect(
    plane: &Plane,
    cert: Arc<CurrentCert>,
) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
    let config = tls::client_config(cert, &plane.trust, plane.own.clone(), &[b"h2"]).unwrap();
    let tcp = tokio::net::TcpStream::connect(plane.addr).await.unwrap();
    let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(tls::server_name(), tcp)
        .await
        .unwrap();
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    send
}

/// POST /v1/certify: (status, body).
async fn certify(plane: &Plane, token: &str, csr: &[u8]) -> (StatusCode, Bytes) {
    let mut send = connect(plane, Arc::new(CurrentCert::default())).await;
    let body = serde_json::to_vec(&CertifyRequest {
        csr: pem("CERTIFICATE REQUEST", csr),
    })
    .unwrap();
    let req = Request::post(format!("https://{}{CERTIFY_PATH}", plane.addr))
        .header("authorization", format!("Bearer {token}"))
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let status = resp.status();
    (status, resp.into_body().collect().await.unwrap().to_bytes())
}

/// A certificate for `sa` in shop, obtained with `token`.
async fn certificate(plane: &Plane, token: &str, sa: &str) -> Arc<CurrentCert> {
    let key = WorkloadKey::generate().unwrap();
    let id = SpiffeId::new(TD, "shop", sa).unwrap();
    let (status, body) = certify(plane, token, &key.csr(&id).unwrap()).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let answer: CertifyResponse = serde_json::from_slice(&body).unwrap();
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(answer.certificate_chain.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
    let roots: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(answer.trust_roots.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
    assert_eq!(roots.len(), 1);
    let (got, certified) = key.certified(chain).unwrap();
    assert_eq!(got, id);
    let cert = Arc::new(CurrentCert::default());
    cert.set(certified);
    cert
}

/// GET the config stream of shop/`pod`: the status, and the first line
/// when it is 200.
async fn stream(plane: &Plane, cert: Arc<CurrentCert>, pod: &str) -> (StatusCode, String) {
    let mut send = connect(plane, cert).await;
    let req = Request::get(format!(
        "https://{}/v1/config?namespace=shop&pod={pod}",
        plane.addr
    ))
    .body(Full::new(Bytes::new()))
    .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let status = resp.status();
    let mut body = resp.into_body();
    let mut text = Vec::new();
    while !text.contains(&b'\n') {
        match tokio::time::timeout(Duration::from_secs(5), body.frame()).await {
            Ok(Some(Ok(f))) => text.extend_from_slice(&f.into_data().unwrap_or_default()),
            _ => break,
        }
    }
    (status, String::from_utf8_lossy(&text).into_owned())
}

#[tokio::test]
async fn a_proxy_gets_a_certificate_then_its_own_config_over_mtls() {
    let plane = start().await;
    let buyer = certificate(&plane, "token-buyer", "buyer").await;
    let (status, line) = stream(&plane, buyer.clone(), "buyer-1").await;
    assert_eq!(status, StatusCode::OK, "{line}");
    let update: outrigger_api::stream::ConfigUpdate = serde_json::from_str(line.trim()).unwrap();
    assert_eq!(
        update.proxy.identity.as_deref(),
        Some("spiffe://cluster.local/ns/shop/sa/buyer")
    );
    // Another pod's config: refused, naming why.
    let web = certificate(&plane, "token-web", "web").await;
    let (status, why) = stream(&plane, web, "buyer-1").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(
        why.contains(
            "may not have the config of pod shop/buyer-1, which runs as ServiceAccount buyer"
        ),
        "{why}"
    );
    // No certificate: no config.
    let (status, why) = stream(&plane, Arc::new(CurrentCert::default()), "buyer-1").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(why.contains("client certificate is required"), "{why}");
}

#[tokio::test]
async fn a_certificate_for_another_service_account_is_refused() {
    let plane = start().await;
    let key = WorkloadKey::generate().unwrap();
    let web = SpiffeId::new(TD, "shop", "web").unwrap();
    let (status, body) = certify(&plane, "token-buyer", &key.csr(&web).unwrap()).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let body = String::from_utf8_lossy(&body);
    assert!(
        body.contains("it asks for spiffe://cluster.local/ns/shop/sa/web, the caller may only have spiffe://cluster.local/ns/shop/sa/buyer"),
        "{body}"
    );
    let (status, _) = certify(&plane, "not-a-token", &key.csr(&web).unwrap()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_client_expecting_another_control_plane_identity_does_not_connect() {
    let plane = start().await;
    let wrong = SpiffeId::new(TD, "shop", "web").unwrap();
    let config = tls::client_config(
        Arc::new(CurrentCert::default()),
        &plane.trust,
        wrong,
        &[b"h2"],
    )
    .unwrap();
    let tcp = tokio::net::TcpStream::connect(plane.addr).await.unwrap();
    let e = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(tls::server_name(), tcp)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(
            "the server is spiffe://cluster.local/ns/outrigger-system/sa/outrigger-control-plane"
        ),
        "{e}"
    );
}
