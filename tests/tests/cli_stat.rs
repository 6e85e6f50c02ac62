//! `outrigger stat`, the real binary against real proxies carrying traffic:
//! at their admin ports (`--local`), and as meshed pods through the
//! stand-in API server's pod proxy. Build the binary first:
//! `cargo build -p outrigger-cli`.

use std::collections::BTreeMap;
use std::process::Output;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use outrigger_tests::chart::fake_api_server_with_pods;
use outrigger_tests::*;
use serde_json::{json, Value};

async fn outrigger(args: &[&str]) -> Output {
    let bin =
        workspace_bin("outrigger").expect("the outrigger binary (cargo build -p outrigger-cli)");
    tokio::process::Command::new(bin)
        .args(args)
        .output()
        .await
        .expect("outrigger runs")
}

fn rows(out: &Output) -> Vec<Value> {
    assert!(
        out.status.success(),
        "outrigger failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn row<'a>(rows: &'a [Value], name: &str, direction: &str) -> &'a Value {
    rows.iter()
        .find(|r| r["name"] == name && r["direction"] == direction)
        .unwrap_or_else(|| panic!("no {name} {direction} row in {rows:?}"))
}

/// A meshed pod as the API server lists it: its proxy container, running,
/// owned by a Deployment's ReplicaSet.
fn pod(name: &str, deploy: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": name, "namespace": "shop",
            "labels": { "pod-template-hash": "5d9c7" },
            "ownerReferences": [{ "apiVersion": "apps/v1", "kind": "ReplicaSet",
                "name": format!("{deploy}-5d9c7"), "uid": "u", "controller": true }],
        },
        "spec": { "containers": [{ "name": "app" }],
                  "initContainers": [{ "name": "outrigger-proxy", "restartPolicy": "Always" }] },
        "status": { "phase": "Running" },
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn counts_the_traffic_of_a_window_on_both_sides() {
    let mesh = Mesh::start(app("web").await).await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = keep_requesting(mesh.outbound(), stop.clone());
    let client = mesh.client.admin_addr.to_string();
    let server = mesh.server.admin_addr.to_string();

    // --local: rows named by the proxies' own namespaces and workloads.
    let args = [
        "stat", "deploy", "--window", "1s", "--local", &client, &server, "-o", "json",
    ];
    let found = rows(&outrigger(&args).await);
    let table = outrigger(&args[..args.len() - 2]).await;
    let table = String::from_utf8_lossy(&table.stdout);
    println!("{table}");
    assert!(
        table.starts_with("NAMESPACE  NAME    DIRECTION  SUCCESS")
            && table.contains("\nshop       client  outbound   100.00%")
            && table.contains("\nshop       web     inbound    100.00%"),
        "{table}"
    );
    for (name, direction) in [("client", "outbound"), ("web", "inbound")] {
        let r = row(&found, name, direction);
        assert_eq!(r["namespace"], "shop", "{r}");
        assert!(r["rps"].as_f64().unwrap() > 10.0, "{r}");
        assert_eq!(r["success"], 1.0, "{r}");
        assert!(r["p50_ms"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["p99_ms"].as_f64().unwrap() >= r["p50_ms"].as_f64().unwrap());
        // The test hop is plaintext.
        assert_eq!(r["mtls"], 0.0, "{r}");
    }

    // The cluster: pods listed by the API server, scraped through its pod
    // proxy, counted under their Deployment.
    let dir = tempfile::tempdir().unwrap();
    let objects = BTreeMap::from([(
        "/api/v1/namespaces/shop/pods".to_string(),
        vec![
            pod("client-5d9c7-aaaaa", "client"),
            pod("web-5d9c7-bbbbb", "web"),
        ],
    )]);
    let pods = BTreeMap::from([
        (
            "shop/client-5d9c7-aaaaa".to_string(),
            mesh.client.admin_addr,
        ),
        ("shop/web-5d9c7-bbbbb".to_string(), mesh.server.admin_addr),
    ]);
    let api = fake_api_server_with_pods(objects, pods, dir.path()).await;
    let kubeconfig = api.kubeconfig.to_str().unwrap();
    let base = [
        "--kubeconfig",
        kubeconfig,
        "-n",
        "shop",
        "stat",
        "--window",
        "1s",
    ];
    let cmd = |more: &[&'static str]| {
        let mut v: Vec<&str> = base.to_vec();
        v.extend_from_slice(more);
        v.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let run = |args: Vec<String>| async move {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        outrigger(&args).await
    };

    let table = run(cmd(&["deploy"])).await;
    println!("{}", String::from_utf8_lossy(&table.stdout));
    let found = rows(&run(cmd(&["deploy/web", "-o", "json"])).await);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(row(&found, "web", "inbound")["rps"].as_f64().unwrap() > 10.0);
    assert_eq!(row(&found, "web", "inbound")["namespace"], "shop");
    let found = rows(&run(cmd(&["pod/client-5d9c7-aaaaa", "-o", "json"])).await);
    assert!(
        row(&found, "client-5d9c7-aaaaa", "outbound")["rps"]
            .as_f64()
            .unwrap()
            > 10.0
    );
    let found = rows(&run(cmd(&["ns", "-o", "json"])).await);
    assert!(row(&found, "shop", "inbound")["rps"].as_f64().unwrap() > 10.0);
    assert_eq!(row(&found, "shop", "inbound")["namespace"], Value::Null);
    assert!(row(&found, "shop", "outbound")["rps"].as_f64().unwrap() > 10.0);
    assert!(api
        .seen()
        .iter()
        .any(|r| r.path == "/api/v1/namespaces/shop/pods/web-5d9c7-bbbbb:4191/proxy/metrics"));

    // A name nothing matches names it and what to check.
    let out = run(cmd(&["deploy/nope"])).await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no meshed, running pod matches deploy/nope in namespace shop"),
        "{err}"
    );

    stop.store(true, Ordering::SeqCst);
    let (ok, failed) = tally(load).await;
    assert!(ok > 0 && failed == 0, "{ok} {failed}");
}

/// One pod whose proxy cannot be read does not hide the others: their
/// rows, and a warning naming it; only when none can be read does `stat`
/// fail. The stand-in serves only the ports given, so the broken pod's
/// admin port (it has only 8080) proves `stat` asks for port 4191.
#[tokio::test(flavor = "multi_thread")]
async fn a_pod_that_cannot_be_read_is_a_warning_and_the_others_are_shown() {
    let mesh = Mesh::start(app("web").await).await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = keep_requesting(mesh.outbound(), stop.clone());
    let dir = tempfile::tempdir().unwrap();
    let objects = BTreeMap::from([(
        "/api/v1/namespaces/shop/pods".to_string(),
        vec![
            pod("client-5d9c7-aaaaa", "client"),
            pod("web-5d9c7-bbbbb", "web"),
            pod("broken-5d9c7-ccccc", "broken"),
        ],
    )]);
    let pods = BTreeMap::from([
        (
            "shop/client-5d9c7-aaaaa".to_string(),
            mesh.client.admin_addr,
        ),
        ("shop/web-5d9c7-bbbbb".to_string(), mesh.server.admin_addr),
        // Something answers on the pod's 8080, nothing on its 4191.
        (
            "shop/broken-5d9c7-ccccc:8080".to_string(),
            mesh.server.admin_addr,
        ),
    ]);
    let api = fake_api_server_with_pods(objects, pods, dir.path()).await;
    let kubeconfig = api.kubeconfig.to_str().unwrap();
    let stat = |target: &'static str| {
        let kubeconfig = kubeconfig.to_string();
        async move {
            outrigger(&[
                "--kubeconfig",
                &kubeconfig,
                "-n",
                "shop",
                "stat",
                target,
                "--window",
                "1s",
                "-o",
                "json",
            ])
            .await
        }
    };

    let out = stat("deploy").await;
    let err = String::from_utf8_lossy(&out.stderr);
    println!("{err}");
    assert!(out.status.success(), "{err}");
    assert_eq!(err.lines().count(), 1, "one warning: {err}");
    assert!(
        err.starts_with(
            "warning: no rows from pod shop/broken-5d9c7-ccccc: GET /metrics from pod \
             shop/broken-5d9c7-ccccc through the API server failed"
        ) && err.contains("dial tcp shop/broken-5d9c7-ccccc:4191: connect: connection refused"),
        "{err}"
    );
    let found = rows(&out);
    assert!(row(&found, "web", "inbound")["rps"].as_f64().unwrap() > 10.0);
    assert!(row(&found, "client", "outbound")["rps"].as_f64().unwrap() > 10.0);
    assert!(!found.iter().any(|r| r["name"] == "broken"), "{found:?}");
    // Asked once, at the admin port, and not retried (kube retries a 503
    // for minutes unless told not to).
    let asked: Vec<String> = api
        .seen()
        .into_iter()
        .map(|r| r.path)
        .filter(|p| p.contains("broken-5d9c7-ccccc"))
        .collect();
    assert_eq!(
        asked,
        ["/api/v1/namespaces/shop/pods/broken-5d9c7-ccccc:4191/proxy/metrics"]
    );

    // Only the broken one: nothing to show, and it fails.
    let out = stat("deploy/broken").await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    println!("{err}");
    assert!(
        err.contains("warning: no rows from pod shop/broken-5d9c7-ccccc")
            && err.contains(
                "Error: could not read any of the 1 proxies' /metrics (the warnings above say why)"
            ),
        "{err}"
    );

    stop.store(true, Ordering::SeqCst);
    tally(load).await;
}

/// An API server nothing listens on: one line naming the server and the
/// context, and what to do, from `stat` and `proxy-config` alike.
#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_cluster_is_named_with_the_next_step() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let kubeconfig = dir.path().join("kubeconfig");
    outrigger_tests::chart::write_kubeconfig(
        &kubeconfig,
        &format!("http://127.0.0.1:{port}"),
        "lab",
    );
    let kubeconfig = kubeconfig.to_str().unwrap();
    let want = format!(
        "Error: cannot reach the Kubernetes API server at http://127.0.0.1:{port}/ (context \
         lab): Connection refused (os error 111): check that `kubectl cluster-info` reaches it \
         with the same kubeconfig, or name another cluster with --context or --kubeconfig\n"
    );
    for args in [
        &["stat", "deploy", "--window", "1s"][..],
        &["proxy-config", "web-0"][..],
    ] {
        let out =
            outrigger(&[&["--kubeconfig", kubeconfig, "-n", "shop"][..], args].concat()).await;
        assert!(!out.status.success());
        assert_eq!(String::from_utf8_lossy(&out.stderr), want, "{args:?}");
        assert!(out.stdout.is_empty());
    }
    // A kubeconfig without a current context names that, and what to do.
    let none = dir.path().join("none");
    std::fs::write(
        &none,
        "apiVersion: v1\nkind: Config\nclusters: []\nusers: []\ncontexts: []\n",
    )
    .unwrap();
    let out = outrigger(&["--kubeconfig", none.to_str().unwrap(), "stat", "deploy"]).await;
    let err = String::from_utf8_lossy(&out.stderr);
    println!("{err}");
    assert!(!out.status.success());
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("current context") && err.contains("--context"),
        "{err}"
    );
}

/// `--from`: the same rows from a real Prometheus scraping both proxies.
/// CI sets OUTRIGGER_REQUIRE_PROMETHEUS=1, so there it is never skipped.
#[tokio::test(flavor = "multi_thread")]
async fn the_same_rows_from_prometheus() {
    let Some(prometheus) = PrometheusBin::find() else {
        return;
    };
    let mesh = Mesh::start(app("web").await).await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = keep_requesting(mesh.outbound(), stop.clone());

    let server = prometheus.start(&[mesh.client.admin_addr, mesh.server.admin_addr]);
    let url = format!("http://{}", server.addr);
    let args = [
        "-n", "shop", "stat", "deploy", "--from", &url, "--window", "5s", "-o", "json",
    ];
    let last = std::sync::Mutex::new(Vec::<Value>::new());
    let found = eventually(std::time::Duration::from_secs(60), || {
        let last = &last;
        async move {
            let out = outrigger(&args).await;
            let Ok(rows) = serde_json::from_slice::<Vec<Value>>(&out.stdout) else {
                return false;
            };
            *last.lock().unwrap() = rows.clone();
            rows.iter()
                .filter(|r| r["rps"].as_f64() > Some(1.0))
                .count()
                == 2
        }
    })
    .await;
    let both = last.into_inner().unwrap();
    assert!(found, "Prometheus never gave both rows: {both:?}");
    for (name, direction) in [("client", "outbound"), ("web", "inbound")] {
        let r = row(&both, name, direction);
        assert_eq!(r["success"], 1.0, "{r}");
        assert_eq!(r["mtls"], 0.0, "{r}");
        assert!(
            r["p99_ms"].as_f64().unwrap() >= r["p50_ms"].as_f64().unwrap(),
            "{r}"
        );
    }
    let table = outrigger(&args[..args.len() - 2]).await;
    println!("{}", String::from_utf8_lossy(&table.stdout));

    // One workload.
    let one = rows(
        &outrigger(&[
            "-n",
            "shop",
            "stat",
            "deploy/web",
            "--from",
            &url,
            "--window",
            "5s",
            "-o",
            "json",
        ])
        .await,
    );
    assert_eq!(one.len(), 1, "{one:?}");
    assert_eq!(one[0]["name"], "web");

    stop.store(true, Ordering::SeqCst);
    tally(load).await;
}

/// Over mutual TLS (identities from one mesh CA), the share is 100% on
/// both sides; `proxy-config identity` shows the SPIFFE ID.
#[tokio::test(flavor = "multi_thread")]
async fn the_mtls_share_and_the_identity_of_a_meshed_hop() {
    use outrigger_proxy::{Options, Proxy};
    let ca =
        outrigger_identity::Ca::generate("cluster.local", std::time::SystemTime::now()).unwrap();
    let with = |sa: &str| Options {
        identity: Some(held_identity(&ca, "shop", sa)),
        ..Options::default()
    };
    let mut snap = server_snapshot(app("web").await);
    snap.proxy.identity = Some("spiffe://cluster.local/ns/shop/sa/web".into());
    let server = Proxy::start(snap, with("web")).await.unwrap();
    let mut snap = client_snapshot(&[(server.listener_addr("inbound").unwrap(), true)]);
    snap.services[0].endpoints[0].identity = Some("spiffe://cluster.local/ns/shop/sa/web".into());
    snap.proxy.identity = Some("spiffe://cluster.local/ns/shop/sa/client".into());
    let client = Proxy::start(snap, with("client")).await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let load = keep_requesting(client.listener_addr("outbound").unwrap(), stop.clone());

    let (c, s) = (client.admin_addr.to_string(), server.admin_addr.to_string());
    let args = ["stat", "deploy", "--window", "1s", "--local", &c, &s];
    let table = outrigger(&args).await;
    println!("{}", String::from_utf8_lossy(&table.stdout));
    let found = rows(&outrigger(&[&args[..], &["-o", "json"]].concat()).await);
    for (name, direction) in [("client", "outbound"), ("web", "inbound")] {
        let r = row(&found, name, direction);
        assert_eq!(r["mtls"], 1.0, "{r}");
        assert_eq!(r["success"], 1.0, "{r}");
    }

    let identity = outrigger(&["proxy-config", "--local", &s, "identity"]).await;
    assert!(identity.status.success());
    let identity = String::from_utf8(identity.stdout).unwrap();
    println!("{identity}");
    // A certificate set in the test (not renewed at a control plane) has
    // no expiry gauge yet: "-" (cli_proxy_config.rs shows one renewed).
    assert_eq!(
        identity,
        "SPIFFE ID                              WORKLOAD  NAMESPACE  CERT EXPIRES\n\
         spiffe://cluster.local/ns/shop/sa/web  web       shop       -\n"
    );

    stop.store(true, Ordering::SeqCst);
    let (ok, failed) = tally(load).await;
    assert!(ok > 0 && failed == 0, "{ok} {failed}");
}
