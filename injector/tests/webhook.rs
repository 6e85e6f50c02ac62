//! The webhook over real HTTPS with real AdmissionReview bodies: a pod
//! injected (the patch applied and parsed back), dry-run, UPDATE and
//! skipped pods answered without a patch, an annotation refused, malformed
//! bodies answered 400 with the reason, the uid always the request's, the
//! serving certificate reloaded when its files change, and the metrics.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Pod;
use outrigger_injector::config::MeshConfig;
use outrigger_injector::inject::Namespace;
use outrigger_injector::metrics::Metrics;
use outrigger_injector::namespaces::Namespaces;
use outrigger_injector::server::{self, ReloadingCert};
use outrigger_injector::webhook::Webhook;
use outrigger_runtime::drain;
use rustls::pki_types::CertificateDer;
use serde_json::{json, Value};

const NAME: &str = "outrigger-injector.outrigger-system.svc";

/// A fresh self-signed certificate for the webhook's Service name, written
/// to `dir`; returns its DER.
fn write_cert(dir: &Path) -> CertificateDer<'static> {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec![NAME.to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    // Written as a Secret volume updates: the new file replaces the old.
    for (file, text) in [("tls.crt", cert.pem()), ("tls.key", key.serialize_pem())] {
        let tmp = dir.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, dir.join(file)).unwrap();
    }
    cert.der().clone()
}

struct Injector {
    addr: SocketAddr,
    webhook: Arc<Webhook>,
    cert: Arc<ReloadingCert>,
    dir: tempfile::TempDir,
    _stop: drain::Signal,
}

async fn start() -> (Injector, CertificateDer<'static>) {
    let dir = tempfile::tempdir().unwrap();
    let der = write_cert(dir.path());
    let cert = Arc::new(
        ReloadingCert::load(&dir.path().join("tls.crt"), &dir.path().join("tls.key")).unwrap(),
    );
    let webhook = Arc::new(Webhook {
        config: Arc::new(MeshConfig::with_image("ghcr.io/outrigger/proxy:0.1.0")).into(),
        namespaces: Arc::new(Namespaces::fixed([Namespace {
            name: "shop".into(),
            annotations: BTreeMap::from([("outrigger.dev/inject".into(), "enabled".into())]),
        }])),
        metrics: Arc::new(Metrics::new()),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = drain::channel();
    tokio::spawn(server::serve_webhook(
        listener,
        Arc::new(server::tls_config(cert.clone())),
        webhook.clone(),
        stopped,
    ));
    (
        Injector {
            addr,
            webhook,
            cert,
            dir,
            _stop: stop,
        },
        der,
    )
}

/// One request over a new TLS connection trusting only `trust`; returns
/// the status, the body and the certificate the server presented.
async fn call(
    addr: SocketAddr,
    trust: &CertificateDer<'static>,
    method: Method,
    body: Vec<u8>,
) -> Result<(u16, Bytes, CertificateDer<'static>), String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(trust.clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(outrigger_identity::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(rustls::pki_types::ServerName::try_from(NAME).unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    let presented = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let resp = send
        .send_request(
            Request::builder()
                .method(method)
                .uri("/mutate")
                .header("host", NAME)
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(body)))
                .unwrap(),
        )
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Ok((status, body, presented.into_owned()))
}

fn review(uid: &str, operation: &str, dry_run: bool, pod: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "shop",
            "operation": operation,
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": pod,
            "oldObject": null,
            "dryRun": dry_run,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}
        }
    }))
    .unwrap()
}

fn pod() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"generateName": "web-5c9d-", "namespace": "shop", "labels": {"app": "web"}},
        "spec": {"containers": [{"name": "web", "image": "web:1",
            "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080}}}]}
    })
}

fn response(body: &Bytes) -> Value {
    let v: Value = serde_json::from_slice(body).unwrap();
    assert_eq!(v["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(v["kind"], "AdmissionReview");
    v["response"].clone()
}

#[tokio::test]
async fn a_pod_is_injected_through_the_webhook() {
    let (inj, der) = start().await;
    let (status, body, _) = call(
        inj.addr,
        &der,
        Method::POST,
        review("uid-1", "CREATE", false, pod()),
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    let r = response(&body);
    assert_eq!(r["uid"], "uid-1");
    assert_eq!(r["allowed"], true);
    assert_eq!(r["patchType"], "JSONPatch");
    // The patch is base64, as the API server reads it; applied to the pod
    // it gives a pod with the proxy.
    let raw = base64::engine::general_purpose::STANDARD
        .decode(r["patch"].as_str().expect("a base64 string"))
        .unwrap();
    let patch: json_patch::Patch = serde_json::from_slice(&raw).unwrap();
    let mut doc = pod();
    json_patch::patch(&mut doc, &patch).unwrap();
    let after: Pod = serde_json::from_value(doc).unwrap();
    let spec = after.spec.unwrap();
    let inits: Vec<String> = spec
        .init_containers
        .unwrap()
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(inits, ["outrigger-init", "outrigger-proxy"]);
    assert_eq!(
        spec.containers[0]
            .readiness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap()
            .path
            .as_deref(),
        Some("/app-health/web/readyz")
    );

    // Dry-run: the same answer (the injector has no side effects).
    let (_, dry, _) = call(
        inj.addr,
        &der,
        Method::POST,
        review("uid-2", "CREATE", true, pod()),
    )
    .await
    .unwrap();
    let d = response(&dry);
    assert_eq!(d["uid"], "uid-2");
    assert_eq!(d["patch"], r["patch"]);

    // UPDATE, and a pod whose namespace is not enabled: allowed, untouched.
    let (_, up, _) = call(
        inj.addr,
        &der,
        Method::POST,
        review("uid-3", "UPDATE", false, pod()),
    )
    .await
    .unwrap();
    let u = response(&up);
    assert_eq!(
        (u["uid"].as_str(), u["allowed"].as_bool()),
        (Some("uid-3"), Some(true))
    );
    assert!(u.get("patch").is_none());
    let mut elsewhere = pod();
    elsewhere["metadata"]["namespace"] = "billing".into();
    let mut body = review("uid-4", "CREATE", false, elsewhere);
    body = String::from_utf8(body)
        .unwrap()
        .replace("\"namespace\":\"shop\"", "\"namespace\":\"billing\"")
        .into_bytes();
    let (_, skipped, _) = call(inj.addr, &der, Method::POST, body).await.unwrap();
    let s = response(&skipped);
    assert_eq!(s["uid"], "uid-4");
    assert!(s.get("patch").is_none());
    // billing is not in the cache at all: the pod is told so.
    assert!(
        s["warnings"][0]
            .as_str()
            .unwrap()
            .contains("namespace billing is not in the injector's cache"),
        "{s}"
    );

    // A bad annotation: refused, naming it.
    let mut bad = pod();
    bad["metadata"]["annotations"] = json!({"config.outrigger.dev/opaque-ports": "mysql"});
    let (_, refused, _) = call(
        inj.addr,
        &der,
        Method::POST,
        review("uid-5", "CREATE", false, bad),
    )
    .await
    .unwrap();
    let f = response(&refused);
    assert_eq!(
        (f["uid"].as_str(), f["allowed"].as_bool()),
        (Some("uid-5"), Some(false))
    );
    assert!(
        f["status"]["message"]
            .as_str()
            .unwrap()
            .starts_with("annotation config.outrigger.dev/opaque-ports:"),
        "{f}"
    );

    // A pod that has a volume of the name injection adds: refused, naming
    // it, rather than patched into a pod the API server would refuse.
    let mut clash = pod();
    clash["spec"]["volumes"] = json!([{"name": "outrigger-token", "emptyDir": {}}]);
    let (_, refused, _) = call(
        inj.addr,
        &der,
        Method::POST,
        review("uid-7", "CREATE", false, clash),
    )
    .await
    .unwrap();
    let c = response(&refused);
    assert_eq!(
        (c["uid"].as_str(), c["allowed"].as_bool()),
        (Some("uid-7"), Some(false))
    );
    assert!(c.get("patch").is_none());
    assert_eq!(
        c["status"]["message"],
        "the pod already has a volume named \"outrigger-token\", which injection adds; \
         rename it, or set outrigger.dev/inject: disabled on the pod",
        "{c}"
    );

    // A pod it cannot read: admitted as it is, with a warning.
    let broken = json!({"metadata": {"namespace": "shop"}, "spec": {"containers": 7}});
    let (_, odd, _) = call(
        inj.addr,
        &der,
        Method::POST,
        review("uid-6", "CREATE", false, broken),
    )
    .await
    .unwrap();
    let o = response(&odd);
    assert_eq!(
        (o["uid"].as_str(), o["allowed"].as_bool()),
        (Some("uid-6"), Some(true))
    );
    assert!(o.get("patch").is_none());
    assert!(o["warnings"][0]
        .as_str()
        .unwrap()
        .contains("admitted without the proxy"));

    let text = inj.webhook.metrics.encode();
    for (line, want) in [
        ("outrigger_injector_requests_total", "7"),
        ("outrigger_injector_injected_total", "2"),
        ("outrigger_injector_refused_total", "2"),
        (
            "outrigger_injector_skipped_total{reason=\"not_create\"}",
            "1",
        ),
        (
            "outrigger_injector_skipped_total{reason=\"namespace_not_cached\"}",
            "1",
        ),
        (
            "outrigger_injector_errors_total{reason=\"cannot_handle\"}",
            "1",
        ),
        ("outrigger_injector_admission_duration_seconds_count", "7"),
    ] {
        assert!(
            text.contains(&format!("{line} {want}")),
            "{line} {want} in\n{text}"
        );
    }
}

#[tokio::test]
async fn malformed_requests_get_400_with_the_reason() {
    let (inj, der) = start().await;
    for (body, want) in [
        (b"{".to_vec(), "not an AdmissionReview"),
        (
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#.to_vec(),
            "has no request",
        ),
        (
            String::from_utf8(review("u", "CREATE", false, pod()))
                .unwrap()
                .replace("admission.k8s.io/v1", "admission.k8s.io/v1beta1")
                .into_bytes(),
            "expected apiVersion admission.k8s.io/v1",
        ),
        (
            String::from_utf8(review("", "CREATE", false, pod()))
                .unwrap()
                .into_bytes(),
            "request.uid is empty",
        ),
        (
            serde_json::to_vec(&{
                let mut v: Value =
                    serde_json::from_slice(&review("u", "CREATE", false, pod())).unwrap();
                v["request"]["object"] = Value::Null;
                v
            })
            .unwrap(),
            "request.object is missing",
        ),
    ] {
        let (status, text, _) = call(inj.addr, &der, Method::POST, body).await.unwrap();
        assert_eq!(status, 400);
        let text = String::from_utf8_lossy(&text);
        assert!(text.contains(want), "{want}: {text}");
    }
    let (status, _, _) = call(inj.addr, &der, Method::GET, Vec::new()).await.unwrap();
    assert_eq!(status, 405);
    assert!(inj
        .webhook
        .metrics
        .encode()
        .contains("outrigger_injector_errors_total{reason=\"bad_request\"} 5"));
    // The webhook still answers well-formed requests.
    let (status, _, _) = call(
        inj.addr,
        &der,
        Method::POST,
        review("ok", "CREATE", false, pod()),
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_renewed_certificate_is_served_without_a_restart() {
    let (inj, first) = start().await;
    let (_, _, presented) = call(
        inj.addr,
        &first,
        Method::POST,
        review("a", "CREATE", false, pod()),
    )
    .await
    .unwrap();
    assert_eq!(presented, first);
    // Unchanged files: nothing to do.
    assert!(!inj.cert.reload_if_changed().unwrap());
    // cert-manager (or a Helm upgrade) writes a new pair.
    let second = write_cert(inj.dir.path());
    assert!(inj.cert.reload_if_changed().unwrap());
    let (_, _, presented) = call(
        inj.addr,
        &second,
        Method::POST,
        review("b", "CREATE", false, pod()),
    )
    .await
    .unwrap();
    assert_eq!(presented, second);
    assert!(
        call(inj.addr, &first, Method::POST, Vec::new())
            .await
            .is_err(),
        "the old certificate is gone"
    );
    // A broken write (a key that does not match) keeps the one in force.
    let other = rcgen::KeyPair::generate().unwrap();
    std::fs::write(inj.dir.path().join("tls.key"), other.serialize_pem()).unwrap();
    let e = inj.cert.reload_if_changed().unwrap_err().to_string();
    assert!(e.contains("tls.key") && e.contains("does not match"), "{e}");
    assert_eq!(inj.cert.leaf(), second);
}
