//! Routes (Istio `VirtualService.http[]`): matching a request to the first
//! route of its service whose match blocks accept it ([`select`]), and
//! where each route sends its requests ([`Backend`]).

use std::sync::Arc;
use std::time::Duration;

use http::header::HOST;
use http::{HeaderMap, HeaderName, Method, Uri};
use outrigger_api::policy::{HttpMatch, HttpRoute, StringMatch};
use regex::Regex;

use crate::config::ServiceState;
use crate::fault::FaultPolicy;
use crate::rate_limit::TokenBucket;
use crate::retry::RetryPolicy;
use crate::rewrite::{HeaderRules, UriRewrite};
use crate::workload::Name;

/// Where a route sends a share of its requests: a service and the endpoints
/// of one subset (or all of them).
#[derive(Clone)]
pub struct Backend {
    pub service: Arc<ServiceState>,
    /// The subset the endpoints are, if the destination names one.
    pub subset: Option<Name>,
    pub endpoints: Arc<[usize]>,
    /// Header operations of this destination.
    pub headers: Option<Arc<HeaderRules>>,
}

impl Backend {
    /// Every endpoint of `service`, no header operations.
    pub fn whole(service: &Arc<ServiceState>) -> Self {
        Self {
            service: service.clone(),
            subset: None,
            endpoints: service.all.clone(),
            headers: None,
        }
    }

    /// What the endpoints are, for messages: `subset v1 of service
    /// web.shop`, or `service web.shop`.
    pub fn describe(&self) -> String {
        match &self.subset {
            Some(s) => format!("subset {s} of service {}", self.service.label),
            None => format!("service {}", self.service.label),
        }
    }
}

#[derive(Clone)]
pub struct Route {
    /// The `route` metric label: the route's name, or `route-<index>`.
    pub label: Name,
    /// The routed service (`destination_service` of the route metrics).
    pub service: Name,
    matches: Vec<Match>,
    pub backends: Vec<(u32, Backend)>,
    pub timeout: Option<Duration>,
    pub retry: RetryPolicy,
    pub fault: Option<FaultPolicy>,
    pub rewrite: Option<UriRewrite>,
    pub headers: Option<HeaderRules>,
    pub rate_limit: Option<Arc<TokenBucket>>,
    /// Answered by the proxy itself (`directResponse`): status and body.
    pub direct: Option<(http::StatusCode, bytes::Bytes)>,
    /// The routed service's retry budget, shared by all its routes.
    pub routed: Arc<ServiceState>,
}

impl Route {
    /// The route a service without routes gets: everything to its endpoints,
    /// default retries.
    pub fn default_to(backend: Backend, routed: &Arc<ServiceState>) -> Self {
        Self {
            label: Arc::from("default"),
            service: routed.label.clone(),
            matches: Vec::new(),
            backends: vec![(1, backend)],
            timeout: None,
            retry: RetryPolicy::default(),
            fault: None,
            rewrite: None,
            headers: None,
            rate_limit: None,
            direct: None,
            routed: routed.clone(),
        }
    }

    /// Builds a validated route (`index` names it when it has no name).
    pub fn build(
        index: usize,
        r: &HttpRoute,
        backends: Vec<(u32, Backend)>,
        routed: &Arc<ServiceState>,
    ) -> Self {
        Self {
            label: Arc::from(
                r.name
                    .clone()
                    .unwrap_or_else(|| format!("route-{index}"))
                    .as_str(),
            ),
            service: routed.label.clone(),
            matches: r.matches.iter().map(Match::from).collect(),
            backends,
            timeout: r.timeout.map(|t| t.get()).filter(|t| !t.is_zero()),
            retry: r
                .retries
                .as_ref()
                .map(RetryPolicy::from)
                .unwrap_or_default(),
            fault: r.fault.as_ref().map(FaultPolicy::from),
            rewrite: r.rewrite.as_ref().map(UriRewrite::from),
            headers: r.headers.as_ref().map(HeaderRules::from),
            rate_limit: r
                .local_rate_limit
                .as_ref()
                .map(|b| Arc::new(TokenBucket::from(b))),
            // Validated: a status from 200 to 599.
            direct: r.direct_response.as_ref().and_then(|d| {
                let status = http::StatusCode::from_u16(d.status).ok()?;
                let body = d
                    .body
                    .as_ref()
                    .map(|b| b.string.clone())
                    .unwrap_or_default();
                Some((status, bytes::Bytes::from(body)))
            }),
            routed: routed.clone(),
        }
    }

    /// Whether the request matches; with the matched URI prefix, if the
    /// winning block matched on one (for the prefix rewrite).
    fn matches(&self, req: &RequestView<'_>) -> Option<Option<String>> {
        if self.matches.is_empty() {
            return Some(None);
        }
        self.matches.iter().find_map(|m| m.matches(req))
    }
}

/// The matched URI prefix of the request's route (request extension), for
/// the rewrite layer.
#[derive(Clone, Debug)]
pub struct MatchedPrefix(pub String);

/// The parts of a request that routes look at.
pub struct RequestView<'a> {
    pub method: &'a Method,
    pub uri: &'a Uri,
    pub headers: &'a HeaderMap,
}

impl RequestView<'_> {
    /// `:authority` (HTTP/2, absolute-form) or `Host`.
    fn authority(&self) -> Option<&str> {
        self.uri
            .authority()
            .map(|a| a.as_str())
            .or_else(|| self.headers.get(HOST).and_then(|h| h.to_str().ok()))
    }
}

/// The first route that matches, with its matched URI prefix.
pub fn select<'r>(
    routes: &'r [Arc<Route>],
    req: &RequestView<'_>,
) -> Option<(&'r Arc<Route>, Option<String>)> {
    routes
        .iter()
        .find_map(|r| r.matches(req).map(|prefix| (r, prefix)))
}

/// One match block: every condition must hold.
#[derive(Clone)]
struct Match {
    uri: Option<StrMatch>,
    /// Istio's `ignoreUriCase`: an exact or prefix `uri` matches in any
    /// ASCII case (Envoy's `case_sensitive: false`; regexes unaffected).
    ignore_uri_case: bool,
    method: Option<StrMatch>,
    authority: Option<StrMatch>,
    /// `None`: the header need only be present.
    headers: Vec<(HeaderName, Option<StrMatch>)>,
}

#[derive(Clone)]
enum StrMatch {
    Exact(String),
    Prefix(String),
    Regex(Regex),
}

impl StrMatch {
    fn matches(&self, v: &str) -> bool {
        match self {
            StrMatch::Exact(e) => v == e,
            StrMatch::Prefix(p) => v.starts_with(p.as_str()),
            StrMatch::Regex(r) => r.is_match(v),
        }
    }
}

impl StrMatch {
    /// `None` for an empty match (presence only).
    fn compile(m: &StringMatch) -> Option<Self> {
        if let Some(e) = &m.exact {
            Some(StrMatch::Exact(e.clone()))
        } else if let Some(p) = &m.prefix {
            Some(StrMatch::Prefix(p.clone()))
        } else {
            m.regex.as_ref().map(|r| {
                StrMatch::Regex(
                    outrigger_api::compile_full_match(r).expect("validated regex compiles"),
                )
            })
        }
    }
}

impl From<&HttpMatch> for Match {
    fn from(m: &HttpMatch) -> Self {
        Self {
            uri: m.uri.as_ref().and_then(StrMatch::compile),
            ignore_uri_case: m.ignore_uri_case,
            method: m.method.as_ref().and_then(StrMatch::compile),
            authority: m.authority.as_ref().and_then(StrMatch::compile),
            headers: m
                .headers
                .iter()
                .map(|(name, sm)| {
                    (
                        HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
                            .expect("validated header name"),
                        StrMatch::compile(sm),
                    )
                })
                .collect(),
        }
    }
}

impl Match {
    fn matches(&self, req: &RequestView<'_>) -> Option<Option<String>> {
        if let Some(m) = &self.method {
            if !m.matches(req.method.as_str()) {
                return None;
            }
        }
        if let Some(m) = &self.authority {
            if !m.matches(req.authority()?) {
                return None;
            }
        }
        for (name, m) in &self.headers {
            let mut values = req.headers.get_all(name).iter().peekable();
            values.peek()?;
            if let Some(m) = m {
                if !values.any(|v| v.to_str().is_ok_and(|v| m.matches(v))) {
                    return None;
                }
            }
        }
        match &self.uri {
            None => Some(None),
            Some(m) => {
                let path = req.uri.path();
                match (m, self.ignore_uri_case) {
                    (StrMatch::Exact(e), true) => path.eq_ignore_ascii_case(e).then_some(None),
                    // The matched prefix as the request wrote it, so that a
                    // prefix rewrite replaces exactly what matched.
                    (StrMatch::Prefix(p), true) => path
                        .get(..p.len())
                        .filter(|head| head.eq_ignore_ascii_case(p))
                        .map(|head| Some(head.to_string())),
                    (StrMatch::Prefix(p), false) => m.matches(path).then(|| Some(p.clone())),
                    _ => m.matches(path).then_some(None),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use outrigger_api::ServiceRef;

    fn routes(yaml: &str) -> Vec<Arc<Route>> {
        let snap = outrigger_api::Snapshot::from_yaml(&format!(
            "version: '1'\nservices:\n  - name: web\n    namespace: shop\n    ports: [80]\n    http:\n{yaml}"
        ))
        .unwrap();
        let cfg = Config::try_from(snap).unwrap();
        cfg.routes(&ServiceRef {
            name: "web".into(),
            namespace: "shop".into(),
            port: 80,
        })
        .unwrap()
        .to_vec()
    }

    fn pick(
        routes: &[Arc<Route>],
        method: &str,
        uri: &str,
        headers: &[(&str, &str)],
    ) -> Option<String> {
        let method: Method = method.parse().unwrap();
        let uri: Uri = uri.parse().unwrap();
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        let view = RequestView {
            method: &method,
            uri: &uri,
            headers: &h,
        };
        select(routes, &view).map(|(r, _)| r.label.to_string())
    }

    const TABLE: &str = r#"
      - name: jason
        match: [{ headers: { end-user: { exact: jason } } }]
      - name: api-v2-get
        match: [{ uri: { prefix: /api/v2/ }, method: { exact: GET } }]
      - name: grpc-method
        match: [{ uri: { exact: /shop.Cart/Add } }]
      - name: by-regex-or-authority
        match:
          - uri: { regex: "/items/[0-9]+" }
          - authority: { prefix: "admin." }
      - name: has-debug
        match: [{ headers: { x-debug: {} } }]
      - name: header-prefix-and-regex
        match: [{ headers: { x-tier: { prefix: gold }, x-region: { regex: "eu-.*" } } }]
"#;

    #[test]
    fn the_first_matching_route_wins() {
        let r = routes(TABLE);
        assert_eq!(
            pick(&r, "GET", "/api/v2/x", &[("end-user", "jason")]).as_deref(),
            Some("jason")
        );
        assert_eq!(
            pick(&r, "GET", "/api/v2/x", &[("end-user", "bob")]).as_deref(),
            Some("api-v2-get")
        );
    }

    #[test]
    fn conditions_in_a_block_are_anded() {
        let r = routes(TABLE);
        assert_eq!(pick(&r, "POST", "/api/v2/x", &[]), None);
        assert_eq!(pick(&r, "GET", "/api/v1/x", &[]), None);
        assert_eq!(
            pick(
                &r,
                "GET",
                "http://x/",
                &[("x-tier", "gold-plus"), ("x-region", "eu-west")]
            )
            .as_deref(),
            Some("header-prefix-and-regex")
        );
        assert_eq!(
            pick(
                &r,
                "GET",
                "/",
                &[("x-tier", "gold"), ("x-region", "us-east")]
            ),
            None
        );
    }

    #[test]
    fn blocks_are_ored() {
        let r = routes(TABLE);
        assert_eq!(
            pick(&r, "GET", "/items/42", &[]).as_deref(),
            Some("by-regex-or-authority")
        );
        assert_eq!(
            pick(&r, "GET", "/items/42/x", &[]),
            None,
            "regex matches the whole path"
        );
        assert_eq!(
            pick(&r, "GET", "/", &[("host", "admin.shop")]).as_deref(),
            Some("by-regex-or-authority")
        );
        assert_eq!(
            pick(&r, "GET", "http://admin.shop/", &[]).as_deref(),
            Some("by-regex-or-authority"),
            "the :authority of HTTP/2 and absolute-form counts"
        );
    }

    #[test]
    fn grpc_methods_are_paths_and_presence_is_a_match() {
        let r = routes(TABLE);
        assert_eq!(
            pick(&r, "POST", "/shop.Cart/Add", &[]).as_deref(),
            Some("grpc-method")
        );
        assert_eq!(pick(&r, "POST", "/shop.Cart/Remove", &[]), None);
        assert_eq!(
            pick(&r, "GET", "/", &[("x-debug", "")]).as_deref(),
            Some("has-debug")
        );
    }

    #[test]
    fn header_names_match_in_any_case_and_any_value_counts() {
        let r = routes("      - name: h\n        match: [{ headers: { X-User: { exact: b } } }]\n");
        assert_eq!(
            pick(&r, "GET", "/", &[("x-user", "a"), ("x-user", "b")]).as_deref(),
            Some("h")
        );
        assert_eq!(pick(&r, "GET", "/", &[("x-user", "a")]), None);
    }

    #[test]
    fn ignore_uri_case_applies_to_exact_and_prefix_not_regex() {
        let r = routes(
            r#"
      - name: exact
        match: [{ uri: { exact: /Reviews/1 }, ignoreUriCase: true }]
      - name: prefix
        match: [{ uri: { prefix: /API/ }, ignoreUriCase: true }]
      - name: regex
        match: [{ uri: { regex: "/items/[a-z]+" }, ignoreUriCase: true }]
      - name: strict
        match: [{ uri: { prefix: /Strict } }]
"#,
        );
        assert_eq!(pick(&r, "GET", "/reviews/1", &[]).as_deref(), Some("exact"));
        assert_eq!(pick(&r, "GET", "/REVIEWS/1", &[]).as_deref(), Some("exact"));
        assert_eq!(pick(&r, "GET", "/reviews/12", &[]), None);
        assert_eq!(pick(&r, "GET", "/api/v1", &[]).as_deref(), Some("prefix"));
        assert_eq!(pick(&r, "GET", "/Api/", &[]).as_deref(), Some("prefix"));
        assert_eq!(pick(&r, "GET", "/ap", &[]), None);
        assert_eq!(pick(&r, "GET", "/items/abc", &[]).as_deref(), Some("regex"));
        assert_eq!(
            pick(&r, "GET", "/items/ABC", &[]),
            None,
            "a regex keeps its case (Envoy ignores case_sensitive for regexes)"
        );
        assert_eq!(
            pick(&r, "GET", "/strict", &[]),
            None,
            "case counts by default"
        );
        assert_eq!(pick(&r, "GET", "/Strict/x", &[]).as_deref(), Some("strict"));

        // The matched prefix is the request's own, so a rewrite can cut it.
        let view_uri: Uri = "/aPi/v1/x".parse().unwrap();
        let view = RequestView {
            method: &Method::GET,
            uri: &view_uri,
            headers: &HeaderMap::new(),
        };
        let (route, prefix) = select(&r, &view).unwrap();
        assert_eq!(&*route.label, "prefix");
        assert_eq!(prefix.as_deref(), Some("/aPi/"));
    }

    #[test]
    fn unnamed_routes_are_labelled_by_index_and_a_route_without_match_takes_all() {
        let r = routes("      - match: [{ uri: { exact: /a } }]\n      - {}\n");
        assert_eq!(pick(&r, "GET", "/a", &[]).as_deref(), Some("route-0"));
        assert_eq!(pick(&r, "DELETE", "/zzz", &[]).as_deref(), Some("route-1"));
    }
}
