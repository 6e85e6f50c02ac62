//! `outrigger version`, the real binary, against the stand-in API server
//! holding the chart's Deployments (rendered by the real Helm engine, with
//! an image tag set) and pods meshed by the injector's own function: the
//! control plane's and the injector's versions are their image tags, each
//! meshed pod's proxy version its proxy container's; without a reachable
//! cluster it prints the client's version and exits 1.

use std::collections::BTreeMap;

use outrigger_injector::config::MeshConfig;
use outrigger_injector::inject::{inject, Namespace, Outcome};
use outrigger_tests::chart::{fake_api_server, render_or_skip, test_ca};
use outrigger_tests::{free_port, run_bin};
use serde_json::{json, Value};

const CLIENT: &str = env!("CARGO_PKG_VERSION");

async fn run(args: &[&str]) -> (i32, String, String) {
    run_bin("outrigger", args, "").await
}

/// A pod in `ns`, meshed by the injector's function with proxy `image`.
fn meshed(ns: &str, name: &str, image: &str) -> Value {
    let mut pod = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns,
            "annotations": {"outrigger.dev/inject": "enabled"}},
        "spec": {"containers": [{"name": "app", "image": "app:1"}]}});
    let Outcome::Inject { patch, .. } = inject(
        &pod,
        &Namespace {
            name: ns.into(),
            annotations: BTreeMap::new(),
        },
        &MeshConfig::with_image(image),
    ) else {
        panic!("not injected")
    };
    json_patch::patch(&mut pod, &patch).unwrap();
    pod
}

#[tokio::test]
async fn versions_of_the_control_plane_injector_and_proxies() {
    let (cert, key) = test_ca();
    let values = json!({ "identity": { "ca": { "cert": cert, "key": key } },
                         "image": { "repository": "ghcr.io/outrigger", "tag": "0.4.2" } });
    let Some(rendered) = render_or_skip(values, "outrigger", "outrigger-system") else {
        return;
    };
    let deployments: Vec<Value> = rendered.all("Deployment").cloned().collect();
    assert_eq!(deployments.len(), 2);
    let web = meshed("shop", "web-1", "ghcr.io/outrigger/proxy:0.4.2");
    let old = meshed("shop", "reviews-1", "ghcr.io/outrigger/proxy:0.4.1");
    let other = meshed("bank", "ledger-1", "ghcr.io/outrigger/proxy:0.4.2");
    let plain = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "db-0", "namespace": "shop"},
        "spec": {"containers": [{"name": "db", "image": "postgres:16"}]}});
    let dir = tempfile::tempdir().unwrap();
    let api = fake_api_server(
        BTreeMap::from([
            (
                "/apis/apps/v1/namespaces/outrigger-system/deployments".to_string(),
                deployments,
            ),
            (
                "/api/v1/pods".to_string(),
                vec![web.clone(), old.clone(), other, plain.clone()],
            ),
            (
                "/api/v1/namespaces/shop/pods".to_string(),
                vec![web, old, plain],
            ),
        ]),
        dir.path(),
    )
    .await;
    let kubeconfig = api.kubeconfig.display().to_string();

    let (status, out, err) = run(&["version", "--kubeconfig", &kubeconfig]).await;
    assert_eq!(status, 0, "{err}");
    assert_eq!(
        out,
        format!(
            "Client version:        {CLIENT}\n\
             Control plane version: 0.4.2 (ghcr.io/outrigger/control-plane:0.4.2)\n\
             Injector version:      0.4.2 (ghcr.io/outrigger/injector:0.4.2)\n"
        )
    );

    let (status, out, err) = run(&["version", "--proxies", "--kubeconfig", &kubeconfig]).await;
    assert_eq!(status, 0, "{err}");
    assert!(
        out.ends_with(
            "\nNAMESPACE  POD        PROXY VERSION\n\
             bank       ledger-1   0.4.2\n\
             shop       reviews-1  0.4.1\n\
             shop       web-1      0.4.2\n"
        ),
        "{out}"
    );

    // -n: that namespace's pods only; -o json: the same data.
    let (status, out, err) = run(&[
        "version",
        "--proxies",
        "-n",
        "shop",
        "-o",
        "json",
        "--kubeconfig",
        &kubeconfig,
    ])
    .await;
    assert_eq!(status, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["client"]["version"], CLIENT);
    assert_eq!(v["server"]["controlPlane"]["version"], "0.4.2");
    let pods: Vec<&str> = v["server"]["proxies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["pod"].as_str().unwrap())
        .collect();
    assert_eq!(pods, ["reviews-1", "web-1"]);

    // Installed elsewhere: both named as missing, exit 1.
    let (status, out, _) = run(&[
        "version",
        "--kubeconfig",
        &kubeconfig,
        "--mesh-namespace",
        "mesh",
    ])
    .await;
    assert_eq!(status, 1);
    assert!(
        out.contains("Control plane version: not found (no deployment/outrigger-control-plane in namespace mesh; pass --mesh-namespace)"),
        "{out}"
    );
}

#[tokio::test]
async fn without_a_cluster_the_client_version_and_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: gone\n\
             clusters: [{{name: gone, cluster: {{server: \"http://127.0.0.1:{}\"}}}}]\n\
             users: [{{name: u, user: {{token: t}}}}]\n\
             contexts: [{{name: gone, context: {{cluster: gone, user: u}}}}]\n",
            free_port()
        ),
    )
    .unwrap();
    let kubeconfig = kubeconfig.display().to_string();
    let (status, out, err) = run(&["version", "--kubeconfig", &kubeconfig]).await;
    assert_eq!(status, 1);
    assert_eq!(out, format!("Client version:        {CLIENT}\n"));
    assert!(
        err.starts_with("Error: the cluster is unreachable: cannot read the deployments in namespace outrigger-system from the cluster"),
        "{err}"
    );
    // --client never reads the cluster.
    let (status, out, _) = run(&["version", "--client", "--kubeconfig", &kubeconfig]).await;
    assert_eq!(status, 0);
    assert_eq!(out, format!("Client version:        {CLIENT}\n"));
}
