//! The balancer layer: chooses the endpoint of the request's backend
//! ([`outrigger_proxy_policy::balance::choose`]: P2C peak-EWMA and friends, skipping
//! ejected endpoints and those already tried), says where and how the try
//! is sent ([`Upstream`]), and feeds the try's latency back to the
//! endpoint's load (503 `UH` when nothing can be chosen).

use std::time::Duration;

use http::Version;
use outrigger_api::ServiceProtocol;
use tokio::time::Instant;
use tower::Service;

use crate::svc::{
    always_ready, ConnectWait, ErrorKind, Fut, HttpService, ProxyError, Req, Served, Upstream,
    UpstreamProto,
};
use outrigger_proxy_policy::balance::{choose, Choice, Chosen, InFlightGuard, FAILURE_PENALTY};
use outrigger_proxy_policy::chance::Chance;
use outrigger_proxy_policy::retry::TriedEndpoints;
use outrigger_proxy_policy::route::Backend;

#[derive(Clone)]
pub struct Balance<S> {
    inner: S,
    chance: Chance,
}

impl<S> Balance<S> {
    pub fn new(inner: S, chance: Chance) -> Self {
        Self { inner, chance }
    }
}

impl<S: HttpService> Service<Req> for Balance<S> {
    always_ready!();

    fn call(&mut self, mut req: Req) -> Fut {
        let Some(backend) = req.extensions().get::<Backend>().cloned() else {
            return self.inner.call(req);
        };
        let svc = &backend.service;
        let now = Instant::now();
        let avoid = req
            .extensions()
            .get::<TriedEndpoints>()
            .map(|t| t.0.as_slice())
            .unwrap_or_default();
        let (index, trial) = match choose(svc, &backend.endpoints, avoid, now, &self.chance) {
            Choice::Endpoint { index, trial } => (index, trial),
            Choice::Empty => {
                let e = ProxyError::new(
                    ErrorKind::NoHealthyUpstream,
                    format!("{} has no endpoints to send to", backend.describe()),
                );
                return Box::pin(async move { Err(e) });
            }
            Choice::AllEjected(n) => {
                let e = ProxyError::new(
                    ErrorKind::NoHealthyUpstream,
                    format!(
                        "all {n} endpoints of {} are ejected by outlier detection",
                        backend.describe()
                    ),
                );
                return Box::pin(async move { Err(e) });
            }
        };
        let ep = &svc.endpoints[index];
        // What the app speaks: declared by the service port, else what
        // the client spoke. A peer proxy is always reached over HTTP/2,
        // told when its app is to get HTTP/1.1.
        let app_h1 = match svc.protocol {
            ServiceProtocol::Http => true,
            ServiceProtocol::Http2 => false,
            ServiceProtocol::Detect | ServiceProtocol::Opaque => req.version() != Version::HTTP_2,
        };
        req.extensions_mut().insert(Upstream {
            addr: ep.addr,
            tls: ep.identity.clone(),
            proto: if ep.meshed || !app_h1 {
                UpstreamProto::Http2
            } else {
                UpstreamProto::Http1
            },
            mark_http1: ep.meshed && app_h1,
            keep_absolute: false,
            served: Served {
                addr: ep.addr,
                peer: ep.peer.clone(),
                service: svc.label.clone(),
                mtls: false,
            },
        });
        let stats = ep.stats.clone();
        req.extensions_mut().insert(Chosen {
            service: svc.clone(),
            index,
            trial,
        });
        // In flight from the moment of choice, so the next choice sees it.
        let in_flight = InFlightGuard::start(&stats);
        let start = Instant::now();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let _in_flight = in_flight;
            let result = fut.await;
            let rtt = match &result {
                // The client's doing says nothing about the endpoint.
                Err(e) if e.kind.is_client_fault() => None,
                Err(e) if e.kind.is_endpoint_failure() => {
                    Some(start.elapsed().max(FAILURE_PENALTY))
                }
                // Less the time spent opening a connection: that is the
                // cost of a connect, not of the endpoint's answers, and a
                // first answer that counted it would look slow for seconds.
                Ok(rsp) => Some(
                    start.elapsed().saturating_sub(
                        rsp.extensions()
                            .get::<ConnectWait>()
                            .map_or(Duration::ZERO, |w| w.0),
                    ),
                ),
                Err(_) => Some(start.elapsed()),
            };
            if let Some(rtt) = rtt {
                stats.load.observe(rtt, Instant::now());
            }
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::testing::{config, eject, service_ref, Scripted, Step};
    use outrigger_proxy_policy::config::Config;

    /// The error the balancer answers for route 0's first destination.
    async fn refusal(cfg: &Config) -> String {
        let route = cfg.routes(&service_ref("web")).unwrap()[0].clone();
        let mut req = crate::layers::testing::request_on_route(&route);
        req.extensions_mut().insert(route.backends[0].1.clone());
        let mut balance = Balance::new(Scripted::ok(), Chance::seeded(1));
        balance.call(req).await.unwrap_err().message
    }

    #[tokio::test(start_paused = true)]
    async fn no_healthy_upstream_names_the_subset() {
        let routed = |subset: &str| {
            format!(
                "subsets: [{{ name: v1, labels: {{ version: v1 }} }}, {{ name: v2, labels: {{ version: v2 }} }}, {{ name: v3, labels: {{ version: v3 }} }}]
http:
  - route: [{{ destination: {{ host: web, subset: {subset} }} }}]"
            )
        };
        // Endpoints 1 and 3 are v2.
        let cfg = config(&[("web", 4, &routed("v2"))]);
        let svc = cfg.service(&service_ref("web")).unwrap().clone();
        eject(&svc, 1);
        eject(&svc, 3);
        assert_eq!(
            refusal(&cfg).await,
            "all 2 endpoints of subset v2 of service web.shop are ejected by outlier detection"
        );
        let cfg = config(&[("web", 4, &routed("v3"))]);
        assert_eq!(
            refusal(&cfg).await,
            "subset v3 of service web.shop has no endpoints to send to"
        );
        // Without a subset, the service.
        let cfg = config(&[("web", 1, "")]);
        let svc = cfg.service(&service_ref("web")).unwrap().clone();
        eject(&svc, 0);
        assert_eq!(
            refusal(&cfg).await,
            "all 1 endpoints of service web.shop are ejected by outlier detection"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_latency_leaves_out_the_wait_for_a_new_connection() {
        let ms = Duration::from_millis;
        let cfg = config(&[("web", 1, "")]);
        let route = cfg.routes(&service_ref("web")).unwrap()[0].clone();
        let svc = cfg.service(&service_ref("web")).unwrap().clone();
        let mut balance = Balance::new(
            Scripted::new([Step::Connected(ms(40), ms(10), 200)]),
            Chance::seeded(1),
        );
        let mut req = crate::layers::testing::request_on_route(&route);
        req.extensions_mut().insert(route.backends[0].1.clone());
        balance.call(req).await.unwrap();
        let estimate = svc.endpoints[0].stats.load.estimate(Instant::now());
        assert_eq!(estimate, Some(ms(10).as_nanos() as f64));
    }
}
