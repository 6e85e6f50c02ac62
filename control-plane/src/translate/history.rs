//! Last-accepted history across resources: a route in force is applied as
//! last accepted or not at all, never left half-resolved. So what routes
//! in force depend on is held back from the store: a DestinationRule edit
//! that takes away a subset in use is refused, a deleted DestinationRule
//! whose subsets are in use stays, a deleted Service a route names stays
//! as a tombstone (no address, no endpoints: what is routed there answers
//! 503); the verdicts of those routes say so. (One refused resource falling
//! back on its own last accepted version is the admission's work.)

use std::collections::{BTreeMap, BTreeSet};

use outrigger_api::Service;

use super::mesh::{Held, Mesh};
use super::services::MeshService;
use super::verdict::Verdict;
use crate::crd::VirtualService;
use crate::store::{Key, ResourceId, Store};

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

#[cfg(test)]
mod tests {
    use outrigger_api::Service;

    use crate::translate::fixtures::*;
    use crate::translate::{Mesh, Options, ProxyId, Verdict, PREVIOUS_STAYS};

    #[test]
    fn a_destination_rule_edit_that_drops_a_subset_in_use_is_refused() {
        let (dr, vs) = CANARY.split_once("---").unwrap();
        let good = mesh(&format!("{REVIEWS}---{CANARY}"));
        let dr_v1_only = dr.replace("    - { name: v2, labels: { version: v2 } }\n", "");
        assert_ne!(dr_v1_only, dr);
        // The rule loses v2 while the route still sends 25 % there.
        let edited = store(&format!("{REVIEWS}---{dr_v1_only}---{vs}"));
        let next = Mesh::rebuild(&edited, &Options::default(), Some(&good));
        let (reason, message) = refused(verdict(&next, "DestinationRule", "shop", "reviews"));
        assert_eq!(reason, "SubsetInUse");
        assert!(
            message.starts_with("spec.subsets: subset \"v2\" of reviews.shop is removed, but VirtualService shop/reviews routes to it")
                && message.ends_with(&format!("({PREVIOUS_STAYS})")),
            "{message}"
        );
        assert_eq!(
            verdict(&next, "VirtualService", "shop", "reviews"),
            Verdict::Accepted,
            "the route keeps working"
        );
        let c = config(&next, "shop", "productpage-1");
        let reviews = service(&c, "reviews");
        assert_eq!(reviews.subsets.len(), 2, "both subsets stay");
        // Route first, then rule (or both at once): taken.
        let vs_v1_only = vs.replace("          weight: 75\n", "").replace(
            "        - destination: { host: reviews, subset: v2 }\n          weight: 25\n",
            "",
        );
        let both = store(&format!("{REVIEWS}---{dr_v1_only}---{vs_v1_only}"));
        let after = Mesh::rebuild(&both, &Options::default(), Some(&next));
        assert_accepted(&after, "DestinationRule", "shop", "reviews");
        assert_accepted(&after, "VirtualService", "shop", "reviews");
        let c = config(&after, "shop", "productpage-1");
        let reviews = service(&c, "reviews");
        assert_eq!(reviews.subsets.len(), 1);
        assert_eq!(reviews.http[0].route.len(), 1);
    }

    #[test]
    fn a_destination_rule_moved_to_another_host_under_a_route_is_refused() {
        let (dr, vs) = CANARY.split_once("---").unwrap();
        let good = mesh(&format!("{REVIEWS}---{CANARY}"));
        let moved = dr.replace("host: reviews", "host: ratings");
        let next = rebuild(&format!("{REVIEWS}---{moved}---{vs}"), &good);
        let (reason, message) = refused(verdict(&next, "DestinationRule", "shop", "reviews"));
        assert_eq!(reason, "SubsetInUse");
        assert!(
            message.starts_with("spec.host: subset \"v1\" of reviews.shop is removed"),
            "{message}"
        );
        assert_accepted(&next, "VirtualService", "shop", "reviews");
    }

    #[test]
    fn the_route_in_force_counts_not_a_refused_edit_of_it() {
        let (dr, vs) = CANARY.split_once("---").unwrap();
        let good = mesh(&format!("{REVIEWS}---{CANARY}"));
        let dr_v1_only = dr.replace("    - { name: v2, labels: { version: v2 } }\n", "");
        // The route's edit drops v2 but is refused for another reason: the
        // version in force (which sends to v2) stays, so v2 must stay too.
        let vs_broken = vs.replace("host: reviews, subset: v2", "host: nowhere, subset: v2");
        let next = rebuild(&format!("{REVIEWS}---{dr_v1_only}---{vs_broken}"), &good);
        assert_eq!(
            refused(verdict(&next, "DestinationRule", "shop", "reviews")).0,
            "SubsetInUse"
        );
        let c = config(&next, "shop", "productpage-1");
        let reviews = service(&c, "reviews");
        assert_eq!(
            reviews.http[0].route.len(),
            2,
            "the route in force still applies"
        );
        assert_eq!(reviews.subsets.len(), 2);
    }

    #[test]
    fn a_route_that_applies_nothing_does_not_hold_a_rule_back() {
        let (dr, vs) = CANARY.split_once("---").unwrap();
        // A second route for the same host, refused (Conflict: the oldest
        // wins), that sends to v2: it is not in force, so it does not count.
        let other = vs
            .replace(
                "name: reviews, namespace: shop",
                "name: reviews-old, namespace: shop",
            )
            .replace("subset: v1 }", "subset: v2 }");
        let before = format!("{REVIEWS}---{dr}---{vs}---{other}");
        let good = mesh(&before);
        assert_eq!(
            refused(verdict(&good, "VirtualService", "shop", "reviews-old")).0,
            "Conflict"
        );
        let vs_v1_only = vs.replace("subset: v2 }", "subset: v1 }");
        let dr_v1_only = dr.replace("    - { name: v2, labels: { version: v2 } }\n", "");
        let next = rebuild(
            &format!("{REVIEWS}---{dr_v1_only}---{vs_v1_only}---{other}"),
            &good,
        );
        assert_accepted(&next, "DestinationRule", "shop", "reviews");
        assert_accepted(&next, "VirtualService", "shop", "reviews");
    }

    /// The deleted resources kept in force, as `kind key <- users`.
    fn kept(m: &Mesh) -> Vec<String> {
        m.kept_deleted()
            .iter()
            .map(|(id, users)| {
                let users: Vec<String> = users.iter().map(ToString::to_string).collect();
                format!("{id} <- {}", users.join(","))
            })
            .collect()
    }

    fn reviews_of(m: &Mesh) -> Service {
        config(m, "shop", "productpage-1")
            .services
            .into_iter()
            .find(|s| s.name == "reviews")
            .unwrap()
    }

    #[test]
    fn a_deleted_destination_rule_stays_in_force_while_a_route_uses_it() {
        let (dr, vs) = CANARY.split_once("---").unwrap();
        let good = mesh(&format!("{REVIEWS}---{CANARY}"));
        let without_rule = store(&format!("{REVIEWS}---{vs}"));
        let next = Mesh::rebuild(&without_rule, &Options::default(), Some(&good));
        // The route stays as it was, with the subsets it sends to: nothing
        // spreads over every version.
        let reviews = reviews_of(&next);
        assert_eq!(reviews.http, reviews_of(&good).http);
        assert_eq!(reviews.subsets, reviews_of(&good).subsets);
        assert_eq!(reviews.traffic_policy, reviews_of(&good).traffic_policy);
        let (reason, message) = refused(verdict(&next, "VirtualService", "shop", "reviews"));
        assert_eq!(reason, "UnknownSubset");
        assert_eq!(
            message,
            "spec.http[0].route[0].destination.subset: subset \"v1\" of reviews.shop is defined \
             by DestinationRule shop/reviews, which is deleted; its last accepted version stays \
             in force while routes in force use it"
        );
        assert_eq!(
            kept(&next),
            ["DestinationRule shop/reviews <- shop/reviews"]
        );
        assert!(
            !next
                .verdicts()
                .keys()
                .any(|id| id.kind == "DestinationRule"),
            "a deleted resource has no verdict"
        );
        // It stays from one change to the next.
        let again = Mesh::rebuild(&without_rule, &Options::default(), Some(&next));
        assert_eq!(reviews_of(&again).http, reviews.http);
        assert_eq!(kept(&again), kept(&next));
        // Put back: it applies as written, and nothing is kept.
        let back = rebuild(
            &format!(
                "{REVIEWS}---{}---{vs}",
                dr.replace("consecutive5xxErrors: 3", "consecutive5xxErrors: 5")
            ),
            &again,
        );
        assert_accepted(&back, "VirtualService", "shop", "reviews");
        assert_accepted(&back, "DestinationRule", "shop", "reviews");
        assert!(kept(&back).is_empty());
        assert_eq!(
            reviews_of(&back)
                .traffic_policy
                .unwrap()
                .outlier_detection
                .unwrap()
                .consecutive_5xx_errors,
            5
        );
        // Once no route in force uses it, the deletion is taken.
        let plain = vs
            .replace(", subset: v1 }", " }")
            .replace(
                "        - destination: { host: reviews, subset: v2 }\n          weight: 25\n",
                "",
            )
            .replace("          weight: 75\n", "");
        let released = rebuild(&format!("{REVIEWS}---{plain}"), &again);
        assert_accepted(&released, "VirtualService", "shop", "reviews");
        assert!(kept(&released).is_empty());
        let reviews = reviews_of(&released);
        assert!(reviews.subsets.is_empty() && reviews.traffic_policy.is_none());
        assert_eq!(reviews.http[0].route[0].destination.subset, None);
    }

    #[test]
    fn a_route_edited_onto_fewer_subsets_as_its_rule_is_deleted_keeps_the_rule() {
        let (_, vs) = CANARY.split_once("---").unwrap();
        let good = mesh(&format!("{REVIEWS}---{CANARY}"));
        let v1_only = vs
            .replace(
                "        - destination: { host: reviews, subset: v2 }\n          weight: 25\n",
                "",
            )
            .replace("          weight: 75\n", "");
        let next = rebuild(&format!("{REVIEWS}---{v1_only}"), &good);
        // The edited route applies, on the rule it still needs.
        let reviews = reviews_of(&next);
        assert_eq!(reviews.http[0].route.len(), 1);
        assert_eq!(reviews.subsets.len(), 2);
        assert_eq!(
            refused(verdict(&next, "VirtualService", "shop", "reviews")).0,
            "UnknownSubset"
        );
        assert_eq!(
            kept(&next),
            ["DestinationRule shop/reviews <- shop/reviews"]
        );
    }

    /// `ratings` routed to the `reviews` Service (a dark launch), with
    /// reviews' rule; and a route on `reviews` itself to `ratings` half the time.
    fn routes_across(yaml: &str) -> String {
        let (dr, _) = CANARY.split_once("---").unwrap();
        format!(
            "{yaml}---{dr}---{}",
            r#"
apiVersion: outrigger.dev/v1alpha1
kind: VirtualService
metadata: { name: ratings, namespace: shop }
spec:
  hosts: [ratings]
  http: [{ route: [{ destination: { host: reviews, subset: v1 } }] }]
"#
        )
    }

    #[test]
    fn a_service_deleted_under_a_route_answers_503_and_never_spreads_elsewhere() {
        let good = mesh(&routes_across(REVIEWS));
        assert_accepted(&good, "VirtualService", "shop", "ratings");
        // The reviews Service and its EndpointSlice are deleted.
        let gone: String = without(REVIEWS, &["name: reviews,", "name: reviews-abc"]);
        assert!(!gone.contains("kind: EndpointSlice") && gone.contains("name: ratings"));
        let next = rebuild(&routes_across(&gone), &good);
        let c = config(&next, "shop", "productpage-1");
        let ratings = service(&c, "ratings");
        assert_eq!(
            ratings.http,
            good.config_for(&ProxyId {
                namespace: "shop".into(),
                pod: "productpage-1".into()
            })
            .services
            .iter()
            .find(|s| s.name == "ratings")
            .unwrap()
            .http,
            "ratings keeps its route: its own endpoints get nothing it did not get before"
        );
        let reviews = service(&c, "reviews");
        assert!(
            reviews.endpoints.is_empty() && reviews.addresses.is_empty(),
            "what is routed to a deleted Service answers 503; nothing can dial it"
        );
        assert_eq!(reviews.subsets.len(), 2, "its rule still applies to it");
        let (reason, message) = refused(verdict(&next, "VirtualService", "shop", "ratings"));
        assert_eq!(reason, "UnknownHost");
        assert!(
            message.starts_with(
                "spec.http[0].route[0].destination.host: Service shop/reviews is deleted"
            ),
            "{message}"
        );
        assert_accepted(&next, "DestinationRule", "shop", "reviews");
        assert_eq!(kept(&next), ["Service shop/reviews <- shop/ratings"]);
        // The route that made ratings send there goes: so does the Service.
        let without_route = store(&format!("{gone}---{}", CANARY.split_once("---").unwrap().0));
        let after = Mesh::rebuild(&without_route, &Options::default(), Some(&next));
        assert!(kept(&after).is_empty());
        assert!(config(&after, "shop", "productpage-1")
            .services
            .iter()
            .all(|s| s.name != "reviews"));
    }

    #[test]
    fn a_deleted_service_no_route_in_force_uses_any_more_is_not_kept() {
        let both = reviews_routes(
            r#"    - route:
        - { destination: { host: reviews, subset: v1 }, weight: 50 }
        - { destination: { host: ratings }, weight: 50 }
"#,
        );
        let (dr, _) = CANARY.split_once("---").unwrap();
        let good = mesh(&format!("{REVIEWS}---{dr}---{both}"));
        assert_accepted(&good, "VirtualService", "shop", "reviews");
        // In one change: the rule and the ratings Service are deleted, and
        // the route sends everything to v1.
        let no_ratings: String = without(REVIEWS, &["name: ratings"]);
        let v1 = both
            .replace(", weight: 50 }", " }")
            .replace("        - { destination: { host: ratings } }\n", "");
        let next = rebuild(&format!("{no_ratings}---{v1}"), &good);
        assert_eq!(reviews_of(&next).http[0].route.len(), 1);
        assert_eq!(
            kept(&next),
            ["DestinationRule shop/reviews <- shop/reviews"]
        );
        assert!(config(&next, "shop", "productpage-1")
            .services
            .iter()
            .all(|s| s.name != "ratings"));
    }

    #[test]
    fn a_route_whose_every_host_is_deleted_keeps_nothing() {
        let good = mesh(&routes_across(REVIEWS));
        let no_ratings: String = without(REVIEWS, &["name: ratings"]);
        let next = rebuild(&routes_across(&no_ratings), &good);
        assert_eq!(
            refused(verdict(&next, "VirtualService", "shop", "ratings")).0,
            "UnknownHost"
        );
        assert!(kept(&next).is_empty());
    }

    #[test]
    fn a_route_keeps_its_other_hosts_when_one_of_them_is_deleted() {
        let (dr, _) = CANARY.split_once("---").unwrap();
        let two_hosts = r#"
apiVersion: outrigger.dev/v1alpha1
kind: VirtualService
metadata: { name: both, namespace: shop }
spec:
  hosts: [reviews, ratings]
  http: [{ route: [{ destination: { host: reviews, subset: v1 } }] }]
"#;
        let good = mesh(&format!("{REVIEWS}---{dr}---{two_hosts}"));
        assert_accepted(&good, "VirtualService", "shop", "both");
        let no_ratings: String = without(REVIEWS, &["name: ratings"]);
        let next = rebuild(&format!("{no_ratings}---{dr}---{two_hosts}"), &good);
        assert_eq!(
            reviews_of(&next).http,
            reviews_of(&good).http,
            "reviews keeps its route"
        );
        let (reason, message) = refused(verdict(&next, "VirtualService", "shop", "both"));
        assert_eq!(reason, "UnknownHost");
        assert!(
            message.starts_with("spec.hosts[1]: Service shop/ratings is deleted")
                && message.ends_with("nothing can dial it, and this VirtualService stays in force for its other hosts"),
            "{message}"
        );
        let ratings = config(&next, "shop", "productpage-1")
            .services
            .into_iter()
            .find(|s| s.name == "ratings")
            .unwrap();
        assert!(ratings.addresses.is_empty() && ratings.endpoints.is_empty());
    }
}
