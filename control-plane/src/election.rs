//! The elector task (Kubernetes mode): drives [`crate::leader::Elector`]
//! against a `coordination.k8s.io/v1` Lease and tells the status writer,
//! through a `watch` of `bool`, whether this replica leads.
//!
//! Every retry period: GET the Lease; POST it when absent; PUT it with the
//! resourceVersion read (so of two writers one gets 409 Conflict) when it is
//! free, expired or ours. A 409, or the Lease held by another, ends the
//! leadership at once; any other error renews nothing this round, and the
//! leadership ends when the renew deadline of the last accepted write
//! passes, even while a call hangs. On stop (SIGTERM) the leader stops
//! leading, then releases the Lease (no holder), so that another replica
//! takes over at its next try instead of a lease duration later.
//!
//! RBAC (the chart's Role `outrigger-control-plane-leader`): `get`,
//! `create`, `update` on `leases` in the Lease's namespace.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::{Api, Client};
use outrigger_runtime::drain;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::leader::{Decision, Elector, Timings};
use crate::metrics::Metrics;

/// The Lease's default name (the chart's Role is not limited to it).
pub const LEASE_NAME: &str = "outrigger-control-plane-leader";

/// Which Lease, who this replica is, and the timings.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    /// This replica's identity: its pod's name.
    pub identity: String,
    pub timings: Timings,
}

/// What one round of the election came to.
#[derive(Debug)]
enum Round {
    /// Our write was accepted: this is the Lease as stored.
    Wrote(Box<Lease>),
    /// Another replica holds a live Lease.
    Follows(String),
    /// Another replica wrote between our read and our write.
    Conflict,
    /// The API server could not be asked, or refused otherwise.
    Failed(kube::Error),
}

/// Reads the Lease and writes what the elector decides.
async fn round(api: &Api<Lease>, name: &str, elector: &mut Elector) -> Round {
    let sent = Instant::now();
    let current = match api.get_opt(name).await {
        Ok(current) => current,
        Err(e) => return Round::Failed(e),
    };
    let spec = current.as_ref().map(|l| l.spec.clone().unwrap_or_default());
    let written = match elector.decide(spec.as_ref(), Instant::now(), Timestamp::now()) {
        Decision::Follow { holder } => {
            elector.lost();
            return Round::Follows(holder);
        }
        Decision::Create(spec) => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(name.to_string()),
                    ..ObjectMeta::default()
                },
                spec: Some(spec),
            };
            api.create(&PostParams::default(), &lease).await
        }
        Decision::Update(spec) => {
            // The metadata read, resourceVersion included: the API server
            // refuses the write if the Lease changed since.
            let metadata = current.map(|l| l.metadata).unwrap_or_default();
            let lease = Lease {
                metadata,
                spec: Some(spec),
            };
            api.replace(name, &PostParams::default(), &lease).await
        }
    };
    match written {
        Ok(lease) => {
            elector.wrote(sent);
            Round::Wrote(Box::new(lease))
        }
        Err(kube::Error::Api(status)) if status.code == 409 => {
            elector.lost();
            Round::Conflict
        }
        Err(e) => Round::Failed(e),
    }
}

/// The leadership as the rest of the control plane sees it: the flag the
/// status writer follows, and the metrics.
struct Leading {
    tx: watch::Sender<bool>,
    metrics: Arc<Metrics>,
}

impl Leading {
    fn set(&self, leads: bool, lease: &LeaseConfig) {
        let changed = self.tx.send_if_modified(|now| {
            let changed = *now != leads;
            *now = leads;
            changed
        });
        if !changed {
            return;
        }
        self.metrics.leader.set(i64::from(leads));
        self.metrics.leader_changes.inc();
        if leads {
            tracing::info!(lease = %lease.name, namespace = %lease.namespace, identity = %lease.identity, "leading: this replica writes the statuses");
        } else {
            tracing::info!(lease = %lease.name, namespace = %lease.namespace, identity = %lease.identity, "not leading: this replica stopped writing statuses");
        }
    }
}

/// Sleeps until `at`, or forever when None.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Runs the election until `stop`, then releases the Lease if this replica
/// holds it. `leading` is true exactly while this replica leads.
pub async fn run(
    client: Client,
    lease: LeaseConfig,
    leading: watch::Sender<bool>,
    metrics: Arc<Metrics>,
    stop: drain::Watch,
) {
    let api: Api<Lease> = Api::namespaced(client, &lease.namespace);
    let mut elector = Elector::with_timings(lease.identity.clone(), &lease.timings);
    let leading = Leading {
        tx: leading,
        metrics,
    };
    leading.set(false, &lease);
    // Our last accepted write, for the release.
    let mut held: Option<Lease> = None;
    let mut followed: Option<String> = None;
    let mut last_error: Option<String> = None;
    loop {
        let deadline = elector.leads_until();
        let outcome = {
            let r = round(&api, &lease.name, &mut elector);
            tokio::pin!(r);
            let mut deadline = deadline;
            loop {
                tokio::select! {
                    outcome = &mut r => break Some(outcome),
                    // The renew deadline passes while the call hangs.
                    _ = sleep_until(deadline) => {
                        leading.set(false, &lease);
                        deadline = None;
                    }
                    _ = stop.signaled() => break None,
                }
            }
        };
        let Some(outcome) = outcome else { break };
        match outcome {
            Round::Wrote(l) => {
                held = Some(*l);
                followed = None;
                last_error = None;
            }
            Round::Follows(holder) => {
                held = None;
                if followed.as_deref() != Some(holder.as_str()) {
                    tracing::info!(lease = %lease.name, %holder, "another replica leads");
                    followed = Some(holder);
                }
            }
            Round::Conflict => {
                held = None;
                tracing::debug!(lease = %lease.name, "another replica wrote the Lease first");
            }
            Round::Failed(e) => {
                let e = e.to_string();
                if last_error.as_ref() != Some(&e) {
                    tracing::warn!(lease = %lease.name, namespace = %lease.namespace, error = %e, "cannot read or write the Lease; tried again every retry period");
                    last_error = Some(e);
                }
            }
        }
        leading.set(elector.leads(Instant::now()), &lease);
        let next = Instant::now() + lease.timings.retry_period;
        let mut deadline = elector.leads_until();
        let stopped = loop {
            tokio::select! {
                _ = tokio::time::sleep_until(next) => break false,
                _ = sleep_until(deadline) => {
                    leading.set(false, &lease);
                    deadline = None;
                }
                _ = stop.signaled() => break true,
            }
        };
        if stopped {
            break;
        }
    }
    // Stop writing first; then hand the Lease over.
    leading.set(false, &lease);
    if let Some(held) = held {
        release(&api, &lease, &mut elector, held).await;
    }
}

/// Writes the Lease without a holder, on the resourceVersion of our last
/// write: if another replica wrote since, the API server refuses it (409)
/// and that replica's Lease stands. Bounded by the retry period, so that a
/// hung API server does not hold up the shutdown.
async fn release(api: &Api<Lease>, lease: &LeaseConfig, elector: &mut Elector, held: Lease) {
    let current: LeaseSpec = held.spec.clone().unwrap_or_default();
    let Some(spec) = elector.release(&current, Timestamp::now()) else {
        return;
    };
    let released = Lease {
        metadata: held.metadata,
        spec: Some(spec),
    };
    let params = PostParams::default();
    let write = api.replace(&lease.name, &params, &released);
    match tokio::time::timeout(
        lease.timings.retry_period.max(Duration::from_secs(1)),
        write,
    )
    .await
    {
        Ok(Ok(_)) => tracing::info!(lease = %lease.name, "released the Lease"),
        Ok(Err(kube::Error::Api(status))) if status.code == 409 => {
            tracing::info!(lease = %lease.name, "the Lease changed hands already; nothing to release");
        }
        Ok(Err(e)) => {
            tracing::warn!(lease = %lease.name, error = %e, "cannot release the Lease; another replica takes it once it expires");
        }
        Err(_) => {
            tracing::warn!(lease = %lease.name, "releasing the Lease timed out; another replica takes it once it expires");
        }
    }
}
