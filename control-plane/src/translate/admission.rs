//! Admission: the one way every kind of mesh resource (DestinationRule,
//! VirtualService, AuthorizationPolicy, PeerAuthentication) is checked,
//! attached and given its verdict. Resources are admitted oldest first
//! (the oldest of two conflicting ones applies, as in Istio). A resource
//! refused now, or unreadable now, whose previous version was in force
//! keeps that version in force if it still applies, and its verdict says
//! so. What differs between the kinds is in [`MeshResource`].

use std::collections::BTreeMap;

use kube::Resource;

use super::mesh::{Held, Mesh};
use super::verdict::Verdict;
use crate::crd::{AuthorizationPolicy, DestinationRule, PeerAuthentication, VirtualService};
use crate::store::{Key, ResourceId, Store};

/// What admission needs of one kind of mesh resource.
pub(super) trait MeshResource: Resource + Clone + PartialEq {
    /// The kind, as verdicts and the store's unreadable resources name it.
    const KIND: &'static str;

    /// This kind's resources in the store.
    fn stored(store: &Store) -> &BTreeMap<Key, Self>;

    /// The version of each resource of this kind a mesh has in force.
    fn in_force(mesh: &Mesh) -> &BTreeMap<Key, Self>;

    fn in_force_mut(mesh: &mut Mesh) -> &mut BTreeMap<Key, Self>;

    /// Checks the resource against the mesh built so far (and through the
    /// proxy's own validation) and, when it passes, attaches it.
    fn attach(&self, mesh: &mut Mesh, key: &Key) -> Verdict;

    /// Attaches what the rebuild holds in force of this kind although the
    /// store no longer has it, before the store's resources.
    fn attach_held(_mesh: &mut Mesh, _held: &Held) {}

    /// A refusal the rebuild decided before the resource is checked.
    fn held_refusal<'h>(_held: &'h Held, _key: &Key) -> Option<&'h Verdict> {
        None
    }

    /// The verdict on a refused resource of which no version is in force.
    fn with_nothing_in_force(&self, _mesh: &mut Mesh, _key: &Key, verdict: Verdict) -> Verdict {
        verdict
    }
}

impl MeshResource for DestinationRule {
    const KIND: &'static str = "DestinationRule";

    fn stored(store: &Store) -> &BTreeMap<Key, Self> {
        &store.destination_rules
    }

    fn in_force(mesh: &Mesh) -> &BTreeMap<Key, Self> {
        &mesh.in_force_dr
    }

    fn in_force_mut(mesh: &mut Mesh) -> &mut BTreeMap<Key, Self> {
        &mut mesh.in_force_dr
    }

    fn attach(&self, mesh: &mut Mesh, key: &Key) -> Verdict {
        mesh.apply_destination_rule(key, self)
    }

    /// Deleted rules that routes in force use: first, as the oldest (each
    /// was the one in force for its host).
    fn attach_held(mesh: &mut Mesh, held: &Held) {
        for (key, dr) in &held.rules {
            if dr.attach(mesh, key).is_accepted() {
                mesh.in_force_dr.insert(key.clone(), dr.clone());
            }
        }
    }

    /// An edit that broke a route in force (see `Mesh::held_for_routes`):
    /// refused, and the version in force stays.
    fn held_refusal<'h>(held: &'h Held, key: &Key) -> Option<&'h Verdict> {
        held.edits.get(key)
    }
}

impl MeshResource for VirtualService {
    const KIND: &'static str = "VirtualService";

    fn stored(store: &Store) -> &BTreeMap<Key, Self> {
        &store.virtual_services
    }

    fn in_force(mesh: &Mesh) -> &BTreeMap<Key, Self> {
        &mesh.in_force_vs
    }

    fn in_force_mut(mesh: &mut Mesh) -> &mut BTreeMap<Key, Self> {
        &mut mesh.in_force_vs
    }

    fn attach(&self, mesh: &mut Mesh, key: &Key) -> Verdict {
        mesh.apply_virtual_service(key, self)
    }

    /// A dangling route with nothing in force fails closed (503).
    fn with_nothing_in_force(&self, mesh: &mut Mesh, key: &Key, verdict: Verdict) -> Verdict {
        mesh.fail_closed(key, self, verdict)
    }
}

/// An unreadable edit of a DENY policy must not open the door.
impl MeshResource for AuthorizationPolicy {
    const KIND: &'static str = "AuthorizationPolicy";

    fn stored(store: &Store) -> &BTreeMap<Key, Self> {
        &store.authorization_policies
    }

    fn in_force(mesh: &Mesh) -> &BTreeMap<Key, Self> {
        &mesh.in_force_ap
    }

    fn in_force_mut(mesh: &mut Mesh) -> &mut BTreeMap<Key, Self> {
        &mut mesh.in_force_ap
    }

    fn attach(&self, mesh: &mut Mesh, key: &Key) -> Verdict {
        mesh.security.apply_authorization(key, self)
    }
}

/// An unreadable edit of a STRICT policy must not let plaintext in.
impl MeshResource for PeerAuthentication {
    const KIND: &'static str = "PeerAuthentication";

    fn stored(store: &Store) -> &BTreeMap<Key, Self> {
        &store.peer_authentications
    }

    fn in_force(mesh: &Mesh) -> &BTreeMap<Key, Self> {
        &mesh.in_force_pa
    }

    fn in_force_mut(mesh: &mut Mesh) -> &mut BTreeMap<Key, Self> {
        &mut mesh.in_force_pa
    }

    fn attach(&self, mesh: &mut Mesh, key: &Key) -> Verdict {
        mesh.security.apply_peer_authentication(key, self)
    }
}

impl Mesh {
    /// Resources that could not be read, of every kind: refused with the
    /// reason (their version in force may stay: see [`Mesh::admit`]).
    pub(super) fn refuse_unreadable(&mut self, store: &Store) {
        for (&(kind, ref key), why) in &store.invalid {
            self.verdicts.insert(
                ResourceId {
                    kind,
                    key: key.clone(),
                },
                Verdict::refused("InvalidSpec", why.clone()),
            );
        }
    }

    /// Admits the resources of kind `R`: the unreadable ones' versions in
    /// force before, what `held` keeps, then the store's, oldest first.
    pub(super) fn admit<R: MeshResource>(
        &mut self,
        store: &Store,
        previous: Option<&Mesh>,
        held: &Held,
    ) {
        let previous = previous.map(R::in_force);
        self.keep_unreadable(store, previous);
        R::attach_held(self, held);
        for (key, current) in by_age(R::stored(store)) {
            let prev = previous.and_then(|p| p.get(key));
            let (verdict, in_force) = match (R::held_refusal(held, key), prev) {
                (Some(refusal), Some(p)) => self.fall_back(key, refusal.clone(), Some(p)),
                _ => self.apply_keeping(key, current, prev),
            };
            let verdict = match in_force {
                Some(r) => {
                    R::in_force_mut(self).insert(key.clone(), r);
                    verdict
                }
                None => current.with_nothing_in_force(self, key, verdict),
            };
            self.verdicts.insert(
                ResourceId {
                    kind: R::KIND,
                    key: key.clone(),
                },
                verdict,
            );
        }
    }

    /// Resources of kind `R` that cannot be read now (their verdict, already
    /// set, says why): the version `previous` had in force stays, if it
    /// still applies, and the verdict says so.
    fn keep_unreadable<R: MeshResource>(
        &mut self,
        store: &Store,
        previous: Option<&BTreeMap<Key, R>>,
    ) {
        for (_, key) in store.invalid.keys().filter(|(k, _)| *k == R::KIND) {
            let Some(prev) = previous.and_then(|p| p.get(key)) else {
                continue;
            };
            if !prev.attach(self, key).is_accepted() {
                continue;
            }
            R::in_force_mut(self).insert(key.clone(), prev.clone());
            let id = ResourceId {
                kind: R::KIND,
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
    fn apply_keeping<R: MeshResource>(
        &mut self,
        key: &Key,
        current: &R,
        previous: Option<&R>,
    ) -> (Verdict, Option<R>) {
        let verdict = current.attach(self, key);
        if verdict.is_accepted() {
            return (verdict, Some(current.clone()));
        }
        self.fall_back(key, verdict, previous.filter(|p| *p != current))
    }

    /// A refusal: `previous`, when there is one and it still applies, stays
    /// in force, and the verdict says so.
    fn fall_back<R: MeshResource>(
        &mut self,
        key: &Key,
        refusal: Verdict,
        previous: Option<&R>,
    ) -> (Verdict, Option<R>) {
        match previous {
            Some(p) if p.attach(self, key).is_accepted() => {
                (refusal.keeping_previous(), Some(p.clone()))
            }
            _ => (refusal, None),
        }
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

#[cfg(test)]
mod tests {
    use crate::store::Key;
    use crate::translate::fixtures::*;
    use crate::translate::{Mesh, Options, PREVIOUS_STAYS};

    #[test]
    fn the_oldest_of_two_virtual_services_for_one_host_applies() {
        let vs = |name: &str, time: &str, weight: u32| {
            format!(
                r#"
apiVersion: outrigger.dev/v1alpha1
kind: VirtualService
metadata: {{ name: {name}, namespace: shop, creationTimestamp: "{time}" }}
spec:
  hosts: [reviews]
  http: [{{ route: [{{ destination: {{ host: reviews }}, weight: {weight} }}] }}]
"#
            )
        };
        let m = mesh(&format!(
            "{REVIEWS}---{}---{}",
            vs("a-newer", "2026-02-01T00:00:00Z", 7),
            vs("z-older", "2026-01-01T00:00:00Z", 9)
        ));
        assert!(verdict(&m, "VirtualService", "shop", "z-older").is_accepted());
        let (r, msg) = refused(verdict(&m, "VirtualService", "shop", "a-newer"));
        assert_eq!(r, "Conflict");
        assert!(
            msg.contains("already routed by VirtualService shop/z-older"),
            "{msg}"
        );
        let c = config(&m, "shop", "productpage-1");
        let reviews = service(&c, "reviews");
        assert_eq!(reviews.http[0].route[0].weight, Some(9));
    }

    #[test]
    fn a_refused_edit_keeps_the_last_accepted_version_in_force() {
        let dr = CANARY.split("---").next().unwrap();
        let vs = |subset: &str| {
            format!(
                r#"
apiVersion: outrigger.dev/v1alpha1
kind: VirtualService
metadata: {{ name: reviews, namespace: shop }}
spec:
  hosts: [reviews]
  http: [{{ route: [{{ destination: {{ host: reviews, subset: {subset} }} }}] }}]
"#
            )
        };
        let good = Mesh::build(
            &store(&format!("{REVIEWS}---{dr}---{}", vs("v1"))),
            &Options::default(),
        );
        assert_accepted(&good, "VirtualService", "shop", "reviews");
        let bad_store = store(&format!("{REVIEWS}---{dr}---{}", vs("v9")));
        let next = Mesh::rebuild(&bad_store, &Options::default(), Some(&good));
        let (reason, message) = refused(verdict(&next, "VirtualService", "shop", "reviews"));
        assert_eq!(reason, "UnknownSubset");
        assert!(
            message.ends_with(&format!("({PREVIOUS_STAYS})")),
            "{message}"
        );
        let c = config(&next, "shop", "productpage-1");
        let reviews = service(&c, "reviews");
        assert_eq!(
            reviews.http[0].route[0].destination.subset.as_deref(),
            Some("v1"),
            "v1 stays"
        );
        // And again from that mesh: the good version is still the one in force.
        let again = Mesh::rebuild(&bad_store, &Options::default(), Some(&next));
        let c = config(&again, "shop", "productpage-1");
        assert_eq!(service(&c, "reviews").http.len(), 1);
        // Without history (a restarted control plane), the bad version is
        // not applied, and its host answers 503 instead of spreading.
        let fresh = Mesh::build(&bad_store, &Options::default());
        assert_fails_closed(&config(&fresh, "shop", "productpage-1"), "shop/reviews");
        // Deleting the resource is always taken.
        let gone = rebuild(&format!("{REVIEWS}---{dr}"), &next);
        assert!(config(&gone, "shop", "productpage-1")
            .services
            .iter()
            .all(|s| s.http.is_empty()));
    }

    #[test]
    fn an_unreadable_resource_is_refused_by_name_and_its_last_accepted_version_stays() {
        let good = Mesh::build(
            &store(&format!("{REVIEWS}---{CANARY}")),
            &Options::default(),
        );
        let mut bad = store(REVIEWS);
        let dr = store(CANARY).destination_rules;
        bad.destination_rules = dr;
        bad.invalid.insert(
            ("VirtualService", Key::new("shop", "reviews")),
            "spec: unknown field `mirror`".into(),
        );
        let next = Mesh::rebuild(&bad, &Options::default(), Some(&good));
        let (reason, message) = refused(verdict(&next, "VirtualService", "shop", "reviews"));
        assert_eq!(reason, "InvalidSpec");
        assert!(
            message.contains("mirror") && message.ends_with(&format!("({PREVIOUS_STAYS})")),
            "{message}"
        );
        let c = config(&next, "shop", "productpage-1");
        assert_eq!(service(&c, "reviews").http[0].route.len(), 2);
        // With no history it applies nothing.
        let fresh = Mesh::build(&bad, &Options::default());
        assert!(
            refused(verdict(&fresh, "VirtualService", "shop", "reviews"))
                .1
                .ends_with("`mirror`")
        );
        assert!(config(&fresh, "shop", "productpage-1")
            .services
            .iter()
            .all(|s| s.http.is_empty()));
    }
}
