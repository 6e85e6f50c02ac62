//! Upstream servers on fresh loopback ports, standing in for the app
//! behind a proxy: any connection handler ([`serve_tcp`]), any request
//! handler over HTTP/1.1 and HTTP/2 ([`serve_http`]) or
//! over its own TLS ([`serve_https`]), the demo-like [`app`], an app that
//! answers by script and counts its requests ([`counted_app`]), and one that
//! never answers ([`stalling_app`]).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};

use crate::body::{empty, full, Body};

/// Accepts TCP connections on a fresh loopback port and runs `handle` on
/// each, in a task of its own; returns the address. Runs until the test
/// ends. `handle` itself runs as each connection is accepted, before the
/// next accept.
pub async fn serve_tcp<F, Fut>(handle: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(handle(stream));
        }
    });
    addr
}

/// Serves `handler` on a fresh loopback port with HTTP/1.1 and HTTP/2
/// (prior knowledge) and upgrades; returns the address. Runs until the test ends.
pub async fn serve_http<F, Fut>(handler: F) -> SocketAddr
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<Body>> + Send + 'static,
{
    serve_tcp(move |stream| {
        let handler = handler.clone();
        async move {
            let svc = hyper::service::service_fn(move |req| {
                let handler = handler.clone();
                async move { Ok::<_, Infallible>(handler(req).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                .await;
        }
    })
    .await
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
    let addr = serve_tcp(move |tcp| {
        let (acceptor, handler) = (acceptor.clone(), handler.clone());
        async move {
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
        }
    })
    .await;
    (addr, der)
}

/// The name [`serve_https`]'s certificate is for.
pub const APP_TLS_NAME: &str = "app.example";

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
