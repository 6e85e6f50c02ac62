//! What the proxy accepts of a request before any policy sees it: one
//! host (RFC 9112 §3.2), the path normalized (Istio's `pathNormalization`),
//! so that routing, authorization and the app all see one form of each,
//! and only the allowed `Upgrade`s (Envoy's `upgrade_configs`), so that no
//! tunnel opens that the settings did not ask for.
//!
//! [`host`], [`normalize_path`] and [`upgrade`] are the pure decisions;
//! [`Admit`] is the layer at the top of every stack that applies them.

use std::sync::Arc;

use arc_swap::ArcSwap;
use http::header::{CONNECTION, HOST, UPGRADE};
use http::uri::{Authority, PathAndQuery, Uri};
use http::{HeaderMap, HeaderValue, Method, Version};
use outrigger_api::{HttpSettings, PathNormalization};
use tower::Service;

use crate::headers;
use crate::svc::{always_ready, call, Fut, HttpService, Req};
use crate::svc::{ErrorKind, ProxyError};
use outrigger_proxy_policy::config::Config;

/// Why a path is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// `%00` decodes to NUL, which Istio always refuses.
    #[error("the request path holds %00 (an encoded NUL byte)")]
    Nul,
    /// A `%` that starts no escape, followed by characters that decode
    /// to hex digits: `/%6%31dmin` would become `/%61dmin`, which no rule
    /// on `/admin` matches and the app reads as `/admin`. (A `%` that
    /// stays a lone `%`, as in `/100%`, is kept.)
    #[error("the request path holds a % that decoding would join into an escape")]
    JoinedEscape,
}

/// Why a request's host is refused (RFC 9112 §3.2: 400).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    #[error("the request has more than one Host header")]
    Repeated,
    #[error("an HTTP/1.1 request needs a Host header")]
    Missing,
    #[error("the Host header is not a valid host[:port]")]
    Invalid,
}

/// Decides a request's `Host`: more than one, one that is no
/// `host[:port]`, or none on an HTTP/1.1 request whose target names no
/// authority, is refused (RFC 9112 §3.2); when an HTTP/1 target has
/// an authority (absolute form) that authority is the host and a `Host`
/// that differs is replaced by it (§3.2.2), so that routing, authorization
/// and the app agree on one host. Returns the replacement, if any.
/// `CONNECT`'s target is its authority, and its `Host` is left as it is;
/// HTTP/2 carries its authority in `:authority`, which the proxy routes
/// and forwards by. Pure.
pub fn host(
    version: Version,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<Option<HeaderValue>, HostError> {
    let mut hosts = headers.get_all(HOST).iter();
    let received = hosts.next();
    if hosts.next().is_some() {
        return Err(HostError::Repeated);
    }
    if let Some(v) = received.filter(|v| !v.is_empty()) {
        // A host and port, no user information.
        if v.as_bytes().contains(&b'@') || Authority::try_from(v.as_bytes()).is_err() {
            return Err(HostError::Invalid);
        }
    }
    if received.is_none() && version == Version::HTTP_11 && uri.authority().is_none() {
        return Err(HostError::Missing);
    }
    let absolute = version != Version::HTTP_2 && method != Method::CONNECT;
    let Some(authority) = uri.authority().filter(|_| absolute) else {
        return Ok(None);
    };
    if received.is_some_and(|v| v.as_bytes() == authority.as_str().as_bytes()) {
        return Ok(None);
    }
    Ok(HeaderValue::from_str(authority.as_str()).ok())
}

/// The normalized form of an origin-form `path` (no query), or `None` when
/// it is already normal. Steps, in Istio's order:
/// 1. `DECODE_AND_MERGE_SLASHES`: `%2F` and `%5C` decoded;
/// 2. `BASE`: percent-encoded unreserved characters (RFC 3986 §2.3)
///    decoded once, other escapes' hex digits in upper case, `\` becomes
///    `/`, dot segments removed (RFC 3986 §5.2.4); `%00` refused, and a
///    lone `%` that the decoding would join into a new escape;
/// 3. `MERGE_SLASHES`: runs of `/` merged.
///
/// A path that starts with neither `/` nor `\` (`*`, authority form) is
/// left alone.
pub fn normalize_path(path: &str, mode: PathNormalization) -> Result<Option<String>, PathError> {
    if mode == PathNormalization::None || !(path.starts_with('/') || path.starts_with('\\')) {
        return Ok(None);
    }
    let bytes = path.as_bytes();
    let needs_work = bytes.iter().enumerate().any(|(i, &b)| match b {
        b'%' | b'\\' => true,
        b'.' => i > 0 && bytes[i - 1] == b'/',
        b'/' => mode >= PathNormalization::MergeSlashes && bytes.get(i + 1) == Some(&b'/'),
        _ => false,
    });
    if !needs_work {
        return Ok(None);
    }

    // Steps 1 and 2's decoding, in one pass (decoding happens once: a `%`
    // that a decode produced is never decoded again).
    let decode_slashes = mode == PathNormalization::DecodeAndMergeSlashes;
    let mut decoded = Vec::with_capacity(bytes.len());
    // Where each `%` that starts no escape landed in `decoded`.
    let mut lone = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        let escape = (b == b'%')
            .then(|| Some((hex(*bytes.get(i + 1)?)?, hex(*bytes.get(i + 2)?)?)))
            .flatten();
        match escape {
            Some((hi, lo)) => {
                let v = hi << 4 | lo;
                if v == 0 {
                    return Err(PathError::Nul);
                }
                if is_unreserved(v) || (decode_slashes && (v == b'/' || v == b'\\')) {
                    decoded.push(v);
                } else {
                    decoded.push(b'%');
                    decoded.push(bytes[i + 1].to_ascii_uppercase());
                    decoded.push(bytes[i + 2].to_ascii_uppercase());
                }
                i += 3;
            }
            None => {
                if b == b'%' {
                    lone.push(decoded.len());
                }
                decoded.push(b);
                i += 1;
            }
        }
    }
    // Decoding never makes an escape: a lone `%` now followed by two hex
    // digits would read as one to the app (dot segments and slashes,
    // removed below, are never hex digits, so this is the last chance).
    let joins = |&at: &usize| {
        decoded
            .get(at + 1..at + 3)
            .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit))
    };
    if lone.iter().any(joins) {
        return Err(PathError::JoinedEscape);
    }
    for b in &mut decoded {
        if *b == b'\\' {
            *b = b'/';
        }
    }
    // Only ASCII went in and only ASCII was decoded (unreserved, `/`, `\`).
    let decoded = String::from_utf8(decoded).expect("a URI path is ASCII");

    let mut segments: Vec<&str> = Vec::new();
    let mut parts = decoded[1..].split('/').peekable();
    while let Some(seg) = parts.next() {
        let last = parts.peek().is_none();
        match seg {
            "." => {}
            ".." => {
                segments.pop();
            }
            s => {
                segments.push(s);
                continue;
            }
        }
        // A path ending in a dot segment keeps its trailing slash.
        if last {
            segments.push("");
        }
    }
    let mut out = String::with_capacity(decoded.len());
    for seg in &segments {
        out.push('/');
        out.push_str(seg);
    }
    if out.is_empty() {
        out.push('/');
    }
    if mode >= PathNormalization::MergeSlashes {
        let mut merged = String::with_capacity(out.len());
        for c in out.chars() {
            if !(c == '/' && merged.ends_with('/')) {
                merged.push(c);
            }
        }
        out = merged;
    }
    Ok((out != path).then_some(out))
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// RFC 3986 §2.3: ALPHA / DIGIT / "-" / "." / "_" / "~".
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// What becomes of a request that asks to switch protocols.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UpgradeVerdict {
    /// Not an upgrade, or an allowed one: as it is.
    Pass,
    /// An `h2c` upgrade: served as a plain request, its upgrade headers
    /// removed (as Envoy does; the proxy speaks HTTP/2 to peers itself).
    StripH2c,
    /// Not allowed: refused, naming the protocol.
    Refuse(String),
}

/// Decides an HTTP/1.1 request's `Upgrade` (or `CONNECT`) against the
/// allowed list. Pure.
pub fn upgrade(
    settings: &HttpSettings,
    version: Version,
    method: &Method,
    headers: &HeaderMap,
) -> UpgradeVerdict {
    if !headers::is_upgrade(version, method, headers) {
        return UpgradeVerdict::Pass;
    }
    if method == Method::CONNECT {
        return if settings.allows_upgrade("CONNECT") {
            UpgradeVerdict::Pass
        } else {
            UpgradeVerdict::Refuse("CONNECT".into())
        };
    }
    let protocol = headers
        .get_all(UPGRADE)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).trim().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    if protocol.eq_ignore_ascii_case("h2c") {
        UpgradeVerdict::StripH2c
    } else if settings.allows_upgrade(&protocol) {
        UpgradeVerdict::Pass
    } else {
        UpgradeVerdict::Refuse(protocol)
    }
}

/// Removes an `h2c` upgrade's headers: `Upgrade`, `HTTP2-Settings` and
/// their `Connection` tokens.
fn strip_h2c(headers: &mut HeaderMap) {
    headers.remove(UPGRADE);
    headers.remove("http2-settings");
    let kept: Vec<String> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| {
            !t.is_empty()
                && !t.eq_ignore_ascii_case("upgrade")
                && !t.eq_ignore_ascii_case("http2-settings")
        })
        .map(str::to_string)
        .collect();
    headers.remove(CONNECTION);
    if let Ok(v) = http::HeaderValue::from_str(&kept.join(", ")) {
        if !kept.is_empty() {
            headers.insert(CONNECTION, v);
        }
    }
}

/// The layer: refuses a request with a bad or repeated `Host`, or whose
/// path cannot be normalized (400 `DPE`), or whose upgrade is not allowed
/// (403); sets an absolute-form target's authority as its `Host`, rewrites
/// the path to its normal form, and strips `h2c` upgrades.
#[derive(Clone)]
pub struct Admit<S> {
    inner: S,
    config: Arc<ArcSwap<Config>>,
    normalize: bool,
}

impl<S> Admit<S> {
    /// Upgrades and paths, for traffic the mesh routes or authorizes.
    pub fn new(inner: S, config: Arc<ArcSwap<Config>>) -> Self {
        Self {
            inner,
            config,
            normalize: true,
        }
    }

    /// Upgrades only, for passthrough to a destination the mesh does not
    /// know: no rule matches its paths, and rewriting them could break
    /// what only that server understands (object keys with `//`, signed
    /// URLs).
    pub fn upgrades_only(inner: S, config: Arc<ArcSwap<Config>>) -> Self {
        Self {
            inner,
            config,
            normalize: false,
        }
    }
}

impl<S: HttpService> Service<Req> for Admit<S> {
    always_ready!();

    fn call(&mut self, mut req: Req) -> Fut {
        match host(req.version(), req.method(), req.uri(), req.headers()) {
            Ok(None) => {}
            Ok(Some(authority)) => {
                req.headers_mut().insert(HOST, authority);
            }
            Err(e) => {
                let e = ProxyError::new(ErrorKind::BadRequest, e.to_string());
                return Box::pin(async move { Err(e) });
            }
        }
        let cfg = self.config.load();
        let settings = &cfg.snapshot.http;
        match upgrade(settings, req.version(), req.method(), req.headers()) {
            UpgradeVerdict::Pass => {}
            UpgradeVerdict::StripH2c => strip_h2c(req.headers_mut()),
            UpgradeVerdict::Refuse(protocol) => {
                let why = format!(
                    "upgrade to {protocol:?} is not allowed (allowed: {})",
                    settings.upgrades.join(", ")
                );
                return Box::pin(
                    async move { Err(ProxyError::new(ErrorKind::UpgradeRefused, why)) },
                );
            }
        }
        if self.normalize && req.method() != Method::CONNECT {
            if let Err(e) = normalize_uri(req.uri_mut(), settings.path_normalization) {
                return Box::pin(async move { Err(e) });
            }
        }
        drop(cfg);
        call(self.inner.clone(), req)
    }
}

/// What [`Admit`] does to a request's URI: its path normalized in place
/// (scheme, authority and query kept), or the 400 that refuses it. Pure;
/// the policies after this layer see the URI it leaves.
pub fn normalize_uri(uri: &mut Uri, mode: PathNormalization) -> Result<(), ProxyError> {
    match normalize_path(uri.path(), mode) {
        Ok(None) => Ok(()),
        Ok(Some(path)) => set_path(uri, &path),
        Err(e) => Err(ProxyError::new(ErrorKind::BadRequest, e.to_string())),
    }
}

/// Replaces the path of `uri`, keeping its scheme, authority and query.
fn set_path(uri: &mut Uri, path: &str) -> Result<(), ProxyError> {
    let pq = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    let bad = |e: String| ProxyError::new(ErrorKind::BadRequest, format!("request path: {e}"));
    let mut parts = std::mem::take(uri).into_parts();
    parts.path_and_query = Some(PathAndQuery::try_from(pq).map_err(|e| bad(e.to_string()))?);
    *uri = Uri::from_parts(parts).map_err(|e| bad(e.to_string()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use PathNormalization::*;

    fn norm(path: &str, mode: PathNormalization) -> String {
        normalize_path(path, mode)
            .unwrap()
            .unwrap_or_else(|| path.to_string())
    }

    #[test]
    fn one_valid_host_and_an_absolute_targets_authority_wins() {
        let get = Method::GET;
        let host = |m: &Method, u: &Uri, h: &HeaderMap| host(Version::HTTP_11, m, u, h);
        let headers = |hosts: &[&str]| {
            let mut h = HeaderMap::new();
            for v in hosts {
                h.append(HOST, HeaderValue::from_str(v).unwrap());
            }
            h
        };
        let origin: Uri = "/x".parse().unwrap();
        let absolute: Uri = "http://api.example:8080/x".parse().unwrap();
        assert_eq!(
            host(&get, &origin, &headers(&["web.shop"])),
            Ok(Option::None)
        );
        assert_eq!(host(&get, &origin, &headers(&[])), Err(HostError::Missing));
        assert_eq!(
            super::host(Version::HTTP_10, &get, &origin, &headers(&[])),
            Ok(Option::None),
            "HTTP/1.0 has no Host"
        );
        assert_eq!(host(&get, &origin, &headers(&[""])), Ok(Option::None));
        assert_eq!(
            host(&get, &origin, &headers(&["web.shop", "admin.shop"])),
            Err(HostError::Repeated)
        );
        assert_eq!(
            host(&get, &origin, &headers(&["web.shop", "web.shop"])),
            Err(HostError::Repeated)
        );
        for bad in ["a, b", "web shop", "web.shop/x", "@web"] {
            assert_eq!(
                host(&get, &origin, &headers(&[bad])),
                Err(HostError::Invalid),
                "{bad}"
            );
        }
        // Absolute form: its authority is the host, whatever Host said.
        assert_eq!(
            host(&get, &absolute, &headers(&["other.example"])),
            Ok(Some(HeaderValue::from_static("api.example:8080")))
        );
        assert_eq!(
            host(&get, &absolute, &headers(&[])),
            Ok(Some(HeaderValue::from_static("api.example:8080")))
        );
        assert_eq!(
            host(&get, &absolute, &headers(&["api.example:8080"])),
            Ok(Option::None)
        );
        assert_eq!(
            host(&get, &absolute, &headers(&["a", "b"])),
            Err(HostError::Repeated)
        );
        // CONNECT's target is an authority of its own.
        let connect: Uri = "db:5432".parse().unwrap();
        assert_eq!(
            host(&Method::CONNECT, &connect, &headers(&["x"])),
            Ok(Option::None)
        );
        // HTTP/2 routes by :authority; its Host is not rewritten.
        assert_eq!(
            super::host(Version::HTTP_2, &get, &absolute, &headers(&[])),
            Ok(Option::None)
        );
    }

    #[test]
    fn every_bypass_form_normalizes_to_the_plain_path() {
        // The forms that slipped past a DENY on `/admin*`.
        for form in [
            "//admin/x",
            "/%61dmin/x",
            "/%61%64%6D%69%6e/x",
            "/./admin/x",
            "/x/../admin/x",
            "/%2e/admin/x",
            "/x/%2E%2E/admin/x",
            "\\admin\\x",
            "/admin\\x",
            "/x/..\\admin/x",
            "///admin//x",
        ] {
            assert_eq!(
                norm(form, MergeSlashes),
                "/admin/x",
                "{form} under MERGE_SLASHES"
            );
        }
    }

    #[test]
    fn base_does_not_merge_slashes_and_only_decode_decodes_slashes() {
        assert_eq!(norm("//admin/x", Base), "//admin/x");
        assert_eq!(norm("/a/../b", Base), "/b");
        assert_eq!(norm("\\da", Base), "/da");
        // Encoded slashes stay encoded (hex in upper case) unless asked.
        assert_eq!(norm("/a%2fb", MergeSlashes), "/a%2Fb");
        assert_eq!(norm("/a%5cb", MergeSlashes), "/a%5Cb");
        assert_eq!(norm("/a%2fb", DecodeAndMergeSlashes), "/a/b");
        assert_eq!(norm("/%2F%2fadmin%5Cx", DecodeAndMergeSlashes), "/admin/x");
        assert_eq!(norm("/x%2F..%2Fadmin", DecodeAndMergeSlashes), "/admin");
        // Decoding happens once: %252e is `%2e` literally, not a dot.
        assert_eq!(
            norm("/%252e%252e/admin", DecodeAndMergeSlashes),
            "/%252e%252e/admin"
        );
        // Reserved characters other than slashes keep their escapes.
        assert_eq!(norm("/a%3fb", DecodeAndMergeSlashes), "/a%3Fb");
        // NONE changes nothing, not even %00.
        assert_eq!(normalize_path("//a/%00/../b", None), Ok(Option::None));
    }

    #[test]
    fn dot_segments_follow_rfc_3986() {
        let cases = [
            ("/", "/"),
            ("/a/b/..", "/a/"),
            ("/a/.", "/a/"),
            ("/a/./b", "/a/b"),
            ("/..", "/"),
            ("/../../x", "/x"),
            ("/a/b/../../../c", "/c"),
            ("/a/..b/.c", "/a/..b/.c"),
            ("/a//b/../c", "/a//c"),
        ];
        for (path, want) in cases {
            assert_eq!(norm(path, Base), want, "{path}");
        }
        assert_eq!(norm("/a//b/../c", MergeSlashes), "/a/c");
    }

    #[test]
    fn a_normal_path_is_left_alone_and_nul_is_refused() {
        for p in ["/", "/api/v1/items", "/a.b/c.d", "/a-b_c~d", "*"] {
            assert_eq!(
                normalize_path(p, DecodeAndMergeSlashes),
                Ok(Option::None),
                "{p}"
            );
        }
        for mode in [Base, MergeSlashes, DecodeAndMergeSlashes] {
            assert_eq!(normalize_path("/a/%00/b", mode), Err(PathError::Nul));
        }
        // A `%` not followed by two hex digits is kept as it is.
        assert_eq!(norm("/100%/x%zz", MergeSlashes), "/100%/x%zz");
    }

    #[test]
    fn a_lone_percent_never_joins_what_decoding_puts_after_it() {
        // Found by the fuzz target `normalize_path`: kept, `%6` and the
        // decoded `1` made `/%61dmin`, past a rule on `/admin`, and the
        // app reads `/admin`.
        for mode in [Base, MergeSlashes, DecodeAndMergeSlashes] {
            for form in ["/%6%31dmin", "/%%36%31dmin", "/x%%41%42", "/a%2%46"] {
                assert_eq!(
                    normalize_path(form, mode),
                    Err(PathError::JoinedEscape),
                    "{form} under {mode:?}"
                );
            }
            // A lone `%` that stays lone is kept; an escape that decodes
            // to a non-hex character next to it changes nothing.
            assert_eq!(norm("/%6%7E", mode), "/%6~");
            assert_eq!(norm("/50%/%61", mode), "/50%/a");
        }
        assert_eq!(normalize_path("/%6%31dmin", None), Ok(Option::None));
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    http::HeaderValue::from_str(v).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn only_allowed_upgrades_pass() {
        let s = HttpSettings::default();
        let up = |proto: &str| {
            upgrade(
                &s,
                Version::HTTP_11,
                &Method::GET,
                &headers(&[("connection", "Upgrade"), ("upgrade", proto)]),
            )
        };
        assert_eq!(up("websocket"), UpgradeVerdict::Pass);
        assert_eq!(up("WebSocket"), UpgradeVerdict::Pass);
        assert_eq!(up("h2c"), UpgradeVerdict::StripH2c);
        assert_eq!(
            up("anything-goes"),
            UpgradeVerdict::Refuse("anything-goes".into())
        );
        // CONNECT only when listed.
        let connect =
            |s: &HttpSettings| upgrade(s, Version::HTTP_11, &Method::CONNECT, &HeaderMap::new());
        assert_eq!(connect(&s), UpgradeVerdict::Refuse("CONNECT".into()));
        let with_connect = HttpSettings {
            upgrades: vec!["websocket".into(), "connect".into()],
            ..Default::default()
        };
        assert_eq!(connect(&with_connect), UpgradeVerdict::Pass);
        // An Upgrade header without `Connection: upgrade` is no upgrade.
        assert_eq!(
            upgrade(
                &s,
                Version::HTTP_11,
                &Method::GET,
                &headers(&[("upgrade", "anything-goes")])
            ),
            UpgradeVerdict::Pass
        );
    }

    #[test]
    fn an_h2c_upgrade_loses_its_upgrade_headers_only() {
        let mut h = headers(&[
            ("connection", "Upgrade, HTTP2-Settings, x-keep"),
            ("upgrade", "h2c"),
            ("http2-settings", "AAMAAABkAAQAAP__"),
            ("x-keep", "1"),
        ]);
        strip_h2c(&mut h);
        assert!(h.get("upgrade").is_none());
        assert!(h.get("http2-settings").is_none());
        assert_eq!(h["connection"], "x-keep");
        assert_eq!(h["x-keep"], "1");
    }

    /// The innermost service of a test stack: notes the URI it was given.
    #[derive(Clone, Default)]
    struct Capture(Arc<std::sync::Mutex<Option<Uri>>>);

    impl Service<Req> for Capture {
        always_ready!();

        fn call(&mut self, req: Req) -> Fut {
            *self.0.lock().unwrap() = Some(req.uri().clone());
            Box::pin(async { Ok(crate::svc::Rsp::new(crate::svc::full(""))) })
        }
    }

    #[tokio::test]
    async fn passthrough_keeps_its_paths_and_routed_traffic_is_normalized() {
        let cfg =
            Config::try_from(outrigger_api::Snapshot::from_yaml("version: '1'").unwrap()).unwrap();
        let config = Arc::new(ArcSwap::from_pointee(cfg));
        let request = || {
            http::Request::get("http://bucket.example//a/./b%7e")
                .body(crate::svc::full(""))
                .unwrap()
        };
        let seen = Capture::default();
        let mut routed = Admit::new(seen.clone(), config.clone());
        routed.call(request()).await.unwrap();
        assert_eq!(seen.0.lock().unwrap().as_ref().unwrap().path(), "/a/b~");
        let mut passthrough = Admit::upgrades_only(seen.clone(), config);
        passthrough.call(request()).await.unwrap();
        assert_eq!(
            seen.0.lock().unwrap().as_ref().unwrap().path(),
            "//a/./b%7e",
            "a destination the mesh does not know gets its path as sent"
        );
    }

    #[test]
    fn the_query_survives_a_path_rewrite() {
        let mut uri: Uri = "http://svc.ns:80//a/../b?x=%2e%2e&y=1".parse().unwrap();
        let p = normalize_path(uri.path(), MergeSlashes).unwrap().unwrap();
        set_path(&mut uri, &p).unwrap();
        assert_eq!(uri.to_string(), "http://svc.ns:80/b?x=%2e%2e&y=1");
    }
}
