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
//! endpoint stays healthy. A trial that has not answered within one base
//! ejection time lets the next request be a trial too: an ejection always
//! ends when its time is up, whatever happens to the trial.
//!
//! An endpoint's [`Detector`] holds the policy it is judged by with the
//! state machine: a new snapshot keeps both while the endpoint stays and
//! the policy does not change, and resets them otherwise (see
//! `Config::build`), so an ejection never outlives the rule that made it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;
use tokio::time::Instant;

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
    /// Ejections so far (a failed trial's included).
    ejections: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Healthy,
    Ejected {
        until: Instant,
    },
    /// The trial request is in flight; past `until` another may be tried.
    Trial {
        until: Instant,
    },
}

impl Outlier {
    pub fn new(now: Instant) -> Self {
        Self {
            consecutive_5xx: 0,
            consecutive_gateway: 0,
            state: State::Healthy,
            times: 0,
            last_decay: now,
            ejections: 0,
        }
    }

    pub fn is_ejected(&self) -> bool {
        self.state != State::Healthy
    }

    pub fn availability(&self, now: Instant) -> Availability {
        match self.state {
            State::Healthy => Availability::Available,
            State::Ejected { until } | State::Trial { until } if now >= until => {
                Availability::TrialDue
            }
            State::Ejected { .. } | State::Trial { .. } => Availability::Ejected,
        }
    }

    /// Claims the one trial request; false if it is not due or already
    /// taken. A trial unanswered for `policy.base_ejection` gives way to
    /// another.
    pub fn begin_trial(&mut self, policy: &OutlierPolicy, now: Instant) -> bool {
        if self.availability(now) == Availability::TrialDue {
            self.state = State::Trial {
                until: now + policy.base_ejection,
            };
            true
        } else {
            false
        }
    }

    /// The trial request ended without an outcome (the client went away):
    /// the next request may try again.
    pub fn abandon_trial(&mut self, now: Instant) {
        if matches!(self.state, State::Trial { .. }) {
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
            State::Trial { .. } => {
                if outcome == Outcome::Success {
                    self.state = State::Healthy;
                    self.consecutive_5xx = 0;
                    self.consecutive_gateway = 0;
                    self.last_decay = now;
                    Transition::Recovered
                } else {
                    self.times = self.times.saturating_add(1);
                    self.ejections = self.ejections.saturating_add(1);
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
                    self.ejections = self.ejections.saturating_add(1);
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

    /// Where the endpoint stands at `now`, for the admin port.
    pub fn status(&self, now: Instant) -> OutlierStatus {
        let phase = match self.state {
            State::Healthy => Phase::Healthy,
            State::Ejected { until } if now < until => Phase::Ejected { until },
            State::Trial { until } if now < until => Phase::Trial,
            State::Ejected { .. } | State::Trial { .. } => Phase::TrialDue,
        };
        OutlierStatus {
            phase,
            ejections: self.ejections,
            consecutive_5xx: self.consecutive_5xx,
            consecutive_gateway: self.consecutive_gateway,
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

/// Where one endpoint stands with outlier detection (see [`Outlier::status`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutlierStatus {
    pub phase: Phase,
    /// Ejections so far, a failed trial's included.
    pub ejections: u32,
    /// Consecutive errors counted towards the next ejection.
    pub consecutive_5xx: u32,
    pub consecutive_gateway: u32,
}

/// The state machine's state at one instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Healthy,
    /// Ejected until then.
    Ejected {
        until: Instant,
    },
    /// The ejection is over; the next request may be the trial.
    TrialDue,
    /// The trial request is in flight.
    Trial,
}

/// One endpoint's outlier detection under the config in force: the policy
/// it is judged by, its state machine, and the gauge its ejection is
/// counted in while it lasts (`outrigger_outlier_ejected_endpoints`).
#[derive(Debug)]
pub struct Detector {
    judged: Mutex<Judged>,
    /// Set while ejected, so that the balancer's common path takes no lock.
    ejected: AtomicBool,
}

#[derive(Debug)]
struct Judged {
    /// `None`: no outlier detection; outcomes change nothing.
    policy: Option<OutlierPolicy>,
    outlier: Outlier,
    /// Where this endpoint's ejection is counted, while it is ejected.
    counted: Option<Gauge>,
}

impl Judged {
    /// Back to healthy under `policy`, the ejection (if any) uncounted.
    fn reset(&mut self, policy: Option<OutlierPolicy>, ejected: &AtomicBool, now: Instant) {
        if let Some(g) = self.counted.take() {
            g.dec();
        }
        ejected.store(false, Ordering::Relaxed);
        self.policy = policy;
        self.outlier = Outlier::new(now);
    }
}

impl Detector {
    pub fn new(policy: Option<OutlierPolicy>, now: Instant) -> Self {
        Self {
            judged: Mutex::new(Judged {
                policy,
                outlier: Outlier::new(now),
                counted: None,
            }),
            ejected: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Judged> {
        self.judged.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Ejected right now (the trial, if one is in flight, included).
    pub fn is_ejected(&self) -> bool {
        self.ejected.load(Ordering::Relaxed)
    }

    pub fn availability(&self, now: Instant) -> Availability {
        if !self.is_ejected() {
            return Availability::Available;
        }
        self.lock().outlier.availability(now)
    }

    /// See [`Outlier::begin_trial`].
    pub fn begin_trial(&self, now: Instant) -> bool {
        let mut j = self.lock();
        let Judged {
            policy, outlier, ..
        } = &mut *j;
        match policy {
            Some(p) => outlier.begin_trial(p, now),
            None => false,
        }
    }

    /// See [`Outlier::status`]; `None` without outlier detection.
    pub fn status(&self, now: Instant) -> Option<OutlierStatus> {
        let j = self.lock();
        j.policy.as_ref().map(|_| j.outlier.status(now))
    }

    /// See [`Outlier::abandon_trial`].
    pub fn abandon_trial(&self, now: Instant) {
        self.lock().outlier.abandon_trial(now);
    }

    /// The policy of a new config for this endpoint: kept as it is under
    /// the same policy; under another (or none), back to healthy with its
    /// ejection, if any, uncounted. Returns whether it was reset.
    pub fn carry(&self, policy: Option<&OutlierPolicy>, now: Instant) -> bool {
        let mut j = self.lock();
        if j.policy.as_ref() == policy {
            return false;
        }
        j.reset(policy.cloned(), &self.ejected, now);
        true
    }

    /// The endpoint left the config: nothing judges it any more, and its
    /// ejection, if any, is no longer counted.
    pub fn retire(&self, now: Instant) {
        self.lock().reset(None, &self.ejected, now);
    }

    /// Feeds one outcome to the state machine under this endpoint's policy
    /// (nothing happens without one). `may_eject` is the service-wide cap;
    /// `gauge` is where an ejection is counted.
    pub fn observe(
        &self,
        outcome: Outcome,
        now: Instant,
        may_eject: impl FnOnce(&OutlierPolicy) -> bool,
        gauge: impl FnOnce() -> Gauge,
    ) -> Transition {
        let mut j = self.lock();
        let Judged {
            policy,
            outlier,
            counted,
        } = &mut *j;
        let Some(policy) = policy.as_ref() else {
            return Transition::None;
        };
        let transition = outlier.observe(outcome, policy, now, || may_eject(policy));
        match transition {
            Transition::Ejected { .. } => {
                self.ejected.store(true, Ordering::Relaxed);
                let g = gauge();
                g.inc();
                *counted = Some(g);
            }
            Transition::Recovered => {
                self.ejected.store(false, Ordering::Relaxed);
                if let Some(g) = counted.take() {
                    g.dec();
                }
            }
            Transition::Reejected { .. } | Transition::None => {}
        }
        transition
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
    async fn the_status_tells_the_phase_the_count_and_until_when() {
        let mut o = Outlier::new(Instant::now());
        fail(&mut o, 2);
        let status = o.status(Instant::now());
        assert_eq!(
            (status.phase, status.ejections, status.consecutive_5xx),
            (Phase::Healthy, 0, 2)
        );
        let t0 = Instant::now();
        fail(&mut o, 1);
        let until = t0 + Duration::from_secs(30);
        assert_eq!(
            o.status(Instant::now()),
            OutlierStatus {
                phase: Phase::Ejected { until },
                ejections: 1,
                consecutive_5xx: 0,
                consecutive_gateway: 0,
            }
        );
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(o.status(Instant::now()).phase, Phase::TrialDue);
        assert!(o.begin_trial(&policy(), Instant::now()));
        assert_eq!(o.status(Instant::now()).phase, Phase::Trial);
        o.observe(Outcome::Status(503), &policy(), Instant::now(), || true);
        let status = o.status(Instant::now());
        assert_eq!(status.ejections, 2, "a failed trial is an ejection too");
        assert_eq!(
            status.phase,
            Phase::Ejected {
                until: Instant::now() + Duration::from_secs(60)
            }
        );
        let d = Detector::new(None, Instant::now());
        assert_eq!(d.status(Instant::now()), None, "no outlier detection");
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
        assert!(o.begin_trial(&policy(), now));
        assert!(!o.begin_trial(&policy(), now), "only one trial at a time");
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
        assert!(o.begin_trial(&policy(), Instant::now()));
        let now = Instant::now();
        assert_eq!(
            o.observe(Outcome::LocalFailure, &policy(), now, || unreachable!()),
            Transition::Reejected {
                until: now + Duration::from_secs(60)
            }
        );
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(o.begin_trial(&policy(), Instant::now()));
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
        assert!(o.begin_trial(&policy(), Instant::now()));
        o.observe(Outcome::Status(500), &policy(), Instant::now(), || true); // times = 2
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(o.begin_trial(&policy(), Instant::now()));
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
        assert!(o.begin_trial(&policy(), Instant::now()));
        o.abandon_trial(Instant::now());
        assert!(o.begin_trial(&policy(), Instant::now()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_trial_that_never_answers_gives_way_after_the_base_time() {
        let mut o = Outlier::new(Instant::now());
        fail(&mut o, 3);
        tokio::time::advance(Duration::from_secs(30)).await;
        assert!(o.begin_trial(&policy(), Instant::now()));
        tokio::time::advance(Duration::from_secs(29)).await;
        assert_eq!(o.availability(Instant::now()), Availability::Ejected);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(o.availability(Instant::now()), Availability::TrialDue);
        assert!(o.begin_trial(&policy(), Instant::now()));
        assert_eq!(
            o.observe(Outcome::Success, &policy(), Instant::now(), || true),
            Transition::Recovered
        );
    }

    /// A detector under `policy()`, ejected, counted in `gauge`.
    fn ejected_detector(gauge: &Gauge) -> Detector {
        let d = Detector::new(Some(policy()), Instant::now());
        for _ in 0..3 {
            d.observe(
                Outcome::Status(500),
                Instant::now(),
                |_| true,
                || gauge.clone(),
            );
        }
        assert!(d.is_ejected());
        assert_eq!(gauge.get(), 1);
        d
    }

    #[tokio::test(start_paused = true)]
    async fn the_gauge_counts_an_ejection_until_the_trial_succeeds() {
        let gauge = Gauge::default();
        let d = ejected_detector(&gauge);
        tokio::time::advance(Duration::from_secs(30)).await;
        assert!(d.begin_trial(Instant::now()));
        assert!(d.is_ejected(), "ejected while the trial is in flight");
        let t = d.observe(Outcome::Success, Instant::now(), |_| true, Gauge::default);
        assert_eq!(t, Transition::Recovered);
        assert!(!d.is_ejected());
        assert_eq!(gauge.get(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_changed_or_removed_policy_ends_the_ejection() {
        let other = OutlierPolicy {
            base_ejection: Duration::from_secs(5),
            ..policy()
        };
        for new in [None, Some(&other)] {
            let gauge = Gauge::default();
            let d = ejected_detector(&gauge);
            // The same policy keeps the ejection.
            assert!(!d.carry(Some(&policy()), Instant::now()));
            assert!(d.is_ejected());
            assert!(d.carry(new, Instant::now()));
            assert!(!d.is_ejected(), "{new:?}");
            assert_eq!(d.availability(Instant::now()), Availability::Available);
            assert_eq!(gauge.get(), 0, "{new:?}");
            // Outcomes are judged by the new policy only.
            for _ in 0..3 {
                d.observe(
                    Outcome::Status(500),
                    Instant::now(),
                    |_| true,
                    || gauge.clone(),
                );
            }
            assert_eq!(d.is_ejected(), new.is_some(), "{new:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_trial_claimed_before_a_reset_cannot_eject_or_uncount_again() {
        let gauge = Gauge::default();
        let d = ejected_detector(&gauge);
        tokio::time::advance(Duration::from_secs(30)).await;
        assert!(d.begin_trial(Instant::now()));
        d.carry(None, Instant::now());
        assert_eq!(gauge.get(), 0);
        // The trial's answer comes back after the rule was deleted.
        let t = d.observe(
            Outcome::Status(503),
            Instant::now(),
            |_| true,
            || gauge.clone(),
        );
        assert_eq!(t, Transition::None);
        assert_eq!((d.is_ejected(), gauge.get()), (false, 0));
        assert!(!d.begin_trial(Instant::now()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_retired_endpoint_is_uncounted_once() {
        let gauge = Gauge::default();
        let d = ejected_detector(&gauge);
        d.retire(Instant::now());
        d.retire(Instant::now());
        assert_eq!((d.is_ejected(), gauge.get()), (false, 0));
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
