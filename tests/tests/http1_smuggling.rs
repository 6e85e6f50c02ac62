//! HTTP/1 attack classes against real proxies, in front of a raw-socket
//! upstream that records every byte it receives and reads it with a strict
//! parser of its own: request smuggling (Content-Length with
//! Transfer-Encoding, repeated lengths, disguised encodings, obs-fold, bare
//! LF, a repeated Host, an absolute-form target for another host), a
//! pipeline with a bad request in the middle, chunk sizes and extensions;
//! then strict HTTP/1 on ports declared HTTP, and the header-count limit.
//!
//! Each case goes through both proxies (`outbound → HTTP/2 over mutual
//! TLS → inbound → app`) and straight to the inbound proxy (HTTP/1 on both
//! sides). The
//! upstream must never see an ambiguous request (exactly one of
//! Content-Length or Transfer-Encoding, one Host, CRLF line endings) nor a
//! request the proxy did not parse: it sees as many requests as the proxy
//! answered with the upstream's own 200 before the bad one, and none after.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use outrigger_api::{ServiceProtocol, Snapshot};
use outrigger_identity::Ca;
use outrigger_proxy::{Options, Proxy};
use outrigger_tests::identity::TRUST_DOMAIN;
use outrigger_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const LIMIT: Duration = Duration::from_secs(10);

/// One request as the upstream read it.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Seen {
    fn header(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// What the upstream received since it was last cleared: every byte (of
/// all connections), the requests it read whole, and anything it could
/// not read unambiguously.
#[derive(Default)]
struct Record {
    bytes: Vec<u8>,
    requests: Vec<Seen>,
    violations: Vec<String>,
}

/// A raw-socket upstream: reads requests with [`next_request`], answers a
/// fixed `200 ok` to each (keep-alive), and closes on anything it cannot
/// read, which it records as a violation.
async fn recording_upstream() -> (SocketAddr, Arc<Mutex<Record>>) {
    let record: Arc<Mutex<Record>> = Arc::default();
    let log = record.clone();
    let addr = serve_tcp(move |mut s: TcpStream| {
        let log = log.clone();
        async move {
            let mut buf = Vec::new();
            loop {
                match next_request(&buf) {
                    Ok(Some((req, used))) => {
                        buf.drain(..used);
                        log.lock().unwrap().requests.push(req);
                        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if s.write_all(ok).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        log.lock().unwrap().violations.push(e);
                        return;
                    }
                }
                let mut chunk = [0u8; 4096];
                let n = match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                log.lock().unwrap().bytes.extend_from_slice(&chunk[..n]);
                buf.extend_from_slice(&chunk[..n]);
            }
        }
    })
    .await;
    (addr, record)
}

/// Reads one whole request off the front of `buf` as strictly as RFC 9112
/// allows nothing else: `Ok(None)` while it is incomplete, the request
/// and the bytes it took once whole, an error for anything ambiguous or
/// malformed (which a proxy must never send).
fn next_request(buf: &[u8]) -> Result<Option<(Seen, usize)>, String> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        if buf.windows(2).any(|w| w[1] == b'\n' && w[0] != b'\r') || buf.first() == Some(&b'\n') {
            return Err(format!("a bare LF: {:?}", String::from_utf8_lossy(buf)));
        }
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..end]).map_err(|e| format!("head not UTF-8: {e}"))?;
    if head.contains('\n')
        && head
            .split("\r\n")
            .any(|l| l.contains('\n') || l.contains('\r'))
    {
        return Err(format!("a bare LF or CR in the head: {head:?}"));
    }
    let mut lines = head.split("\r\n");
    let line = lines.next().unwrap_or_default();
    let parts: Vec<&str> = line.split(' ').collect();
    let [method, target, version] = parts[..] else {
        return Err(format!("request line {line:?}"));
    };
    let token = |t: &str| {
        !t.is_empty()
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    };
    if !token(method) {
        return Err(format!("method in {line:?}"));
    }
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(format!("version in {line:?}"));
    }
    let mut headers = Vec::new();
    for l in lines {
        if l.starts_with(' ') || l.starts_with('\t') {
            return Err(format!("obs-fold: {l:?}"));
        }
        let (k, v) = l.split_once(':').ok_or(format!("header line {l:?}"))?;
        if !token(k) {
            return Err(format!("header name {k:?}"));
        }
        headers.push((k.to_string(), v.trim().to_string()));
    }
    let mut seen = Seen {
        method: method.into(),
        target: target.into(),
        headers,
        body: Vec::new(),
    };
    if seen.header("host").len() != 1 {
        return Err(format!("Host: {:?}", seen.header("host")));
    }
    let (cl, te) = (
        seen.header("content-length"),
        seen.header("transfer-encoding"),
    );
    let start = end + 4;
    let used = match (cl.as_slice(), te.as_slice()) {
        ([], []) => start,
        ([n], []) => {
            let n: usize = n.parse().map_err(|_| format!("content-length {n:?}"))?;
            if buf.len() < start + n {
                return Ok(None);
            }
            seen.body = buf[start..start + n].to_vec();
            start + n
        }
        ([], ["chunked"]) => {
            let mut at = start;
            loop {
                let Some(eol) = buf[at..].windows(2).position(|w| w == b"\r\n") else {
                    return Ok(None);
                };
                let size = std::str::from_utf8(&buf[at..at + eol]).unwrap_or("?");
                let size =
                    usize::from_str_radix(size, 16).map_err(|_| format!("chunk size {size:?}"))?;
                at += eol + 2;
                if size == 0 {
                    if buf.len() < at + 2 {
                        return Ok(None);
                    }
                    if &buf[at..at + 2] != b"\r\n" {
                        return Err("trailers or junk after the last chunk".into());
                    }
                    break at + 2;
                }
                if buf.len() < at + size + 2 {
                    return Ok(None);
                }
                seen.body.extend_from_slice(&buf[at..at + size]);
                if &buf[at + size..at + size + 2] != b"\r\n" {
                    return Err("a chunk not ended by CRLF".into());
                }
                at += size + 2;
            }
        }
        (cl, te) => {
            return Err(format!(
                "framing: content-length {cl:?}, transfer-encoding {te:?}"
            ))
        }
    };
    Ok(Some((seen, used)))
}

/// One response off a raw connection: the status and the head.
struct Answer {
    status: u16,
    head: String,
}

/// Sends `bytes` on a fresh connection to `addr`, then reads responses
/// until the proxy closes the connection; returns them, and whether it
/// closed within [`LIMIT`].
async fn exchange(addr: SocketAddr, bytes: &[u8]) -> (Vec<Answer>, bool) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    // The proxy may answer and close before reading everything.
    let _ = s.write_all(bytes).await;
    let mut got = Vec::new();
    let closed = tokio::time::timeout(LIMIT, async {
        let mut chunk = [0u8; 4096];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await
    .is_ok();
    let mut answers = Vec::new();
    let mut rest = &got[..];
    while let Some(end) = rest.windows(4).position(|w| w == b"\r\n\r\n") {
        let head = String::from_utf8_lossy(&rest[..end + 4]).to_string();
        let status = head[9..12].parse().unwrap();
        let length = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse::<usize>().unwrap())
            })
            .unwrap_or(0);
        rest = &rest[(end + 4 + length).min(rest.len())..];
        answers.push(Answer { status, head });
    }
    (answers, closed)
}

/// Two proxies in front of the recording upstream, over mutual TLS (each
/// with a certificate from one CA), both ports declared `http` when
/// `declared` (strict), else left to detection. The inbound proxy also
/// takes plaintext (PERMISSIVE), which the tests use to reach it directly.
async fn mesh(upstream: SocketAddr, declared: bool) -> Mesh {
    mesh_with(upstream, declared, |_| {}).await
}

async fn mesh_with(
    upstream: SocketAddr,
    declared: bool,
    edit_server: impl FnOnce(&mut Snapshot),
) -> Mesh {
    let protocol = if declared {
        ServiceProtocol::Http
    } else {
        ServiceProtocol::Detect
    };
    let ca = Ca::generate(TRUST_DOMAIN, SystemTime::now()).unwrap();
    let mut s = server_snapshot(upstream);
    s.services[0].protocol = protocol;
    edit_server(&mut s);
    s.validate().unwrap();
    let server = Proxy::start(
        s,
        Options {
            identity: Some(held_identity(&ca, "shop", "web")),
            ..Options::default()
        },
    )
    .await
    .unwrap();
    let inbound = server.listener_addr("inbound").unwrap();
    let mut c = client_snapshot(&[(inbound, true)]);
    c.services[0].protocol = protocol;
    c.services[0].endpoints[0].identity = Some(format!("spiffe://{TRUST_DOMAIN}/ns/shop/sa/web"));
    c.validate().unwrap();
    let client = Proxy::start(
        c,
        Options {
            identity: Some(held_identity(&ca, "shop", "client")),
            ..Options::default()
        },
    )
    .await
    .unwrap();
    Mesh {
        client,
        server,
        app: upstream,
    }
}

const GOOD: &str = "GET /ok HTTP/1.1\r\nhost: web.shop\r\n\r\n";

/// What a case expects of the proxy: the statuses the client gets, in
/// order, and the requests (method and target) the upstream reads whole.
struct Case {
    name: &'static str,
    bytes: String,
    statuses: &'static [u16],
    upstream: &'static [&'static str],
}

fn case(
    name: &'static str,
    bytes: impl Into<String>,
    statuses: &'static [u16],
    upstream: &'static [&'static str],
) -> Case {
    Case {
        name,
        bytes: bytes.into(),
        statuses,
        upstream,
    }
}

/// The smuggling cases. Each leaves a request behind the attack on the
/// same connection (`GET /smuggled`), which must never reach the upstream.
fn smuggling_cases() -> Vec<Case> {
    let after = "GET /smuggled HTTP/1.1\r\nhost: web.shop\r\n\r\n";
    let post = |headers: &str, body: &str| {
        format!("POST /p HTTP/1.1\r\nhost: web.shop\r\n{headers}\r\n{body}{after}")
    };
    vec![
        // RFC 9112 6.1: Transfer-Encoding overrides Content-Length, and
        // the connection closes after the response: the rest is not read.
        case(
            "CL then TE",
            post(
                "content-length: 30\r\ntransfer-encoding: chunked\r\n",
                "3\r\nabc\r\n0\r\n\r\n",
            ),
            &[200],
            &["POST /p"],
        ),
        case(
            "TE then CL",
            post(
                "transfer-encoding: chunked\r\ncontent-length: 3\r\n",
                "3\r\nabc\r\n0\r\n\r\n",
            ),
            &[200],
            &["POST /p"],
        ),
        case(
            "two different Content-Lengths",
            post("content-length: 3\r\ncontent-length: 40\r\n", "abc"),
            &[400],
            &[],
        ),
        case(
            "a Content-Length list",
            post("content-length: 3, 3\r\n", "abc"),
            &[400],
            &[],
        ),
        case(
            "a signed Content-Length",
            post("content-length: +3\r\n", "abc"),
            &[400],
            &[],
        ),
        case(
            "chunked, then identity",
            post(
                "transfer-encoding: chunked, identity\r\n",
                "3\r\nabc\r\n0\r\n\r\n",
            ),
            &[400],
            &[],
        ),
        case(
            "xchunked",
            post("transfer-encoding: xchunked\r\n", "3\r\nabc\r\n0\r\n\r\n"),
            &[400],
            &[],
        ),
        case(
            "Transfer-Encoding folded (obs-fold)",
            post(
                "transfer-encoding:\r\n chunked\r\ncontent-length: 3\r\n",
                "abc",
            ),
            &[400],
            &[],
        ),
        case(
            "Transfer-Encoding on HTTP/1.0",
            format!("POST /p HTTP/1.0\r\nhost: web.shop\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n{after}"),
            &[400],
            &[],
        ),
        case(
            "obs-fold in another header",
            format!("GET /f HTTP/1.1\r\nhost: web.shop\r\nx-a: 1\r\n\tx-b: 2\r\n\r\n{after}"),
            &[400],
            &[],
        ),
        case(
            "a space before the colon",
            format!("GET /f HTTP/1.1\r\nhost: web.shop\r\ntransfer-encoding : chunked\r\n\r\n{after}"),
            &[400],
            &[],
        ),
        case(
            "two Host headers",
            format!("GET /h HTTP/1.1\r\nhost: web.shop\r\nhost: admin.shop\r\n\r\n{after}"),
            &[400],
            &[],
        ),
        case(
            "no Host on HTTP/1.1",
            format!("GET /h HTTP/1.1\r\n\r\n{after}"),
            &[400],
            &[],
        ),
        case(
            "an invalid Host",
            format!("GET /h HTTP/1.1\r\nhost: web.shop, admin.shop\r\n\r\n{after}"),
            &[400],
            &[],
        ),
        case(
            "a bad request in the middle of a pipeline",
            format!("{GOOD}GET /two HTTP/1.1\r\nhost: web.shop\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nab{after}"),
            &[200, 400],
            &["GET /ok"],
        ),
        case(
            "a chunk size too large for 64 bits",
            post(
                "transfer-encoding: chunked\r\n",
                "fffffffffffffffffff\r\nabc\r\n0\r\n\r\n",
            ),
            &[400],
            &[],
        ),
        case(
            "a chunk size that is not hex",
            post("transfer-encoding: chunked\r\n", "3x\r\nabc\r\n0\r\n\r\n"),
            &[400],
            &[],
        ),
    ]
}

fn assert_upstream_clean(record: &Mutex<Record>) {
    let r = record.lock().unwrap();
    assert!(
        r.violations.is_empty(),
        "the upstream read something ambiguous: {:?}",
        r.violations
    );
    let text = String::from_utf8_lossy(&r.bytes);
    assert!(!text.contains("/smuggled"), "smuggled through: {text:?}");
}

/// Runs `cases` against `addr`; the upstream's record is cleared first.
async fn run(addr: SocketAddr, cases: &[Case], record: &Mutex<Record>, via: &str) {
    for c in cases {
        *record.lock().unwrap() = Record::default();
        let (answers, closed) = exchange(addr, c.bytes.as_bytes()).await;
        let statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();
        let heads: Vec<&str> = answers.iter().map(|a| a.head.as_str()).collect();
        assert_eq!(statuses, c.statuses, "{} via {via}: {heads:?}", c.name);
        assert!(closed, "{} via {via}: the connection stayed open", c.name);
        for a in answers.iter().filter(|a| a.status == 400) {
            let head = a.head.to_ascii_lowercase();
            assert!(
                head.contains("connection: close"),
                "{} via {via}: {}",
                c.name,
                a.head
            );
        }
        assert_upstream_clean(record);
        let r = record.lock().unwrap();
        let seen: Vec<String> = r
            .requests
            .iter()
            .map(|s| format!("{} {}", s.method, s.target))
            .collect();
        assert_eq!(seen, c.upstream, "{} via {via}", c.name);
    }
}

#[tokio::test]
async fn no_smuggling_case_reaches_the_upstream_ambiguous_or_unparsed() {
    let (upstream, record) = recording_upstream().await;
    let mesh = mesh(upstream, false).await;
    let cases = smuggling_cases();
    run(mesh.outbound(), &cases, &record, "both proxies").await;
    run(mesh.inbound(), &cases, &record, "the inbound proxy").await;
    // The hop between the proxies was mutual TLS.
    let text = scrape(&mesh.server).await;
    let over_mtls = metric(
        &text,
        "outrigger_requests_total",
        &[("connection_security_policy", "mutual_tls")],
    );
    assert!(over_mtls >= 1.0, "{text}");
    // What the upstream read of the CL+TE request: one framing, the body
    // as chunked said.
    *record.lock().unwrap() = Record::default();
    exchange(mesh.inbound(), cases[0].bytes.as_bytes()).await;
    let r = record.lock().unwrap();
    assert_eq!(r.requests[0].body, b"abc");
    assert_eq!(r.requests[0].header("host"), ["web.shop"]);
}

#[tokio::test]
async fn an_absolute_form_target_is_the_host_the_upstream_gets() {
    let (upstream, record) = recording_upstream().await;
    let mesh = mesh(upstream, false).await;
    for (addr, via) in [(mesh.outbound(), "both"), (mesh.inbound(), "inbound")] {
        *record.lock().unwrap() = Record::default();
        let (answers, closed) = exchange(
            addr,
            b"GET http://other.example:8080/x?q=1 HTTP/1.1\r\nhost: web.shop\r\nconnection: close\r\n\r\n",
        )
        .await;
        assert_eq!(answers.len(), 1, "{via}");
        assert_eq!(answers[0].status, 200, "{via}: {}", answers[0].head);
        assert!(closed);
        assert_upstream_clean(&record);
        let r = record.lock().unwrap();
        assert_eq!(r.requests.len(), 1, "{via}");
        // RFC 9112 3.2.2: the target's authority replaces the Host.
        assert_eq!(
            r.requests[0].header("host"),
            ["other.example:8080"],
            "{via}"
        );
        assert_eq!(r.requests[0].target, "/x?q=1", "{via}");
    }
}

#[tokio::test]
async fn chunk_extensions_and_bare_lf_heads_are_reframed_for_the_upstream() {
    let (upstream, record) = recording_upstream().await;
    let mesh = mesh(upstream, false).await;
    for (addr, via) in [(mesh.outbound(), "both"), (mesh.inbound(), "inbound")] {
        *record.lock().unwrap() = Record::default();
        // A chunk extension (RFC 9112 7.1.1) is dropped, the data kept.
        let (answers, _) = exchange(
            addr,
            b"POST /ext HTTP/1.1\r\nhost: web.shop\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n3;name=\"v\"\r\nabc\r\n0\r\n\r\n",
        )
        .await;
        assert_eq!(
            answers.iter().map(|a| a.status).collect::<Vec<_>>(),
            [200],
            "{via}"
        );
        // Bare LF after the request line, on a port left to detection:
        // read as RFC 9112 2.2 allows, and sent on with CRLF.
        let (answers, _) = exchange(
            addr,
            b"GET /lf HTTP/1.1\r\nhost: web.shop\nx-a: 1\nconnection: close\n\n",
        )
        .await;
        assert_eq!(
            answers.iter().map(|a| a.status).collect::<Vec<_>>(),
            [200],
            "{via}"
        );
        assert_upstream_clean(&record);
        let r = record.lock().unwrap();
        assert_eq!(r.requests.len(), 2, "{via}");
        assert_eq!(r.requests[0].body, b"abc");
        assert_eq!(r.requests[1].header("x-a"), ["1"]);
        assert_eq!(r.requests[1].header("host"), ["web.shop"]);
    }
}

/// Request lines that are not HTTP/1.0 or HTTP/1.1, each with a request
/// behind it that must not reach the upstream either.
const NOT_HTTP: [&[u8]; 6] = [
    b"G@T / HTTP/1.1\r\nhost: web.shop\r\n\r\n",
    b"GET /\r\n",
    b"GET / HTTP/1.2\r\nhost: web.shop\r\n\r\n",
    b"\x00GET / HTTP/1.1\r\nhost: web.shop\r\n\r\n",
    b"GET / HTTP/1.1\nhost: web.shop\n\n",
    b"\x16\x03\x01\x00\x05\x02\x00\x00\x01\x00",
];

#[tokio::test]
async fn a_port_declared_http_answers_400_to_anything_not_http() {
    let (upstream, record) = recording_upstream().await;
    let mesh = mesh(upstream, true).await;
    for (addr, via, proxy) in [
        (mesh.outbound(), "outbound", &mesh.client),
        (mesh.inbound(), "inbound", &mesh.server),
    ] {
        let mut answered = 0.0;
        for bytes in NOT_HTTP {
            *record.lock().unwrap() = Record::default();
            let mut line = bytes.to_vec();
            line.extend_from_slice(b"GET /smuggled HTTP/1.1\r\nhost: web.shop\r\n\r\n");
            let (answers, closed) = exchange(addr, &line).await;
            let what = String::from_utf8_lossy(bytes);
            assert!(closed, "{what:?} via {via}: left open");
            let r = record.lock().unwrap();
            assert!(
                r.bytes.is_empty(),
                "{what:?} via {via} reached the upstream: {:?}",
                String::from_utf8_lossy(&r.bytes)
            );
            // A TLS record the inbound side cannot read is taken for mesh
            // TLS, whose handshake then fails: closed with no answer.
            if via == "inbound" && bytes[0] == 0x16 {
                assert!(answers.is_empty(), "{what:?} via {via}");
                continue;
            }
            assert_eq!(answers.len(), 1, "{what:?} via {via}");
            let a = &answers[0];
            assert_eq!(a.status, 400, "{what:?} via {via}: {}", a.head);
            let head = a.head.to_ascii_lowercase();
            assert!(head.contains("connection: close"), "{}", a.head);
            assert!(head.contains("outrigger-response-flags: dpe"), "{}", a.head);
            answered += 1.0;
        }
        let text = scrape(proxy).await;
        let refused = metric(
            &text,
            "outrigger_requests_total",
            &[("response_code", "400"), ("response_flags", "DPE")],
        );
        assert_eq!(refused, answered, "{via}: {text}");
    }
    // Well-formed HTTP/1 and HTTP/2 still pass both.
    assert_eq!(get(mesh.outbound(), "/").await.0, 200);
    assert_eq!(get(mesh.inbound(), "/").await.0, 200);
    let mut h2 = http2(mesh.outbound()).await;
    let resp = h2
        .send_request(
            http::Request::get("http://web.shop/")
                .body(empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn a_port_left_to_detection_forwards_what_is_not_http_as_bytes() {
    // The contrast: undeclared, `G@T` is opaque TCP and reaches the app.
    let (upstream, record) = recording_upstream().await;
    let s = client_snapshot(&[(upstream, false)]);
    let proxy = Proxy::start(s, Options::default()).await.unwrap();
    let addr = proxy.listener_addr("outbound").unwrap();
    let (answers, _) = exchange(addr, b"G@T / HTTP/1.1\r\nhost: web.shop\r\n\r\n").await;
    assert!(
        answers.is_empty(),
        "the upstream closes on what it cannot read"
    );
    let r = record.lock().unwrap();
    assert_eq!(r.bytes, b"G@T / HTTP/1.1\r\nhost: web.shop\r\n\r\n");
    assert_eq!(r.violations.len(), 1);
}

#[tokio::test]
async fn the_apps_own_tls_still_passes_a_port_declared_http() {
    let (tls_app, cert) = serve_https(|_req: http::Request<hyper::body::Incoming>| async {
        http::Response::new(full("tls"))
    })
    .await;
    let mut s = client_snapshot(&[(tls_app, false)]);
    s.services[0].protocol = ServiceProtocol::Http;
    let proxy = Proxy::start(s, Options::default()).await.unwrap();
    let addr = proxy.listener_addr("outbound").unwrap();
    let (status, body) = https_get(addr, &cert, "/").await.unwrap();
    assert_eq!((status, body.as_str()), (200, "tls"));
}

/// A request with `n` headers besides Host, on a fresh connection.
fn with_headers(n: usize) -> Vec<u8> {
    let mut req = String::from("GET /many HTTP/1.1\r\nhost: web.shop\r\nconnection: close\r\n");
    for i in 0..n {
        req.push_str(&format!("x-h{i}: {i}\r\n"));
    }
    req.push_str("\r\n");
    req.into_bytes()
}

#[tokio::test]
async fn the_header_count_limit_is_the_snapshots() {
    let (upstream, record) = recording_upstream().await;
    // The default: 100 fields (Host and Connection among them).
    let mesh = mesh(upstream, false).await;
    let (a, _) = exchange(mesh.inbound(), &with_headers(98)).await;
    assert_eq!(a[0].status, 200, "{}", a[0].head);
    let (a, closed) = exchange(mesh.inbound(), &with_headers(99)).await;
    assert_eq!(a[0].status, 431, "{}", a[0].head);
    assert!(closed);
    // Set lower on the server side.
    let (upstream, record2) = recording_upstream().await;
    let mesh = mesh_with(upstream, false, |s| s.limits.max_header_count = 20).await;
    let (a, _) = exchange(mesh.inbound(), &with_headers(18)).await;
    assert_eq!(a[0].status, 200, "{}", a[0].head);
    let (a, _) = exchange(mesh.inbound(), &with_headers(19)).await;
    assert_eq!(a[0].status, 431, "{}", a[0].head);
    let text = scrape(&mesh.server).await;
    assert_eq!(
        metric(
            &text,
            "outrigger_requests_total",
            &[("response_code", "431"), ("response_flags", "DPE")]
        ),
        1.0,
        "{text}"
    );
    assert_eq!(record.lock().unwrap().requests.len(), 1);
    assert_eq!(record2.lock().unwrap().requests.len(), 1);
    // Zero is refused, naming the field.
    let mut s = server_snapshot(upstream);
    s.limits.max_header_count = 0;
    let err = s.validate().unwrap_err().to_string();
    assert!(err.contains("limits.max_header_count"), "{err}");
}

/// An upstream that answers `200 early` as soon as it has a request head,
/// without waiting for the body; it keeps reading until the proxy closes,
/// and returns (through the channel) whether the body ever ended.
async fn early_answering_upstream() -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<bool>) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let addr = serve_tcp(move |mut s: TcpStream| {
        let tx = tx.clone();
        async move {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            let mut answered = false;
            loop {
                let n = s.read(&mut chunk).await.unwrap_or(0);
                buf.extend_from_slice(&chunk[..n]);
                if !answered && buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    answered = true;
                    let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nearly";
                    let _ = s.write_all(ok).await;
                }
                if n == 0 {
                    let _ = tx.send(buf.ends_with(b"0\r\n\r\n"));
                    return;
                }
            }
        }
    })
    .await;
    (addr, rx)
}

#[tokio::test]
async fn a_body_broken_after_the_upstream_answered_keeps_the_answer_and_closes() {
    let (upstream, mut ended) = early_answering_upstream().await;
    let mesh = mesh(upstream, false).await;
    for (addr, via) in [(mesh.inbound(), "inbound"), (mesh.outbound(), "both")] {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"POST /up HTTP/1.1\r\nhost: web.shop\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n")
            .await
            .unwrap();
        // The upstream's answer arrives while the body is still open.
        let mut got = Vec::new();
        let mut chunk = [0u8; 1024];
        while !got.ends_with(b"early") {
            let n = tokio::time::timeout(LIMIT, s.read(&mut chunk))
                .await
                .expect("the answer in time")
                .unwrap();
            assert!(n > 0, "{via}: closed before the answer: {got:?}");
            got.extend_from_slice(&chunk[..n]);
        }
        assert!(got.starts_with(b"HTTP/1.1 200 OK"), "{via}");
        // Then the body breaks: the connection is closed, and the
        // upstream sees its request body cut short, never ended.
        s.write_all(b"zz\r\nnot a chunk\r\n").await.unwrap();
        let rest = tokio::time::timeout(LIMIT, s.read_to_end(&mut got)).await;
        assert!(rest.is_ok(), "{via}: left open");
        let body_ended = tokio::time::timeout(LIMIT, ended.recv())
            .await
            .expect("the upstream connection closed")
            .unwrap();
        assert!(!body_ended, "{via}: the upstream saw a whole body");
    }
}
