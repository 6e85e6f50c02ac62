//! `outrigger version`, the real binary, against the stand-in API server
//! holding the chart's Deployments (rendered by the real Helm engine, with
//! an image tag set) and pods meshed by the injector's own function: with
//! the real control plane, injector and a proxy running behind the API
//! server's pod proxy, their versions are what they report
//! (`outrigger_build_info`); where none answers, the image tags stand in
//! and the output says why; without a reachable cluster it prints the
//! client's version and exits 1.

use std::collections::BTreeMap;

use outrigger_injector::config::MeshConfig;
use outrigger_injector::inject::{inject, Namespace, Outcome};
use outrigger_tests::chart::{
    fake_api_server, fake_api_server_with_pods, render_or_skip, test_ca, MeshBinaries,
};
use outrigger_tests::{free_port, run_bin};
use serde_json::{json, Value};

const CLIENT: &str = env!("CARGO_PKG_VERSION");

/// The commit of this build, shortened as `outrigger version` prints it.
fn short_sha() -> Option<&'static str> {
    outrigger_runtime::build::git_sha().map(|sha| sha.get(..12).unwrap_or(sha))
}

/// This build as the client line and the proxy table print it.
fn this_build() -> String {
    match short_sha() {
        Some(sha) => format!("{CLIENT} ({sha})"),
        None => CLIENT.to_string(),
    }
}

/// A running component's line after its label.
fn running(pod: &str, image: &str) -> String {
    let commit = short_sha()
        .map(|sha| format!("commit {sha}, "))
        .unwrap_or_default();
    format!("{CLIENT} ({commit}running in pod {pod}; image {image})")
}

async fn run(args: &[&str]) -> (i32, String, String) {
    run_bin("outrigger", args, "").await
}

/// `outrigger version --proxies -n shop -o json`, which must succeed.
async fn shop_json(kubeconfig: &str) -> Value {
    let (status, out, err) = run(&[
        "version",
        "--proxies",
        "-n",
        "shop",
        "-o",
        "json",
        "--kubeconfig",
        kubeconfig,
    ])
    .await;
    assert_eq!(status, 0, "{err}");
    serde_json::from_str(&out).unwrap()
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

    // No pod runs: the image tags stand in, and the output says why.
    let (status, out, err) = run(&["version", "--kubeconfig", &kubeconfig]).await;
    assert_eq!(status, 0, "{err}");
    assert_eq!(
        out,
        format!(
            "Client version:        {}\n\
             Control plane version: 0.4.2 (image tag of ghcr.io/outrigger/control-plane:0.4.2; the running version is unknown: no pod matches app.kubernetes.io/instance=outrigger,app.kubernetes.io/name=outrigger-control-plane in namespace outrigger-system)\n\
             Injector version:      0.4.2 (image tag of ghcr.io/outrigger/injector:0.4.2; the running version is unknown: no pod matches app.kubernetes.io/instance=outrigger,app.kubernetes.io/name=outrigger-injector in namespace outrigger-system)\n",
            this_build()
        )
    );

    let (status, out, err) = run(&["version", "--proxies", "--kubeconfig", &kubeconfig]).await;
    assert_eq!(status, 0, "{err}");
    assert!(
        out.contains(
            "\nNAMESPACE  POD        PROXY VERSION  FROM\n\
             bank       ledger-1   0.4.2          image tag\n\
             shop       reviews-1  0.4.1          image tag\n\
             shop       web-1      0.4.2          image tag\n\
             \n\
             The running version of 3 of 3 proxies could not be read; their image tag is shown \
             (first: bank/ledger-1: GET /metrics from pod bank/ledger-1 through the API server failed"
        ),
        "{out}"
    );

    // -n: that namespace's pods only; -o json: the same data.
    let v = shop_json(&kubeconfig).await;
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
    assert_eq!(out, format!("Client version:        {}\n", this_build()));
    assert!(
        err.starts_with("Error: the cluster is unreachable: cannot read the deployments in namespace outrigger-system from the cluster"),
        "{err}"
    );
    // --client never reads the cluster.
    let (status, out, _) = run(&["version", "--client", "--kubeconfig", &kubeconfig]).await;
    assert_eq!(status, 0);
    assert_eq!(out, format!("Client version:        {}\n", this_build()));
}

/// The chart's control plane and injector and a real proxy run; the CLI
/// reaches them only through the stand-in API server's pod proxy, each on
/// the one port it serves metrics on (the control plane's plain metrics
/// port, the injector's admin port, the proxy's 4191): their versions are
/// this build's, not the image tag the chart was given. A meshed pod
/// whose proxy does not answer keeps its image tag, marked so.
#[tokio::test]
async fn running_versions_come_from_the_processes() {
    let (cert, key) = test_ca();
    let values = json!({ "identity": { "ca": { "cert": cert, "key": key } },
                         "image": { "repository": "ghcr.io/outrigger", "tag": "0.4.2" } });
    let Some(rendered) = render_or_skip(values, "outrigger", "outrigger-system") else {
        return;
    };
    // The API server the binaries themselves talk to.
    let scratch = tempfile::tempdir().unwrap();
    let own_api = fake_api_server(BTreeMap::new(), scratch.path()).await;
    let env = [("KUBECONFIG", own_api.kubeconfig.to_str().unwrap())];
    let mesh = MeshBinaries::start(&rendered, &env).await;

    // The API server the CLI talks to: the chart's Deployments, a pod of
    // each (labelled as its template says), two meshed pods.
    let deployments: Vec<Value> = rendered.all("Deployment").cloned().collect();
    let pod_of = |d: &Value| {
        let name = format!("{}-0", d["metadata"]["name"].as_str().unwrap());
        json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "outrigger-system",
                "labels": d["spec"]["template"]["metadata"]["labels"]},
            "spec": d["spec"]["template"]["spec"]})
    };
    let system_pods: Vec<Value> = deployments.iter().map(pod_of).collect();
    let web = meshed("shop", "web-1", "ghcr.io/outrigger/proxy:0.4.2");
    let old = meshed("shop", "reviews-1", "ghcr.io/outrigger/proxy:0.4.1");
    let dir = tempfile::tempdir().unwrap();
    let api = fake_api_server_with_pods(
        BTreeMap::from([
            (
                "/apis/apps/v1/namespaces/outrigger-system/deployments".to_string(),
                deployments,
            ),
            (
                "/api/v1/namespaces/outrigger-system/pods".to_string(),
                system_pods,
            ),
            ("/api/v1/namespaces/shop/pods".to_string(), vec![web, old]),
        ]),
        BTreeMap::from([
            (
                "outrigger-system/outrigger-control-plane-0:15014".to_string(),
                mesh.control_plane_metrics,
            ),
            (
                "outrigger-system/outrigger-injector-0:9443".to_string(),
                mesh.injector_metrics,
            ),
            ("shop/web-1:4191".to_string(), mesh.proxy.admin),
        ]),
        dir.path(),
    )
    .await;
    let kubeconfig = api.kubeconfig.display().to_string();

    let (status, out, err) = run(&[
        "version",
        "--proxies",
        "-n",
        "shop",
        "--kubeconfig",
        &kubeconfig,
    ])
    .await;
    assert_eq!(status, 0, "{err}");
    let build = this_build();
    let mut lines = out.lines();
    assert_eq!(
        lines.next(),
        Some(format!("Client version:        {build}").as_str())
    );
    assert_eq!(
        lines.next(),
        Some(
            format!(
                "Control plane version: {}",
                running(
                    "outrigger-control-plane-0",
                    "ghcr.io/outrigger/control-plane:0.4.2"
                )
            )
            .as_str()
        ),
        "{out}"
    );
    assert_eq!(
        lines.next(),
        Some(
            format!(
                "Injector version:      {}",
                running("outrigger-injector-0", "ghcr.io/outrigger/injector:0.4.2")
            )
            .as_str()
        ),
        "{out}"
    );
    assert!(
        out.contains(&format!("shop       web-1      {build}")),
        "{out}"
    );
    assert!(out.contains("running\n"), "{out}");
    assert!(out.contains("shop       reviews-1  0.4.1"), "{out}");
    assert!(
        out.contains(
            "The running version of 1 of 2 proxies could not be read; their image tag is shown \
             (first: shop/reviews-1: GET /metrics from pod shop/reviews-1 through the API server failed"
        ),
        "{out}"
    );

    // -o json: the same, with where each version came from.
    let v = shop_json(&kubeconfig).await;
    for c in ["controlPlane", "injector"] {
        assert_eq!(v["server"][c]["version"], CLIENT, "{c}");
        assert_eq!(v["server"][c]["source"], "running", "{c}");
        assert_eq!(
            v["server"][c]["gitSha"].as_str(),
            outrigger_runtime::build::git_sha(),
            "{c}"
        );
    }
    let proxies = v["server"]["proxies"].as_array().unwrap();
    assert_eq!(proxies[0]["pod"], "reviews-1");
    assert_eq!(proxies[0]["source"], "image");
    assert_eq!(proxies[0]["version"], "0.4.1");
    assert!(proxies[0]["unreadable"]
        .as_str()
        .unwrap()
        .contains("reviews-1"));
    assert_eq!(proxies[1]["pod"], "web-1");
    assert_eq!(proxies[1]["source"], "running");
    assert_eq!(proxies[1]["version"], CLIENT);
    // Only the pods' metrics ports were asked, through the pod proxy.
    let proxied: Vec<String> = api
        .seen()
        .iter()
        .filter(|q| q.path.contains("/proxy"))
        .map(|q| q.path.clone())
        .collect();
    assert!(
        proxied.contains(&"/api/v1/namespaces/outrigger-system/pods/outrigger-control-plane-0:15014/proxy/metrics".to_string()),
        "{proxied:?}"
    );
}
