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

/// In the cluster: a port-forward through the API server to the pod's
/// admin port (the stand-in relays it to the real proxy).
#[tokio::test(flavor = "multi_thread")]
async fn reads_a_pod_through_a_port_forward() {
    let mesh = Mesh::start(app("web").await).await;
    let dir = tempfile::tempdir().unwrap();
    let pods = std::collections::BTreeMap::from([(
        "shop/client-5d9c7-aaaaa".to_string(),
        mesh.client.admin_addr,
    )]);
    let api =
        outrigger_tests::chart::fake_api_server_with_pods(Default::default(), pods, dir.path())
            .await;
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

    // A pod the API server cannot forward to: named, with the next step.
    let out = outrigger(&args(&["gone-0"])).await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    println!("{err}");
    assert!(
        err.contains("cannot port-forward to pod shop/gone-0:4191")
            && err.contains("may you create pods/portforward there?"),
        "{err}"
    );
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
        "web.shop  10.0.0.7:8080  web-blue   app=web,version=blue   blue     no\n",
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
