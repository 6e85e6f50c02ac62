//! `outrigger proxy-config`, the real binary against real proxies' admin
//! ports (`--local`). Build the binary first: `cargo build -p outrigger-cli`.

use std::process::Output;

use outrigger_tests::*;

async fn outrigger(args: &[&str]) -> Output {
    let bin =
        workspace_bin("outrigger").expect("the outrigger binary (cargo build -p outrigger-cli)");
    tokio::process::Command::new(bin)
        .args(args)
        .output()
        .await
        .expect("outrigger runs")
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "outrigger failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn shows_the_routes_endpoints_identity_and_policies_in_force() {
    let app = app("web").await;
    let mesh = Mesh::start_with(
        app,
        |s| {
            s.inbound = serde_json::from_value(serde_json::json!({
                "mtls": { "mode": "STRICT" },
                "authorization": [{ "name": "only-client", "action": "ALLOW", "rules": [
                    { "from": [{ "source": { "namespaces": ["shop"] } }] }
                ] }]
            }))
            .unwrap();
        },
        |_| {},
    )
    .await;
    let client = mesh.client.admin_addr.to_string();
    let server = mesh.server.admin_addr.to_string();
    let inbound = mesh.inbound().to_string();

    let routes = stdout(&outrigger(&["proxy-config", "--local", &client, "routes"]).await);
    println!("{routes}");
    assert_eq!(
        routes,
        "SERVICE   ROUTE  MATCH  DESTINATIONS         TIMEOUT  RETRIES\n\
         web.shop  -      *      web (its endpoints)  -        -\n"
    );

    let endpoints = stdout(&outrigger(&["proxy-config", "--local", &client, "endpoints"]).await);
    println!("{endpoints}");
    assert!(
        endpoints.contains(&format!(
            "web.shop  {inbound}  web-0     -       -        yes"
        )),
        "{endpoints}"
    );

    let identity = stdout(&outrigger(&["proxy-config", "--local", &client, "identity"]).await);
    println!("{identity}");
    assert!(
        identity.contains("none (plaintext)  client    shop       -"),
        "{identity}"
    );

    let policies = stdout(&outrigger(&["proxy-config", "--local", &server, "policies"]).await);
    println!("{policies}");
    assert_eq!(
        policies,
        "inbound mTLS: STRICT\n\
         AUTHORIZATION POLICY  ACTION  RULES\n\
         only-client           ALLOW   namespaces=shop\n"
    );

    let all = stdout(&outrigger(&["proxy-config", "--local", &client]).await);
    for section in ["# IDENTITY", "# POLICIES", "# ROUTES", "# ENDPOINTS"] {
        assert!(all.contains(section), "{all}");
    }

    // -o json is the snapshot in force, whole.
    let json = stdout(&outrigger(&["proxy-config", "--local", &client, "-o", "json"]).await);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["snapshot"]["proxy"]["workload"], "client");
    assert_eq!(v["snapshot"]["services"][0]["name"], "web");
    let yaml =
        stdout(&outrigger(&["proxy-config", "--local", &server, "policies", "-o", "yaml"]).await);
    assert!(yaml.contains("mode: STRICT"), "{yaml}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_address_names_it_and_the_next_step() {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let out = outrigger(&["proxy-config", "--local", &addr]).await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "cannot read the configuration of the proxy at {addr}"
        )) && err.contains(&format!(
            "cannot connect to the proxy's admin port at {addr}: Connection refused \
             (os error 111) (is it running there?)"
        )),
        "{err}"
    );
}

/// A pod as the API server lists it: running, with the proxy's container
/// (a native sidecar) or without.
fn pod(name: &str, meshed: bool) -> serde_json::Value {
    let mut spec = serde_json::json!({ "containers": [{ "name": "app" }] });
    if meshed {
        spec["initContainers"] =
            serde_json::json!([{ "name": "outrigger-proxy", "restartPolicy": "Always" }]);
    }
    serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": name, "namespace": "shop" },
        "spec": spec,
        "status": { "phase": "Running" },
    })
}

/// In the cluster: a port-forward through the API server to the pod's
/// admin port (the stand-in relays it to the real proxy). The stand-in
/// serves only the ports it is given, so a pod with a proxy on another
/// port than 4191 shows that the port-forward asks for 4191.
#[tokio::test(flavor = "multi_thread")]
async fn reads_a_pod_through_a_port_forward() {
    let mesh = Mesh::start(app("web").await).await;
    let dir = tempfile::tempdir().unwrap();
    let objects = std::collections::BTreeMap::from([(
        "/api/v1/namespaces/shop/pods".to_string(),
        vec![
            pod("client-5d9c7-aaaaa", true),
            pod("web-1", false),
            pod("odd-0", true),
        ],
    )]);
    let pods = std::collections::BTreeMap::from([
        (
            "shop/client-5d9c7-aaaaa".to_string(),
            mesh.client.admin_addr,
        ),
        // A proxy's admin port, but at the pod's 8080: not where it is asked.
        ("shop/odd-0:8080".to_string(), mesh.client.admin_addr),
    ]);
    let api = outrigger_tests::chart::fake_api_server_with_pods(objects, pods, dir.path()).await;
    let kubeconfig = api.kubeconfig.to_str().unwrap();
    let args = |more: &[&'static str]| {
        let mut v = vec!["--kubeconfig", kubeconfig, "-n", "shop", "proxy-config"];
        v.extend_from_slice(more);
        v
    };
    let all = stdout(&outrigger(&args(&["pod/client-5d9c7-aaaaa"])).await);
    println!("{all}");
    assert!(all.contains("none (plaintext)  client    shop"), "{all}");
    assert!(
        all.contains("web.shop  -      *      web (its endpoints)"),
        "{all}"
    );
    let json = stdout(&outrigger(&args(&["client-5d9c7-aaaaa", "routes", "-o", "json"])).await);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["services"][0]["name"], "web");
    assert!(api
        .seen()
        .iter()
        .any(|r| r.path == "/api/v1/namespaces/shop/pods/client-5d9c7-aaaaa/portforward"));

    let fails = |pod: &'static str| {
        let args = args(&[pod]);
        async move {
            let out = outrigger(&args).await;
            assert!(!out.status.success());
            let err = String::from_utf8_lossy(&out.stderr).into_owned();
            println!("{err}");
            assert_eq!(err.lines().count(), 1, "{err}");
            err
        }
    };
    // A pod the API server does not have: named, with the next step.
    let err = fails("gone-0").await;
    assert_eq!(
        err,
        "Error: no pod gone-0 in namespace shop: `kubectl get pods -n shop` lists them (or \
         name another namespace with -n)\n"
    );
    // A pod without the proxy says so before any port-forward is tried.
    let err = fails("web-1").await;
    assert_eq!(
        err,
        "Error: pod shop/web-1 has no outrigger-proxy container: is its namespace annotated \
         (kubectl annotate namespace shop outrigger.dev/inject=enabled), and was the pod \
         created after?\n"
    );
    assert!(!api
        .seen()
        .iter()
        .any(|r| r.path.contains("web-1/portforward")));
    // Nothing listens on the pod's 4191: the port-forward's refusal.
    let err = fails("odd-0").await;
    assert!(
        err.contains("cannot read the configuration of the proxy at pod shop/odd-0")
            && err.contains(
                "the port-forward to pod shop/odd-0:4191 failed: error forwarding port 4191 to pod \
                 shop/odd-0: failed to connect to localhost:4191 inside namespace: connection \
                 refused (is the pod's proxy running, and listening on its admin port 4191?)"
            ),
        "{err}"
    );
}

/// An endpoint outlier detection ejected is shown as such, with how long
/// it has left, and the other one's load; in JSON too.
#[tokio::test(flavor = "multi_thread")]
async fn shows_which_endpoint_is_ejected() {
    use std::sync::atomic::Ordering;
    let (bad, bad_hits) = counted_app("bad", |_, _| Answer::Status(500)).await;
    let (good, _) = counted_app("good", |_, _| Answer::Status(200)).await;
    let snapshot = web_snapshot(
        "1",
        &format!(
            "endpoints:
  - {{ address: \"{bad}\", workload: web-v1, labels: {{ version: v1 }} }}
  - {{ address: \"{good}\", workload: web-v2, labels: {{ version: v2 }} }}
trafficPolicy:
  loadBalancer: {{ simple: ROUND_ROBIN }}
  outlierDetection: {{ consecutive5xxErrors: 2, baseEjectionTime: 60s, maxEjectionPercent: 50 }}
http:
  - retries: {{ attempts: 0 }}
"
        ),
    );
    let proxy = outrigger_proxy::Proxy::start(snapshot, outrigger_proxy::Options::default())
        .await
        .unwrap();
    let outbound = proxy.listener_addr("outbound").unwrap();
    // Round robin: 4 requests give the bad endpoint its 2 errors.
    for _ in 0..4 {
        let _ = try_get(outbound, "/").await;
    }
    assert_eq!(bad_hits.load(Ordering::SeqCst), 2);
    let admin = proxy.admin_addr.to_string();
    let table = stdout(&outrigger(&["proxy-config", "--local", &admin, "endpoints"]).await);
    println!("{table}");
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(
        lines[0]
            .split("  ")
            .filter(|c| !c.is_empty())
            .map(str::trim)
            .collect::<Vec<_>>(),
        [
            "SERVICE",
            "ADDRESS",
            "WORKLOAD",
            "LABELS",
            "SUBSETS",
            "MESHED",
            "HEALTH",
            "EJECTED",
            "IN FLIGHT",
            "LATENCY"
        ]
    );
    let row = |addr: std::net::SocketAddr| {
        lines
            .iter()
            .find(|l| l.contains(&addr.to_string()))
            .unwrap_or_else(|| panic!("no {addr} in\n{table}"))
            .split("  ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .collect::<Vec<_>>()
    };
    let ejected = row(bad);
    assert_eq!(
        ejected[..7],
        [
            "web.shop",
            &bad.to_string(),
            "web-v1",
            "version=v1",
            "-",
            "no",
            "EJECTED"
        ]
    );
    assert!(
        ["60s", "59s", "58s"]
            .iter()
            .any(|s| ejected[7] == format!("{s} left (1× so far)")),
        "{ejected:?}"
    );
    assert_eq!(ejected[8], "0");
    let healthy = row(good);
    assert_eq!(healthy[6..8], ["HEALTHY", "no"]);
    assert!(healthy[9].ends_with("ms"), "{healthy:?}");

    let json =
        stdout(&outrigger(&["proxy-config", "--local", &admin, "endpoints", "-o", "json"]).await);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let eps = &v["services"][0]["endpoints"];
    assert_eq!(eps[0]["address"], bad.to_string());
    assert_eq!(eps[0]["health"]["state"], "ejected");
    assert_eq!(eps[0]["health"]["ejections"], 1);
    assert_eq!(eps[1]["health"]["state"], "healthy");
    assert_eq!(v["services"][0]["outlier_detection"], true);
}

/// A proxy following a real control plane (folder mode, with the mesh CA):
/// the routes of a VirtualService, the subsets of a DestinationRule, the
/// identity of the pod's ServiceAccount and its certificate's expiry.
#[tokio::test(flavor = "multi_thread")]
async fn shows_what_a_control_plane_configured() {
    use std::sync::Arc;
    use std::time::Duration;

    use outrigger_tests::control_plane::{certifier, follow, waiting_proxy, ControlPlane, Dir};

    let dir = Dir::new("cli-proxy-config");
    dir.write(
        "mesh.yaml",
        r#"
apiVersion: v1
kind: Service
metadata: { name: web, namespace: shop }
spec: { clusterIP: 10.96.0.10, ports: [{ name: http, port: 80 }] }
---
apiVersion: v1
kind: Endpoints
metadata: { name: web, namespace: shop }
subsets:
  - addresses: [{ ip: 10.0.0.7, targetRef: { kind: Pod, name: web-blue } }]
    ports: [{ name: http, port: 8080 }]
  - addresses: [{ ip: 10.0.0.8, targetRef: { kind: Pod, name: web-green } }]
    ports: [{ name: http, port: 8080 }]
---
apiVersion: v1
kind: Pod
metadata: { name: web-blue, namespace: shop, labels: { app: web, version: blue } }
spec: { containers: [{ name: web, image: web }] }
---
apiVersion: v1
kind: Pod
metadata: { name: web-green, namespace: shop, labels: { app: web, version: green } }
spec: { containers: [{ name: web, image: web }] }
---
apiVersion: v1
kind: Pod
metadata: { name: client-1, namespace: shop, labels: { app: client } }
spec: { serviceAccountName: client, containers: [{ name: client, image: client }] }
---
apiVersion: outrigger.dev/v1alpha1
kind: DestinationRule
metadata: { name: web, namespace: shop }
spec:
  host: web
  subsets: [{ name: blue, labels: { version: blue } }, { name: green, labels: { version: green } }]
---
apiVersion: outrigger.dev/v1alpha1
kind: VirtualService
metadata: { name: web, namespace: shop }
spec:
  hosts: [web]
  http:
    - name: canary-header
      match: [{ headers: { x-canary: { exact: "1" } } }]
      route: [{ destination: { host: web, subset: green } }]
    - route:
        - { destination: { host: web, subset: blue }, weight: 90 }
        - { destination: { host: web, subset: green }, weight: 10 }
      timeout: 3s
      retries: { attempts: 2, perTryTimeout: 1s, retryOn: 5xx }
"#,
    );
    let tokens = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tokens.path().join("shop")).unwrap();
    std::fs::write(tokens.path().join("shop/client"), "token-client").unwrap();
    let ca = Arc::new(
        outrigger_identity::Ca::generate("cluster.local", std::time::SystemTime::now()).unwrap(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let cp = ControlPlane::start_with(
        dir.path(),
        listener,
        Some(certifier(
            ca.clone(),
            Duration::from_secs(3600),
            tokens.path(),
        )),
    )
    .await;
    let identity = workload_identity(
        "shop",
        "client",
        tokens.path().join("shop/client"),
        ca.roots(),
    );
    let boot = web_snapshot("bootstrap", "");
    let proxy = waiting_proxy(boot.clone(), Some(identity.clone())).await;
    follow(&proxy, cp.addr, boot, "shop", "client-1", Some(identity));
    assert!(
        eventually(Duration::from_secs(10), || ready(&proxy)).await,
        "never ready"
    );
    let admin = proxy.admin_addr.to_string();
    let expiry_set = || async {
        metric(
            &scrape(&proxy).await,
            "outrigger_identity_cert_expiry_timestamp_seconds",
            &[],
        ) > 0.0
    };
    assert!(eventually(Duration::from_secs(10), expiry_set).await);

    let all = stdout(&outrigger(&["proxy-config", "--local", &admin]).await);
    println!("{all}");
    for line in [
        "spiffe://cluster.local/ns/shop/sa/client  client-1  shop       20",
        "inbound mTLS: PERMISSIVE\n",
        "web.shop  canary-header  x-canary=1  web.shop/green                         -        -\n",
        "web.shop  route-1        *           web.shop/blue 90%, web.shop/green 10%  3s       2 attempts, 1s each, on 5xx\n",
        "web.shop  10.0.0.7:8080  web-blue   app=web,version=blue   blue     no      HEALTHY  -        0          -\n",
    ] {
        assert!(all.contains(line), "{line:?} not in\n{all}");
    }
    // An hour-long certificate: expires in 59 minutes and some seconds.
    assert!(
        all.contains("Z (in 59m)") || all.contains("Z (in 1h 0m)"),
        "{all}"
    );
    cp.stop().await;
}
