//! The `Host` decision (`layers::admit::host`, RFC 9112 §3.2): which host
//! routing, authorization and the app see.

use http::header::HOST;
use http::{HeaderMap, HeaderValue, Method, Uri, Version};
use outrigger_proxy::layers::admit::{host, HostError};

pub const DICTIONARY: &[&[u8]] = &[
    b"\n",
    b"http://",
    b"a.example",
    b":8080",
    b"@",
    b"CONNECT",
    b"GET",
    b"/x",
    b"*",
    b"[::1]",
];

/// The input, line by line: a version and method byte, the target, then
/// each line a `Host` value. Never panics; more than one `Host` is refused
/// as repeated; a replacement is the target's authority, only for an
/// absolute-form HTTP/1 target that is no CONNECT, and only when the
/// `Host` received differs from it; no replacement for such a target
/// means the `Host` already was its authority; `Missing` only for an
/// HTTP/1.1 request with neither a `Host` nor an authority; `Invalid`
/// only for one `Host` that is no `host[:port]`.
pub fn decide(data: &[u8]) {
    let mut lines = data.split(|&b| b == b'\n');
    let Some(&kind) = lines.next().and_then(|l| l.first()) else {
        return;
    };
    let version = [Version::HTTP_10, Version::HTTP_11, Version::HTTP_2][usize::from(kind % 3)];
    let method = if kind & 4 != 0 {
        Method::CONNECT
    } else {
        Method::GET
    };
    let Some(Ok(uri)) = lines.next().map(Uri::try_from) else {
        return;
    };
    let mut headers = HeaderMap::new();
    for v in lines {
        if let Ok(v) = HeaderValue::from_bytes(v) {
            headers.append(HOST, v);
        }
    }
    let received: Vec<&HeaderValue> = headers.get_all(HOST).iter().collect();
    let decided = host(version, &method, &uri, &headers);
    let absolute = version != Version::HTTP_2 && method != Method::CONNECT;
    let authority = uri.authority().filter(|_| absolute);
    match decided {
        Err(HostError::Repeated) => assert!(received.len() > 1),
        Err(HostError::Missing) => {
            assert!(received.is_empty() && version == Version::HTTP_11);
            assert!(uri.authority().is_none());
        }
        Err(HostError::Invalid) => {
            assert_eq!(received.len(), 1);
            let v = received[0].as_bytes();
            assert!(!v.is_empty());
            assert!(
                v.contains(&b'@') || http::uri::Authority::try_from(v).is_err(),
                "{v:?} refused though it is a host[:port]"
            );
        }
        Ok(Some(replacement)) => {
            assert!(received.len() <= 1);
            let a = authority.expect("a replacement only for an absolute-form target");
            assert_eq!(replacement.as_bytes(), a.as_str().as_bytes());
            assert!(received.first().is_none_or(|r| *r != replacement));
        }
        Ok(None) => {
            assert!(received.len() <= 1);
            if let Some(a) = authority {
                // No replacement: the host received was the authority
                // (or the authority is no header value at all).
                let same = received
                    .first()
                    .is_some_and(|r| r.as_bytes() == a.as_str().as_bytes());
                assert!(same || HeaderValue::from_str(a.as_str()).is_err());
            }
        }
    }
}
