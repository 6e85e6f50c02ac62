//! Protocol detection: what a client speaks, from its first bytes.
//!
//! [`classify`] is the pure decision; [`detect`] reads from a socket until the
//! decision is made, the client stops, or the deadline passes. Server-speaks-first
//! protocols (MySQL, SMTP) send nothing, so they wait out the deadline and are
//! treated as opaque TCP; ports marked opaque skip detection entirely.

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

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Reads until [`classify`] decides, the peer closes or stops sending, or
/// `timeout` passes (then: opaque). Returns the decision and every byte read,
/// which the caller replays in front of the stream.
pub async fn detect<I: AsyncRead + Unpin>(
    io: &mut I,
    timeout: Duration,
    max_line: usize,
) -> std::io::Result<(Protocol, BytesMut)> {
    let mut buf = BytesMut::with_capacity(1024);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(p) = classify(&buf, max_line) {
            return Ok((p, buf));
        }
        if buf.capacity() - buf.len() < 512 {
            buf.reserve(4096);
        }
        match tokio::time::timeout_at(deadline, io.read_buf(&mut buf)).await {
            Err(_elapsed) => return Ok((Protocol::Opaque, buf)),
            Ok(Ok(0)) => return Ok((Protocol::Opaque, buf)),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

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

    #[tokio::test(start_paused = true)]
    async fn silent_clients_are_opaque_after_the_deadline() {
        let (mut client, mut server) = tokio::io::duplex(64);
        let start = tokio::time::Instant::now();
        let (p, buf) = detect(&mut server, Duration::from_millis(300), MAX)
            .await
            .unwrap();
        assert_eq!(p, Protocol::Opaque);
        assert!(buf.is_empty());
        assert_eq!(start.elapsed(), Duration::from_millis(300));
        client.write_all(b"x").await.unwrap();
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
        let (p, buf) = detect(&mut server, Duration::from_secs(1), MAX)
            .await
            .unwrap();
        assert_eq!(p, Protocol::Http1);
        assert!(buf.starts_with(b"GET /x HTTP/1.1\r\n"));
        drop(writer.await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_closes_early_is_opaque() {
        let (mut client, mut server) = tokio::io::duplex(64);
        client.write_all(b"GE").await.unwrap();
        drop(client);
        let (p, buf) = detect(&mut server, Duration::from_secs(1), MAX)
            .await
            .unwrap();
        assert_eq!(p, Protocol::Opaque);
        assert_eq!(&buf[..], b"GE");
    }
}
