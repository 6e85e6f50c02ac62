//! Last-accepted history: a bad edit never replaces a good config. A
//! resource refused now that was in force before keeps its last accepted
//! version in force (given the previous mesh). And what routes in force
//! depend on is held back from the store: a DestinationRule edit that takes
//! away a subset in use is refused, a deleted DestinationRule whose subsets
//! are in use stays, a deleted Service a route names stays as a tombstone
//! (no address, no endpoints: what is routed there answers 503).

use std::collections::{BTreeMap, BTreeSet};

use outrigger_api::Service;

use super::mesh::Mesh;
use super::services::MeshService;
use super::verdict::Verdict;
use crate::crd::{DestinationRule, VirtualService};
use crate::store::{Key, ResourceId, Store};

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

/// A Service that is gone, as a route in force still sees it: its ports,
/// no address (nothing can dial it) and no endpoints (what is routed to it
/// answers 503).
pub(super) fn tombstone(ms: &MeshService) -> MeshService {
    MeshService {
        export: ms.export.clone(),
        entries: ms
            .entries
            .iter()
            .map(|e| Service {
                addresses: Vec::new(),
                endpoints: Vec::new(),
                ..e.clone()
            })
            .collect(),
        routes: None,
        rule: None,
    }
}

impl Mesh {
    /// What the VirtualServices `prev` had in force, and that this mesh
    /// (built without history's help) leaves with nothing in force, lost
    /// from under them: a subset taken away by a DestinationRule edit (the
    /// edit is refused, naming the route and the subset), a deleted
    /// DestinationRule whose subsets they use, a deleted Service they name.
    pub(super) fn held_for_routes(&self, store: &Store, prev: &Mesh) -> Held {
        let mut held = Held::default();
        for (vs_key, vs) in &prev.in_force_vs {
            let still_there = store.virtual_services.contains_key(vs_key)
                || store
                    .invalid
                    .contains_key(&("VirtualService", vs_key.clone()));
            if self.in_force_vs.contains_key(vs_key) || !still_there {
                continue;
            }
            let hosts: Vec<Key> = vs
                .spec
                .hosts
                .iter()
                .filter_map(|h| prev.resolve_host(h, &vs_key.namespace).ok())
                .collect();
            // With every host it routes gone, so are its routes.
            if hosts.iter().all(|h| !self.services.contains_key(h)) {
                continue;
            }
            let dests = vs.spec.http.iter().flat_map(|r| &r.route).filter_map(|rd| {
                let host = prev
                    .resolve_host(&rd.destination.host, &vs_key.namespace)
                    .ok()?;
                Some((host, rd.destination.subset.as_deref()))
            });
            for (host, subset) in hosts.iter().map(|h| (h.clone(), None)).chain(dests) {
                if !self.services.contains_key(&host) {
                    held.services
                        .entry(host.clone())
                        .or_insert_with(|| tombstone(&prev.services[&host]));
                }
                let Some(subset) = subset else {
                    continue;
                };
                let has = |m: &Mesh| {
                    m.services
                        .get(&host)
                        .and_then(|s| s.rule.as_ref())
                        .is_some_and(|r| r.value.0.iter().any(|s| s.name == subset))
                };
                if has(self) {
                    continue;
                }
                // The rule in force before for this host, that had the subset.
                let Some(rule) = prev.services[&host].rule.as_ref().filter(|_| has(prev)) else {
                    continue;
                };
                let dr_key = &rule.from;
                let Some(before) = prev.in_force_dr.get(dr_key) else {
                    continue;
                };
                match store.destination_rules.get(dr_key) {
                    Some(now) if now != before => {
                        let field = if self
                            .resolve_host(&now.spec.host, &dr_key.namespace)
                            .ok()
                            .as_ref()
                            == Some(&host)
                        {
                            "spec.subsets"
                        } else {
                            "spec.host"
                        };
                        held.edits.entry(dr_key.clone()).or_insert_with(|| {
                            Verdict::refused(
                                "SubsetInUse",
                                format!(
                                    "{field}: subset {subset:?} of {}.{} is removed, but VirtualService \
                                     {vs_key} routes to it; change the VirtualService first",
                                    host.name, host.namespace
                                ),
                            )
                        });
                    }
                    // Unchanged: its host is gone (kept above) or it lost
                    // to another rule.
                    Some(_) => {}
                    // Unreadable now: its version in force stays anyway.
                    None if store
                        .invalid
                        .contains_key(&("DestinationRule", dr_key.clone())) => {}
                    None => {
                        held.rules.insert(dr_key.clone(), before.clone());
                    }
                }
            }
        }
        held
    }

    /// The deleted resources `held` kept that the VirtualServices in force
    /// use, and their verdicts amended to say so: the VirtualService as
    /// written names what no longer exists, and what it names stays in
    /// force, as last accepted, while it does.
    pub(super) fn explain_held(&mut self, held: &Held) {
        if held.rules.is_empty() && held.services.is_empty() {
            return;
        }
        let mut amended = Vec::new();
        for (vs_key, vs) in &self.in_force_vs {
            let uses = self.held_uses(held, vs_key, vs);
            if !uses.is_empty() {
                amended.push((vs_key.clone(), uses));
            }
        }
        for (vs_key, uses) in amended {
            let reason = if uses.iter().any(|(id, _)| id.kind == "DestinationRule") {
                "UnknownSubset"
            } else {
                "UnknownHost"
            };
            let mut notes: Vec<String> = Vec::new();
            for (id, note) in uses {
                self.kept_deleted
                    .entry(id)
                    .or_default()
                    .insert(vs_key.clone());
                notes.push(note);
            }
            let id = ResourceId {
                kind: "VirtualService",
                key: vs_key,
            };
            let verdict = match self.verdicts.remove(&id) {
                Some(Verdict::Refused { reason, message }) => Verdict::Refused {
                    reason,
                    message: format!("{message}; {}", notes.join("; ")),
                },
                _ => Verdict::refused(reason, notes.join("; ")),
            };
            self.verdicts.insert(id, verdict);
        }
    }

    /// The held deleted resources the VirtualService `vs` (in force) uses,
    /// each once, with a note naming the first field that uses it.
    fn held_uses(
        &self,
        held: &Held,
        vs_key: &Key,
        vs: &VirtualService,
    ) -> Vec<(ResourceId, String)> {
        let mut uses: Vec<(ResourceId, String)> = Vec::new();
        let mut add = |id: ResourceId, note: String| {
            if !uses.iter().any(|(u, _)| *u == id) {
                uses.push((id, note));
            }
        };
        let service = |field: &str, key: &Key, then: &str| {
            held.services.contains_key(key).then(|| {
                (
                    ResourceId {
                        kind: "Service",
                        key: key.clone(),
                    },
                    format!(
                        "{field}: Service {key} is deleted (or has no virtual address and TCP \
                         port any more); {then}"
                    ),
                )
            })
        };
        for (i, route) in vs.spec.http.iter().enumerate() {
            for (j, rd) in route.route.iter().enumerate() {
                let field = format!("spec.http[{i}].route[{j}].destination");
                let Ok(dest) = self.resolve_host(&rd.destination.host, &vs_key.namespace) else {
                    continue;
                };
                let then = "it stays in the routes with no endpoints, so requests routed to \
                            it get 503, while routes in force use it";
                if let Some((id, note)) = service(&format!("{field}.host"), &dest, then) {
                    add(id, note);
                }
                let Some(subset) = &rd.destination.subset else {
                    continue;
                };
                let Some(rule) = self.services[&dest].rule.as_ref() else {
                    continue;
                };
                if held.rules.contains_key(&rule.from) {
                    add(
                        ResourceId {
                            kind: "DestinationRule",
                            key: rule.from.clone(),
                        },
                        format!(
                            "{field}.subset: subset {subset:?} of {}.{} is defined by \
                             DestinationRule {}, which is deleted; its last accepted version \
                             stays in force while routes in force use it",
                            dest.name, dest.namespace, rule.from
                        ),
                    );
                }
            }
        }
        for (i, h) in vs.spec.hosts.iter().enumerate() {
            if let Ok(key) = self.resolve_host(h, &vs_key.namespace) {
                let then = "nothing can dial it, and this VirtualService stays in force for its \
                            other hosts";
                if let Some((id, note)) = service(&format!("spec.hosts[{i}]"), &key, then) {
                    add(id, note);
                }
            }
        }
        uses
    }

    /// Deleted DestinationRules and Services kept in force because routes
    /// in force use them, each with the VirtualServices whose routes do.
    pub fn kept_deleted(&self) -> &BTreeMap<ResourceId, BTreeSet<Key>> {
        &self.kept_deleted
    }
}
