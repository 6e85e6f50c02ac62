//! The admin listener: `/metrics`, `/ready`, `/live`, `/config`,
//! `POST /shutdown` (from localhost only), and kubelet's app probes under
//! `/app-health/` ([`crate::probe`]).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};

use crate::config::Config;
use crate::http::{full, Body};
use crate::metrics::Metrics;
use crate::probe::Probes;
use outrigger_api::exposition::Format;
use outrigger_api::probe::APP_HEALTH_PREFIX;

pub struct Admin {
    pub metrics: Arc<Metrics>,
    pub config: Arc<ArcSwap<Config>>,
    pub ready: Arc<AtomicBool>,
    pub shutdown: Arc<Notify>,
    pub probes: Arc<Probes>,
}

impl Admin {
    /// Serves until `stop` turns true.
    pub async fn run(self: Arc<Self>, listener: TcpListener, mut stop: watch::Receiver<bool>) {
        loop {
            let (stream, peer) = tokio::select! {
                _ = async { let _ = stop.wait_for(|s| *s).await; } => break,
                r = listener.accept() => match r {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "admin accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let this = self.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let this = this.clone();
                    async move { Ok::<_, Infallible>(this.handle(req, peer).await) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(std::time::Duration::from_secs(10))
                    .serve_connection(TokioIo::new(stream), svc);
                if let Err(e) = conn.await {
                    tracing::debug!(%peer, error = %e, "admin connection ended");
                }
            });
        }
    }

    async fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        let path = req.uri().path();
        if path.starts_with(APP_HEALTH_PREFIX) {
            return self.app_probe(req.method(), path).await;
        }
        match (req.method(), path) {
            (&Method::GET, "/metrics") => {
                let format = Format::negotiate(
                    req.headers()
                        .get_all(header::ACCEPT)
                        .iter()
                        .filter_map(|v| v.to_str().ok()),
                );
                match format.render(self.metrics.encode()) {
                    Ok(body) => {
                        let mut r = Response::new(full(body));
                        r.headers_mut().insert(
                            header::CONTENT_TYPE,
                            HeaderValue::from_static(format.content_type()),
                        );
                        r
                    }
                    Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
                }
            }
            (&Method::GET, "/live") => text(StatusCode::OK, "live\n"),
            (&Method::GET, "/ready") => {
                if self.ready.load(Ordering::Acquire) {
                    text(StatusCode::OK, "ready\n")
                } else {
                    text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                }
            }
            (&Method::GET, "/config") => {
                let mut r = Response::new(full(self.config.load().snapshot.to_json()));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                r
            }
            (&Method::POST, "/shutdown") => {
                if peer.ip().is_loopback() {
                    tracing::info!(%peer, "shutdown requested on the admin port");
                    self.shutdown.notify_one();
                    text(StatusCode::OK, "draining\n")
                } else {
                    text(
                        StatusCode::FORBIDDEN,
                        "shutdown is only accepted from localhost\n",
                    )
                }
            }
            (_, "/metrics" | "/live" | "/ready" | "/config") => {
                text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n")
            }
            (_, "/shutdown") => text(StatusCode::METHOD_NOT_ALLOWED, "use POST\n"),
            _ => text(
                StatusCode::NOT_FOUND,
                "not found; try /metrics /ready /live /config, or POST /shutdown\n",
            ),
        }
    }
}

impl Admin {
    /// Runs the app probe kubelet asks for and answers with its outcome.
    async fn app_probe(&self, method: &Method, path: &str) -> Response<Body> {
        if method != Method::GET && method != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
        }
        let Some(probe) = self.probes.get(path) else {
            let known: Vec<&str> = self.probes.paths().collect();
            let body = format!(
                "no app probe at {path}; configured: {}\n",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(" ")
                }
            );
            return text(StatusCode::NOT_FOUND, body);
        };
        let outcome = probe.run().await;
        if !outcome.status.is_success() {
            tracing::debug!(%path, detail = %outcome.detail, "app probe failed");
        }
        text(outcome.status, format!("{}\n", outcome.detail))
    }
}

fn text(status: StatusCode, body: impl Into<bytes::Bytes>) -> Response<Body> {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}
