//! Endpoint choice. The default is power of two choices over peak-EWMA
//! latency (Finagle's and Linkerd's balancer): pick two endpoints at random
//! and send to the one with the lower `latency estimate × (requests in
//! flight + 1)`. `ROUND_ROBIN`, `RANDOM` and `LEAST_REQUEST` (two choices
//! over requests in flight) on request.
//!
//! Ejected endpoints are skipped (one trial request is let through when an
//! ejection ends), as are endpoints an earlier try of the same request went
//! to, where another is left. New endpoints warm up: an unobserved endpoint
//! starts at a pessimistic 30 ms estimate, and with `warmupDurationSecs` an
//! endpoint that joins a running service ramps from 10 % of its share.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::Version;
use outrigger_api::policy::{LoadBalancer, SimpleLb};
use tokio::time::Instant;
use tower::Service;

use super::chance::Chance;
use super::outlier::Availability;
use super::retry::TriedEndpoints;
use super::route::Backend;
use crate::config::{EndpointStats, ServiceState};
use crate::http::client::UpstreamProto;
use crate::http::error::{ErrorKind, ProxyError, Served};
use crate::http::forward::Upstream;
use crate::http::stack::{call, Fut, HttpService, Req, Rsp};

/// The estimate of an endpoint nothing has been measured on yet.
pub const DEFAULT_RTT: Duration = Duration::from_millis(30);
/// The EWMA's time constant.
pub const DECAY: Duration = Duration::from_secs(10);
/// What a failed try counts as, so that a failing endpoint does not look fast.
pub const FAILURE_PENALTY: Duration = Duration::from_secs(1);
/// Share of its load a just-joined endpoint starts with under slow start.
const WARMUP_FLOOR: f64 = 0.1;

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

/// An endpoint's load: requests in flight and the peak-EWMA latency.
#[derive(Debug)]
pub struct Load {
    in_flight: AtomicU32,
    ewma: Mutex<Ewma>,
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
    pub fn new(now: Instant) -> Self {
        Self {
            in_flight: AtomicU32::new(0),
            ewma: Mutex::new(Ewma {
                rtt_ns: DEFAULT_RTT.as_nanos() as f64,
                at: now,
            }),
        }
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Latency estimate in nanoseconds at `now`.
    pub fn estimate(&self, now: Instant) -> f64 {
        self.ewma.lock().expect("ewma lock").at(now)
    }

    pub fn observe(&self, rtt: Duration, now: Instant) {
        self.ewma.lock().expect("ewma lock").observe(rtt, now);
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
fn warm_factor(stats: &EndpointStats, warmup: Option<Duration>, now: Instant) -> f64 {
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
    let any_ejected = members
        .iter()
        .any(|i| eps[*i].stats.ejected.load(Ordering::Relaxed));
    let mut candidates: Vec<usize> = if any_ejected {
        members
            .iter()
            .copied()
            .filter(|i| {
                let s = &eps[*i].stats;
                !s.ejected.load(Ordering::Relaxed)
                    || s.outlier.lock().expect("outlier lock").availability(now)
                        == Availability::TrialDue
            })
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
        if !stats.ejected.load(Ordering::Relaxed) {
            return Choice::Endpoint {
                index,
                trial: false,
            };
        }
        if stats.outlier.lock().expect("outlier lock").begin_trial(now) {
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
                let pending = f64::from(load.in_flight() + 1);
                let base = match svc.lb.algorithm {
                    Algorithm::PeakEwma => load.estimate(now) * pending,
                    _ => pending,
                };
                base / warm(pos)
            };
            let (a, b) = chance.two_below(n);
            if cost(b) < cost(a) {
                b
            } else {
                a
            }
        }
        Algorithm::RoundRobin | Algorithm::Random => {
            // Slow start: a warming endpoint is passed over with the
            // probability it is not yet warm.
            let mut pos = 0;
            for _ in 0..n {
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
    type Response = Rsp;
    type Error = ProxyError;
    type Future = Fut;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), ProxyError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Req) -> Fut {
        let inner = self.inner.clone();
        let Some(backend) = req.extensions().get::<Backend>().cloned() else {
            return Box::pin(call(inner, req));
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
                    format!("service {} has no endpoints to send to", svc.label),
                );
                return Box::pin(async move { Err(e) });
            }
            Choice::AllEjected(n) => {
                let e = ProxyError::new(
                    ErrorKind::NoHealthyUpstream,
                    format!(
                        "all {n} endpoints of service {} are ejected by outlier detection",
                        svc.label
                    ),
                );
                return Box::pin(async move { Err(e) });
            }
        };
        let ep = &svc.endpoints[index];
        let client_h1 = req.version() != Version::HTTP_2;
        req.extensions_mut().insert(Upstream {
            addr: ep.addr,
            proto: if ep.meshed || !client_h1 {
                UpstreamProto::Http2
            } else {
                UpstreamProto::Http1
            },
            mark_http1: ep.meshed && client_h1,
            keep_absolute: false,
            served: Served {
                addr: ep.addr,
                peer: ep.peer.clone(),
                service: svc.label.clone(),
            },
        });
        let stats = ep.stats.clone();
        req.extensions_mut().insert(Chosen {
            service: svc.clone(),
            index,
            trial,
        });
        Box::pin(async move {
            let _in_flight = InFlightGuard::start(&stats);
            let start = Instant::now();
            let result = call(inner, req).await;
            let rtt = match &result {
                Err(e) if e.kind.is_endpoint_failure() => start.elapsed().max(FAILURE_PENALTY),
                _ => start.elapsed(),
            };
            stats.load.observe(rtt, Instant::now());
            result
        })
    }
}

/// Counts a request in flight on an endpoint until dropped.
struct InFlightGuard(Arc<EndpointStats>);

impl InFlightGuard {
    fn start(stats: &Arc<EndpointStats>) -> Self {
        stats.load.in_flight.fetch_add(1, Ordering::Relaxed);
        Self(stats.clone())
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.load.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}
