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

#[cfg(test)]
mod tests {
    //! [`run`] against a mocked API server (kube's tower-test pattern) on a
    //! paused clock: each test answers the elector's requests one by one.

    use super::*;
    use bytes::Bytes;
    use http::{Method, Request, Response, StatusCode};
    use http_body_util::{BodyExt, Full};
    use k8s_openapi::api::coordination::v1::LeaseSpec;
    use serde_json::{json, Value};
    use tower_test::mock::{Handle, SendResponse};

    type Mock = Handle<Request<kube::client::Body>, Response<Full<Bytes>>>;
    type Reply = SendResponse<Response<Full<Bytes>>>;

    const ME: &str = "control-plane-a";
    const PATH: &str =
        "/apis/coordination.k8s.io/v1/namespaces/outrigger-system/leases/outrigger-control-plane-leader";

    struct Elected {
        api: Mock,
        leading: watch::Receiver<bool>,
        metrics: Arc<Metrics>,
        _stop: drain::Signal,
    }

    /// [`run`] with the default timings, against a mock.
    fn start() -> Elected {
        let (mock, api) =
            tower_test::mock::pair::<Request<kube::client::Body>, Response<Full<Bytes>>>();
        let client = Client::new(mock, "default");
        let (tx, leading) = watch::channel(false);
        let metrics = Arc::new(Metrics::new());
        let (stop, watch) = drain::channel();
        let lease = LeaseConfig {
            namespace: "outrigger-system".into(),
            name: LEASE_NAME.into(),
            identity: ME.into(),
            timings: Timings::default(),
        };
        tokio::spawn(run(client, lease, tx, metrics.clone(), watch));
        Elected {
            api,
            leading,
            metrics,
            _stop: stop,
        }
    }

    /// The next request: its method, and its body as JSON (Null if none).
    async fn next(api: &mut Mock) -> (Method, Value, Reply) {
        let (req, reply) = api.next_request().await.expect("a request");
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let expected = if method == Method::POST {
            PATH.rsplit_once('/').unwrap().0
        } else {
            PATH
        };
        assert_eq!(path, expected, "{method} of the Lease");
        let body = req.into_body().collect().await.unwrap().to_bytes();
        let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
        (method, body, reply)
    }

    /// Waits for `leading` to change (bounded: a regression fails, not
    /// hangs) and returns it.
    async fn changed(leading: &mut watch::Receiver<bool>) -> bool {
        let limit = Timings::default().duration * 2;
        tokio::time::timeout(limit, leading.changed())
            .await
            .expect("`leading` never changed")
            .expect("the elector is running");
        *leading.borrow_and_update()
    }

    fn answer(reply: Reply, status: StatusCode, body: &Value) {
        let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
        *response.status_mut() = status;
        reply.send_response(response);
    }

    fn refusal(code: u16, reason: &str) -> Value {
        json!({ "apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
                "message": reason, "reason": reason, "code": code })
    }

    /// The Lease as the API server stores what was sent.
    fn stored(mut sent: Value, version: u32) -> Value {
        sent["apiVersion"] = json!("coordination.k8s.io/v1");
        sent["kind"] = json!("Lease");
        sent["metadata"]["namespace"] = json!("outrigger-system");
        sent["metadata"]["resourceVersion"] = json!(version.to_string());
        sent
    }

    /// The Lease is absent: GET 404, then the POST is accepted. Returns
    /// the Lease stored and when the round was sent.
    async fn create(e: &mut Elected) -> (Value, Instant) {
        let (method, _, reply) = next(&mut e.api).await;
        let sent = Instant::now();
        assert_eq!(method, Method::GET);
        answer(reply, StatusCode::NOT_FOUND, &refusal(404, "NotFound"));
        let (method, body, reply) = next(&mut e.api).await;
        assert_eq!(method, Method::POST);
        assert_eq!(body["spec"]["holderIdentity"], ME);
        let lease = stored(body, 1);
        answer(reply, StatusCode::CREATED, &lease);
        assert!(changed(&mut e.leading).await, "the created Lease is led");
        assert_eq!(Instant::now(), sent, "leading at once");
        assert_eq!(e.metrics.leader.get(), 1);
        (lease, sent)
    }

    /// A renewal round: GET answered with `lease`, the PUT accepted.
    async fn renew(e: &mut Elected, lease: &Value, version: u32) -> (Value, Instant) {
        let (method, _, reply) = next(&mut e.api).await;
        let sent = Instant::now();
        assert_eq!(method, Method::GET);
        answer(reply, StatusCode::OK, lease);
        let (method, body, reply) = next(&mut e.api).await;
        assert_eq!(method, Method::PUT);
        assert_eq!(
            body["metadata"]["resourceVersion"], lease["metadata"]["resourceVersion"],
            "written on the version read"
        );
        let lease = stored(body, version);
        answer(reply, StatusCode::OK, &lease);
        (lease, sent)
    }

    /// Whether another replica, which first read `lease` at `at`, would take
    /// it over at `now`.
    fn rival_takes_over(lease: &Value, at: Instant, now: Instant) -> bool {
        let spec: LeaseSpec = serde_json::from_value(lease["spec"].clone()).unwrap();
        let mut rival = Elector::with_timings("control-plane-b", &Timings::default());
        let wall = Timestamp::now();
        assert!(matches!(
            rival.decide(Some(&spec), at, wall),
            Decision::Follow { .. }
        ));
        !matches!(
            rival.decide(Some(&spec), now, wall),
            Decision::Follow { .. }
        )
    }

    /// The leader's next calls hang: it stops leading exactly at its renew
    /// deadline (the last accepted write's send time + renew deadline),
    /// while the call still hangs, and before a replica that saw that write
    /// may take the Lease over.
    #[tokio::test(start_paused = true)]
    async fn a_hung_api_server_ends_the_leadership_at_the_renew_deadline() {
        let timings = Timings::default();
        let mut e = start();
        let (lease, created) = create(&mut e).await;
        let (lease, sent) = renew(&mut e, &lease, 2).await;
        assert_eq!(sent, created + timings.retry_period);
        assert!(*e.leading.borrow(), "renewed: still leading");

        // The next round's GET is never answered (kept, not dropped).
        let (method, _, _hung) = next(&mut e.api).await;
        assert_eq!(method, Method::GET);
        assert_eq!(Instant::now(), sent + timings.retry_period);
        assert!(!changed(&mut e.leading).await);
        assert_eq!(
            Instant::now(),
            sent + timings.renew_deadline,
            "stopped leading at the renew deadline"
        );
        assert_eq!(e.metrics.leader.get(), 0);
        assert_eq!(e.metrics.leader_changes.get(), 2);
        assert!(
            !rival_takes_over(&lease, sent, Instant::now()),
            "no other replica may take over yet"
        );
        assert!(rival_takes_over(&lease, sent, sent + timings.duration));
        // Nothing else was asked meanwhile: the call still hangs.
        let more = tokio::time::timeout(timings.duration, e.api.next_request()).await;
        assert!(more.is_err(), "no request while the GET hangs");
        assert!(!*e.leading.borrow());
    }

    /// The API server answers every later call with an error: the same.
    #[tokio::test(start_paused = true)]
    async fn a_failing_api_server_ends_the_leadership_at_the_renew_deadline() {
        let timings = Timings::default();
        let mut e = start();
        let (lease, _) = create(&mut e).await;
        let (_, sent) = renew(&mut e, &lease, 2).await;
        let mut failed = 0;
        loop {
            tokio::select! {
                r = next(&mut e.api) => {
                    let (method, _, reply) = r;
                    assert_eq!(method, Method::GET);
                    answer(reply, StatusCode::INTERNAL_SERVER_ERROR, &refusal(500, "InternalError"));
                    failed += 1;
                }
                leads = changed(&mut e.leading) => {
                    assert!(!leads);
                    break;
                }
            }
        }
        assert_eq!(Instant::now(), sent + timings.renew_deadline);
        assert!(failed >= 4, "tried every retry period: {failed}");
        assert_eq!(e.metrics.leader.get(), 0);
    }

    /// A 409 on a renewal (another replica wrote first) ends the
    /// leadership at once.
    #[tokio::test(start_paused = true)]
    async fn a_conflict_on_renewal_ends_the_leadership_at_once() {
        let mut e = start();
        let (lease, _) = create(&mut e).await;
        let (method, _, reply) = next(&mut e.api).await;
        assert_eq!(method, Method::GET);
        answer(reply, StatusCode::OK, &lease);
        let (method, _, reply) = next(&mut e.api).await;
        assert_eq!(method, Method::PUT);
        let refused = Instant::now();
        answer(reply, StatusCode::CONFLICT, &refusal(409, "Conflict"));
        assert!(!changed(&mut e.leading).await);
        assert_eq!(Instant::now(), refused, "stopped leading at once");
        assert_eq!(e.metrics.leader.get(), 0);
        assert_eq!(e.metrics.leader_changes.get(), 2);
    }
}
