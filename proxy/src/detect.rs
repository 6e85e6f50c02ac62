//! Protocol detection: what a client speaks, from its first bytes.
//!
//! [`classify`] is the pure decision; [`detect`] reads from a socket until the
//! decision is made, the client stops, or the deadline passes. Server-speaks-first
//! protocols (MySQL, SMTP) send nothing, so they wait out the deadline and are
//! treated as opaque TCP; ports marked opaque skip detection entirely.
//!
//! On a port declared HTTP ([`Expect::Http`]) nothing is taken for opaque
//! TCP but a TLS ClientHello (the app's own TLS): [`classify_http`] wants
//! the HTTP/2 preface or a well-formed HTTP/1 request line (RFC 9112 §3), and
//! anything else is [`Malformed`], answered 400 and never forwarded.
//!
//! [`client_hello`] reads the server name of a TLS ClientHello, so that the
//! inbound side tells mesh TLS from a peer proxy (which names
//! `outrigger_identity::tls::MESH_SERVER_NAME`) from an app's own TLS.

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt};

pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The longest method token we wait for before deciding a stream is not HTTP.
const MAX_METHOD_LEN: usize = 24;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    Http1,
    Http2,
    Opaque,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http1 => "http1",
            Protocol::Http2 => "http2",
            Protocol::Opaque => "opaque",
        }
    }
}

/// Decides the protocol from the bytes read so far, or `None` when more bytes
/// are needed. `max_line` bounds how long an HTTP/1 request line may grow
/// before the decision is forced (hyper then answers 414/431 itself).
pub fn classify(buf: &[u8], max_line: usize) -> Option<Protocol> {
    if buf.is_empty() {
        return None;
    }
    let n = buf.len().min(H2_PREFACE.len());
    if buf[..n] == H2_PREFACE[..n] {
        return if buf.len() >= H2_PREFACE.len() {
            Some(Protocol::Http2)
        } else {
            None
        };
    }

    // HTTP/1: METHOD SP request-target SP HTTP/1.x CRLF
    let method_end = match buf.iter().position(|&b| b == b' ') {
        Some(i) => i,
        None => {
            return if buf.len() <= MAX_METHOD_LEN && buf.iter().all(|&b| is_tchar(b)) {
                None
            } else {
                Some(Protocol::Opaque)
            };
        }
    };
    if method_end == 0
        || method_end > MAX_METHOD_LEN
        || !buf[..method_end].iter().all(|&b| is_tchar(b))
    {
        return Some(Protocol::Opaque);
    }
    let rest = &buf[method_end + 1..];
    match rest.iter().position(|&b| b == b'\n') {
        Some(nl) => {
            let line = rest[..nl].strip_suffix(b"\r").unwrap_or(&rest[..nl]);
            let is_http = line.ends_with(b" HTTP/1.1") || line.ends_with(b" HTTP/1.0");
            Some(if is_http {
                Protocol::Http1
            } else {
                Protocol::Opaque
            })
        }
        None if rest.iter().any(|&b| b < 0x20 && b != b'\r') => Some(Protocol::Opaque),
        None if buf.len() >= max_line => Some(Protocol::Http1),
        None => None,
    }
}

/// What a port is known to carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// Nothing: the first bytes decide ([`classify`]).
    Any,
    /// HTTP, as its Service port declares (`http`, `http2`, `grpc`...):
    /// strict HTTP/1, HTTP/2 or the app's own TLS ([`classify_http`]).
    Http,
}

/// A client on a port declared HTTP whose first bytes are no HTTP request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("not an HTTP request on a port declared HTTP: {0}")]
pub struct Malformed(pub &'static str);

/// Decides what a client on a port declared HTTP speaks, or `None` when
/// more bytes are needed: the HTTP/2 preface is HTTP/2, a TLS ClientHello
/// is opaque (the app's own TLS, passed on as it is; also one split over
/// several records, which RFC 8446 §5.1 allows), a request line of
/// RFC 9112 §3 (`method SP request-target SP HTTP/1.0|1.1 CRLF`, after
/// any empty lines) is HTTP/1, and everything else is [`Malformed`]: a
/// method that is no token (`G@T`), a leading NUL or space, HTTP/0.9 (no
/// version), `HTTP/1.2` or `HTTP/2.0` in a request line, a bare LF ending
/// it. A line still unfinished at `max_line` bytes goes to HTTP/1, whose
/// parser answers 414 or 431. Pure.
pub fn classify_http(buf: &[u8], max_line: usize) -> Option<Result<Protocol, Malformed>> {
    if buf.is_empty() {
        return None;
    }
    let n = buf.len().min(H2_PREFACE.len());
    if buf[..n] == H2_PREFACE[..n] {
        if buf.len() >= H2_PREFACE.len() {
            return Some(Ok(Protocol::Http2));
        }
        return None;
    }
    match client_hello(buf) {
        Hello::NotTls => {}
        Hello::NeedMore => return None,
        Hello::ClientHello { .. } => return Some(Ok(Protocol::Opaque)),
        Hello::Unreadable if begins_split_client_hello(buf) => return Some(Ok(Protocol::Opaque)),
        Hello::Unreadable => return Some(Err(Malformed("a TLS record that is no ClientHello"))),
    }
    match strict_request_line(buf) {
        Some(Ok(())) => Some(Ok(Protocol::Http1)),
        Some(Err(why)) => Some(Err(Malformed(why))),
        None if buf.len() >= max_line => Some(Ok(Protocol::Http1)),
        None => None,
    }
}

/// Whether `buf` starts with a TLS handshake record that begins a
/// ClientHello longer than the record: one split over several records,
/// which the app's TLS puts back together. Pure.
fn begins_split_client_hello(buf: &[u8]) -> bool {
    let Some(header) = buf.get(..5) else {
        return false;
    };
    let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
    match buf.get(5..9) {
        Some(&[1, a, b, c]) if (4..=MAX_RECORD).contains(&len) => {
            let hello = usize::from(a) << 16 | usize::from(b) << 8 | usize::from(c);
            hello > len - 4
        }
        _ => false,
    }
}

/// Checks the request line at the start of `buf` (RFC 9112 §3, empty
/// lines before it skipped as §2.2 allows): `Some(Ok)` once it is whole
/// and well-formed, `Some(Err)` with the reason as soon as it cannot be,
/// `None` while every byte so far could still begin one.
fn strict_request_line(mut buf: &[u8]) -> Option<Result<(), &'static str>> {
    while let Some(rest) = buf.strip_prefix(b"\r\n") {
        buf = rest;
    }
    if buf == b"\r" {
        return None;
    }
    let method = buf.iter().take_while(|&&b| is_tchar(b)).count();
    if method > MAX_METHOD_LEN {
        return Some(Err("a method longer than 24 characters"));
    }
    match buf.get(method) {
        None => return None,
        Some(_) if method == 0 => return Some(Err("the request line starts with no method")),
        Some(b' ') => {}
        Some(_) => return Some(Err("a method that is not a token")),
    }
    let rest = &buf[method + 1..];
    let target = rest.iter().take_while(|&&b| b > b' ' && b != 0x7f).count();
    match rest.get(target) {
        None => return None,
        Some(_) if target == 0 => return Some(Err("no request target")),
        Some(b' ') => {}
        Some(b'\r' | b'\n') => return Some(Err("no HTTP version (HTTP/0.9)")),
        Some(_) => return Some(Err("a control character in the request target")),
    }
    const VERSION: &[u8] = b"HTTP/1.";
    let rest = &rest[target + 1..];
    let n = rest.len().min(VERSION.len());
    if rest[..n] != VERSION[..n] {
        return Some(Err("a version other than HTTP/1.0 or HTTP/1.1"));
    }
    match rest.get(VERSION.len()..) {
        None | Some([]) => None,
        Some([b'0' | b'1']) | Some([b'0' | b'1', b'\r']) => None,
        Some([b'0' | b'1', b'\r', b'\n', ..]) => Some(Ok(())),
        Some([b'0' | b'1', b'\n', ..]) => Some(Err("a bare LF ends the request line")),
        Some(_) => Some(Err("a version other than HTTP/1.0 or HTTP/1.1")),
    }
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// What a connection's first bytes say about TLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hello<'a> {
    /// Too few bytes to tell.
    NeedMore,
    /// Not a TLS handshake record.
    NotTls,
    /// A TLS ClientHello, with the server name it asks for, if any.
    ClientHello { server_name: Option<&'a str> },
    /// A TLS handshake record holding no ClientHello this parser can read
    /// (malformed, or split over several records).
    Unreadable,
}

/// Largest TLS record payload (RFC 8446 §5.1, plus what TLS 1.2 allowed).
const MAX_RECORD: usize = 16384 + 2048;
/// The most bytes a ClientHello in one record can take: its header and payload.
pub const MAX_HELLO: usize = 5 + MAX_RECORD;

/// Reads the first TLS record of `buf` as a ClientHello (RFC 8446 §4.1.2,
/// server_name from RFC 6066 §3). Pure.
pub fn client_hello(buf: &[u8]) -> Hello<'_> {
    const HANDSHAKE: u8 = 0x16;
    match buf.first() {
        None => return Hello::NeedMore,
        Some(&b) if b != HANDSHAKE => return Hello::NotTls,
        Some(_) => {}
    }
    let Some(header) = buf.get(..5) else {
        return Hello::NeedMore;
    };
    let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
    if len > MAX_RECORD {
        return Hello::Unreadable;
    }
    let Some(record) = buf.get(5..5 + len) else {
        return Hello::NeedMore;
    };
    match server_name(record) {
        Some(name) => Hello::ClientHello { server_name: name },
        None => Hello::Unreadable,
    }
}

/// The server name of the ClientHello in `record` (`Some(None)`: it names
/// none); `None` when `record` is no whole ClientHello.
fn server_name(record: &[u8]) -> Option<Option<&str>> {
    let mut r = Reader(record);
    if r.u8()? != 1 {
        return None; // not a ClientHello
    }
    let len = r.u24()?;
    let mut body = Reader(r.take(len)?);
    body.take(2 + 32)?; // legacy_version, random
    let n = usize::from(body.u8()?);
    body.take(n)?; // legacy_session_id
    let n = body.u16()?;
    body.take(n)?; // cipher_suites
    let n = usize::from(body.u8()?);
    body.take(n)?; // legacy_compression_methods
    if body.0.is_empty() {
        return Some(None); // no extensions
    }
    let n = body.u16()?;
    let mut extensions = Reader(body.take(n)?);
    while !extensions.0.is_empty() {
        let kind = extensions.u16()?;
        let n = extensions.u16()?;
        let data = extensions.take(n)?;
        if kind != 0 {
            continue;
        }
        let mut list = Reader(data);
        let n = list.u16()?;
        let mut names = Reader(list.take(n)?);
        while !names.0.is_empty() {
            let name_type = names.u8()?;
            let n = names.u16()?;
            let name = names.take(n)?;
            if name_type == 0 {
                return Some(std::str::from_utf8(name).ok());
            }
        }
        return Some(None);
    }
    Some(None)
}

/// Big-endian fields off the front of a slice.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = rest;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }

    fn u16(&mut self) -> Option<usize> {
        let b = self.take(2)?;
        Some(usize::from(u16::from_be_bytes([b[0], b[1]])))
    }

    fn u24(&mut self) -> Option<usize> {
        let b = self.take(3)?;
        Some((usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2]))
    }
}

/// Reads until [`classify`] decides, the peer closes or stops sending, or
/// `timeout` passes (then: opaque). Returns the decision and every byte read,
/// which the caller replays in front of the stream.
///
/// On a port declared HTTP ([`Expect::Http`]) [`classify_http`] decides
/// instead, and a client that stops or closes before it has is HTTP/1: its
/// parser then applies the header read timeout, or sees the end.
///
/// With `first_byte`, the deadline starts at the client's first byte, and a
/// client that sends nothing is waited for up to `first_byte` and then
/// refused (an error), never taken for opaque: no upstream connection is
/// opened for a client that has said nothing (a server-speaks-first port
/// must be marked opaque). Without it (a destination that cannot be
/// marked), the deadline starts at once and silence is opaque.
pub async fn detect<I: AsyncRead + Unpin>(
    io: &mut I,
    timeout: Duration,
    max_line: usize,
    first_byte: Option<Duration>,
    expect: Expect,
) -> std::io::Result<(Result<Protocol, Malformed>, BytesMut)> {
    let mut buf = BytesMut::with_capacity(1024);
    if let Some(first_byte) = first_byte {
        wait_first_byte(io, &mut buf, first_byte).await?;
    }
    let deadline = tokio::time::Instant::now() + timeout;
    let undecided = match expect {
        Expect::Any => Protocol::Opaque,
        Expect::Http => Protocol::Http1,
    };
    loop {
        let decided = match expect {
            Expect::Any => classify(&buf, max_line).map(Ok),
            Expect::Http => classify_http(&buf, max_line),
        };
        if let Some(d) = decided {
            return Ok((d, buf));
        }
        if buf.capacity() - buf.len() < 512 {
            buf.reserve(4096);
        }
        match tokio::time::timeout_at(deadline, io.read_buf(&mut buf)).await {
            Err(_elapsed) => return Ok((Ok(undecided), buf)),
            Ok(Ok(0)) => return Ok((Ok(undecided), buf)),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
        }
    }
}

async fn wait_first_byte<I: AsyncRead + Unpin>(
    io: &mut I,
    buf: &mut BytesMut,
    first_byte: Duration,
) -> std::io::Result<()> {
    match tokio::time::timeout(first_byte, io.read_buf(buf)).await {
        Err(_elapsed) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("the client sent nothing for {first_byte:?}"),
        )),
        Ok(Ok(0)) => Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the client closed without sending anything",
        )),
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// The first flight of a real rustls client asking for `name`.
    fn real_client_hello(name: &str) -> Vec<u8> {
        let provider = outrigger_identity::tls::provider();
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from(name.to_string()).unwrap();
        let mut conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
        let mut out = Vec::new();
        conn.write_tls(&mut out).unwrap();
        out
    }

    #[test]
    fn the_server_name_of_a_real_client_hello_is_read() {
        for name in [outrigger_identity::tls::MESH_SERVER_NAME, "app.example.com"] {
            let hello = real_client_hello(name);
            assert_eq!(
                client_hello(&hello),
                Hello::ClientHello {
                    server_name: Some(name)
                }
            );
            // Every shorter prefix asks for more; nothing panics.
            for n in 0..hello.len() {
                assert_eq!(client_hello(&hello[..n]), Hello::NeedMore, "{n} bytes");
            }
        }
        // A client dialling an IP address sends no server name.
        assert_eq!(
            client_hello(&real_client_hello("10.0.0.1")),
            Hello::ClientHello { server_name: None }
        );
    }

    #[test]
    fn anything_else_is_not_a_readable_client_hello() {
        assert_eq!(client_hello(b"GET / HTTP/1.1\r\n"), Hello::NotTls);
        assert_eq!(client_hello(H2_PREFACE), Hello::NotTls);
        // A handshake record that is not a ClientHello.
        assert_eq!(
            client_hello(&[0x16, 3, 3, 0, 4, 2, 0, 0, 0]),
            Hello::Unreadable
        );
        // A record too long for TLS.
        assert_eq!(client_hello(&[0x16, 3, 1, 0xff, 0xff]), Hello::Unreadable);
        // A ClientHello whose lengths run past its record.
        let mut hello = real_client_hello("app.example.com");
        hello[8] = 0xff;
        assert_eq!(client_hello(&hello), Hello::Unreadable);
        // Every byte of a real one flipped in turn: never a panic.
        let hello = real_client_hello(outrigger_identity::tls::MESH_SERVER_NAME);
        for i in 0..hello.len() {
            let mut h = hello.clone();
            h[i] ^= 0xff;
            let _ = client_hello(&h);
        }
    }

    const MAX: usize = 8192;

    #[test]
    fn http2_needs_the_whole_preface() {
        assert_eq!(classify(b"PRI * HTTP/2.0\r\n", MAX), None);
        assert_eq!(classify(H2_PREFACE, MAX), Some(Protocol::Http2));
        let mut more = H2_PREFACE.to_vec();
        more.extend_from_slice(&[0, 0, 0, 4]);
        assert_eq!(classify(&more, MAX), Some(Protocol::Http2));
        // Diverges from the preface: an HTTP/1 method named PRI.
        assert_eq!(classify(b"PRI /x HTTP/1.1\r\n", MAX), Some(Protocol::Http1));
    }

    #[test]
    fn http1_request_lines() {
        assert_eq!(classify(b"GET / HTTP/1.1\r\n", MAX), Some(Protocol::Http1));
        assert_eq!(
            classify(b"POST /a?b=c HTTP/1.0\r\nHost: x\r\n", MAX),
            Some(Protocol::Http1)
        );
        assert_eq!(classify(b"GET / HTTP/1.1\n", MAX), Some(Protocol::Http1));
        assert_eq!(
            classify(b"CONNECT db:5432 HTTP/1.1\r\n", MAX),
            Some(Protocol::Http1)
        );
        assert_eq!(classify(b"G", MAX), None);
        assert_eq!(classify(b"GET", MAX), None);
        assert_eq!(classify(b"GET /index", MAX), None);
        assert_eq!(classify(b"GET / HTTP/1.1\r", MAX), None);
    }

    #[test]
    fn anything_else_is_opaque() {
        // A MySQL-ish binary greeting, TLS ClientHello, an SSH banner, HTTP/0.9.
        assert_eq!(
            classify(&[0x4a, 0x00, 0x00, 0x00, 0x0a], MAX),
            Some(Protocol::Opaque)
        );
        assert_eq!(
            classify(&[0x16, 0x03, 0x01, 0x02, 0x00], MAX),
            Some(Protocol::Opaque)
        );
        assert_eq!(
            classify(b"SSH-2.0-OpenSSH_9.2\r\n", MAX),
            Some(Protocol::Opaque)
        );
        assert_eq!(classify(b"GET /\r\n", MAX), Some(Protocol::Opaque));
        assert_eq!(
            classify(b" GET / HTTP/1.1\r\n", MAX),
            Some(Protocol::Opaque)
        );
        assert_eq!(
            classify(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ", MAX),
            Some(Protocol::Opaque)
        );
        assert_eq!(classify(b"GET /a\x00b", MAX), Some(Protocol::Opaque));
        assert_eq!(classify(b"HELLO there\r\n", MAX), Some(Protocol::Opaque));
    }

    #[test]
    fn a_request_line_past_the_limit_is_handed_to_http1() {
        let mut line = b"GET /".to_vec();
        line.extend(std::iter::repeat_n(b'a', 100));
        assert_eq!(classify(&line, 64), Some(Protocol::Http1));
        assert_eq!(classify(&line, 4096), None);
    }

    #[test]
    fn an_http_port_takes_well_formed_http_and_tls_and_nothing_else() {
        let http = |b: &[u8]| classify_http(b, MAX);
        assert_eq!(http(b"GET / HTTP/1.1\r\n"), Some(Ok(Protocol::Http1)));
        assert_eq!(
            http(b"POST /a?b=c HTTP/1.0\r\nHost: x\r\n"),
            Some(Ok(Protocol::Http1))
        );
        assert_eq!(
            http(b"CONNECT db:5432 HTTP/1.1\r\n"),
            Some(Ok(Protocol::Http1))
        );
        assert_eq!(
            http(b"GET http://a.example/x HTTP/1.1\r\n"),
            Some(Ok(Protocol::Http1))
        );
        // Empty lines before the request line are skipped (RFC 9112 2.2).
        assert_eq!(
            http(b"\r\n\r\nGET / HTTP/1.1\r\n"),
            Some(Ok(Protocol::Http1))
        );
        assert_eq!(http(H2_PREFACE), Some(Ok(Protocol::Http2)));
        // The app's own TLS passes, opaque.
        let hello = real_client_hello("app.example.com");
        assert_eq!(http(&hello), Some(Ok(Protocol::Opaque)));
        for n in 1..hello.len() {
            assert_eq!(http(&hello[..n]), None, "{n} bytes of a ClientHello");
        }
        let mut bad_hello = hello.clone();
        bad_hello[5] = 2; // a ServerHello
        assert!(matches!(http(&bad_hello), Some(Err(_))));
        // A ClientHello split over two records (RFC 8446 5.1): opaque too.
        let body = &hello[5..];
        let cut = body.len() / 2;
        let mut split = Vec::new();
        for part in [&body[..cut], &body[cut..]] {
            split.extend_from_slice(&[0x16, 3, 1]);
            split.extend_from_slice(&u16::try_from(part.len()).unwrap().to_be_bytes());
            split.extend_from_slice(part);
        }
        assert_eq!(client_hello(&split), Hello::Unreadable);
        assert_eq!(http(&split), Some(Ok(Protocol::Opaque)));

        for (line, why) in [
            (&b"G@T / HTTP/1.1\r\n"[..], "a method that is not a token"),
            (b"GET /\r\n", "no HTTP version (HTTP/0.9)"),
            (
                b"GET / HTTP/1.2\r\n",
                "a version other than HTTP/1.0 or HTTP/1.1",
            ),
            (
                b"GET / HTTP/2.0\r\n",
                "a version other than HTTP/1.0 or HTTP/1.1",
            ),
            (
                b"PRI * HTTP/2.0\r\n\r\nXX",
                "a version other than HTTP/1.0 or HTTP/1.1",
            ),
            (
                b"\x00GET / HTTP/1.1\r\n",
                "the request line starts with no method",
            ),
            (
                b" GET / HTTP/1.1\r\n",
                "the request line starts with no method",
            ),
            (b"GET / HTTP/1.1\n", "a bare LF ends the request line"),
            (
                b"\nGET / HTTP/1.1\r\n",
                "the request line starts with no method",
            ),
            (b"GET  / HTTP/1.1\r\n", "no request target"),
            (
                b"GET /a\x00b HTTP/1.1\r\n",
                "a control character in the request target",
            ),
            (
                b"GET / HTTP/1.1 \r\n",
                "a version other than HTTP/1.0 or HTTP/1.1",
            ),
            (
                b"ABCDEFGHIJKLMNOPQRSTUVWXYZ",
                "a method longer than 24 characters",
            ),
            (b"SSH-2.0-OpenSSH_9.2\r\n", "a method that is not a token"),
            (
                &[0x4a, 0x00, 0x00, 0x00, 0x0a],
                "a method that is not a token",
            ),
        ] {
            assert_eq!(
                http(line),
                Some(Err(Malformed(why))),
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
        // Every proper prefix of a good line waits; a malformed line is
        // refused as soon as its first wrong byte arrives.
        let good = b"GET /x HTTP/1.1\r\n";
        for n in 1..good.len() {
            assert_eq!(http(&good[..n]), None, "{n} bytes");
        }
        assert!(matches!(http(b"G@"), Some(Err(_))));
        assert!(matches!(http(b"GET / HTTP/1.3"), Some(Err(_))));
        // Too long to finish before the limit: HTTP/1 answers 414/431.
        let mut long = b"GET /".to_vec();
        long.extend(std::iter::repeat_n(b'a', 100));
        assert_eq!(classify_http(&long, 64), Some(Ok(Protocol::Http1)));
    }

    #[tokio::test(start_paused = true)]
    async fn on_an_http_port_a_client_that_stops_is_left_to_http1() {
        let (mut client, mut server) = tokio::io::duplex(64);
        client.write_all(b"GET /slow").await.unwrap();
        let (p, buf) = detect_on(&mut server, Duration::from_millis(300), Expect::Http)
            .await
            .unwrap();
        assert_eq!(p, Ok(Protocol::Http1));
        assert_eq!(&buf[..], b"GET /slow");
        let (mut client, mut server) = tokio::io::duplex(64);
        client.write_all(b"G@T / HTTP/1.1\r\n").await.unwrap();
        let (p, _) = detect_on(&mut server, Duration::from_millis(300), Expect::Http)
            .await
            .unwrap();
        assert_eq!(p, Err(Malformed("a method that is not a token")));
        drop(client);
    }

    const FIRST: Duration = Duration::from_secs(3600);

    /// [`detect`] with the first-byte wait and line limit every test here uses.
    async fn detect_on(
        io: &mut tokio::io::DuplexStream,
        timeout: Duration,
        expect: Expect,
    ) -> std::io::Result<(Result<Protocol, Malformed>, BytesMut)> {
        detect(io, timeout, MAX, Some(FIRST), expect).await
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_client_is_refused_after_the_first_byte_timeout_never_opaque() {
        let (client, mut server) = tokio::io::duplex(64);
        let start = tokio::time::Instant::now();
        let err = detect_on(&mut server, Duration::from_millis(300), Expect::Any)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        assert_eq!(start.elapsed(), FIRST);
        drop(client);
        // One that closes without a byte is refused at once.
        let (client, mut server) = tokio::io::duplex(64);
        drop(client);
        let err = detect_on(&mut server, Duration::from_millis(300), Expect::Any)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_runs_from_the_first_byte() {
        let (mut client, mut server) = tokio::io::duplex(64);
        let writer = tokio::spawn(async move {
            // Slow to start (a preconnecting HTTP client), then prompt.
            tokio::time::sleep(Duration::from_secs(30)).await;
            client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
            client
        });
        let (p, _) = detect_on(&mut server, Duration::from_millis(300), Expect::Any)
            .await
            .unwrap();
        assert_eq!(p, Ok(Protocol::Http1));
        drop(writer.await.unwrap());
        // A dripping client is opaque once the deadline after its first
        // byte passes.
        let (mut client, mut server) = tokio::io::duplex(64);
        let start = tokio::time::Instant::now();
        let dripper = tokio::spawn(async move {
            for b in b"GET / HTTP/1.1" {
                client.write_all(&[*b]).await.unwrap();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            client
        });
        let (p, buf) = detect_on(&mut server, Duration::from_millis(300), Expect::Any)
            .await
            .unwrap();
        assert_eq!(p, Ok(Protocol::Opaque));
        assert_eq!(&buf[..], b"GET");
        assert_eq!(start.elapsed(), Duration::from_millis(300));
        drop(dripper.await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn bytes_in_pieces_are_kept_for_replay() {
        let (mut client, mut server) = tokio::io::duplex(64);
        let writer = tokio::spawn(async move {
            client.write_all(b"GET /x HT").await.unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
            client
                .write_all(b"TP/1.1\r\nHost: a\r\n\r\n")
                .await
                .unwrap();
            client
        });
        let (p, buf) = detect_on(&mut server, Duration::from_secs(1), Expect::Any)
            .await
            .unwrap();
        assert_eq!(p, Ok(Protocol::Http1));
        assert!(buf.starts_with(b"GET /x HTTP/1.1\r\n"));
        drop(writer.await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_closes_early_is_opaque() {
        let (mut client, mut server) = tokio::io::duplex(64);
        client.write_all(b"GE").await.unwrap();
        drop(client);
        let (p, buf) = detect_on(&mut server, Duration::from_secs(1), Expect::Any)
            .await
            .unwrap();
        assert_eq!(p, Ok(Protocol::Opaque));
        assert_eq!(&buf[..], b"GE");
    }
}
