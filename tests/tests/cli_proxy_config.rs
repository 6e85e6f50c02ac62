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
        "SERVICE   MATCH  DESTINATIONS         TIMEOUT  RETRIES\n\
         web.shop  *      web (its endpoints)  -        -\n"
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
        )) && err.contains("is the proxy running there?"),
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
        all.contains("web.shop  *      web (its endpoints)"),
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
    assert!(
        err.contains("cannot port-forward to pod shop/gone-0:4191")
            && err.contains("may you create pods/portforward there?"),
        "{err}"
    );
}
