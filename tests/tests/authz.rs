//! AuthorizationPolicies enforced by a real inbound proxy in front of a
//! real app: ALLOW, DENY, default-deny, principals (which plaintext peers
//! never have), and the port part on opaque TCP connections.

use http::Request;
use http_body_util::BodyExt;
use outrigger_api::inbound::Inbound;
use outrigger_api::Snapshot;
use outrigger_tests::*;

fn policies(json: serde_json::Value) -> impl FnOnce(&mut Snapshot) {
    move |s: &mut Snapshot| {
        s.inbound = serde_json::from_value::<Inbound>(serde_json::json!({ "authorization": json }))
            .unwrap();
        s.validate().unwrap();
    }
}

/// A request through the mesh: (status, the proxy's error header).
async fn call(mesh: &Mesh, method: &str, path: &str) -> (u16, String) {
    let mut c = http1(mesh.outbound()).await;
    let resp = c
        .send_request(
            Request::builder()
                .method(method)
                .uri(path)
                .header("host", "web.shop")
                .body(empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let why = resp
        .headers()
        .get("outrigger-proxy-error")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let _ = resp.into_body().collect().await;
    (status, why)
}

#[tokio::test]
async fn an_allow_policy_admits_its_operations_and_denies_the_rest() {
    let app = app("web").await;
    let mesh = Mesh::start_with(
        app,
        policies(serde_json::json!([{
            "name": "shop/read-only",
            "action": "ALLOW",
            "rules": [{ "to": [{ "operation": { "methods": ["GET"], "paths": ["/products*"] } }] }]
        }])),
        |_| {},
    )
    .await;
    assert_eq!(call(&mesh, "GET", "/products/1").await.0, 200);
    let (status, why) = call(&mesh, "DELETE", "/products/1").await;
    assert_eq!(status, 403);
    assert!(
        why.contains("no ALLOW AuthorizationPolicy matches"),
        "{why}"
    );
    assert_eq!(call(&mesh, "GET", "/admin").await.0, 403);
    let text = scrape(&mesh.server).await;
    assert_eq!(
        metric(
            &text,
            "outrigger_requests_total",
            &[("direction", "inbound"), ("response_flags", "RBAC")]
        ),
        2.0,
        "{text}"
    );
}

#[tokio::test]
async fn a_deny_policy_wins_over_an_allow_all() {
    let app = app("web").await;
    let mesh = Mesh::start_with(
        app,
        policies(serde_json::json!([
            { "name": "shop/all", "action": "ALLOW", "rules": [{}] },
            { "name": "shop/no-admin", "action": "DENY",
              "rules": [{ "to": [{ "operation": { "paths": ["/admin*"] } }] }] }
        ])),
        |_| {},
    )
    .await;
    assert_eq!(call(&mesh, "POST", "/orders").await.0, 200);
    let (status, why) = call(&mesh, "GET", "/admin/users").await;
    assert_eq!(status, 403);
    assert!(
        why.contains("denied by AuthorizationPolicy shop/no-admin"),
        "{why}"
    );
}

#[tokio::test]
async fn principal_rules_admit_no_plaintext_peer() {
    let app = app("web").await;
    let mesh = Mesh::start_with(
        app,
        policies(serde_json::json!([{
            "name": "shop/buyers",
            "rules": [{ "from": [{ "source": { "principals": ["cluster.local/ns/shop/sa/buyer"] } }] }]
        }])),
        |_| {},
    )
    .await;
    // Without mutual TLS the peer has no identity: default deny.
    assert_eq!(call(&mesh, "GET", "/").await.0, 403);
}

#[tokio::test]
async fn opaque_connections_answer_to_the_port_rules() {
    let app = app("web").await;
    let opaque = |allowed_port: u16| {
        let p = policies(serde_json::json!([{
            "name": "shop/port",
            "rules": [{ "to": [{ "operation": { "ports": [allowed_port.to_string()] } }] }]
        }]));
        move |s: &mut Snapshot| {
            s.listeners[0].opaque_ports = vec![app.port()];
            p(s)
        }
    };
    let allowed = Mesh::start_with(app, opaque(app.port()), |_| {}).await;
    let answer = raw_get(allowed.inbound()).await;
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );

    let denied = Mesh::start_with(app, opaque(app.port() + 1), |_| {}).await;
    assert!(
        raw_get(denied.inbound()).await.is_empty(),
        "closed without an answer"
    );
    let text = scrape(&denied.server).await;
    assert_eq!(
        metric(
            &text,
            "outrigger_tcp_denied_total",
            &[("direction", "inbound")]
        ),
        1.0,
        "{text}"
    );
}
