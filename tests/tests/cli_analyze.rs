//! `outrigger analyze`, the real binary: over files, a good set exits 0, an
//! unknown subset and an unsupported field exit 1 naming the resource and
//! the field; `outrigger-control-plane check` gives the same verdicts (one
//! implementation); with `--cluster`, the same over what the stand-in API
//! server holds, with the control plane's options from its Deployment.

use std::collections::BTreeMap;
use std::path::Path;

use outrigger_tests::chart::fake_api_server;
use outrigger_tests::run_bin;
use serde_json::{json, Value};

async fn run(bin_name: &str, args: &[&str]) -> (i32, String, String) {
    run_bin(bin_name, args, "").await
}

const SHOP: &str = "\
apiVersion: v1
kind: Service
metadata: { name: reviews, namespace: shop }
spec: { clusterIP: 10.96.0.10, ports: [{ name: http, port: 80 }] }
---
apiVersion: outrigger.dev/v1alpha1
kind: DestinationRule
metadata: { name: reviews, namespace: shop }
spec:
  host: reviews
  subsets:
    - { name: v1, labels: { version: v1 } }
    - { name: v2, labels: { version: v2 } }
";

fn split(v2: &str) -> String {
    format!(
        "\
apiVersion: outrigger.dev/v1alpha1
kind: VirtualService
metadata: {{ name: reviews, namespace: shop }}
spec:
  hosts: [reviews]
  http:
    - route:
        - {{ destination: {{ host: reviews, subset: v1 }}, weight: 90 }}
        - {{ destination: {{ host: reviews, subset: {v2} }}, weight: 10 }}
"
    )
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

/// The repository's examples of mesh resources are accepted as they are.
#[tokio::test]
async fn the_mesh_examples_are_accepted() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/mesh");
    let (code, out, err) = run("outrigger", &["analyze", examples.to_str().unwrap()]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("no findings: 4 mesh resources would be accepted"),
        "{out}"
    );
}

#[tokio::test]
async fn a_good_set_of_files_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let shop = write(dir.path(), "good/shop.yaml", SHOP);
    write(dir.path(), "good/routes/split.yaml", &split("v2"));
    let folder = dir.path().join("good").display().to_string();
    let (status, out, err) = run("outrigger", &["analyze", &folder]).await;
    assert_eq!(status, 0, "{out}{err}");
    assert_eq!(out, "✔ no findings: 2 mesh resources would be accepted\n");
    // A file and a folder together are one set.
    let routes = dir.path().join("good/routes").display().to_string();
    let (status, out, _) = run("outrigger", &["analyze", &shop, &routes, "-o", "json"]).await;
    assert_eq!(status, 0, "{out}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["ok"], true);
    // A path that cannot be read is not a finding: exit 2, naming it.
    let missing = dir.path().join("missing.yaml").display().to_string();
    let (status, _, err) = run("outrigger", &["analyze", &missing]).await;
    assert_eq!(status, 2);
    assert!(err.contains(&format!("cannot read {missing}")), "{err}");
    assert_eq!(
        v["accepted"],
        json!([
            "DestinationRule shop/reviews",
            "VirtualService shop/reviews"
        ])
    );
}

#[tokio::test]
async fn an_unknown_subset_exits_1_naming_the_resource_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let shop = write(dir.path(), "shop.yaml", SHOP);
    let bad = write(dir.path(), "split.yaml", &split("v3"));
    let (status, out, err) = run("outrigger", &["analyze", &shop, &bad]).await;
    assert_eq!(status, 1, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(lines[0].starts_with("RESOURCE"), "{out}");
    assert!(
        lines[1].starts_with(
            "VirtualService/shop/reviews  spec.http[0].route[1].destination.subset  UnknownSubset  "
        ) && lines[1].contains("no subset \"v3\""),
        "{out}"
    );
    let (status, out, _) = run("outrigger", &["analyze", &shop, &bad, "-o", "yaml"]).await;
    assert_eq!(status, 1);
    let v: Value = serde_saphyr::from_str(&out).unwrap();
    assert_eq!(v["findings"][0]["reason"], "UnknownSubset");
    assert_eq!(v["findings"][0]["name"], "reviews");

    // The control plane's own check reads the same verdict.
    let (status, out, _) = run(
        "outrigger-control-plane",
        &["check", "--folder", &dir.path().display().to_string()],
    )
    .await;
    assert_eq!(status, 1);
    assert!(
        out.contains("VirtualService shop/reviews: not accepted (UnknownSubset): spec.http[0].route[1].destination.subset: no subset \"v3\""),
        "{out}"
    );
}

#[tokio::test]
async fn an_unsupported_field_exits_1_naming_it_and_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let shop = write(dir.path(), "shop.yaml", SHOP);
    let text = split("v2").replace(
        "    - route:",
        "    - mirror: { host: reviews }\n      route:",
    );
    let bad = write(dir.path(), "mirror.yaml", &text);
    let (status, out, _) = run("outrigger", &["analyze", &shop, &bad]).await;
    assert_eq!(status, 1, "{out}");
    assert!(
        out.contains(&format!(
            "VirtualService/shop/reviews  mirror  Unreadable  {bad}:7: unknown field `mirror`"
        )),
        "{out}"
    );
}

/// YAML documents as JSON values.
fn to_json(text: &str) -> Vec<Value> {
    serde_saphyr::from_multiple(text).unwrap()
}

/// The split with subset `v3`, which the shop has not, named reviews-canary.
fn canary() -> Value {
    let mut vs = to_json(&split("v3")).remove(0);
    vs["metadata"]["name"] = json!("reviews-canary");
    vs
}

/// A stand-in API server holding the shop's Service and DestinationRule,
/// `virtual_services`, and the objects of `more` (path → items).
async fn shop_cluster(
    virtual_services: Vec<Value>,
    more: Vec<(&str, Vec<Value>)>,
    dir: &Path,
) -> outrigger_tests::chart::FakeApi {
    let shop = to_json(SHOP);
    let mut objects = BTreeMap::from([
        ("/api/v1/services".to_string(), vec![shop[0].clone()]),
        (
            "/apis/outrigger.dev/v1alpha1/destinationrules".to_string(),
            vec![shop[1].clone()],
        ),
        (
            "/apis/outrigger.dev/v1alpha1/virtualservices".to_string(),
            virtual_services,
        ),
    ]);
    objects.extend(more.into_iter().map(|(p, items)| (p.to_string(), items)));
    fake_api_server(objects, dir).await
}

/// The cluster as the stand-in API server holds it: the shop's Service and
/// DestinationRule, a VirtualService with an unknown subset, and one with a
/// field Outrigger does not support (which the API server would hold if its
/// CRD were older or looser than this CLI), and the chart's control plane
/// Deployment (its options).
#[tokio::test]
async fn over_the_cluster_the_same_verdicts() {
    let good = to_json(&split("v2")).remove(0);
    let mut unsupported = good.clone();
    unsupported["metadata"]["name"] = json!("reviews-mirror");
    unsupported["spec"]["http"][0]["mirror"] = json!({"host": "reviews"});
    let deploy = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "outrigger-control-plane", "namespace": "outrigger-system"},
        "spec": {"selector": {}, "template": {"spec": {"containers": [{
            "name": "control-plane", "image": "ghcr.io/outrigger/control-plane:0.3.1",
            "args": ["run", "--kubernetes", "--trust-domain=cluster.local",
                     "--default-export-to=."]}]}}}
    });
    let dir = tempfile::tempdir().unwrap();
    let api = shop_cluster(
        vec![canary(), unsupported],
        vec![(
            "/apis/apps/v1/namespaces/outrigger-system/deployments",
            vec![deploy],
        )],
        dir.path(),
    )
    .await;
    let kubeconfig = api.kubeconfig.display().to_string();
    let (status, out, err) = run(
        "outrigger",
        &["analyze", "--cluster", "--kubeconfig", &kubeconfig],
    )
    .await;
    assert_eq!(status, 1, "{err}");
    assert_eq!(err, "");
    let rows: Vec<&str> = out.lines().skip(1).collect();
    assert_eq!(rows.len(), 2, "{out}");
    let cells = |row: &str| row.split_whitespace().take(3).collect::<Vec<_>>().join(" ");
    assert_eq!(
        cells(rows[0]),
        "VirtualService/shop/reviews-canary spec.http[0].route[1].destination.subset UnknownSubset",
        "{out}"
    );
    assert_eq!(
        cells(rows[1]),
        "VirtualService/shop/reviews-mirror mirror InvalidSpec",
        "{out}"
    );
    // It read every kind the translator reads, and the control plane's Deployment.
    let paths: Vec<String> = api.seen().into_iter().map(|r| r.path).collect();
    for p in [
        "/api/v1/namespaces",
        "/api/v1/services",
        "/apis/discovery.k8s.io/v1/endpointslices",
        "/api/v1/pods",
        "/apis/outrigger.dev/v1alpha1/virtualservices",
        "/apis/outrigger.dev/v1alpha1/destinationrules",
        "/apis/outrigger.dev/v1alpha1/authorizationpolicies",
        "/apis/outrigger.dev/v1alpha1/peerauthentications",
        "/apis/apps/v1/namespaces/outrigger-system/deployments",
    ] {
        assert!(paths.iter().any(|s| s == p), "{p} not read: {paths:?}");
    }

    // No control plane there: the defaults, and a warning that says so.
    let (status, _, err) = run(
        "outrigger",
        &[
            "analyze",
            "--cluster",
            "--kubeconfig",
            &kubeconfig,
            "--mesh-namespace",
            "mesh",
        ],
    )
    .await;
    assert_eq!(status, 1);
    assert!(
        err.contains("no deployment/outrigger-control-plane in namespace mesh"),
        "{err}"
    );
}

/// Files with `--cluster`: analyzed as if applied to what the cluster
/// holds. A file fixes the cluster's VirtualService of the same name (its
/// finding goes), a new file's VirtualService for the same host conflicts
/// with the cluster's, and a file that does not read leaves the cluster's
/// object in the analysis.
#[tokio::test]
async fn files_over_the_cluster_replace_its_objects_of_the_same_name() {
    let dir = tempfile::tempdir().unwrap();
    let api = shop_cluster(vec![canary()], vec![], dir.path()).await;
    let kubeconfig = api.kubeconfig.display().to_string();
    let analyze = |files: Vec<String>| {
        let kubeconfig = kubeconfig.clone();
        async move {
            let mut args = vec!["analyze", "--cluster", "--kubeconfig", &kubeconfig];
            args.extend(files.iter().map(String::as_str));
            args.extend(["-n", "shop", "-o", "json"]);
            let (status, out, err) = run("outrigger", &args).await;
            let report: Value =
                serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}{err}"));
            (status, report)
        }
    };
    let names = |report: &Value| -> Vec<String> {
        report["findings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| {
                format!(
                    "{} {}",
                    f["name"].as_str().unwrap(),
                    f["reason"].as_str().unwrap()
                )
            })
            .collect()
    };

    // The cluster alone: the canary's unknown subset.
    let (status, report) = analyze(vec![]).await;
    assert_eq!(status, 1);
    assert_eq!(names(&report), ["reviews-canary UnknownSubset"]);

    // The fix as a file (no namespace: -n shop); then a second
    // VirtualService for the same host: it conflicts (the oldest wins,
    // then the first by name, as the control plane admits them).
    let fixed = split("v2").replace("name: reviews,", "name: reviews-canary,");
    let fixed = fixed
        .replace("namespace: shop ", "")
        .replace(", namespace: shop", "");
    assert!(!fixed.contains("namespace"), "{fixed}");
    let fix = write(dir.path(), "fix/canary.yaml", &fixed);
    let (status, report) = analyze(vec![fix.clone()]).await;
    assert_eq!(status, 0, "{report}");
    assert_eq!(names(&report), Vec::<String>::new());
    assert!(
        report["accepted"]
            .as_array()
            .unwrap()
            .contains(&json!("VirtualService shop/reviews-canary")),
        "{report}"
    );
    let new = write(
        dir.path(),
        "new/v4.yaml",
        &split("v4").replace("name: reviews,", "name: reviews-v4,"),
    );
    let (status, report) = analyze(vec![fix, new]).await;
    assert_eq!(status, 1);
    assert_eq!(names(&report), ["reviews-v4 Conflict"]);

    // A file that does not read: reported, and the cluster's canary is
    // still judged (it is what stays in force).
    let broken = write(
        dir.path(),
        "broken.yaml",
        "kind: VirtualService\nmetadata: [\n",
    );
    let (status, report) = analyze(vec![broken]).await;
    assert_eq!(status, 1);
    let found = names(&report);
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(
        found.contains(&"reviews-canary UnknownSubset".to_string()),
        "{found:?}"
    );
}
