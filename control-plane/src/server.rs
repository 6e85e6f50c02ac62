//! The config server: one long-lived stream per proxy (the protocol is in
//! `outrigger_api::stream`), plus `/metrics`, `/ready` and a one-shot
//! `/debug/config` for people.
//!
//! Each stream is a task that waits for a new [`Published`] mesh, computes
//! the proxy's config from it, and writes an update only when the content
//! changed (its version is a hash of the content). Translation happens once
//! per change, elsewhere; a stream only filters.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use outrigger_api::stream::{ConfigUpdate, CONFIG_PATH};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use crate::metrics::Metrics;
use crate::translate::{Mesh, ProxyId};

/// A translated mesh, as the streams see it.
pub struct Published {
    pub mesh: Arc<Mesh>,
    /// When the first source change folded into this mesh was seen.
    pub changed_at: Instant,
}

/// Empty lines on an idle stream, so that dead peers and middleboxes show up.
pub const HEARTBEAT: Duration = Duration::from_secs(15);

type Body = BoxBody<Bytes, Infallible>;

#[derive(Clone)]
pub struct Server {
    mesh: watch::Receiver<Option<Arc<Published>>>,
    metrics: Arc<Metrics>,
}

impl Server {
    /// `mesh` holds `None` until the sources have been read once; `/ready`
    /// and the streams wait for it.
    pub fn new(mesh: watch::Receiver<Option<Arc<Published>>>, metrics: Arc<Metrics>) -> Self {
        Self { mesh, metrics }
    }

    /// Serves HTTP/1.1 and HTTP/2 (prior knowledge) until `stop` turns true.
    pub async fn run(self, listener: TcpListener, mut stop: watch::Receiver<bool>) {
        loop {
            let (stream, peer) = tokio::select! {
                _ = async { let _ = stop.wait_for(|s| *s).await; } => break,
                r = listener.accept() => match r {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "config server accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let this = self.clone();
            let mut stop = stop.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let this = this.clone();
                    async move { Ok::<_, Infallible>(this.handle(req)) }
                });
                let mut builder =
                    hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                builder
                    .http1()
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(10));
                builder
                    .http2()
                    .timer(TokioTimer::new())
                    .keep_alive_interval(Some(Duration::from_secs(10)))
                    .keep_alive_timeout(Duration::from_secs(20));
                let conn = builder.serve_connection(TokioIo::new(stream), svc);
                tokio::pin!(conn);
                tokio::select! {
                    r = conn.as_mut() => {
                        if let Err(e) = r {
                            tracing::debug!(%peer, error = %e, "config connection ended");
                        }
                    }
                    _ = async { let _ = stop.wait_for(|s| *s).await; } => {}
                }
            });
        }
    }

    fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let path = req.uri().path();
        match (req.method(), path) {
            (&Method::GET, CONFIG_PATH) => match proxy_of(&req) {
                Ok(id) => self.stream(id),
                Err(e) => text(StatusCode::BAD_REQUEST, e),
            },
            (&Method::GET, "/debug/config") => match proxy_of(&req) {
                Ok(id) => match self.mesh.borrow().clone() {
                    Some(p) => {
                        let update = update_for(&p.mesh, &id);
                        let mut json = serde_json::to_string_pretty(&update).expect("serializes");
                        json.push('\n');
                        json_response(json)
                    }
                    None => text(StatusCode::SERVICE_UNAVAILABLE, "no config yet\n".into()),
                },
                Err(e) => text(StatusCode::BAD_REQUEST, e),
            },
            (&Method::GET, "/ready") => {
                if self.mesh.borrow().is_some() {
                    text(StatusCode::OK, "ready\n".into())
                } else {
                    text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "not ready: sources not read yet\n".into(),
                    )
                }
            }
            (&Method::GET, "/live") => text(StatusCode::OK, "live\n".into()),
            (&Method::GET, "/metrics") => {
                let mut r = Response::new(full(self.metrics.encode()));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static(
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    ),
                );
                r
            }
            _ => text(StatusCode::NOT_FOUND, format!("no such endpoint: {path}\n")),
        }
    }

    /// The never-ending response of one proxy's stream.
    fn stream(&self, id: ProxyId) -> Response<Body> {
        let (tx, rx) = mpsc::channel::<Bytes>(4);
        let mut mesh = self.mesh.clone();
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            metrics.connected_proxies.inc();
            tracing::debug!(namespace = %id.namespace, pod = %id.pod, "proxy connected");
            let mut last_version = String::new();
            // Heartbeats count from the last byte written, not from the last
            // publish: a mesh that changes elsewhere must not starve this stream.
            let mut last_write = tokio::time::Instant::now();
            // The first update answers the connection, not a change: it is
            // left out of the push latency.
            let mut first = true;
            loop {
                let published = mesh.borrow_and_update().clone();
                if let Some(p) = published {
                    let update = update_for(&p.mesh, &id);
                    if update.version != last_version {
                        let mut line = serde_json::to_vec(&update).expect("serializes");
                        line.push(b'\n');
                        let size = line.len();
                        if tx.send(Bytes::from(line)).await.is_err() {
                            break;
                        }
                        last_write = tokio::time::Instant::now();
                        metrics.pushes.inc();
                        metrics.update_bytes.observe(size as f64);
                        if !first {
                            metrics
                                .push_latency
                                .observe(p.changed_at.elapsed().as_secs_f64());
                        }
                        first = false;
                        last_version = update.version;
                    }
                }
                tokio::select! {
                    r = mesh.changed() => if r.is_err() { break },
                    _ = tokio::time::sleep_until(last_write + HEARTBEAT) => {
                        if tx.send(Bytes::from_static(b"\n")).await.is_err() {
                            break;
                        }
                        last_write = tokio::time::Instant::now();
                    }
                    _ = tx.closed() => break,
                }
            }
            metrics.connected_proxies.dec();
            tracing::debug!(namespace = %id.namespace, pod = %id.pod, "proxy disconnected");
        });
        let body = StreamBody::new(futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv()
                .await
                .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
        }));
        let mut r = Response::new(BodyExt::boxed(body));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/x-ndjson"),
        );
        r
    }
}

/// One proxy's update from a translated mesh; its version is a hash of its
/// content, so equal content has an equal version across restarts.
pub fn update_for(mesh: &Mesh, id: &ProxyId) -> ConfigUpdate {
    let config = mesh.config_for(id);
    let content = serde_json::to_vec(&(&config.proxy, &config.services)).expect("serializes");
    ConfigUpdate {
        version: format!("{:016x}", fnv1a(&content)),
        proxy: config.proxy,
        services: config.services,
    }
}

/// FNV-1a, 64 bits: small, and stable across Rust versions and runs.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// `?namespace=NS&pod=NAME` of a stream request.
fn proxy_of(req: &Request<Incoming>) -> Result<ProxyId, String> {
    let query = req.uri().query().unwrap_or("");
    let params: HashMap<&str, &str> = query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .collect();
    let get = |k: &str| -> Result<String, String> {
        match params.get(k) {
            Some(v) if !v.is_empty() => Ok((*v).to_string()),
            _ => Err(format!(
                "missing query parameter {k:?}: use {CONFIG_PATH}?namespace=NS&pod=NAME\n"
            )),
        }
    };
    Ok(ProxyId {
        namespace: get("namespace")?,
        pod: get("pod")?,
    })
}

fn full(s: String) -> Body {
    BodyExt::boxed(Full::new(Bytes::from(s)))
}

fn text(status: StatusCode, s: String) -> Response<Body> {
    let mut r = Response::new(full(s));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn json_response(s: String) -> Response<Body> {
    let mut r = Response::new(full(s));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_is_the_reference_function() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
