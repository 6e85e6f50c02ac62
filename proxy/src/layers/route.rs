//! The route layer: finds the request's route in the config in force now
//! (so a new snapshot applies to the next request, even on an open
//! connection), answers a direct response itself, and hands the request on
//! with the route attached.

use std::sync::Arc;

use arc_swap::ArcSwap;
use outrigger_api::ServiceRef;
use tower::Service;

use crate::svc::{always_ready, ErrorKind, Fut, HttpService, ProxyError, Req, RouteName, Rsp};
use outrigger_proxy_policy::config::Config;
use outrigger_proxy_policy::route::{select, MatchedPrefix, RequestView};

#[derive(Clone)]
pub struct Router<S> {
    inner: S,
    config: Arc<ArcSwap<Config>>,
    target: Arc<ServiceRef>,
}

impl<S> Router<S> {
    pub fn new(inner: S, config: Arc<ArcSwap<Config>>, target: ServiceRef) -> Self {
        Self {
            inner,
            config,
            target: Arc::new(target),
        }
    }
}

impl<S: HttpService> Service<Req> for Router<S> {
    always_ready!();

    fn call(&mut self, mut req: Req) -> Fut {
        let cfg = self.config.load();
        let t = &self.target;
        let Some(routes) = cfg.routes(t) else {
            let e = ProxyError::new(
                ErrorKind::NoRoute,
                format!(
                    "service {}.{}:{} is no longer in the configuration",
                    t.name, t.namespace, t.port
                ),
            );
            return Box::pin(async move { Err(e) });
        };
        let view = RequestView {
            method: req.method(),
            uri: req.uri(),
            headers: req.headers(),
        };
        let Some((route, prefix)) = select(routes, &view) else {
            let e = ProxyError::new(
                ErrorKind::NoRoute,
                format!(
                    "no route of {}.{} matches {} {}",
                    t.name,
                    t.namespace,
                    req.method(),
                    req.uri().path()
                ),
            );
            return Box::pin(async move { Err(e) });
        };
        let name = RouteName {
            service: route.service.clone(),
            route: route.label.clone(),
        };
        if let Some((status, body)) = &route.direct {
            let mut resp = Rsp::new(crate::svc::full(body.clone()));
            *resp.status_mut() = *status;
            resp.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            resp.extensions_mut().insert(name);
            return Box::pin(async move { Ok(resp) });
        }
        req.extensions_mut().insert(route.clone());
        if let Some(p) = prefix {
            req.extensions_mut().insert(MatchedPrefix(p));
        }
        let fut = self.inner.call(req);
        Box::pin(async move {
            match fut.await {
                Ok(mut resp) => {
                    resp.extensions_mut().insert(name);
                    Ok(resp)
                }
                Err(mut e) => {
                    e.route = Some(Box::new(name));
                    Err(e)
                }
            }
        })
    }
}
