//! The admin listener: `/metrics`, `/ready`, `/live`, `/config`,
//! `/endpoints`, `POST /shutdown`, and kubelet's app probes under
//! `/app-health/` ([`crate::probe`]).
//!
//! `/config` is the snapshot in force, unchanged (a valid bootstrap);
//! `/endpoints` is the live state of its endpoints (ejections, load, slow
//! start: [`outrigger_proxy_policy::health`]), which changes with every
//! request.
//!
//! The admin port listens on the pod's IP (kubelet probes it there, and
//! Prometheus scrapes it), so what it tells and does is split as Linkerd
//! splits it: `/config` (the whole snapshot: endpoints, identities,
//! authorization rules), `/endpoints` and `/shutdown` answer loopback
//! peers only, which
//! `kubectl port-forward` is (it connects inside the pod's network
//! namespace); anyone who reaches the pod gets `/metrics`, `/ready`,
//! `/live` and the app probes ([`loopback_only`]).

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::Notify;

use crate::metrics::Metrics;
use crate::probe::Probes;
use crate::svc::{full, Body};
use outrigger_api::health::ENDPOINTS_PATH;
use outrigger_api::probe::APP_HEALTH_PREFIX;
use outrigger_proxy_policy::config::Config;
use outrigger_proxy_policy::health;
use outrigger_runtime::{drain, metrics, serve};

pub struct Admin {
    pub metrics: Arc<Metrics>,
    pub config: Arc<ArcSwap<Config>>,
    pub ready: Arc<AtomicBool>,
    pub shutdown: Arc<Notify>,
    pub probes: Arc<Probes>,
}

impl Admin {
    /// Serves until `stop` fires.
    pub async fn run(self: Arc<Self>, listener: TcpListener, stop: drain::Watch) {
        serve::accept(listener, stop, "admin", move |stream, peer| {
            let this = self.clone();
            async move {
                let svc = hyper::service::service_fn(move |req| {
                    let this = this.clone();
                    async move { Ok::<_, Infallible>(this.handle(req, peer).await) }
                });
                let conn = serve::http1().serve_connection(TokioIo::new(stream), svc);
                if let Err(e) = conn.await {
                    tracing::debug!(%peer, error = %e, "admin connection ended");
                }
            }
        })
        .await
    }

    async fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        let path = req.uri().path();
        if let Err(why) = loopback_only(path, peer.ip()) {
            tracing::debug!(%peer, %path, "admin request refused: loopback only");
            return text(StatusCode::FORBIDDEN, why);
        }
        if path.starts_with(APP_HEALTH_PREFIX) {
            return self.app_probe(req.method(), path).await;
        }
        match (req.method(), path) {
            (&Method::GET, "/metrics") => {
                metrics::answer(req.headers(), self.metrics.encode()).map(full)
            }
            (&Method::GET, "/live") => text(StatusCode::OK, "live\n"),
            (&Method::GET, "/ready") => {
                if self.ready.load(Ordering::Acquire) {
                    text(StatusCode::OK, "ready\n")
                } else {
                    text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                }
            }
            (&Method::GET, "/config") => json(self.config.load().snapshot.to_json()),
            (&Method::GET, ENDPOINTS_PATH) => {
                // The wall clock only dates the ejections' ends.
                let wall = std::time::SystemTime::now();
                let now = tokio::time::Instant::now();
                let health = health::endpoints(&self.config.load(), now, wall);
                json(serde_json::to_string(&health).expect("plain data serializes"))
            }
            (&Method::POST, "/shutdown") => {
                tracing::info!(%peer, "shutdown requested on the admin port");
                self.shutdown.notify_one();
                text(StatusCode::OK, "draining\n")
            }
            (_, "/metrics" | "/live" | "/ready" | "/config" | ENDPOINTS_PATH) => {
                text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n")
            }
            (_, "/shutdown") => text(StatusCode::METHOD_NOT_ALLOWED, "use POST\n"),
            _ => text(
                StatusCode::NOT_FOUND,
                "not found; try /metrics /ready /live /config /endpoints, or POST /shutdown\n",
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

/// The admin paths only a peer inside the pod may use.
const LOOPBACK_ONLY: [&str; 3] = ["/config", ENDPOINTS_PATH, "/shutdown"];

/// Whether `peer` may ask for `path`: `Err` with the 403's body when
/// `path` answers loopback peers only and `peer` is not one. An IPv4 peer
/// of a dual-stack listener (`::ffff:127.0.0.1`) counts as what it is.
fn loopback_only(path: &str, peer: IpAddr) -> Result<(), String> {
    if !LOOPBACK_ONLY.contains(&path) || peer.to_canonical().is_loopback() {
        return Ok(());
    }
    Err(format!(
        "{path} answers loopback peers only (from inside the pod, or through \
         kubectl port-forward); not {peer}\n"
    ))
}

fn json(body: String) -> Response<Body> {
    let mut r = Response::new(full(body));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_and_shutdown_answer_loopback_peers_only() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        for peer in ["127.0.0.1", "127.3.2.1", "::1", "::ffff:127.0.0.1"] {
            for path in ["/config", "/endpoints", "/shutdown", "/metrics", "/ready"] {
                assert_eq!(loopback_only(path, ip(peer)), Ok(()), "{peer} {path}");
            }
        }
        for peer in ["10.0.0.5", "192.0.2.2", "::ffff:10.0.0.5", "fd00::2", "::"] {
            for path in ["/config", "/endpoints", "/shutdown"] {
                let why = loopback_only(path, ip(peer)).unwrap_err();
                assert_eq!(
                    why,
                    format!(
                        "{path} answers loopback peers only (from inside the pod, or \
                         through kubectl port-forward); not {peer}\n"
                    )
                );
            }
            // What kubelet and Prometheus use stays open to the pod's IP;
            // other spellings of a path are not these paths (they are 404).
            for path in [
                "/metrics",
                "/ready",
                "/live",
                "/app-health/web/livez",
                "/config/",
                "/nope",
            ] {
                assert_eq!(loopback_only(path, ip(peer)), Ok(()), "{peer} {path}");
            }
        }
    }
}
