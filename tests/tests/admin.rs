//! The admin port as a peer outside the pod sees it: a real proxy whose
//! admin listener is bound on every address, asked from this machine's
//! own non-loopback address and from loopback.

use std::net::{IpAddr, SocketAddr};

use http_body_util::BodyExt;
use outrigger_tests::*;

/// This machine's address on its default route (no packet is sent: a UDP
/// socket's connect only picks the source address); `None` when it has
/// no route off loopback.
fn own_address(v6: bool) -> Option<IpAddr> {
    let (bind, far) = if v6 {
        ("[::]:0", "[2001:db8::1]:9")
    } else {
        ("0.0.0.0:0", "203.0.113.1:9")
    };
    let s = std::net::UdpSocket::bind(bind).ok()?;
    s.connect(far).ok()?;
    let ip = s.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

async fn ask(method: &str, addr: SocketAddr, path: &str) -> (u16, String) {
    let mut c = http1(addr).await;
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "admin")
        .body(empty())
        .unwrap();
    let resp = c.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// A proxy whose admin listener is bound on `bind` (port 0).
async fn proxy_with_admin_on(bind: &str) -> outrigger_proxy::Proxy {
    let mut s = server_snapshot(app("web").await);
    s.admin.bind = bind.into();
    outrigger_proxy::Proxy::start(s, outrigger_proxy::Options::default())
        .await
        .unwrap()
}

#[tokio::test]
async fn config_and_shutdown_answer_loopback_only_and_the_rest_the_pod_ip() {
    for (bind, v6) in [("0.0.0.0:0", false), ("[::]:0", true), ("[::]:0", false)] {
        let Some(own) = own_address(v6) else {
            // The decision itself is unit-tested in proxy/src/admin.rs.
            eprintln!(
                "no non-loopback IPv{} address here; skipping {bind} with it",
                if v6 { 6 } else { 4 }
            );
            continue;
        };
        let proxy = proxy_with_admin_on(bind).await;
        let port = proxy.admin_addr.port();
        let outside = SocketAddr::new(own, port);
        // The pod's IP: what kubelet and Prometheus use answers.
        for path in ["/metrics", "/ready", "/live"] {
            assert_eq!(ask("GET", outside, path).await.0, 200, "{bind} {path}");
        }
        // The snapshot and the drain do not.
        for (method, path) in [("GET", "/config"), ("POST", "/shutdown")] {
            let (status, body) = ask(method, outside, path).await;
            assert_eq!(status, 403, "{bind} {method} {path}: {body}");
            assert!(
                body.starts_with(&format!("{path} answers loopback peers only")),
                "{body}"
            );
            assert!(body.contains(&own.to_string()), "the peer is named: {body}");
        }
        // From inside the pod (kubectl port-forward connects there), the
        // snapshot answers; on a dual-stack listener an IPv4 loopback peer
        // arrives as ::ffff:127.0.0.1 and counts as loopback.
        let inside = SocketAddr::new(
            if bind.starts_with('[') && v6 {
                "::1".parse().unwrap()
            } else {
                "127.0.0.1".parse().unwrap()
            },
            port,
        );
        let (status, body) = ask("GET", inside, "/config").await;
        assert_eq!(status, 200, "{bind} from {inside}: {body}");
        assert!(body.contains("\"version\""), "{body}");
        assert_eq!(ask("GET", inside, "/ready").await.0, 200);
        // The proxy is still serving: the refused shutdown did nothing.
        assert_eq!(ask("POST", inside, "/shutdown").await.0, 200);
    }
}
