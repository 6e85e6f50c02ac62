//! The control plane's HA mode: replicas started from the chart's
//! Deployment (values-ha.yaml) against the stand-in API server elect one
//! status writer with a `coordination.k8s.io/v1` Lease. Exactly one holds
//! it and only that one writes statuses; a leader killed without warning
//! (SIGKILL) is replaced once its Lease expires, and the successor writes
//! the next status; a leader stopped (SIGTERM) releases the Lease (its last
//! write clears the holder) and a follower takes it at its next try, over
//! that released version, as the stand-in's history of Lease writes shows.
//!
//! The election's timings are shortened by flags (4 s / 2 s / 500 ms) so
//! that the test takes seconds. Needs the Helm engine, as the chart tests.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use outrigger_tests::chart::{
    fake_api_server, merge_values, render_or_skip, test_ca, ApiRequest, Container, FakeApi,
    LeaseWrite, Rendered,
};
use outrigger_tests::{eventually, metric, try_get, workspace_bin};
use serde_json::{json, Value};
use tokio::time::Instant;

const NAMESPACE: &str = "outrigger-system";
const LEASE: &str =
    "/apis/coordination.k8s.io/v1/namespaces/outrigger-system/leases/outrigger-control-plane-leader";
const VIRTUAL_SERVICES: &str = "/apis/outrigger.dev/v1alpha1/virtualservices";
const WEB: &str = "/apis/outrigger.dev/v1alpha1/namespaces/shop/virtualservices/web";
const LEASE_DURATION: Duration = Duration::from_secs(4);
const RETRY_PERIOD: Duration = Duration::from_millis(500);
/// Long enough for anything here to happen on a loaded machine.
const PATIENCE: Duration = Duration::from_secs(60);

/// One control-plane replica: its pod's name (its identity in the Lease,
/// and its bearer token at the stand-in API server) and its process.
struct Replica {
    name: String,
    container: Container,
}

impl Replica {
    fn start(r: &Rendered, api: &FakeApi, name: &str) -> Replica {
        let deployment = r.get("Deployment", "outrigger-control-plane");
        let mut pod = deployment["spec"]["template"].clone();
        pod["metadata"]["name"] = json!(name);
        pod["metadata"]["namespace"] = json!(NAMESPACE);
        let args = pod["spec"]["containers"][0]["args"].as_array_mut().unwrap();
        for flag in [
            "--leader-elect-lease-duration=4s",
            "--leader-elect-renew-deadline=2s",
            "--leader-elect-retry-period=500ms",
        ] {
            args.push(json!(flag));
        }
        let kubeconfig = api.kubeconfig_as(name);
        let binary = workspace_bin("outrigger-control-plane").expect("the control-plane binary");
        let container = Container::start_in_pod(
            r,
            &pod,
            "control-plane",
            &binary,
            &[("KUBECONFIG", kubeconfig.to_str().unwrap())],
            &[],
            None,
        );
        Replica {
            name: name.to_string(),
            container,
        }
    }

    fn metrics_addr(&self) -> SocketAddr {
        self.container.ports["metrics"]
    }

    /// Its `outrigger_cp_leader` and `outrigger_cp_leader_changes_total`;
    /// None while its metrics do not answer.
    async fn leadership(&self) -> Option<(f64, f64)> {
        match try_get(self.metrics_addr(), "/metrics").await {
            Ok((200, text)) => Some((
                metric(&text, "outrigger_cp_leader", &[]),
                metric(&text, "outrigger_cp_leader_changes_total", &[]),
            )),
            _ => None,
        }
    }

    async fn leads(&self) -> bool {
        matches!(self.leadership().await, Some((l, _)) if l == 1.0)
    }

    async fn follows(&self) -> bool {
        matches!(self.leadership().await, Some((l, _)) if l == 0.0)
    }
}

fn holder(api: &FakeApi) -> Option<String> {
    api.object(LEASE)?["spec"]["holderIdentity"]
        .as_str()
        .filter(|h| !h.is_empty())
        .map(str::to_string)
}

/// Who wrote the VirtualService's status, in order.
fn status_writers(seen: &[ApiRequest]) -> Vec<String> {
    seen.iter()
        .filter(|q| q.method == "PATCH" && q.path == format!("{WEB}/status"))
        .map(|q| q.token.clone())
        .collect()
}

fn observed_generation(api: &FakeApi) -> Option<i64> {
    api.object(WEB)?["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Accepted")?["observedGeneration"]
        .as_i64()
}

/// A new generation of the VirtualService (as an edit of its spec makes
/// it), which every replica watches.
fn bump_generation(api: &FakeApi, generation: i64) {
    let mut web = api.object(WEB).expect("the VirtualService");
    web["metadata"]["generation"] = json!(generation);
    api.replace(VIRTUAL_SERVICES, web);
}

fn logs(replicas: &[&Replica]) -> String {
    replicas
        .iter()
        .map(|r| format!("--- {}:\n{}", r.name, r.container.logs()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Waits until `replica` leads and every other follows, as their metrics
/// say, and the Lease names it.
async fn wait_sole_leader(api: &FakeApi, leader: &Replica, others: &[&Replica], what: &str) {
    let settled = eventually(PATIENCE, || async {
        if holder(api).as_deref() != Some(leader.name.as_str()) || !leader.leads().await {
            return false;
        }
        for o in others {
            if !o.follows().await {
                return false;
            }
        }
        true
    })
    .await;
    let mut all = vec![leader];
    all.extend(others);
    assert!(
        settled,
        "{what}: {} never led alone (Lease holder {:?})\n{}",
        leader.name,
        holder(api),
        logs(&all)
    );
}

#[tokio::test]
async fn one_replica_writes_statuses_and_another_takes_over_when_it_goes() {
    let (cert, key) = test_ca();
    let ha_file = outrigger_tests::chart::chart_dir().join("values-ha.yaml");
    let mut values: Value =
        serde_saphyr::from_str(&std::fs::read_to_string(&ha_file).unwrap()).unwrap();
    merge_values(
        &mut values,
        json!({ "identity": { "ca": { "cert": cert, "key": key } } }),
    );
    let Some(r) = render_or_skip(values, "outrigger", NAMESPACE) else {
        return;
    };
    let scratch = tempfile::tempdir().unwrap();
    let web = json!({
        "apiVersion": "outrigger.dev/v1alpha1", "kind": "VirtualService",
        "metadata": { "name": "web", "namespace": "shop", "resourceVersion": "1",
                      "generation": 1, "uid": "vs-1" },
        "spec": { "hosts": ["web"], "http": [{ "route": [{ "destination": { "host": "web" } }] }] }
    });
    let api = fake_api_server(
        BTreeMap::from([(VIRTUAL_SERVICES.to_string(), vec![web])]),
        scratch.path(),
    )
    .await;

    // Two replicas, as the Deployment's pods: distinct names.
    let a = Replica::start(&r, &api, "outrigger-control-plane-7c9d5-aaaaa");
    let b = Replica::start(&r, &api, "outrigger-control-plane-7c9d5-bbbbb");
    let elected = eventually(PATIENCE, || async {
        holder(&api).is_some() && observed_generation(&api) == Some(1)
    })
    .await;
    assert!(
        elected,
        "no leader wrote the status: {:?}\n{}",
        api.seen(),
        logs(&[&a, &b])
    );
    let first = holder(&api).unwrap();
    let (leader, follower) = if first == a.name { (&a, &b) } else { (&b, &a) };
    wait_sole_leader(&api, leader, &[follower], "at start").await;
    let lease = api.object(LEASE).unwrap();
    assert_eq!(lease["spec"]["leaseDurationSeconds"], 4);
    assert_eq!(lease["spec"]["leaseTransitions"], 0);

    // A new generation: one status write, by the leader.
    bump_generation(&api, 2);
    let written = eventually(PATIENCE, || async { observed_generation(&api) == Some(2) }).await;
    assert!(
        written,
        "generation 2 never got its status\n{}",
        logs(&[&a, &b])
    );
    // Both replicas see the status written (the follower's store too), and
    // then neither writes again: one write per generation.
    let writers = status_writers(&api.seen());
    assert_eq!(
        writers,
        [leader.name.clone(), leader.name.clone()],
        "one status write per generation, by the leader"
    );

    // The leader is killed: nothing runs on its way out. The follower
    // takes over only once the Lease has stayed unrenewed for its duration
    // (less the retry period in which it last read it), never earlier.
    let killed = Instant::now();
    leader.container.kill();
    let took_over = eventually(PATIENCE, || async {
        holder(&api).as_deref() == Some(follower.name.as_str()) && follower.leads().await
    })
    .await;
    let after_kill = killed.elapsed();
    assert!(
        took_over,
        "{} never took over\n{}",
        follower.name,
        logs(&[follower])
    );
    assert!(
        after_kill >= LEASE_DURATION - RETRY_PERIOD * 2,
        "taken over {after_kill:?} after the leader's death, before its Lease of {LEASE_DURATION:?} expired"
    );
    assert_eq!(api.object(LEASE).unwrap()["spec"]["leaseTransitions"], 1);
    let before_kill = status_writers(&api.seen());
    assert_eq!(before_kill.len(), 2, "nothing written while no one led");
    // The next status is the successor's.
    bump_generation(&api, 3);
    let written = eventually(PATIENCE, || async { observed_generation(&api) == Some(3) }).await;
    assert!(
        written,
        "generation 3 never got its status\n{}",
        logs(&[follower])
    );
    let writers = status_writers(&api.seen());
    assert_eq!(
        &writers[2..],
        std::slice::from_ref(&follower.name),
        "{writers:?}"
    );
    let successor = follower;

    // A third replica joins and follows; the leader is stopped as the
    // kubelet stops it (SIGTERM), releases the Lease, and the newcomer
    // takes it at its next try instead of a lease duration later.
    let c = Replica::start(&r, &api, "outrigger-control-plane-7c9d5-ccccc");
    wait_sole_leader(&api, successor, &[&c], "with a third replica").await;
    let stopped = Instant::now();
    let status = successor.container.terminate(PATIENCE).await;
    assert!(status.success(), "{status}\n{}", successor.container.logs());
    let handed = eventually(PATIENCE, || async {
        holder(&api).as_deref() == Some(c.name.as_str()) && c.leads().await
    })
    .await;
    let handover = stopped.elapsed();
    eprintln!("taken over {after_kill:?} after SIGKILL; handed over {handover:?} after SIGTERM");
    assert!(
        handed,
        "{} never took over\n{}",
        c.name,
        logs(&[&c, successor])
    );
    // The proof of the handover is the Lease's history: the stopped
    // leader's last write released it (no holder), on the version of its
    // own last renewal, and the newcomer's take-over was written over that
    // released version, with nothing in between.
    let writes = api.lease_writes(LEASE);
    let history = || {
        writes
            .iter()
            .map(|w| {
                format!(
                    "{} by {} on {:?} -> {}",
                    w.method, w.token, w.on_version, w.stored["spec"]
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    let released = writes
        .iter()
        .rposition(|w| w.token == successor.name)
        .expect("the stopped leader wrote the Lease");
    let release = &writes[released];
    let version = |w: &LeaseWrite| w.stored["metadata"]["resourceVersion"].clone();
    assert_eq!(release.method, "PUT", "{}", history());
    assert!(
        release.stored["spec"]["holderIdentity"]
            .as_str()
            .unwrap_or_default()
            .is_empty(),
        "the stopped leader's last write clears the holder:\n{}",
        history()
    );
    let renewal = &writes[released - 1];
    assert_eq!(
        (
            renewal.token.as_str(),
            renewal.stored["spec"]["holderIdentity"].as_str()
        ),
        (successor.name.as_str(), Some(successor.name.as_str())),
        "the release follows the leader's own renewal:\n{}",
        history()
    );
    assert_eq!(
        release.on_version.as_ref().map(|v| json!(v)),
        Some(version(renewal)),
        "released on the version it last wrote:\n{}",
        history()
    );
    let takeover = writes
        .get(released + 1)
        .unwrap_or_else(|| panic!("no write after the release:\n{}", history()));
    assert_eq!(
        (takeover.method.as_str(), takeover.token.as_str()),
        ("PUT", c.name.as_str()),
        "{}",
        history()
    );
    assert_eq!(
        takeover.on_version.as_ref().map(|v| json!(v)),
        Some(version(release)),
        "the take-over is written over the released version:\n{}",
        history()
    );
    assert_eq!(takeover.stored["spec"]["holderIdentity"], json!(c.name));
    // Nothing asked by the stopped leader after its release.
    let last = api
        .seen()
        .into_iter()
        .rfind(|q| q.token == successor.name)
        .unwrap();
    assert_eq!(
        (last.method.as_str(), last.path.as_str()),
        ("PUT", LEASE),
        "the stopped leader's last request is the release"
    );
    // A sanity bound only (the history above is the proof): an expiry
    // would take the whole lease duration.
    assert!(
        handover < LEASE_DURATION,
        "the handover took {handover:?}: as long as an expiry\n{}",
        successor.container.logs()
    );
    assert_eq!(api.object(LEASE).unwrap()["spec"]["leaseTransitions"], 2);
    bump_generation(&api, 4);
    let written = eventually(PATIENCE, || async { observed_generation(&api) == Some(4) }).await;
    assert!(
        written,
        "generation 4 never got its status\n{}",
        logs(&[&c])
    );
    let writers = status_writers(&api.seen());
    assert_eq!(&writers[3..], std::slice::from_ref(&c.name), "{writers:?}");
    let (leader_now, changes) = c.leadership().await.unwrap();
    assert_eq!((leader_now, changes), (1.0, 1.0), "c gained the lead once");

    // Everything every replica asked was granted by the chart's RBAC: the
    // Lease through the Role in the release's namespace.
    let grants = r.grants("outrigger-control-plane", NAMESPACE);
    grants.assert_allow("outrigger-control-plane", &api.seen());
    assert!(api
        .seen()
        .iter()
        .any(|q| q.method == "POST" && q.path.ends_with("/leases")));
}
