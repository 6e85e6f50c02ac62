//! Request and response header operations (Istio `headers`), and the URI
//! and authority rewrite (Istio `rewrite`), applied by the rewrite layer
//! (route-wide) and by the split layer (per destination).

use http::header::HOST;
use http::uri::{Authority, PathAndQuery};
use http::{HeaderMap, HeaderName, HeaderValue, Uri};

/// Set, add, remove: one side's header operations.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HeaderOps {
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
    remove: Vec<HeaderName>,
}

/// Both sides' operations.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HeaderRules {
    pub request: HeaderOps,
    pub response: HeaderOps,
}

impl From<&outrigger_api::policy::HeaderOperations> for HeaderOps {
    fn from(o: &outrigger_api::policy::HeaderOperations) -> Self {
        let pairs = |m: &std::collections::BTreeMap<String, String>| {
            m.iter()
                .map(|(k, v)| {
                    (
                        HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes())
                            .expect("validated header name"),
                        HeaderValue::from_str(v).expect("validated header value"),
                    )
                })
                .collect()
        };
        Self {
            set: pairs(&o.set),
            add: pairs(&o.add),
            remove: o
                .remove
                .iter()
                .map(|k| {
                    HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes())
                        .expect("validated header name")
                })
                .collect(),
        }
    }
}

impl From<&outrigger_api::policy::Headers> for HeaderRules {
    fn from(h: &outrigger_api::policy::Headers) -> Self {
        Self {
            request: h.request.as_ref().map(Into::into).unwrap_or_default(),
            response: h.response.as_ref().map(Into::into).unwrap_or_default(),
        }
    }
}

impl HeaderOps {
    /// Istio's order: set, then add, then remove.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for (k, v) in &self.set {
            headers.insert(k.clone(), v.clone());
        }
        for (k, v) in &self.add {
            headers.append(k.clone(), v.clone());
        }
        for k in &self.remove {
            headers.remove(k);
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UriRewrite {
    uri: Option<String>,
    authority: Option<Authority>,
}

impl From<&outrigger_api::policy::Rewrite> for UriRewrite {
    fn from(r: &outrigger_api::policy::Rewrite) -> Self {
        Self {
            uri: r.uri.clone(),
            authority: r
                .authority
                .as_ref()
                .and_then(|a| Authority::try_from(a.as_str()).ok()),
        }
    }
}

impl UriRewrite {
    /// Rewrites the path (the matched prefix only, when the route matched
    /// on one; the query is kept) and the authority (`:authority` and `Host`).
    pub fn apply(&self, uri: &mut Uri, headers: &mut HeaderMap, matched_prefix: Option<&str>) {
        let mut parts = uri.clone().into_parts();
        if let Some(new) = &self.uri {
            let path = uri.path();
            let rest = matched_prefix
                .and_then(|p| path.strip_prefix(p))
                .unwrap_or("");
            let mut pq = format!("{new}{rest}");
            if let Some(q) = uri.query() {
                pq.push('?');
                pq.push_str(q);
            }
            // A prefix rewrite of "/" on "/api" + "/x" must not yield "//x".
            if pq.starts_with("//") {
                pq.remove(0);
            }
            if let Ok(pq) = PathAndQuery::try_from(pq) {
                parts.path_and_query = Some(pq);
            }
        }
        if let Some(a) = &self.authority {
            if parts.authority.is_some() {
                parts.authority = Some(a.clone());
            }
            if let Ok(v) = HeaderValue::from_str(a.as_str()) {
                headers.insert(HOST, v);
            }
        }
        if let Ok(new) = Uri::from_parts(parts) {
            *uri = new;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::uri_rewrite as rewrite;

    fn rewritten(rw: &UriRewrite, uri: &str, prefix: Option<&str>) -> (String, Option<String>) {
        let mut u: Uri = uri.parse().unwrap();
        let mut h = HeaderMap::new();
        rw.apply(&mut u, &mut h, prefix);
        (
            u.to_string(),
            h.get(HOST).map(|v| v.to_str().unwrap().to_string()),
        )
    }

    #[test]
    fn a_prefix_match_rewrites_only_the_prefix() {
        let rw = rewrite(Some("/v2/reviews"), None);
        assert_eq!(
            rewritten(&rw, "/reviews/1?x=y", Some("/reviews")).0,
            "/v2/reviews/1?x=y"
        );
        assert_eq!(rewritten(&rw, "/anything", None).0, "/v2/reviews");
        let root = rewrite(Some("/"), None);
        assert_eq!(rewritten(&root, "/api/x", Some("/api")).0, "/x");
    }

    #[test]
    fn the_authority_is_rewritten_in_uri_and_host() {
        let rw = rewrite(None, Some("reviews.prod:9080"));
        assert_eq!(
            rewritten(&rw, "http://reviews/a", None),
            (
                "http://reviews.prod:9080/a".to_string(),
                Some("reviews.prod:9080".to_string())
            )
        );
        assert_eq!(
            rewritten(&rw, "/a", None),
            ("/a".to_string(), Some("reviews.prod:9080".to_string()))
        );
    }

    #[test]
    fn header_operations_set_then_add_then_remove() {
        let ops = HeaderOps::from(&outrigger_api::policy::HeaderOperations {
            set: [("X-A".to_string(), "1".to_string())].into(),
            add: [("x-b".to_string(), "2".to_string())].into(),
            remove: vec!["x-c".into()],
        });
        let mut h = HeaderMap::new();
        h.append("x-a", "0".parse().unwrap());
        h.append("x-a", "00".parse().unwrap());
        h.append("x-b", "1".parse().unwrap());
        h.append("x-c", "gone".parse().unwrap());
        ops.apply(&mut h);
        assert_eq!(h.get_all("x-a").iter().collect::<Vec<_>>(), ["1"]);
        assert_eq!(h.get_all("x-b").iter().collect::<Vec<_>>(), ["1", "2"]);
        assert!(!h.contains_key("x-c"));
    }
}
