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
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
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
            let check = match (&p.http_get, &p.tcp_socket) {
                (Some(h), None) => {
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
                (None, Some(t)) => {
                    if t.port == 0 {
                        return Err(err("tcpSocket.port: 0 is not a port number".into()));
                    }
                    Check::Tcp {
                        host: host(&t.host),
                        port: t.port,
                    }
                }
                _ => return Err(err("sets exactly one of httpGet and tcpSocket".into())),
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

    fn target(&self) -> String {
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
        }
    }

    /// The app's status (HTTP), or 200 once connected (TCP).
    async fn attempt(&self) -> Result<StatusCode, String> {
        let (host, port) = match &self.check {
            Check::Http { host, port, .. } | Check::Tcp { host, port } => (host, *port),
        };
        let tcp = TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| e.to_string())?;
        let Check::Http {
            path, headers, tls, ..
        } = &self.check
        else {
            return Ok(StatusCode::OK);
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

/// A TLS client that accepts any server certificate (signatures still
/// checked), for HTTPS probes: kubelet does not verify the app's
/// certificate either.
fn any_certificate() -> Arc<rustls::ClientConfig> {
    let provider = outrigger_identity::tls::provider();
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("the ring provider supports the default versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    Arc::new(config)
}

#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
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
                "sets exactly one of httpGet and tcpSocket",
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
