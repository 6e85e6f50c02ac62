//! Proxy snapshots the tests start from: the server side in front of an
//! app ([`server_snapshot`]), the client side bound to `web.shop:80`
//! ([`client_snapshot`]), and the client side with the service `web`
//! described by the test ([`web_snapshot`]). Each binds port 0 on loopback.

use std::net::SocketAddr;

use outrigger_api::Snapshot;

/// The server-side proxy's snapshot: inbound on a free port, forwarding to `app`.
pub fn server_snapshot(app: SocketAddr) -> Snapshot {
    Snapshot::from_yaml(&format!(
        r#"
version: "test-server"
proxy: {{ workload: web, namespace: shop }}
admin: {{ bind: "127.0.0.1:0" }}
limits: {{ drain_timeout: 5s, detect_timeout: 300ms }}
listeners:
  - {{ name: inbound, direction: inbound, bind: "127.0.0.1:0", app: "{app}" }}
"#
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
            format!("      - {{ address: \"{a}\", meshed: {meshed}, workload: web-{i} }}")
        })
        .collect();
    Snapshot::from_yaml(&format!(
        r#"
version: "test-client"
proxy: {{ workload: client, namespace: shop }}
admin: {{ bind: "127.0.0.1:0" }}
limits: {{ drain_timeout: 5s, detect_timeout: 300ms }}
listeners:
  - {{ name: outbound, direction: outbound, bind: "127.0.0.1:0", target: {{ name: web, namespace: shop, port: 80 }} }}
services:
  - name: web
    namespace: shop
    ports: [80]
    endpoints:
{}
"#,
        eps.join("\n")
    ))
    .unwrap()
}

/// A client proxy whose outbound listener targets `web.shop:80`, with the
/// service `web` described by `web_yaml` (endpoints, subsets, routes,
/// trafficPolicy: YAML indented under the service).
pub fn web_snapshot(version: &str, web_yaml: &str) -> Snapshot {
    let indented: String = web_yaml.lines().map(|l| format!("    {l}\n")).collect();
    Snapshot::from_yaml(&format!(
        r#"
version: "{version}"
proxy: {{ workload: client, namespace: shop }}
admin: {{ bind: "127.0.0.1:0" }}
limits: {{ drain_timeout: 5s, detect_timeout: 300ms, connect_timeout: 500ms }}
listeners:
  - {{ name: outbound, direction: outbound, bind: "127.0.0.1:0", target: {{ name: web, namespace: shop, port: 80 }} }}
services:
  - name: web
    namespace: shop
    ports: [80]
{indented}"#
    ))
    .unwrap()
}
