//! Test doubles for the layers: a scripted inner service that records what
//! reached it, and requests already routed or sent to an endpoint; the
//! tables they run on come from the policy crate's `testing`.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Uri};
use http_body_util::BodyExt;
use tower::Service;

use crate::metrics::Workload;
use crate::svc::{
    full, Body, ConnectWait, ErrorKind, Fut, ProxyError, Req, Rsp, Served, Upstream, UpstreamProto,
};
use outrigger_proxy_policy::balance::Chosen;
use outrigger_proxy_policy::config::ServiceState;
use outrigger_proxy_policy::pool::PoolLimits;
use outrigger_proxy_policy::retry::TriedEndpoints;
use outrigger_proxy_policy::route::{Backend, Route};
pub use outrigger_proxy_policy::testing::{
    backend_named, config, eject, fault_policy, retry_policy, route_with, service_ref, uri_rewrite,
};

/// What the scripted upstream does with one request.
#[derive(Clone, Copy, Debug)]
pub enum Step {
    Status(u16),
    Error(ErrorKind),
    Delay(Duration, u16),
    /// Opens a connection for the first duration (and says so), then
    /// answers after the second.
    Connected(Duration, Duration, u16),
    /// Never answers.
    Hang,
}

/// A request as the scripted upstream saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// Endpoints of earlier tries (the retry layer's extension).
    pub tried: Vec<SocketAddr>,
    /// The endpoint this call counts as served by.
    pub served: SocketAddr,
    /// The backend's service, when the split layer chose one.
    pub backend: Option<String>,
}

/// The script, the step after it, and what was seen.
type Script = (VecDeque<Step>, Option<Step>, Vec<Seen>);

#[derive(Clone, Default)]
pub struct Scripted {
    state: Arc<Mutex<Script>>,
}

impl Scripted {
    /// Answers with `steps` in order, then 200s.
    pub fn new(steps: impl IntoIterator<Item = Step>) -> Self {
        let s = Self::default();
        s.state.lock().unwrap().0 = steps.into_iter().collect();
        s
    }

    pub fn ok() -> Self {
        Self::default()
    }

    /// Answers every request with `step`.
    pub fn always(step: Step) -> Self {
        let s = Self::default();
        s.state.lock().unwrap().1 = Some(step);
        s
    }

    pub fn calls(&self) -> usize {
        self.state.lock().unwrap().2.len()
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().2.clone()
    }
}

impl Service<Req> for Scripted {
    type Response = Rsp;
    type Error = ProxyError;
    type Future = Fut;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), ProxyError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Fut {
        let state = self.state.clone();
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let body = body
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            let (step, served) = {
                let mut g = state.lock().unwrap();
                let step = g.0.pop_front().or(g.1).unwrap_or(Step::Status(200));
                let n = g.2.len() as u8;
                let served = parts
                    .extensions
                    .get::<Upstream>()
                    .map(|u| u.addr)
                    .unwrap_or_else(|| SocketAddr::from(([10, 0, 0, n.wrapping_add(1)], 80)));
                g.2.push(Seen {
                    method: parts.method.clone(),
                    uri: parts.uri.clone(),
                    headers: parts.headers.clone(),
                    body,
                    tried: parts
                        .extensions
                        .get::<TriedEndpoints>()
                        .map(|t| t.0.clone())
                        .unwrap_or_default(),
                    served,
                    backend: parts
                        .extensions
                        .get::<Backend>()
                        .map(|b| b.service.label.to_string()),
                });
                (step, served)
            };
            let served = Served {
                addr: served,
                peer: Workload::unknown(),
                service: "web.shop".into(),
                mtls: false,
            };
            let mut waited = None;
            let status = match step {
                Step::Status(s) => s,
                Step::Delay(d, s) => {
                    tokio::time::sleep(d).await;
                    s
                }
                Step::Connected(connect, answer, s) => {
                    tokio::time::sleep(connect + answer).await;
                    waited = Some(ConnectWait(connect));
                    s
                }
                Step::Hang => std::future::pending().await,
                Step::Error(kind) => {
                    let mut e = ProxyError::new(kind, "scripted failure");
                    e.served = Some(Box::new(served));
                    return Err(e);
                }
            };
            let mut resp = http::Response::new(full(format!("status {status}")));
            *resp.status_mut() = http::StatusCode::from_u16(status).unwrap();
            resp.extensions_mut().insert(served);
            if let Some(waited) = waited {
                resp.extensions_mut().insert(waited);
            }
            Ok(resp)
        })
    }
}

/// `GET /` on `route`.
pub fn request_on_route(route: &Arc<Route>) -> Req {
    let mut req = Req::new(Body::default());
    *req.uri_mut() = Uri::from_static("/");
    req.headers_mut()
        .insert(http::header::HOST, "web.shop".parse().unwrap());
    req.extensions_mut().insert(route.clone());
    req
}

/// A request already sent to endpoint 0 of a one-endpoint service with
/// these pool limits; and the service, for more requests.
pub fn request_to_endpoint(limits: PoolLimits) -> (Req, Arc<ServiceState>) {
    let mut policy = String::from("trafficPolicy:\n  connectionPool:\n");
    if let Some(n) = limits.max_connections {
        policy.push_str(&format!("    tcp: {{ maxConnections: {n} }}\n"));
    }
    let mut http = Vec::new();
    if let Some(n) = limits.max_pending {
        http.push(format!("http1MaxPendingRequests: {n}"));
    }
    if let Some(n) = limits.max_requests {
        http.push(format!("http2MaxRequests: {n}"));
    }
    if !http.is_empty() {
        policy.push_str(&format!("    http: {{ {} }}\n", http.join(", ")));
    }
    let cfg = config(&[("web", 1, &policy)]);
    let svc = cfg.service(&service_ref("web")).unwrap().clone();
    (request_to_endpoint_with(&svc), svc)
}

pub fn request_to_endpoint_with(svc: &Arc<ServiceState>) -> Req {
    let mut req = Req::new(Body::default());
    let ep = &svc.endpoints[0];
    req.extensions_mut().insert(Upstream {
        tls: None,
        addr: ep.addr,
        proto: UpstreamProto::Http2,
        mark_http1: false,
        keep_absolute: false,
        served: Served {
            addr: ep.addr,
            peer: ep.peer.clone(),
            service: svc.label.clone(),
            mtls: false,
        },
    });
    req.extensions_mut().insert(Chosen {
        service: svc.clone(),
        index: 0,
        trial: false,
    });
    req
}
