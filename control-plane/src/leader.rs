//! Leader election over a `coordination.k8s.io/v1` Lease, as client-go's
//! `leaderelection` does it: the pure decision here, given the Lease read
//! and the clock; the API calls (GET, POST when absent, PUT with the
//! resourceVersion read, so that of two writers one gets 409) are the
//! caller's.
//!
//! A Lease held by another is taken over only once its record has stayed
//! the same for its whole duration as seen on this replica's own clock
//! (never comparing another node's `renewTime` with ours). A leader that has
//! not renewed for `renew_deadline` (< the duration) stops leading at once,
//! so two replicas never both write.
//!
//! [`crate::election`] is the edge that drives it against the API server;
//! while [`Elector::leads`] holds, that replica's status writer writes.
//! [`Timings`] are the three durations, checked against each other.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::LeaseSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use tokio::time::Instant;

/// Kubernetes' usual timings (kube-controller-manager, client-go).
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
pub const RENEW_DEADLINE: Duration = Duration::from_secs(10);
pub const RETRY_PERIOD: Duration = Duration::from_secs(2);

/// The election's three durations: how long a Lease stays another's without
/// a renewal, how long a leader keeps leading without one, and how often
/// every replica tries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timings {
    pub duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

/// Which of the three durations is wrong, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimingsError {
    /// The Lease records its duration in whole seconds; a fraction would be
    /// cut, and another replica would take over before this one stops.
    #[error("the lease duration must be a whole number of seconds, at least 1 (got {0:?})")]
    Duration(Duration),
    #[error("the renew deadline ({renew_deadline:?}) must be shorter than the lease duration ({duration:?})")]
    RenewDeadline {
        renew_deadline: Duration,
        duration: Duration,
    },
    #[error("the retry period ({retry_period:?}) must be above zero and shorter than the renew deadline ({renew_deadline:?})")]
    RetryPeriod {
        retry_period: Duration,
        renew_deadline: Duration,
    },
}

impl Default for Timings {
    fn default() -> Self {
        Self {
            duration: LEASE_DURATION,
            renew_deadline: RENEW_DEADLINE,
            retry_period: RETRY_PERIOD,
        }
    }
}

impl Timings {
    /// Checked as client-go checks them: retry < renew deadline < duration.
    pub fn new(
        duration: Duration,
        renew_deadline: Duration,
        retry_period: Duration,
    ) -> Result<Self, TimingsError> {
        if duration.subsec_nanos() != 0
            || duration.is_zero()
            || i32::try_from(duration.as_secs()).is_err()
        {
            return Err(TimingsError::Duration(duration));
        }
        if renew_deadline >= duration {
            return Err(TimingsError::RenewDeadline {
                renew_deadline,
                duration,
            });
        }
        if retry_period.is_zero() || retry_period >= renew_deadline {
            return Err(TimingsError::RetryPeriod {
                retry_period,
                renew_deadline,
            });
        }
        Ok(Self {
            duration,
            renew_deadline,
            retry_period,
        })
    }
}

/// What to write, if anything.
#[derive(Debug, PartialEq)]
pub enum Decision {
    /// No Lease yet: create this one.
    Create(LeaseSpec),
    /// Take or renew it: replace with this one, on the resourceVersion read.
    Update(LeaseSpec),
    /// Another replica holds a live lease.
    Follow { holder: String },
}

/// One replica's view of the Lease.
#[derive(Debug)]
pub struct Elector {
    me: String,
    duration: Duration,
    renew_deadline: Duration,
    /// The record last read, and when (our clock) it was first seen so.
    observed: Option<(Record, Instant)>,
    /// When our last write of the Lease succeeded.
    renewed: Option<Instant>,
}

/// What tells one version of a Lease record from another.
#[derive(Debug, Clone, PartialEq)]
struct Record {
    holder: Option<String>,
    renew_time: Option<MicroTime>,
    transitions: Option<i32>,
    duration_seconds: Option<i32>,
}

impl Record {
    fn of(spec: &LeaseSpec) -> Self {
        Self {
            holder: spec.holder_identity.clone().filter(|h| !h.is_empty()),
            renew_time: spec.renew_time.clone(),
            transitions: spec.lease_transitions,
            duration_seconds: spec.lease_duration_seconds,
        }
    }
}

impl Elector {
    /// `renew_deadline` must be shorter than `duration`.
    pub fn new(me: impl Into<String>, duration: Duration, renew_deadline: Duration) -> Self {
        assert!(renew_deadline < duration, "renew deadline within the lease");
        Self {
            me: me.into(),
            duration,
            renew_deadline,
            observed: None,
            renewed: None,
        }
    }

    /// Given the Lease read (`None`: there is none) at `now` (`wall` for
    /// the times written), what to write.
    pub fn decide(&mut self, lease: Option<&LeaseSpec>, now: Instant, wall: Timestamp) -> Decision {
        let Some(spec) = lease else {
            return Decision::Create(self.spec(None, wall));
        };
        let record = Record::of(spec);
        match &self.observed {
            Some((seen, _)) if *seen == record => {}
            _ => self.observed = Some((record.clone(), now)),
        }
        let since = self.observed.as_ref().expect("just set").1;
        let held_for = spec
            .lease_duration_seconds
            .and_then(|s| u64::try_from(s).ok())
            .map(Duration::from_secs)
            .unwrap_or(self.duration);
        match &record.holder {
            Some(holder) if *holder != self.me && now < since + held_for => Decision::Follow {
                holder: holder.clone(),
            },
            _ => Decision::Update(self.spec(Some(spec), wall)),
        }
    }

    /// The Lease this replica writes: it as holder, renewed at `wall`.
    fn spec(&self, previous: Option<&LeaseSpec>, wall: Timestamp) -> LeaseSpec {
        let mine = previous.and_then(|p| p.holder_identity.as_deref()) == Some(self.me.as_str());
        let transitions = previous.and_then(|p| p.lease_transitions).unwrap_or(0);
        LeaseSpec {
            holder_identity: Some(self.me.clone()),
            lease_duration_seconds: Some(
                i32::try_from(self.duration.as_secs()).unwrap_or(i32::MAX),
            ),
            acquire_time: if mine {
                previous.and_then(|p| p.acquire_time.clone())
            } else {
                Some(MicroTime(wall))
            },
            renew_time: Some(MicroTime(wall)),
            lease_transitions: Some(if mine || previous.is_none() {
                transitions
            } else {
                transitions + 1
            }),
            ..LeaseSpec::default()
        }
    }

    /// [`Elector::new`] with the durations of `timings`.
    pub fn with_timings(me: impl Into<String>, timings: &Timings) -> Self {
        Self::new(me, timings.duration, timings.renew_deadline)
    }

    /// This replica's identity (the holder it writes).
    pub fn identity(&self) -> &str {
        &self.me
    }

    /// Our write was accepted (sent at `sent`, before the API answered).
    pub fn wrote(&mut self, sent: Instant) {
        self.renewed = Some(sent);
    }

    /// Whether this replica leads at `now`: its last accepted write is
    /// younger than the renew deadline. False at once when it is not.
    pub fn leads(&self, now: Instant) -> bool {
        self.renewed
            .is_some_and(|at| now.saturating_duration_since(at) < self.renew_deadline)
    }

    /// When this replica stops leading unless a renewal is accepted first;
    /// None when it does not lead.
    pub fn leads_until(&self) -> Option<Instant> {
        self.renewed.map(|at| at + self.renew_deadline)
    }

    /// Another replica's write won (409, or it holds the lease): stop now.
    pub fn lost(&mut self) {
        self.renewed = None;
    }

    /// The Lease to write when this replica stops (client-go's
    /// `ReleaseOnCancel`): no holder, so that the next replica to look takes
    /// it at once; None when `current` is not ours to release. Stops leading.
    pub fn release(&mut self, current: &LeaseSpec, wall: Timestamp) -> Option<LeaseSpec> {
        self.renewed = None;
        if current.holder_identity.as_deref() != Some(self.me.as_str()) {
            return None;
        }
        Some(LeaseSpec {
            holder_identity: None,
            lease_duration_seconds: Some(1),
            acquire_time: Some(MicroTime(wall)),
            renew_time: Some(MicroTime(wall)),
            lease_transitions: current.lease_transitions,
            ..LeaseSpec::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wall(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    fn spec_of(d: Decision) -> LeaseSpec {
        match d {
            Decision::Create(s) | Decision::Update(s) => s,
            other => panic!("expected a write, got {other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_replica_creates_the_lease_and_renews_it() {
        let mut a = Elector::new("a", LEASE_DURATION, RENEW_DEADLINE);
        let t0 = Instant::now();
        let created = spec_of(a.decide(None, t0, wall(0)));
        assert_eq!(created.holder_identity.as_deref(), Some("a"));
        assert_eq!(created.lease_duration_seconds, Some(15));
        assert_eq!(created.lease_transitions, Some(0));
        assert!(!a.leads(t0), "not before the write is accepted");
        a.wrote(t0);
        assert!(a.leads(t0));
        let t1 = t0 + RETRY_PERIOD;
        let renewed = spec_of(a.decide(Some(&created), t1, wall(2)));
        assert_eq!(renewed.acquire_time, created.acquire_time, "same tenure");
        assert_eq!(renewed.renew_time, Some(MicroTime(wall(2))));
        assert_eq!(renewed.lease_transitions, Some(0));
        // Without an accepted renewal it stops leading at the deadline.
        assert!(a.leads(t0 + RENEW_DEADLINE - Duration::from_millis(1)));
        assert!(!a.leads(t0 + RENEW_DEADLINE));
        a.wrote(t1);
        a.lost();
        assert!(!a.leads(t1), "a lost write stops it at once");
    }

    #[tokio::test(start_paused = true)]
    async fn another_replica_takes_over_only_after_the_lease_stays_unrenewed() {
        let mut a = Elector::new("a", LEASE_DURATION, RENEW_DEADLINE);
        let mut b = Elector::new("b", LEASE_DURATION, RENEW_DEADLINE);
        let t0 = Instant::now();
        let mut lease = spec_of(a.decide(None, t0, wall(0)));
        a.wrote(t0);
        // b sees a live lease, renewed now and then by a.
        assert_eq!(
            b.decide(Some(&lease), t0, wall(0)),
            Decision::Follow { holder: "a".into() }
        );
        let t5 = t0 + Duration::from_secs(5);
        lease = spec_of(a.decide(Some(&lease), t5, wall(5)));
        a.wrote(t5);
        // Renewed at t5: b's clock starts again when it sees the change,
        // whatever the renewTime says.
        let seen = t0 + Duration::from_secs(14);
        assert!(matches!(
            b.decide(Some(&lease), seen, wall(-1000)),
            Decision::Follow { .. }
        ));
        // a dies. Not expired until 15 s after b saw the last change.
        let almost = seen + LEASE_DURATION - Duration::from_millis(1);
        assert!(matches!(
            b.decide(Some(&lease), almost, wall(29)),
            Decision::Follow { .. }
        ));
        assert!(!a.leads(almost), "a stopped leading long before");
        let taken = spec_of(b.decide(Some(&lease), seen + LEASE_DURATION, wall(29)));
        assert_eq!(taken.holder_identity.as_deref(), Some("b"));
        assert_eq!(taken.lease_transitions, Some(1));
        assert_eq!(taken.acquire_time, Some(MicroTime(wall(29))));
    }

    #[test]
    fn timings_are_checked_against_each_other() {
        let s = Duration::from_secs;
        assert_eq!(Timings::new(s(15), s(10), s(2)), Ok(Timings::default()));
        assert!(Timings::new(s(3), s(2), Duration::from_millis(500)).is_ok());
        assert!(matches!(
            Timings::new(s(10), s(10), s(2)),
            Err(TimingsError::RenewDeadline { .. })
        ));
        assert!(matches!(
            Timings::new(s(15), s(10), s(10)),
            Err(TimingsError::RetryPeriod { .. })
        ));
        assert!(matches!(
            Timings::new(s(15), s(10), Duration::ZERO),
            Err(TimingsError::RetryPeriod { .. })
        ));
        for bad in [Duration::from_millis(2500), Duration::ZERO] {
            assert_eq!(
                Timings::new(bad, Duration::from_millis(100), Duration::from_millis(10)),
                Err(TimingsError::Duration(bad))
            );
        }
        assert!(TimingsError::Duration(Duration::from_millis(2500))
            .to_string()
            .contains("whole number of seconds"));
    }

    #[tokio::test(start_paused = true)]
    async fn leadership_ends_at_the_renew_deadline_of_the_last_accepted_write() {
        let mut a = Elector::new("a", LEASE_DURATION, RENEW_DEADLINE);
        assert_eq!(a.leads_until(), None);
        let t0 = Instant::now();
        a.wrote(t0);
        assert_eq!(a.leads_until(), Some(t0 + RENEW_DEADLINE));
        let t1 = t0 + RETRY_PERIOD;
        a.wrote(t1);
        assert_eq!(a.leads_until(), Some(t1 + RENEW_DEADLINE));
        a.lost();
        assert_eq!(a.leads_until(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_leader_releases_only_its_own_lease_and_stops_leading() {
        let mut a = Elector::new("a", LEASE_DURATION, RENEW_DEADLINE);
        let mut b = Elector::new("b", LEASE_DURATION, RENEW_DEADLINE);
        let t0 = Instant::now();
        let mut held = spec_of(a.decide(None, t0, wall(0)));
        held.lease_transitions = Some(2);
        a.wrote(t0);
        assert_eq!(b.release(&held, wall(1)), None, "not b's to release");
        let released = a.release(&held, wall(1)).expect("a holds it");
        assert!(!a.leads(t0), "stops leading before the release is written");
        assert_eq!(released.holder_identity, None);
        assert_eq!(released.lease_transitions, Some(2));
        // The next replica to read it takes it at once, without waiting out
        // a lease duration.
        let taken = spec_of(b.decide(Some(&released), t0, wall(1)));
        assert_eq!(taken.holder_identity.as_deref(), Some("b"));
        assert_eq!(taken.lease_transitions, Some(3));
    }

    #[tokio::test(start_paused = true)]
    async fn a_released_lease_is_taken_at_once() {
        let mut b = Elector::new("b", LEASE_DURATION, RENEW_DEADLINE);
        let released = LeaseSpec {
            holder_identity: Some(String::new()),
            lease_transitions: Some(3),
            ..LeaseSpec::default()
        };
        let taken = spec_of(b.decide(Some(&released), Instant::now(), wall(0)));
        assert_eq!(taken.holder_identity.as_deref(), Some("b"));
        assert_eq!(taken.lease_transitions, Some(4));
    }
}
