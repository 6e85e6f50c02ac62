//! Distributed tracing in the proxy: the request hook, the span a request
//! records, and the exporter thread that sends finished spans to an
//! OpenTelemetry collector over OTLP/HTTP (protobuf, `POST /v1/traces`).
//!
//! Off unless a collector is given (`--trace-collector`): then
//! [`Shared::tracer`](crate::http::proxy::Shared) is None and a request pays
//! one check. On, every request's trace headers are read and rewritten
//! (the pure rules in [`outrigger_proxy_policy::trace`]); a sampled one
//! carries a [`SpanRecord`] until its response ends, when the finished span
//! is queued (bounded, [`Batching::queue`]; a full queue drops, counted).
//! One OS thread (`outrigger-trace`) turns the queue into OTLP batches (by
//! size and time) and posts them; a collector that cannot be reached loses
//! the batch (counted) and never holds a request.
//!
//! `x-request-id` (a UUID v4 when a request has none, as Envoy does) is
//! [`ensure_request_id`]: for every request while the access log is on,
//! and for each request this tracer samples.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderValue, Method, Uri, Version};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    span, status, ResourceSpans, ScopeSpans, Span, Status,
};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::metrics::{Direction, Name, RequestLabels, ResponseFlag};
use outrigger_proxy_policy::chance::Chance;
pub use outrigger_proxy_policy::trace::Percent;
use outrigger_proxy_policy::trace::{uuid_v4, Incoming, SpanContext, REQUEST_ID};

/// Gives a request an `x-request-id` (UUID v4) when it has none; one it
/// has is kept. The value is marked sensitive: unique to each request, it
/// has no place in HTTP/2's header compression table (HPACK sends it as a
/// never-indexed literal instead of evicting useful entries).
pub fn ensure_request_id(headers: &mut HeaderMap, chance: &Chance) {
    // One lookup, whether the header is there or not.
    if let http::header::Entry::Vacant(slot) = headers.entry(REQUEST_ID) {
        let id = uuid_v4(chance.bits());
        let mut value = HeaderValue::from_bytes(&id).expect("hex and dashes");
        value.set_sensitive(true);
        slot.insert(value);
    }
}

/// Where spans go (`--trace-collector`).
pub use outrigger_api::TraceCollector as Collector;

/// How finished spans are batched (OpenTelemetry's batch span processor
/// defaults).
#[derive(Clone, Debug)]
pub struct Batching {
    /// Spans waiting for the exporter before new ones are dropped.
    pub queue: usize,
    /// Most spans in one export.
    pub max_spans: usize,
    /// Longest a span waits for its batch to fill.
    pub delay: Duration,
    /// Connect, send and answer, at most, per export.
    pub timeout: Duration,
}

impl Default for Batching {
    fn default() -> Self {
        Self {
            queue: 2048,
            max_spans: 512,
            delay: Duration::from_secs(5),
            timeout: Duration::from_secs(10),
        }
    }
}

/// Tracing's settings (`--trace-collector`, `--trace-sampling`, ...).
#[derive(Clone, Debug)]
pub struct Settings {
    pub collector: Collector,
    /// Traces this proxy starts that are sampled (a caller's decision
    /// stands).
    pub sampling: Percent,
    /// The resource's `service.name`; default `<workload>.<namespace>` of
    /// the configuration in force.
    pub service_name: Option<String>,
    /// The resource's `k8s.pod.name`, where known.
    pub pod_name: Option<String>,
    pub batching: Batching,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct DropLabel {
    pub reason: &'static str,
}

/// Spans dropped because the exporter's queue was full.
pub const QUEUE_FULL: DropLabel = DropLabel {
    reason: "queue_full",
};
/// Spans of a batch the collector did not take (unreachable, an error
/// status, a timeout).
pub const EXPORT_FAILED: DropLabel = DropLabel {
    reason: "export_failed",
};

/// The tracer's counters (registered with the proxy's metrics).
#[derive(Clone, Debug, Default)]
pub struct Counters {
    pub exported: Counter,
    pub dropped: Family<DropLabel, Counter>,
}

impl Counters {
    pub fn register(reg: &mut Registry) -> Self {
        let c = Self::default();
        reg.register(
            "outrigger_trace_spans_exported",
            "Spans the collector accepted",
            c.exported.clone(),
        );
        reg.register(
            "outrigger_trace_spans_dropped",
            "Spans lost, by reason: queue_full (the exporter fell behind), export_failed (the collector did not take the batch)",
            c.dropped.clone(),
        );
        drop(c.dropped.get_or_create(&QUEUE_FULL));
        drop(c.dropped.get_or_create(&EXPORT_FAILED));
        c
    }
}

/// Retries a sampled request made (request extension, shared by its
/// tries): the retry layer adds one per retry.
#[derive(Clone, Debug, Default)]
pub struct RetryEvents(Arc<Mutex<Vec<RetryEvent>>>);

#[derive(Clone, Debug)]
pub struct RetryEvent {
    pub at: SystemTime,
    /// The try about to be made (2 for the first retry).
    pub attempt: u32,
    /// What the previous try got: a status code, or the proxy's flag.
    pub previous: String,
}

impl RetryEvents {
    pub fn push(&self, event: RetryEvent) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(event);
    }

    fn take(&self) -> Vec<RetryEvent> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// The tracer: decides, rewrites the headers, queues finished spans.
pub struct Tracer {
    sampling: Percent,
    queue: SyncSender<Queued>,
    counters: Counters,
}

impl Tracer {
    /// Starts the exporter thread.
    pub fn start(settings: Settings, counters: Counters) -> std::io::Result<Self> {
        let (queue, spans) = sync_channel(settings.batching.queue);
        let sampling = settings.sampling;
        let exporter = Exporter {
            settings,
            counters: counters.clone(),
        };
        std::thread::Builder::new()
            .name("outrigger-trace".into())
            .spawn(move || exporter.run(spans))?;
        Ok(Self {
            sampling,
            queue,
            counters,
        })
    }

    /// Waits (blocking, at most `limit`) until the spans queued so far are
    /// exported or dropped: for the end of a drain, so that the last
    /// requests' spans leave before the process exits. False if they did
    /// not in time (or the queue was full).
    pub fn flush(&self, limit: Duration) -> bool {
        let (done, exported) = std::sync::mpsc::channel();
        self.queue.try_send(Queued::Flush(done)).is_ok() && exported.recv_timeout(limit).is_ok()
    }

    /// Joins the request's trace or starts one, and rewrites its headers
    /// with this proxy's span as the next hop's parent. A sampled request
    /// gets the span to record (and, in its extensions, the place its
    /// retries are noted).
    ///
    /// A request it does not sample is left as it came whenever that is
    /// enough for the next hop to agree ([`Incoming::next`]): a caller's
    /// "not sampled" passes on untouched, and a new trace that is not
    /// sampled sends nothing, which the next meshed proxy (`from_mesh`,
    /// a peer over mutual TLS) takes as "not sampled". So most requests
    /// cost a look at their headers and, at most, a draw.
    pub fn begin<B>(
        &self,
        direction: Direction,
        req: &mut http::Request<B>,
        peer: SocketAddr,
        from_mesh: bool,
        chance: &Chance,
    ) -> Option<Box<SpanRecord>> {
        let incoming = Incoming::read(req.headers());
        let ctx = incoming.next(self.sampling.get(), from_mesh, chance)?;
        let trace_state = (ctx.sampled && ctx.joined_w3c)
            .then(|| trace_state(req.headers()))
            .flatten();
        ctx.write(incoming.forms, req.headers_mut());
        if !ctx.sampled {
            return None;
        }
        // A traced request carries an id its span and the apps' logs share.
        ensure_request_id(req.headers_mut(), chance);
        let retries = RetryEvents::default();
        req.extensions_mut().insert(retries.clone());
        // Owned and cut: a queued span holds no request buffer, and a
        // client that forces sampling cannot make the queue's spans large.
        let header = |n: &str| {
            req.headers()
                .get(n)
                .map(|v| crate::access_log::cut(&String::from_utf8_lossy(v.as_bytes()), MAX_VALUE))
        };
        Some(Box::new(SpanRecord {
            ctx,
            trace_state,
            direction,
            start: SystemTime::now(),
            method: req.method().clone(),
            uri: owned_uri(req.uri()),
            host: header("host"),
            version: req.version(),
            user_agent: header("user-agent"),
            request_id: header("x-request-id"),
            peer,
            upstream: None,
            attempts: 1,
            retries,
            queue: self.queue.clone(),
            counters: self.counters.clone(),
        }))
    }
}

/// The longest header value a span keeps (longer ones are cut).
const MAX_VALUE: usize = 1024;
/// The longest URI a span keeps.
const MAX_URI: usize = 2048;
/// W3C Trace Context: a `tracestate` longer than this may be dropped.
const MAX_TRACE_STATE: usize = 512;

/// `tracestate` as received (several header lines joined by commas);
/// None when it is longer than [`MAX_TRACE_STATE`] (W3C lets a vendor
/// drop it rather than keep a list that large).
fn trace_state(headers: &HeaderMap) -> Option<String> {
    let mut out = String::new();
    for v in headers.get_all(outrigger_proxy_policy::trace::TRACESTATE) {
        if !out.is_empty() {
            out.push(',');
        }
        out.push_str(v.to_str().ok()?);
        if out.len() > MAX_TRACE_STATE {
            return None;
        }
    }
    (!out.is_empty()).then_some(out)
}

/// The request's URI, in memory of its own (the parsed one shares the
/// connection's read buffer) and at most [`MAX_URI`] long.
fn owned_uri(uri: &Uri) -> Uri {
    let mut text = uri.to_string();
    if text.len() > MAX_URI {
        text.truncate(MAX_URI);
    }
    Uri::try_from(text).unwrap_or_else(|_| Uri::from_static("/"))
}

/// A sampled request's span, until its response ends.
pub struct SpanRecord {
    ctx: SpanContext,
    trace_state: Option<String>,
    direction: Direction,
    start: SystemTime,
    method: Method,
    uri: Uri,
    host: Option<String>,
    version: Version,
    user_agent: Option<String>,
    request_id: Option<String>,
    /// The downstream socket's peer.
    peer: SocketAddr,
    /// The endpoint that served the request (outbound), or the app.
    pub upstream: Option<SocketAddr>,
    /// Tries made (retries + 1).
    pub attempts: u32,
    retries: RetryEvents,
    queue: SyncSender<Queued>,
    counters: Counters,
}

/// What the exporter thread is handed.
enum Queued {
    Span(Box<Finished>),
    /// Export what is batched now, and answer once that is done.
    Flush(std::sync::mpsc::Sender<()>),
}

/// A span ended: queued for the exporter thread, which builds its OTLP form.
struct Finished {
    record: Box<SpanRecord>,
    end: SystemTime,
    labels: RequestLabels,
    route: Option<Name>,
}

impl SpanRecord {
    /// Ends the span, `elapsed` after it began, with how the request ended,
    /// and queues it (never waits; a full queue drops it, counted).
    pub fn end(self: Box<Self>, labels: &RequestLabels, elapsed: Duration, route: Option<Name>) {
        let end = self.start + elapsed;
        let queue = self.queue.clone();
        let dropped = self.counters.dropped.clone();
        let finished = Finished {
            record: self,
            end,
            labels: labels.clone(),
            route,
        };
        match queue.try_send(Queued::Span(Box::new(finished))) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                dropped.get_or_create(&QUEUE_FULL).inc();
            }
        }
    }

    /// The trace id, for tests and logs.
    pub fn trace_id(&self) -> String {
        self.ctx.trace_id.hex()
    }
}

fn kv(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

fn s(key: &str, v: impl Into<String>) -> KeyValue {
    kv(key, any_value::Value::StringValue(v.into()))
}

fn i(key: &str, v: i64) -> KeyValue {
    kv(key, any_value::Value::IntValue(v))
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// HTTP methods OpenTelemetry knows by name; others are `_OTHER`.
fn known_method(m: &Method) -> bool {
    matches!(
        m.as_str(),
        "CONNECT" | "DELETE" | "GET" | "HEAD" | "OPTIONS" | "PATCH" | "POST" | "PUT" | "TRACE"
    )
}

fn protocol_version(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "0.9",
        Version::HTTP_10 => "1.0",
        Version::HTTP_2 => "2",
        Version::HTTP_3 => "3",
        _ => "1.1",
    }
}

impl Finished {
    /// The local workload and namespace (the resource's).
    fn local(&self) -> (Name, Name) {
        let t = &self.labels.traffic;
        match self.record.direction {
            Direction::Outbound => (t.source_workload.clone(), t.source_namespace.clone()),
            Direction::Inbound => (
                t.destination_workload.clone(),
                t.destination_namespace.clone(),
            ),
        }
    }

    /// The span in OTLP's form, with OpenTelemetry's HTTP semantic
    /// conventions (stable names) and the mesh's attributes.
    fn to_otlp(&self) -> Span {
        let r = &self.record;
        let l = &self.labels;
        let t = &l.traffic;
        let client = r.direction == Direction::Outbound;
        let mut attrs = Vec::with_capacity(24);
        let method = r.method.as_str();
        let name = if known_method(&r.method) {
            attrs.push(s("http.request.method", method));
            method.to_string()
        } else {
            attrs.push(s("http.request.method", "_OTHER"));
            attrs.push(s("http.request.method_original", method));
            "HTTP".to_string()
        };
        let scheme = r.uri.scheme_str().unwrap_or("http");
        let authority = r
            .uri
            .authority()
            .map(|a| a.as_str().to_string())
            .or_else(|| r.host.clone());
        let (host, port) = match authority
            .as_deref()
            .map(|a| a.parse::<http::uri::Authority>())
        {
            Some(Ok(a)) => (
                Some(a.host().to_string()),
                a.port_u16()
                    .unwrap_or(if scheme == "https" { 443 } else { 80 }),
            ),
            _ => (None, 80),
        };
        let path = r.uri.path();
        attrs.push(s("url.scheme", scheme));
        attrs.push(s("url.path", path));
        if let Some(q) = r.uri.query() {
            attrs.push(s("url.query", q));
        }
        if let Some(h) = &host {
            attrs.push(s("server.address", h.clone()));
            attrs.push(i("server.port", i64::from(port)));
            if client {
                let pq = r.uri.path_and_query().map_or("/", |p| p.as_str());
                let authority = authority.as_deref().unwrap_or(h);
                attrs.push(s("url.full", format!("{scheme}://{authority}{pq}")));
            }
        }
        attrs.push(s("network.protocol.name", "http"));
        attrs.push(s("network.protocol.version", protocol_version(r.version)));
        if let Some(ua) = &r.user_agent {
            attrs.push(s("user_agent.original", ua.clone()));
        }
        let code = l.response_code;
        if code != 0 {
            attrs.push(i("http.response.status_code", i64::from(code)));
        }
        if client {
            if let Some(u) = r.upstream {
                attrs.push(s("network.peer.address", u.ip().to_string()));
                attrs.push(i("network.peer.port", i64::from(u.port())));
            }
            if r.attempts > 1 {
                attrs.push(i("http.request.resend_count", i64::from(r.attempts - 1)));
            }
        } else {
            attrs.push(s("network.peer.address", r.peer.ip().to_string()));
            attrs.push(i("network.peer.port", i64::from(r.peer.port())));
            attrs.push(s("client.address", r.peer.ip().to_string()));
            attrs.push(i("client.port", i64::from(r.peer.port())));
        }
        // Status: a client span fails on 4xx and 5xx, a server span on 5xx
        // only; both when no response was sent or received.
        let failed_code = if client { code >= 400 } else { code >= 500 };
        let flag = l.response_flags;
        let status = if code == 0 {
            let kind = if flag == ResponseFlag::None {
                "no response".to_string()
            } else {
                flag.as_str().to_string()
            };
            attrs.push(s("error.type", kind.clone()));
            Some(Status {
                code: status::StatusCode::Error as i32,
                message: format!("no response ({kind})"),
            })
        } else if failed_code {
            attrs.push(s("error.type", code.to_string()));
            Some(Status {
                code: status::StatusCode::Error as i32,
                message: String::new(),
            })
        } else {
            None
        };
        // The mesh's view of the hop.
        let (peer_workload, peer_namespace, peer_identity) = if client {
            (
                &t.destination_workload,
                &t.destination_namespace,
                &t.destination_principal,
            )
        } else {
            (&t.source_workload, &t.source_namespace, &t.source_principal)
        };
        attrs.push(s("outrigger.direction", r.direction.as_str()));
        attrs.push(s("outrigger.peer.workload", &**peer_workload));
        attrs.push(s("outrigger.peer.namespace", &**peer_namespace));
        attrs.push(s("outrigger.peer.identity", &**peer_identity));
        attrs.push(s("outrigger.destination_service", &*t.destination_service));
        attrs.push(s("outrigger.response_flags", flag.as_str()));
        attrs.push(s(
            "outrigger.connection_security_policy",
            match t.connection_security_policy {
                crate::metrics::SecurityPolicy::MutualTls => "mutual_tls",
                crate::metrics::SecurityPolicy::None => "none",
            },
        ));
        if let Some(u) = r.upstream {
            attrs.push(s("outrigger.upstream.address", u.to_string()));
        }
        if let Some(route) = &self.route {
            attrs.push(s("outrigger.route", &**route));
        }
        if let Some(id) = &r.request_id {
            // Envoy's and Istio's name for it.
            attrs.push(s("guid:x-request-id", id.clone()));
        }
        let events = r
            .retries
            .take()
            .into_iter()
            .map(|e| span::Event {
                time_unix_nano: nanos(e.at),
                name: "retry".into(),
                attributes: vec![
                    i("outrigger.retry.attempt", i64::from(e.attempt)),
                    s("outrigger.retry.previous", e.previous),
                ],
                dropped_attributes_count: 0,
            })
            .collect();
        let kind = if client {
            span::SpanKind::Client
        } else {
            span::SpanKind::Server
        };
        Span {
            trace_id: r.ctx.trace_id.bytes.to_vec(),
            span_id: r.ctx.span_id.0.to_vec(),
            trace_state: r.trace_state.clone().unwrap_or_default(),
            parent_span_id: r.ctx.parent.map(|p| p.0.to_vec()).unwrap_or_default(),
            // W3C trace flags (sampled); bit 8: the parent's context is
            // known to be local or not (here: remote when there is one).
            flags: 0x01 | if r.ctx.parent.is_some() { 0x300 } else { 0x100 },
            name,
            kind: kind as i32,
            start_time_unix_nano: nanos(r.start),
            end_time_unix_nano: nanos(self.end),
            attributes: attrs,
            events,
            status,
            ..Default::default()
        }
    }
}

/// The exporter thread's state.
struct Exporter {
    settings: Settings,
    counters: Counters,
}

impl Exporter {
    /// Batches spans as they come (a batch leaves when full or when its
    /// first span has waited `delay`); ends when every sender is gone,
    /// exporting what is left.
    #[allow(
        clippy::disallowed_methods,
        reason = "the exporter's own OS thread, outside any runtime: wall-clock batching"
    )]
    fn run(self, spans: Receiver<Queued>) {
        let b = &self.settings.batching;
        let mut batch: Vec<Finished> = Vec::with_capacity(b.max_spans);
        let mut flushed: Vec<std::sync::mpsc::Sender<()>> = Vec::new();
        let mut deadline: Option<Instant> = None;
        let mut failing = false;
        loop {
            let next = match deadline {
                None => spans.recv().map_err(|_| RecvTimeoutError::Disconnected),
                Some(d) => spans.recv_timeout(d.saturating_duration_since(Instant::now())),
            };
            let ended = match next {
                Ok(Queued::Span(span)) => {
                    if batch.is_empty() {
                        deadline = Some(Instant::now() + b.delay);
                    }
                    batch.push(*span);
                    false
                }
                Ok(Queued::Flush(done)) => {
                    flushed.push(done);
                    false
                }
                Err(RecvTimeoutError::Timeout) => false,
                Err(RecvTimeoutError::Disconnected) => true,
            };
            let due = deadline.is_some_and(|d| Instant::now() >= d) || !flushed.is_empty();
            if !batch.is_empty() && (ended || due || batch.len() >= b.max_spans) {
                let n = batch.len() as u64;
                match self.export(&batch) {
                    Ok(()) => {
                        self.counters.exported.inc_by(n);
                        if failing {
                            tracing::info!(collector = %self.settings.collector, "exporting spans again");
                        }
                        failing = false;
                    }
                    Err(e) => {
                        self.counters
                            .dropped
                            .get_or_create(&EXPORT_FAILED)
                            .inc_by(n);
                        if !failing {
                            tracing::warn!(collector = %self.settings.collector, error = %e, "cannot export spans; they are dropped until the collector takes them");
                        }
                        failing = true;
                    }
                }
                batch.clear();
                deadline = None;
            }
            for done in flushed.drain(..) {
                let _ = done.send(());
            }
            if ended {
                return;
            }
        }
    }

    /// The batch as one OTLP request: one resource per local workload.
    fn request(&self, batch: &[Finished]) -> ExportTraceServiceRequest {
        let mut groups: Vec<((Name, Name), Vec<Span>)> = Vec::new();
        for f in batch {
            let local = f.local();
            let span = f.to_otlp();
            match groups.iter_mut().find(|(k, _)| *k == local) {
                Some((_, spans)) => spans.push(span),
                None => groups.push((local, vec![span])),
            }
        }
        let resource_spans = groups
            .into_iter()
            .map(|((workload, namespace), spans)| {
                let service = self
                    .settings
                    .service_name
                    .clone()
                    .unwrap_or_else(|| format!("{workload}.{namespace}"));
                let mut attributes = vec![
                    s("service.name", service),
                    s("service.namespace", &*namespace),
                    s("k8s.namespace.name", &*namespace),
                    s("service.version", outrigger_runtime::build::VERSION),
                ];
                if let Some(pod) = &self.settings.pod_name {
                    attributes.push(s("k8s.pod.name", pod.clone()));
                }
                ResourceSpans {
                    resource: Some(Resource {
                        attributes,
                        ..Default::default()
                    }),
                    scope_spans: vec![ScopeSpans {
                        scope: Some(InstrumentationScope {
                            name: "outrigger-proxy".into(),
                            version: outrigger_runtime::build::VERSION.into(),
                            ..Default::default()
                        }),
                        spans,
                        schema_url: String::new(),
                    }],
                    schema_url: String::new(),
                }
            })
            .collect();
        ExportTraceServiceRequest { resource_spans }
    }

    /// Posts the batch; Ok on a 2xx answer.
    #[allow(
        clippy::disallowed_methods,
        reason = "blocking I/O on the exporter's own OS thread: a wall-clock limit"
    )]
    fn export(&self, batch: &[Finished]) -> std::io::Result<()> {
        use prost::Message as _;
        let body = self.request(batch).encode_to_vec();
        let c = &self.settings.collector;
        let timeout = self.settings.batching.timeout;
        let started = Instant::now();
        let addrs = (c.host.as_str(), c.port).to_socket_addrs()?;
        let mut last = std::io::Error::other("the collector's name resolves to no address");
        let mut stream = None;
        for addr in addrs {
            match TcpStream::connect_timeout(&addr, timeout) {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) => last = e,
            }
        }
        let mut stream = stream.ok_or(last)?;
        let left = timeout
            .saturating_sub(started.elapsed())
            .max(Duration::from_millis(1));
        stream.set_write_timeout(Some(left))?;
        stream.set_read_timeout(Some(left))?;
        let host = if c.host.contains(':') {
            format!("[{}]:{}", c.host, c.port)
        } else {
            format!("{}:{}", c.host, c.port)
        };
        let head = format!(
            "POST {} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/x-protobuf\r\ncontent-length: {}\r\nconnection: close\r\nuser-agent: outrigger-proxy/{}\r\n\r\n",
            c.path,
            body.len(),
            outrigger_runtime::build::VERSION,
        );
        stream.write_all(head.as_bytes())?;
        stream.write_all(&body)?;
        stream.flush()?;
        // The status line is enough: `HTTP/1.1 200 OK`.
        let mut answer = Vec::with_capacity(256);
        let mut buf = [0u8; 256];
        while !answer.windows(2).any(|w| w == b"\r\n") && answer.len() < 4096 {
            let n = stream.read(&mut buf)?;
            if n == 0 {
                break;
            }
            answer.extend_from_slice(&buf[..n]);
        }
        let status = answer
            .split(|&b| b == b' ')
            .nth(1)
            .and_then(|c| std::str::from_utf8(c).ok())
            .and_then(|c| c.parse::<u16>().ok());
        match status {
            Some(code) if (200..300).contains(&code) => Ok(()),
            Some(code) => Err(std::io::Error::other(format!(
                "the collector answered {code}"
            ))),
            None => Err(std::io::Error::other("the collector sent no HTTP answer")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{unknown, GrpcStatus, SecurityPolicy, TrafficLabels};

    #[test]
    fn a_request_id_is_added_only_when_missing() {
        let c = Chance::seeded(1);
        let mut h = HeaderMap::new();
        ensure_request_id(&mut h, &c);
        let id = h["x-request-id"].to_str().unwrap().to_string();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        ensure_request_id(&mut h, &c);
        assert_eq!(h["x-request-id"], id.as_str());
    }

    /// The peer every test request comes from.
    const PEER: SocketAddr = SocketAddr::new(
        std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 9)),
        41000,
    );

    /// A tracer sampling `percent` of new traces, its queue holding
    /// `capacity` spans: (it, the queue's far end).
    fn tracer(percent: f64, capacity: usize) -> (Tracer, Receiver<Queued>) {
        let (queue, rx) = sync_channel(capacity);
        let tracer = Tracer {
            sampling: Percent::try_from(percent).unwrap(),
            queue,
            counters: Counters::default(),
        };
        (tracer, rx)
    }

    fn labels(code: u16, direction: Direction) -> RequestLabels {
        RequestLabels {
            traffic: TrafficLabels {
                direction,
                source_workload: "client".into(),
                source_namespace: "shop".into(),
                source_principal: "spiffe://cluster.local/ns/shop/sa/client".into(),
                destination_workload: "web".into(),
                destination_namespace: "shop".into(),
                destination_principal: "spiffe://cluster.local/ns/shop/sa/web".into(),
                destination_service: "web.shop.svc.cluster.local".into(),
                connection_security_policy: SecurityPolicy::MutualTls,
            },
            response_code: code,
            grpc_response_status: GrpcStatus(None),
            response_flags: if code == 0 {
                ResponseFlag::DownstreamConnectionTermination
            } else {
                ResponseFlag::None
            },
        }
    }

    fn finished(direction: Direction, code: u16) -> (Finished, Receiver<Queued>) {
        let (tracer, rx) = tracer(100.0, 4);
        let mut req = http::Request::builder()
            .method("GET")
            .uri("/items?page=2")
            .header("host", "web.shop:8080")
            .header("user-agent", "curl/8")
            .header("x-request-id", "rid")
            .header(
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            )
            .header("tracestate", "congo=t61rcWkgMzE")
            .body(())
            .unwrap();
        let mut rec = tracer
            .begin(direction, &mut req, PEER, false, &Chance::seeded(1))
            .unwrap();
        req.extensions()
            .get::<RetryEvents>()
            .unwrap()
            .push(RetryEvent {
                at: SystemTime::now(),
                attempt: 2,
                previous: "503".into(),
            });
        rec.upstream = Some("10.0.0.7:8080".parse().unwrap());
        rec.attempts = 2;
        rec.end(
            &labels(code, direction),
            Duration::from_millis(3),
            Some("default".into()),
        );
        let Queued::Span(f) = rx.try_recv().unwrap() else {
            panic!("a span")
        };
        (*f, rx)
    }

    fn attr<'a>(span: &'a Span, key: &str) -> Option<&'a any_value::Value> {
        span.attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.as_ref()?.value.as_ref())
    }

    fn text(span: &Span, key: &str) -> String {
        match attr(span, key) {
            Some(any_value::Value::StringValue(s)) => s.clone(),
            other => panic!("{key}: {other:?}"),
        }
    }

    fn int(span: &Span, key: &str) -> i64 {
        match attr(span, key) {
            Some(any_value::Value::IntValue(v)) => *v,
            other => panic!("{key}: {other:?}"),
        }
    }

    #[test]
    fn a_client_span_carries_the_semantic_conventions_and_the_mesh() {
        let (f, _rx) = finished(Direction::Outbound, 503);
        let span = f.to_otlp();
        assert_eq!(span.kind, span::SpanKind::Client as i32);
        assert_eq!(span.name, "GET");
        assert_eq!(span.trace_state, "congo=t61rcWkgMzE");
        assert_eq!(hex(&span.parent_span_id), "b7ad6b7169203331");
        assert_eq!(text(&span, "http.request.method"), "GET");
        assert_eq!(text(&span, "url.full"), "http://web.shop:8080/items?page=2");
        assert_eq!(text(&span, "url.path"), "/items");
        assert_eq!(text(&span, "server.address"), "web.shop");
        assert_eq!(int(&span, "server.port"), 8080);
        assert_eq!(int(&span, "http.response.status_code"), 503);
        assert_eq!(text(&span, "network.peer.address"), "10.0.0.7");
        assert_eq!(text(&span, "user_agent.original"), "curl/8");
        assert_eq!(text(&span, "outrigger.peer.workload"), "web");
        assert_eq!(
            text(&span, "outrigger.peer.identity"),
            "spiffe://cluster.local/ns/shop/sa/web"
        );
        assert_eq!(text(&span, "outrigger.route"), "default");
        assert_eq!(text(&span, "guid:x-request-id"), "rid");
        assert_eq!(int(&span, "http.request.resend_count"), 1);
        assert_eq!(text(&span, "error.type"), "503");
        assert_eq!(span.status.unwrap().code, status::StatusCode::Error as i32);
        assert_eq!(span.events.len(), 1);
        assert_eq!(span.events[0].name, "retry");
    }

    #[test]
    fn a_server_span_fails_on_5xx_only() {
        let (f, _rx) = finished(Direction::Inbound, 404);
        let span = f.to_otlp();
        assert_eq!(span.kind, span::SpanKind::Server as i32);
        assert!(span.status.is_none());
        assert!(attr(&span, "error.type").is_none());
        assert_eq!(text(&span, "client.address"), "10.0.0.9");
        assert_eq!(text(&span, "outrigger.peer.workload"), "client");
        assert_eq!(f.local(), ("web".into(), "shop".into()));
        let (f, _rx) = finished(Direction::Inbound, 0);
        let span = f.to_otlp();
        assert_eq!(text(&span, "error.type"), "DC");
        assert_eq!(span.status.unwrap().code, status::StatusCode::Error as i32);
        let (f, _rx) = finished(Direction::Outbound, 404);
        assert!(f.to_otlp().status.is_some(), "a client span fails on 4xx");
        let _ = unknown();
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn an_unsampled_request_is_neither_recorded_nor_rewritten() {
        let (tracer, _rx) = tracer(0.0, 1);
        // A new trace not sampled: nothing is written (the next meshed
        // proxy takes no context from a meshed peer as "not sampled").
        let mut req = http::Request::new(());
        assert!(tracer
            .begin(
                Direction::Outbound,
                &mut req,
                PEER,
                false,
                &Chance::seeded(1)
            )
            .is_none());
        assert!(req.headers().is_empty(), "{:?}", req.headers());
        // A caller's "not sampled" passes on as it came.
        let unsampled = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00";
        let mut req = http::Request::builder()
            .header("traceparent", unsampled)
            .body(())
            .unwrap();
        assert!(tracer
            .begin(
                Direction::Outbound,
                &mut req,
                PEER,
                false,
                &Chance::seeded(1)
            )
            .is_none());
        assert_eq!(req.headers()["traceparent"], unsampled);
        // Malformed: replaced by a new, unsampled trace, so that the next
        // hop does not draw again.
        let mut req = http::Request::builder()
            .header("traceparent", "00-nonsense")
            .body(())
            .unwrap();
        assert!(tracer
            .begin(
                Direction::Outbound,
                &mut req,
                PEER,
                false,
                &Chance::seeded(1)
            )
            .is_none());
        let written = req.headers()["traceparent"].to_str().unwrap();
        assert!(written.ends_with("-00") && written.len() == 55, "{written}");
        assert!(
            !req.headers().contains_key("x-b3-sampled"),
            "traceparent alone"
        );
    }

    #[test]
    fn a_span_keeps_bounded_copies_of_what_the_request_said() {
        let (tracer, _rx) = tracer(100.0, 1);
        let long = "a".repeat(10_000);
        let state = (0..40)
            .map(|i| format!("v{i}=xxxxxxxxxxxx"))
            .collect::<Vec<_>>()
            .join(",");
        let mut req = http::Request::builder()
            .uri(format!("/{long}?q={long}"))
            .header("user-agent", &long)
            .header(
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            )
            .header("tracestate", &state)
            .body(())
            .unwrap();
        let rec = tracer
            .begin(
                Direction::Outbound,
                &mut req,
                PEER,
                false,
                &Chance::seeded(1),
            )
            .unwrap();
        assert!(rec.uri.to_string().len() <= MAX_URI, "{}", rec.uri);
        assert!(rec.user_agent.as_ref().unwrap().len() <= MAX_VALUE + 3);
        assert_eq!(rec.trace_state, None, "{} bytes of tracestate", state.len());
    }

    #[test]
    fn a_meshed_peer_without_a_trace_is_not_sampled_again() {
        let (tracer, _rx) = tracer(100.0, 1);
        let mut req = http::Request::new(());
        assert!(tracer
            .begin(Direction::Inbound, &mut req, PEER, true, &Chance::seeded(1))
            .is_none());
        assert!(req.headers().is_empty());
        // From outside the mesh, this proxy starts the trace.
        assert!(tracer
            .begin(
                Direction::Inbound,
                &mut req,
                PEER,
                false,
                &Chance::seeded(1)
            )
            .is_some());
        assert!(req.headers()["traceparent"]
            .to_str()
            .unwrap()
            .ends_with("-01"));
    }

    #[test]
    fn a_full_queue_drops_and_counts() {
        let (tracer, _rx) = tracer(100.0, 1);
        let counters = tracer.counters.clone();
        for _ in 0..3 {
            let mut req = http::Request::new(());
            let rec = tracer
                .begin(
                    Direction::Outbound,
                    &mut req,
                    PEER,
                    false,
                    &Chance::seeded(1),
                )
                .unwrap();
            rec.end(&labels(200, Direction::Outbound), Duration::ZERO, None);
        }
        assert_eq!(counters.dropped.get_or_create(&QUEUE_FULL).get(), 2);
    }
}
