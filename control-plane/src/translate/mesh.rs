//! The mesh: every Service, route, rule and policy of the store resolved
//! once per change, with each resource's verdict and the versions in force
//! (which the next rebuild falls back on). [`Mesh::rebuild`] is the order
//! of one translation: Services and their endpoints, then the mesh
//! resources kind by kind through the admission, with what routes in force
//! depend on held back from the store.

use std::collections::{BTreeMap, BTreeSet};

use kube::Resource;

use super::export::{export_of, ExportTo, EXPORT_TO_ANNOTATION};
use super::history::Held;
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
        // Resources that could not be read: refused with the reason, and
        // their version in force before stays.
        for (&(kind, ref key), why) in &store.invalid {
            let verdict = Verdict::refused("InvalidSpec", why.clone());
            let kept = match kind {
                "DestinationRule" => previous
                    .and_then(|p| p.in_force_dr.get(key))
                    .filter(|prev| mesh.apply_destination_rule(key, prev).is_accepted())
                    .map(|prev| mesh.in_force_dr.insert(key.clone(), prev.clone()))
                    .is_some(),
                _ => false,
            };
            mesh.verdicts.insert(
                ResourceId {
                    kind,
                    key: key.clone(),
                },
                if kept {
                    verdict.keeping_previous()
                } else {
                    verdict
                },
            );
        }
        // Deleted rules that routes in force use: first, as the oldest
        // (each was the one in force for its host).
        for (key, dr) in &held.rules {
            if mesh.apply_destination_rule(key, dr).is_accepted() {
                mesh.in_force_dr.insert(key.clone(), dr.clone());
            }
        }
        for (key, dr) in by_age(&store.destination_rules) {
            let prev = previous.and_then(|p| p.in_force_dr.get(key));
            // An edit that broke a route in force (see `held_for_routes`):
            // refused, and the version in force stays.
            let (verdict, in_force) = match (held.edits.get(key), prev) {
                (Some(refusal), Some(p)) => {
                    if mesh.apply_destination_rule(key, p).is_accepted() {
                        (refusal.clone().keeping_previous(), Some(p.clone()))
                    } else {
                        (refusal.clone(), None)
                    }
                }
                _ => mesh.apply_keeping(key, dr, prev, Mesh::apply_destination_rule),
            };
            if let Some(r) = in_force {
                mesh.in_force_dr.insert(key.clone(), r);
            }
            mesh.verdicts.insert(
                ResourceId {
                    kind: "DestinationRule",
                    key: key.clone(),
                },
                verdict,
            );
        }
        mesh.keep_unreadable(
            store,
            "VirtualService",
            previous.map(|p| &p.in_force_vs),
            Mesh::apply_virtual_service,
            |m| &mut m.in_force_vs,
        );
        for (key, vs) in by_age(&store.virtual_services) {
            let prev = previous.and_then(|p| p.in_force_vs.get(key));
            let (verdict, in_force) =
                mesh.apply_keeping(key, vs, prev, Mesh::apply_virtual_service);
            let verdict = match in_force {
                Some(r) => {
                    mesh.in_force_vs.insert(key.clone(), r);
                    verdict
                }
                None => mesh.fail_closed(key, vs, verdict),
            };
            mesh.verdicts.insert(
                ResourceId {
                    kind: "VirtualService",
                    key: key.clone(),
                },
                verdict,
            );
        }
        mesh.explain_held(held);
        // An unreadable edit of a DENY policy must not open the door.
        mesh.keep_unreadable(
            store,
            "AuthorizationPolicy",
            previous.map(|p| &p.in_force_ap),
            |m: &mut Mesh, k: &Key, r: &AuthorizationPolicy| m.security.apply_authorization(k, r),
            |m| &mut m.in_force_ap,
        );
        for (key, ap) in &store.authorization_policies {
            let prev = previous.and_then(|p| p.in_force_ap.get(key));
            let (verdict, in_force) = mesh.apply_keeping(key, ap, prev, |m, k, r| {
                m.security.apply_authorization(k, r)
            });
            if let Some(r) = in_force {
                mesh.in_force_ap.insert(key.clone(), r);
            }
            mesh.verdicts.insert(
                ResourceId {
                    kind: "AuthorizationPolicy",
                    key: key.clone(),
                },
                verdict,
            );
        }
        // An unreadable edit of a STRICT policy must not let plaintext in.
        mesh.keep_unreadable(
            store,
            "PeerAuthentication",
            previous.map(|p| &p.in_force_pa),
            |m: &mut Mesh, k: &Key, r: &PeerAuthentication| {
                m.security.apply_peer_authentication(k, r)
            },
            |m| &mut m.in_force_pa,
        );
        for (key, pa) in by_age(&store.peer_authentications) {
            let prev = previous.and_then(|p| p.in_force_pa.get(key));
            let (verdict, in_force) = mesh.apply_keeping(key, pa, prev, |m, k, r| {
                m.security.apply_peer_authentication(k, r)
            });
            if let Some(r) = in_force {
                mesh.in_force_pa.insert(key.clone(), r);
            }
            mesh.verdicts.insert(
                ResourceId {
                    kind: "PeerAuthentication",
                    key: key.clone(),
                },
                verdict,
            );
        }
        mesh
    }

    /// Resources of `kind` that cannot be read now (their verdict, already
    /// set, says why): the version `previous` had in force stays, if it
    /// still applies, and the verdict says so.
    fn keep_unreadable<R: Clone>(
        &mut self,
        store: &Store,
        kind: &'static str,
        previous: Option<&BTreeMap<Key, R>>,
        apply: fn(&mut Mesh, &Key, &R) -> Verdict,
        in_force: fn(&mut Mesh) -> &mut BTreeMap<Key, R>,
    ) {
        for (k, key) in store.invalid.keys().filter(|(k, _)| *k == kind) {
            let Some(prev) = previous.and_then(|p| p.get(key)) else {
                continue;
            };
            if !apply(self, key, prev).is_accepted() {
                continue;
            }
            in_force(self).insert(key.clone(), prev.clone());
            let id = ResourceId {
                kind: k,
                key: key.clone(),
            };
            if let Some(v) = self.verdicts.remove(&id) {
                self.verdicts.insert(id, v.keeping_previous());
            }
        }
    }

    /// Applies `current`; when it is refused and `previous` (the version in
    /// force before) differs and still applies, that one stays in force.
    /// Returns the verdict on `current` and the version now in force.
    fn apply_keeping<R: Clone + PartialEq>(
        &mut self,
        key: &Key,
        current: &R,
        previous: Option<&R>,
        apply: fn(&mut Mesh, &Key, &R) -> Verdict,
    ) -> (Verdict, Option<R>) {
        let verdict = apply(self, key, current);
        if verdict.is_accepted() {
            return (verdict, Some(current.clone()));
        }
        match previous.filter(|p| *p != current) {
            Some(p) if apply(self, key, p).is_accepted() => {
                (verdict.keeping_previous(), Some(p.clone()))
            }
            _ => (verdict, None),
        }
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

/// Objects oldest first (by creation time, then key): the oldest of two
/// conflicting resources applies, as in Istio.
fn by_age<K: Resource>(map: &BTreeMap<Key, K>) -> Vec<(&Key, &K)> {
    let mut v: Vec<(&Key, &K)> = map.iter().collect();
    v.sort_by(|(ka, a), (kb, b)| {
        let ta = a.meta().creation_timestamp.as_ref().map(|t| t.0);
        let tb = b.meta().creation_timestamp.as_ref().map(|t| t.0);
        // Objects without a time (hand-written) sort after those with one.
        match (ta, tb) {
            (Some(x), Some(y)) => x.cmp(&y).then_with(|| ka.cmp(kb)),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => ka.cmp(kb),
        }
    });
    v
}
