//! The access log: one line per request on the proxy's stdout (where Envoy
//! and Istio write theirs, so `kubectl logs -c outrigger-proxy` shows it),
//! in `text` (Envoy's default shape) or `json` (Istio's key names), when it
//! is on (`--access-log`). Independent of the proxy's own log
//! (`--log-format`, on stderr).
//!
//! The data path never waits for stdout: a finished request hands its line
//! to a bounded queue ([`QUEUE_LINES`]) read by one writer thread; when the
//! queue is full the line is dropped and counted
//! (`outrigger_access_log_dropped_total`). When the log is off nothing is
//! computed per request: [`AccessLog`] is only built when a [`Logger`]
//! exists.
//!
//! Values taken from the request are escaped (JSON escaping in `json`;
//! quotes, backslashes and control characters in `text`), so that a header
//! cannot forge a second line or field. The fields are listed in
//! docs/proxy.md, "Access log".

use std::io::Write;
use std::net::SocketAddr;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use http::{HeaderMap, Method, Uri, Version};
use prometheus_client::metrics::counter::Counter;

use crate::metrics::{Name, RequestLabels};
use crate::svc::Attempts;

/// Longest path written to the log; longer ones are cut (with `...`).
const MAX_PATH: usize = 512;
/// Longest value taken from a request header (user agent, request id,
/// `x-forwarded-for`, authority); longer ones are cut (with `...`).
const MAX_HEADER: usize = 256;
/// Lines waiting for the writer thread before new ones are dropped: about
/// 2 MiB of 500-byte lines, a few seconds of a busy proxy's log.
pub const QUEUE_LINES: usize = 4096;
/// Lines written between two flushes at most, when they keep coming.
const BATCH: usize = 256;

/// Whether and how requests are logged (`--access-log`, the
/// `config.outrigger.dev/access-log` annotation).
pub use outrigger_api::AccessLogFormat as Format;

/// Where the lines go.
#[derive(Clone, Debug, Default)]
pub enum Sink {
    /// The process's stdout (the proxy binary).
    #[default]
    Stdout,
    /// A buffer in memory, for tests that run the proxy in process.
    Buffer(Arc<Mutex<Vec<u8>>>),
}

struct BufferWriter(Arc<Mutex<Vec<u8>>>);

impl Write for BufferWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut b = self.0.lock().unwrap_or_else(|p| p.into_inner());
        b.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The queue to the writer thread; cheap to share.
pub struct Logger {
    format: Format,
    queue: SyncSender<Queued>,
    dropped: Counter,
}

/// What the writer thread is handed.
enum Queued {
    Line(String),
    /// Answer once everything before is written.
    Flush(std::sync::mpsc::Sender<()>),
}

impl Logger {
    /// Starts the writer thread for `format` (None when it is `Off`);
    /// lines the queue cannot take are counted in `dropped`.
    pub fn start(format: Format, sink: &Sink, dropped: Counter) -> std::io::Result<Option<Self>> {
        if format == Format::Off {
            return Ok(None);
        }
        let out: Box<dyn Write + Send> = match sink {
            Sink::Stdout => Box::new(std::io::stdout()),
            Sink::Buffer(b) => Box::new(BufferWriter(b.clone())),
        };
        Self::spawn(format, out, QUEUE_LINES, dropped).map(|(logger, _)| Some(logger))
    }

    /// The logger and its writer thread, which ends once every clone of
    /// the logger is gone and its lines are written.
    fn spawn(
        format: Format,
        out: Box<dyn Write + Send>,
        capacity: usize,
        dropped: Counter,
    ) -> std::io::Result<(Self, std::thread::JoinHandle<()>)> {
        let (queue, lines) = sync_channel(capacity);
        let writer = std::thread::Builder::new()
            .name("outrigger-access-log".into())
            .spawn(move || write_lines(lines, out))?;
        let logger = Self {
            format,
            queue,
            dropped,
        };
        Ok((logger, writer))
    }

    pub fn format(&self) -> Format {
        self.format
    }

    /// Queues one line (with its newline); never waits.
    pub fn send(&self, line: String) {
        match self.queue.try_send(Queued::Line(line)) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.dropped.inc();
            }
        }
    }

    /// Waits (blocking, at most `limit`) until the lines queued so far are
    /// written: for the end of a drain, so that the last requests' lines
    /// reach stdout before the process exits. False if they were not
    /// (the queue was full, or the writer is slower than `limit`).
    pub fn flush(&self, limit: Duration) -> bool {
        let (done, written) = std::sync::mpsc::channel();
        self.queue.try_send(Queued::Flush(done)).is_ok() && written.recv_timeout(limit).is_ok()
    }
}

/// The writer thread: writes lines as they come, flushing when the queue
/// is empty (or every [`BATCH`] lines); ends when every [`Logger`] is
/// gone.
fn write_lines(queue: Receiver<Queued>, out: Box<dyn Write + Send>) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
    let mut failed = false;
    while let Ok(first) = queue.recv() {
        let mut flushed = Vec::new();
        let mut result = Ok(());
        let more = std::iter::from_fn(|| queue.try_recv().ok()).take(BATCH);
        for q in std::iter::once(first).chain(more) {
            match q {
                Queued::Line(line) => {
                    result = result.and_then(|()| out.write_all(line.as_bytes()));
                }
                Queued::Flush(done) => flushed.push(done),
            }
        }
        result = result.and_then(|()| out.flush());
        for done in flushed {
            let _ = done.send(());
        }
        if let Err(e) = result {
            if !failed {
                tracing::warn!(error = %e, "cannot write the access log; lines are lost until it can");
            }
            failed = true;
        } else {
            failed = false;
        }
    }
}

/// What is logged of one request, gathered as it goes (only when the log
/// is on).
pub struct AccessLog {
    pub logger: Arc<Logger>,
    /// When the request head arrived (wall clock).
    pub start: SystemTime,
    /// `-` for a request the proxy could not read.
    pub method: Method,
    /// None for a request the proxy could not read (path `-`).
    pub uri: Option<Uri>,
    pub version: Version,
    pub request: RequestHeaders,
    pub peer: SocketAddr,
    /// The caller's SPIFFE ID, over mutual TLS.
    pub peer_identity: Option<Name>,
    pub upstream: Option<SocketAddr>,
    /// The route taken (outbound), by its metric label.
    pub route: Option<Name>,
    pub attempts: Option<Attempts>,
    /// Response body bytes sent to the client so far.
    pub bytes_sent: u64,
}

/// What the log takes from the request's headers, bounded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestHeaders {
    /// `:authority`, or `host` for HTTP/1.
    pub authority: Option<String>,
    pub user_agent: Option<String>,
    /// `x-request-id` as received.
    pub request_id: Option<String>,
    pub forwarded_for: Option<String>,
    /// From `traceparent`, `b3` or `x-b3-traceid` ([`trace_id`]).
    pub trace_id: Option<String>,
}

impl RequestHeaders {
    pub fn of(uri: &Uri, headers: &HeaderMap) -> Self {
        let get = |name: &str| headers.get(name).map(|v| bounded(v.as_bytes()));
        Self {
            authority: uri
                .authority()
                .map(|a| bounded(a.as_str().as_bytes()))
                .or_else(|| get("host")),
            user_agent: get("user-agent"),
            request_id: get("x-request-id"),
            forwarded_for: get("x-forwarded-for"),
            trace_id: trace_id(headers),
        }
    }
}

/// A header value as text (bytes that are not UTF-8 replaced), at most
/// [`MAX_HEADER`] bytes.
fn bounded(v: &[u8]) -> String {
    let s = String::from_utf8_lossy(v);
    cut(&s, MAX_HEADER)
}

/// `s`, cut to at most `max` bytes (at a character boundary) with `...`.
pub(crate) fn cut(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// The trace a request belongs to, from its W3C `traceparent` or its B3
/// headers (`b3`, then `x-b3-*`), the first well-formed one; None when
/// there is none or none is well formed. The rules are tracing's
/// ([`outrigger_proxy_policy::trace::trace_id_of`]).
pub fn trace_id(headers: &HeaderMap) -> Option<String> {
    outrigger_proxy_policy::trace::trace_id_of(headers).map(|t| t.b3_hex())
}

/// How a request ended, as its metrics labelled it.
pub struct Ended<'a> {
    pub labels: &'a RequestLabels,
    pub duration: Duration,
    /// Request body bytes received from the client.
    pub bytes_received: u64,
}

impl AccessLog {
    /// Writes the request's line (queued; see [`Logger::send`]).
    pub fn emit(&self, ended: &Ended<'_>) {
        self.logger.send(self.line(self.logger.format(), ended));
    }

    /// The request's line in `format`, newline included.
    pub fn line(&self, format: Format, e: &Ended<'_>) -> String {
        let path = match &self.uri {
            Some(uri) => uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"),
            None => "-",
        };
        let path = cut(path, MAX_PATH);
        let upstream = self.upstream.map(|u| u.to_string());
        let f = Fields {
            start_time: rfc3339_millis(self.start),
            method: self.method.as_str(),
            path: &path,
            protocol: version_str(self.version),
            response_code: e.labels.response_code,
            response_flags: e.labels.response_flags.as_str(),
            bytes_received: e.bytes_received,
            bytes_sent: self.bytes_sent,
            duration: e.duration.as_millis(),
            forwarded_for: self.request.forwarded_for.as_deref().unwrap_or("-"),
            user_agent: self.request.user_agent.as_deref().unwrap_or("-"),
            request_id: self.request.request_id.as_deref().unwrap_or("-"),
            authority: self.request.authority.as_deref().unwrap_or("-"),
            upstream_host: upstream.as_deref().unwrap_or("-"),
            trace_id: self.request.trace_id.as_deref().unwrap_or("-"),
            peer_identity: self.peer_identity.as_deref().unwrap_or("-"),
            direction: e.labels.traffic.direction.as_str(),
            destination_service: &e.labels.traffic.destination_service,
            route_name: self.route.as_deref().unwrap_or("-"),
            attempts: self.attempts.map_or(1, |a| a.0),
            downstream_remote_address: self.peer,
            grpc_status: e.labels.grpc_response_status.code(),
        };
        match format {
            Format::Json => f.json(),
            Format::Text | Format::Off => f.text(),
        }
    }
}

/// One line's values, in the order of the text format.
struct Fields<'a> {
    start_time: String,
    method: &'a str,
    path: &'a str,
    protocol: &'a str,
    response_code: u16,
    response_flags: &'a str,
    bytes_received: u64,
    bytes_sent: u64,
    duration: u128,
    forwarded_for: &'a str,
    user_agent: &'a str,
    request_id: &'a str,
    authority: &'a str,
    upstream_host: &'a str,
    trace_id: &'a str,
    peer_identity: &'a str,
    direction: &'a str,
    destination_service: &'a str,
    route_name: &'a str,
    attempts: u32,
    downstream_remote_address: SocketAddr,
    grpc_status: Option<u8>,
}

impl Fields<'_> {
    /// Envoy's default line (its `%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%`
    /// is always `-`), then the mesh's fields.
    fn text(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::with_capacity(384);
        let _ = writeln!(
            s,
            "[{}] \"{} {} {}\" {} {} {} {} {} - \"{}\" \"{}\" \"{}\" \"{}\" \"{}\" {} {} {} {} {} {} {} {}",
            self.start_time,
            Text(self.method),
            Text(self.path),
            self.protocol,
            self.response_code,
            self.response_flags,
            self.bytes_received,
            self.bytes_sent,
            self.duration,
            Text(self.forwarded_for),
            Text(self.user_agent),
            Text(self.request_id),
            Text(self.authority),
            self.upstream_host,
            Text(self.trace_id),
            Text(self.peer_identity),
            self.direction,
            Text(self.destination_service),
            Text(self.route_name),
            self.attempts,
            self.downstream_remote_address,
            self.grpc_status.map_or("-".to_string(), |c| c.to_string()),
        );
        s
    }

    /// One JSON object: Istio's keys where it has one, Envoy's command
    /// names (lowercase) for the rest.
    fn json(&self) -> String {
        use std::fmt::Write as _;
        let q = |v: &str| serde_json::to_string(v).expect("a string serializes");
        let mut s = String::with_capacity(640);
        let _ = writeln!(
            s,
            "{{\"start_time\":{},\"method\":{},\"path\":{},\"protocol\":{},\"response_code\":{},\"response_flags\":{},\"bytes_received\":{},\"bytes_sent\":{},\"duration\":{},\"x_forwarded_for\":{},\"user_agent\":{},\"request_id\":{},\"authority\":{},\"upstream_host\":{},\"trace_id\":{},\"downstream_peer_uri_san\":{},\"direction\":{},\"destination_service\":{},\"route_name\":{},\"upstream_request_attempt_count\":{},\"downstream_remote_address\":{},\"grpc_status\":{}}}",
            q(&self.start_time),
            q(self.method),
            q(self.path),
            q(self.protocol),
            self.response_code,
            q(self.response_flags),
            self.bytes_received,
            self.bytes_sent,
            self.duration,
            q(self.forwarded_for),
            q(self.user_agent),
            q(self.request_id),
            q(self.authority),
            q(self.upstream_host),
            q(self.trace_id),
            q(self.peer_identity),
            q(self.direction),
            q(self.destination_service),
            q(self.route_name),
            self.attempts,
            q(&self.downstream_remote_address.to_string()),
            self.grpc_status.map_or("null".to_string(), |c| c.to_string()),
        );
        s
    }
}

/// A value in a text line: `"` and `\` escaped with a backslash, control
/// characters as `\xNN`, so that nothing can end the field or the line.
struct Text<'a>(&'a str);

impl std::fmt::Display for Text<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::fmt::Write as _;
        for c in self.0.chars() {
            match c {
                '"' => f.write_str("\\\"")?,
                '\\' => f.write_str("\\\\")?,
                c if c.is_control() => write!(f, "\\x{:02x}", u32::from(c))?,
                c => f.write_char(c)?,
            }
        }
        Ok(())
    }
}

pub use outrigger_runtime::timestamp::rfc3339_millis;

fn version_str(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/?",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{unknown, Direction, GrpcStatus, ResponseFlag, Workload};
    use crate::metrics::{RequestLabels, TrafficLabels};

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                http::HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

    #[test]
    fn the_trace_id_comes_from_traceparent_then_b3() {
        let tp = format!("00-{TRACE}-00f067aa0ba902b7-01");
        assert_eq!(
            trace_id(&headers(&[("traceparent", &tp)])).as_deref(),
            Some(TRACE)
        );
        // A later version may add fields after the flags.
        let v1 = format!("01-{TRACE}-00f067aa0ba902b7-01-extra");
        assert_eq!(
            trace_id(&headers(&[("traceparent", &v1)])).as_deref(),
            Some(TRACE)
        );
        let b3 = format!("{TRACE}-00f067aa0ba902b7-1-05e3ac9a4f6e3b90");
        assert_eq!(trace_id(&headers(&[("b3", &b3)])).as_deref(), Some(TRACE));
        assert_eq!(
            trace_id(&headers(&[("b3", "a3ce929d0e0e4736-00f067aa0ba902b7")])).as_deref(),
            Some("a3ce929d0e0e4736")
        );
        assert_eq!(
            trace_id(&headers(&[("x-b3-traceid", "a3ce929d0e0e4736")])).as_deref(),
            Some("a3ce929d0e0e4736")
        );
        // traceparent wins over B3; a malformed one gives way to B3.
        let both = headers(&[("traceparent", &tp), ("x-b3-traceid", "a3ce929d0e0e4736")]);
        assert_eq!(trace_id(&both).as_deref(), Some(TRACE));
        let bad_then_b3 = headers(&[
            ("traceparent", "00-xyz"),
            ("x-b3-traceid", "a3ce929d0e0e4736"),
        ]);
        assert_eq!(trace_id(&bad_then_b3).as_deref(), Some("a3ce929d0e0e4736"));
    }

    #[test]
    fn malformed_trace_headers_give_no_trace_id() {
        let zeros = "0".repeat(32);
        for (name, value) in [
            ("traceparent", format!("00-{TRACE}-00f067aa0ba902b7")),
            ("traceparent", format!("ff-{TRACE}-00f067aa0ba902b7-01")),
            ("traceparent", format!("00-{zeros}-00f067aa0ba902b7-01")),
            ("traceparent", format!("00-{TRACE}-0000000000000000-01")),
            (
                "traceparent",
                format!("00-{}-00f067aa0ba902b7-01", TRACE.to_uppercase()),
            ),
            (
                "traceparent",
                format!("00-{TRACE}-00f067aa0ba902b7-01-more"),
            ),
            ("traceparent", format!("00-{TRACE}x-00f067aa0ba902b7-01")),
            ("traceparent", String::new()),
            ("b3", "1".to_string()),
            ("b3", "d".to_string()),
            ("b3", TRACE.to_string()),
            ("b3", format!("{TRACE}-00f067aa0ba902b7-yes")),
            ("b3", format!("{TRACE}-00f067aa0ba902b7-1-xyz")),
            (
                "b3",
                format!("{TRACE}-00f067aa0ba902b7-1-05e3ac9a4f6e3b90-more"),
            ),
            ("x-b3-traceid", "abc".to_string()),
            ("x-b3-traceid", "0000000000000000".to_string()),
            ("x-b3-traceid", "g3ce929d0e0e4736".to_string()),
        ] {
            assert_eq!(
                trace_id(&headers(&[(name, &value)])),
                None,
                "{name}: {value}"
            );
        }
        assert_eq!(trace_id(&HeaderMap::new()), None);
    }

    /// An inbound request to `web` in shop, from a caller it cannot name.
    fn labels() -> RequestLabels {
        let web = Workload {
            workload: "web".into(),
            namespace: "shop".into(),
            principal: unknown(),
        };
        let caller = Workload::unknown();
        RequestLabels {
            traffic: TrafficLabels::new(Direction::Inbound, &web, &caller, "web.shop".into()),
            response_code: 200,
            grpc_response_status: GrpcStatus(None),
            response_flags: ResponseFlag::None,
        }
    }

    fn logged(request: RequestHeaders, path: &str) -> AccessLog {
        let (logger, _) = buffer_logger(Format::Text, 8);
        AccessLog {
            logger: Arc::new(logger),
            start: SystemTime::UNIX_EPOCH + Duration::from_millis(1_800_000_000_123),
            method: Method::GET,
            uri: Some(path.parse().unwrap()),
            version: Version::HTTP_11,
            request,
            peer: "10.0.0.7:51000".parse().unwrap(),
            peer_identity: Some("spiffe://cluster.local/ns/shop/sa/client".into()),
            upstream: Some("127.0.0.1:8080".parse().unwrap()),
            route: None,
            attempts: None,
            bytes_sent: 11,
        }
    }

    fn buffer_logger(format: Format, capacity: usize) -> (Logger, Arc<Mutex<Vec<u8>>>) {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let out = Box::new(BufferWriter(buf.clone()));
        let (logger, _) = Logger::spawn(format, out, capacity, Counter::default()).unwrap();
        (logger, buf)
    }

    fn ended(labels: &RequestLabels) -> Ended<'_> {
        Ended {
            labels,
            duration: Duration::from_micros(3_900),
            bytes_received: 5,
        }
    }

    #[test]
    fn a_text_line_has_every_field_in_envoys_order() {
        let request = RequestHeaders {
            authority: Some("web.shop:80".into()),
            user_agent: Some("curl/8.5.0".into()),
            request_id: None,
            forwarded_for: None,
            trace_id: Some(TRACE.into()),
        };
        let labels = labels();
        let line = logged(request, "/a?b=c").line(Format::Text, &ended(&labels));
        assert_eq!(
            line,
            format!("[2027-01-15T08:00:00.123Z] \"GET /a?b=c HTTP/1.1\" 200 - 5 11 3 - \"-\" \"curl/8.5.0\" \"-\" \"web.shop:80\" \"127.0.0.1:8080\" {TRACE} spiffe://cluster.local/ns/shop/sa/client inbound web.shop - 1 10.0.0.7:51000 -\n")
        );
    }

    #[test]
    fn a_json_line_is_one_object_with_istios_keys() {
        let labels = labels();
        let mut log = logged(RequestHeaders::default(), "/");
        log.attempts = Some(Attempts(2));
        log.route = Some("r1".into());
        let line = log.line(Format::Json, &ended(&labels));
        assert!(line.ends_with('\n') && !line[..line.len() - 1].contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "start_time": "2027-01-15T08:00:00.123Z",
                "method": "GET",
                "path": "/",
                "protocol": "HTTP/1.1",
                "response_code": 200,
                "response_flags": "-",
                "bytes_received": 5,
                "bytes_sent": 11,
                "duration": 3,
                "x_forwarded_for": "-",
                "user_agent": "-",
                "request_id": "-",
                "authority": "-",
                "upstream_host": "127.0.0.1:8080",
                "trace_id": "-",
                "downstream_peer_uri_san": "spiffe://cluster.local/ns/shop/sa/client",
                "direction": "inbound",
                "destination_service": "web.shop",
                "route_name": "r1",
                "upstream_request_attempt_count": 2,
                "downstream_remote_address": "10.0.0.7:51000",
                "grpc_status": null,
            })
        );
    }

    /// The quotes of a text line that are not escaped: the format's own.
    fn unescaped_quotes(line: &str) -> usize {
        let (mut count, mut escaped) = (0, false);
        for c in line.chars() {
            match (c, escaped) {
                (_, true) => escaped = false,
                ('\\', false) => escaped = true,
                ('"', false) => count += 1,
                _ => {}
            }
        }
        count
    }

    #[test]
    fn a_header_with_a_newline_or_quote_cannot_break_a_line() {
        let forged = "x\" 200 -\n[2027-01-01T00:00:00.000Z] \"GET /forged HTTP/1.1\" 200\r\t\\";
        let request = RequestHeaders {
            authority: Some(forged.into()),
            user_agent: Some(forged.into()),
            request_id: Some(forged.into()),
            forwarded_for: Some(forged.into()),
            trace_id: None,
        };
        let labels = labels();
        let log = logged(request, "/");
        let text = log.line(Format::Text, &ended(&labels));
        assert_eq!(text.matches('\n').count(), 1, "{text}");
        assert!(text.ends_with('\n') && !text.contains('\r') && !text.contains('\t'));
        // Every quote in a value is escaped: the unescaped quotes are the
        // format's own (the request line, and four per quoted field).
        assert_eq!(unescaped_quotes(&text), 2 + 2 * 5, "{text}");
        assert!(text.contains(r#""x\" 200 -\x0a[2027-01-01T00:00:00.000Z] \"GET /forged HTTP/1.1\" 200\x0d\x09\\""#), "{text}");
        let json = log.line(Format::Json, &ended(&labels));
        assert_eq!(json.matches('\n').count(), 1, "{json}");
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["user_agent"], forged);
        assert_eq!(v["request_id"], forged);
        assert_eq!(v["path"], "/");
    }

    #[test]
    fn long_values_are_cut() {
        let long = "é".repeat(400);
        let h = headers(&[("user-agent", &long), ("host", "web")]);
        let r = RequestHeaders::of(&"/".parse().unwrap(), &h);
        let ua = r.user_agent.unwrap();
        assert!(ua.len() <= MAX_HEADER + 3 && ua.ends_with("...") && ua.starts_with("éé"));
        assert_eq!(r.authority.as_deref(), Some("web"));
        let labels = labels();
        let log = logged(RequestHeaders::default(), &format!("/{}", "a".repeat(2000)));
        let v: serde_json::Value =
            serde_json::from_str(&log.line(Format::Json, &ended(&labels))).unwrap();
        assert_eq!(v["path"].as_str().unwrap().len(), MAX_PATH + 3);
    }

    /// Says when a write starts, then blocks it until told to go on.
    struct Stuck {
        entered: std::sync::mpsc::Sender<()>,
        go: std::sync::mpsc::Receiver<()>,
    }

    impl Write for Stuck {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let _ = self.entered.send(());
            let _ = self.go.recv();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stuck_stdout_drops_and_counts_lines_and_never_blocks() {
        let (entered, writing) = std::sync::mpsc::channel();
        let (go, stuck) = std::sync::mpsc::channel();
        let dropped = Counter::default();
        let out = Box::new(Stuck { entered, go: stuck });
        let (logger, writer) = Logger::spawn(Format::Text, out, 4, dropped.clone()).unwrap();
        logger.send("first\n".into());
        // The writer holds the first line, stuck in its write.
        writing.recv().unwrap();
        for i in 0..20 {
            logger.send(format!("line {i}\n"));
        }
        // The queue took 4; the other 16 were dropped, none waited.
        assert_eq!(dropped.get(), 16);
        // Nor does a flush behind a full queue.
        assert!(!logger.flush(Duration::from_secs(10)));
        drop(logger);
        drop(go);
        writer.join().unwrap();
    }

    #[test]
    fn lines_reach_the_sink_whole_and_in_order() {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let dropped = Counter::default();
        let out = Box::new(BufferWriter(buf.clone()));
        let (logger, writer) = Logger::spawn(Format::Text, out, 128, dropped.clone()).unwrap();
        for i in 0..100 {
            logger.send(format!("line {i}\n"));
        }
        assert!(logger.flush(Duration::from_secs(10)));
        let want: String = (0..100).map(|i| format!("line {i}\n")).collect();
        assert_eq!(
            String::from_utf8(buf.lock().unwrap().clone()).unwrap(),
            want
        );
        assert_eq!(dropped.get(), 0);
        // The writer ends with its last logger.
        drop(logger);
        writer.join().unwrap();
    }
}
