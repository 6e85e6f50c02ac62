//! The request handler: one HTTP request from a client to its upstream.
//!
//! For each request: choose the upstream (an endpoint of the target service,
//! the original destination, or the local app), pick the upstream protocol
//! (HTTP/2 to every meshed peer, otherwise what the client spoke), rewrite the
//! request for that hop, send it, and meter the response until its end.
//! Upgrades and CONNECT take a dedicated HTTP/1 connection and are spliced.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use http::header::{CONNECTION, UPGRADE};
use http::uri::Authority;
use http::{HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::time::Instant;

use super::body::{CountedBody, Record, ResponseBody};
use super::client::{Client, UpstreamProto};
use super::headers::{self, ORIG_PROTO, ORIG_PROTO_HTTP1, PROXY_ERROR};
use super::{full, Body};
use crate::access_log::AccessLog;
use crate::config::ServiceState;
use crate::drain;
use crate::listener::ConnGuard;
use crate::metrics::{
    unknown, Direction, GrpcStatus, Metrics, Name, RequestLabels, ResponseFlag, TrafficLabels,
    Workload,
};

/// Process-wide pieces every request handler shares.
pub struct Shared {
    pub client: Client,
    pub metrics: Arc<Metrics>,
    pub access_log: bool,
}

/// Where a connection's requests go, decided when it was accepted.
#[derive(Clone)]
pub enum Target {
    /// Outbound to a known service: each request picks one of its endpoints.
    Service(Arc<ServiceState>),
    /// Outbound to an address the snapshot does not know: forwarded as is.
    Passthrough(SocketAddr),
    /// Inbound to the local app.
    App(SocketAddr),
}

/// Per-connection context of the handler.
pub struct ConnContext {
    pub direction: Direction,
    pub target: Target,
    pub proxy: Workload,
    pub peer: SocketAddr,
    pub drain: drain::Watch,
    /// Keeps the connection's slot (and its close uncounted) while anything
    /// still serves it, including a tunnel spliced after an upgrade.
    pub _guard: ConnGuard,
}

#[derive(Clone)]
pub struct HttpProxy {
    pub ctx: Arc<ConnContext>,
    pub shared: Arc<Shared>,
}

struct Upstream {
    addr: SocketAddr,
    proto: UpstreamProto,
    /// Carrying an HTTP/1 request over HTTP/2 to a peer proxy.
    mark_http1: bool,
    traffic: TrafficLabels,
}

/// A request waiting for its response head; records itself if dropped.
struct InFlight(Option<Record>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(r) = self.0.take() {
            r.finish(false);
        }
    }
}

/// A request the proxy answers itself.
struct LocalError {
    flag: ResponseFlag,
    status: StatusCode,
    message: String,
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
        let start = Instant::now();
        let client_version = req.version();
        let access = self.shared.access_log.then(|| {
            Box::new(AccessLog {
                method: req.method().clone(),
                uri: req.uri().clone(),
                version: client_version,
                peer: self.ctx.peer,
                upstream: None,
            })
        });
        let record = |traffic: TrafficLabels, access: Option<Box<AccessLog>>| Record {
            metrics: self.shared.metrics.clone(),
            labels: RequestLabels {
                traffic,
                response_code: 0,
                grpc_response_status: GrpcStatus(None),
                response_flags: ResponseFlag::None,
            },
            start,
            access,
        };

        if client_version == Version::HTTP_2 && req.method() == Method::CONNECT {
            let err = LocalError {
                flag: ResponseFlag::NoRoute,
                status: StatusCode::NOT_IMPLEMENTED,
                message: "CONNECT over HTTP/2 is not supported; use HTTP/1.1 CONNECT".into(),
            };
            let traffic = self.traffic(&Workload::unknown(), unknown());
            return self.respond(
                local_response(&err, client_version),
                record(traffic, access),
                err.flag,
            );
        }
        let up = match self.choose(&req) {
            Ok(up) => up,
            Err(refused) => {
                let (traffic, err) = *refused;
                return self.respond(
                    local_response(&err, client_version),
                    record(traffic, access),
                    err.flag,
                );
            }
        };
        let mut access = access;
        if let Some(a) = access.as_mut() {
            a.upstream = Some(up.addr);
        }
        // Recorded as `DC` with code 0 if the client gives up before the
        // response head arrives (this future is dropped).
        let mut in_flight = InFlight(Some(record(up.traffic.clone(), access)));
        let result = if client_version != Version::HTTP_2
            && headers::is_upgrade(client_version, req.method(), req.headers())
        {
            self.forward_upgrade(req, &up).await
        } else {
            self.forward(req, &up).await
        };
        let record = in_flight.0.take().expect("taken once");
        match result {
            Ok(resp) => self.respond(resp, record, ResponseFlag::None),
            Err(err) => self.respond(local_response(&err, client_version), record, err.flag),
        }
    }

    /// Wraps the response so that it is recorded when it ends.
    fn respond(
        &self,
        resp: Response<Body>,
        mut record: Record,
        flag: ResponseFlag,
    ) -> Response<ResponseBody> {
        record.labels.response_code = resp.status().as_u16();
        record.labels.response_flags = flag;
        if let Some(v) = resp.headers().get("grpc-status") {
            record.labels.grpc_response_status = GrpcStatus::parse(v.as_bytes());
        }
        let bytes = self
            .shared
            .metrics
            .response_bytes
            .get_or_create(&record.labels.traffic)
            .clone();
        resp.map(|b| ResponseBody::new(b, bytes, record))
    }

    fn traffic(&self, peer: &Workload, service: Name) -> TrafficLabels {
        TrafficLabels::new(self.ctx.direction, &self.ctx.proxy, peer, service)
    }

    /// The upstream for this request, or why there is none (boxed: the
    /// refusal is the rare path).
    fn choose(
        &self,
        req: &Request<Incoming>,
    ) -> Result<Upstream, Box<(TrafficLabels, LocalError)>> {
        let client_proto = if req.version() == Version::HTTP_2 {
            UpstreamProto::Http2
        } else {
            UpstreamProto::Http1
        };
        match &self.ctx.target {
            Target::Service(svc) => match svc.pick() {
                Some(ep) => Ok(Upstream {
                    addr: ep.addr,
                    proto: if ep.meshed {
                        UpstreamProto::Http2
                    } else {
                        client_proto
                    },
                    mark_http1: ep.meshed && client_proto == UpstreamProto::Http1,
                    traffic: self.traffic(&ep.peer, svc.label.clone()),
                }),
                None => Err(Box::new((
                    self.traffic(&Workload::unknown(), svc.label.clone()),
                    LocalError {
                        flag: ResponseFlag::NoHealthyUpstream,
                        status: StatusCode::SERVICE_UNAVAILABLE,
                        message: format!("service {} has no endpoints", svc.label),
                    },
                ))),
            },
            Target::Passthrough(addr) => Ok(Upstream {
                addr: *addr,
                proto: client_proto,
                mark_http1: false,
                traffic: self.traffic(&Workload::unknown(), unknown()),
            }),
            Target::App(addr) => {
                let from_h1_client = req.headers().get(&ORIG_PROTO).is_some();
                Ok(Upstream {
                    addr: *addr,
                    proto: if from_h1_client {
                        UpstreamProto::Http1
                    } else {
                        client_proto
                    },
                    mark_http1: false,
                    traffic: self.traffic(&Workload::unknown(), unknown()),
                })
            }
        }
    }

    /// Rewrites the request for the upstream hop.
    fn prepare(&self, parts: &mut http::request::Parts, up: &Upstream) {
        let client_h1 = parts.version != Version::HTTP_2;
        headers::strip_hop_by_hop(&mut parts.headers);
        parts.headers.remove(&ORIG_PROTO);
        // An HTTP/1.0 request may carry no Host at all: name the endpoint.
        let authority = headers::authority(parts).unwrap_or_else(|| {
            Authority::try_from(up.addr.to_string()).expect("a socket address is an authority")
        });
        match up.proto {
            UpstreamProto::Http1 => {
                // A client talking to a forward proxy we pass through to keeps
                // its absolute-form request target.
                let keep_absolute = client_h1 && matches!(self.ctx.target, Target::Passthrough(_));
                headers::to_http1(parts, Some(&authority), keep_absolute)
            }
            UpstreamProto::Http2 => {
                headers::to_http2(parts, authority);
                if up.mark_http1 && client_h1 {
                    parts.headers.insert(ORIG_PROTO.clone(), ORIG_PROTO_HTTP1);
                }
            }
        }
    }

    async fn forward(
        &self,
        req: Request<Incoming>,
        up: &Upstream,
    ) -> Result<Response<Body>, LocalError> {
        let client_version = req.version();
        let (mut parts, body) = req.into_parts();
        self.prepare(&mut parts, up);
        let bytes = self
            .shared
            .metrics
            .request_bytes
            .get_or_create(&up.traffic)
            .clone();
        let body = CountedBody::new(body, bytes)
            .map_err(Into::into)
            .boxed_unsync();
        let resp = self
            .shared
            .client
            .send(up.addr, up.proto, Request::from_parts(parts, body))
            .await
            .map_err(|e| upstream_error(&e))?;
        let (mut parts, body) = resp.into_parts();
        headers::strip_hop_by_hop(&mut parts.headers);
        parts.version = response_version(client_version);
        Ok(Response::from_parts(
            parts,
            body.map_err(Into::into).boxed_unsync(),
        ))
    }

    /// WebSocket and other upgrades, and CONNECT: forwarded on a dedicated
    /// HTTP/1 connection; on success both sides are spliced byte for byte.
    async fn forward_upgrade(
        &self,
        mut req: Request<Incoming>,
        up: &Upstream,
    ) -> Result<Response<Body>, LocalError> {
        let client_version = req.version();
        let is_connect = req.method() == Method::CONNECT;
        let client_upgrade = hyper::upgrade::on(&mut req);
        let (mut parts, body) = req.into_parts();
        let protocol = parts.headers.get(UPGRADE).cloned();
        headers::strip_hop_by_hop(&mut parts.headers);
        parts.headers.remove(&ORIG_PROTO);
        let authority =
            headers::authority(&parts).or_else(|| Authority::try_from(up.addr.to_string()).ok());
        headers::to_http1(&mut parts, authority.as_ref(), false);
        if let Some(p) = protocol {
            parts
                .headers
                .insert(CONNECTION, HeaderValue::from_static("upgrade"));
            parts.headers.insert(UPGRADE, p);
        }
        let body = CountedBody::new(
            body,
            self.shared
                .metrics
                .request_bytes
                .get_or_create(&up.traffic)
                .clone(),
        )
        .map_err(Into::into)
        .boxed_unsync();
        let mut resp = self
            .shared
            .client
            .send_upgrade(up.addr, Request::from_parts(parts, body))
            .await
            .map_err(|e| upstream_error(&e))?;

        let switched = resp.status() == StatusCode::SWITCHING_PROTOCOLS
            || (is_connect && resp.status().is_success());
        if switched {
            let upstream_upgrade = hyper::upgrade::on(&mut resp);
            // The tunnel holds the connection's context: its drain watch and
            // its slot under the connection limit, until both sides close.
            let ctx = self.ctx.clone();
            tokio::spawn(async move {
                let peer = ctx.peer;
                match tokio::try_join!(client_upgrade, upstream_upgrade) {
                    Ok((client, upstream)) => {
                        let mut client = TokioIo::new(client);
                        let mut upstream = TokioIo::new(upstream);
                        if let Err(e) =
                            tokio::io::copy_bidirectional(&mut client, &mut upstream).await
                        {
                            tracing::debug!(%peer, error = %e, "upgraded connection ended");
                        }
                    }
                    Err(e) => tracing::debug!(%peer, error = %e, "upgrade did not complete"),
                }
            });
        }
        let (mut parts, body) = resp.into_parts();
        if !switched {
            headers::strip_hop_by_hop(&mut parts.headers);
        }
        parts.version = response_version(client_version);
        Ok(Response::from_parts(
            parts,
            body.map_err(Into::into).boxed_unsync(),
        ))
    }
}

fn response_version(client: Version) -> Version {
    if client == Version::HTTP_2 {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    }
}

fn upstream_error(e: &super::client::ClientError) -> LocalError {
    let flag = e.flag();
    tracing::debug!(error = %e, flag = flag.as_str(), "upstream request failed");
    LocalError {
        flag,
        status: StatusCode::BAD_GATEWAY,
        message: e.to_string(),
    }
}

fn local_response(err: &LocalError, client_version: Version) -> Response<Body> {
    let mut resp = Response::new(full(format!("{}\n", err.message)));
    *resp.status_mut() = err.status;
    *resp.version_mut() = response_version(client_version);
    let h = resp.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if let Ok(v) = HeaderValue::from_str(&err.message) {
        h.insert(PROXY_ERROR.clone(), v);
    }
    h.insert(
        "outrigger-response-flags",
        HeaderValue::from_static(err.flag.as_str()),
    );
    resp
}
