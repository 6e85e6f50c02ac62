//! The config server: one long-lived stream per proxy (the protocol is in
//! `outrigger_api::stream`), plus `/metrics`, `/ready` and a one-shot
//! `/debug/config` for people.
//!
//! Each stream is a task that waits for a new [`Published`] mesh, computes
//! the proxy's config from it, and writes an update only when the content
//! changed (its version is a hash of the content). Translation happens once
//! per change, elsewhere; a stream only filters.
//!
//! Each update lists in `requires` the features
//! (`outrigger_api::features`) its content uses, so a proxy that lacks one
//! refuses the update instead of applying it without the field.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use outrigger_api::certify::CERTIFY_PATH;
use outrigger_api::features::{required_by, Feature, Part, FEATURES};
use outrigger_api::stream::{self, ConfigUpdate, Skew, CONFIG_PATH};
use outrigger_runtime::{drain, metrics, serve};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, OnceCell};

use crate::certify::{Certifier, MAX_BODY as MAX_CERTIFY_BODY};
use crate::metrics::{Metrics, ResultLabel, SkewLabel};
use crate::translate::{Mesh, ProxyId};
use outrigger_identity::tls::peer_identity;
use outrigger_identity::SpiffeId;

/// A translated mesh, as the streams see it.
pub struct Published {
    pub mesh: Arc<Mesh>,
    /// When the first source change folded into this mesh was seen.
    pub changed_at: Instant,
    /// Each namespace's services, serialized once for all of its proxies
    /// (filled as streams ask).
    views: Mutex<HashMap<String, Arc<OnceCell<Arc<ServicesView>>>>>,
    /// The features updates may require ([`FEATURES`]; tests use their own).
    features: &'static [Feature],
}

impl Published {
    pub fn new(mesh: Arc<Mesh>, changed_at: Instant) -> Self {
        Self::with_features(mesh, changed_at, FEATURES)
    }

    /// As [`Published::new`], with updates requiring features of `features`.
    pub fn with_features(
        mesh: Arc<Mesh>,
        changed_at: Instant,
        features: &'static [Feature],
    ) -> Self {
        Self {
            mesh,
            changed_at,
            views: Mutex::default(),
            features,
        }
    }

    /// The services of namespace `ns` as JSON, computed by the first
    /// stream that asks (on the blocking pool, so a large namespace never
    /// holds a runtime worker); the others wait for it without blocking,
    /// then share the bytes.
    async fn services_view(self: &Arc<Self>, ns: &str) -> Arc<ServicesView> {
        let cell = self
            .views
            .lock()
            .expect("views lock")
            .entry(ns.to_string())
            .or_default()
            .clone();
        cell.get_or_init(|| async {
            let this = self.clone();
            let ns = ns.to_string();
            tokio::task::spawn_blocking(move || {
                Arc::new(ServicesView::new(
                    &this.mesh.services_for(&ns),
                    this.features,
                ))
            })
            .await
            .expect("serializing services does not panic")
        })
        .await
        .clone()
    }

    /// One proxy's update as the chunks of one NDJSON line (the services
    /// part shared with the namespace's other proxies), and its version.
    async fn update_line(self: &Arc<Self>, id: &ProxyId) -> (String, [Bytes; 3]) {
        let view = self.services_view(&id.namespace).await;
        let (proxy, inbound) = (self.mesh.proxy_info(id), self.mesh.inbound_for(id));
        let own = head_json(&proxy, &inbound);
        let version = version_of(&own, view.hash);
        let requires = merge(
            &view.requires,
            required_by(
                self.features,
                &[Part::Proxy(&proxy), Part::Inbound(&inbound)],
            ),
        );
        let mut head = format!("{{\"version\":\"{version}\",").into_bytes();
        if !requires.is_empty() {
            head.extend_from_slice(b"\"requires\":");
            head.extend_from_slice(&serde_json::to_vec(&requires).expect("serializes"));
            head.push(b',');
        }
        head.extend_from_slice(&own);
        head.extend_from_slice(b",\"services\":");
        (
            version,
            [
                Bytes::from(head),
                view.json.clone(),
                Bytes::from_static(b"}\n"),
            ],
        )
    }
}

/// A namespace's services as sent: the JSON array, its hash, and the
/// features it uses.
struct ServicesView {
    json: Bytes,
    hash: u64,
    requires: Vec<String>,
}

impl ServicesView {
    fn new(services: &[outrigger_api::Service], features: &[Feature]) -> Self {
        let json = serde_json::to_vec(services).expect("serializes");
        Self {
            hash: fnv1a(FNV_OFFSET, &json),
            json: Bytes::from(json),
            requires: required_by(features, &[Part::Services(services)]),
        }
    }
}

/// The union of two sorted lists of feature names, sorted.
fn merge(a: &[String], mut b: Vec<String>) -> Vec<String> {
    b.extend_from_slice(a);
    b.sort();
    b.dedup();
    b
}

/// Empty lines on an idle stream, so that dead peers and middleboxes show up.
pub const HEARTBEAT: Duration = Duration::from_secs(15);

type Body = BoxBody<Bytes, Infallible>;

#[derive(Clone)]
pub struct Server {
    mesh: watch::Receiver<Option<Arc<Published>>>,
    metrics: Arc<Metrics>,
    certifier: Option<Arc<Certifier>>,
    tls: Option<Arc<ArcSwap<rustls::ServerConfig>>>,
}

/// Who is on the other end of a connection.
struct Peer {
    addr: SocketAddr,
    tls: bool,
    /// The identity of the client certificate, when one was sent.
    identity: Option<SpiffeId>,
}

/// Whether a client with certificate identity `peer` may have the config
/// of `proxy`, whose pod runs as `account` (when the pod is known): its
/// identity must name the proxy's namespace and the pod's ServiceAccount.
pub fn authorize(
    peer: Option<&SpiffeId>,
    proxy: &ProxyId,
    account: Option<&str>,
) -> Result<(), String> {
    let peer = peer.ok_or("a client certificate is required for the config stream")?;
    if peer.namespace() != proxy.namespace {
        return Err(format!(
            "{peer} may not have the config of namespace {}",
            proxy.namespace
        ));
    }
    if let Some(account) = account.filter(|a| *a != peer.service_account()) {
        return Err(format!(
            "{peer} may not have the config of pod {}/{}, which runs as ServiceAccount {account}",
            proxy.namespace, proxy.pod
        ));
    }
    Ok(())
}

impl Server {
    /// `mesh` holds `None` until the sources have been read once; `/ready`
    /// and the streams wait for it.
    pub fn new(mesh: watch::Receiver<Option<Arc<Published>>>, metrics: Arc<Metrics>) -> Self {
        Self {
            mesh,
            metrics,
            certifier: None,
            tls: None,
        }
    }

    /// Serves `POST /v1/certify` with this mesh CA.
    pub fn with_certifier(mut self, certifier: Arc<Certifier>) -> Self {
        self.certifier = Some(certifier);
        self
    }

    /// Serves over TLS with this config (the mesh CA's roots verify client
    /// certificates; streams then need one that matches the proxy).
    pub fn with_tls(self, config: Arc<rustls::ServerConfig>) -> Self {
        self.with_tls_swapped(Arc::new(ArcSwap::new(config)))
    }

    /// Serves over TLS with the config in force in `config` at each new
    /// connection (it follows the CA: [`Certifier::server_tls`]).
    pub fn with_tls_swapped(mut self, config: Arc<ArcSwap<rustls::ServerConfig>>) -> Self {
        self.tls = Some(config);
        self
    }

    /// Serves HTTP/1.1 and HTTP/2 (prior knowledge, or ALPN over TLS)
    /// until `stop` fires.
    pub async fn run(self, listener: TcpListener, stop: drain::Watch) {
        let connections = stop.clone();
        serve::accept(listener, stop, "config server", move |stream, addr| {
            let this = self.clone();
            let stop = connections.clone();
            async move {
                let Some(tls) = this.tls.as_ref().map(|t| t.load_full()) else {
                    let peer = Peer {
                        addr,
                        tls: false,
                        identity: None,
                    };
                    return this
                        .serve_connection(TokioIo::new(stream), peer, stop)
                        .await;
                };
                let Some(stream) = serve::handshake(tls, stream, addr).await else {
                    return;
                };
                let identity = stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| peer_identity(c).ok());
                let peer = Peer {
                    addr,
                    tls: true,
                    identity,
                };
                this.serve_connection(TokioIo::new(stream), peer, stop)
                    .await;
            }
        })
        .await
    }

    async fn serve_connection<I>(self, io: I, peer: Peer, stop: drain::Watch)
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let addr = peer.addr;
        let peer = Arc::new(peer);
        let svc = hyper::service::service_fn(move |req| {
            let this = self.clone();
            let peer = peer.clone();
            async move { Ok::<_, Infallible>(this.handle(req, &peer).await) }
        });
        let builder = serve::http1_or_2(Duration::from_secs(10));
        let conn = builder.serve_connection(io, svc);
        tokio::pin!(conn);
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(peer = %addr, error = %e, "config connection ended");
                }
            }
            _ = stop.signaled() => {}
        }
    }

    /// Counts a stream by the skew of its proxy's release against this
    /// one's, and names a proxy outside the supported skew in the log.
    fn note_skew(&self, req: &Request<Incoming>, id: &ProxyId) {
        let agent = req
            .headers()
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok());
        let skew = stream::skew(outrigger_runtime::build::VERSION, agent);
        self.metrics
            .streams_by_skew
            .get_or_create(&SkewLabel {
                skew: skew.as_str(),
            })
            .inc();
        if matches!(skew, Skew::TooOld | Skew::Newer) {
            tracing::warn!(
                namespace = %id.namespace,
                pod = %id.pod,
                proxy = agent.unwrap_or_default(),
                control_plane = outrigger_runtime::build::VERSION,
                skew = skew.as_str(),
                "proxy outside the supported version skew (the control plane's release \
                 or the one before): upgrade it, control plane first"
            );
        }
    }

    /// Over TLS, a proxy is served only its own config ([`authorize`]).
    fn authorized(&self, peer: &Peer, id: &ProxyId) -> Result<(), String> {
        if !peer.tls {
            return Ok(());
        }
        let mesh = self.mesh.borrow().clone();
        let account = mesh
            .as_ref()
            .and_then(|p| p.mesh.service_account_of(id).map(str::to_string));
        authorize(peer.identity.as_ref(), id, account.as_deref()).inspect_err(|why| {
            tracing::warn!(peer = %peer.addr, namespace = %id.namespace, pod = %id.pod, "config refused: {why}");
        })
    }

    async fn handle(&self, req: Request<Incoming>, peer: &Peer) -> Response<Body> {
        let path = req.uri().path();
        match (req.method(), path) {
            (&Method::POST, CERTIFY_PATH) => match &self.certifier {
                Some(c) => self.certify(c, req, peer.addr).await,
                None => text(
                    StatusCode::NOT_FOUND,
                    "this control plane issues no certificates\n".into(),
                ),
            },
            (&Method::GET, CONFIG_PATH) => match proxy_of(&req) {
                Ok(id) => match self.authorized(peer, &id) {
                    Ok(()) => {
                        self.note_skew(&req, &id);
                        self.stream(id)
                    }
                    Err(why) => text(StatusCode::FORBIDDEN, format!("{why}\n")),
                },
                Err(e) => text(StatusCode::BAD_REQUEST, e),
            },
            (&Method::GET, "/debug/config") => match proxy_of(&req) {
                Ok(id) => match (self.authorized(peer, &id), self.mesh.borrow().clone()) {
                    (Err(why), _) => text(StatusCode::FORBIDDEN, format!("{why}\n")),
                    (Ok(()), Some(p)) => {
                        let update = update_for(&p.mesh, &id);
                        let mut json = serde_json::to_string_pretty(&update).expect("serializes");
                        json.push('\n');
                        json_response(json)
                    }
                    (Ok(()), None) => {
                        text(StatusCode::SERVICE_UNAVAILABLE, "no config yet\n".into())
                    }
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
            (&Method::GET, "/metrics") => metrics::answer(req.headers(), self.metrics.encode())
                .map(|body| BodyExt::boxed(Full::new(body))),
            _ => text(StatusCode::NOT_FOUND, format!("no such endpoint: {path}\n")),
        }
    }

    /// `POST /v1/certify`: a certificate for the caller's identity, or why not.
    async fn certify(
        &self,
        certifier: &Certifier,
        req: Request<Incoming>,
        peer: SocketAddr,
    ) -> Response<Body> {
        let authorization = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = match http_body_util::Limited::new(req.into_body(), MAX_CERTIFY_BODY)
            .collect()
            .await
        {
            Ok(b) => b.to_bytes(),
            Err(e) => {
                self.count_certify("bad_request");
                return text(
                    StatusCode::BAD_REQUEST,
                    format!("request body: {e} (at most {MAX_CERTIFY_BODY} bytes)\n"),
                );
            }
        };
        match certifier
            .certify(authorization.as_deref(), &body, peer.ip())
            .await
        {
            Ok((id, answer)) => {
                self.count_certify("issued");
                tracing::info!(%peer, identity = %id, "certificate issued");
                json_response(serde_json::to_string(&answer).expect("serializes"))
            }
            Err(refusal) => {
                self.count_certify(refusal.result);
                tracing::warn!(%peer, status = refusal.status, "certificate refused: {}", refusal.message);
                let mut r = text(
                    StatusCode::from_u16(refusal.status).expect("a valid status"),
                    format!("{}\n", refusal.message),
                );
                if let Some(wait) = refusal.retry_after {
                    r.headers_mut().insert(
                        header::RETRY_AFTER,
                        header::HeaderValue::from(wait.as_secs().max(1)),
                    );
                }
                r
            }
        }
    }

    fn count_certify(&self, result: &'static str) {
        self.metrics
            .certify_requests
            .get_or_create(&ResultLabel { result })
            .inc();
    }

    /// The never-ending response of one proxy's stream.
    fn stream(&self, id: ProxyId) -> Response<Body> {
        let (tx, rx) = mpsc::channel::<Bytes>(8);
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
                    let (version, chunks) = p.update_line(&id).await;
                    if version != last_version {
                        let size: usize = chunks.iter().map(Bytes::len).sum();
                        let mut sent = true;
                        for chunk in chunks {
                            sent &= tx.send(chunk).await.is_ok();
                        }
                        if !sent {
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
                        last_version = version;
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

/// One proxy's update from a translated mesh, as the stream sends it (for
/// `/debug/config` and tests; the stream shares the services part).
pub fn update_for(mesh: &Mesh, id: &ProxyId) -> ConfigUpdate {
    update_with_features(mesh, id, FEATURES)
}

/// [`update_for`], with `requires` computed from `features`.
pub fn update_with_features(mesh: &Mesh, id: &ProxyId, features: &[Feature]) -> ConfigUpdate {
    let config = mesh.config_for(id);
    let head = head_json(&config.proxy, &config.inbound);
    let services = serde_json::to_vec(&config.services).expect("serializes");
    ConfigUpdate {
        version: version_of(&head, fnv1a(FNV_OFFSET, &services)),
        requires: required_by(
            features,
            &[
                Part::Proxy(&config.proxy),
                Part::Inbound(&config.inbound),
                Part::Services(&config.services),
            ],
        ),
        proxy: config.proxy,
        inbound: config.inbound,
        services: config.services,
    }
}

/// The per-proxy members of an update, as JSON members (no braces):
/// `"proxy":{...}` and, when there is any, `"inbound":{...}`.
fn head_json(
    proxy: &outrigger_api::ProxyInfo,
    inbound: &outrigger_api::inbound::Inbound,
) -> Vec<u8> {
    let mut out = b"\"proxy\":".to_vec();
    out.extend_from_slice(&serde_json::to_vec(proxy).expect("serializes"));
    if !inbound.is_empty() {
        out.extend_from_slice(b",\"inbound\":");
        out.extend_from_slice(&serde_json::to_vec(inbound).expect("serializes"));
    }
    out
}

/// An update's version: a hash of its content (the proxy's own members,
/// then the hash of its services' JSON), so equal content has an equal
/// version across restarts.
fn version_of(proxy_json: &[u8], services_hash: u64) -> String {
    let h = fnv1a(fnv1a(FNV_OFFSET, proxy_json), &services_hash.to_le_bytes());
    format!("{h:016x}")
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV-1a, 64 bits, continuing from `h` (start with [`FNV_OFFSET`]):
/// small, and stable across Rust versions and runs.
fn fnv1a(mut h: u64, bytes: &[u8]) -> u64 {
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

    use crate::manifest;
    use crate::store::Store;
    use crate::translate::Options;

    fn published(yaml: &str) -> Arc<Published> {
        let parsed = manifest::parse("test.yaml", yaml, "default").unwrap();
        let mesh = Mesh::build(&Store::from_objects(parsed.objects), &Options::default());
        Arc::new(Published::new(
            Arc::new(mesh),
            tokio::time::Instant::now().into_std(),
        ))
    }

    fn id(ns: &str, pod: &str) -> ProxyId {
        ProxyId {
            namespace: ns.into(),
            pod: pod.into(),
        }
    }

    #[tokio::test]
    async fn the_streamed_line_is_the_update_and_shares_its_namespace_services() {
        let p = published(
            "apiVersion: v1\nkind: Service\nmetadata: { name: web, namespace: shop }\nspec: { clusterIP: 10.0.0.1, ports: [{ port: 80 }] }\n---\napiVersion: v1\nkind: Pod\nmetadata: { name: a, namespace: shop }\nspec: { serviceAccountName: buyer, containers: [{ name: app }] }\n---\napiVersion: outrigger.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: { name: read, namespace: shop }\nspec: { rules: [{ to: [{ operation: { methods: [GET] } }] }] }\n",
        );
        for pod in ["a", "unknown"] {
            let (version, chunks) = p.update_line(&id("shop", pod)).await;
            let line: Vec<u8> = chunks.concat();
            assert_eq!(line.last(), Some(&b'\n'));
            let parsed: ConfigUpdate = serde_json::from_slice(&line).unwrap();
            let expected = update_for(&p.mesh, &id("shop", pod));
            assert_eq!(parsed, expected);
            assert_eq!(version, expected.version);
            assert_eq!(parsed.services.len(), 1);
            assert_eq!(parsed.inbound.authorization[0].name, "shop/read");
        }
        let (va, a) = p.update_line(&id("shop", "a")).await;
        let (vu, u) = p.update_line(&id("shop", "unknown")).await;
        assert_ne!(va, vu, "the proxy part is in the version");
        assert_eq!(
            a[1].as_ptr(),
            u[1].as_ptr(),
            "one copy of the services per namespace"
        );
        let (_, other) = p.update_line(&id("elsewhere", "a")).await;
        assert_eq!(&other[1][..], b"[]");
    }

    /// Features defined for the test: authorization rules (per proxy) and
    /// HTTP routes (per namespace).
    const TEST_FEATURES: &[Feature] = &[
        Feature {
            name: "test-authorization",
            used_in: |p| matches!(p, Part::Inbound(i) if !i.authorization.is_empty()),
        },
        Feature {
            name: "test-routes",
            used_in: |p| matches!(p, Part::Services(s) if s.iter().any(|s| !s.http.is_empty())),
        },
    ];

    #[tokio::test]
    async fn the_streamed_line_requires_the_features_its_content_uses() {
        let yaml = "apiVersion: v1\nkind: Service\nmetadata: { name: web, namespace: shop }\nspec: { clusterIP: 10.0.0.1, ports: [{ port: 80 }] }\n---\napiVersion: v1\nkind: Pod\nmetadata: { name: a, namespace: shop, labels: { app: web } }\nspec: { serviceAccountName: buyer, containers: [{ name: app }] }\n---\napiVersion: outrigger.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: { name: read, namespace: shop }\nspec: { selector: { matchLabels: { app: web } }, rules: [{ to: [{ operation: { methods: [GET] } }] }] }\n---\napiVersion: outrigger.dev/v1alpha1\nkind: VirtualService\nmetadata: { name: web, namespace: shop }\nspec: { hosts: [web], http: [{ route: [{ destination: { host: web } }] }] }\n";
        let parsed = manifest::parse("test.yaml", yaml, "default").unwrap();
        let mesh = Arc::new(Mesh::build(
            &Store::from_objects(parsed.objects),
            &Options::default(),
        ));
        let p = Arc::new(Published::with_features(
            mesh.clone(),
            tokio::time::Instant::now().into_std(),
            TEST_FEATURES,
        ));
        let line = |pod: &'static str| {
            let p = p.clone();
            async move {
                let (_, chunks) = p.update_line(&id("shop", pod)).await;
                serde_json::from_slice::<ConfigUpdate>(&chunks.concat()).unwrap()
            }
        };
        // Pod a: selected by the policy, and its namespace has routes.
        let a = line("a").await;
        assert_eq!(a.requires, ["test-authorization", "test-routes"]);
        assert_eq!(
            a,
            update_with_features(&mesh, &id("shop", "a"), TEST_FEATURES)
        );
        // An unknown pod of the namespace: the routes only.
        assert_eq!(line("unknown").await.requires, ["test-routes"]);
        // Required by nothing, the key is absent (previous proxies read it).
        let none = Published::with_features(mesh, tokio::time::Instant::now().into_std(), &[]);
        let (_, chunks) = Arc::new(none).update_line(&id("shop", "a")).await;
        let text = String::from_utf8(chunks.concat()).unwrap();
        assert!(!text.contains("requires"), "{text}");
    }

    #[tokio::test]
    async fn the_version_follows_the_content_only() {
        let yaml = "apiVersion: v1\nkind: Service\nmetadata: { name: web }\nspec: { clusterIP: 10.0.0.1, ports: [{ port: 80 }] }\n";
        let (v1, _) = published(yaml).update_line(&id("default", "p")).await;
        let (v2, _) = published(yaml).update_line(&id("default", "p")).await;
        assert_eq!(v1, v2, "a restarted control plane sends the same version");
        let (v3, _) = published(&yaml.replace("10.0.0.1", "10.0.0.2"))
            .update_line(&id("default", "p"))
            .await;
        assert_ne!(v1, v3);
    }

    #[test]
    fn over_tls_a_proxy_gets_only_its_own_config() {
        let buyer: SpiffeId = "spiffe://cluster.local/ns/shop/sa/buyer".parse().unwrap();
        assert_eq!(
            authorize(Some(&buyer), &id("shop", "client-1"), Some("buyer")),
            Ok(())
        );
        assert_eq!(
            authorize(Some(&buyer), &id("shop", "not-yet-listed"), None),
            Ok(()),
            "a pod the store does not know yet: the namespace decides"
        );
        assert_eq!(
            authorize(Some(&buyer), &id("billing", "ledger-1"), None).unwrap_err(),
            "spiffe://cluster.local/ns/shop/sa/buyer may not have the config of namespace billing"
        );
        assert_eq!(
            authorize(Some(&buyer), &id("shop", "admin-1"), Some("admin")).unwrap_err(),
            "spiffe://cluster.local/ns/shop/sa/buyer may not have the config of pod shop/admin-1, \
             which runs as ServiceAccount admin"
        );
        assert!(authorize(None, &id("shop", "client-1"), Some("buyer"))
            .unwrap_err()
            .contains("client certificate is required"));
    }

    #[test]
    fn fnv1a_is_the_reference_function() {
        assert_eq!(fnv1a(FNV_OFFSET, b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(FNV_OFFSET, b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
