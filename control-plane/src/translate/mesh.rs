//! The mesh: every Service, route, rule and policy of the store resolved
//! once per change, with each resource's verdict and the versions in force
//! (which the next rebuild falls back on). [`Mesh::rebuild`] is the order
//! of one translation: Services and their endpoints, then the mesh
//! resources kind by kind through the admission, with what routes in force
//! depend on held back from the store.

use std::collections::{BTreeMap, BTreeSet};

use super::export::{export_of, ExportTo, EXPORT_TO_ANNOTATION};
use super::security::Security;
use super::services::{pod_facts, slices_by_service, MeshService, PodFacts, Workloads};
use super::verdict::Verdict;
use crate::crd::{AuthorizationPolicy, DestinationRule, PeerAuthentication, VirtualService};
use crate::store::{Key, ResourceId, Store};

/// Settings of the translation that come from the control plane's flags.
#[derive(Clone, Debug)]
pub struct Options {
    /// The SPIFFE trust domain: identities are `spiffe://<domain>/ns/<ns>/sa/<sa>`.
    pub trust_domain: String,
    /// The cluster DNS suffix of `name.namespace.svc.<domain>` hosts.
    pub cluster_domain: String,
    /// Who sees a Service that has no export annotation.
    pub default_export_to: ExportTo,
    /// Policies here apply to every namespace (Istio's root namespace).
    pub root_namespace: String,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            trust_domain: "cluster.local".into(),
            cluster_domain: "cluster.local".into(),
            default_export_to: ExportTo::own(),
            root_namespace: "outrigger-system".into(),
        }
    }
}

/// The whole mesh, resolved once per change of the store.
#[derive(Clone, Debug)]
pub struct Mesh {
    pub(super) options: Options,
    pub(super) services: BTreeMap<Key, MeshService>,
    pub(super) pods: BTreeMap<Key, PodFacts>,
    pub(super) verdicts: BTreeMap<ResourceId, Verdict>,
    /// The version of each resource in force (for the next build's fallback).
    pub(super) in_force_dr: BTreeMap<Key, DestinationRule>,
    pub(super) in_force_vs: BTreeMap<Key, VirtualService>,
    pub(super) in_force_ap: BTreeMap<Key, AuthorizationPolicy>,
    pub(super) in_force_pa: BTreeMap<Key, PeerAuthentication>,
    /// Accepted PeerAuthentications and AuthorizationPolicies.
    pub(super) security: Security,
    /// Deleted DestinationRules and Services kept in force because routes
    /// in force use them, with those routes' VirtualServices.
    pub(super) kept_deleted: BTreeMap<ResourceId, BTreeSet<Key>>,
}

/// What a rebuild holds back from the store because routes in force depend
/// on it: a route is applied as last accepted, or not at all, but never
/// left half-resolved so that its traffic spreads where no route sent it.
#[derive(Clone, Debug, Default)]
pub(super) struct Held {
    /// DestinationRule edits that take away a subset a route in force uses:
    /// refused (`SubsetInUse`), and the version in force stays.
    pub(super) edits: BTreeMap<Key, Verdict>,
    /// Deleted DestinationRules whose subsets a route in force uses: their
    /// version in force stays.
    pub(super) rules: BTreeMap<Key, DestinationRule>,
    /// Deleted Services a route in force names: they stay, with no address
    /// and no endpoints, so that what is routed to them answers 503 instead
    /// of going elsewhere.
    pub(super) services: BTreeMap<Key, MeshService>,
}

impl Held {
    pub(super) fn is_empty(&self) -> bool {
        self.edits.is_empty() && self.rules.is_empty() && self.services.is_empty()
    }

    pub(super) fn deleted(&self) -> BTreeSet<ResourceId> {
        let rules = self.rules.keys().map(|k| ResourceId {
            kind: "DestinationRule",
            key: k.clone(),
        });
        let services = self.services.keys().map(|k| ResourceId {
            kind: "Service",
            key: k.clone(),
        });
        rules.chain(services).collect()
    }
}

impl Mesh {
    /// Translates the store with no history: a refused resource applies nothing.
    pub fn build(store: &Store, options: &Options) -> Self {
        Self::rebuild(store, options, None)
    }

    /// Translates the store; a resource refused now that `previous` had in
    /// force keeps that version in force (if it still applies).
    pub fn rebuild(store: &Store, options: &Options, previous: Option<&Mesh>) -> Self {
        let first = Self::build_with(store, options, previous, &Held::default());
        let Some(prev) = previous else {
            return first;
        };
        // What routes in force depend on and the store took away: a
        // DestinationRule edit that drops a subset in use is refused, and a
        // deleted rule or Service they use stays; the mesh is built again
        // with those.
        let mut held = first.held_for_routes(store, prev);
        if held.is_empty() {
            return first;
        }
        loop {
            let mesh = Self::build_with(store, options, previous, &held);
            // A deleted resource stays only while a route in force uses
            // it (a route may have been edited off it in the same change).
            let used: BTreeSet<ResourceId> = mesh.kept_deleted.keys().cloned().collect();
            if used == held.deleted() {
                return mesh;
            }
            held.rules.retain(|k, _| {
                used.contains(&ResourceId {
                    kind: "DestinationRule",
                    key: k.clone(),
                })
            });
            held.services.retain(|k, _| {
                used.contains(&ResourceId {
                    kind: "Service",
                    key: k.clone(),
                })
            });
        }
    }

    fn build_with(store: &Store, options: &Options, previous: Option<&Mesh>, held: &Held) -> Self {
        let pods: BTreeMap<Key, PodFacts> = store
            .pods
            .iter()
            .map(|(k, p)| (k.clone(), pod_facts(p)))
            .collect();
        let mut mesh = Mesh {
            options: options.clone(),
            services: BTreeMap::new(),
            pods,
            verdicts: BTreeMap::new(),
            in_force_dr: BTreeMap::new(),
            in_force_vs: BTreeMap::new(),
            in_force_ap: BTreeMap::new(),
            in_force_pa: BTreeMap::new(),
            security: Security::new(&options.root_namespace),
            kept_deleted: BTreeMap::new(),
        };
        let slices = slices_by_service(store);
        let workloads = Workloads {
            pods: &mesh.pods,
            trust_domain: &options.trust_domain,
        };
        for (key, svc) in &store.services {
            let svc_slices = slices.get(key).map_or(&[][..], Vec::as_slice);
            // A malformed export annotation is reported, and the Service
            // stays visible in its own namespace only.
            let export = export_of(key, svc, &options.default_export_to).unwrap_or_else(|why| {
                mesh.verdicts.insert(
                    ResourceId {
                        kind: "Service",
                        key: key.clone(),
                    },
                    Verdict::refused(
                        "InvalidAnnotation",
                        format!("metadata.annotations[{EXPORT_TO_ANNOTATION}]: {why}; the Service is visible in its own namespace only"),
                    ),
                );
                ExportTo::own().resolve(&key.namespace)
            });
            if let Some(ms) = workloads.resolve_service(store, svc_slices, key, svc, export) {
                mesh.services.insert(key.clone(), ms);
            }
        }
        for (key, gone) in &held.services {
            mesh.services
                .entry(key.clone())
                .or_insert_with(|| gone.clone());
        }
        mesh.refuse_unreadable(store);
        mesh.admit::<DestinationRule>(store, previous, held);
        mesh.admit::<VirtualService>(store, previous, held);
        mesh.explain_held(held);
        mesh.admit::<AuthorizationPolicy>(store, previous, held);
        mesh.admit::<PeerAuthentication>(store, previous, held);
        mesh
    }

    /// Every mesh resource's verdict.
    pub fn verdicts(&self) -> &BTreeMap<ResourceId, Verdict> {
        &self.verdicts
    }

    /// Resolves a host of a resource in `namespace` to a known Service.
    pub(super) fn resolve_host(&self, host: &str, namespace: &str) -> Result<Key, String> {
        if host.contains('*') {
            return Err(format!("{host:?}: wildcard hosts are not supported"));
        }
        let suffix = format!(".svc.{}", self.options.cluster_domain);
        let short = host.strip_suffix(&suffix).unwrap_or(host);
        let key = match short.split('.').collect::<Vec<_>>()[..] {
            [name] => Key::new(namespace, name),
            [name, ns] => Key::new(ns, name),
            _ => {
                return Err(format!(
                    "{host:?} is not a Service name, name.namespace, or \
                     name.namespace.svc.{}",
                    self.options.cluster_domain
                ))
            }
        };
        if self.services.contains_key(&key) {
            Ok(key)
        } else {
            Err(format!(
                "{host:?}: no Service {} in namespace {} (with a virtual address and a TCP port)",
                key.name, key.namespace
            ))
        }
    }
}

/// `name.namespace` (as the translator writes destinations) or `name`
/// (relative to `namespace`) to a key.
pub(super) fn host_key(host: &str, namespace: &str) -> Key {
    match host.split_once('.') {
        Some((name, ns)) => Key::new(ns, name),
        None => Key::new(namespace, host),
    }
}
