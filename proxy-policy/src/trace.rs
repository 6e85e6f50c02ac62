//! Distributed tracing, the pure part: the trace context a request carries
//! (W3C Trace Context's `traceparent`, B3's single `b3` header and its
//! multi-header form), the context the proxy passes on in its place, the
//! sampling decision, and the ids (trace, span, `x-request-id`).
//!
//! The proxy reads a request's context ([`Incoming::read`]), decides what
//! to do with it ([`Incoming::next`]: most unsampled requests pass
//! untouched), joins its trace or starts one ([`Incoming::child`], which
//! draws the sampling decision where no parent made it), and rewrites the
//! headers with its own span as the next hop's parent ([`SpanContext::write`]). What a malformed header
//! says is ignored: the request starts a new trace, it is never refused.
//!
//! Propagation rules (docs/observability.md, "Tracing"):
//! - `traceparent` wins when it is valid; otherwise the single `b3`
//!   header; otherwise the multi `x-b3-*` headers; otherwise a new trace.
//! - Every form that came in is rewritten with the proxy's span (so that
//!   the next hop sees one trace, whichever form it reads); `tracestate` is
//!   kept as is when the trace is joined through `traceparent`, and dropped
//!   otherwise (W3C: it means nothing without its `traceparent`).
//! - A request with none of them that is sampled leaves with `traceparent`
//!   alone (as Envoy's OpenTelemetry tracer sends); one that is not sampled
//!   leaves with nothing.

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::chance::Chance;

pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
pub const B3: HeaderName = HeaderName::from_static("b3");
pub const B3_TRACE_ID: HeaderName = HeaderName::from_static("x-b3-traceid");
pub const B3_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-spanid");
pub const B3_PARENT_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-parentspanid");
pub const B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
pub const B3_FLAGS: HeaderName = HeaderName::from_static("x-b3-flags");
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// A trace id: 16 bytes, not all zero. B3's 64-bit ids are the low 8
/// bytes (`short`), written back in the width they came in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TraceId {
    pub bytes: [u8; 16],
    /// Came as a 64-bit B3 id (16 hex digits).
    pub short: bool,
}

/// A span id: 8 bytes, not all zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SpanId(pub [u8; 8]);

impl TraceId {
    /// A new random id (128 bits, never all zero).
    pub fn random(chance: &Chance) -> Self {
        let mut bits = chance.bits();
        if bits == 0 {
            bits = 1;
        }
        Self {
            bytes: bits.to_be_bytes(),
            short: false,
        }
    }

    /// 32 lowercase hex digits (a short id padded with zeros on the left,
    /// as W3C and OTLP want 16 bytes).
    pub fn hex(&self) -> String {
        hex(&self.bytes)
    }

    /// As B3 writes it: in the width it came in.
    pub fn b3_hex(&self) -> String {
        if self.short {
            hex(&self.bytes[8..])
        } else {
            hex(&self.bytes)
        }
    }
}

impl SpanId {
    /// A new random id (never all zero).
    pub fn random(chance: &Chance) -> Self {
        let mut bits = chance.bits64();
        if bits == 0 {
            bits = 1;
        }
        Self(bits.to_be_bytes())
    }

    pub fn hex(&self) -> String {
        hex(&self.0)
    }
}

const DIGITS: &[u8; 16] = b"0123456789abcdef";

/// Every byte's two hex digits, looked up rather than computed.
static PAIRS: [[u8; 2]; 256] = {
    let mut t = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = [DIGITS[i >> 4], DIGITS[i & 0xf]];
        i += 1;
    }
    t
};

/// `bytes` as lowercase hex into `out` (twice as long).
fn hex_into(bytes: &[u8], out: &mut [u8]) {
    for (b, pair) in bytes.iter().zip(out.chunks_exact_mut(2)) {
        pair.copy_from_slice(&PAIRS[usize::from(*b)]);
    }
}

fn hex(bytes: &[u8]) -> String {
    let mut out = vec![0u8; bytes.len() * 2];
    hex_into(bytes, &mut out);
    String::from_utf8(out).expect("hex digits")
}

/// A header value from bytes built here (hex digits and dashes), unique to
/// one request: marked sensitive, so that HTTP/2's header compression
/// sends it as a literal rather than churning its table with it.
fn header_value(bytes: &[u8]) -> HeaderValue {
    let mut v = HeaderValue::from_bytes(bytes).expect("hex digits and dashes");
    v.set_sensitive(true);
    v
}

/// Lowercase hex digits only (W3C and B3 both say lowercase; an uppercase
/// id is malformed).
fn unhex<const N: usize>(s: &[u8]) -> Option<[u8; N]> {
    if s.len() != 2 * N {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

fn nonzero<const N: usize>(b: [u8; N]) -> Option<[u8; N]> {
    b.iter().any(|&x| x != 0).then_some(b)
}

/// A trace id of 16 or 32 lowercase hex digits, not all zero.
fn parse_trace_id(s: &[u8]) -> Option<TraceId> {
    match s.len() {
        16 => {
            let low = nonzero(unhex::<8>(s)?)?;
            let mut bytes = [0u8; 16];
            bytes[8..].copy_from_slice(&low);
            Some(TraceId { bytes, short: true })
        }
        32 => Some(TraceId {
            bytes: nonzero(unhex::<16>(s)?)?,
            short: false,
        }),
        _ => None,
    }
}

fn parse_span_id(s: &[u8]) -> Option<SpanId> {
    Some(SpanId(nonzero(unhex::<8>(s)?)?))
}

/// The caller's span, as one header form named it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parent {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    /// The caller's decision; None: deferred to this hop (B3 without one).
    pub sampled: Option<bool>,
    /// B3's debug flag (sampled, and asks every hop to record).
    pub debug: bool,
    /// W3C trace flags other than `sampled`, passed on (version 00 knows
    /// only `sampled`; later versions' bits are kept as they came).
    pub flags: u8,
}

/// `traceparent`: `version-traceid-parentid-flags`. Version `ff` is
/// invalid; version `00` is exactly 55 characters; a later version may
/// carry more after a `-`, which is ignored. Ids lowercase hex, not all
/// zero.
pub fn parse_traceparent(v: &[u8]) -> Option<Parent> {
    let v = v.trim_ascii();
    if v.len() < 55 || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let [version] = unhex::<1>(&v[..2])?;
    if version == 0xff || (version == 0 && v.len() != 55) || (v.len() > 55 && v[55] != b'-') {
        return None;
    }
    let trace = unhex::<16>(&v[3..35]).and_then(nonzero)?;
    let span = parse_span_id(&v[36..52])?;
    let [flags] = unhex::<1>(&v[53..55])?;
    Some(Parent {
        trace_id: TraceId {
            bytes: trace,
            short: false,
        },
        span_id: span,
        sampled: Some(flags & 1 == 1),
        debug: false,
        flags: if version == 0 { 0 } else { flags & !1 },
    })
}

/// What a B3 header says: a span, or only a sampling decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum B3Says {
    Span(Parent),
    /// `b3: 0|1|d`, or `x-b3-sampled`/`x-b3-flags` without ids.
    Decision {
        sampled: bool,
        debug: bool,
    },
}

fn b3_sampling(s: &[u8]) -> Option<(bool, bool)> {
    match s {
        b"0" => Some((false, false)),
        b"1" => Some((true, false)),
        b"d" => Some((true, true)),
        _ => None,
    }
}

/// The single `b3` header: `traceid-spanid[-sampled[-parentspanid]]`, or a
/// lone sampling state `0`, `1` or `d`. The parent span id, when there, must
/// be well formed, but is not needed: this hop's parent is `spanid`.
pub fn parse_b3_single(v: &[u8]) -> Option<B3Says> {
    let v = v.trim_ascii();
    if let Some((sampled, debug)) = b3_sampling(v) {
        return Some(B3Says::Decision { sampled, debug });
    }
    let mut parts = v.split(|&c| c == b'-');
    let trace_id = parse_trace_id(parts.next()?)?;
    let span_id = parse_span_id(parts.next()?)?;
    let (sampled, debug) = match parts.next() {
        None => (None, false),
        Some(s) => {
            let (sampled, debug) = b3_sampling(s)?;
            (Some(sampled), debug)
        }
    };
    if let Some(parent) = parts.next() {
        parse_span_id(parent)?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some(B3Says::Span(Parent {
        trace_id,
        span_id,
        sampled,
        debug,
        flags: 0,
    }))
}

/// The multi-header form: `x-b3-traceid` and `x-b3-spanid` (both or none),
/// `x-b3-parentspanid` (well formed when there), `x-b3-sampled` (`1`/`0`;
/// `true`/`false` as older tracers send), `x-b3-flags: 1` (debug). None
/// when none of them is there or any is malformed.
pub fn parse_b3_multi(headers: &HeaderMap) -> Option<B3Says> {
    let get = |n: &HeaderName| headers.get(n).map(HeaderValue::as_bytes);
    B3Multi {
        trace_id: get(&B3_TRACE_ID),
        span_id: get(&B3_SPAN_ID),
        parent_span_id: get(&B3_PARENT_SPAN_ID),
        sampled: get(&B3_SAMPLED),
        flags: get(&B3_FLAGS),
    }
    .parse()
}

/// The B3 multi headers' values, as found.
#[derive(Clone, Copy, Default)]
struct B3Multi<'a> {
    trace_id: Option<&'a [u8]>,
    span_id: Option<&'a [u8]>,
    parent_span_id: Option<&'a [u8]>,
    sampled: Option<&'a [u8]>,
    flags: Option<&'a [u8]>,
}

impl B3Multi<'_> {
    fn any(&self) -> bool {
        self.trace_id.is_some()
            || self.span_id.is_some()
            || self.sampled.is_some()
            || self.flags.is_some()
    }

    fn parse(&self) -> Option<B3Says> {
        fn get(v: Option<&[u8]>) -> Option<&[u8]> {
            v.map(<[u8]>::trim_ascii)
        }
        let debug = match get(self.flags) {
            None => false,
            Some(b"1") => true,
            Some(b"0") => false,
            Some(_) => return None,
        };
        let sampled = match get(self.sampled) {
            None => None,
            Some(b"1" | b"true") => Some(true),
            Some(b"0" | b"false") => Some(false),
            Some(_) => return None,
        };
        let sampled = if debug { Some(true) } else { sampled };
        match (get(self.trace_id), get(self.span_id)) {
            (Some(t), Some(s)) => {
                if let Some(p) = get(self.parent_span_id) {
                    parse_span_id(p)?;
                }
                Some(B3Says::Span(Parent {
                    trace_id: parse_trace_id(t)?,
                    span_id: parse_span_id(s)?,
                    sampled,
                    debug,
                    flags: 0,
                }))
            }
            (None, None) => sampled.map(|sampled| B3Says::Decision { sampled, debug }),
            _ => None,
        }
    }
}

/// Which header forms a request came with (present, well formed or not).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Forms {
    pub w3c: bool,
    pub b3_single: bool,
    pub b3_multi: bool,
    /// A `tracestate` came (kept only with the `traceparent` it goes with).
    pub tracestate: bool,
}

/// What a request's headers say about its trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Incoming {
    /// The caller's span, from the first well-formed form.
    pub parent: Option<Parent>,
    /// The parent came from `traceparent` (so `tracestate` goes with it).
    pub from_w3c: bool,
    /// A sampling decision without a span (B3 only).
    pub decision: Option<(bool, bool)>,
    pub forms: Forms,
}

impl Incoming {
    /// One pass over the headers (cheaper than a lookup per name: a
    /// request has few headers, and most have none of these).
    pub fn read(headers: &HeaderMap) -> Self {
        let (mut traceparent, mut b3_single, mut tracestate) = (None, None, false);
        let mut multi = B3Multi::default();
        for (name, value) in headers {
            let v = Some(value.as_bytes());
            let slot = match name.as_str() {
                "traceparent" => &mut traceparent,
                "tracestate" => {
                    tracestate = true;
                    continue;
                }
                "b3" => &mut b3_single,
                "x-b3-traceid" => &mut multi.trace_id,
                "x-b3-spanid" => &mut multi.span_id,
                "x-b3-parentspanid" => &mut multi.parent_span_id,
                "x-b3-sampled" => &mut multi.sampled,
                "x-b3-flags" => &mut multi.flags,
                _ => continue,
            };
            if slot.is_none() {
                *slot = v;
            }
        }
        let forms = Forms {
            w3c: traceparent.is_some(),
            b3_single: b3_single.is_some(),
            b3_multi: multi.any(),
            tracestate,
        };
        let mut incoming = Self {
            parent: None,
            from_w3c: false,
            decision: None,
            forms,
        };
        if let Some(v) = traceparent {
            incoming.parent = parse_traceparent(v);
            incoming.from_w3c = incoming.parent.is_some();
        }
        let mut b3 = |says: Option<B3Says>| match says {
            Some(B3Says::Span(p)) if incoming.parent.is_none() => incoming.parent = Some(p),
            Some(B3Says::Decision { sampled, debug }) if incoming.decision.is_none() => {
                incoming.decision = Some((sampled, debug))
            }
            _ => {}
        };
        if let Some(v) = b3_single {
            b3(parse_b3_single(v));
        }
        if forms.b3_multi {
            b3(multi.parse());
        }
        incoming
    }

    /// What this hop does with the request's trace, cheaply for the
    /// requests it does not sample (most of them):
    ///
    /// - a well-formed context that says "not sampled" (or a lone B3 `0`)
    ///   is passed on untouched: None;
    /// - no trace header at all, from a meshed peer (`from_mesh`): the
    ///   peer's proxy made the decision and sends a context whenever it
    ///   samples, so none means not sampled: None, with no draw;
    /// - no trace header at all otherwise: a draw; not sampled is None
    ///   (nothing is written, so a meshed next hop takes it as above);
    /// - otherwise (sampled; or headers that are malformed or defer the
    ///   decision, which must be replaced so the next hop does not draw
    ///   again): this hop's span, to write into the headers and to record
    ///   if sampled ([`Incoming::child`]).
    pub fn next(&self, percent: f64, from_mesh: bool, chance: &Chance) -> Option<SpanContext> {
        let made = self
            .parent
            .and_then(|p| p.sampled.map(|s| (s, p.debug)))
            .or(self.decision);
        let any_form = self.forms.w3c || self.forms.b3_single || self.forms.b3_multi;
        match made {
            Some((false, _)) => None,
            Some((true, _)) => Some(self.child(percent, chance)),
            None if any_form => Some(self.child(percent, chance)),
            None if from_mesh => None,
            None => chance.percent(percent).then(|| self.child(100.0, chance)),
        }
    }

    /// This hop's span: a child of the caller's, or the root of a new
    /// trace. Parent-based sampling: the caller's decision (or a lone B3
    /// decision) stands; without one, a draw of `percent` (0-100).
    pub fn child(&self, percent: f64, chance: &Chance) -> SpanContext {
        let made = self
            .parent
            .and_then(|p| p.sampled.map(|s| (s, p.debug)))
            .or(self.decision);
        let (sampled, debug) = made.unwrap_or_else(|| (chance.percent(percent), false));
        match self.parent {
            Some(p) => SpanContext {
                trace_id: p.trace_id,
                span_id: SpanId::random(chance),
                parent: Some(p.span_id),
                sampled,
                debug: debug || p.debug,
                flags: p.flags,
                joined_w3c: self.from_w3c,
            },
            None => SpanContext {
                trace_id: TraceId::random(chance),
                span_id: SpanId::random(chance),
                parent: None,
                sampled,
                debug,
                flags: 0,
                joined_w3c: false,
            },
        }
    }
}

/// The trace a request names, for the access log: that of the first
/// well-formed form (in [`Incoming::read`]'s order), else a lone
/// well-formed `x-b3-traceid` (a B3 request without its span id still names
/// its trace). [`TraceId::b3_hex`] writes it in the width it came in.
pub fn trace_id_of(headers: &HeaderMap) -> Option<TraceId> {
    Incoming::read(headers)
        .parent
        .map(|p| p.trace_id)
        .or_else(|| parse_trace_id(headers.get(B3_TRACE_ID)?.as_bytes().trim_ascii()))
}

/// This hop's span, as passed to the next hop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpanContext {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    /// The caller's span; None for the root of a new trace.
    pub parent: Option<SpanId>,
    pub sampled: bool,
    pub debug: bool,
    /// W3C flags other than `sampled`, as they came.
    pub flags: u8,
    /// Joined through a valid `traceparent` (its `tracestate` stays).
    pub joined_w3c: bool,
}

impl SpanContext {
    /// `traceparent`, version 00, on the stack.
    fn traceparent_bytes(&self) -> [u8; 55] {
        let mut out = [b'-'; 55];
        out[..2].copy_from_slice(b"00");
        hex_into(&self.trace_id.bytes, &mut out[3..35]);
        hex_into(&self.span_id.0, &mut out[36..52]);
        hex_into(&[self.flags | u8::from(self.sampled)], &mut out[53..55]);
        out
    }

    /// `traceparent`, version 00.
    pub fn traceparent(&self) -> String {
        String::from_utf8(self.traceparent_bytes().to_vec()).expect("hex digits and dashes")
    }

    fn b3_state(&self) -> &'static str {
        match (self.debug, self.sampled) {
            (true, _) => "d",
            (false, true) => "1",
            (false, false) => "0",
        }
    }

    /// The single `b3` header: `traceid-spanid-sampled[-parentspanid]`.
    pub fn b3_single(&self) -> String {
        let mut s = format!(
            "{}-{}-{}",
            self.trace_id.b3_hex(),
            self.span_id.hex(),
            self.b3_state()
        );
        if let Some(p) = self.parent {
            s.push('-');
            s.push_str(&p.hex());
        }
        s
    }

    /// Rewrites the request's trace headers so that the next hop's parent
    /// is this span: the forms that came in (see [`Forms`]), or, when none
    /// did, `traceparent` (W3C, as Envoy's OpenTelemetry tracer sends).
    pub fn write(&self, forms: Forms, headers: &mut HeaderMap) {
        let forms = if !(forms.w3c || forms.b3_single || forms.b3_multi) {
            Forms { w3c: true, ..forms }
        } else {
            forms
        };
        let value = |s: String| HeaderValue::try_from(s).expect("hex and dashes");
        if forms.w3c {
            headers.insert(TRACEPARENT, header_value(&self.traceparent_bytes()));
        }
        if forms.tracestate && !self.joined_w3c {
            headers.remove(TRACESTATE);
        }
        if forms.b3_single {
            headers.insert(B3, value(self.b3_single()));
        }
        if forms.b3_multi {
            let mut id = [0u8; 32];
            let trace = if self.trace_id.short {
                &self.trace_id.bytes[8..]
            } else {
                &self.trace_id.bytes[..]
            };
            let n = trace.len() * 2;
            hex_into(trace, &mut id[..n]);
            headers.insert(B3_TRACE_ID, header_value(&id[..n]));
            hex_into(&self.span_id.0, &mut id[..16]);
            headers.insert(B3_SPAN_ID, header_value(&id[..16]));
            match self.parent {
                Some(p) => {
                    hex_into(&p.0, &mut id[..16]);
                    headers.insert(B3_PARENT_SPAN_ID, header_value(&id[..16]))
                }
                None => headers.remove(B3_PARENT_SPAN_ID),
            };
            if self.debug {
                // Debug implies sampled: B3 sends the flag alone.
                headers.insert(B3_FLAGS, HeaderValue::from_static("1"));
                headers.remove(B3_SAMPLED);
            } else {
                headers.remove(B3_FLAGS);
                headers.insert(
                    B3_SAMPLED,
                    HeaderValue::from_static(if self.sampled { "1" } else { "0" }),
                );
            }
        }
    }
}

/// A sampling percentage, 0 to 100 (Istio's `tracing.sampling`).
pub use outrigger_api::TraceSampling as Percent;

/// A UUID version 4 (RFC 9562) from 128 random bits, as text: what Envoy
/// puts in `x-request-id` when a request has none. On the stack; the
/// caller copies it into the header value.
pub fn uuid_v4(bits: u128) -> [u8; 36] {
    let mut b = bits.to_be_bytes();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let mut out = [b'-'; 36];
    hex_into(&b[..4], &mut out[..8]);
    hex_into(&b[4..6], &mut out[9..13]);
    hex_into(&b[6..8], &mut out[14..18]);
    hex_into(&b[8..10], &mut out[19..23]);
    hex_into(&b[10..], &mut out[24..]);
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_a_sampled_or_unsettled_request_is_touched() {
        let c = Chance::seeded(9);
        let read = |pairs: &[(&'static str, &'static str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.insert(*k, HeaderValue::from_static(v));
            }
            Incoming::read(&h)
        };
        let unsampled = read(&[(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00",
        )]);
        assert_eq!(unsampled.next(100.0, false, &c), None, "passed on as it is");
        assert_eq!(read(&[("b3", "0")]).next(100.0, false, &c), None);
        assert_eq!(read(&[("x-b3-sampled", "0")]).next(100.0, true, &c), None);
        let sampled = read(&[(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )]);
        let ctx = sampled.next(0.0, true, &c).expect("the caller sampled it");
        assert!(ctx.sampled);
        assert_eq!(
            ctx.parent.map(|p| p.0),
            Some(*b"\xb7\xad\x6b\x71\x69\x20\x33\x31")
        );
        // Nothing came: from a meshed peer, that peer decided "no"; from
        // elsewhere, a draw, and only a sampled draw writes anything.
        let none = read(&[]);
        assert!((0..1000).all(|_| none.next(100.0, true, &c).is_none()));
        assert!((0..1000).all(|_| none.next(0.0, false, &c).is_none()));
        assert!((0..1000).all(|_| none.next(100.0, false, &c).is_some_and(|x| x.sampled)));
        let hits = (0..10_000)
            .filter_map(|_| none.next(10.0, false, &c))
            .count();
        assert!((850..1150).contains(&hits), "{hits} of 10000 at 10 %");
        // Malformed or deferring headers are replaced, sampled or not, so
        // the next hop does not draw again.
        let bad = read(&[("traceparent", "00-XYZ")]);
        let ctx = bad.next(0.0, true, &c).expect("replaced");
        assert!(!ctx.sampled && ctx.parent.is_none());
        let deferred = read(&[
            ("x-b3-traceid", "0af7651916cd43dd"),
            ("x-b3-spanid", "b7ad6b7169203331"),
        ]);
        assert!(deferred.next(0.0, true, &c).is_some_and(|x| !x.sampled));
    }

    use super::*;

    const TP: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    HeaderValue::from_str(v).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn a_valid_traceparent_is_read() {
        let p = parse_traceparent(TP.as_bytes()).unwrap();
        assert_eq!(p.trace_id.hex(), "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(p.span_id.hex(), "b7ad6b7169203331");
        assert_eq!(p.sampled, Some(true));
        let unsampled =
            parse_traceparent(b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00").unwrap();
        assert_eq!(unsampled.sampled, Some(false));
    }

    #[test]
    fn malformed_traceparents_are_refused() {
        for bad in [
            // version ff
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            // all-zero ids
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            // uppercase hex
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-B7AD6B7169203331-01",
            "0A-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            // version 00 with more after the flags
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
            // wrong lengths, separators, digits
            "00-0af7651916cd43dd8448eb211c80319-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319cc-b7ad6b716920333-01",
            "00_0af7651916cd43dd8448eb211c80319c_b7ad6b7169203331_01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-0g",
            // a later version must put a dash after the flags
            "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01x",
            "",
        ] {
            assert_eq!(parse_traceparent(bad.as_bytes()), None, "{bad}");
        }
    }

    #[test]
    fn a_later_version_is_read_as_far_as_version_00_goes() {
        let p =
            parse_traceparent(b"cc-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-03-what-ever")
                .unwrap();
        assert_eq!(p.sampled, Some(true));
        assert_eq!(p.flags, 0x02);
        let child = Incoming::read(&headers(&[(
            "traceparent",
            "cc-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-03",
        )]))
        .child(0.0, &Chance::seeded(1));
        assert!(child
            .traceparent()
            .starts_with("00-0af7651916cd43dd8448eb211c80319c-"));
        assert!(child.traceparent().ends_with("-03"));
    }

    #[test]
    fn b3_single_forms() {
        let Some(B3Says::Span(p)) = parse_b3_single(
            b"80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90",
        ) else {
            panic!()
        };
        assert_eq!(p.trace_id.hex(), "80f198ee56343ba864fe8b2a57d3eff7");
        assert_eq!(p.span_id.hex(), "e457b5a2e4d86bd1");
        assert_eq!((p.sampled, p.debug), (Some(true), false));
        // Sampling deferred; 64-bit trace id; debug.
        let Some(B3Says::Span(p)) = parse_b3_single(b"64fe8b2a57d3eff7-e457b5a2e4d86bd1") else {
            panic!()
        };
        assert_eq!(p.sampled, None);
        assert!(p.trace_id.short);
        assert_eq!(p.trace_id.hex(), "000000000000000064fe8b2a57d3eff7");
        assert_eq!(p.trace_id.b3_hex(), "64fe8b2a57d3eff7");
        let Some(B3Says::Span(p)) = parse_b3_single(b"64fe8b2a57d3eff7-e457b5a2e4d86bd1-d") else {
            panic!()
        };
        assert_eq!((p.sampled, p.debug), (Some(true), true));
        let Some(B3Says::Span(p)) = parse_b3_single(b"64fe8b2a57d3eff7-e457b5a2e4d86bd1-0") else {
            panic!()
        };
        assert_eq!(p.sampled, Some(false));
        // A lone decision.
        assert_eq!(
            parse_b3_single(b"0"),
            Some(B3Says::Decision {
                sampled: false,
                debug: false
            })
        );
        assert_eq!(
            parse_b3_single(b"d"),
            Some(B3Says::Decision {
                sampled: true,
                debug: true
            })
        );
        for bad in [
            "80F198EE56343BA864FE8B2A57D3EFF7-e457b5a2e4d86bd1-1",
            "80f198ee56343ba864fe8b2a57d3eff7-E457B5A2E4D86BD1-1",
            "00000000000000000000000000000000-e457b5a2e4d86bd1-1",
            "80f198ee56343ba864fe8b2a57d3eff7-0000000000000000-1",
            "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-2",
            "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-xyz",
            "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90-x",
            "80f198ee56343ba864fe8b2a57d3eff7",
            "80f198ee56343ba864fe8b2a57d3eff-e457b5a2e4d86bd1",
            "true",
            "",
        ] {
            assert_eq!(parse_b3_single(bad.as_bytes()), None, "{bad}");
        }
    }

    #[test]
    fn b3_multi_forms() {
        let h = headers(&[
            ("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7"),
            ("x-b3-spanid", "e457b5a2e4d86bd1"),
            ("x-b3-parentspanid", "05e3ac9a4f6e3b90"),
            ("x-b3-sampled", "1"),
        ]);
        let Some(B3Says::Span(p)) = parse_b3_multi(&h) else {
            panic!()
        };
        assert_eq!(p.span_id.hex(), "e457b5a2e4d86bd1");
        assert_eq!(p.sampled, Some(true));
        let debug = headers(&[
            ("x-b3-traceid", "64fe8b2a57d3eff7"),
            ("x-b3-spanid", "e457b5a2e4d86bd1"),
            ("x-b3-flags", "1"),
        ]);
        let Some(B3Says::Span(p)) = parse_b3_multi(&debug) else {
            panic!()
        };
        assert_eq!((p.sampled, p.debug), (Some(true), true));
        assert_eq!(
            parse_b3_multi(&headers(&[("x-b3-sampled", "0")])),
            Some(B3Says::Decision {
                sampled: false,
                debug: false
            })
        );
        assert_eq!(parse_b3_multi(&HeaderMap::new()), None);
        for bad in [
            vec![("x-b3-traceid", "64fe8b2a57d3eff7")],
            vec![
                ("x-b3-traceid", "64FE8B2A57D3EFF7"),
                ("x-b3-spanid", "e457b5a2e4d86bd1"),
            ],
            vec![
                ("x-b3-traceid", "64fe8b2a57d3eff7"),
                ("x-b3-spanid", "e457b5a2e4d86bd1"),
                ("x-b3-sampled", "yes"),
            ],
            vec![
                ("x-b3-traceid", "64fe8b2a57d3eff7"),
                ("x-b3-spanid", "e457b5a2e4d86bd1"),
                ("x-b3-parentspanid", "0"),
            ],
        ] {
            assert_eq!(parse_b3_multi(&headers(&bad)), None, "{bad:?}");
        }
    }

    #[test]
    fn traceparent_wins_and_every_form_is_rewritten_with_this_span() {
        let mut h = headers(&[
            ("traceparent", TP),
            ("tracestate", "congo=t61rcWkgMzE"),
            ("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-0"),
        ]);
        let incoming = Incoming::read(&h);
        let ctx = incoming.child(0.0, &Chance::seeded(1));
        assert_eq!(ctx.trace_id.hex(), "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(ctx.parent.unwrap().hex(), "b7ad6b7169203331");
        assert!(ctx.sampled, "the traceparent's decision stands");
        ctx.write(incoming.forms, &mut h);
        let tp = h["traceparent"].to_str().unwrap();
        assert_eq!(
            tp,
            format!(
                "00-0af7651916cd43dd8448eb211c80319c-{}-01",
                ctx.span_id.hex()
            )
        );
        assert_eq!(h["tracestate"], "congo=t61rcWkgMzE");
        assert_eq!(
            h["b3"],
            format!(
                "0af7651916cd43dd8448eb211c80319c-{}-1-b7ad6b7169203331",
                ctx.span_id.hex()
            )
            .as_str()
        );
        assert!(!h.contains_key("x-b3-traceid"), "only the forms that came");
    }

    #[test]
    fn b3_multi_is_rewritten_in_its_own_form_and_width() {
        let mut h = headers(&[
            ("x-b3-traceid", "64fe8b2a57d3eff7"),
            ("x-b3-spanid", "e457b5a2e4d86bd1"),
            ("x-b3-sampled", "0"),
            ("tracestate", "orphan=1"),
        ]);
        let incoming = Incoming::read(&h);
        let ctx = incoming.child(100.0, &Chance::seeded(1));
        assert!(!ctx.sampled, "the parent's decision stands");
        ctx.write(incoming.forms, &mut h);
        assert_eq!(h["x-b3-traceid"], "64fe8b2a57d3eff7");
        assert_eq!(h["x-b3-spanid"], ctx.span_id.hex().as_str());
        assert_eq!(h["x-b3-parentspanid"], "e457b5a2e4d86bd1");
        assert_eq!(h["x-b3-sampled"], "0");
        assert!(!h.contains_key("traceparent") && !h.contains_key("b3"));
        assert!(!h.contains_key("tracestate"), "no traceparent to go with");
    }

    #[test]
    fn a_malformed_context_starts_a_new_trace_in_the_forms_that_came() {
        let mut h = headers(&[
            (
                "traceparent",
                "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            ),
            ("tracestate", "congo=t61rcWkgMzE"),
        ]);
        let incoming = Incoming::read(&h);
        assert_eq!(incoming.parent, None);
        let ctx = incoming.child(100.0, &Chance::seeded(1));
        assert_eq!(ctx.parent, None);
        assert!(ctx.sampled);
        ctx.write(incoming.forms, &mut h);
        assert_eq!(
            parse_traceparent(h["traceparent"].as_bytes())
                .unwrap()
                .trace_id,
            ctx.trace_id
        );
        assert!(!h.contains_key("tracestate"));
    }

    #[test]
    fn a_new_trace_leaves_with_traceparent_alone() {
        let mut h = headers(&[("tracestate", "orphan=1")]);
        let incoming = Incoming::read(&h);
        let ctx = incoming.child(0.0, &Chance::seeded(2));
        assert!(!ctx.sampled);
        ctx.write(incoming.forms, &mut h);
        let p = parse_traceparent(h["traceparent"].as_bytes()).unwrap();
        assert_eq!((p.trace_id, p.span_id), (ctx.trace_id, ctx.span_id));
        assert!(h["traceparent"].to_str().unwrap().ends_with("-00"));
        assert!(!h.contains_key("tracestate"), "not the new trace's");
        assert_eq!(h.len(), 1, "{h:?}");
    }

    #[test]
    fn debug_is_sampled_and_travels_as_the_flag_alone() {
        let mut h = headers(&[("b3", "d"), ("x-b3-flags", "1")]);
        let incoming = Incoming::read(&h);
        let ctx = incoming.child(0.0, &Chance::seeded(2));
        assert!(ctx.sampled && ctx.debug && ctx.parent.is_none());
        ctx.write(incoming.forms, &mut h);
        assert!(h["b3"].to_str().unwrap().ends_with("-d"));
        assert_eq!(h["x-b3-flags"], "1");
        assert!(!h.contains_key("x-b3-sampled"));
    }

    #[test]
    fn a_lone_decision_decides_and_a_deferred_one_is_drawn() {
        let deny = Incoming::read(&headers(&[("b3", "0")]));
        assert!((0..100).all(|_| !deny.child(100.0, &Chance::seeded(3)).sampled));
        let deferred = Incoming::read(&headers(&[(
            "b3",
            "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1",
        )]));
        let c = Chance::seeded(4);
        assert!(deferred.child(100.0, &c).sampled);
        assert!(!deferred.child(0.0, &c).sampled);
    }

    #[test]
    fn sampling_without_a_parent_holds_the_ratio() {
        let c = Chance::seeded(5);
        let none = Incoming::read(&HeaderMap::new());
        let n = 20_000;
        let hits = (0..n).filter(|_| none.child(10.0, &c).sampled).count();
        // 10 % of 20,000: mean 2,000, standard deviation ~42; 5 sigma.
        assert!((1790..=2210).contains(&hits), "{hits}");
        assert!((0..1000).all(|_| !none.child(0.0, &c).sampled));
        assert!((0..1000).all(|_| none.child(100.0, &c).sampled));
    }

    #[test]
    fn request_ids_are_uuid_v4() {
        let id = uuid_v4(u128::MAX);
        assert_eq!(
            std::str::from_utf8(&id).unwrap(),
            "ffffffff-ffff-4fff-bfff-ffffffffffff"
        );
        let id = uuid_v4(0);
        assert_eq!(
            std::str::from_utf8(&id).unwrap(),
            "00000000-0000-4000-8000-000000000000"
        );
        let c = Chance::seeded(9);
        assert_ne!(uuid_v4(c.bits()), uuid_v4(c.bits()));
    }

    #[test]
    fn new_ids_are_never_zero_and_differ() {
        let c = Chance::seeded(6);
        let a = TraceId::random(&c);
        let b = TraceId::random(&c);
        assert_ne!(a, b);
        assert!(a.bytes.iter().any(|&x| x != 0));
        assert_eq!(a.hex().len(), 32);
        assert_eq!(SpanId::random(&c).hex().len(), 16);
    }
}
