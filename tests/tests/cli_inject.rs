//! `outrigger inject`, the real binary: for a table of workloads, the pod
//! template it writes equals the pod the webhook makes (its own
//! AdmissionReview handler, [`Webhook::review`]) from a pod created from
//! the same template; a second run changes nothing; other documents pass
//! through byte for byte; and with no `--mesh-config` the mesh config and
//! trust roots come from what the chart installed (rendered by the real
//! Helm engine, served by the stand-in API server).
//!
//! The binary is the workspace's (`cargo build -p outrigger-cli`, which
//! `cargo test --workspace` does through `cli/tests/`).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use base64::Engine as _;
use outrigger_injector::config::MeshConfig;
use outrigger_injector::inject::Namespace;
use outrigger_injector::metrics::Metrics;
use outrigger_injector::namespaces::Namespaces;
use outrigger_injector::webhook::{encode, Webhook};
use outrigger_tests::chart::{data_of, fake_api_server, render_or_skip, test_ca};
use outrigger_tests::run_bin;
use serde_json::{json, Value};

const MESH: &str = "\
proxyImage: ghcr.io/outrigger/proxy:0.3.1
controlPlaneAddress: outrigger-control-plane.outrigger-system.svc:8090
";

/// Runs the binary with `input` on stdin: (status, stdout, stderr).
async fn run(args: &[&str], input: &str) -> (i32, String, String) {
    run_bin("outrigger", args, input).await
}

/// The mesh config and roots as files, and the config as the webhook holds it.
fn mesh_files(dir: &Path) -> (String, String, MeshConfig) {
    let (roots, _) = test_ca();
    let mesh_path = dir.join("mesh.yaml");
    let roots_path = dir.join("roots.pem");
    std::fs::write(&mesh_path, MESH).unwrap();
    std::fs::write(&roots_path, &roots).unwrap();
    let mut cfg = MeshConfig::from_yaml(MESH).unwrap();
    cfg.trust_roots = roots;
    (
        mesh_path.display().to_string(),
        roots_path.display().to_string(),
        cfg,
    )
}

/// What the webhook gives a pod created from `template` in `ns` (annotated
/// `outrigger.dev/inject: enabled`): the pod with its patch applied.
fn webhook_pod(cfg: &MeshConfig, ns: &str, template: &Value) -> Value {
    let webhook = Webhook {
        config: Arc::new(cfg.clone()).into(),
        namespaces: Arc::new(Namespaces::fixed([Namespace {
            name: ns.to_string(),
            annotations: BTreeMap::from([("outrigger.dev/inject".into(), "enabled".into())]),
        }])),
        metrics: Arc::new(Metrics::new()),
    };
    let mut metadata = template.get("metadata").cloned().unwrap_or(json!({}));
    metadata["generateName"] = json!("w-5c9d-");
    metadata["namespace"] = json!(ns);
    let mut pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata,
        "spec": template["spec"]});
    let body = serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "u1",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": ns,
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": pod,
        }
    }))
    .unwrap();
    let review = webhook.review(&body).expect("a valid review");
    let answer: Value = serde_json::from_slice(&encode(&review)).unwrap();
    assert_eq!(answer["response"]["allowed"], true, "{answer}");
    let raw = base64::engine::general_purpose::STANDARD
        .decode(answer["response"]["patch"].as_str().expect("a patch"))
        .unwrap();
    let patch: json_patch::Patch = serde_json::from_slice(&raw).unwrap();
    json_patch::patch(&mut pod, &patch).unwrap();
    pod
}

fn docs(text: &str) -> Vec<Value> {
    serde_saphyr::from_multiple::<Value>(text)
        .unwrap()
        .into_iter()
        .filter(|d| !d.is_null())
        .collect()
}

/// Where each kind keeps its pod template.
fn template_pointer(kind: &str) -> &'static str {
    match kind {
        "CronJob" => "/spec/jobTemplate/spec/template",
        _ => "/spec/template",
    }
}

fn spec_with(containers: Value) -> Value {
    json!({"containers": containers})
}

/// The workloads: every kind, with what changes the patch (probes, the
/// app's own init containers, volumes, annotations, native sidecars off).
fn workloads() -> Vec<Value> {
    let app = json!([{"name": "web", "image": "web:1", "ports": [{"containerPort": 8080}],
        "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080}},
        "livenessProbe": {"tcpSocket": {"port": 8080}}}]);
    let template = |annotations: Value, spec: Value| json!({"metadata": {"labels": {"app": "w"}, "annotations": annotations}, "spec": spec});
    let selector = json!({"matchLabels": {"app": "w"}});
    vec![
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"replicas": 2, "selector": selector,
                "template": template(json!({}), spec_with(app.clone()))}}),
        json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
            "metadata": {"name": "db", "namespace": "shop"},
            "spec": {"serviceName": "db", "selector": selector,
                "template": template(json!({"config.outrigger.dev/native-sidecar": "false"}),
                    json!({"containers": [{"name": "db", "image": "db:2"}],
                        "initContainers": [{"name": "migrate", "image": "db:2"}],
                        "volumes": [{"name": "data", "emptyDir": {}}]}))}}),
        json!({"apiVersion": "apps/v1", "kind": "DaemonSet",
            "metadata": {"name": "agent", "namespace": "shop"},
            "spec": {"selector": selector,
                "template": template(json!({"prometheus.io/scrape": "false"}),
                    spec_with(json!([{"name": "agent", "image": "agent:1"}])))}}),
        json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": "rs", "namespace": "shop"},
            "spec": {"selector": selector,
                "template": template(json!({"config.outrigger.dev/proxy-cpu-limit": "500m"}),
                    spec_with(app.clone()))}}),
        json!({"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": "once", "namespace": "shop"},
            "spec": {"template": {"spec": {"restartPolicy": "Never",
                "containers": [{"name": "job", "image": "job:1"}]}}}}),
        // No namespace: the one -n names.
        json!({"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "nightly"},
            "spec": {"schedule": "@daily", "jobTemplate": {"spec": {"template": {"spec": {
                "restartPolicy": "OnFailure",
                "containers": [{"name": "job", "image": "job:1"}]}}}}}}),
    ]
}

#[tokio::test]
async fn each_pod_template_gets_what_the_webhook_gives_its_pods() {
    let dir = tempfile::tempdir().unwrap();
    let (mesh, roots, cfg) = mesh_files(dir.path());
    let mut input = String::new();
    for w in workloads() {
        input.push_str("---\n");
        input.push_str(&serde_saphyr::to_string(&w).unwrap());
    }
    // A bare Pod, and a List holding a Deployment.
    let pod = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "p", "namespace": "shop", "labels": {"app": "p"}},
        "spec": spec_with(json!([{"name": "p", "image": "p:1"}]))});
    let list = json!({"apiVersion": "v1", "kind": "List", "items": [workloads()[0]]});
    input.push_str(&format!(
        "---\n{}---\n{}",
        serde_saphyr::to_string(&pod).unwrap(),
        serde_saphyr::to_string(&list).unwrap()
    ));

    let args = [
        "inject",
        "--mesh-config",
        &mesh,
        "--trust-roots",
        &roots,
        "-n",
        "shop",
    ];
    let (status, out, err) = run(&args, &input).await;
    assert_eq!(status, 0, "{err}");
    // Every workload is injected; the webhook's warnings are passed on.
    assert_eq!(
        err,
        "statefulset/db -n shop: warning: native sidecars are off: the app's init containers \
         run before the proxy, and their traffic is redirected to it all the same (skip their \
         ports, or turn config.outrigger.dev/native-sidecar on)\n"
    );
    let docs = docs(&out);
    assert_eq!(docs.len(), workloads().len() + 2);

    for (given, got) in workloads().iter().zip(&docs) {
        let kind = given["kind"].as_str().unwrap();
        let pointer = template_pointer(kind);
        let template = got.pointer(pointer).unwrap();
        let want = webhook_pod(&cfg, "shop", given.pointer(pointer).unwrap());
        assert_eq!(template["spec"], want["spec"], "{kind}: the pod spec");
        assert_eq!(
            template["metadata"]["annotations"], want["metadata"]["annotations"],
            "{kind}: the annotations"
        );
        assert_eq!(template["metadata"]["labels"], want["metadata"]["labels"]);
        // The rest of the workload is as it was.
        let (mut a, mut b) = (given.clone(), got.clone());
        *a.pointer_mut(pointer).unwrap() = Value::Null;
        *b.pointer_mut(pointer).unwrap() = Value::Null;
        assert_eq!(a, b, "{kind}: outside the template");
    }
    let got_pod = &docs[workloads().len()];
    let mut want_pod = webhook_pod(&cfg, "shop", &pod);
    want_pod["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("generateName");
    assert_eq!(got_pod, &want_pod);
    let got_list = &docs[workloads().len() + 1];
    assert_eq!(
        got_list["items"][0], docs[0],
        "a List's items as the same objects"
    );

    // A second run changes nothing, byte for byte.
    let (status, again, err) = run(&args, &out).await;
    assert_eq!(status, 0, "{err}");
    assert_eq!(again, out);
    assert_eq!(err, "");
}

#[tokio::test]
async fn other_documents_pass_through_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let (mesh, roots, _) = mesh_files(dir.path());
    let input = "\
# The web Service: comments and layout stay.
apiVersion: v1
kind: Service
metadata:
  name: web   # the name
spec:
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: settings}
data:
  app.yaml: |
    greeting: hello
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: legacy}
spec:
  selector: {matchLabels: {app: legacy}}
  template:
    metadata:
      labels: {app: legacy}
      annotations: {outrigger.dev/inject: disabled}
    spec: {containers: [{name: legacy, image: legacy:1}]}
";
    let file = dir.path().join("app.yaml");
    std::fs::write(&file, input).unwrap();
    let file = file.display().to_string();
    let args = [
        "inject",
        "-f",
        &file,
        "--mesh-config",
        &mesh,
        "--trust-roots",
        &roots,
    ];
    let (status, out, err) = run(&args, "").await;
    assert_eq!(status, 0, "{err}");
    assert_eq!(out, input);
    assert_eq!(
        err,
        "deployment/legacy -n default: left as is: outrigger.dev/inject: disabled\n"
    );
}

#[tokio::test]
async fn a_workload_the_webhook_would_refuse_fails_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let (mesh, roots, _) = mesh_files(dir.path());
    let input = "\
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata:
      labels: {app: web}
      annotations: {config.outrigger.dev/proxy-memory-limit: plenty}
    spec: {containers: [{name: web, image: web:1}]}
";
    let args = ["inject", "--mesh-config", &mesh, "--trust-roots", &roots];
    let (status, out, err) = run(&args, input).await;
    assert_eq!(status, 1);
    assert_eq!(out, "");
    assert!(
        err.contains("deployment/web -n shop: refused")
            && err.contains("config.outrigger.dev/proxy-memory-limit"),
        "{err}"
    );
}

#[tokio::test]
async fn without_mesh_config_the_chart_installed_one_is_read_from_the_cluster() {
    let (cert, key) = test_ca();
    let values = json!({ "identity": { "ca": { "cert": cert, "key": key } } });
    let ns = "outrigger-system";
    let Some(rendered) = render_or_skip(values, "outrigger", ns) else {
        return;
    };
    let cm = rendered.get("ConfigMap", "outrigger-mesh-config").clone();
    let deploy = rendered.get("Deployment", "outrigger-injector").clone();
    let secret = rendered
        .all("Secret")
        .find(|s| data_of(s, "roots.pem").is_some())
        .expect("the CA Secret")
        .clone();
    let dir = tempfile::tempdir().unwrap();
    let api = fake_api_server(
        BTreeMap::from([
            (
                format!("/api/v1/namespaces/{ns}/configmaps"),
                vec![cm.clone()],
            ),
            (
                format!("/apis/apps/v1/namespaces/{ns}/deployments"),
                vec![deploy],
            ),
            (format!("/api/v1/namespaces/{ns}/secrets"), vec![secret]),
        ]),
        dir.path(),
    )
    .await;
    let input = serde_saphyr::to_string(&workloads()[0]).unwrap();
    let kubeconfig = api.kubeconfig.display().to_string();
    let (status, from_cluster, err) = run(&["inject", "--kubeconfig", &kubeconfig], &input).await;
    assert_eq!(status, 0, "{err}");

    // The same as with the ConfigMap's text and the CA's roots as files.
    let mesh = dir.path().join("mesh.yaml");
    std::fs::write(&mesh, data_of(&cm, "mesh.yaml").unwrap()).unwrap();
    let roots = dir.path().join("roots.pem");
    std::fs::write(&roots, &cert).unwrap();
    let (status, from_files, err) = run(
        &[
            "inject",
            "--mesh-config",
            &mesh.display().to_string(),
            "--trust-roots",
            &roots.display().to_string(),
        ],
        &input,
    )
    .await;
    assert_eq!(status, 0, "{err}");
    assert_eq!(from_cluster, from_files);
    assert!(
        from_cluster.contains("BEGIN CERTIFICATE"),
        "the roots are in"
    );

    // Not installed there: the error names what is missing and what to do.
    let (status, _, err) = run(
        &[
            "inject",
            "--kubeconfig",
            &kubeconfig,
            "--mesh-namespace",
            "elsewhere",
        ],
        &input,
    )
    .await;
    assert_eq!(status, 1);
    assert!(
        err.contains("configmap/outrigger-mesh-config not found in namespace elsewhere")
            && err.contains("--mesh-config"),
        "{err}"
    );
}
