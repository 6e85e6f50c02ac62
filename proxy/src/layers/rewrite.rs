//! The rewrite layer: the route's URI and authority rewrite and its
//! request header operations on the way in, its response header
//! operations on the way out.

use std::sync::Arc;

use tower::Service;

use crate::svc::{always_ready, Fut, HttpService, Req};
use outrigger_proxy_policy::route::{MatchedPrefix, Route};

/// Applies the route's rewrite and header operations to the request, and
/// its response header operations to the response.
#[derive(Clone)]
pub struct Rewrite<S> {
    inner: S,
}

impl<S> Rewrite<S> {
    pub fn new(inner: S) -> Self {
        Self { inner }
    }
}

impl<S: HttpService> Service<Req> for Rewrite<S> {
    always_ready!();

    fn call(&mut self, mut req: Req) -> Fut {
        let Some(route) = req.extensions().get::<Arc<Route>>().cloned() else {
            return self.inner.call(req);
        };
        if route.rewrite.is_none() && route.headers.is_none() {
            return self.inner.call(req);
        }
        if let Some(rw) = &route.rewrite {
            let prefix = req.extensions().get::<MatchedPrefix>().map(|p| p.0.clone());
            let (parts, body) = req.into_parts();
            let mut parts = parts;
            rw.apply(&mut parts.uri, &mut parts.headers, prefix.as_deref());
            req = Req::from_parts(parts, body);
        }
        if let Some(h) = &route.headers {
            h.request.apply(req.headers_mut());
        }
        let fut = self.inner.call(req);
        Box::pin(async move {
            let mut resp = fut.await?;
            if let Some(h) = &route.headers {
                h.response.apply(resp.headers_mut());
            }
            Ok(resp)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::testing::uri_rewrite as rewrite;
    use crate::layers::testing::{request_on_route, route_with, Scripted};
    use outrigger_proxy_policy::rewrite::HeaderRules;

    #[tokio::test]
    async fn the_layer_changes_the_request_and_the_response() {
        let upstream = Scripted::ok();
        let mut svc = Rewrite::new(upstream.clone());
        let route = route_with(|r| {
            r.rewrite = Some(rewrite(Some("/new"), None));
            r.headers = Some(HeaderRules::from(&outrigger_api::policy::Headers {
                request: Some(outrigger_api::policy::HeaderOperations {
                    set: [("x-req".to_string(), "yes".to_string())].into(),
                    ..Default::default()
                }),
                response: Some(outrigger_api::policy::HeaderOperations {
                    set: [("x-resp".to_string(), "yes".to_string())].into(),
                    ..Default::default()
                }),
            }));
        });
        let resp = svc.call(request_on_route(&route)).await.unwrap();
        assert_eq!(resp.headers()["x-resp"], "yes");
        let seen = upstream.seen();
        assert_eq!(seen[0].uri.path(), "/new");
        assert_eq!(seen[0].headers["x-req"], "yes");
    }
}
