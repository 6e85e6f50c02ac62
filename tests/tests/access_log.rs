//! Access logs from real proxies, every field asserted in both formats for
//! an HTTP/1.1 request, an HTTP/2 request and a gRPC call across the
//! mutual-TLS hop (`client → outbound proxy → inbound proxy → app`), and
//! for a local reply (503 `UH`).
//!
//! The proxies run in process with `Options::access_log_sink` set to a
//! buffer: the mesh pieces these need (identities from one CA for the
//! peer's SPIFFE ID, endpoints without a pod) are the harness's in-process
//! ones, and a line can be awaited without parsing a child's output
//! stream. The buffer is written by the same writer thread as stdout. One
//! test runs the real `outrigger-proxy` binary and reads its stdout, for
//! the flag, its environment variable and stdout itself.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use http::Request;
use http_body_util::BodyExt;
use outrigger_identity::Ca;
use outrigger_proxy::access_log::{rfc3339_millis, Format, Sink};
use outrigger_proxy::{Options, Proxy};
use outrigger_tests::identity::TRUST_DOMAIN;
use outrigger_tests::*;
use serde_json::{json, Value};

const LIMIT: Duration = Duration::from_secs(10);
const WEB: &str = "spiffe://cluster.local/ns/shop/sa/web";
const CLIENT: &str = "spiffe://cluster.local/ns/shop/sa/client";
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
/// A user agent with quotes and a backslash: escaped on the way out.
const AGENT: &str = r#"access "test" \ 1.0"#;

type Buffer = Arc<Mutex<Vec<u8>>>;

fn logging(format: Format) -> (Options, Buffer) {
    let buf = Buffer::default();
    let opts = Options {
        access_log: format,
        access_log_sink: Sink::Buffer(buf.clone()),
        ..Options::default()
    };
    (opts, buf)
}

/// The `n` lines of `buf`, once it has them (and no more).
async fn lines(buf: &Buffer, n: usize) -> Vec<String> {
    let text = || String::from_utf8(buf.lock().unwrap().clone()).unwrap();
    let have = eventually(LIMIT, || async { text().lines().count() >= n }).await;
    let text = text();
    assert!(have, "waited for {n} lines: {text}");
    let lines: Vec<String> = text.lines().map(str::to_string).collect();
    assert_eq!(lines.len(), n, "{text}");
    lines
}

/// Two proxies with identities from one CA, each logging in `format`.
struct Pair {
    client: Proxy,
    server: Proxy,
    client_log: Buffer,
    server_log: Buffer,
}

impl Pair {
    async fn start(format: Format, app: SocketAddr) -> Self {
        let ca = Ca::generate(TRUST_DOMAIN, SystemTime::now()).unwrap();
        let (mut opts, server_log) = logging(format);
        opts.identity = Some(held_identity(&ca, "shop", "web"));
        let server = Proxy::start(server_snapshot(app), opts).await.unwrap();
        let inbound = server.listener_addr("inbound").unwrap();
        let mut snap = client_snapshot(&[(inbound, true)]);
        snap.services[0].endpoints[0].identity = Some(WEB.into());
        let (mut opts, client_log) = logging(format);
        opts.identity = Some(held_identity(&ca, "shop", "client"));
        let client = Proxy::start(snap, opts).await.unwrap();
        Self {
            client,
            server,
            client_log,
            server_log,
        }
    }

    fn outbound(&self) -> SocketAddr {
        self.client.listener_addr("outbound").unwrap()
    }

    fn inbound(&self) -> SocketAddr {
        self.server.listener_addr("inbound").unwrap()
    }

    /// Asserts each side's line, `same` but for what differs by side: the
    /// direction, where it was sent, who called (the client proxy over
    /// mutual TLS, inbound), the route (the service's one unnamed route,
    /// outbound) and the protocol (the hop between the proxies is HTTP/2).
    fn assert_sides(
        &self,
        format: Format,
        since: SystemTime,
        app: SocketAddr,
        same: &Value,
        (out, inb): (Value, Value),
    ) {
        let outbound = json!({
            "direction": "outbound",
            "route_name": "default",
            "upstream_host": self.inbound().to_string(),
            "downstream_peer_uri_san": "-",
        });
        let inbound = json!({
            "direction": "inbound",
            "protocol": "HTTP/2",
            "upstream_host": app.to_string(),
            "downstream_peer_uri_san": CLIENT,
        });
        let want = with(same, outbound);
        assert_eq!(settled(out, since), want, "{format:?} outbound");
        let want = with(same, inbound);
        assert_eq!(settled(inb, since), want, "{format:?} inbound");
    }

    /// The one line each side logged: (outbound, inbound).
    async fn logged(&self, format: Format) -> (Value, Value) {
        let out = lines(&self.client_log, 1).await.remove(0);
        let inb = lines(&self.server_log, 1).await.remove(0);
        (fields(format, &out), fields(format, &inb))
    }
}

/// The text format's fields, in order, by their JSON keys.
const TEXT_KEYS: [&str; 21] = [
    "start_time",
    "request",
    "response_code",
    "response_flags",
    "bytes_received",
    "bytes_sent",
    "duration",
    "upstream_service_time",
    "x_forwarded_for",
    "user_agent",
    "request_id",
    "authority",
    "upstream_host",
    "trace_id",
    "downstream_peer_uri_san",
    "direction",
    "destination_service",
    "route_name",
    "upstream_request_attempt_count",
    "downstream_remote_address",
    "grpc_status",
];

/// A line's fields as JSON, whatever its format: a text line is split into
/// its fields (quoted ones unescaped) and named as the JSON format names
/// them, so that both formats are held to one expectation.
fn fields(format: Format, line: &str) -> Value {
    match format {
        Format::Json => serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")),
        Format::Text => text_fields(line),
        Format::Off => panic!("no line when off"),
    }
}

fn text_fields(line: &str) -> Value {
    let mut tokens: Vec<String> = Vec::new();
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            ' ' => continue,
            '"' => {
                let mut t = String::new();
                loop {
                    match chars.next().unwrap_or_else(|| panic!("unclosed: {line}")) {
                        '"' => break,
                        '\\' => match chars.next().unwrap() {
                            'x' => {
                                let hex: String = [chars.next().unwrap(), chars.next().unwrap()]
                                    .iter()
                                    .collect();
                                t.push(char::from(u8::from_str_radix(&hex, 16).unwrap()));
                            }
                            other => t.push(other),
                        },
                        other => t.push(other),
                    }
                }
                tokens.push(t);
            }
            c => {
                let mut t = String::from(c);
                while let Some(&n) = chars.peek() {
                    if n == ' ' {
                        break;
                    }
                    t.push(n);
                    chars.next();
                }
                tokens.push(t);
            }
        }
    }
    assert_eq!(tokens.len(), TEXT_KEYS.len(), "{line}");
    let mut v = serde_json::Map::new();
    for (key, token) in TEXT_KEYS.iter().zip(tokens) {
        let value = match *key {
            "start_time" => {
                let inner = token.strip_prefix('[').and_then(|t| t.strip_suffix(']'));
                json!(inner.unwrap_or_else(|| panic!("not [start]: {line}")))
            }
            "request" => {
                let parts: Vec<&str> = token.split(' ').collect();
                assert_eq!(parts.len(), 3, "METHOD PATH PROTOCOL: {line}");
                v.insert("method".into(), json!(parts[0]));
                v.insert("path".into(), json!(parts[1]));
                v.insert("protocol".into(), json!(parts[2]));
                continue;
            }
            "upstream_service_time" => {
                assert_eq!(token, "-", "{line}");
                continue;
            }
            "response_code"
            | "bytes_received"
            | "bytes_sent"
            | "duration"
            | "upstream_request_attempt_count" => json!(token.parse::<u64>().unwrap()),
            "grpc_status" if token == "-" => Value::Null,
            "grpc_status" => json!(token.parse::<u64>().unwrap()),
            _ => json!(token),
        };
        v.insert(key.to_string(), value);
    }
    Value::Object(v)
}

/// Checks the fields that vary from run to run (start time within the
/// test's window, duration within its length, the caller's loopback
/// address) and takes them out; what is left is compared whole.
fn settled(mut v: Value, since: SystemTime) -> Value {
    let start = v["start_time"].as_str().unwrap().to_string();
    let (from, to) = (rfc3339_millis(since), rfc3339_millis(SystemTime::now()));
    assert!(
        start.len() == 24 && from <= start && start <= to,
        "start_time {start} not in [{from}, {to}]"
    );
    let took = SystemTime::now().duration_since(since).unwrap().as_millis() as u64;
    let duration = v["duration"].as_u64().unwrap();
    assert!(
        duration <= took,
        "duration {duration} ms, the test took {took} ms"
    );
    let peer: SocketAddr = v["downstream_remote_address"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(peer.ip().to_string(), "127.0.0.1");
    let o = v.as_object_mut().unwrap();
    for k in ["start_time", "duration", "downstream_remote_address"] {
        o.remove(k);
    }
    v
}

const FORMATS: [Format; 2] = [Format::Json, Format::Text];

#[tokio::test]
async fn an_http1_request_is_logged_with_every_field_on_both_sides() {
    let app = app("web").await;
    for format in FORMATS {
        let pair = Pair::start(format, app).await;
        let since = SystemTime::now();
        let mut c = http1(pair.outbound()).await;
        let resp = c
            .send_request(
                Request::post("/echo?x=1")
                    .header("host", "web.shop")
                    .header("user-agent", AGENT)
                    .header("x-request-id", "req-7")
                    .header("traceparent", format!("00-{TRACE}-00f067aa0ba902b7-01"))
                    .body(full("hello access log"))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"hello access log");
        let (out, inb) = pair.logged(format).await;
        let same = json!({
            "method": "POST",
            "path": "/echo?x=1",
            "response_code": 200,
            "response_flags": "-",
            "bytes_received": 16,
            "bytes_sent": 16,
            "x_forwarded_for": "-",
            "user_agent": AGENT,
            "request_id": "req-7",
            "protocol": "HTTP/1.1",
            "authority": "web.shop",
            "trace_id": TRACE,
            "destination_service": "web.shop",
            "route_name": "-",
            "upstream_request_attempt_count": 1,
            "grpc_status": null,
        });
        pair.assert_sides(format, since, app, &same, (out, inb));
    }
}

/// `base` with `over`'s keys set.
fn with(base: &Value, over: Value) -> Value {
    let mut v = base.clone();
    for (k, x) in over.as_object().unwrap() {
        v[k] = x.clone();
    }
    v
}

#[tokio::test]
async fn an_http2_request_is_logged_with_every_field_on_both_sides() {
    let app = app("web").await;
    for format in FORMATS {
        let pair = Pair::start(format, app).await;
        let since = SystemTime::now();
        let mut c = http2(pair.outbound()).await;
        let resp = c
            .send_request(
                Request::get("http://web.shop/bytes/10")
                    .header("user-agent", "h2-client")
                    .header("x-forwarded-for", "192.0.2.7")
                    .header("x-b3-traceid", "a3ce929d0e0e4736")
                    .body(empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body.len(), 10);
        let (out, inb) = pair.logged(format).await;
        // No `x-request-id` came: the outbound proxy made one (a UUID v4,
        // as Envoy does), which the inbound side received.
        let id = out["request_id"].as_str().unwrap().to_string();
        assert_eq!((id.len(), &id[14..15]), (36, "4"), "{id}");
        let same = json!({
            "method": "GET",
            "path": "/bytes/10",
            "protocol": "HTTP/2",
            "response_code": 200,
            "response_flags": "-",
            "bytes_received": 0,
            "bytes_sent": 10,
            "x_forwarded_for": "192.0.2.7",
            "user_agent": "h2-client",
            "request_id": id,
            "authority": "web.shop",
            "trace_id": "a3ce929d0e0e4736",
            "destination_service": "web.shop",
            "route_name": "-",
            "upstream_request_attempt_count": 1,
            "grpc_status": null,
        });
        pair.assert_sides(format, since, app, &same, (out, inb));
    }
}

/// A real gRPC server: the standard health service (tonic-health).
async fn grpc_app() -> SocketAddr {
    let (_, health) = tonic_health::server::health_reporter();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(health)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    addr
}

#[tokio::test]
async fn a_grpc_call_is_logged_with_its_status_on_both_sides() {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    let app = grpc_app().await;
    for format in FORMATS {
        let pair = Pair::start(format, app).await;
        let since = SystemTime::now();
        let channel =
            tonic::transport::Endpoint::from_shared(format!("http://{}", pair.outbound()))
                .unwrap()
                .origin("http://web.shop:80".parse().unwrap())
                .connect()
                .await
                .unwrap();
        let mut client = HealthClient::new(channel);
        let mut req = tonic::Request::new(HealthCheckRequest {
            service: String::new(),
        });
        req.metadata_mut()
            .insert("x-request-id", "grpc-1".parse().unwrap());
        let answer = client.check(req).await.unwrap().into_inner();
        // SERVING
        assert_eq!(answer.status, 1);
        let (mut out, mut inb) = pair.logged(format).await;
        // tonic names itself with its version.
        for v in [&mut out, &mut inb] {
            let agent = v["user_agent"].as_str().unwrap().to_string();
            assert!(agent.starts_with("tonic/"), "{agent}");
            v["user_agent"] = json!("tonic");
        }
        let same = json!({
            "method": "POST",
            "path": "/grpc.health.v1.Health/Check",
            "protocol": "HTTP/2",
            "response_code": 200,
            "response_flags": "-",
            // A 5-byte frame header and an empty message; the answer's
            // header and `status: SERVING` (2 bytes).
            "bytes_received": 5,
            "bytes_sent": 7,
            "x_forwarded_for": "-",
            "user_agent": "tonic",
            "request_id": "grpc-1",
            "authority": "web.shop:80",
            "trace_id": "-",
            "destination_service": "web.shop",
            "route_name": "-",
            "upstream_request_attempt_count": 1,
            "grpc_status": 0,
        });
        pair.assert_sides(format, since, app, &same, (out, inb));
    }
}

#[tokio::test]
async fn a_local_reply_is_logged_with_its_flag() {
    for format in FORMATS {
        // A service with no endpoint: the proxy answers 503 `UH` itself.
        let (opts, log) = logging(format);
        let proxy = Proxy::start(web_snapshot("1", "endpoints: []"), opts)
            .await
            .unwrap();
        let since = SystemTime::now();
        let mut c = http1(proxy.listener_addr("outbound").unwrap()).await;
        let resp = c
            .send_request(
                Request::get("/cart")
                    .header("host", "web.shop")
                    .header("x-request-id", "local-1")
                    .header("b3", format!("{TRACE}-00f067aa0ba902b7-1"))
                    .body(empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(resp.status(), 503);
        assert_eq!(resp.headers()["outrigger-response-flags"], "UH");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let line = lines(&log, 1).await.remove(0);
        assert_eq!(
            settled(fields(format, &line), since),
            json!({
                "method": "GET",
                "path": "/cart",
                "protocol": "HTTP/1.1",
                "response_code": 503,
                "response_flags": "UH",
                "bytes_received": 0,
                "bytes_sent": body.len(),
                "x_forwarded_for": "-",
                "user_agent": "-",
                "request_id": "local-1",
                "authority": "web.shop",
                "upstream_host": "-",
                "trace_id": TRACE,
                "downstream_peer_uri_san": "-",
                "direction": "outbound",
                "destination_service": "web.shop",
                "route_name": "default",
                "upstream_request_attempt_count": 1,
                "grpc_status": null,
            }),
            "{format:?}: {line}"
        );
    }
}

#[tokio::test]
async fn off_logs_nothing() {
    let (opts, log) = logging(Format::Off);
    let app = app("web").await;
    let proxy = Proxy::start(client_snapshot(&[(app, false)]), opts)
        .await
        .unwrap();
    assert_eq!(
        get(proxy.listener_addr("outbound").unwrap(), "/").await.0,
        200
    );
    // The request is recorded (metrics) by the time it is counted; the log
    // would have been written by then too.
    let text = scrape(&proxy).await;
    assert_eq!(metric(&text, "outrigger_requests_total", &[]), 1.0);
    assert_eq!(
        metric(&text, "outrigger_access_log_dropped_total", &[]),
        0.0
    );
    assert!(log.lock().unwrap().is_empty());
}

/// The real binary: `--access-log json`, `OUTRIGGER_ACCESS_LOG=text` and a
/// bare `--access-log` each write their lines to stdout, apart from the
/// proxy's own log on stderr.
#[tokio::test]
async fn the_proxy_binary_writes_its_access_log_to_stdout() {
    use tokio::io::AsyncBufReadExt;
    let Some(bin) = workspace_bin("outrigger-proxy") else {
        panic!("the outrigger-proxy binary: cargo build -p outrigger-proxy");
    };
    let app = app("web").await;
    for (args, env, want) in [
        (&["--access-log", "json"][..], None, Format::Json),
        (&[][..], Some("text"), Format::Text),
        (&["--access-log"][..], None, Format::Text),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (port, admin) = (free_port(), free_port());
        let config = dir.path().join("proxy.yaml");
        std::fs::write(
            &config,
            format!(
                r#"version: "1"
proxy: {{ workload: client, namespace: shop }}
admin: {{ bind: "127.0.0.1:{admin}" }}
listeners:
  - {{ name: outbound, direction: outbound, bind: "127.0.0.1:{port}", target: {{ name: web, namespace: shop, port: 80 }} }}
services:
  - {{ name: web, namespace: shop, ports: [80], endpoints: [{{ address: "{app}" }}] }}
"#
            ),
        )
        .unwrap();
        let mut cmd = tokio::process::Command::new(&bin);
        cmd.arg("run")
            .arg("--config")
            .arg(&config)
            .args(args)
            .env_remove("OUTRIGGER_ACCESS_LOG")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true);
        if let Some(v) = env {
            cmd.env("OUTRIGGER_ACCESS_LOG", v);
        }
        let mut child = cmd.spawn().unwrap();
        let admin = SocketAddr::from(([127, 0, 0, 1], admin));
        let up = eventually(LIMIT, || async {
            matches!(try_get(admin, "/ready").await, Ok((200, _)))
        })
        .await;
        assert!(up, "the proxy was not ready on {admin}");
        let outbound = SocketAddr::from(([127, 0, 0, 1], port));
        assert_eq!(get(outbound, "/hello").await.0, 200);
        let mut stdout = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let line = tokio::time::timeout(LIMIT, stdout.next_line())
            .await
            .expect("a line on stdout")
            .unwrap()
            .expect("stdout open");
        let v = fields(want, &line);
        assert_eq!(
            (
                &v["method"],
                &v["path"],
                &v["response_code"],
                &v["direction"]
            ),
            (
                &json!("GET"),
                &json!("/hello"),
                &json!(200),
                &json!("outbound")
            ),
            "{args:?} {env:?}: {line}"
        );
        child.kill().await.unwrap();
    }
}
