//! Outlier detection for one endpoint (Istio `outlierDetection`, Envoy's
//! consecutive-errors ejection): a small state machine, driven by request
//! outcomes and the clock, that says whether the endpoint may be picked.
//!
//! ```text
//! Healthy ──N consecutive errors──▶ Ejected(until = now + base × times)
//!    ▲                                  │ time passes
//!    │ trial succeeds                   ▼
//!    └──────────────────────────── Trial (one request allowed)
//!                                       │ trial fails
//!                                       └──▶ Ejected(times + 1)
//! ```
//!
//! `times` (the ejection multiplier) decays by one per `interval` the
//! endpoint stays healthy.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tower::Service;

use super::balance::Chosen;
use crate::http::stack::{always_ready, Fut, HttpService, Req};
use crate::metrics::{Metrics, ServiceLabel};

/// The policy, from `trafficPolicy.outlierDetection`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutlierPolicy {
    pub consecutive_5xx: u32,
    pub consecutive_gateway: u32,
    pub interval: Duration,
    pub base_ejection: Duration,
    pub max_ejection_percent: u32,
}

impl From<&outrigger_api::policy::OutlierDetection> for OutlierPolicy {
    fn from(o: &outrigger_api::policy::OutlierDetection) -> Self {
        Self {
            consecutive_5xx: o.consecutive_5xx_errors,
            consecutive_gateway: o.consecutive_gateway_errors,
            interval: o.interval.get(),
            base_ejection: o.base_ejection_time.get(),
            max_ejection_percent: o.max_ejection_percent,
        }
    }
}

impl OutlierPolicy {
    /// Most endpoints of a service of `n` that may be ejected at once: the
    /// percentage rounded down, but at least one when the percentage is above 0.
    pub fn max_ejected(&self, n: usize) -> usize {
        if self.max_ejection_percent == 0 {
            return 0;
        }
        (n * self.max_ejection_percent as usize / 100).max(1)
    }
}

/// What one request to the endpoint came to, as outlier detection sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Any answer below 500.
    Success,
    /// A 5xx answer.
    Status(u16),
    /// Connect failure, reset, timeout: counts as a gateway error and a 5xx.
    LocalFailure,
}

impl Outcome {
    fn is_5xx(self) -> bool {
        matches!(self, Outcome::Status(_) | Outcome::LocalFailure)
    }

    fn is_gateway(self) -> bool {
        matches!(self, Outcome::Status(502..=504) | Outcome::LocalFailure)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Availability {
    Available,
    /// Ejected; the next request may be the trial (see [`Outlier::begin_trial`]).
    TrialDue,
    Ejected,
}

/// What an outcome changed, for the metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    None,
    /// The endpoint was ejected (first time or after a failed trial).
    Ejected {
        until: Instant,
    },
    /// A failed trial: ejected again for longer.
    Reejected {
        until: Instant,
    },
    /// A trial succeeded: the endpoint is back.
    Recovered,
}

#[derive(Clone, Debug)]
pub struct Outlier {
    consecutive_5xx: u32,
    consecutive_gateway: u32,
    state: State,
    /// The ejection multiplier.
    times: u32,
    last_decay: Instant,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Healthy,
    Ejected {
        until: Instant,
    },
    /// The trial request is in flight.
    Trial,
}

impl Outlier {
    pub fn new(now: Instant) -> Self {
        Self {
            consecutive_5xx: 0,
            consecutive_gateway: 0,
            state: State::Healthy,
            times: 0,
            last_decay: now,
        }
    }

    pub fn is_ejected(&self) -> bool {
        self.state != State::Healthy
    }

    pub fn availability(&self, now: Instant) -> Availability {
        match self.state {
            State::Healthy => Availability::Available,
            State::Ejected { until } if now >= until => Availability::TrialDue,
            State::Ejected { .. } | State::Trial => Availability::Ejected,
        }
    }

    /// Claims the one trial request; false if it is not due or already taken.
    pub fn begin_trial(&mut self, now: Instant) -> bool {
        if self.availability(now) == Availability::TrialDue {
            self.state = State::Trial;
            true
        } else {
            false
        }
    }

    /// The trial request ended without an outcome (the client went away):
    /// the next request may try again.
    pub fn abandon_trial(&mut self, now: Instant) {
        if self.state == State::Trial {
            self.state = State::Ejected { until: now };
        }
    }

    /// Records one outcome. `may_eject` is asked only when this outcome
    /// would eject a healthy endpoint (the service-wide cap).
    pub fn observe(
        &mut self,
        outcome: Outcome,
        policy: &OutlierPolicy,
        now: Instant,
        may_eject: impl FnOnce() -> bool,
    ) -> Transition {
        match self.state {
            State::Trial => {
                if outcome == Outcome::Success {
                    self.state = State::Healthy;
                    self.consecutive_5xx = 0;
                    self.consecutive_gateway = 0;
                    self.last_decay = now;
                    Transition::Recovered
                } else {
                    self.times = self.times.saturating_add(1);
                    let until = now + policy.base_ejection * self.times;
                    self.state = State::Ejected { until };
                    Transition::Reejected { until }
                }
            }
            // Answers to requests sent before the ejection change nothing.
            State::Ejected { .. } => Transition::None,
            State::Healthy => {
                self.decay(policy, now);
                if outcome.is_5xx() {
                    self.consecutive_5xx += 1;
                } else {
                    self.consecutive_5xx = 0;
                }
                if outcome.is_gateway() {
                    self.consecutive_gateway += 1;
                } else {
                    self.consecutive_gateway = 0;
                }
                let tripped = (policy.consecutive_5xx > 0
                    && self.consecutive_5xx >= policy.consecutive_5xx)
                    || (policy.consecutive_gateway > 0
                        && self.consecutive_gateway >= policy.consecutive_gateway);
                if tripped && may_eject() {
                    self.times = self.times.saturating_add(1);
                    self.consecutive_5xx = 0;
                    self.consecutive_gateway = 0;
                    let until = now + policy.base_ejection * self.times;
                    self.state = State::Ejected { until };
                    Transition::Ejected { until }
                } else {
                    Transition::None
                }
            }
        }
    }

    /// One step down of the multiplier per healthy `interval`.
    fn decay(&mut self, policy: &OutlierPolicy, now: Instant) {
        if policy.interval.is_zero() {
            return;
        }
        let steps =
            now.saturating_duration_since(self.last_decay).as_nanos() / policy.interval.as_nanos();
        if steps > 0 {
            self.times = self
                .times
                .saturating_sub(steps.min(u32::MAX as u128) as u32);
            self.last_decay = now;
        }
    }
}

/// The outlier layer: feeds every try's outcome to its endpoint's detector
/// and keeps the ejection metrics.
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
            if let Ok(mut o) = c.stats().outlier.lock() {
                o.abandon_trial(Instant::now());
            }
        }
    }
}

impl<S: HttpService> Service<Req> for RecordOutcome<S> {
    always_ready!();

    fn call(&mut self, req: Req) -> Fut {
        let chosen = req.extensions().get::<Chosen>().cloned();
        let Some((chosen, policy)) = chosen.and_then(|c| c.service.outlier.clone().map(|p| (c, p)))
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
                observe(&chosen, &policy, outcome, &metrics);
            }
            result
        })
    }
}

fn observe(chosen: &Chosen, policy: &OutlierPolicy, outcome: Outcome, metrics: &Metrics) {
    let svc = &chosen.service;
    let stats = chosen.stats();
    let now = Instant::now();
    let may_eject = || {
        let ejected = svc
            .endpoints
            .iter()
            .filter(|e| e.stats.ejected.load(Ordering::Relaxed))
            .count();
        ejected < policy.max_ejected(svc.endpoints.len())
    };
    let transition = stats
        .outlier
        .lock()
        .expect("outlier lock")
        .observe(outcome, policy, now, may_eject);
    let label = || ServiceLabel {
        destination_service: svc.label.clone(),
    };
    let addr = svc.endpoints[chosen.index].addr;
    match transition {
        Transition::None => {}
        Transition::Ejected { until } => {
            stats.ejected.store(true, Ordering::Relaxed);
            metrics.ejections.get_or_create(&label()).inc();
            metrics.ejected.get_or_create(&label()).inc();
            tracing::info!(service = %svc.label, endpoint = %addr, for_ms = until.saturating_duration_since(now).as_millis() as u64, "endpoint ejected by outlier detection");
        }
        Transition::Reejected { until } => {
            metrics.ejections.get_or_create(&label()).inc();
            tracing::info!(service = %svc.label, endpoint = %addr, for_ms = until.saturating_duration_since(now).as_millis() as u64, "trial request failed; endpoint ejected again");
        }
        Transition::Recovered => {
            stats.ejected.store(false, Ordering::Relaxed);
            metrics.ejected.get_or_create(&label()).dec();
            tracing::info!(service = %svc.label, endpoint = %addr, "trial request succeeded; endpoint back in rotation");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> OutlierPolicy {
        OutlierPolicy {
            consecutive_5xx: 3,
            consecutive_gateway: 0,
            interval: Duration::from_secs(10),
            base_ejection: Duration::from_secs(30),
            max_ejection_percent: 50,
        }
    }

    fn fail(o: &mut Outlier, n: u32) -> Transition {
        let mut last = Transition::None;
        for _ in 0..n {
            last = o.observe(Outcome::Status(500), &policy(), Instant::now(), || true);
        }
        last
    }

    #[tokio::test(start_paused = true)]
    async fn consecutive_5xx_eject_for_the_base_time() {
        let mut o = Outlier::new(Instant::now());
        assert_eq!(fail(&mut o, 2), Transition::None);
        let t0 = Instant::now();
        assert_eq!(
            fail(&mut o, 1),
            Transition::Ejected {
                until: t0 + Duration::from_secs(30)
            }
        );
        assert_eq!(o.availability(Instant::now()), Availability::Ejected);
        tokio::time::advance(Duration::from_secs(29)).await;
        assert_eq!(o.availability(Instant::now()), Availability::Ejected);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(o.availability(Instant::now()), Availability::TrialDue);
    }

    #[tokio::test(start_paused = true)]
    async fn a_success_in_between_resets_the_count() {
        let mut o = Outlier::new(Instant::now());
        fail(&mut o, 2);
        o.observe(Outcome::Success, &policy(), Instant::now(), || true);
        assert_eq!(fail(&mut o, 2), Transition::None);
        assert!(!o.is_ejected());
    }

    #[tokio::test(start_paused = true)]
    async fn one_trial_request_decides_recovery() {
        let mut o = Outlier::new(Instant::now());
        fail(&mut o, 3);
        tokio::time::advance(Duration::from_secs(30)).await;
        let now = Instant::now();
        assert!(o.begin_trial(now));
        assert!(!o.begin_trial(now), "only one trial at a time");
        assert_eq!(o.availability(now), Availability::Ejected);
        assert_eq!(
            o.observe(Outcome::Success, &policy(), now, || unreachable!()),
            Transition::Recovered
        );
        assert_eq!(o.availability(now), Availability::Available);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_trial_ejects_for_longer_each_time() {
        let mut o = Outlier::new(Instant::now());
        fail(&mut o, 3);
        tokio::time::advance(Duration::from_secs(30)).await;
        assert!(o.begin_trial(Instant::now()));
        let now = Instant::now();
        assert_eq!(
            o.observe(Outcome::LocalFailure, &policy(), now, || unreachable!()),
            Transition::Reejected {
                until: now + Duration::from_secs(60)
            }
        );
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(o.begin_trial(Instant::now()));
        let now = Instant::now();
        assert_eq!(
            o.observe(Outcome::Status(503), &policy(), now, || true),
            Transition::Reejected {
                until: now + Duration::from_secs(90)
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_multiplier_decays_while_healthy() {
        let mut o = Outlier::new(Instant::now());
        fail(&mut o, 3);
        tokio::time::advance(Duration::from_secs(30)).await;
        assert!(o.begin_trial(Instant::now()));
        o.observe(Outcome::Status(500), &policy(), Instant::now(), || true); // times = 2
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(o.begin_trial(Instant::now()));
        o.observe(Outcome::Success, &policy(), Instant::now(), || true);
        // Healthy for 10 s: the multiplier drops from 2 to 1.
        tokio::time::advance(Duration::from_secs(10)).await;
        let now = Instant::now();
        fail(&mut o, 2);
        assert_eq!(
            fail(&mut o, 1),
            Transition::Ejected {
                until: now + Duration::from_secs(60)
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_service_cap_can_refuse_an_ejection() {
        let mut o = Outlier::new(Instant::now());
        for _ in 0..5 {
            assert_eq!(
                o.observe(Outcome::Status(500), &policy(), Instant::now(), || false),
                Transition::None
            );
        }
        assert!(!o.is_ejected());
    }

    #[tokio::test(start_paused = true)]
    async fn gateway_errors_count_only_502_to_504_and_local_failures() {
        let p = OutlierPolicy {
            consecutive_5xx: 0,
            consecutive_gateway: 2,
            ..policy()
        };
        let mut o = Outlier::new(Instant::now());
        let now = Instant::now();
        o.observe(Outcome::Status(503), &p, now, || true);
        o.observe(Outcome::Status(500), &p, now, || true);
        assert_eq!(
            o.observe(Outcome::Status(504), &p, now, || true),
            Transition::None
        );
        assert!(matches!(
            o.observe(Outcome::LocalFailure, &p, now, || true),
            Transition::Ejected { .. }
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn an_abandoned_trial_can_be_retried() {
        let mut o = Outlier::new(Instant::now());
        fail(&mut o, 3);
        tokio::time::advance(Duration::from_secs(30)).await;
        assert!(o.begin_trial(Instant::now()));
        o.abandon_trial(Instant::now());
        assert!(o.begin_trial(Instant::now()));
    }

    #[test]
    fn max_ejected_rounds_down_but_allows_one() {
        let p = policy();
        assert_eq!(p.max_ejected(1), 1);
        assert_eq!(p.max_ejected(3), 1);
        assert_eq!(p.max_ejected(4), 2);
        let ten = OutlierPolicy {
            max_ejection_percent: 10,
            ..policy()
        };
        assert_eq!(ten.max_ejected(5), 1);
        assert_eq!(ten.max_ejected(30), 3);
        let none = OutlierPolicy {
            max_ejection_percent: 0,
            ..policy()
        };
        assert_eq!(none.max_ejected(30), 0);
    }
}
