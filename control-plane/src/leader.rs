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
//! Not wired into the binary yet: see the report of issue 18's item 2.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::LeaseSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use tokio::time::Instant;

/// Kubernetes' usual timings (kube-controller-manager, client-go).
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
pub const RENEW_DEADLINE: Duration = Duration::from_secs(10);
pub const RETRY_PERIOD: Duration = Duration::from_secs(2);

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

    /// Another replica's write won (409, or it holds the lease): stop now.
    pub fn lost(&mut self) {
        self.renewed = None;
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
