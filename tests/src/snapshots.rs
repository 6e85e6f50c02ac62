//! Proxy snapshots the tests start from: the server side in front of an
//! app ([`server_snapshot`]), the client side bound to `web.shop:80`
//! ([`client_snapshot`]), and the client side with the service `web`
//! described by the test ([`web_snapshot`]). Each binds port 0 on loopback.

use std::net::SocketAddr;

use outrigger_api::Snapshot;

/// What every snapshot here starts with: its version, the proxy's
/// workload in `shop`, an admin port, and short drain and detect limits,
/// with `more_limits` (`, name: value` pairs) after them.
fn head(version: &str, workload: &str, more_limits: &str) -> String {
    format!(
        r#"
version: "{version}"
proxy: {{ workload: {workload}, namespace: shop }}
admin: {{ bind: "127.0.0.1:0" }}
limits: {{ drain_timeout: 5s, detect_timeout: 300ms{more_limits} }}
"#
    )
}

/// The server-side proxy's snapshot: inbound on a free port, forwarding to
/// `app`, which is the endpoint of its workload `web` in the service
/// `web.shop` (as the control plane describes a pod's own service).
pub fn server_snapshot(app: SocketAddr) -> Snapshot {
    Snapshot::from_yaml(&format!(
        r#"{}listeners:
  - {{ name: inbound, direction: inbound, bind: "127.0.0.1:0", app: "{app}" }}
services:
  - name: web
    namespace: shop
    ports: [80]
    endpoints: [{{ address: "{app}", workload: web, meshed: true }}]
"#,
        head("test-server", "web", "")
    ))
    .unwrap()
}

/// The client-side proxy's snapshot: outbound on a free port, bound to the
/// service `web.shop:80` whose endpoints are `endpoints` (meshed or not).
pub fn client_snapshot(endpoints: &[(SocketAddr, bool)]) -> Snapshot {
    let eps: Vec<String> = endpoints
        .iter()
        .enumerate()
        .map(|(i, (a, meshed))| {
            format!("  - {{ address: \"{a}\", meshed: {meshed}, workload: web-{i} }}")
        })
        .collect();
    to_web(
        "test-client",
        "",
        &format!("endpoints:\n{}", eps.join("\n")),
    )
}

/// A client proxy whose outbound listener targets `web.shop:80`, with the
/// service `web` described by `web_yaml` (endpoints, subsets, routes,
/// trafficPolicy: YAML indented under the service).
pub fn web_snapshot(version: &str, web_yaml: &str) -> Snapshot {
    to_web(version, ", connect_timeout: 500ms", web_yaml)
}

/// The client side: an outbound listener bound to `web.shop:80`, and the
/// service `web` described by `web_yaml` (indented under it here).
fn to_web(version: &str, more_limits: &str, web_yaml: &str) -> Snapshot {
    let indented: String = web_yaml.lines().map(|l| format!("    {l}\n")).collect();
    Snapshot::from_yaml(&format!(
        r#"{}listeners:
  - {{ name: outbound, direction: outbound, bind: "127.0.0.1:0", target: {{ name: web, namespace: shop, port: 80 }} }}
services:
  - name: web
    namespace: shop
    ports: [80]
{indented}"#,
        head(version, "client", more_limits)
    ))
    .unwrap()
}
