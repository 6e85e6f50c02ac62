//! Endpoint choice. The default is power of two choices over peak-EWMA
//! latency (Finagle's and Linkerd's balancer): pick two endpoints at random
//! and send to the one with the lower `latency estimate × (requests in
//! flight + 1)`. `ROUND_ROBIN`, `RANDOM` and `LEAST_REQUEST` (two choices
//! over requests in flight) on request.
//!
//! Ejected endpoints are skipped (one trial request is let through when an
//! ejection ends), as are endpoints an earlier try of the same request went
//! to, where another is left.
//!
//! The latency observed is the proxy layer's to measure: from choice to
//! response headers, less the wait for a new connection.
//!
//! New endpoints: an endpoint nothing has been measured on costs nothing
//! while no request is in flight to it, and more than any measured one
//! while one is (Finagle's peak EWMA): it is probed by the first pair it
//! is drawn into, one request at a time, and competes on its own latency
//! from the first answer. With `warmupDurationSecs`, an endpoint that joins
//! a running service ramps from 10 % of its share to all of it over the
//! window (Envoy's slow start with aggression 1): every algorithm passes
//! over a warming pick with the probability it is not yet warm.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outrigger_api::policy::{LoadBalancer, SimpleLb};
use tokio::time::Instant;

use crate::chance::Chance;
use crate::config::{EndpointStats, ServiceState};
use crate::outlier::Availability;

/// The cost of each request in flight to an endpoint nothing has been
/// measured on yet: above any measured endpoint's, so that an unmeasured
/// endpoint gets one probe at a time.
const PROBING: Duration = Duration::from_secs(3600);
/// The EWMA's time constant.
pub const DECAY: Duration = Duration::from_secs(10);
/// What a failed try counts as, so that a failing endpoint does not look fast.
pub const FAILURE_PENALTY: Duration = Duration::from_secs(1);
/// Share of its load a just-joined endpoint starts with under slow start.
const WARMUP_FLOOR: f64 = 0.1;
/// Least draws `RANDOM` makes under slow start before taking the last one.
const RANDOM_TRIES: usize = 32;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Algorithm {
    #[default]
    PeakEwma,
    RoundRobin,
    Random,
    LeastRequest,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LbPolicy {
    pub algorithm: Algorithm,
    pub warmup: Option<Duration>,
}

impl From<Option<&LoadBalancer>> for LbPolicy {
    fn from(lb: Option<&LoadBalancer>) -> Self {
        let Some(lb) = lb else {
            return Self::default();
        };
        Self {
            algorithm: match lb.simple.unwrap_or_default() {
                SimpleLb::Unspecified => Algorithm::PeakEwma,
                SimpleLb::RoundRobin => Algorithm::RoundRobin,
                SimpleLb::Random => Algorithm::Random,
                SimpleLb::LeastRequest => Algorithm::LeastRequest,
            },
            warmup: lb.warmup_duration_secs.map(|d| d.get()),
        }
    }
}

/// An endpoint's load: requests in flight and the peak-EWMA latency
/// (`None` until the first answer).
#[derive(Debug)]
pub struct Load {
    in_flight: AtomicU32,
    ewma: Mutex<Option<Ewma>>,
}

#[derive(Clone, Copy, Debug)]
struct Ewma {
    rtt_ns: f64,
    at: Instant,
}

impl Ewma {
    /// The estimate at `now`: it decays toward zero while nothing is
    /// observed, so a slow endpoint is tried again after a while.
    fn at(&self, now: Instant) -> f64 {
        let idle = now.saturating_duration_since(self.at).as_secs_f64();
        self.rtt_ns * (-idle / DECAY.as_secs_f64()).exp()
    }

    /// Peak-sensitive: a higher sample replaces the estimate at once; a
    /// lower one pulls it down with the time constant `DECAY`.
    fn observe(&mut self, rtt: Duration, now: Instant) {
        let sample = rtt.as_nanos() as f64;
        let current = self.at(now);
        self.rtt_ns = if sample > current {
            sample
        } else {
            let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
            let w = (-elapsed / DECAY.as_secs_f64()).exp();
            current * w + sample * (1.0 - w)
        };
        self.at = now;
    }
}

impl Load {
    pub fn new() -> Self {
        Self {
            in_flight: AtomicU32::new(0),
            ewma: Mutex::new(None),
        }
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Latency estimate in nanoseconds at `now`; `None` until measured.
    pub fn estimate(&self, now: Instant) -> Option<f64> {
        self.ewma
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map(|e| e.at(now))
    }

    pub fn observe(&self, rtt: Duration, now: Instant) {
        let mut ewma = self.ewma.lock().unwrap_or_else(|p| p.into_inner());
        match &mut *ewma {
            Some(e) => e.observe(rtt, now),
            // The first answer is the estimate.
            None => {
                *ewma = Some(Ewma {
                    rtt_ns: rtt.as_nanos() as f64,
                    at: now,
                })
            }
        }
    }

    /// Peak-EWMA cost: the latency estimate times the requests in flight
    /// (with this one). Unmeasured: nothing while idle, so it is probed;
    /// [`PROBING`] per request while its probe is out, so it waits for the
    /// answer.
    fn cost(&self, now: Instant) -> f64 {
        let in_flight = self.in_flight();
        match self.estimate(now) {
            Some(rtt) => rtt * f64::from(in_flight + 1),
            None if in_flight == 0 => 0.0,
            None => PROBING.as_nanos() as f64 * f64::from(in_flight),
        }
    }
}

impl Default for Load {
    fn default() -> Self {
        Self::new()
    }
}

/// The result of a choice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Choice {
    /// Send to `endpoints[index]`; `trial` when it is the recovery trial of
    /// an ejected endpoint.
    Endpoint { index: usize, trial: bool },
    /// The backend has no endpoints at all.
    Empty,
    /// Every endpoint is ejected (and no trial is due).
    AllEjected(usize),
}

/// Slow start: the share of its load a joining endpoint may take now.
pub fn warm_factor(stats: &EndpointStats, warmup: Option<Duration>, now: Instant) -> f64 {
    match (stats.joined, warmup) {
        (Some(joined), Some(w)) if !w.is_zero() => {
            let age = now.saturating_duration_since(joined).as_secs_f64();
            (age / w.as_secs_f64()).clamp(WARMUP_FLOOR, 1.0)
        }
        _ => 1.0,
    }
}

/// Chooses an endpoint among `members` (indices into `svc.endpoints`).
pub fn choose(
    svc: &ServiceState,
    members: &[usize],
    avoid: &[SocketAddr],
    now: Instant,
    chance: &Chance,
) -> Choice {
    if members.is_empty() {
        return Choice::Empty;
    }
    let eps = &svc.endpoints;
    let any_ejected = members.iter().any(|i| eps[*i].stats.outlier.is_ejected());
    let mut candidates: Vec<usize> = if any_ejected {
        members
            .iter()
            .copied()
            .filter(|i| eps[*i].stats.outlier.availability(now) != Availability::Ejected)
            .collect()
    } else {
        members.to_vec()
    };
    if !avoid.is_empty() {
        let fresh: Vec<usize> = candidates
            .iter()
            .copied()
            .filter(|i| !avoid.contains(&eps[*i].addr))
            .collect();
        if !fresh.is_empty() {
            candidates = fresh;
        }
    }
    while !candidates.is_empty() {
        let pos = pick(svc, &candidates, now, chance);
        let index = candidates[pos];
        let stats = &eps[index].stats;
        if !stats.outlier.is_ejected() {
            return Choice::Endpoint {
                index,
                trial: false,
            };
        }
        if stats.outlier.begin_trial(now) {
            return Choice::Endpoint { index, trial: true };
        }
        // Another request took the trial meanwhile.
        candidates.swap_remove(pos);
    }
    Choice::AllEjected(members.len())
}

/// The position in `candidates` (non-empty) the algorithm picks.
fn pick(svc: &ServiceState, candidates: &[usize], now: Instant, chance: &Chance) -> usize {
    let n = candidates.len();
    if n == 1 {
        return 0;
    }
    let eps = &svc.endpoints;
    let warm = |pos: usize| warm_factor(&eps[candidates[pos]].stats, svc.lb.warmup, now);
    match svc.lb.algorithm {
        Algorithm::PeakEwma | Algorithm::LeastRequest => {
            let cost = |pos: usize| {
                let load = &eps[candidates[pos]].stats.load;
                match svc.lb.algorithm {
                    Algorithm::PeakEwma => load.cost(now),
                    _ => f64::from(load.in_flight() + 1),
                }
            };
            let (a, b) = chance.two_below(n);
            let (win, other) = if cost(b) < cost(a) { (b, a) } else { (a, b) };
            // Slow start: a warming winner keeps the pick with the
            // probability it is warm, so its share ramps with the window.
            let f = warm(win);
            if f >= 1.0 || chance.unit() < f {
                win
            } else {
                other
            }
        }
        Algorithm::RoundRobin | Algorithm::Random => {
            // Slow start: a warming endpoint is passed over with the
            // probability it is not yet warm. Round robin meets every
            // candidate within `n` tries; random draws need more, or the
            // last draw, taken as it is, gives a warming endpoint much of
            // its share when `n` is small.
            let tries = match svc.lb.algorithm {
                Algorithm::RoundRobin => n,
                _ => n.max(RANDOM_TRIES),
            };
            let mut pos = 0;
            for _ in 0..tries {
                pos = match svc.lb.algorithm {
                    Algorithm::RoundRobin => svc.runtime.next.fetch_add(1, Ordering::Relaxed) % n,
                    _ => chance.below(n),
                };
                let f = warm(pos);
                if f >= 1.0 || chance.unit() < f {
                    break;
                }
            }
            pos
        }
    }
}

/// The endpoint a try was sent to (request extension), for the pool and
/// outlier layers.
#[derive(Clone)]
pub struct Chosen {
    pub service: Arc<ServiceState>,
    pub index: usize,
    pub trial: bool,
}

impl Chosen {
    pub fn stats(&self) -> &Arc<EndpointStats> {
        &self.service.endpoints[self.index].stats
    }
}

/// Counts a request in flight on an endpoint until dropped.
pub struct InFlightGuard(Arc<EndpointStats>);

impl InFlightGuard {
    pub fn start(stats: &Arc<EndpointStats>) -> Self {
        stats.load.in_flight.fetch_add(1, Ordering::Relaxed);
        Self(stats.clone())
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.load.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::outlier::{Outcome, Transition};
    use crate::testing::{config, eject, service_ref};
    use prometheus_client::metrics::gauge::Gauge;

    const RR: &str = "trafficPolicy:\n  loadBalancer: { simple: ROUND_ROBIN }";

    const RANDOM: &str = "trafficPolicy:\n  loadBalancer: { simple: RANDOM }";

    const LEAST: &str = "trafficPolicy:\n  loadBalancer: { simple: LEAST_REQUEST }";

    /// Service `web.shop` with `n` endpoints and `policy`.
    fn service(n: usize, policy: &str) -> Arc<ServiceState> {
        let cfg = config(&[("web", n, policy)]);
        cfg.service(&service_ref("web")).unwrap().clone()
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// The index of a non-trial choice.
    fn index(choice: Choice) -> usize {
        match choice {
            Choice::Endpoint {
                index,
                trial: false,
            } => index,
            other => panic!("expected a plain endpoint choice, got {other:?}"),
        }
    }

    /// How many of `picks` choices went to each endpoint.
    fn counts(
        svc: &ServiceState,
        members: &[usize],
        avoid: &[SocketAddr],
        picks: usize,
        chance: &Chance,
    ) -> Vec<usize> {
        let mut counts = vec![0; svc.endpoints.len()];
        for _ in 0..picks {
            counts[index(choose(svc, members, avoid, Instant::now(), chance))] += 1;
        }
        counts
    }

    /// A successful trial brings endpoint `i` back, as the outlier layer does.
    fn recover(svc: &ServiceState, i: usize) {
        let d = &svc.endpoints[i].stats.outlier;
        let t = d.observe(
            Outcome::Success,
            Instant::now(),
            |_| unreachable!(),
            Gauge::default,
        );
        assert_eq!(t, Transition::Recovered);
    }

    fn assert_close(actual: f64, expected: f64) {
        assert!(
            (actual - expected).abs() <= expected.abs() * 1e-9,
            "{actual} != {expected}"
        );
    }

    #[test]
    fn no_members_is_empty() {
        let svc = service(3, "");
        let chance = Chance::seeded(1);
        assert_eq!(
            choose(&svc, &[], &[], Instant::now(), &chance),
            Choice::Empty
        );
        let addr = svc.endpoints[0].addr;
        assert_eq!(
            choose(&svc, &[], &[addr], Instant::now(), &chance),
            Choice::Empty
        );
    }

    #[tokio::test(start_paused = true)]
    async fn ejected_endpoints_are_skipped() {
        for policy in ["", RR, RANDOM, LEAST] {
            let svc = service(3, policy);
            eject(&svc, 1);
            let c = counts(&svc, &svc.all, &[], 600, &Chance::seeded(2));
            assert_eq!(c[1], 0, "{policy}: {c:?}");
            assert!(c[0] > 0 && c[2] > 0, "{policy}: {c:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn all_ejected_then_one_trial_when_the_ejection_ends() {
        let svc = service(2, "");
        let chance = Chance::seeded(3);
        eject(&svc, 0);
        tokio::time::advance(Duration::from_secs(10)).await;
        eject(&svc, 1); // until 10 s after endpoint 0
        for _ in 0..10 {
            assert_eq!(
                choose(&svc, &svc.all, &[], Instant::now(), &chance),
                Choice::AllEjected(2)
            );
        }
        // A subset's count is its own size.
        assert_eq!(
            choose(&svc, &[1], &[], Instant::now(), &chance),
            Choice::AllEjected(1)
        );

        tokio::time::advance(Duration::from_secs(19)).await;
        assert_eq!(
            choose(&svc, &svc.all, &[], Instant::now(), &chance),
            Choice::AllEjected(2),
            "1 s before endpoint 0's ejection ends"
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(
            choose(&svc, &svc.all, &[], Instant::now(), &chance),
            Choice::Endpoint {
                index: 0,
                trial: true
            }
        );
        // The trial is in flight: nothing else goes to endpoint 0.
        for _ in 0..10 {
            assert_eq!(
                choose(&svc, &svc.all, &[], Instant::now(), &chance),
                Choice::AllEjected(2)
            );
        }
        // The trial succeeds: endpoint 0 is an ordinary candidate again.
        recover(&svc, 0);
        let c = counts(&svc, &svc.all, &[], 20, &chance);
        assert_eq!(c, vec![20, 0]);

        // Endpoint 1's ejection ends: one trial, then it waits for its outcome.
        tokio::time::advance(Duration::from_secs(10)).await;
        let mut trials = 0;
        for _ in 0..200 {
            match choose(&svc, &svc.all, &[], Instant::now(), &chance) {
                Choice::Endpoint { index, trial: true } => {
                    assert_eq!(index, 1);
                    trials += 1;
                }
                Choice::Endpoint {
                    index,
                    trial: false,
                } => assert_eq!(index, 0),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(trials, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn an_abandoned_trial_is_offered_again() {
        let svc = service(1, "");
        let chance = Chance::seeded(4);
        eject(&svc, 0);
        tokio::time::advance(Duration::from_secs(30)).await;
        let trial = Choice::Endpoint {
            index: 0,
            trial: true,
        };
        assert_eq!(choose(&svc, &svc.all, &[], Instant::now(), &chance), trial);
        assert_eq!(
            choose(&svc, &svc.all, &[], Instant::now(), &chance),
            Choice::AllEjected(1)
        );
        svc.endpoints[0].stats.outlier.abandon_trial(Instant::now());
        assert_eq!(choose(&svc, &svc.all, &[], Instant::now(), &chance), trial);
    }

    #[tokio::test(start_paused = true)]
    async fn endpoints_tried_before_are_avoided_while_another_is_left() {
        for policy in ["", RR, RANDOM, LEAST] {
            let svc = service(3, policy);
            let chance = Chance::seeded(5);
            let addr = |i: usize| svc.endpoints[i].addr;

            let c = counts(&svc, &svc.all, &[addr(0), addr(2)], 50, &chance);
            assert_eq!(c, vec![0, 50, 0], "{policy}");
            let c = counts(&svc, &svc.all, &[addr(1)], 200, &chance);
            assert!(c[1] == 0 && c[0] > 0 && c[2] > 0, "{policy}: {c:?}");

            // Every member was tried: any of them will do.
            let c = counts(&svc, &svc.all, &[addr(0), addr(1), addr(2)], 300, &chance);
            assert!(c.iter().all(|n| *n > 0), "{policy}: {c:?}");
            // The only member was tried.
            let c = counts(&svc, &[2], &[addr(2)], 10, &chance);
            assert_eq!(c, vec![0, 0, 10], "{policy}");

            // The only endpoint not tried is ejected: the tried one again.
            eject(&svc, 1);
            let c = counts(&svc, &[0, 1], &[addr(0)], 10, &chance);
            assert_eq!(c, vec![10, 0, 0], "{policy}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn peak_ewma_prefers_the_faster_endpoint() {
        let svc = service(3, "");
        assert_eq!(svc.lb.algorithm, Algorithm::PeakEwma);
        let chance = Chance::seeded(6);
        svc.endpoints[0].stats.load.observe(ms(500), Instant::now());
        let c = counts(&svc, &svc.all, &[], 300, &chance);
        assert_eq!(c[0], 0, "{c:?}");
        assert!(c[1] > 100 && c[2] > 100, "{c:?}");

        // Between two, the faster always wins.
        let c = counts(&svc, &[0, 1], &[], 100, &chance);
        assert_eq!(c, vec![0, 100, 0]);
    }

    #[tokio::test(start_paused = true)]
    async fn peak_ewma_weighs_latency_by_requests_in_flight() {
        let svc = service(2, "");
        let chance = Chance::seeded(7);
        let (slow, fast) = (&svc.endpoints[0].stats, &svc.endpoints[1].stats);
        slow.load.observe(ms(300), Instant::now());
        fast.load.observe(ms(30), Instant::now());

        // 30 ms × 9 < 300 ms × 1: still the fast one.
        let mut guards: Vec<_> = (0..8).map(|_| InFlightGuard::start(fast)).collect();
        assert_eq!(fast.load.in_flight(), 8);
        assert_eq!(counts(&svc, &svc.all, &[], 20, &chance), vec![0, 20]);

        // 30 ms × 11 > 300 ms × 1: the slow one.
        guards.extend((0..2).map(|_| InFlightGuard::start(fast)));
        assert_eq!(counts(&svc, &svc.all, &[], 20, &chance), vec![20, 0]);

        // Load on the slow one tips it back: 300 ms × 2 > 30 ms × 11.
        let slow_guard = InFlightGuard::start(slow);
        assert_eq!(counts(&svc, &svc.all, &[], 20, &chance), vec![0, 20]);

        drop(slow_guard);
        drop(guards);
        assert_eq!((slow.load.in_flight(), fast.load.in_flight()), (0, 0));
        assert_eq!(counts(&svc, &svc.all, &[], 20, &chance), vec![0, 20]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_endpoint_is_tried_again_once_its_estimate_decays() {
        let svc = service(2, "");
        let chance = Chance::seeded(8);
        let (slow, fast) = (&svc.endpoints[0].stats, &svc.endpoints[1].stats);
        slow.load.observe(ms(500), Instant::now());
        fast.load.observe(ms(30), Instant::now());
        // The fast one answers in 30 ms every second; the slow one gets
        // nothing, so its estimate decays: 500 ms × e^(-t/10 s) < 30 ms from
        // t = 28.1 s.
        let mut first = None;
        for second in 1..=60 {
            tokio::time::advance(Duration::from_secs(1)).await;
            fast.load.observe(ms(30), Instant::now());
            if index(choose(&svc, &svc.all, &[], Instant::now(), &chance)) == 0 {
                first = Some(second);
                break;
            }
        }
        assert_eq!(first, Some(29));
    }

    #[tokio::test(start_paused = true)]
    async fn a_higher_sample_replaces_the_estimate_at_once() {
        let t0 = Instant::now();
        let load = Load::new();
        assert_eq!(load.estimate(t0), None);
        load.observe(ms(100), t0);
        assert_close(load.estimate(t0).unwrap(), 100e6);
        tokio::time::advance(Duration::from_secs(3)).await;
        let now = Instant::now();
        load.observe(ms(120), now);
        assert_close(load.estimate(now).unwrap(), 120e6);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lower_sample_pulls_the_estimate_down_gradually() {
        let load = Load::new();
        load.observe(ms(100), Instant::now());
        // At the same instant a lower sample has no weight.
        load.observe(ms(10), Instant::now());
        assert_close(load.estimate(Instant::now()).unwrap(), 100e6);

        tokio::time::advance(Duration::from_secs(1)).await;
        let now = Instant::now();
        let decayed = load.estimate(now).unwrap();
        assert_close(decayed, 100e6 * (-0.1f64).exp());
        load.observe(ms(10), now);
        let pulled = load.estimate(now).unwrap();
        assert!(pulled < decayed && pulled > 50e6, "{pulled}");

        // More samples keep pulling it down, never below the sample.
        let mut last = pulled;
        for _ in 0..100 {
            tokio::time::advance(Duration::from_secs(1)).await;
            load.observe(ms(10), Instant::now());
            let e = load.estimate(Instant::now()).unwrap();
            assert!(e <= last && e >= 10e6, "{e} after {last}");
            last = e;
        }
        assert_close(last, 10e6);
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_estimate_decays_toward_zero() {
        let t0 = Instant::now();
        let load = Load::new();
        load.observe(ms(30), t0);
        let initial = 30e6;
        tokio::time::advance(DECAY).await;
        assert_close(
            load.estimate(Instant::now()).unwrap(),
            initial * (-1f64).exp(),
        );
        tokio::time::advance(DECAY * 9).await;
        let e = load.estimate(Instant::now()).unwrap();
        assert!(e < initial * 1e-4, "{e}");
        // Reading the estimate changes nothing.
        assert_close(load.estimate(t0 + DECAY).unwrap(), initial * (-1f64).exp());
    }

    #[tokio::test(start_paused = true)]
    async fn round_robin_cycles_in_order() {
        let svc = service(3, RR);
        assert_eq!(svc.lb.algorithm, Algorithm::RoundRobin);
        let chance = Chance::seeded(9);
        let seq: Vec<usize> = (0..7)
            .map(|_| index(choose(&svc, &svc.all, &[], Instant::now(), &chance)))
            .collect();
        assert_eq!(seq, vec![0, 1, 2, 0, 1, 2, 0]);
        // Over a subset, its members in turn.
        let seq: Vec<usize> = (0..4)
            .map(|_| index(choose(&svc, &[0, 2], &[], Instant::now(), &chance)))
            .collect();
        assert!(seq == [0, 2, 0, 2] || seq == [2, 0, 2, 0], "{seq:?}");
        // An ejected endpoint drops out of the cycle.
        eject(&svc, 1);
        assert_eq!(counts(&svc, &svc.all, &[], 100, &chance)[1], 0);
    }

    #[tokio::test(start_paused = true)]
    async fn random_spreads_evenly() {
        let svc = service(3, RANDOM);
        assert_eq!(svc.lb.algorithm, Algorithm::Random);
        let c = counts(&svc, &svc.all, &[], 3000, &Chance::seeded(10));
        for n in &c {
            assert!((900..1100).contains(n), "{c:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn least_request_prefers_fewer_requests_in_flight() {
        let svc = service(3, LEAST);
        assert_eq!(svc.lb.algorithm, Algorithm::LeastRequest);
        let chance = Chance::seeded(11);
        // Latency does not count.
        svc.endpoints[0].stats.load.observe(ms(900), Instant::now());
        // All idle: ties, each gets picks.
        let c = counts(&svc, &svc.all, &[], 300, &chance);
        assert!(c.iter().all(|n| *n > 50), "{c:?}");

        let (e0, e1) = (&svc.endpoints[1].stats, &svc.endpoints[2].stats);
        let _busy = [
            InFlightGuard::start(e0),
            InFlightGuard::start(e0),
            InFlightGuard::start(e1),
        ];
        // Endpoint 1 (2 in flight) loses every pair; endpoint 0 (idle) wins
        // its two pairs, endpoint 2 (1 in flight) the other.
        let c = counts(&svc, &svc.all, &[], 3000, &chance);
        assert_eq!(c[1], 0, "{c:?}");
        assert!((1850..2150).contains(&c[0]), "{c:?}");
        assert!((850..1150).contains(&c[2]), "{c:?}");
    }

    /// A config for `web.shop` with `before` endpoints and `policy`, and
    /// the next config, where one more endpoint joined (the last).
    fn joined_one(before: usize, policy: &str) -> (Arc<ServiceState>, Arc<ServiceState>) {
        let first = config(&[("web", before, policy)]);
        let mut snapshot = (*first.snapshot).clone();
        let mut ep = snapshot.services[0].endpoints[0].clone();
        ep.address = format!("10.0.0.{}:80", before + 1);
        snapshot.services[0].endpoints.push(ep);
        let second = Config::build(snapshot, Some(&first)).unwrap();
        let before = first.service(&service_ref("web")).unwrap().clone();
        let after = second.service(&service_ref("web")).unwrap().clone();
        (before, after)
    }

    #[tokio::test(start_paused = true)]
    async fn a_joining_endpoint_warms_up() {
        for lb in ["ROUND_ROBIN", "RANDOM", "UNSPECIFIED", "LEAST_REQUEST"] {
            let policy = format!(
                "trafficPolicy:\n  loadBalancer: {{ simple: {lb}, warmupDurationSecs: 10s }}"
            );
            let (before, svc) = joined_one(3, &policy);
            assert_eq!(svc.lb.warmup, Some(Duration::from_secs(10)));
            assert_eq!(svc.endpoints.len(), 4);
            for i in 0..3 {
                assert!(Arc::ptr_eq(
                    &before.endpoints[i].stats,
                    &svc.endpoints[i].stats
                ));
                assert_eq!(svc.endpoints[i].stats.joined, None);
            }
            assert_eq!(svc.endpoints[3].stats.joined, Some(Instant::now()));
            let chance = Chance::seeded(12);

            // Fair share is 1000 of 4000. Just joined: far less, but some.
            let c = counts(&svc, &svc.all, &[], 4000, &chance);
            assert!((40..300).contains(&c[3]), "{lb} at 0 s: {c:?}");
            // Halfway: more, still less than fair.
            tokio::time::advance(Duration::from_secs(5)).await;
            let half = counts(&svc, &svc.all, &[], 4000, &chance);
            assert!(half[3] > c[3] && half[3] < 900, "{lb} at 5 s: {half:?}");
            // Warm.
            tokio::time::advance(Duration::from_secs(5)).await;
            let c = counts(&svc, &svc.all, &[], 4000, &chance);
            for n in &c {
                assert!((900..1100).contains(n), "{lb} at 10 s: {c:?}");
            }
        }
    }

    /// One request at a time, as a light-load client sends them: the
    /// balancer's choice, answered in 1 ms.
    async fn serve_one(svc: &ServiceState, chance: &Chance) -> usize {
        let i = index(choose(svc, &svc.all, &[], Instant::now(), chance));
        let stats = &svc.endpoints[i].stats;
        let in_flight = InFlightGuard::start(stats);
        tokio::time::advance(ms(1)).await;
        stats.load.observe(ms(1), Instant::now());
        drop(in_flight);
        i
    }

    /// The first request (0-based) each endpoint got, and how many each got,
    /// over `n` sequential requests.
    async fn sequential(svc: &ServiceState, n: usize, chance: &Chance) -> (Vec<usize>, Vec<usize>) {
        let mut first = vec![usize::MAX; svc.endpoints.len()];
        let mut counts = vec![0; svc.endpoints.len()];
        for k in 0..n {
            let i = serve_one(svc, chance).await;
            first[i] = first[i].min(k);
            counts[i] += 1;
        }
        (first, counts)
    }

    #[tokio::test(start_paused = true)]
    async fn peak_ewma_probes_an_unmeasured_endpoint_at_once() {
        for seed in 0..20 {
            let chance = Chance::seeded(seed);
            // Three endpoints from the start, requests one at a time.
            let svc = service(3, "");
            let (first, counts) = sequential(&svc, 900, &chance).await;
            assert!(first.iter().all(|k| *k < 10), "seed {seed}: {first:?}");
            assert!(counts.iter().all(|n| *n > 200), "seed {seed}: {counts:?}");

            // A third joins two that answer in 1 ms.
            let (before, svc) = joined_one(2, "");
            sequential(&before, 100, &chance).await;
            let (first, counts) = sequential(&svc, 900, &chance).await;
            assert!(first[2] < 10, "seed {seed}: {first:?}");
            assert!(counts[2] > 200, "seed {seed}: {counts:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_unmeasured_endpoint_is_probed_one_request_at_a_time() {
        let svc = service(2, "");
        let chance = Chance::seeded(16);
        let (known, new) = (&svc.endpoints[0].stats, &svc.endpoints[1].stats);
        known.load.observe(ms(5), Instant::now());
        // Idle and unmeasured: it wins every pair.
        assert_eq!(counts(&svc, &svc.all, &[], 20, &chance), vec![0, 20]);
        // Its probe is out: nothing more until the answer, however busy the
        // measured one is.
        let _probe = InFlightGuard::start(new);
        let _busy: Vec<_> = (0..50).map(|_| InFlightGuard::start(known)).collect();
        assert_eq!(counts(&svc, &svc.all, &[], 20, &chance), vec![20, 0]);
        // Answered in 1 ms: it competes on its latency from then on.
        new.load.observe(ms(1), Instant::now());
        assert_eq!(counts(&svc, &svc.all, &[], 20, &chance), vec![0, 20]);
    }

    #[tokio::test(start_paused = true)]
    async fn random_warms_up_like_round_robin_in_a_small_service() {
        // One endpoint, then two: just joined, the new one weighs 0.1
        // against 1, so it gets 1/11 of the requests (9 %) under either.
        for lb in ["ROUND_ROBIN", "RANDOM"] {
            let policy = format!(
                "trafficPolicy:\n  loadBalancer: {{ simple: {lb}, warmupDurationSecs: 10s }}"
            );
            let (_, svc) = joined_one(1, &policy);
            let chance = Chance::seeded(15);
            let c = counts(&svc, &svc.all, &[], 10_000, &chance);
            assert!((700..1150).contains(&c[1]), "{lb} at 0 s: {c:?}");
            tokio::time::advance(Duration::from_secs(10)).await;
            let c = counts(&svc, &svc.all, &[], 10_000, &chance);
            assert!((4800..5200).contains(&c[1]), "{lb} at 10 s: {c:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn endpoints_of_the_first_config_do_not_warm_up() {
        let svc = service(
            2,
            "trafficPolicy:\n  loadBalancer: { simple: RANDOM, warmupDurationSecs: 10s }",
        );
        assert!(svc.endpoints.iter().all(|e| e.stats.joined.is_none()));
        let c = counts(&svc, &svc.all, &[], 2000, &Chance::seeded(13));
        assert!(c.iter().all(|n| (900..1100).contains(n)), "{c:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn without_warmup_a_joining_endpoint_gets_its_share_at_once() {
        let (_, svc) = joined_one(3, RR);
        assert!(svc.endpoints[3].stats.joined.is_some());
        let c = counts(&svc, &svc.all, &[], 400, &Chance::seeded(14));
        assert_eq!(c, vec![100; 4]);
    }

    #[test]
    fn the_warm_factor_ramps_from_the_floor() {
        let t0 = Instant::now();
        let joined = EndpointStats::new(None, Some(t0));
        let w = Some(Duration::from_secs(10));
        assert_eq!(warm_factor(&joined, w, t0), WARMUP_FLOOR);
        assert_eq!(
            warm_factor(&joined, w, t0 + Duration::from_millis(500)),
            0.1
        );
        assert_close(warm_factor(&joined, w, t0 + Duration::from_secs(4)), 0.4);
        assert_eq!(warm_factor(&joined, w, t0 + Duration::from_secs(10)), 1.0);
        assert_eq!(warm_factor(&joined, w, t0 + Duration::from_secs(99)), 1.0);
        assert_eq!(warm_factor(&joined, None, t0), 1.0);
        assert_eq!(warm_factor(&joined, Some(Duration::ZERO), t0), 1.0);
        let original = EndpointStats::new(None, None);
        assert_eq!(warm_factor(&original, w, t0), 1.0);
    }

    #[test]
    fn the_policy_maps_the_snapshot_names() {
        assert_eq!(LbPolicy::from(None), LbPolicy::default());
        for (yaml, algorithm) in [
            ("", Algorithm::PeakEwma),
            (
                "trafficPolicy:\n  loadBalancer: { simple: UNSPECIFIED }",
                Algorithm::PeakEwma,
            ),
            (RR, Algorithm::RoundRobin),
            (RANDOM, Algorithm::Random),
            (LEAST, Algorithm::LeastRequest),
        ] {
            let svc = service(1, yaml);
            assert_eq!(
                svc.lb,
                LbPolicy {
                    algorithm,
                    warmup: None
                },
                "{yaml}"
            );
        }
    }
}
