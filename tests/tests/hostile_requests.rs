//! Requests shaped to slip past policy, through two real proxies to a real
//! app that records what reaches it: unnormalized paths against DENY and
//! ALLOW rules, and upgrades that would open a tunnel no rule looks into.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use outrigger_api::inbound::Inbound;
use outrigger_api::{PathNormalization, Snapshot};
use outrigger_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const LIMIT: Duration = Duration::from_secs(10);

/// What reached the app: each request's target and `Upgrade` header.
type Seen = Arc<Mutex<Vec<(String, Option<String>)>>>;

/// An app that records every request; it answers 101 to a WebSocket
/// upgrade on `/ws-accept` (then echoes), and 200 with `ok` to the rest.
async fn recording_app() -> (SocketAddr, Seen) {
    let seen: Seen = Arc::default();
    let log = seen.clone();
    let addr = serve_http(move |mut req: Request<Incoming>| {
        let log = log.clone();
        async move {
            let upgrade = req
                .headers()
                .get("upgrade")
                .map(|v| v.to_str().unwrap().to_string());
            log.lock()
                .unwrap()
                .push((req.uri().to_string(), upgrade.clone()));
            if req.uri().path() == "/ws-accept" && upgrade.as_deref() == Some("websocket") {
                let on = hyper::upgrade::on(&mut req);
                tokio::spawn(async move {
                    if let Ok(up) = on.await {
                        let mut io = TokioIo::new(up);
                        let mut buf = [0u8; 64];
                        while let Ok(n) = io.read(&mut buf).await {
                            if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                });
                return Response::builder()
                    .status(StatusCode::SWITCHING_PROTOCOLS)
                    .header("connection", "upgrade")
                    .header("upgrade", "websocket")
                    .body(empty())
                    .unwrap();
            }
            Response::new(full("ok"))
        }
    })
    .await;
    (addr, seen)
}

fn with_policies(json: serde_json::Value) -> impl FnOnce(&mut Snapshot) {
    move |s: &mut Snapshot| {
        s.inbound = serde_json::from_value::<Inbound>(serde_json::json!({ "authorization": json }))
            .unwrap();
        s.validate().unwrap();
    }
}

fn deny_admin() -> serde_json::Value {
    serde_json::json!([{
        "name": "shop/no-admin",
        "action": "DENY",
        "rules": [{ "to": [{ "operation": { "paths": ["/admin*"] } }] }]
    }])
}

/// One response read off a raw connection: status, head, body (by
/// `content-length`, or to the end when the head has none).
async fn read_response(s: &mut TcpStream) -> (u16, String, Vec<u8>) {
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 1024];
        let n = tokio::time::timeout(LIMIT, s.read(&mut chunk))
            .await
            .expect("a response in time")
            .unwrap();
        assert!(n > 0, "closed before a response head: {buf:?}");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let status = head[9..12].parse().unwrap();
    let length = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse::<usize>().unwrap())
    });
    let mut body = buf[head_end..].to_vec();
    match length {
        Some(n) => {
            while body.len() < n {
                let mut chunk = [0u8; 1024];
                let r = tokio::time::timeout(LIMIT, s.read(&mut chunk))
                    .await
                    .unwrap()
                    .unwrap();
                assert!(r > 0, "closed inside a body");
                body.extend_from_slice(&chunk[..r]);
            }
        }
        None if status != 101 => {
            let _ = tokio::time::timeout(LIMIT, s.read_to_end(&mut body)).await;
        }
        None => {}
    }
    (status, head, body)
}

/// Sends `GET target` as raw bytes (no client library to tidy the path)
/// and returns the status and the response head.
async fn raw_get_path(addr: SocketAddr, target: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("GET {target} HTTP/1.1\r\nhost: web.shop\r\nconnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let (status, head, _) = read_response(&mut s).await;
    (status, head)
}

fn paths_seen(seen: &Seen) -> Vec<String> {
    seen.lock()
        .unwrap()
        .iter()
        .map(|(p, _)| p.clone())
        .collect()
}

const BYPASS_FORMS: [&str; 9] = [
    "//admin/x",
    "/%61dmin/x",
    "/%61%64%6d%69%6E/x",
    "/./admin/x",
    "/x/../admin/x",
    "/%2e/admin/x",
    "/x/%2E%2e/admin/x",
    "/admin/",
    "///admin",
];

#[tokio::test]
async fn unnormalized_paths_do_not_slip_past_a_deny_rule() {
    let (app, seen) = recording_app().await;
    let mesh = Mesh::start_with(app, with_policies(deny_admin()), |_| {}).await;
    // Through both proxies, and straight at the inbound one (a plaintext
    // peer on a PERMISSIVE port): each normalizes on its own.
    for addr in [mesh.outbound(), mesh.inbound()] {
        for form in BYPASS_FORMS {
            let (status, head) = raw_get_path(addr, form).await;
            assert_eq!(status, 403, "{form} via {addr}: {head}");
        }
    }
    assert!(
        paths_seen(&seen).is_empty(),
        "reached the app: {:?}",
        paths_seen(&seen)
    );
    // A path that only looks close is served, normalized.
    let (status, _) = raw_get_path(mesh.outbound(), "/administrators/../public//x").await;
    assert_eq!(status, 200);
    assert_eq!(paths_seen(&seen), ["/public/x"]);
}

#[tokio::test]
async fn an_allow_rule_is_matched_on_the_normalized_path_which_the_app_gets() {
    let (app, seen) = recording_app().await;
    let allow_public = serde_json::json!([{
        "name": "shop/public-only",
        "action": "ALLOW",
        "rules": [{ "to": [{ "operation": { "paths": ["/public/*"] } }] }]
    }]);
    let mesh = Mesh::start_with(app, with_policies(allow_public), |_| {}).await;
    for form in [
        "/public/../admin",
        "/public/%2e%2e/admin",
        "/public/./../admin",
    ] {
        assert_eq!(raw_get_path(mesh.inbound(), form).await.0, 403, "{form}");
    }
    assert_eq!(
        raw_get_path(mesh.inbound(), "/public//a/./b?q=/../x")
            .await
            .0,
        200
    );
    assert_eq!(
        raw_get_path(mesh.inbound(), "/%70ublic/c").await.0,
        200,
        "an encoded unreserved character is the character"
    );
    assert_eq!(paths_seen(&seen), ["/public/a/b?q=/../x", "/public/c"]);
}

#[tokio::test]
async fn encoded_slashes_are_decoded_only_when_the_mesh_says_so() {
    let forms = ["/%2Fadmin/x", "/%5cadmin/x", "/x%2F..%2Fadmin"];
    // MERGE_SLASHES (the default) keeps them encoded: the rule on `/admin*`
    // does not match, and the app gets the escapes, in upper case.
    let (app, seen) = recording_app().await;
    let mesh = Mesh::start_with(app, with_policies(deny_admin()), |_| {}).await;
    for form in forms {
        assert_eq!(raw_get_path(mesh.inbound(), form).await.0, 200, "{form}");
    }
    assert_eq!(
        paths_seen(&seen),
        ["/%2Fadmin/x", "/%5Cadmin/x", "/x%2F..%2Fadmin"]
    );
    // DECODE_AND_MERGE_SLASHES decodes them first: all denied.
    let (app, seen) = recording_app().await;
    let decode = |s: &mut Snapshot| {
        s.http.path_normalization = PathNormalization::DecodeAndMergeSlashes;
        with_policies(deny_admin())(s)
    };
    let mesh = Mesh::start_with(app, decode, |_| {}).await;
    for form in forms {
        assert_eq!(raw_get_path(mesh.inbound(), form).await.0, 403, "{form}");
    }
    assert!(paths_seen(&seen).is_empty());
}

#[tokio::test]
async fn an_encoded_nul_is_refused_and_counted() {
    let (app, seen) = recording_app().await;
    let mesh = Mesh::start(app).await;
    let (status, head) = raw_get_path(mesh.outbound(), "/a%00b").await;
    assert_eq!(status, 400, "{head}");
    assert!(head.contains("outrigger-response-flags: DPE"), "{head}");
    assert!(paths_seen(&seen).is_empty());
    let text = scrape(&mesh.client).await;
    assert_eq!(
        metric(
            &text,
            "outrigger_requests_total",
            &[("response_code", "400"), ("response_flags", "DPE")]
        ),
        1.0,
        "{text}"
    );
}

/// A WebSocket upgrade through `addr` to the app's `/ws-accept`, which
/// switches (101), then one frame sent; returns the stream and the four
/// bytes that came back.
async fn switched_and_echoed(addr: SocketAddr) -> (TcpStream, [u8; 4]) {
    let (mut s, status, head) = upgrade_request(addr, "/ws-accept", "websocket").await;
    assert_eq!(status, 101, "{head}");
    s.write_all(b"\x81\x02hi").await.unwrap();
    let mut back = [0u8; 4];
    tokio::time::timeout(LIMIT, s.read_exact(&mut back))
        .await
        .unwrap()
        .unwrap();
    (s, back)
}

async fn upgrade_request(addr: SocketAddr, path: &str, protocol: &str) -> (TcpStream, u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!(
            "GET {path} HTTP/1.1\r\nhost: web.shop\r\nconnection: Upgrade, HTTP2-Settings\r\n\
             upgrade: {protocol}\r\nhttp2-settings: AAMAAABkAAQAAP__\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let (status, head, _) = read_response(&mut s).await;
    (s, status, head)
}

#[tokio::test]
async fn an_upgrade_not_allowed_is_refused_and_opens_nothing() {
    let (app, seen) = recording_app().await;
    let mesh = Mesh::start_with(app, with_policies(deny_admin()), |_| {}).await;
    for addr in [mesh.outbound(), mesh.inbound()] {
        let (mut s, status, head) = upgrade_request(addr, "/ok", "anything-goes").await;
        assert_eq!(status, 403, "{head}");
        assert!(head.contains("anything-goes"), "{head}");
        // Nothing became a tunnel: what follows is HTTP, and authorized.
        s.write_all(b"GET /admin/secret HTTP/1.1\r\nhost: web.shop\r\n\r\n")
            .await
            .unwrap();
        let (status, ..) = read_response(&mut s).await;
        assert_eq!(status, 403);
    }
    assert!(paths_seen(&seen).is_empty(), "{:?}", paths_seen(&seen));
    // CONNECT is an upgrade too, allowed only when listed.
    let mut s = TcpStream::connect(mesh.inbound()).await.unwrap();
    s.write_all(b"CONNECT db.shop:5432 HTTP/1.1\r\nhost: db.shop:5432\r\n\r\n")
        .await
        .unwrap();
    let (status, head, _) = read_response(&mut s).await;
    assert_eq!(status, 403, "{head}");
}

#[tokio::test]
async fn an_h2c_upgrade_is_served_as_a_plain_request() {
    let (app, seen) = recording_app().await;
    let mesh = Mesh::start(app).await;
    let (_, status, head) = upgrade_request(mesh.outbound(), "/plain", "h2c").await;
    assert_eq!(status, 200, "{head}");
    assert_eq!(
        seen.lock().unwrap().as_slice(),
        [("/plain".to_string(), None)],
        "the app got no Upgrade header"
    );
}

#[tokio::test]
async fn a_websocket_tunnel_opens_only_after_the_app_switches() {
    let (app, seen) = recording_app().await;
    let mesh = Mesh::start_with(app, with_policies(deny_admin()), |_| {}).await;
    // The app declines (200): the connection stays HTTP, and the next
    // request on it answers to the DENY rule.
    let (mut s, status, head) = upgrade_request(mesh.outbound(), "/ws-decline", "websocket").await;
    assert_eq!(status, 200, "{head}");
    s.write_all(b"GET /admin/secret HTTP/1.1\r\nhost: web.shop\r\n\r\n")
        .await
        .unwrap();
    let (status, ..) = read_response(&mut s).await;
    assert_eq!(status, 403);
    assert_eq!(paths_seen(&seen), ["/ws-decline"]);

    // The upgrade request itself is authorized.
    let (_, status, _) = upgrade_request(mesh.outbound(), "/admin/ws", "websocket").await;
    assert_eq!(status, 403);

    // The app switches: bytes pass both ways.
    let (_, back) = switched_and_echoed(mesh.outbound()).await;
    assert_eq!(&back, b"\x81\x02hi");
    assert_eq!(paths_seen(&seen), ["/ws-decline", "/ws-accept"]);
}

#[tokio::test]
async fn an_idle_websocket_tunnel_is_closed_after_the_tcp_idle_timeout() {
    let (app, _) = recording_app().await;
    let idle = |s: &mut Snapshot| s.limits.tcp_idle_timeout = outrigger_api::Duration::from_secs(1);
    let mesh = Mesh::start_with(app, idle, idle).await;
    let (mut s, _) = switched_and_echoed(mesh.outbound()).await;
    let quiet = tokio::time::Instant::now();
    let mut rest = Vec::new();
    tokio::time::timeout(LIMIT, s.read_to_end(&mut rest))
        .await
        .expect("closed once idle")
        .unwrap();
    assert!(rest.is_empty());
    assert!(quiet.elapsed() >= Duration::from_millis(900));
}

/// A seeded sample of the hostile path forms of `outrigger-fuzz` (its
/// property test sends many more through the pure pair) through a real
/// proxy: each is answered as the pure pair decides, and what the app gets
/// is never the denied path as the app reads it.
#[tokio::test]
async fn generated_path_forms_through_a_real_proxy_agree_with_the_pure_pair() {
    use outrigger_api::authz::AuthorizationAction::Deny;
    use outrigger_fuzz::hostile_paths::{app_view, compose, generate, policy, Choices, Outcome};
    use outrigger_proxy_policy::authz::Decision;
    use rand::{Rng, SeedableRng};

    const DENIED: &str = "/admin/users";
    let mode = PathNormalization::MergeSlashes;
    let (app, seen) = recording_app().await;
    let edit = move |s: &mut Snapshot| {
        s.http.path_normalization = mode;
        with_policies(serde_json::json!([{
            "name": "shop/no-users",
            "action": "DENY",
            "rules": [{ "to": [{ "operation": { "paths": [DENIED] } }] }]
        }]))(s)
    };
    let mesh = Mesh::start_with(app, edit, |_| {}).await;
    let mut rng = rand::rngs::SmallRng::seed_from_u64(19);
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    for _ in 0..200 {
        let choices: Vec<u8> = (0..64).map(|_| rng.random()).collect();
        let form = generate(DENIED, &mut Choices(&choices));
        let before = paths_seen(&seen).len();
        let (status, head) = raw_get_path(mesh.inbound(), &form).await;
        *statuses.entry(status).or_default() += 1;
        let reached: Vec<String> = paths_seen(&seen)[before..].to_vec();
        match compose(&form, mode, &policy(Deny, DENIED)) {
            Outcome::Forwarded {
                path,
                decision: Decision::Allow,
            } if status == 200 => {
                let got: Vec<&str> = reached
                    .iter()
                    .map(|p| p.split('?').next().unwrap())
                    .collect();
                assert_eq!(got, [path.as_str()], "{form}");
            }
            // hyper may refuse a target the URI parser takes (`#`).
            Outcome::Forwarded {
                decision: Decision::Allow,
                ..
            } => assert_eq!(status, 400, "{form}: {head}"),
            Outcome::Forwarded { .. } => assert_eq!(status, 403, "{form}: {head}"),
            Outcome::Refused | Outcome::Unparsable => assert_eq!(status, 400, "{form}: {head}"),
        }
        if status != 200 {
            assert!(reached.is_empty(), "{form} reached the app: {reached:?}");
        }
    }
    for p in paths_seen(&seen) {
        let path = p.split('?').next().unwrap();
        assert_ne!(app_view(path, mode), DENIED, "reached the app: {p}");
    }
    // Not vacuous: some forms were denied, some served.
    assert!(statuses.get(&403).is_some_and(|n| *n >= 5), "{statuses:?}");
    assert!(statuses.get(&200).is_some_and(|n| *n >= 5), "{statuses:?}");
}
