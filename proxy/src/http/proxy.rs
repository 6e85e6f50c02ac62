//! The hyper-facing service of an accepted HTTP connection: it records
//! every request (metrics, access log) and hands it to the connection's
//! request stack ([`super::stack`]): outbound to a service, inbound to the
//! app, or straight through. What the stack refuses becomes the proxy's own
//! answer, with its response flag.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use http::{Method, Request, Response, Version};
use hyper::body::Incoming;
use outrigger_api::ServiceRef;
use prometheus_client::metrics::counter::Counter;
use tokio::time::Instant;
use tower::util::BoxCloneSyncService;

use super::body::{Record, RequestBody, ResponseBody};
use super::client::Client;
use super::hold::{ConnGuard, Hold};
use crate::access_log::{AccessLog, Logger, RequestHeaders};
use crate::headers::{ORIG_PROTO, SOURCE_WORKLOAD};
use crate::identity::Identity;
use crate::metrics::{
    Direction, GrpcStatus, Metrics, Name, RequestLabels, ResponseFlag, SecurityPolicy,
    TrafficLabels, Workload,
};
use crate::svc::PeerIdentity;
use crate::svc::{ErrorKind, Flagged, ProxyError, RouteName, Served};
use crate::svc::{Req, Rsp};
use crate::svc::{Upstream, UpstreamProto};
use outrigger_proxy_policy::chance::Chance;
use outrigger_runtime::drain;

/// Process-wide pieces every request handler shares.
pub struct Shared {
    pub client: Client,
    /// This proxy's identity: with one, the inbound side accepts mutual TLS.
    pub identity: Option<Arc<Identity>>,
    pub metrics: Arc<Metrics>,
    /// The access log's writer, when it is on.
    pub access_log: Option<Arc<Logger>>,
    pub chance: Chance,
    /// False until the first config is applied, for a proxy that waits for
    /// the control plane: its inbound side then takes nothing, as the
    /// bootstrap knows neither the workload's mTLS mode nor its policies.
    pub configured: Arc<std::sync::atomic::AtomicBool>,
    /// This proxy's SPIFFE ID as its certificate proves it (the
    /// `source_principal` of its outbound mutual TLS hops and the
    /// `destination_principal` of its inbound ones).
    pub principal: Option<Name>,
    /// Bumped by every applied config that changes the inbound policies
    /// (mTLS mode, AuthorizationPolicies), so that open connections are
    /// held to them (see `http::hold::Hold`).
    pub inbound_changes: Arc<tokio::sync::watch::Sender<u64>>,
    /// Distributed tracing, when a collector is set.
    pub tracer: Option<Arc<crate::trace::Tracer>>,
}

impl Shared {
    /// This proxy's workload for the labels: from the config, with the
    /// principal its certificate proves.
    pub fn local_workload(&self, cfg: &outrigger_proxy_policy::config::Config) -> Workload {
        let mut w = cfg.proxy.clone();
        if let Some(p) = &self.principal {
            w.principal = p.clone();
        }
        w
    }
}

/// Where a connection's requests go, decided when it was accepted.
#[derive(Clone, Debug)]
pub enum Target {
    /// Outbound to a known service port: each request is routed.
    Service(ServiceRef),
    /// Outbound to an address the snapshot does not know: forwarded as is.
    Passthrough(SocketAddr),
    /// Inbound to the local app.
    App(SocketAddr),
}

/// Per-connection context of the handler.
pub struct ConnContext {
    pub direction: Direction,
    pub target: Target,
    /// The target service's label (`unknown` for the app and passthrough),
    /// until a request learns the service of its endpoint.
    pub service: Name,
    pub proxy: Workload,
    pub peer: SocketAddr,
    /// The peer proxy's identity, when it connected over mutual TLS.
    pub peer_identity: Option<PeerIdentity>,
    /// The peer proxy's workload: the one workload the configuration shows
    /// its identity serving, or, where it shows several, the one of them
    /// its first request on this mutual TLS connection named
    /// ([`SOURCE_WORKLOAD`]).
    pub peer_workload: std::sync::OnceLock<Name>,
    /// The workloads the configuration shows the peer's identity serving.
    pub peer_workloads: Vec<Name>,
    pub drain: drain::Watch,
    /// What a later config may refuse this connection for (None: nothing).
    pub hold: Option<Arc<Hold>>,
    /// Keeps the connection's slot (and its close uncounted) while anything
    /// still serves it, including a tunnel spliced after an upgrade.
    pub _guard: ConnGuard,
}

pub type Stack = BoxCloneSyncService<Req, Rsp, ProxyError>;

#[derive(Clone)]
pub struct HttpProxy {
    pub ctx: Arc<ConnContext>,
    pub shared: Arc<Shared>,
    pub stack: Stack,
}

/// Where a request was last sent, set by the bottom of the stack as it
/// sends (request extension): a request the client abandons before the
/// response head is still labelled with where it went.
#[derive(Clone, Default)]
pub struct SentTo(Arc<std::sync::Mutex<Option<Served>>>);

impl SentTo {
    pub fn set(&self, served: &Served) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(served.clone());
    }

    fn take(&self) -> Option<Served> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// A request waiting for its response head; records itself if dropped
/// (the client went away: `DC`), labelled with where it was sent.
struct InFlight {
    record: Option<Record>,
    ctx: Arc<ConnContext>,
    sent: SentTo,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(mut r) = self.record.take() {
            if let Some(s) = self.sent.take() {
                label_served(&self.ctx, &mut r, s);
            }
            r.finish(false);
        }
    }
}

/// Labels a request (metrics, access log) with the endpoint it was served by.
fn label_served(ctx: &ConnContext, record: &mut Record, s: Served) {
    record.labels.traffic = traffic(ctx, &s.peer, s.service);
    if s.mtls {
        record.labels.traffic.connection_security_policy = SecurityPolicy::MutualTls;
    }
    record.labels.traffic = record.labels.traffic.clone().proven();
    if let Some(a) = record.access.as_mut() {
        a.upstream = Some(s.addr);
    }
    if let Some(span) = record.span.as_mut() {
        span.upstream = Some(s.addr);
    }
}

/// The labels of a hop between this proxy's workload and `peer`, before
/// [`TrafficLabels::proven`] (the hop's own TLS may still add mutual TLS).
fn traffic(ctx: &ConnContext, peer: &Workload, service: Name) -> TrafficLabels {
    match &ctx.peer_identity {
        None => TrafficLabels::new(ctx.direction, &ctx.proxy, peer, service),
        // A peer proxy over mutual TLS: its certificate says who it is.
        Some(id) => {
            let peer = Workload {
                workload: ctx.peer_workload.get().unwrap_or(&peer.workload).clone(),
                namespace: id.namespace.clone(),
                principal: id.uri.clone(),
            };
            let mut t = TrafficLabels::new(ctx.direction, &ctx.proxy, &peer, service);
            t.connection_security_policy = SecurityPolicy::MutualTls;
            t
        }
    }
}

impl hyper::service::Service<Request<Incoming>> for HttpProxy {
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.handle(req).await) })
    }
}

impl HttpProxy {
    async fn handle(&self, req: Request<Incoming>) -> Response<ResponseBody> {
        if self.ctx.peer_workloads.len() > 1 && self.ctx.peer_workload.get().is_none() {
            if let Some(v) = req.headers().get(&SOURCE_WORKLOAD) {
                let named = self
                    .ctx
                    .peer_workloads
                    .iter()
                    .find(|w| w.as_bytes() == v.as_bytes());
                if let Some(name) = named {
                    let _ = self.ctx.peer_workload.set(name.clone());
                }
            }
        }
        let mut req = req;
        // The request id is for the access log and the spans: made for
        // every request while the log is on, and for each sampled request
        // by the tracer, so that otherwise a request costs nothing more.
        if self.shared.access_log.is_some() {
            crate::trace::ensure_request_id(req.headers_mut(), &self.shared.chance);
        }
        let span = match &self.shared.tracer {
            None => None,
            Some(t) => t.begin(
                self.ctx.direction,
                &mut req,
                self.ctx.peer,
                self.ctx.peer_identity.is_some(),
                &self.shared.chance,
            ),
        };
        let client_version = req.version();
        let request_bytes = Counter::default();
        let mut record = self.record(
            || {
                let headers = RequestHeaders::of(req.uri(), req.headers());
                (req.method().clone(), Some(req.uri().clone()), headers)
            },
            client_version,
            request_bytes.clone(),
        );
        record.span = span;

        record.labels.grpc_response_status = GrpcStatus::of_request(req.headers());

        if client_version == Version::HTTP_2 && req.method() == Method::CONNECT {
            let err = ProxyError::new(
                ErrorKind::NotImplemented,
                "CONNECT over HTTP/2 is not supported; use HTTP/1.1 CONNECT",
            );
            return self.respond(Err(err), record, client_version);
        }

        let mut req = RequestBody::wrap(req, request_bytes);
        if let Some(id) = &self.ctx.peer_identity {
            req.extensions_mut().insert(id.clone());
        }
        if let Some(up) = self.fixed_upstream(&req) {
            if let Some(a) = record.access.as_mut() {
                a.upstream = Some(up.addr);
            }
            if let Some(span) = record.span.as_mut() {
                span.upstream = Some(up.addr);
            }
            req.extensions_mut().insert(up);
        }
        // Recorded as `DC` with code 0 if the client gives up before the
        // response head arrives (this future is dropped).
        let sent = SentTo::default();
        req.extensions_mut().insert(sent.clone());
        let in_flight = InFlight {
            record: Some(record),
            ctx: self.ctx.clone(),
            sent,
        };
        // Every layer is always ready (see `stack`), so no `poll_ready`.
        let result = tower::Service::call(&mut self.stack.clone(), req).await;
        let mut in_flight = in_flight;
        let record = in_flight.record.take().expect("taken once");
        self.respond(result, record, client_version)
    }

    /// Labels the request with what its way down learned, and wraps the
    /// response (or the proxy's own answer) so that it is recorded at its end.
    fn respond(
        &self,
        result: Result<Rsp, ProxyError>,
        mut record: Record,
        client_version: Version,
    ) -> Response<ResponseBody> {
        let (resp, flag, served, route) = match result {
            Ok(mut resp) => {
                let flag = resp
                    .extensions()
                    .get::<Flagged>()
                    .map_or(ResponseFlag::None, |f| f.0);
                let served = resp.extensions_mut().remove::<Served>();
                let route = resp.extensions_mut().remove::<RouteName>();
                if let (Some(a), Some(n)) = (record.access.as_mut(), resp.extensions().get()) {
                    a.attempts = Some(*n);
                }
                if let Some(s) = record.span.as_mut() {
                    if let Some(n) = resp.extensions().get::<crate::svc::Attempts>() {
                        s.attempts = n.0;
                    }
                }
                (resp, flag, served, route)
            }
            Err(e) => {
                tracing::debug!(error = %e, "request answered by the proxy");
                if let (Some(a), Some(n)) = (record.access.as_mut(), e.attempts) {
                    a.attempts = Some(n);
                }
                if let (Some(s), Some(n)) = (record.span.as_mut(), e.attempts) {
                    s.attempts = n.0;
                }
                let resp = e.to_response(crate::svc::response_version(client_version));
                (
                    resp,
                    ResponseFlag::from(e.kind),
                    e.served.map(|s| *s),
                    e.route.map(|r| *r),
                )
            }
        };
        if let Some(s) = served {
            label_served(&self.ctx, &mut record, s);
        }
        if let Some(a) = record.access.as_mut() {
            a.route = route.as_ref().map(|r| r.route.clone());
        }
        record.route = route;
        record.labels.response_code = resp.status().as_u16();
        record.labels.response_flags = flag;
        if let Some(v) = resp.headers().get("grpc-status") {
            record.labels.grpc_response_status = GrpcStatus::parse(v.as_bytes());
        }
        // The hop's byte counters, counted as the response passes; in
        // Istio's format the sizes are recorded at the end, by the
        // request's labels (`Record::finish`), and nothing counts here.
        let response_bytes = match &self.shared.metrics.sizes {
            Some(_) => None,
            None => {
                let bytes = self
                    .shared
                    .metrics
                    .bytes
                    .get_or_create(&record.labels.traffic)
                    .clone();
                let counter = bytes.response();
                record.bytes = Some(bytes);
                Some(counter)
            }
        };
        resp.map(|b| ResponseBody::new(b, response_bytes, record))
    }

    /// Records a request hyper refused while reading it, having answered it
    /// itself (400 malformed, 414 URI too long, 431 head too large): counted
    /// and logged like every other local reply, flagged `DPE`.
    pub fn record_unreadable(&self, status: http::StatusCode) {
        let unread = || {
            let method = Method::from_bytes(b"-").expect("a token");
            (method, None, RequestHeaders::default())
        };
        let mut record = self.record(unread, Version::HTTP_11, Counter::default());
        record.labels.response_code = status.as_u16();
        record.labels.response_flags = ResponseFlag::DownstreamProtocolError;
        record.finish(true);
    }

    /// What is recorded of a request that starts now on this connection,
    /// before its way down says more: where it came from, not yet where it
    /// went. `what` (method, URI, what the log takes from the headers; no
    /// URI for a request that could not be read) is asked only when the
    /// access log is on.
    fn record(
        &self,
        what: impl FnOnce() -> (Method, Option<http::Uri>, RequestHeaders),
        version: Version,
        request_bytes: Counter,
    ) -> Record {
        let access = self.shared.access_log.as_ref().map(|logger| {
            let (method, uri, request) = what();
            Box::new(AccessLog {
                logger: logger.clone(),
                start: std::time::SystemTime::now(),
                method,
                uri,
                version,
                request,
                peer: self.ctx.peer,
                peer_identity: self.ctx.peer_identity.as_ref().map(|p| p.uri.clone()),
                upstream: None,
                route: None,
                attempts: None,
                bytes_sent: 0,
            })
        });
        Record {
            metrics: self.shared.metrics.clone(),
            labels: RequestLabels {
                traffic: traffic(&self.ctx, &Workload::unknown(), self.ctx.service.clone())
                    .proven(),
                response_code: 0,
                grpc_response_status: GrpcStatus(None),
                response_flags: ResponseFlag::None,
            },
            start: Instant::now(),
            access,
            route: None,
            request_bytes,
            bytes: None,
            response_size: 0,
            span: None,
        }
    }

    /// The upstream of a connection that is not routed: the app (inbound) or
    /// the original destination (passthrough).
    fn fixed_upstream(&self, req: &Req) -> Option<Upstream> {
        let client_proto = if req.version() == Version::HTTP_2 {
            UpstreamProto::Http2
        } else {
            UpstreamProto::Http1
        };
        let (addr, proto, keep_absolute) = match &self.ctx.target {
            Target::Service(_) => return None,
            Target::Passthrough(addr) => (*addr, client_proto, true),
            Target::App(addr) => {
                // A request a peer proxy carried over HTTP/2 for an HTTP/1
                // client goes to the app as HTTP/1.
                let from_h1_client = req.headers().get(&ORIG_PROTO).is_some();
                let proto = if from_h1_client {
                    UpstreamProto::Http1
                } else {
                    client_proto
                };
                (*addr, proto, false)
            }
        };
        Some(Upstream {
            addr,
            tls: None,
            proto,
            mark_http1: false,
            keep_absolute,
            served: Served {
                addr,
                peer: Workload::unknown(),
                // The app's service (inbound), `unknown` (passthrough).
                service: self.ctx.service.clone(),
                mtls: false,
            },
        })
    }
}

/// The request stack for a connection to `target`.
pub fn stack_for(
    target: &Target,
    listener: Name,
    config: Arc<arc_swap::ArcSwap<outrigger_proxy_policy::config::Config>>,
    shared: &Shared,
    conn: Arc<dyn Send + Sync>,
    hold: Option<Arc<Hold>>,
) -> Stack {
    let tunnel_idle = config.load().limits.tcp_idle_timeout;
    let source = Some(config.load().proxy.workload.clone())
        .filter(|w| **w != *"unknown")
        .and_then(|w| http::HeaderValue::from_str(&w).ok());
    let forward =
        super::forward::Forward::new(shared.client.clone(), conn, hold, tunnel_idle, source);
    match target {
        Target::Service(r) => BoxCloneSyncService::new(super::stack::outbound(
            config,
            r.clone(),
            shared.metrics.clone(),
            shared.chance.clone(),
            forward,
        )),
        Target::App(_) => {
            BoxCloneSyncService::new(super::stack::inbound(config, listener, forward))
        }
        Target::Passthrough(_) => {
            BoxCloneSyncService::new(super::stack::passthrough(config, forward))
        }
    }
}
