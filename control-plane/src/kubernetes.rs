//! The Kubernetes source: one watcher per kind fills the store, and each
//! mesh resource's verdict is written back as its `Accepted` condition.
//!
//! The edges are kube-rs watchers (list, then watch; re-listed after a
//! watch error or an expired resource version, with kube's default
//! back-off). The core is [`Relist`], a pure state machine that applies
//! watch events to the store's map for that kind, and [`crate::status`],
//! which decides what status to write.
//!
//! RBAC (the chart's ClusterRole): `get`, `list`, `watch` on namespaces,
//! services, pods and `discovery.k8s.io` endpointslices; `get`, `list`,
//! `watch` on the four `outrigger.dev` kinds and `patch` on their `/status`.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client, Resource};
use outrigger_runtime::drain;
use serde::de::DeserializeOwned;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use crate::crd::{
    AuthorizationPolicy, DestinationRule, PeerAuthentication, Status, VirtualService,
};
use crate::metrics::Metrics;
use crate::publish::{publish, Debounce};
use crate::server::Published;
use crate::status::needs_write;
use crate::store::{Key, Store};
use crate::translate::{Mesh, Options, Verdict};

/// The field manager of the control plane's status writes.
pub const FIELD_MANAGER: &str = "outrigger-control-plane";

/// One kind's watch events applied to its map in the store, with re-list
/// semantics: objects not listed again after a restart of the watch are
/// gone (they were deleted while the watch was down).
#[derive(Debug)]
pub struct Relist<K> {
    /// The objects listed since the last `Init`, until `InitDone`.
    relisting: Option<BTreeMap<Key, K>>,
}

impl<K> Default for Relist<K> {
    fn default() -> Self {
        Self { relisting: None }
    }
}

impl<K: Resource + Clone + PartialEq> Relist<K> {
    /// Applies one event to `objects`; true when they changed.
    pub fn apply(&mut self, objects: &mut BTreeMap<Key, K>, event: Event<K>) -> bool {
        match event {
            Event::Apply(o) => match Key::of(&o) {
                Some(k) => objects.insert(k, o.clone()).as_ref() != Some(&o),
                None => false,
            },
            Event::Delete(o) => Key::of(&o).is_some_and(|k| objects.remove(&k).is_some()),
            Event::Init => {
                self.relisting = Some(BTreeMap::new());
                false
            }
            Event::InitApply(o) => {
                if let (Some(buf), Some(k)) = (self.relisting.as_mut(), Key::of(&o)) {
                    buf.insert(k, o);
                }
                false
            }
            Event::InitDone => match self.relisting.take() {
                Some(listed) if listed != *objects => {
                    *objects = listed;
                    true
                }
                _ => false,
            },
        }
    }
}

/// The mesh resources as the watch sees them, undecoded: a resource with a
/// field the Rust types do not know must not fail its whole list (kube-rs
/// decodes a list as a whole); it is decoded, or refused by name, at
/// translation ([`State::store`]).
#[derive(Clone, Debug, Default)]
pub struct Raw {
    pub virtual_services: BTreeMap<Key, DynamicObject>,
    pub destination_rules: BTreeMap<Key, DynamicObject>,
    pub authorization_policies: BTreeMap<Key, DynamicObject>,
    pub peer_authentications: BTreeMap<Key, DynamicObject>,
}

/// What the watchers fill: the Kubernetes kinds typed, the mesh kinds raw.
#[derive(Clone, Debug, Default)]
pub struct State {
    pub kube: Store,
    pub raw: Raw,
}

impl State {
    /// The store the translator reads: the mesh resources decoded, and the
    /// ones that do not decode listed in `invalid` with the reason.
    pub fn store(&self) -> Store {
        let mut store = self.kube.clone();
        decode_into(
            &self.raw.virtual_services,
            "VirtualService",
            &mut store.virtual_services,
            &mut store.invalid,
        );
        decode_into(
            &self.raw.destination_rules,
            "DestinationRule",
            &mut store.destination_rules,
            &mut store.invalid,
        );
        decode_into(
            &self.raw.authorization_policies,
            "AuthorizationPolicy",
            &mut store.authorization_policies,
            &mut store.invalid,
        );
        decode_into(
            &self.raw.peer_authentications,
            "PeerAuthentication",
            &mut store.peer_authentications,
            &mut store.invalid,
        );
        store
    }

    fn raw_of(&self, kind: &str) -> Option<&BTreeMap<Key, DynamicObject>> {
        match kind {
            "VirtualService" => Some(&self.raw.virtual_services),
            "DestinationRule" => Some(&self.raw.destination_rules),
            "AuthorizationPolicy" => Some(&self.raw.authorization_policies),
            "PeerAuthentication" => Some(&self.raw.peer_authentications),
            _ => None,
        }
    }
}

fn decode_into<K: DeserializeOwned>(
    raw: &BTreeMap<Key, DynamicObject>,
    kind: &'static str,
    typed: &mut BTreeMap<Key, K>,
    invalid: &mut BTreeMap<(&'static str, Key), String>,
) {
    for (key, obj) in raw {
        let decoded = serde_json::to_value(obj).and_then(serde_json::from_value::<K>);
        match decoded {
            Ok(o) => {
                typed.insert(key.clone(), o);
            }
            Err(e) => {
                invalid.insert((kind, key.clone()), format!("spec: {e}"));
            }
        }
    }
}

/// What the watchers share: their state, a signal that it changed, and the
/// kinds whose first list is complete.
#[derive(Default)]
pub struct Shared {
    pub state: Mutex<State>,
    pub changed: Notify,
    listed: Mutex<std::collections::BTreeSet<String>>,
}

/// How many kinds [`spawn_watchers`] watches.
pub const KINDS: usize = 8;

impl Shared {
    /// Whether every kind has been listed once: before that a translation
    /// would see, say, Services without their EndpointSlices.
    pub fn all_listed(&self) -> bool {
        self.listed.lock().expect("listed lock").len() >= KINDS
    }
}

/// Watches one kind cluster-wide into the store's map `field`, until the
/// process ends. Watch errors are logged and counted; the watcher re-lists
/// after kube's back-off.
async fn watch_kind<K>(
    api: Api<K>,
    kind: &'static str,
    shared: Arc<Shared>,
    metrics: Arc<Metrics>,
    field: fn(&mut State) -> &mut BTreeMap<Key, K>,
) where
    K: Resource + Clone + PartialEq + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let kind = kind.to_string();
    let mut relist = Relist::<K>::default();
    let stream = watcher::watcher(api, watcher::Config::default()).default_backoff();
    futures_util::pin_mut!(stream);
    while let Some(event) = stream.next().await {
        match event {
            Ok(e) => {
                let init_done = matches!(e, Event::InitDone);
                let changed = {
                    let mut state = shared.state.lock().expect("state lock");
                    relist.apply(field(&mut state), e)
                };
                let first_list = init_done
                    && shared
                        .listed
                        .lock()
                        .expect("listed lock")
                        .insert(kind.clone());
                if changed || first_list {
                    shared.changed.notify_one();
                }
            }
            Err(e) => {
                metrics.watch_errors.inc();
                tracing::warn!(%kind, error = %e, "watch failed; re-listing after back-off");
            }
        }
    }
}

/// Starts a watcher for every kind the translator reads.
pub fn spawn_watchers(client: Client, shared: Arc<Shared>, metrics: Arc<Metrics>) {
    macro_rules! watch {
        ($kind:ty, $field:ident) => {
            tokio::spawn(watch_kind::<$kind>(
                Api::all(client.clone()),
                stringify!($kind),
                shared.clone(),
                metrics.clone(),
                |s| &mut s.kube.$field,
            ));
        };
    }
    macro_rules! watch_raw {
        ($kind:ty, $field:ident) => {
            tokio::spawn(watch_kind::<DynamicObject>(
                Api::all_with(client.clone(), &ApiResource::erase::<$kind>(&())),
                stringify!($kind),
                shared.clone(),
                metrics.clone(),
                |s| &mut s.raw.$field,
            ));
        };
    }
    watch!(Namespace, namespaces);
    watch!(Service, services);
    watch!(EndpointSlice, endpoint_slices);
    watch!(Pod, pods);
    watch_raw!(VirtualService, virtual_services);
    watch_raw!(DestinationRule, destination_rules);
    watch_raw!(AuthorizationPolicy, authorization_policies);
    watch_raw!(PeerAuthentication, peer_authentications);
}

/// Translates debounced store changes and publishes them; the statuses
/// that changed are written by a task of their own ([`status_writer`]), so a
/// slow API server never delays a push, and only while `leading` says this
/// replica leads (the Lease election, [`crate::election`]). Publishes
/// nothing (and `/ready` stays 503) until every kind has been listed once,
/// so that proxies never get a partial mesh (Services without endpoints)
/// after a restart.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    client: Client,
    shared: Arc<Shared>,
    options: Options,
    mut debounce: Debounce,
    tx: watch::Sender<Option<Arc<Published>>>,
    leading: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
    stop: drain::Watch,
) {
    let mut in_force: Option<Arc<Mesh>> = None;
    let (statuses, latest) = watch::channel(None);
    tokio::spawn(status_writer(
        client,
        latest,
        leading,
        metrics.clone(),
        stop.clone(),
    ));
    loop {
        let wake = if shared.all_listed() {
            debounce.deadline()
        } else {
            None
        };
        tokio::select! {
            _ = shared.changed.notified() => debounce.changed(Instant::now()),
            _ = async { match wake { Some(w) => tokio::time::sleep_until(w).await, None => std::future::pending().await } } => {}
            _ = stop.signaled() => return,
        }
        if !shared.all_listed() {
            continue;
        }
        if let Some(first) = debounce.take_due(Instant::now()) {
            let state = shared.state.lock().expect("state lock").clone();
            publish(
                &state.store(),
                &options,
                first,
                &tx,
                &metrics,
                &mut in_force,
            );
            if let Some(mesh) = &in_force {
                statuses.send_replace(Some((Arc::new(state), mesh.clone())));
            }
        }
    }
}

/// The state and mesh whose statuses are to be written.
type ToWrite = Option<(Arc<State>, Arc<Mesh>)>;

/// Writes the statuses of the latest published mesh, one resource at a
/// time, while `leading` is true; a newer mesh replaces one still waiting.
/// On gaining the leadership it writes every status that differs from the
/// verdict; on losing it, it stops at once, a write in flight abandoned.
/// Failed writes are tried again after [`STATUS_RETRY`] (or at once when a
/// newer mesh comes).
async fn status_writer(
    client: Client,
    mut latest: watch::Receiver<ToWrite>,
    mut leading: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
    stop: drain::Watch,
) {
    loop {
        tokio::select! {
            r = latest.changed() => if r.is_err() { return },
            r = leading.changed() => if r.is_err() { return },
            _ = stop.signaled() => return,
        }
        loop {
            if !*leading.borrow_and_update() {
                break;
            }
            let Some((state, mesh)) = latest.borrow_and_update().clone() else {
                break;
            };
            let failed = tokio::select! {
                failed = write_statuses(&client, &state, &mesh, &metrics) => failed,
                r = leading.wait_for(|leads| !*leads) => {
                    if r.is_err() { return }
                    break;
                }
                _ = stop.signaled() => return,
            };
            if failed == 0 {
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep(STATUS_RETRY) => {}
                r = latest.changed() => if r.is_err() { return },
                r = leading.changed() => if r.is_err() { return },
                _ = stop.signaled() => return,
            }
        }
    }
}

/// How long after a failed status write the statuses are written again.
pub const STATUS_RETRY: Duration = Duration::from_secs(5);

/// Patches the `status` of every mesh resource whose verdict differs from
/// what it says; returns how many writes failed.
async fn write_statuses(client: &Client, state: &State, mesh: &Mesh, metrics: &Metrics) -> usize {
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let mut failed = 0;
    for (id, verdict) in mesh.verdicts() {
        let Some(obj) = state.raw_of(id.kind).and_then(|m| m.get(&id.key)) else {
            continue;
        };
        match write_one(client, id.kind, &id.key, obj, verdict, &now).await {
            Ok(true) => {
                metrics.status_writes.inc();
            }
            Ok(false) => {}
            Err(e) => {
                failed += 1;
                metrics.status_write_errors.inc();
                tracing::warn!(kind = id.kind, resource = %id.key, error = %e, "cannot write status");
            }
        }
    }
    failed
}

/// Writes one status if it changed; true when it wrote.
async fn write_one(
    client: &Client,
    kind: &str,
    key: &Key,
    obj: &DynamicObject,
    verdict: &Verdict,
    now: &str,
) -> Result<bool, kube::Error> {
    // A status the control plane cannot read is rewritten whole.
    let current: Option<Status> = obj
        .data
        .get("status")
        .and_then(|s| serde_json::from_value(s.clone()).ok());
    let Some(status) = needs_write(verdict, obj.metadata.generation, current.as_ref(), now) else {
        return Ok(false);
    };
    let ar = match kind {
        "VirtualService" => ApiResource::erase::<VirtualService>(&()),
        "DestinationRule" => ApiResource::erase::<DestinationRule>(&()),
        "AuthorizationPolicy" => ApiResource::erase::<AuthorizationPolicy>(&()),
        _ => ApiResource::erase::<PeerAuthentication>(&()),
    };
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &key.namespace, &ar);
    let patch = serde_json::json!({ "status": status });
    tokio::time::timeout(
        Duration::from_secs(10),
        api.patch_status(
            &key.name,
            &PatchParams::apply(FIELD_MANAGER),
            &Patch::Merge(&patch),
        ),
    )
    .await
    .map_err(|_| kube::Error::Service("status write timed out after 10 s".into()))??;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn svc(name: &str, rv: &str) -> Service {
        Service {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("shop".into()),
                resource_version: Some(rv.into()),
                ..ObjectMeta::default()
            },
            ..Service::default()
        }
    }

    fn names(m: &BTreeMap<Key, Service>) -> Vec<String> {
        m.keys().map(|k| k.name.clone()).collect()
    }

    #[test]
    fn apply_and_delete_change_the_map_once() {
        let mut r = Relist::default();
        let mut m = BTreeMap::new();
        assert!(r.apply(&mut m, Event::Apply(svc("a", "1"))));
        assert!(
            !r.apply(&mut m, Event::Apply(svc("a", "1"))),
            "same object: no change"
        );
        assert!(r.apply(&mut m, Event::Apply(svc("a", "2"))));
        assert!(r.apply(&mut m, Event::Delete(svc("a", "2"))));
        assert!(!r.apply(&mut m, Event::Delete(svc("a", "2"))));
        assert!(m.is_empty());
    }

    #[test]
    fn a_relist_replaces_the_map_at_init_done_and_drops_what_was_not_listed() {
        let mut r = Relist::default();
        let mut m = BTreeMap::new();
        r.apply(&mut m, Event::Apply(svc("a", "1")));
        r.apply(&mut m, Event::Apply(svc("b", "1")));
        // The watch broke; while it was down, `a` was deleted and `c` created.
        assert!(!r.apply(&mut m, Event::Init));
        assert!(!r.apply(&mut m, Event::InitApply(svc("b", "1"))));
        assert!(!r.apply(&mut m, Event::InitApply(svc("c", "1"))));
        assert_eq!(
            names(&m),
            ["a", "b"],
            "nothing changes until the list is complete"
        );
        assert!(r.apply(&mut m, Event::InitDone));
        assert_eq!(names(&m), ["b", "c"]);
        // A resync that lists the same objects changes nothing.
        r.apply(&mut m, Event::Init);
        r.apply(&mut m, Event::InitApply(svc("b", "1")));
        r.apply(&mut m, Event::InitApply(svc("c", "1")));
        assert!(!r.apply(&mut m, Event::InitDone));
    }
}
