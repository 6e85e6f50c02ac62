//! Test harness for cross-crate tests: real upstream servers, real Outrigger
//! proxies (in-process, bound to port 0 on loopback), real clients, and a
//! reader for the proxies' Prometheus output.
//!
//! [`Mesh::start`] builds the two-proxy hop the product is about:
//! `client → outbound proxy → (HTTP/2) → inbound proxy → app`.
//! [`control_plane::ControlPlane`] runs a real control plane on a folder.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use outrigger_api::Snapshot;
use outrigger_proxy::{Options, Proxy};
use tokio::net::TcpListener;

pub mod chart;
pub mod control_plane;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|n| match n {}).boxed_unsync()
}

pub fn empty() -> Body {
    Empty::new().map_err(|n| match n {}).boxed_unsync()
}

/// Serves `handler` on a fresh loopback port with HTTP/1.1 and HTTP/2
/// (prior knowledge) and upgrades; returns the address. Runs until the test ends.
pub async fn serve_http<F, Fut>(handler: F) -> SocketAddr
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<Body>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let handler = handler.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let handler = handler.clone();
                    async move { Ok::<_, Infallible>(handler(req).await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// Serves `handler` over HTTPS (HTTP/1.1) on a fresh loopback port, with a
/// self-signed certificate for `app.example`, as an app doing its own TLS
/// would. Returns the address and the certificate to trust.
pub async fn serve_https<F, Fut>(
    handler: F,
) -> (SocketAddr, rustls::pki_types::CertificateDer<'static>)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<Body>> + Send + 'static,
{
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec![APP_TLS_NAME.to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let der = cert.der().clone();
    let config = rustls::ServerConfig::builder_with_provider(outrigger_identity::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![der.clone()],
            rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, handler) = (acceptor.clone(), handler.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper::service::service_fn(move |req| {
                    let handler = handler.clone();
                    async move { Ok::<_, Infallible>(handler(req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    (addr, der)
}

/// The name [`serve_https`]'s certificate is for.
pub const APP_TLS_NAME: &str = "app.example";

/// One GET over a fresh TLS connection to `addr` asking for
/// [`APP_TLS_NAME`] and trusting `cert` only; returns status and body.
pub async fn https_get(
    addr: SocketAddr,
    cert: &rustls::pki_types::CertificateDer<'static>,
    path: &str,
) -> Result<(u16, String), BoxError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.clone())?;
    let config = rustls::ClientConfig::builder_with_provider(outrigger_identity::tls::provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from(APP_TLS_NAME)?;
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await?;
    let (mut c, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    tokio::spawn(conn);
    let resp = c
        .send_request(
            Request::get(path)
                .header("host", APP_TLS_NAME)
                .body(empty())?,
        )
        .await?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// An upstream that answers like the demo app:
/// `/echo` streams the request body back (with any request trailers),
/// `/bytes/N` sends N bytes, `/headers` lists the request headers it saw,
/// `/status/N` answers with status N, `/slow/MS` answers after MS
/// milliseconds, anything else says who it is.
pub async fn app(name: &'static str) -> SocketAddr {
    serve_http(move |req: Request<Incoming>| async move {
        let path = req.uri().path().to_string();
        if path == "/echo" {
            return Response::new(req.into_body().map_err(Into::into).boxed_unsync());
        }
        if path == "/headers" {
            let mut lines: Vec<String> = req
                .headers()
                .iter()
                .map(|(k, v)| format!("{k}: {}", v.to_str().unwrap_or("?")))
                .collect();
            lines.push(format!("version: {:?}", req.version()));
            lines.push(format!("uri: {}", req.uri()));
            return Response::new(full(lines.join("\n")));
        }
        if let Some(n) = path
            .strip_prefix("/bytes/")
            .and_then(|n| n.parse::<usize>().ok())
        {
            return Response::new(full(vec![b'x'; n]));
        }
        if let Some(code) = path
            .strip_prefix("/status/")
            .and_then(|n| n.parse::<u16>().ok())
        {
            let mut r = Response::new(full(format!("status {code}")));
            *r.status_mut() = http::StatusCode::from_u16(code).unwrap();
            return r;
        }
        if let Some(ms) = path
            .strip_prefix("/slow/")
            .and_then(|n| n.parse::<u64>().ok())
        {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            return Response::new(full(format!("slow {name}")));
        }
        Response::new(full(format!("hello from {name}")))
    })
    .await
}

/// How [`counted_app`] answers its `n`-th request (0-based).
#[derive(Clone, Copy, Debug)]
pub enum Answer {
    Status(u16),
    /// Wait this many milliseconds, then answer with the status.
    Slow(u64, u16),
    /// Never answer.
    Hang,
}

/// An app that counts its requests and answers each as `script(n, &req)`
/// says; the body names the app. Returns its address and the count.
pub async fn counted_app<F>(
    name: &'static str,
    script: F,
) -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>)
where
    F: Fn(usize, &Request<Incoming>) -> Answer + Clone + Send + Sync + 'static,
{
    use std::sync::atomic::{AtomicUsize, Ordering};
    let hits = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let addr = serve_http(move |req: Request<Incoming>| {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        let answer = script(n, &req);
        async move {
            let status = match answer {
                Answer::Status(s) => s,
                Answer::Slow(ms, s) => {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    s
                }
                Answer::Hang => std::future::pending().await,
            };
            // Read the request body, as a real app would.
            let _ = req.into_body().collect().await;
            let mut r = Response::new(full(format!("{name} {status}")));
            *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
            r
        }
    })
    .await;
    (addr, hits)
}

/// An app that never answers: each request it receives is announced on
/// the returned channel, then held for ten minutes (a client that gives up
/// first leaves it pending).
pub async fn stalling_app() -> (SocketAddr, tokio::sync::mpsc::Receiver<()>) {
    let (arrived_tx, arrived) = tokio::sync::mpsc::channel::<()>(1);
    let addr = serve_http(move |_req| {
        let arrived_tx = arrived_tx.clone();
        async move {
            let _ = arrived_tx.send(()).await;
            tokio::time::sleep(Duration::from_secs(600)).await;
            Response::new(empty())
        }
    })
    .await;
    (addr, arrived)
}

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

/// Two proxies in front of one app: `client → outbound → inbound → app`.
pub struct Mesh {
    pub client: Proxy,
    pub server: Proxy,
    pub app: SocketAddr,
}

impl Mesh {
    pub async fn start(app: SocketAddr) -> Self {
        Self::start_with(app, |_| {}, |_| {}).await
    }

    /// Starts the pair, letting the test edit each snapshot first.
    pub async fn start_with(
        app: SocketAddr,
        edit_server: impl FnOnce(&mut Snapshot),
        edit_client: impl FnOnce(&mut Snapshot),
    ) -> Self {
        let mut s = server_snapshot(app);
        edit_server(&mut s);
        let server = Proxy::start(s, Options::default())
            .await
            .expect("server proxy starts");
        let inbound = server.listener_addr("inbound").unwrap();
        let mut c = client_snapshot(&[(inbound, true)]);
        edit_client(&mut c);
        let client = Proxy::start(c, Options::default())
            .await
            .expect("client proxy starts");
        Self {
            client,
            server,
            app,
        }
    }

    /// Where the app's client sends its traffic.
    pub fn outbound(&self) -> SocketAddr {
        self.client.listener_addr("outbound").unwrap()
    }

    pub fn inbound(&self) -> SocketAddr {
        self.server.listener_addr("inbound").unwrap()
    }
}

/// An HTTP/1.1 connection to `addr`.
pub async fn http1(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<Body> {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn.with_upgrades());
    sender
}

/// An HTTP/2 (prior knowledge) connection to `addr`.
pub async fn http2(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<Body> {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    sender
}

/// One GET over a fresh HTTP/1.1 connection; returns status and body.
pub async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    try_get(addr, path).await.unwrap()
}

/// [`get`] that reports failure (refused, closed, reset) instead of panicking.
pub async fn try_get(addr: SocketAddr, path: &str) -> Result<(u16, String), BoxError> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut c, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let resp = c
        .send_request(
            Request::get(path)
                .header("host", "web.shop")
                .body(empty())?,
        )
        .await?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Raw bytes of one HTTP/1.1 GET on a fresh TCP connection to `addr`, and
/// whatever came back before the peer closed (empty when it closed at once).
pub async fn raw_get(addr: SocketAddr) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    // A peer that closes at once may refuse the write too.
    let _ = s
        .write_all(b"GET / HTTP/1.1\r\nhost: web\r\nconnection: close\r\n\r\n")
        .await;
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    out
}

/// An identity for ServiceAccount `sa` in namespace `ns`, already holding
/// an hour-long certificate from `ca` (no control plane involved).
pub fn held_identity(
    ca: &outrigger_identity::Ca,
    ns: &str,
    sa: &str,
) -> std::sync::Arc<outrigger_proxy::identity::Identity> {
    use outrigger_identity::{SpiffeId, WorkloadKey};
    use outrigger_proxy::identity::{Identity, IdentityConfig};
    let td = "cluster.local";
    let id = SpiffeId::new(td, ns, sa).unwrap();
    let identity = Identity::new(IdentityConfig {
        id: id.clone(),
        token_file: "/nonexistent".into(),
        control_plane: SpiffeId::new(td, "outrigger-system", "outrigger-control-plane").unwrap(),
        roots: ca.roots().to_vec(),
    })
    .unwrap();
    let key = WorkloadKey::generate().unwrap();
    let issued = ca
        .issue(
            &key.csr(&id).unwrap(),
            &id,
            Duration::from_secs(3600),
            std::time::SystemTime::now(),
        )
        .unwrap();
    identity.cert.set(key.certified(issued.chain).unwrap().1);
    identity.mark_held();
    identity
}

/// Whether a proxy's admin port answers `/ready` with 200.
pub async fn ready(proxy: &Proxy) -> bool {
    get(proxy.admin_addr, "/ready").await.0 == 200
}

/// The Prometheus text from a proxy's admin port.
pub async fn scrape(proxy: &Proxy) -> String {
    get(proxy.admin_addr, "/metrics").await.1
}

/// The value of the sample `name{...}` whose labels include every pair in
/// `labels`, summed over all such samples; 0 when there is none.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = series.split_once('{').unwrap_or((series, "}"));
            if n != name {
                return None;
            }
            let rest = rest.strip_suffix('}')?;
            // Whole `key="value"` pairs only: `,` before each key, so that
            // `workload` never matches inside `source_workload`.
            let rest = format!(",{rest}");
            labels
                .iter()
                .all(|(k, v)| rest.contains(&format!(",{k}=\"{v}\"")))
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

/// Four clients on long-lived connections to `addr` (two HTTP/1.1, two
/// HTTP/2), each sending `GET /` for `web.shop` until `stop`; each returns
/// (answered 200, failed). [`tally`] adds them up.
pub fn keep_requesting(
    addr: SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Vec<tokio::task::JoinHandle<(usize, usize)>> {
    (0..4)
        .map(|i| {
            let stop = stop.clone();
            tokio::spawn(async move {
                let (mut ok, mut failed) = (0, 0);
                let mut h1 = http1(addr).await;
                let mut h2 = http2(addr).await;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let req = Request::get("/")
                        .header("host", "web.shop")
                        .body(empty())
                        .unwrap();
                    let resp = if i % 2 == 0 {
                        h1.send_request(req).await
                    } else {
                        h2.send_request(req).await
                    };
                    match resp {
                        Ok(r) if r.status() == 200 => {
                            r.into_body().collect().await.unwrap();
                            ok += 1;
                        }
                        _ => failed += 1,
                    }
                }
                (ok, failed)
            })
        })
        .collect()
}

/// Waits for [`keep_requesting`]'s clients: (answered 200, failed) in all.
pub async fn tally(clients: Vec<tokio::task::JoinHandle<(usize, usize)>>) -> (usize, usize) {
    let (mut ok, mut failed) = (0, 0);
    for c in clients {
        let (o, f) = c.await.unwrap();
        ok += o;
        failed += f;
    }
    (ok, failed)
}

/// A binary of the workspace, in the target directory of the running test.
/// Cargo builds a package's binaries when its integration tests are
/// selected, and the proxy, injector and control-plane packages have some
/// (`*/tests/`), so `cargo test --workspace` builds all three before running
/// any test. (`cargo test -p outrigger-tests` alone may find a stale one.)
pub fn workspace_bin(name: &str) -> Option<std::path::PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?.parent()?;
    let path = dir.join(name);
    path.exists().then_some(path)
}

/// Polls `check` every 10 ms until it returns true or `limit` passes.
pub async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::metric;

    #[test]
    fn metric_sums_matching_samples() {
        let text = "# HELP x y\nx_total{a=\"1\",b=\"2\"} 3\nx_total{a=\"1\",b=\"3\"} 4\ny_total{a=\"1\"} 9\n";
        assert_eq!(metric(text, "x_total", &[("a", "1")]), 7.0);
        assert_eq!(metric(text, "x_total", &[("b", "3")]), 4.0);
        assert_eq!(metric(text, "x_total", &[("b", "9")]), 0.0);
        assert_eq!(metric(text, "z_total", &[]), 0.0);
        let text = "w_total{source_workload=\"a\",destination_workload=\"b\"} 1\n";
        assert_eq!(metric(text, "w_total", &[("workload", "a")]), 0.0);
        assert_eq!(
            metric(text, "w_total", &[("destination_workload", "b")]),
            1.0
        );
    }
}
