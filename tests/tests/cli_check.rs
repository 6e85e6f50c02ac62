//! `outrigger check`, the real binary, against the stand-in API server
//! holding what `helm install` leaves: the chart rendered by the real Helm
//! engine (its Deployments, made ready here, its webhook configuration and
//! serving certificate Secret) and the outrigger-crds chart, plus namespaces and
//! mesh resources. Each fault this can create fails the check naming the
//! cause; the healthy mesh exits 0.

use std::collections::BTreeMap;

use outrigger_injector::config::MeshConfig;
use outrigger_injector::inject::{inject, Namespace, Outcome};

use outrigger_tests::chart::{
    crds_chart_dir, fake_api_server_with_pods, merge_values, render_chart_or_skip, render_or_skip,
    test_ca, Rendered,
};
use outrigger_tests::control_plane::{certifier, follow, waiting_proxy, ControlPlane, Dir};
use outrigger_tests::{cert_left, eventually, run_bin, server_snapshot};
use serde_json::{json, Value};

const NS: &str = "outrigger-system";
const CRDS: &str = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions";
const DEPLOYMENTS: &str = "/apis/apps/v1/namespaces/outrigger-system/deployments";
const WEBHOOKS: &str = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations";
const SECRETS: &str = "/api/v1/namespaces/outrigger-system/secrets";
const NAMESPACES: &str = "/api/v1/namespaces";
const VIRTUAL_SERVICES: &str = "/apis/outrigger.dev/v1alpha1/virtualservices";
const PODS: &str = "/api/v1/pods";
/// The image tag the chart is installed with.
const TAG: &str = "0.4.2";

/// A real proxy (pod shop/web-1, ServiceAccount web) following a real
/// control plane that is the mesh CA, certified by it for `lifetime`: what
/// every meshed pod's admin port answers here.
struct Certified {
    proxy: outrigger_proxy::Proxy,
    /// None once stopped.
    cp: Option<ControlPlane>,
    _dirs: (Dir, Dir),
}

async fn certified(lifetime: std::time::Duration) -> Certified {
    use outrigger_identity::Ca;
    use std::sync::Arc;
    let tokens = Dir::new("check-tokens");
    std::fs::create_dir_all(tokens.path().join("shop")).unwrap();
    std::fs::write(tokens.path().join("shop/web"), "token-web").unwrap();
    let ca = Ca::generate("cluster.local", std::time::SystemTime::now()).unwrap();
    let (cert, key) = ca.generated_pem().unwrap();
    let signer = Ca::from_pem(cert, key, None).unwrap();
    let mesh = Dir::new("check-mesh");
    mesh.write(
        "mesh.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: { name: web-1, namespace: shop, labels: { app: web } }\n\
         spec: { serviceAccountName: web, containers: [{ name: web }, { name: outrigger-proxy }] }\n",
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let cp_addr = listener.local_addr().unwrap();
    let cp = ControlPlane::start_with(
        mesh.path(),
        listener,
        Some(certifier(Arc::new(signer), lifetime, tokens.path())),
    )
    .await;
    let identity = outrigger_tests::workload_identity(
        "shop",
        "web",
        tokens.path().join("shop/web"),
        ca.roots(),
    );
    let boot = server_snapshot("127.0.0.1:9".parse().unwrap());
    let proxy = waiting_proxy(boot.clone(), Some(identity.clone())).await;
    follow(&proxy, cp_addr, boot, "shop", "web-1", Some(identity));
    let certified =
        || async { outrigger_tests::ready(&proxy).await && cert_left(&proxy).await.is_some() };
    assert!(
        eventually(std::time::Duration::from_secs(15), certified).await,
        "the proxy was never certified"
    );
    Certified {
        proxy,
        cp: Some(cp),
        _dirs: (tokens, mesh),
    }
}

/// A real proxy whose certificate has expired: certified for 3 s by its
/// control plane, which then stops (the CA is away), so the last
/// certificate it holds runs out. Once its end has passed, as the proxy's
/// own metric says.
async fn expired() -> Certified {
    let mut certified = certified(std::time::Duration::from_secs(3)).await;
    certified.cp.take().unwrap().stop().await;
    let proxy = &certified.proxy;
    let past = || async { cert_left(proxy).await.is_some_and(|l| l < 0.0) };
    assert!(
        eventually(std::time::Duration::from_secs(15), past).await,
        "the proxy's certificate never expired"
    );
    certified
}

async fn run(objects: BTreeMap<String, Vec<Value>>, args: &[&str]) -> (i32, String, String) {
    run_with(objects, args, std::time::Duration::from_secs(24 * 3600)).await
}

/// [`run`], each meshed pod's admin port a real proxy certified for
/// `lifetime`.
async fn run_with(
    objects: BTreeMap<String, Vec<Value>>,
    args: &[&str],
    lifetime: std::time::Duration,
) -> (i32, String, String) {
    run_against(objects, args, &certified(lifetime).await).await
}

/// [`run`], each meshed pod's admin port `proxy`'s.
async fn run_against(
    objects: BTreeMap<String, Vec<Value>>,
    args: &[&str],
    proxy: &Certified,
) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let pods = objects
        .get(PODS)
        .into_iter()
        .flatten()
        .map(|p| {
            (
                format!("shop/{}", p["metadata"]["name"].as_str().unwrap()),
                proxy.proxy.admin_addr,
            )
        })
        .collect();
    let api = fake_api_server_with_pods(objects, pods, dir.path()).await;
    let kubeconfig = api.kubeconfig.display().to_string();
    let mut all = vec!["check"];
    all.extend_from_slice(args);
    all.extend(["--kubeconfig", &kubeconfig]);
    run_bin("outrigger", &all, "").await
}

/// The chart rendered into `namespace` with `values`, or None (skipped)
/// without the Helm engine.
fn chart(values: Value, namespace: &str) -> Option<Rendered> {
    let (cert, key) = test_ca();
    let mut all = json!({ "identity": { "ca": { "cert": cert, "key": key } },
                          "image": { "repository": "ghcr.io/outrigger", "tag": TAG } });
    merge_values(&mut all, values);
    render_or_skip(all, "outrigger", namespace)
}

/// A Deployment as the API server shows it once its pods are ready.
fn ready(mut deploy: Value) -> Value {
    deploy["status"] = json!({"replicas": 1, "readyReplicas": 1, "availableReplicas": 1,
        "updatedReplicas": 1,
        "conditions": [{"type": "Available", "status": "True"}]});
    deploy
}

fn accepted(name: &str, status: &str, reason: &str, message: &str) -> Value {
    json!({"apiVersion": "outrigger.dev/v1alpha1", "kind": "VirtualService",
        "metadata": {"name": name, "namespace": "shop", "generation": 1},
        "spec": {"hosts": [name]},
        "status": {"conditions": [{"type": "Accepted", "status": status, "reason": reason,
            "message": message, "observedGeneration": 1}]}})
}

/// A pod of `shop` meshed by the injector's own function with the proxy
/// of `version`, its proxy ready.
fn meshed(name: &str, version: &str) -> Value {
    let mut pod = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {"containers": [{"name": "app", "image": "app:1"}]}});
    let Outcome::Inject { patch, .. } = inject(
        &pod,
        &Namespace {
            name: "shop".into(),
            annotations: BTreeMap::from([("outrigger.dev/inject".into(), "enabled".into())]),
        },
        &MeshConfig::with_image(&format!("ghcr.io/outrigger/proxy:{version}")),
    ) else {
        panic!("not injected")
    };
    json_patch::patch(&mut pod, &patch).unwrap();
    let status = |name: &str| {
        json!({"name": name, "ready": true, "restartCount": 0,
        "image": "", "imageID": ""})
    };
    pod["status"] = json!({"phase": "Running",
        "initContainerStatuses": [status("outrigger-proxy")],
        "containerStatuses": [status("app")]});
    pod
}

/// What a healthy install holds.
fn healthy(rendered: &Rendered) -> BTreeMap<String, Vec<Value>> {
    let crds: Vec<Value> = render_chart_or_skip(
        &crds_chart_dir(),
        json!({}),
        "outrigger-crds",
        "outrigger-system",
    )
    .expect("the CRD chart renders where the main chart did")
    .objects;
    BTreeMap::from([
        (CRDS.to_string(), crds),
        (
            DEPLOYMENTS.to_string(),
            rendered.all("Deployment").cloned().map(ready).collect(),
        ),
        (
            WEBHOOKS.to_string(),
            rendered
                .all("MutatingWebhookConfiguration")
                .cloned()
                .collect(),
        ),
        (
            SECRETS.to_string(),
            rendered.all("Secret").cloned().collect(),
        ),
        (
            NAMESPACES.to_string(),
            vec![
                json!({"metadata": {"name": "shop",
                    "annotations": {"outrigger.dev/inject": "enabled"}}}),
                json!({"metadata": {"name": "kube-system"}}),
            ],
        ),
        (
            VIRTUAL_SERVICES.to_string(),
            vec![accepted("web", "True", "Accepted", "")],
        ),
        (PODS.to_string(), vec![meshed("web-1", TAG)]),
    ])
}

#[tokio::test]
async fn a_healthy_mesh_passes_and_exits_0() {
    let Some(rendered) = chart(json!({}), NS) else {
        return;
    };
    let (status, out, err) = run(healthy(&rendered), &[]).await;
    println!("{out}");
    assert_eq!(status, 0, "{out}{err}");
    assert_eq!(
        out,
        "outrigger CRDs\n\
         --------------\n\
         ✔ customresourcedefinition virtualservices.outrigger.dev installed, same schema as this CLI\n\
         ✔ customresourcedefinition destinationrules.outrigger.dev installed, same schema as this CLI\n\
         ✔ customresourcedefinition authorizationpolicies.outrigger.dev installed, same schema as this CLI\n\
         ✔ customresourcedefinition peerauthentications.outrigger.dev installed, same schema as this CLI\n\
         \n\
         outrigger control plane\n\
         -----------------------\n\
         ✔ deployment/outrigger-control-plane available, 1/1 ready\n\
         ✔ deployment/outrigger-injector available, 1/1 ready\n\
         \n\
         outrigger injector webhook\n\
         --------------------------\n\
         ✔ mutatingwebhookconfiguration outrigger-injector-outrigger-system registered\n\
         ✔ caBundle valid for outrigger-injector.outrigger-system.svc (secret/outrigger-injector-tls)\n\
         ✔ webhook certificates valid for 3649 more days\n\
         \n\
         outrigger mesh CA\n\
         -----------------\n\
         ✔ secret/outrigger-ca: the CA is under the trust roots (1 root)\n\
         ✔ secret/outrigger-ca: the CA valid for 3649 more days\n\
         \n\
         outrigger resources\n\
         -------------------\n\
         ✔ every mesh resource accepted (1)\n\
         \n\
         meshed namespaces\n\
         -----------------\n\
         ✔ annotated outrigger.dev/inject: enabled: shop\n\
         \n\
         outrigger proxies\n\
         -----------------\n\
         ✔ pod shop/web-1: proxy ready, version 0.4.2, certificate valid for 23h, connected to the control plane\n\
         \n\
         Status check results are ✔\n"
    );
    // -o json: the same checks as data.
    let (status, out, _) = run(healthy(&rendered), &["-o", "json"]).await;
    assert_eq!(status, 0);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(v["checks"].as_array().unwrap().len(), 14);
    assert_eq!(v["checks"][0]["level"], "ok");
}

/// Runs the check over the healthy install changed by `fault`: exit 1, and
/// a line starting with `line`, with its hint under it, among the output.
async fn fails_with(fault: impl FnOnce(&mut BTreeMap<String, Vec<Value>>), line: &str, hint: &str) {
    fails_with_values(json!({}), fault, line, hint).await
}

/// [`fails_with`], the chart installed with `values`.
async fn fails_with_values(
    values: Value,
    fault: impl FnOnce(&mut BTreeMap<String, Vec<Value>>),
    line: &str,
    hint: &str,
) {
    let Some(rendered) = chart(values, NS) else {
        return;
    };
    let mut objects = healthy(&rendered);
    fault(&mut objects);
    let (status, out, err) = run(objects, &[]).await;
    println!("{out}");
    assert_eq!(status, 1, "{out}{err}");
    let at = out
        .find(&format!("× {line}"))
        .unwrap_or_else(|| panic!("no line {line:?} in\n{out}"));
    let next = out[at..].lines().nth(1).unwrap();
    assert!(next.starts_with("    → ") && next.contains(hint), "{next}");
    assert!(
        out.ends_with("Status check results are ×: 1 failed\n"),
        "{out}"
    );
}

#[tokio::test]
async fn a_missing_crd_fails() {
    fails_with(
        |o| {
            o.get_mut(CRDS)
                .unwrap()
                .retain(|c| c["spec"]["names"]["kind"] != "PeerAuthentication")
        },
        "customresourcedefinition peerauthentications.outrigger.dev is missing",
        "helm upgrade --install outrigger-crds with the outrigger-crds chart",
    )
    .await;
}

#[tokio::test]
async fn a_crd_of_another_schema_fails() {
    fails_with(
        |o| {
            let crd = o
                .get_mut(CRDS)
                .unwrap()
                .iter_mut()
                .find(|c| c["spec"]["names"]["kind"] == "DestinationRule")
                .unwrap();
            crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
                ["properties"]["subsets"]["maxItems"] = json!(8);
        },
        "customresourcedefinition destinationrules.outrigger.dev has another schema than this \
         CLI's (first difference at /openAPIV3Schema/properties/spec/properties/subsets/maxItems)",
        "or run the outrigger CLI of the release installed",
    )
    .await;
}

#[tokio::test]
async fn a_deployment_not_ready_fails_and_wait_retries_until_the_deadline() {
    let not_ready = |o: &mut BTreeMap<String, Vec<Value>>| {
        let d = o
            .get_mut(DEPLOYMENTS)
            .unwrap()
            .iter_mut()
            .find(|d| d["metadata"]["name"] == "outrigger-injector")
            .unwrap();
        d["status"] = json!({"replicas": 1, "readyReplicas": 0, "unavailableReplicas": 1,
            "conditions": [{"type": "Available", "status": "False"}]});
    };
    fails_with(
        not_ready,
        "deployment/outrigger-injector not available, 0/1 ready",
        "kubectl -n outrigger-system describe deployment/outrigger-injector; \
         kubectl -n outrigger-system logs deployment/outrigger-injector",
    )
    .await;
    let Some(rendered) = chart(json!({}), NS) else {
        return;
    };
    let mut objects = healthy(&rendered);
    not_ready(&mut objects);
    let (status, out, err) = run(objects, &["--wait", "1s"]).await;
    eprint!("{err}");
    assert_eq!(status, 1);
    assert!(
        err.starts_with(
            "waiting: 1 failing (deployment/outrigger-injector not available, 0/1 ready), "
        ),
        "{err}"
    );
    assert!(
        out.ends_with("Status check results are ×: 1 failed\n"),
        "{out}"
    );
}

#[tokio::test]
async fn a_ca_bundle_for_another_name_fails() {
    // The caBundle and serving certificate of an install in another
    // namespace: valid, but for outrigger-injector.elsewhere.svc.
    let Some(other) = chart(json!({}), "elsewhere") else {
        return;
    };
    let bundle = other.all("MutatingWebhookConfiguration").next().unwrap()["webhooks"][0]
        ["clientConfig"]["caBundle"]
        .clone();
    let secret = other.get("Secret", "outrigger-injector-tls")["data"].clone();
    fails_with(
        move |o| {
            o.get_mut(WEBHOOKS).unwrap()[0]["webhooks"][0]["clientConfig"]["caBundle"] = bundle;
            for s in o.get_mut(SECRETS).unwrap() {
                if s["metadata"]["name"] == "outrigger-injector-tls" {
                    s["data"] = secret.clone();
                }
            }
        },
        "caBundle of outrigger-injector-outrigger-system does not accept \
         secret/outrigger-injector-tls for outrigger-injector.outrigger-system.svc: invalid \
         peer certificate: certificate not valid for name \"outrigger-injector.outrigger-system.svc\"; \
         certificate is only valid for DnsName(\"outrigger-injector.elsewhere.svc\"), \
         DnsName(\"outrigger-injector.elsewhere\") or DnsName(\"outrigger-injector\")",
        "helm upgrade outrigger charts/outrigger -n outrigger-system makes a new serving",
    )
    .await;
}

#[tokio::test]
async fn a_ca_bundle_from_another_ca_fails() {
    // The serving certificate of this install, the caBundle of another
    // (the same issuer name, another key).
    let Some(other) = chart(json!({}), NS) else {
        return;
    };
    let bundle = other.all("MutatingWebhookConfiguration").next().unwrap()["webhooks"][0]
        ["clientConfig"]["caBundle"]
        .clone();
    fails_with(
        move |o| {
            o.get_mut(WEBHOOKS).unwrap()[0]["webhooks"][0]["clientConfig"]["caBundle"] = bundle
        },
        "caBundle of outrigger-injector-outrigger-system does not accept \
         secret/outrigger-injector-tls for outrigger-injector.outrigger-system.svc: invalid \
         peer certificate: BadSignature",
        "helm upgrade",
    )
    .await;
}

#[tokio::test]
async fn webhook_certificates_expiring_within_30_days_warn() {
    let Some(rendered) = chart(json!({"injector": {"tls": {"validityDays": 10}}}), NS) else {
        return;
    };
    let (status, out, err) = run(healthy(&rendered), &[]).await;
    assert_eq!(status, 0, "a warning does not fail: {out}{err}");
    assert!(
        out.contains(
            "⚠ webhook certificates expire in 9 days (within 30)\n    → helm upgrade outrigger \
             charts/outrigger -n outrigger-system makes a new serving certificate and caBundle"
        ),
        "{out}"
    );
}

#[tokio::test]
async fn a_refused_resource_fails_with_its_reason() {
    fails_with(
        |o| {
            o.get_mut(VIRTUAL_SERVICES).unwrap().push(accepted(
                "reviews",
                "False",
                "UnknownSubset",
                "spec.http[0].route[0].destination.subset: v9 is not defined",
            ))
        },
        "VirtualService shop/reviews refused: UnknownSubset: \
         spec.http[0].route[0].destination.subset: v9 is not defined",
        "kubectl -n shop edit virtualservice reviews",
    )
    .await;
}

#[tokio::test]
async fn no_webhook_fails() {
    fails_with(
        |o| {
            o.remove(WEBHOOKS);
        },
        "no mutatingwebhookconfiguration has the webhook injector.outrigger.dev for namespace \
         outrigger-system",
        "install the chart",
    )
    .await;
}

#[tokio::test]
async fn a_proxy_of_another_version_fails_within_one_minor_warns() {
    fails_with(
        |o| o.get_mut(PODS).unwrap().push(meshed("old-1", "0.2.0")),
        "pod shop/old-1: proxy ready, version 0.2.0, the control plane's is 0.4.2",
        "restart its workload (kubectl rollout restart) so the injector gives it the control \
         plane's proxy: one minor version apart is supported, further is not",
    )
    .await;
    let Some(rendered) = chart(json!({}), NS) else {
        return;
    };
    let mut objects = healthy(&rendered);
    objects
        .get_mut(PODS)
        .unwrap()
        .push(meshed("older-1", "0.3.7"));
    let (status, out, err) = run(objects, &[]).await;
    assert_eq!(status, 0, "a warning does not fail: {out}{err}");
    assert!(
        out.contains(
            "⚠ pod shop/older-1: proxy ready, version 0.3.7, the control plane's is 0.4.2, \
             certificate valid for 23h, connected to the control plane\n"
        ),
        "{out}"
    );
}

#[tokio::test]
async fn a_proxy_not_ready_fails() {
    fails_with(
        |o| {
            let mut pod = meshed("web-2", TAG);
            pod["status"]["initContainerStatuses"][0]["ready"] = json!(false);
            o.get_mut(PODS).unwrap().push(pod);
        },
        "pod shop/web-2: proxy not ready, version 0.4.2",
        "kubectl -n shop describe pod web-2; kubectl -n shop logs web-2 -c outrigger-proxy",
    )
    .await;
}

#[tokio::test]
async fn an_expired_ca_bundle_fails() {
    use base64::Engine as _;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    use std::time::{Duration, SystemTime};
    // A CA and a serving certificate for the right name, both expired a
    // day ago.
    const DAY: Duration = Duration::from_secs(86_400);
    let now = SystemTime::now();
    let ca_key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.not_before = (now - 30 * DAY).into();
    params.not_after = (now - DAY).into();
    let ca = params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(params, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut leaf =
        CertificateParams::new(vec!["outrigger-injector.outrigger-system.svc".to_string()])
            .unwrap();
    leaf.not_before = (now - 30 * DAY).into();
    leaf.not_after = (now - DAY).into();
    let leaf = leaf.signed_by(&key, &issuer).unwrap();
    let b64 = |pem: String| json!(base64::engine::general_purpose::STANDARD.encode(pem));
    let (bundle, crt) = (b64(ca.pem()), b64(leaf.pem()));
    fails_with(
        move |o| {
            o.get_mut(WEBHOOKS).unwrap()[0]["webhooks"][0]["clientConfig"]["caBundle"] = bundle;
            for s in o.get_mut(SECRETS).unwrap() {
                if s["metadata"]["name"] == "outrigger-injector-tls" {
                    s["data"]["tls.crt"] = crt.clone();
                }
            }
        },
        "caBundle of outrigger-injector-outrigger-system does not accept \
         secret/outrigger-injector-tls for outrigger-injector.outrigger-system.svc: invalid \
         peer certificate: certificate expired: verification time ",
        "helm upgrade outrigger charts/outrigger -n outrigger-system makes a new serving",
    )
    .await;
}

/// `check --pre` against a cluster of Kubernetes `minor`, where the user
/// may create everything but `refused` (a resource), with `webhooks`.
async fn pre(minor: &str, refused: &'static str, webhooks: Vec<Value>) -> (i32, String, String) {
    use outrigger_tests::chart::{fake_api_server_with, Create};
    let dir = tempfile::tempdir().unwrap();
    let objects = BTreeMap::from([
        (
            "/version".to_string(),
            vec![
                json!({"major": "1", "minor": minor, "gitVersion": format!("v1.{minor}.3"),
                "gitCommit": "", "gitTreeState": "clean", "buildDate": "",
                "goVersion": "go1.22", "compiler": "gc", "platform": "linux/amd64"}),
            ],
        ),
        (WEBHOOKS.to_string(), webhooks),
        // Annotated before the install; shop also for Istio.
        (
            NAMESPACES.to_string(),
            vec![
                json!({"metadata": {"name": "shop", "labels": {"istio-injection": "enabled"},
                    "annotations": {"outrigger.dev/inject": "enabled"}}}),
                json!({"metadata": {"name": "web",
                    "annotations": {"outrigger.dev/inject": "enabled"}}}),
                json!({"metadata": {"name": "kube-system"}}),
            ],
        ),
    ]);
    let review: Create = std::sync::Arc::new(move |sent: &Value| {
        let mut answer = sent.clone();
        let resource = &sent["spec"]["resourceAttributes"]["resource"];
        let allowed = resource != refused;
        answer["status"] = if allowed {
            json!({"allowed": true, "reason": "RBAC: allowed by ClusterRoleBinding \"admin\""})
        } else {
            json!({"allowed": false, "reason": ""})
        };
        answer
    });
    let creates = BTreeMap::from([(
        "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews".to_string(),
        review,
    )]);
    let api = fake_api_server_with(objects, creates, dir.path()).await;
    let kubeconfig = api.kubeconfig.display().to_string();
    let out = run_bin(
        "outrigger",
        &["check", "--pre", "--kubeconfig", &kubeconfig],
        "",
    )
    .await;
    // Each kind the chart creates was asked about, and nothing else read.
    let reviews = api
        .seen()
        .iter()
        .filter(|r| r.path.ends_with("/selfsubjectaccessreviews"))
        .count();
    assert_eq!(reviews, 9);
    out
}

#[tokio::test]
async fn before_install_a_ready_cluster_passes() {
    let (status, out, err) = pre("30", "", vec![]).await;
    println!("{out}");
    assert_eq!(status, 0, "{out}{err}");
    assert_eq!(
        out,
        "kubernetes API\n\
         --------------\n\
         ✔ API server reachable (v1.30.3)\n\
         ✔ Kubernetes 1.30 runs native sidecars (the SidecarContainers feature, on by default from 1.29)\n\
         \n\
         permissions\n\
         -----------\n\
         ✔ may create everything the chart creates (9 kinds)\n\
         \n\
         other meshes\n\
         ------------\n\
         ✔ no other webhook changes the pods of 2 namespaces (annotated outrigger.dev/inject: enabled)\n\
         \n\
         Status check results are ✔\n"
    );
}

/// A webhook configuration as a mesh registers it: one webhook `name`
/// sent pods on CREATE, with these selectors.
fn pod_webhook(config: &str, name: &str, namespaces: Value, objects: Value) -> Value {
    json!({"metadata": {"name": config}, "webhooks": [{"name": name,
        "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"],
            "resources": ["pods"]}],
        "namespaceSelector": namespaces, "objectSelector": objects,
        "clientConfig": {"service": {"name": "injector", "namespace": "elsewhere"}},
        "sideEffects": "None", "admissionReviewVersions": ["v1"]}]})
}

#[tokio::test]
async fn before_install_an_old_cluster_a_refused_permission_and_istio_fail() {
    // Istio's injector by namespace label (as its chart registers it), and
    // another webhook on every pod.
    let istio = pod_webhook(
        "istio-sidecar-injector",
        "namespace.sidecar-injector.istio.io",
        json!({"matchExpressions": [
            {"key": "istio-injection", "operator": "In", "values": ["enabled"]}]}),
        json!({"matchExpressions": [
            {"key": "sidecar.istio.io/inject", "operator": "NotIn", "values": ["false"]}]}),
    );
    let other = pod_webhook(
        "pod-defaults",
        "defaults.example.com",
        json!({"matchExpressions": [{"key": "kubernetes.io/metadata.name",
            "operator": "NotIn", "values": ["kube-system"]}]}),
        json!({}),
    );
    let (status, out, err) = pre("28", "clusterrolebindings", vec![istio, other]).await;
    println!("{out}");
    assert_eq!(status, 1, "{out}{err}");
    for line in [
        "× Kubernetes 1.28 is older than 1.29: native sidecars (the proxy as an init container \
         with restartPolicy: Always) need the SidecarContainers feature, on by default from 1.29\n    \
         → upgrade the cluster to 1.29 or later, or install with --set proxy.nativeSidecar=false",
        "× may not create clusterrolebindings.rbac.authorization.k8s.io (cluster-wide)\n    \
         → install as a cluster admin",
        "× mutatingwebhookconfiguration istio-sidecar-injector, webhook \
         namespace.sidecar-injector.istio.io (Istio's injector) would also inject the pods of \
         shop (annotated outrigger.dev/inject: enabled)\n    → uninstall Istio, or turn its \
         injection off in these namespaces",
        "⚠ mutatingwebhookconfiguration pod-defaults, webhook defaults.example.com also changes \
         the pods created in shop, web (annotated outrigger.dev/inject: enabled)\n    → check \
         that it keeps the outrigger-proxy init container first and unchanged",
    ] {
        assert!(out.contains(line), "no {line:?} in\n{out}");
    }
    assert!(
        out.ends_with("Status check results are ×: 3 failed\n"),
        "{out}"
    );
}

#[tokio::test]
async fn a_proxy_certificate_near_expiry_warns() {
    let Some(rendered) = chart(json!({}), NS) else {
        return;
    };
    // A real proxy certified for 30 s whose renewal (due at 21 s) fails:
    // its token is gone, while its config stream stays up. Expiring soon
    // once less than 85 % of its 9 s renewal window is left (7.65 s), as
    // the alert judges it; checked with less than 7 s left.
    let certified = certified(std::time::Duration::from_secs(30)).await;
    std::fs::remove_file(certified._dirs.0.path().join("shop/web")).unwrap();
    let proxy = &certified.proxy;
    let overdue = || async { cert_left(proxy).await.is_some_and(|l| l < 7.0) };
    assert!(
        eventually(std::time::Duration::from_secs(40), overdue).await,
        "the proxy's certificate never came near its end"
    );
    let (status, out, err) = run_against(healthy(&rendered), &[], &certified).await;
    println!("{out}");
    assert_eq!(status, 0, "a warning does not fail: {out}{err}");
    assert!(
        out.contains(
            "⚠ pod shop/web-1: proxy ready, version 0.4.2, certificate expires in 0m, connected \
             to the control plane\n    → kubectl -n shop logs web-1 -c outrigger-proxy: it should \
             have renewed its certificate\n"
        ),
        "{out}"
    );
}

/// A certificate that renews on time is not a warning, however short its
/// life: 40 minutes, less than an hour left from the start.
#[tokio::test]
async fn a_short_lived_certificate_renewing_on_time_is_fine() {
    let Some(rendered) = chart(json!({}), NS) else {
        return;
    };
    let (status, out, err) = run_with(
        healthy(&rendered),
        &[],
        std::time::Duration::from_secs(40 * 60),
    )
    .await;
    assert_eq!(status, 0, "{out}{err}");
    assert!(
        out.contains(
            "✔ pod shop/web-1: proxy ready, version 0.4.2, certificate valid for 39m, connected \
             to the control plane\n"
        ),
        "{out}"
    );
}

#[tokio::test]
async fn a_mesh_ca_its_namesake_root_did_not_sign_fails_naming_both() {
    use base64::Engine as _;
    // Another generated root: the same name as the chart's CA, another key.
    let (other_root, _) = test_ca();
    let roots = json!(base64::engine::general_purpose::STANDARD.encode(other_root));
    fails_with(
        move |o| {
            for s in o.get_mut(SECRETS).unwrap() {
                if s["metadata"]["name"] == "outrigger-ca" {
                    s["data"]["roots.pem"] = roots.clone();
                }
            }
        },
        "secret/outrigger-ca: the CA (ca.pem, O=Outrigger, CN=Outrigger mesh CA for \
         cluster.local) names the root O=Outrigger, CN=Outrigger mesh CA for cluster.local \
         (roots.pem) as its issuer, but that root's key did not sign it: proxies would refuse \
         the certificates it signs",
        "put the root that signed the CA in the Secret's roots.pem (identity.ca.roots), or the \
         CA that root signed in its ca.pem and ca.key (identity.ca.cert and identity.ca.key)",
    )
    .await;
}

#[tokio::test]
async fn an_expired_mesh_ca_fails_naming_it_and_its_date() {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    // The chart installed with a mesh CA (and so roots) that ended on
    // 2025-06-30: the Secret the control plane mounts holds it.
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "outrigger mesh CA");
    params.not_before = rcgen::date_time_ymd(2024, 6, 30);
    params.not_after = rcgen::date_time_ymd(2025, 6, 30);
    let ca = params.self_signed(&key).unwrap();
    fails_with_values(
        json!({ "identity": { "ca": { "cert": ca.pem(), "key": key.serialize_pem() } } }),
        |_| {},
        "secret/outrigger-ca: ca.pem (CN=outrigger mesh CA) expired at 2025-06-30T00:00:00Z",
        "rotate the mesh CA as docs/security.md says (new root trusted, new root signing, old \
         root dropped): until then the proxies' certificates cannot be renewed nor trusted",
    )
    .await;
}

#[tokio::test]
async fn an_expired_proxy_certificate_fails_naming_its_date() {
    let Some(rendered) = chart(json!({}), NS) else {
        return;
    };
    let proxy = expired().await;
    let (status, out, err) = run_against(healthy(&rendered), &[], &proxy).await;
    println!("{out}");
    assert_eq!(status, 1, "{out}{err}");
    let start = "× pod shop/web-1: proxy ready, version 0.4.2, certificate expired at ";
    let at = out
        .find(start)
        .unwrap_or_else(|| panic!("no {start:?} in\n{out}"));
    let line = out[at..].lines().next().unwrap();
    let (date, rest) = line[start.len()..].split_at(20);
    // YYYY-MM-DDTHH:MM:SSZ, then the stream the stopped CA also ended.
    assert!(
        date.as_bytes()[4] == b'-' && &date[10..11] == "T" && date.ends_with('Z'),
        "{date}"
    );
    assert_eq!(rest, ", not connected to the control plane");
    let hint = out[at..].lines().nth(1).unwrap();
    assert_eq!(
        hint,
        "    → kubectl -n shop logs web-1 -c outrigger-proxy: it cannot renew its certificate; \
         the control plane (the mesh CA) must be running and reachable from it, and its CA not \
         expired (see the mesh CA lines)"
    );
    assert!(
        out.ends_with("Status check results are ×: 1 failed\n"),
        "{out}"
    );
}

/// `helm test`'s Pod: its command and args, run against the healthy
/// install, pass; every request it makes is granted to its ServiceAccount
/// (cluster-wide by its ClusterRole, or in the release's namespace by its
/// Role), and every grant is used: the RBAC is exactly what check reads.
#[tokio::test]
async fn the_helm_test_pod_passes_under_its_own_rbac() {
    let Some(rendered) = chart(json!({}), NS) else {
        return;
    };
    let pod = rendered.get("Pod", "outrigger-check");
    assert_eq!(pod["metadata"]["annotations"]["helm.sh/hook"], "test");
    let container = &pod["spec"]["containers"][0];
    assert_eq!(container["command"], json!(["/usr/local/bin/outrigger"]));
    let args: Vec<String> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    assert_eq!(args[0], "check");
    let account = pod["spec"]["serviceAccountName"].as_str().unwrap();

    let proxy = certified(std::time::Duration::from_secs(24 * 3600)).await;
    let dir = tempfile::tempdir().unwrap();
    let objects = healthy(&rendered);
    let pods = BTreeMap::from([("shop/web-1".to_string(), proxy.proxy.admin_addr)]);
    let api = fake_api_server_with_pods(objects, pods, dir.path()).await;
    let kubeconfig = api.kubeconfig.display().to_string();
    let mut all: Vec<&str> = args.iter().map(String::as_str).collect();
    all.extend(["--kubeconfig", &kubeconfig]);
    let (status, out, err) = run_bin("outrigger", &all, "").await;
    assert_eq!(status, 0, "{out}{err}");

    let grants = rendered.grants(account, NS);
    assert!(
        grants.namespaced.keys().all(|ns| ns == NS),
        "{account}: Roles bound outside the release's namespace: {grants:?}"
    );
    let seen = api.seen();
    grants.assert_allow(account, &seen);
    let used: std::collections::BTreeSet<_> = seen.iter().map(|r| r.rbac()).collect();
    let in_namespace = grants.namespaced.get(NS).cloned().unwrap_or_default();
    let cluster_wide = grants.cluster;
    for grant in cluster_wide.iter().chain(&in_namespace) {
        assert!(
            used.contains(grant),
            "{grant:?} is granted but check never needs it"
        );
    }
}
