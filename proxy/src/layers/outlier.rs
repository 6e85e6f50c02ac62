//! The outlier layer: feeds every try's outcome to its endpoint's
//! [`Detector`](outrigger_proxy_policy::outlier::Detector) (the ejection state
//! machine) and keeps the ejection metrics; a trial request that is
//! dropped unanswered is handed back for the next request.

use std::sync::Arc;

use tokio::time::Instant;
use tower::Service;

use crate::metrics::{Metrics, ServiceLabel};
use crate::svc::{always_ready, Fut, HttpService, Req};
use outrigger_proxy_policy::balance::Chosen;
use outrigger_proxy_policy::outlier::{Outcome, OutlierPolicy, Transition};

#[derive(Clone)]
pub struct RecordOutcome<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S> RecordOutcome<S> {
    pub fn new(inner: S, metrics: Arc<Metrics>) -> Self {
        Self { inner, metrics }
    }
}

/// Hands back an unfinished trial if the try is dropped (the client left,
/// or a timeout above gave up on it), so the next request can be the trial.
struct TrialGuard(Option<Chosen>);

impl Drop for TrialGuard {
    fn drop(&mut self) {
        if let Some(c) = self.0.take() {
            c.stats().outlier.abandon_trial(Instant::now());
        }
    }
}

impl<S: HttpService> Service<Req> for RecordOutcome<S> {
    always_ready!();

    fn call(&mut self, req: Req) -> Fut {
        let Some(chosen) = req
            .extensions()
            .get::<Chosen>()
            .filter(|c| c.trial || c.service.outlier.is_some())
            .cloned()
        else {
            return self.inner.call(req);
        };
        let metrics = self.metrics.clone();
        let guard = TrialGuard(chosen.trial.then(|| chosen.clone()));
        let fut = self.inner.call(req);
        Box::pin(async move {
            let mut guard = guard;
            let result = fut.await;
            let outcome = match &result {
                Ok(r) if r.status().is_server_error() => Some(Outcome::Status(r.status().as_u16())),
                Ok(_) => Some(Outcome::Success),
                Err(e) if e.kind.is_endpoint_failure() => Some(Outcome::LocalFailure),
                Err(_) => None,
            };
            if let Some(outcome) = outcome {
                guard.0 = None;
                observe(&chosen, outcome, &metrics);
            }
            result
        })
    }
}

fn observe(chosen: &Chosen, outcome: Outcome, metrics: &Metrics) {
    let svc = &chosen.service;
    let now = Instant::now();
    let may_eject = |policy: &OutlierPolicy| {
        let ejected = svc
            .endpoints
            .iter()
            .filter(|e| e.stats.outlier.is_ejected())
            .count();
        ejected < policy.max_ejected(svc.endpoints.len())
    };
    let label = || ServiceLabel {
        destination_service: svc.label.clone(),
    };
    let gauge = || metrics.ejected.get_or_create(&label()).clone();
    let transition = chosen
        .stats()
        .outlier
        .observe(outcome, now, may_eject, gauge);
    let addr = svc.endpoints[chosen.index].addr;
    match transition {
        Transition::None => {}
        Transition::Ejected { until } => {
            metrics.ejections.get_or_create(&label()).inc();
            tracing::info!(service = %svc.label, endpoint = %addr, for_ms = until.saturating_duration_since(now).as_millis() as u64, "endpoint ejected by outlier detection");
        }
        Transition::Reejected { until } => {
            metrics.ejections.get_or_create(&label()).inc();
            tracing::info!(service = %svc.label, endpoint = %addr, for_ms = until.saturating_duration_since(now).as_millis() as u64, "trial request failed; endpoint ejected again");
        }
        Transition::Recovered => {
            tracing::info!(service = %svc.label, endpoint = %addr, "trial request succeeded; endpoint back in rotation");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::testing::{config, request_to_endpoint_with, service_ref, Scripted, Step};
    use outrigger_proxy_policy::balance::{choose, Choice};
    use outrigger_proxy_policy::chance::Chance;
    use std::time::Duration;

    /// `web.shop` with `n` endpoints and outlier detection (one 5xx ejects
    /// for 30 s, any share of the endpoints).
    const EJECT_ON_ONE: &str = "trafficPolicy:\n  outlierDetection: { consecutive5xxErrors: 1, baseEjectionTime: 30s, maxEjectionPercent: 100 }";

    fn web(
        cfg: &outrigger_proxy_policy::config::Config,
    ) -> Arc<outrigger_proxy_policy::config::ServiceState> {
        cfg.service(&service_ref("web")).unwrap().clone()
    }

    /// The next config: `cfg`'s snapshot changed by `edit`.
    fn next(
        cfg: &outrigger_proxy_policy::config::Config,
        edit: impl FnOnce(&mut outrigger_api::Service),
    ) -> outrigger_proxy_policy::config::Config {
        let mut snapshot = (*cfg.snapshot).clone();
        edit(&mut snapshot.services[0]);
        outrigger_proxy_policy::config::Config::build(snapshot, Some(cfg)).unwrap()
    }

    fn ejected_gauge(metrics: &Metrics) -> i64 {
        metrics
            .ejected
            .get_or_create(&ServiceLabel {
                destination_service: "web.shop".into(),
            })
            .get()
    }

    /// Ejects endpoint 0 of `svc` through the outlier layer (a 503).
    async fn eject_through_the_layer(
        svc: &Arc<outrigger_proxy_policy::config::ServiceState>,
        metrics: &Arc<Metrics>,
    ) {
        let mut layer = RecordOutcome::new(Scripted::always(Step::Status(503)), metrics.clone());
        layer.call(request_to_endpoint_with(svc)).await.unwrap();
        assert!(svc.endpoints[0].stats.outlier.is_ejected());
    }

    fn picks(svc: &outrigger_proxy_policy::config::ServiceState) -> Choice {
        choose(svc, &svc.all, &[], Instant::now(), &Chance::seeded(1))
    }

    #[tokio::test(start_paused = true)]
    async fn deleting_the_rule_during_an_ejection_ends_it_and_the_rule_can_come_back() {
        let metrics = Arc::new(Metrics::new());
        let first = config(&[("web", 1, EJECT_ON_ONE)]);
        eject_through_the_layer(&web(&first), &metrics).await;
        assert_eq!(ejected_gauge(&metrics), 1);
        assert_eq!(picks(&web(&first)), Choice::AllEjected(1));

        // The same rule in the next config: the ejection stays (Envoy keeps
        // the state of endpoints that stay).
        let same = next(&first, |_| {});
        assert_eq!(picks(&web(&same)), Choice::AllEjected(1));

        let deleted = next(&same, |s| s.traffic_policy = None);
        let endpoint = Choice::Endpoint {
            index: 0,
            trial: false,
        };
        assert_eq!(picks(&web(&deleted)), endpoint);
        assert_eq!(ejected_gauge(&metrics), 0);
        // Long past the ejection time, nothing is stuck either.
        tokio::time::advance(Duration::from_secs(120)).await;
        assert_eq!(picks(&web(&deleted)), endpoint);

        // The rule comes back: the endpoint starts healthy under it, and
        // it still ejects.
        let back = next(&deleted, |s| {
            s.traffic_policy = first.snapshot.services[0].traffic_policy.clone()
        });
        assert_eq!(picks(&web(&back)), endpoint);
        eject_through_the_layer(&web(&back), &metrics).await;
        assert_eq!(ejected_gauge(&metrics), 1);

        // A changed rule resets it as well.
        let changed = next(&back, |s| {
            let tp = s.traffic_policy.as_mut().unwrap();
            tp.outlier_detection
                .as_mut()
                .unwrap()
                .consecutive_5xx_errors = 2;
        });
        assert_eq!(picks(&web(&changed)), endpoint);
        assert_eq!(ejected_gauge(&metrics), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn an_ejected_endpoint_that_leaves_is_no_longer_counted() {
        let metrics = Arc::new(Metrics::new());
        let first = config(&[("web", 2, EJECT_ON_ONE)]);
        let old = web(&first);
        eject_through_the_layer(&old, &metrics).await;
        assert_eq!(ejected_gauge(&metrics), 1);
        let gone = next(&first, |s| {
            s.endpoints.remove(0);
        });
        assert_eq!(web(&gone).endpoints.len(), 1);
        assert_eq!(ejected_gauge(&metrics), 0);
        // A request still on the old config that answers late changes
        // nothing.
        let mut layer = RecordOutcome::new(Scripted::always(Step::Status(503)), metrics.clone());
        layer.call(request_to_endpoint_with(&old)).await.unwrap();
        assert_eq!(ejected_gauge(&metrics), 0);
        // The endpoint comes back: healthy, with fresh state.
        let back = next(&gone, |s| *s = first.snapshot.services[0].clone());
        let svc = web(&back);
        assert!(svc.endpoints.iter().all(|e| !e.stats.outlier.is_ejected()));
        // A service that leaves takes its ejections with it.
        eject_through_the_layer(&svc, &metrics).await;
        assert_eq!(ejected_gauge(&metrics), 1);
        let mut empty = (*back.snapshot).clone();
        empty.services.clear();
        outrigger_proxy_policy::config::Config::build(empty, Some(&back)).unwrap();
        assert_eq!(ejected_gauge(&metrics), 0);
    }
}
