//! Header rules for a proxy hop (RFC 9110 §7.6.1) and the conversions between
//! HTTP/1 and HTTP/2 request forms.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::uri::{Authority, PathAndQuery, Scheme, Uri};
use http::{Method, Version};

/// Set by an outbound proxy on a request it carries over HTTP/2 to a peer
/// proxy when the client spoke HTTP/1; the inbound proxy removes it and talks
/// HTTP/1 to its app.
pub static ORIG_PROTO: HeaderName = HeaderName::from_static("outrigger-orig-proto");
pub const ORIG_PROTO_HTTP1: HeaderValue = HeaderValue::from_static("HTTP/1.1");

/// Set by an outbound proxy on every request it sends to a meshed endpoint:
/// its own workload's name, so that the inbound proxy can label the request's
/// `source_workload` (a certificate names a namespace and a service account,
/// not a workload; Istio exchanges the same in `x-envoy-peer-metadata`). The
/// inbound proxy believes it only over mutual TLS, and only as one of the
/// workloads its configuration shows the peer's identity serving; every
/// proxy removes it before a request goes on, so no app sets or sees it.
pub static SOURCE_WORKLOAD: HeaderName = HeaderName::from_static("outrigger-source-workload");

/// Headers that describe one connection, never forwarded (RFC 9110 §7.6.1,
/// plus the legacy `proxy-connection` and `keep-alive`).
const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    HeaderName::from_static("proxy-connection"),
    HeaderName::from_static("keep-alive"),
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHENTICATE,
];

/// Removes hop-by-hop headers and every header the `Connection` header names.
/// `TE` survives only as `trailers` (gRPC needs it end to end).
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    if headers.contains_key(header::TE) {
        let trailers = headers
            .get_all(header::TE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("trailers"));
        headers.remove(header::TE);
        if trailers {
            headers.insert(header::TE, HeaderValue::from_static("trailers"));
        }
    }
}

/// An HTTP/1.1 request that asks to switch protocols (`Connection: upgrade`
/// with an `Upgrade` header, as WebSocket does) or to open a tunnel
/// (`CONNECT`). HTTP/1.0 has no upgrades (RFC 9110 §7.8).
pub fn is_upgrade(version: Version, method: &Method, headers: &HeaderMap) -> bool {
    if method == Method::CONNECT {
        return true;
    }
    version == Version::HTTP_11
        && headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// The request's authority: from the URI (HTTP/2, absolute-form HTTP/1) or the
/// `Host` header.
pub fn authority(parts: &Parts) -> Option<Authority> {
    parts.uri.authority().cloned().or_else(|| {
        parts
            .headers
            .get(header::HOST)
            .and_then(|h| Authority::try_from(h.as_bytes()).ok())
    })
}

/// Rewrites a request into HTTP/1.1 form: origin-form target (absolute-form
/// kept when `keep_absolute`, for a client talking to a forward proxy), `Host`
/// set, and, from HTTP/2, split `cookie` fields joined (RFC 9113 §8.2.3).
pub fn to_http1(parts: &mut Parts, authority: Option<&Authority>, keep_absolute: bool) {
    if parts.version == Version::HTTP_2 {
        join_cookies(&mut parts.headers);
    }
    let uri_has_authority = parts.uri.authority().is_some();
    if let Some(a) = authority {
        // A URI authority wins over a different Host (RFC 9112 §3.2.2).
        if uri_has_authority || !parts.headers.contains_key(header::HOST) {
            if let Ok(v) = HeaderValue::from_str(a.as_str()) {
                parts.headers.insert(header::HOST, v);
            }
        }
    }
    if parts.method != Method::CONNECT && !(keep_absolute && uri_has_authority) {
        let pq = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        parts.uri = Uri::from(pq);
    }
    parts.version = Version::HTTP_11;
}

fn join_cookies(headers: &mut HeaderMap) {
    if headers.get_all(header::COOKIE).iter().nth(1).is_none() {
        return;
    }
    let joined: Vec<&[u8]> = headers
        .get_all(header::COOKIE)
        .iter()
        .map(|v| v.as_bytes())
        .collect();
    if let Ok(v) = HeaderValue::from_bytes(&joined.join(&b"; "[..])) {
        headers.insert(header::COOKIE, v);
    }
}

/// Rewrites a request into HTTP/2 form: absolute URI carrying `:scheme` and
/// `:authority`; the `Host` header folds into `:authority`.
pub fn to_http2(parts: &mut Parts, authority: Authority) {
    parts.headers.remove(header::HOST);
    let mut up = std::mem::take(&mut parts.uri).into_parts();
    if up.scheme.is_none() {
        up.scheme = Some(Scheme::HTTP);
    }
    up.authority = Some(authority);
    if up.path_and_query.is_none() {
        up.path_and_query = Some(PathAndQuery::from_static("/"));
    }
    parts.uri = Uri::from_parts(up).expect("scheme, authority and path are all set");
    parts.version = Version::HTTP_2;
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Request;

    fn parts(req: Request<()>) -> Parts {
        req.into_parts().0
    }

    #[test]
    fn hop_by_hop_headers_and_those_named_by_connection_are_removed() {
        let mut p = parts(
            Request::get("/")
                .header("connection", "keep-alive, X-Secret")
                .header("connection", "x-other")
                .header("keep-alive", "timeout=5")
                .header("proxy-connection", "keep-alive")
                .header("transfer-encoding", "chunked")
                .header("upgrade", "h2c")
                .header("proxy-authenticate", "Basic")
                .header("x-secret", "1")
                .header("x-other", "1")
                .header("x-kept", "1")
                .header("trailer", "grpc-status")
                .body(())
                .unwrap(),
        );
        strip_hop_by_hop(&mut p.headers);
        let mut left: Vec<_> = p.headers.keys().map(|k| k.as_str()).collect();
        left.sort();
        assert_eq!(left, ["trailer", "x-kept"]);
    }

    #[test]
    fn te_keeps_only_trailers() {
        let mut h = HeaderMap::new();
        h.insert(header::TE, HeaderValue::from_static("gzip, Trailers"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.get(header::TE).unwrap(), "trailers");
        let mut h = HeaderMap::new();
        h.insert(header::TE, HeaderValue::from_static("gzip"));
        strip_hop_by_hop(&mut h);
        assert!(h.get(header::TE).is_none());
    }

    #[test]
    fn upgrade_requests_are_recognized() {
        let ws = Request::get("/chat")
            .header("connection", "keep-alive, Upgrade")
            .header("upgrade", "websocket")
            .body(())
            .unwrap();
        assert!(is_upgrade(ws.version(), ws.method(), ws.headers()));
        assert!(
            !is_upgrade(Version::HTTP_10, ws.method(), ws.headers()),
            "no upgrades in HTTP/1.0"
        );
        let no_conn = Request::get("/")
            .header("upgrade", "websocket")
            .body(())
            .unwrap();
        assert!(!is_upgrade(
            no_conn.version(),
            no_conn.method(),
            no_conn.headers()
        ));
        let connect = Request::connect("db:5432").body(()).unwrap();
        assert!(is_upgrade(
            connect.version(),
            connect.method(),
            connect.headers()
        ));
        let plain = Request::get("/").body(()).unwrap();
        assert!(!is_upgrade(
            plain.version(),
            plain.method(),
            plain.headers()
        ));
    }

    #[test]
    fn http1_to_http2_and_back_keeps_authority_path_and_query() {
        let mut p = parts(
            Request::get("/a/b?c=d")
                .header("host", "web.shop:80")
                .body(())
                .unwrap(),
        );
        let a = authority(&p).unwrap();
        assert_eq!(a.as_str(), "web.shop:80");
        to_http2(&mut p, a);
        assert_eq!(p.uri.to_string(), "http://web.shop:80/a/b?c=d");
        assert!(p.headers.get(header::HOST).is_none());
        assert_eq!(p.version, Version::HTTP_2);

        let a = authority(&p).unwrap();
        to_http1(&mut p, Some(&a), false);
        assert_eq!(p.uri.to_string(), "/a/b?c=d");
        assert_eq!(p.headers.get(header::HOST).unwrap(), "web.shop:80");
        assert_eq!(p.version, Version::HTTP_11);
    }

    #[test]
    fn absolute_form_http1_takes_its_host_from_the_uri() {
        let absolute = || {
            parts(
                Request::get("http://api.example:8080/x")
                    .header("host", "other")
                    .body(())
                    .unwrap(),
            )
        };
        let mut p = absolute();
        let a = authority(&p).unwrap();
        assert_eq!(a.as_str(), "api.example:8080");
        to_http1(&mut p, Some(&a), false);
        assert_eq!(p.uri.to_string(), "/x");
        assert_eq!(p.headers.get(header::HOST).unwrap(), "api.example:8080");

        // To a forward proxy (passthrough), the absolute form is kept.
        let mut p = absolute();
        to_http1(&mut p, Some(&a), true);
        assert_eq!(p.uri.to_string(), "http://api.example:8080/x");
        assert_eq!(p.headers.get(header::HOST).unwrap(), "api.example:8080");
    }

    #[test]
    fn http2_cookie_fields_are_joined_for_http1() {
        let mut p = parts(
            Request::get("http://x/")
                .version(Version::HTTP_2)
                .header("cookie", "a=1")
                .header("cookie", "b=2")
                .body(())
                .unwrap(),
        );
        to_http1(&mut p, None, false);
        let cookies: Vec<_> = p.headers.get_all(header::COOKIE).iter().collect();
        assert_eq!(cookies, ["a=1; b=2"]);
    }

    #[test]
    fn connect_keeps_its_authority_form() {
        let mut p = parts(Request::connect("db:5432").body(()).unwrap());
        let a = authority(&p);
        to_http1(&mut p, a.as_ref(), false);
        assert_eq!(p.uri.to_string(), "db:5432");
        assert_eq!(p.headers.get(header::HOST).unwrap(), "db:5432");
    }

    #[test]
    fn https_scheme_is_kept_on_http2() {
        let mut p = parts(Request::get("https://x/y").body(()).unwrap());
        to_http2(&mut p, Authority::from_static("x"));
        assert_eq!(p.uri.to_string(), "https://x/y");
    }
}
