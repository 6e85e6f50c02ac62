//! The store: every object the control plane knows, from whichever source
//! filled it (Kubernetes watches or a folder of manifests). Plain data; the
//! translator reads it, the sources replace it.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::core::v1::{Endpoints, Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Resource;

use crate::crd::{AuthorizationPolicy, DestinationRule, PeerAuthentication, VirtualService};

/// `namespace/name` of a namespaced object (cluster-scoped: namespace empty).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    pub namespace: String,
    pub name: String,
}

impl Key {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// The key of a Kubernetes object; objects without a name have none.
    pub fn of<K: Resource>(obj: &K) -> Option<Self> {
        let meta = obj.meta();
        Some(Self::new(
            meta.namespace.clone().unwrap_or_default(),
            meta.name.clone()?,
        ))
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            f.write_str(&self.name)
        } else {
            write!(f, "{}/{}", self.namespace, self.name)
        }
    }
}

/// One object by kind and key: a mesh resource's verdict, or the document
/// of a manifest file it came from.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ResourceId {
    pub kind: &'static str,
    pub key: Key,
}

impl fmt::Display for ResourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind, self.key)
    }
}

/// Every kind the translator reads, by key.
#[derive(Clone, Debug, Default)]
pub struct Store {
    pub namespaces: BTreeMap<Key, Namespace>,
    pub services: BTreeMap<Key, Service>,
    pub endpoint_slices: BTreeMap<Key, EndpointSlice>,
    /// Core `Endpoints`, for manifests written by hand in local mode (the
    /// Kubernetes source reads EndpointSlices only).
    pub endpoints: BTreeMap<Key, Endpoints>,
    pub pods: BTreeMap<Key, Pod>,
    pub virtual_services: BTreeMap<Key, VirtualService>,
    pub destination_rules: BTreeMap<Key, DestinationRule>,
    pub authorization_policies: BTreeMap<Key, AuthorizationPolicy>,
    pub peer_authentications: BTreeMap<Key, PeerAuthentication>,
    /// Mesh resources that exist but could not be read as their kind (an
    /// unsupported field, a bad value): (kind, key) → why. The Kubernetes
    /// source puts them here instead of failing the whole watch.
    pub invalid: BTreeMap<(&'static str, Key), String>,
}

/// One object of a kind the store holds. Objects live here only between a
/// source and the store, which keeps them unboxed, so their sizes differing
/// does not matter.
#[derive(Clone, Debug, PartialEq)]
#[allow(clippy::large_enum_variant)]
pub enum Object {
    Namespace(Namespace),
    Service(Service),
    EndpointSlice(EndpointSlice),
    Endpoints(Endpoints),
    Pod(Pod),
    VirtualService(VirtualService),
    DestinationRule(DestinationRule),
    AuthorizationPolicy(AuthorizationPolicy),
    PeerAuthentication(PeerAuthentication),
}

impl Object {
    pub fn kind(&self) -> &'static str {
        match self {
            Object::Namespace(_) => "Namespace",
            Object::Service(_) => "Service",
            Object::EndpointSlice(_) => "EndpointSlice",
            Object::Endpoints(_) => "Endpoints",
            Object::Pod(_) => "Pod",
            Object::VirtualService(_) => "VirtualService",
            Object::DestinationRule(_) => "DestinationRule",
            Object::AuthorizationPolicy(_) => "AuthorizationPolicy",
            Object::PeerAuthentication(_) => "PeerAuthentication",
        }
    }

    pub fn key(&self) -> Option<Key> {
        match self {
            Object::Namespace(o) => Key::of(o),
            Object::Service(o) => Key::of(o),
            Object::EndpointSlice(o) => Key::of(o),
            Object::Endpoints(o) => Key::of(o),
            Object::Pod(o) => Key::of(o),
            Object::VirtualService(o) => Key::of(o),
            Object::DestinationRule(o) => Key::of(o),
            Object::AuthorizationPolicy(o) => Key::of(o),
            Object::PeerAuthentication(o) => Key::of(o),
        }
    }

    /// Its kind and key; objects without a name have none.
    pub fn id(&self) -> Option<ResourceId> {
        Some(ResourceId {
            kind: self.kind(),
            key: self.key()?,
        })
    }

    /// Sets the namespace of a namespaced object that names none (as
    /// `kubectl apply` does with the current namespace).
    pub fn default_namespace(&mut self, ns: &str) {
        let meta = match self {
            Object::Namespace(_) => return,
            Object::Service(o) => &mut o.metadata,
            Object::EndpointSlice(o) => &mut o.metadata,
            Object::Endpoints(o) => &mut o.metadata,
            Object::Pod(o) => &mut o.metadata,
            Object::VirtualService(o) => &mut o.metadata,
            Object::DestinationRule(o) => &mut o.metadata,
            Object::AuthorizationPolicy(o) => &mut o.metadata,
            Object::PeerAuthentication(o) => &mut o.metadata,
        };
        if meta.namespace.as_deref().unwrap_or("").is_empty() {
            meta.namespace = Some(ns.to_string());
        }
    }
}

impl Store {
    /// Adds or replaces one object. Objects without a name are ignored
    /// (sources reject them before they get here).
    pub fn insert(&mut self, obj: Object) {
        let Some(key) = obj.key() else { return };
        match obj {
            Object::Namespace(o) => {
                self.namespaces.insert(key, o);
            }
            Object::Service(o) => {
                self.services.insert(key, o);
            }
            Object::EndpointSlice(o) => {
                self.endpoint_slices.insert(key, o);
            }
            Object::Endpoints(o) => {
                self.endpoints.insert(key, o);
            }
            Object::Pod(o) => {
                self.pods.insert(key, o);
            }
            Object::VirtualService(o) => {
                self.virtual_services.insert(key, o);
            }
            Object::DestinationRule(o) => {
                self.destination_rules.insert(key, o);
            }
            Object::AuthorizationPolicy(o) => {
                self.authorization_policies.insert(key, o);
            }
            Object::PeerAuthentication(o) => {
                self.peer_authentications.insert(key, o);
            }
        }
    }

    /// Builds a store from objects; a later object replaces an earlier one
    /// with the same kind and key.
    pub fn from_objects(objects: impl IntoIterator<Item = Object>) -> Self {
        let mut store = Store::default();
        for o in objects {
            store.insert(o);
        }
        store
    }

    /// Every object again, kind by kind (the resources that did not read
    /// are not objects, and are left out).
    pub fn into_objects(self) -> impl Iterator<Item = Object> {
        let Store {
            namespaces,
            services,
            endpoint_slices,
            endpoints,
            pods,
            virtual_services,
            destination_rules,
            authorization_policies,
            peer_authentications,
            invalid: _,
        } = self;
        namespaces
            .into_values()
            .map(Object::Namespace)
            .chain(services.into_values().map(Object::Service))
            .chain(endpoint_slices.into_values().map(Object::EndpointSlice))
            .chain(endpoints.into_values().map(Object::Endpoints))
            .chain(pods.into_values().map(Object::Pod))
            .chain(virtual_services.into_values().map(Object::VirtualService))
            .chain(destination_rules.into_values().map(Object::DestinationRule))
            .chain(
                authorization_policies
                    .into_values()
                    .map(Object::AuthorizationPolicy),
            )
            .chain(
                peer_authentications
                    .into_values()
                    .map(Object::PeerAuthentication),
            )
    }

    /// This store with `over`'s objects applied on top, as `kubectl apply`
    /// of `over` to a cluster holding this store would leave it: an object
    /// of `over` replaces the one of the same kind and key, a resource that
    /// did not read included; the rest stays.
    pub fn overlay(mut self, over: Store) -> Store {
        for (id, why) in &over.invalid {
            self.remove(id.0, &id.1);
            self.invalid.insert(id.clone(), why.clone());
        }
        for o in over.into_objects() {
            if let Some(id) = o.id() {
                self.invalid.remove(&(id.kind, id.key));
            }
            self.insert(o);
        }
        self
    }

    /// Removes the object of `kind` (as [`Object::kind`] names it) and `key`.
    fn remove(&mut self, kind: &str, key: &Key) {
        match kind {
            "Namespace" => drop(self.namespaces.remove(key)),
            "Service" => drop(self.services.remove(key)),
            "EndpointSlice" => drop(self.endpoint_slices.remove(key)),
            "Endpoints" => drop(self.endpoints.remove(key)),
            "Pod" => drop(self.pods.remove(key)),
            "VirtualService" => drop(self.virtual_services.remove(key)),
            "DestinationRule" => drop(self.destination_rules.remove(key)),
            "AuthorizationPolicy" => drop(self.authorization_policies.remove(key)),
            "PeerAuthentication" => drop(self.peer_authentications.remove(key)),
            _ => {}
        }
    }

    /// Number of objects of every kind together.
    pub fn len(&self) -> usize {
        self.namespaces.len()
            + self.services.len()
            + self.endpoint_slices.len()
            + self.endpoints.len()
            + self.pods.len()
            + self.virtual_services.len()
            + self.destination_rules.len()
            + self.authorization_policies.len()
            + self.peer_authentications.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::parse_documents;

    fn store(text: &str) -> Store {
        let parsed = parse_documents("test.yaml", text, "shop");
        assert!(parsed.bad.is_empty(), "{:?}", parsed.bad);
        Store::from_objects(parsed.objects)
    }

    const CLUSTER: &str = "\
apiVersion: v1
kind: Service
metadata: { name: reviews }
spec: { ports: [{ port: 80 }] }
---
apiVersion: outrigger.dev/v1alpha1
kind: VirtualService
metadata: { name: reviews }
spec: { hosts: [reviews], http: [{ route: [{ destination: { host: reviews } }] }] }
";

    #[test]
    fn an_overlay_replaces_by_kind_and_key_and_keeps_the_rest() {
        let mut cluster = store(CLUSTER);
        let broken = ("DestinationRule", Key::new("shop", "reviews"));
        cluster.invalid.insert(broken.clone(), "bad subset".into());
        let files = store(
            "\
apiVersion: outrigger.dev/v1alpha1
kind: VirtualService
metadata: { name: reviews }
spec: { hosts: [reviews], http: [{ timeout: 2s, route: [{ destination: { host: reviews } }] }] }
---
apiVersion: outrigger.dev/v1alpha1
kind: DestinationRule
metadata: { name: reviews }
spec: { host: reviews }
",
        );
        let merged = cluster.overlay(files);
        let key = Key::new("shop", "reviews");
        assert!(merged.services.contains_key(&key), "the Service stays");
        let vs = &merged.virtual_services[&key];
        assert!(
            vs.spec.http[0].timeout.is_some(),
            "the file's VirtualService"
        );
        assert!(merged.destination_rules.contains_key(&key));
        assert!(merged.invalid.is_empty(), "{:?}", merged.invalid);
        assert_eq!(merged.len(), 3);

        // A resource that did not read replaces a good one too.
        let mut over = Store::default();
        let vs_id = ("VirtualService", key.clone());
        over.invalid
            .insert(vs_id.clone(), "unsupported field".into());
        let merged = store(CLUSTER).overlay(over);
        assert!(!merged.virtual_services.contains_key(&key));
        assert_eq!(merged.invalid[&vs_id], "unsupported field");
    }
}
