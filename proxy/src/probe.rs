//! App probes answered on the admin port, so that kubelet's probes keep
//! working when the inbound side is STRICT (see `outrigger_api::probe`).
//!
//! [`Probes::build`] checks the JSON the injector wrote and refuses it with
//! the path and field at fault; [`Probe::run`] runs one original probe
//! against the app, from inside the pod (the proxy's own traffic is never
//! redirected), and says what to answer kubelet:
//! - HTTP: the app's 2xx and 3xx become 200 (kubelet counts both as
//!   success, and a redirect followed by kubelet would land on the admin
//!   port), 4xx and 5xx pass through;
//! - TCP: 200 when the connection opens, 503 otherwise;
//! - gRPC: the Health Checking Protocol over plaintext HTTP/2, as kubelet
//!   runs it: 200 when the app answers `SERVING`, 503 with what it said
//!   otherwise;
//! - no answer within the probe's timeout, or no connection: 503.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, StatusCode};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use outrigger_api::probe::{AppProbe, AppProbes, APP_HEALTH_PREFIX};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

/// Kubelet's default probe timeout.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);

/// The probes by admin path.
#[derive(Debug, Default)]
pub struct Probes {
    by_path: BTreeMap<String, Probe>,
}

#[derive(Debug)]
pub struct Probe {
    check: Check,
    timeout: Duration,
}

#[derive(Debug)]
enum Check {
    Http {
        host: String,
        port: u16,
        path: String,
        headers: Vec<(HeaderName, HeaderValue)>,
        /// HTTPS: a client that accepts any certificate, as kubelet does.
        tls: Option<Arc<rustls::ClientConfig>>,
    },
    Tcp {
        host: String,
        port: u16,
    },
    Grpc {
        host: String,
        port: u16,
        service: String,
    },
}

/// A probe definition the proxy cannot run.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("app probe {path:?}: {message}")]
pub struct ProbeConfigError {
    pub path: String,
    pub message: String,
}

/// What to answer kubelet.
#[derive(Debug, PartialEq, Eq)]
pub struct Outcome {
    pub status: StatusCode,
    pub detail: String,
}

impl Probes {
    /// From the JSON the injector wrote (`OUTRIGGER_APP_PROBES`); probes
    /// without a host go to `pod_ip`.
    pub fn parse(json: &str, pod_ip: IpAddr) -> Result<Self, ProbeConfigError> {
        let probes: AppProbes = serde_json::from_str(json).map_err(|e| ProbeConfigError {
            path: String::new(),
            message: format!("not a JSON object of probes: {e}"),
        })?;
        Self::build(&probes, pod_ip)
    }

    pub fn build(probes: &AppProbes, pod_ip: IpAddr) -> Result<Self, ProbeConfigError> {
        let mut by_path = BTreeMap::new();
        let mut tls = None;
        for (path, p) in probes {
            let err = |message: String| ProbeConfigError {
                path: path.clone(),
                message,
            };
            if !path.starts_with(APP_HEALTH_PREFIX) || path.len() == APP_HEALTH_PREFIX.len() {
                return Err(err(format!("the path must start with {APP_HEALTH_PREFIX}")));
            }
            let host = |h: &Option<String>| h.clone().unwrap_or_else(|| pod_ip.to_string());
            let check = match (&p.http_get, &p.tcp_socket, &p.grpc) {
                (Some(h), None, None) => {
                    if h.port == 0 {
                        return Err(err("httpGet.port: 0 is not a port number".into()));
                    }
                    let path = h.path.clone().unwrap_or_else(|| "/".into());
                    if !path.starts_with('/') {
                        return Err(err(format!("httpGet.path: {path:?} is not a path")));
                    }
                    let secure = match h.scheme.as_deref().unwrap_or("HTTP") {
                        "HTTP" => false,
                        "HTTPS" => true,
                        other => {
                            return Err(err(format!(
                                "httpGet.scheme: {other:?} is neither HTTP nor HTTPS"
                            )))
                        }
                    };
                    let mut headers = Vec::new();
                    for (i, hd) in h.http_headers.iter().enumerate() {
                        let name = HeaderName::from_bytes(hd.name.as_bytes()).map_err(|_| {
                            err(format!(
                                "httpGet.httpHeaders[{i}].name: {:?} is not a header name",
                                hd.name
                            ))
                        })?;
                        let value = HeaderValue::from_str(&hd.value).map_err(|_| {
                            err(format!(
                                "httpGet.httpHeaders[{i}].value: not a valid header value"
                            ))
                        })?;
                        headers.push((name, value));
                    }
                    Check::Http {
                        host: host(&h.host),
                        port: h.port,
                        path,
                        headers,
                        tls: secure.then(|| tls.get_or_insert_with(any_certificate).clone()),
                    }
                }
                (None, Some(t), None) => {
                    if t.port == 0 {
                        return Err(err("tcpSocket.port: 0 is not a port number".into()));
                    }
                    Check::Tcp {
                        host: host(&t.host),
                        port: t.port,
                    }
                }
                (None, None, Some(g)) => {
                    if g.port == 0 {
                        return Err(err("grpc.port: 0 is not a port number".into()));
                    }
                    Check::Grpc {
                        host: pod_ip.to_string(),
                        port: g.port,
                        service: g.service.clone().unwrap_or_default(),
                    }
                }
                _ => return Err(err("sets exactly one of httpGet, tcpSocket and grpc".into())),
            };
            by_path.insert(path.clone(), Probe::new(check, p));
        }
        Ok(Self { by_path })
    }

    pub fn get(&self, path: &str) -> Option<&Probe> {
        self.by_path.get(path)
    }

    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.by_path.keys().map(String::as_str)
    }
}

impl Probe {
    fn new(check: Check, p: &AppProbe) -> Self {
        Self {
            check,
            timeout: p
                .timeout_seconds
                .filter(|s| *s > 0)
                .map_or(DEFAULT_TIMEOUT, |s| Duration::from_secs(s.into())),
        }
    }

    /// Runs the probe against the app once.
    pub async fn run(&self) -> Outcome {
        let target = self.target();
        match tokio::time::timeout(self.timeout, self.attempt()).await {
            Ok(Ok(status)) => outcome(status, &target),
            Ok(Err(e)) => Outcome {
                status: StatusCode::SERVICE_UNAVAILABLE,
                detail: format!("{target}: {e}"),
            },
            Err(_) => Outcome {
                status: StatusCode::SERVICE_UNAVAILABLE,
                detail: format!("{target}: no answer within {:?}", self.timeout),
            },
        }
    }

    /// What it probes, as its answers name it (`http://10.0.0.7:8080/healthz`).
    pub fn target(&self) -> String {
        match &self.check {
            Check::Http {
                host,
                port,
                path,
                tls,
                ..
            } => {
                let scheme = if tls.is_some() { "https" } else { "http" };
                format!("{scheme}://{}{path}", authority(host, *port))
            }
            Check::Tcp { host, port } => format!("tcp://{}", authority(host, *port)),
            Check::Grpc {
                host,
                port,
                service,
            } => format!("grpc://{}/{service}", authority(host, *port)),
        }
    }

    /// The app's status (HTTP), or 200 once connected (TCP).
    async fn attempt(&self) -> Result<StatusCode, String> {
        let (host, port) = match &self.check {
            Check::Http { host, port, .. }
            | Check::Tcp { host, port }
            | Check::Grpc { host, port, .. } => (host, *port),
        };
        let tcp = TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| e.to_string())?;
        let (path, headers, tls) = match &self.check {
            Check::Tcp { .. } => return Ok(StatusCode::OK),
            Check::Grpc { service, .. } => {
                let _ = tcp.set_nodelay(true);
                let authority = authority(host, port);
                return grpc_health::check(tcp, &authority, service, self.timeout).await;
            }
            Check::Http {
                path, headers, tls, ..
            } => (path, headers, tls),
        };
        let _ = tcp.set_nodelay(true);
        let mut req = Request::get(path.as_str())
            .header(http::header::HOST, authority(host, port))
            .header(http::header::USER_AGENT, "outrigger-proxy/app-probe")
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        for (name, value) in headers {
            req.headers_mut().insert(name.clone(), value.clone());
        }
        match tls {
            None => send(TokioIo::new(tcp), req).await,
            Some(config) => {
                let name = ServerName::try_from(host.clone())
                    .map_err(|_| format!("{host:?} is not a host name"))?;
                let stream = tokio_rustls::TlsConnector::from(config.clone())
                    .connect(name, tcp)
                    .await
                    .map_err(|e| format!("TLS: {e}"))?;
                send(TokioIo::new(stream), req).await
            }
        }
    }
}

async fn send<T>(io: TokioIo<T>, req: Request<Empty<Bytes>>) -> Result<StatusCode, String>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    Ok(resp.status())
}

/// The gRPC Health Checking Protocol's client side, as kubelet's gRPC
/// probe runs it: `grpc.health.v1.Health/Check` over plaintext HTTP/2.
/// The protobuf messages are a string and an enum: written and read here
/// rather than generated. Public for the fuzz targets (`fuzz/`), which read
/// [`grpc_health::serving_status`] from untrusted bytes.
pub mod grpc_health {
    use bytes::{BufMut, Bytes, BytesMut};
    use http::{Request, StatusCode};
    use http_body_util::{BodyExt, Full, Limited};
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use tokio::net::TcpStream;

    pub const SERVING: u64 = 1;
    /// Far more than a HealthCheckResponse (a few bytes) needs: a port
    /// that streams more is not a health service.
    const MAX_ANSWER_BYTES: usize = 64 * 1024;

    /// Asks `service` ("" for the whole server) over `tcp`, telling the app
    /// the probe's `timeout` as kubelet does; 200 when the app is SERVING,
    /// otherwise what went wrong.
    pub async fn check(
        tcp: TcpStream,
        authority: &str,
        service: &str,
        timeout: std::time::Duration,
    ) -> Result<StatusCode, String> {
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                .await
                .map_err(|e| format!("HTTP/2: {e}"))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = Request::post(format!("http://{authority}/grpc.health.v1.Health/Check"))
            .header(http::header::CONTENT_TYPE, "application/grpc")
            .header(http::header::TE, "trailers")
            .header(http::header::USER_AGENT, "outrigger-proxy/app-probe")
            .header("grpc-timeout", format!("{}m", timeout.as_millis().max(1)))
            .body(Full::new(request(service)))
            .map_err(|e| e.to_string())?;
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        if resp.status() != StatusCode::OK {
            return Err(format!("HTTP status {}", resp.status().as_u16()));
        }
        let headers = resp.headers().clone();
        let body = Limited::new(resp.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?;
        // A trailers-only answer carries grpc-status in its headers.
        let trailers = body.trailers().cloned().unwrap_or_default();
        let field = |name: &str| {
            trailers
                .get(name)
                .or_else(|| headers.get(name))
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        match field("grpc-status").as_deref() {
            Some("0") => {}
            Some(code) => {
                let message = field("grpc-message")
                    .map(|m| decode_message(&m))
                    .unwrap_or_default();
                return Err(format!("grpc-status {code} {message}")
                    .trim_end()
                    .to_string());
            }
            None => return Err("no grpc-status in the answer".into()),
        }
        match serving_status(&body.to_bytes())? {
            SERVING => Ok(StatusCode::OK),
            other => Err(format!("the app says {}", status_name(other))),
        }
    }

    /// A `grpc-message` as sent: percent-encoded UTF-8 (gRPC over HTTP/2).
    /// A `%` not followed by two hex digits is kept as it is, and bytes
    /// that are not UTF-8 become U+FFFD, as the spec asks of receivers.
    pub fn decode_message(raw: &str) -> String {
        let bytes = raw.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            let hex = |b: u8| (b as char).to_digit(16);
            match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
                (b'%', Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
                    out.push((hex(h).unwrap() * 16 + hex(l).unwrap()) as u8);
                    i += 3;
                }
                (b, _, _) => {
                    out.push(b);
                    i += 1;
                }
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    /// A `HealthCheckRequest { service }` in one gRPC message frame.
    pub fn request(service: &str) -> Bytes {
        let mut message = BytesMut::new();
        if !service.is_empty() {
            message.put_u8(0x0a); // field 1, length-delimited
            put_varint(&mut message, service.len() as u64);
            message.put_slice(service.as_bytes());
        }
        let mut frame = BytesMut::with_capacity(5 + message.len());
        frame.put_u8(0); // not compressed
        frame.put_u32(message.len() as u32);
        frame.put_slice(&message);
        frame.freeze()
    }

    /// The `status` of the `HealthCheckResponse` in `body` (one gRPC
    /// message frame); absent means UNKNOWN (0), as in proto3.
    pub fn serving_status(body: &[u8]) -> Result<u64, String> {
        let bad = |why: &str| format!("not a HealthCheckResponse: {why}");
        if body.len() < 5 {
            return Err(bad("no gRPC message"));
        }
        if body[0] != 0 {
            return Err(bad("compressed, though no compression was offered"));
        }
        let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
        let mut m = &body[5..];
        if m.len() != len {
            return Err(bad("the message length does not match the body"));
        }
        let mut status = 0;
        while !m.is_empty() {
            let key = varint(&mut m).ok_or_else(|| bad("truncated field key"))?;
            match (key >> 3, key & 7) {
                (1, 0) => status = varint(&mut m).ok_or_else(|| bad("truncated status"))?,
                (_, 0) => {
                    varint(&mut m).ok_or_else(|| bad("truncated varint"))?;
                }
                (_, 1) => m = m.get(8..).ok_or_else(|| bad("truncated fixed64"))?,
                (_, 2) => {
                    let n = varint(&mut m).ok_or_else(|| bad("truncated length"))?;
                    let n = usize::try_from(n).map_err(|_| bad("length too large"))?;
                    m = m.get(n..).ok_or_else(|| bad("truncated field"))?;
                }
                (_, 5) => m = m.get(4..).ok_or_else(|| bad("truncated fixed32"))?,
                (_, wire) => return Err(bad(&format!("wire type {wire}"))),
            }
        }
        Ok(status)
    }

    pub fn status_name(status: u64) -> String {
        match status {
            0 => "UNKNOWN".into(),
            1 => "SERVING".into(),
            2 => "NOT_SERVING".into(),
            3 => "SERVICE_UNKNOWN".into(),
            n => format!("status {n}"),
        }
    }

    fn put_varint(b: &mut BytesMut, mut v: u64) {
        while v >= 0x80 {
            b.put_u8((v as u8) | 0x80);
            v >>= 7;
        }
        b.put_u8(v as u8);
    }

    fn varint(m: &mut &[u8]) -> Option<u64> {
        let mut v = 0u64;
        for i in 0..10 {
            let (&byte, rest) = m.split_first()?;
            *m = rest;
            v |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn frame(message: &[u8]) -> Vec<u8> {
            let mut f = vec![0];
            f.extend_from_slice(&(message.len() as u32).to_be_bytes());
            f.extend_from_slice(message);
            f
        }

        #[test]
        fn requests_are_health_check_requests() {
            assert_eq!(&request("")[..], &[0, 0, 0, 0, 0]);
            assert_eq!(
                &request("shop.Cart")[..],
                &[&[0, 0, 0, 0, 11, 0x0a, 9][..], b"shop.Cart"].concat()[..]
            );
            // A name longer than 127 bytes takes a two-byte length.
            let long = "s".repeat(200);
            assert_eq!(&request(&long)[5..8], &[0x0a, 0xc8, 0x01]);
            assert_eq!(request(&long).len(), 5 + 3 + 200);
        }

        #[test]
        fn messages_are_percent_decoded() {
            for (raw, decoded) in [
                ("", ""),
                ("plain text, kept", "plain text, kept"),
                ("db%20down", "db down"),
                ("100%25", "100%"),
                ("caf%C3%A9 %e2%9c%93", "café ✓"),
                // Not an escape: kept as sent.
                ("50% off", "50% off"),
                ("%", "%"),
                ("%4", "%4"),
                ("%zz%4g", "%zz%4g"),
                // Not UTF-8 once decoded: replaced, not dropped.
                ("bad %FF byte", "bad \u{fffd} byte"),
                ("cut %C3", "cut \u{fffd}"),
            ] {
                assert_eq!(decode_message(raw), decoded, "{raw:?}");
            }
        }

        #[test]
        fn responses_are_read_as_proto3() {
            assert_eq!(serving_status(&frame(&[0x08, 0x01])), Ok(SERVING));
            assert_eq!(serving_status(&frame(&[0x08, 0x02])), Ok(2));
            // Empty message: the default, UNKNOWN.
            assert_eq!(serving_status(&frame(&[])), Ok(0));
            // Unknown fields of every wire type are skipped; the last
            // status wins.
            let mut m = vec![0x08, 0x02];
            m.extend_from_slice(&[0x10, 0x96, 0x01]); // field 2 varint
            m.extend_from_slice(&[0x19, 1, 2, 3, 4, 5, 6, 7, 8]); // field 3 fixed64
            m.extend_from_slice(&[0x22, 2, b'h', b'i']); // field 4 bytes
            m.extend_from_slice(&[0x2d, 1, 2, 3, 4]); // field 5 fixed32
            m.extend_from_slice(&[0x08, 0x01]);
            assert_eq!(serving_status(&frame(&m)), Ok(SERVING));
        }

        #[test]
        fn broken_responses_say_why_and_never_panic() {
            for (body, why) in [
                (vec![], "no gRPC message"),
                (vec![1, 0, 0, 0, 2, 0x08, 0x01], "compressed"),
                (vec![0, 0, 0, 0, 3, 0x08, 0x01], "length does not match"),
                (frame(&[0x08]), "truncated status"),
                (frame(&[0x0b]), "wire type 3"),
                (frame(&[0x22, 5, b'h']), "truncated field"),
                (frame(&[0x80]), "truncated field key"),
            ] {
                let e = serving_status(&body).unwrap_err();
                assert!(e.contains(why), "{body:?}: {e}");
            }
            // Every prefix and every flipped byte of a real answer.
            let good = frame(&[0x08, 0x01, 0x22, 2, b'h', b'i']);
            for n in 0..good.len() {
                let _ = serving_status(&good[..n]);
            }
            for i in 0..good.len() {
                for bit in 0..8 {
                    let mut b = good.clone();
                    b[i] ^= 1 << bit;
                    let _ = serving_status(&b);
                }
            }
        }

        #[test]
        fn statuses_have_their_names() {
            assert_eq!(status_name(2), "NOT_SERVING");
            assert_eq!(status_name(3), "SERVICE_UNKNOWN");
            assert_eq!(status_name(9), "status 9");
        }
    }
}

/// A TLS client that accepts any server certificate, as kubelet's HTTPS
/// probes do.
fn any_certificate() -> Arc<rustls::ClientConfig> {
    Arc::new(outrigger_identity::tls::any_server_client_config())
}

/// What kubelet gets for the app's `status` (pure).
fn outcome(status: StatusCode, target: &str) -> Outcome {
    let detail = format!("{target}: {}", status.as_u16());
    if status.is_success() || status.is_redirection() {
        Outcome {
            status: StatusCode::OK,
            detail,
        }
    } else {
        Outcome { status, detail }
    }
}

fn authority(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const POD: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7));

    fn build(json: &str) -> Result<Probes, ProbeConfigError> {
        Probes::parse(json, POD)
    }

    #[test]
    fn probes_default_to_the_pod_ip_and_kubelets_timeout() {
        let p = build(
            r#"{"/app-health/web/livez": {"httpGet": {"path": "/healthz", "port": 8080}},
                "/app-health/web/readyz": {"tcpSocket": {"port": 8080}, "timeoutSeconds": 3},
                "/app-health/db/startupz": {"httpGet": {"port": 5433, "host": "127.0.0.1", "scheme": "HTTPS",
                    "httpHeaders": [{"name": "X-Probe", "value": "1"}]}}}"#,
        )
        .unwrap();
        let live = p.get("/app-health/web/livez").unwrap();
        assert_eq!(live.target(), "http://10.0.0.7:8080/healthz");
        assert_eq!(live.timeout, Duration::from_secs(1));
        let ready = p.get("/app-health/web/readyz").unwrap();
        assert_eq!(ready.target(), "tcp://10.0.0.7:8080");
        assert_eq!(ready.timeout, Duration::from_secs(3));
        assert_eq!(
            p.get("/app-health/db/startupz").unwrap().target(),
            "https://127.0.0.1:5433/"
        );
        assert_eq!(p.paths().count(), 3);
        let grpc = build(
            r#"{"/app-health/a/livez": {"grpc": {"port": 9090}},
                "/app-health/a/readyz": {"grpc": {"port": 9090, "service": "shop.Cart"}}}"#,
        )
        .unwrap();
        assert_eq!(
            grpc.get("/app-health/a/livez").unwrap().target(),
            "grpc://10.0.0.7:9090/"
        );
        assert_eq!(
            grpc.get("/app-health/a/readyz").unwrap().target(),
            "grpc://10.0.0.7:9090/shop.Cart"
        );
        assert!(p.get("/app-health/other/livez").is_none());
        let v6 = Probes::parse(
            r#"{"/app-health/a/livez": {"tcpSocket": {"port": 80}}}"#,
            "fd00::1".parse().unwrap(),
        )
        .unwrap();
        assert_eq!(
            v6.get("/app-health/a/livez").unwrap().target(),
            "tcp://[fd00::1]:80"
        );
    }

    #[test]
    fn bad_probe_definitions_are_refused_naming_the_field() {
        let cases = [
            (r#"[1]"#, "not a JSON object of probes"),
            (
                r#"{"/healthz": {"tcpSocket": {"port": 80}}}"#,
                "the path must start with /app-health/",
            ),
            (
                r#"{"/app-health/a": {}}"#,
                "sets exactly one of httpGet, tcpSocket and grpc",
            ),
            (
                r#"{"/app-health/a": {"grpc": {"port": 0}}}"#,
                "grpc.port: 0 is not a port number",
            ),
            (
                r#"{"/app-health/a": {"grpc": {"port": 1}, "tcpSocket": {"port": 1}}}"#,
                "sets exactly one",
            ),
            (
                r#"{"/app-health/a": {"httpGet": {"port": 1}, "tcpSocket": {"port": 1}}}"#,
                "sets exactly one",
            ),
            (
                r#"{"/app-health/a": {"httpGet": {"port": 0}}}"#,
                "httpGet.port: 0 is not a port number",
            ),
            (
                r#"{"/app-health/a": {"httpGet": {"port": 80, "path": "healthz"}}}"#,
                "httpGet.path: \"healthz\" is not a path",
            ),
            (
                r#"{"/app-health/a": {"httpGet": {"port": 80, "scheme": "GOPHER"}}}"#,
                "httpGet.scheme: \"GOPHER\"",
            ),
            (
                r#"{"/app-health/a": {"httpGet": {"port": 80, "httpHeaders": [{"name": "a b", "value": "x"}]}}}"#,
                "httpGet.httpHeaders[0].name",
            ),
            (
                r#"{"/app-health/a": {"tcpSocket": {"port": "http"}}}"#,
                "not a JSON object of probes",
            ),
            (
                r#"{"/app-health/a": {"exec": {"command": ["true"]}}}"#,
                "unknown field `exec`",
            ),
        ];
        for (json, want) in cases {
            let e = build(json).unwrap_err().to_string();
            assert!(e.contains(want), "{json}: {e}");
        }
    }

    #[test]
    fn success_and_redirects_become_200_and_failures_pass_through() {
        let t = "http://10.0.0.7:8080/healthz";
        assert_eq!(outcome(StatusCode::NO_CONTENT, t).status, StatusCode::OK);
        let moved = outcome(StatusCode::FOUND, t);
        assert_eq!(moved.status, StatusCode::OK);
        assert_eq!(moved.detail, "http://10.0.0.7:8080/healthz: 302");
        assert_eq!(
            outcome(StatusCode::INTERNAL_SERVER_ERROR, t).status,
            StatusCode::INTERNAL_SERVER_ERROR
        );
        assert_eq!(
            outcome(StatusCode::NOT_FOUND, t).status,
            StatusCode::NOT_FOUND
        );
    }
}
