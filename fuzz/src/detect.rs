//! Protocol detection (`classify`) and the ClientHello reader
//! (`client_hello`): the first bytes of every accepted connection.

use outrigger_proxy::detect::{self, Hello, Protocol, H2_PREFACE, MAX_HELLO};

pub const DICTIONARY: &[&[u8]] = &[
    b"GET ",
    b" HTTP/1.1\r\n",
    b" HTTP/1.0\n",
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    b"\r\n",
    b"\x00",
    b"\x16\x03\x01",
];

/// The request-line bounds the properties are checked under: one small
/// enough for the forced decision to happen in short inputs, and the
/// proxy's default.
const MAX_LINES: [usize; 2] = [16, 8192];

/// `classify` never panics; once a prefix decides, every longer prefix
/// decides too, and the same way (detection acts on the first decision,
/// so the protocol must not depend on how TCP split the bytes), with the
/// two exceptions of [`reversible`]; HTTP/2 only after the whole preface;
/// HTTP/1 only after a method token and a space.
pub fn classify(data: &[u8]) {
    let data = &data[..data.len().min(2048)];
    for max_line in MAX_LINES {
        let mut first: Option<(usize, Protocol)> = None;
        for n in 0..=data.len() {
            let decided = detect::classify(&data[..n], max_line);
            match (first, decided) {
                (None, Some(p)) => first = Some((n, p)),
                (None, None) => {}
                (Some((at, _)), None) => {
                    panic!("decided at {at} bytes, undecided again at {n} (max_line {max_line})")
                }
                (Some((at, p)), Some(q)) => assert!(
                    p == q || reversible(&data[..at], p, max_line),
                    "{p:?} at {at} bytes, {q:?} at {n} (max_line {max_line})"
                ),
            }
            match decided {
                Some(Protocol::Http2) => assert!(data[..n].starts_with(H2_PREFACE)),
                Some(Protocol::Http1) => {
                    let space = data[..n].iter().position(|&b| b == b' ');
                    assert!(space.is_some_and(|s| s > 0), "HTTP/1 without a method");
                }
                _ => {}
            }
        }
    }
}

/// The decisions `classify` takes before the request line ends, which a
/// longer input can contradict:
/// - a line that reached `max_line` bytes without a newline is HTTP/1
///   (hyper then answers 414/431), whatever follows;
/// - a control byte before the line's end is opaque, though the line
///   may go on to end in ` HTTP/1.1` (left as it is: the detection's owner
///   decides; see docs/testing.md, "Fuzzing").
fn reversible(prefix: &[u8], decided: Protocol, max_line: usize) -> bool {
    let Some(space) = prefix.iter().position(|&b| b == b' ') else {
        return false;
    };
    let rest = &prefix[space + 1..];
    if rest.contains(&b'\n') {
        return false;
    }
    match decided {
        Protocol::Http1 => prefix.len() >= max_line,
        Protocol::Opaque => rest.iter().any(|&b| b < 0x20 && b != b'\r'),
        Protocol::Http2 => false,
    }
}

/// `client_hello` never panics; its answer depends on the first record
/// alone (bytes after it change nothing), every prefix of that record
/// asks for more, a server name is read from inside the record, and a
/// ClientHello built here from the input's bytes gives back its name.
pub fn client_hello(data: &[u8]) {
    let full = detect::client_hello(data);
    match data.first() {
        None => assert_eq!(full, Hello::NeedMore),
        Some(&b) if b != 0x16 => assert_eq!(full, Hello::NotTls),
        Some(_) => assert_ne!(full, Hello::NotTls),
    }
    if let Some(header) = data.get(..5).filter(|_| data[0] == 0x16) {
        let end = 5 + usize::from(u16::from_be_bytes([header[3], header[4]]));
        if end > MAX_HELLO {
            assert_eq!(full, Hello::Unreadable, "a record longer than TLS allows");
        } else if data.len() < end {
            assert_eq!(full, Hello::NeedMore);
        } else {
            let record = &data[..end];
            assert_eq!(
                detect::client_hello(record),
                full,
                "trailing bytes changed it"
            );
            let mut longer = record.to_vec();
            longer.extend_from_slice(b"\x16\x03\x01\x00\x00trailing");
            assert_eq!(detect::client_hello(&longer), full);
            for n in 1..end {
                assert_eq!(
                    detect::client_hello(&record[..n]),
                    Hello::NeedMore,
                    "{n} bytes"
                );
            }
            if let Hello::ClientHello {
                server_name: Some(name),
            } = full
            {
                let range = record.as_ptr_range();
                assert!(
                    range.contains(&name.as_ptr()),
                    "a name from outside the record"
                );
            }
        }
    }

    // A well-formed ClientHello carrying a name made of the input's bytes
    // (as letters, digits, dots and dashes), after an unknown extension.
    let name: String = data
        .iter()
        .take(200)
        .map(|&b| char::from(b"abcdefghijklmnopqrstuvwxyz0123456789.-"[usize::from(b) % 38]))
        .collect();
    let hello = build_client_hello(&name, data);
    assert_eq!(
        detect::client_hello(&hello),
        Hello::ClientHello {
            server_name: Some(&name)
        }
    );
}

/// A TLS 1.2-framed ClientHello with an opaque extension holding
/// `padding` (up to 255 bytes) and then the server name `name`.
pub fn build_client_hello(name: &str, padding: &[u8]) -> Vec<u8> {
    let padding = &padding[..padding.len().min(255)];
    let name = name.as_bytes();
    let mut sni = Vec::new();
    sni.extend_from_slice(&u16len(name.len() + 3));
    sni.push(0); // host_name
    sni.extend_from_slice(&u16len(name.len()));
    sni.extend_from_slice(name);
    let mut extensions = Vec::new();
    extensions.extend_from_slice(&[0xff, 0x01]); // an unknown extension
    extensions.extend_from_slice(&u16len(padding.len()));
    extensions.extend_from_slice(padding);
    extensions.extend_from_slice(&[0, 0]); // server_name
    extensions.extend_from_slice(&u16len(sni.len()));
    extensions.extend_from_slice(&sni);
    let mut body = vec![3, 3];
    body.extend_from_slice(&[7; 32]); // random
    body.push(0); // legacy_session_id
    body.extend_from_slice(&[0, 2, 0x13, 0x01]); // one cipher suite
    body.extend_from_slice(&[1, 0]); // null compression
    body.extend_from_slice(&u16len(extensions.len()));
    body.extend_from_slice(&extensions);
    let mut handshake = vec![1];
    handshake.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    handshake.extend_from_slice(&body);
    let mut record = vec![0x16, 3, 1];
    record.extend_from_slice(&u16len(handshake.len()));
    record.extend_from_slice(&handshake);
    record
}

fn u16len(n: usize) -> [u8; 2] {
    u16::try_from(n)
        .expect("a length within a record")
        .to_be_bytes()
}

/// Request-line bounds for `classify_http`, as for [`classify`].
pub const HTTP_DICTIONARY: &[&[u8]] = &[
    b"GET ",
    b"CONNECT ",
    b" HTTP/1.1\r\n",
    b" HTTP/1.0\r\n",
    b" HTTP/1.2\r\n",
    b"\n",
    b"\r\n",
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    b"\x00",
    b"\x16\x03\x01",
    b"@",
];

/// `classify_http` (ports declared HTTP) never panics; once a prefix
/// decides, every longer prefix decides alike (an error stays an error,
/// a protocol the same protocol), except that a line forced to HTTP/1 at
/// `max_line` bytes may later prove malformed; HTTP/2 only after the
/// whole preface; opaque only for a TLS handshake record; HTTP/1 only
/// for a whole request line ending in ` HTTP/1.0` or ` HTTP/1.1` and
/// CRLF, or a line that reached `max_line`.
pub fn classify_http(data: &[u8]) {
    let data = &data[..data.len().min(2048)];
    for max_line in MAX_LINES {
        let mut first: Option<(usize, Result<Protocol, detect::Malformed>)> = None;
        for n in 0..=data.len() {
            let prefix = &data[..n];
            let decided = detect::classify_http(prefix, max_line);
            match (&first, &decided) {
                (None, Some(d)) => first = Some((n, *d)),
                (None, None) => {}
                (Some((at, _)), None) => {
                    panic!("decided at {at} bytes, undecided again at {n} (max_line {max_line})")
                }
                (Some((at, d)), Some(e)) => {
                    let same = match (d, e) {
                        (Ok(p), Ok(q)) => p == q,
                        (Err(_), Err(_)) => true,
                        _ => false,
                    };
                    let forced = *d == Ok(Protocol::Http1) && !has_line_end(&data[..*at]);
                    assert!(
                        same || forced,
                        "{d:?} at {at} bytes, {e:?} at {n} (max_line {max_line})"
                    );
                }
            }
            match decided {
                Some(Ok(Protocol::Http2)) => assert!(prefix.starts_with(H2_PREFACE)),
                Some(Ok(Protocol::Opaque)) => assert_eq!(prefix.first(), Some(&0x16)),
                Some(Ok(Protocol::Http1)) => {
                    let line_ok = request_line(prefix)
                        .is_some_and(|l| l.ends_with(b" HTTP/1.1") || l.ends_with(b" HTTP/1.0"));
                    assert!(
                        line_ok || n >= max_line,
                        "HTTP/1 without a whole request line: {:?}",
                        prefix.escape_ascii().to_string()
                    );
                }
                _ => {}
            }
        }
    }
}

/// Whether `b`, past any empty lines, holds a line end.
fn has_line_end(b: &[u8]) -> bool {
    request_line(b).is_some()
}

/// The first line of `b` that is not empty, without its CRLF, once whole.
fn request_line(mut b: &[u8]) -> Option<&[u8]> {
    while let Some(rest) = b.strip_prefix(b"\r\n") {
        b = rest;
    }
    let end = b.windows(2).position(|w| w == b"\r\n")?;
    Some(&b[..end])
}
