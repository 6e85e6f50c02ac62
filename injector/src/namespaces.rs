//! The namespaces' annotations, kept from a watch, so that an admission
//! never waits on the API server. [`Namespaces::apply`] takes the
//! watcher's events (pure bookkeeping); [`watch`] is the edge.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Namespace as KubeNamespace;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client};

use crate::inject::Namespace;

/// Namespace name → annotations.
#[derive(Default)]
pub struct Namespaces {
    known: RwLock<HashMap<String, BTreeMap<String, String>>>,
    /// Filled during a re-list, swapped in when it is complete.
    relisting: RwLock<Option<HashMap<String, BTreeMap<String, String>>>>,
    synced: std::sync::atomic::AtomicBool,
}

impl Namespaces {
    /// A fixed set (tests, and the injector's local mode).
    pub fn fixed(items: impl IntoIterator<Item = Namespace>) -> Self {
        let ns = Self::default();
        *ns.known.write().unwrap_or_else(|p| p.into_inner()) =
            items.into_iter().map(|n| (n.name, n.annotations)).collect();
        ns.synced.store(true, std::sync::atomic::Ordering::Release);
        ns
    }

    /// The namespace `name`: with its annotations when it is known, with
    /// none otherwise (then only the pod's own annotation can enable it).
    pub fn get(&self, name: &str) -> (Namespace, bool) {
        let known = self.known.read().unwrap_or_else(|p| p.into_inner());
        match known.get(name) {
            Some(a) => (
                Namespace {
                    name: name.into(),
                    annotations: a.clone(),
                },
                true,
            ),
            None => (
                Namespace {
                    name: name.into(),
                    annotations: BTreeMap::new(),
                },
                false,
            ),
        }
    }

    /// Whether the first list has been seen (the injector is ready then).
    pub fn is_synced(&self) -> bool {
        self.synced.load(std::sync::atomic::Ordering::Acquire)
    }

    /// One watcher event.
    pub fn apply(&self, event: Event<KubeNamespace>) {
        let entry = |n: &KubeNamespace| {
            n.metadata
                .name
                .clone()
                .map(|name| (name, n.metadata.annotations.clone().unwrap_or_default()))
        };
        match event {
            Event::Apply(n) => {
                if let Some((k, v)) = entry(&n) {
                    self.known
                        .write()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(k, v);
                }
            }
            Event::Delete(n) => {
                if let Some((k, _)) = entry(&n) {
                    self.known
                        .write()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&k);
                }
            }
            Event::Init => {
                *self.relisting.write().unwrap_or_else(|p| p.into_inner()) = Some(HashMap::new());
            }
            Event::InitApply(n) => {
                if let (Some((k, v)), Some(staging)) = (
                    entry(&n),
                    self.relisting
                        .write()
                        .unwrap_or_else(|p| p.into_inner())
                        .as_mut(),
                ) {
                    staging.insert(k, v);
                }
            }
            Event::InitDone => {
                if let Some(full) = self
                    .relisting
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .take()
                {
                    *self.known.write().unwrap_or_else(|p| p.into_inner()) = full;
                }
                self.synced
                    .store(true, std::sync::atomic::Ordering::Release);
            }
        }
    }
}

/// Keeps `namespaces` current from the cluster until the process ends;
/// watch errors are logged and the watcher re-lists with back-off.
pub async fn watch(client: Client, namespaces: Arc<Namespaces>) {
    let api: Api<KubeNamespace> = Api::all(client);
    let mut stream = watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    while let Some(event) = stream.next().await {
        match event {
            Ok(e) => namespaces.apply(e),
            Err(e) => tracing::warn!(error = %e, "namespace watch failed; re-listing"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::api::ObjectMeta;

    fn ns(name: &str, inject: Option<&str>) -> KubeNamespace {
        KubeNamespace {
            metadata: ObjectMeta {
                name: Some(name.into()),
                annotations: inject
                    .map(|v| BTreeMap::from([("outrigger.dev/inject".into(), v.into())])),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn lists_and_watch_events_keep_the_annotations() {
        let n = Namespaces::default();
        assert!(!n.is_synced());
        n.apply(Event::Init);
        n.apply(Event::InitApply(ns("shop", Some("enabled"))));
        n.apply(Event::InitApply(ns("gone", None)));
        assert!(!n.get("shop").1, "not in force before the list is complete");
        n.apply(Event::InitDone);
        assert!(n.is_synced());
        let (shop, known) = n.get("shop");
        assert!(known);
        assert_eq!(shop.annotations["outrigger.dev/inject"], "enabled");
        n.apply(Event::Apply(ns("shop", Some("disabled"))));
        assert_eq!(
            n.get("shop").0.annotations["outrigger.dev/inject"],
            "disabled"
        );
        n.apply(Event::Delete(ns("shop", None)));
        assert!(!n.get("shop").1);
        // A re-list drops what it no longer lists.
        n.apply(Event::Init);
        n.apply(Event::InitApply(ns("billing", None)));
        n.apply(Event::InitDone);
        assert!(!n.get("gone").1);
        assert!(n.get("billing").1);
        let (unknown, known) = n.get("new");
        assert!(!known && unknown.annotations.is_empty());
    }
}
