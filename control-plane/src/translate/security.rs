//! Security policies: PeerAuthentication (whether a workload's inbound
//! side requires mutual TLS) and AuthorizationPolicy (who may call it).
//! Each accepted policy is held with its workload selector; a proxy gets
//! those of its namespace and of the root namespace that select its pod.

use std::collections::BTreeMap;

use outrigger_api::authz::AuthorizationPolicy as WirePolicy;
use outrigger_api::inbound::{Mtls, MtlsMode};

use super::check::check_authorization;
use super::verdict::Verdict;
use crate::crd::{AuthorizationPolicy, MtlsMode as CrdMode, PeerAuthentication};
use crate::store::Key;

/// The accepted security policies of the mesh.
#[derive(Clone, Debug)]
pub(super) struct Security {
    /// Policies here apply to every namespace (Istio's root namespace).
    root_namespace: String,
    /// Accepted AuthorizationPolicies: who they select, and the policy as
    /// proxies hold it.
    authorization: BTreeMap<Key, (Option<BTreeMap<String, String>>, WirePolicy)>,
    /// Accepted PeerAuthentications, oldest first (the oldest applies).
    peer_authentication: Vec<PeerAuthRule>,
}

impl Security {
    pub(super) fn new(root_namespace: &str) -> Self {
        Security {
            root_namespace: root_namespace.to_string(),
            authorization: BTreeMap::new(),
            peer_authentication: Vec::new(),
        }
    }

    /// Checks an AuthorizationPolicy as the proxy would and, when it
    /// passes, holds it for the workloads it selects.
    pub(super) fn apply_authorization(&mut self, key: &Key, ap: &AuthorizationPolicy) -> Verdict {
        let policy = WirePolicy {
            name: key.to_string(),
            action: ap.spec.action,
            rules: ap.spec.rules.clone(),
        };
        if let Err(refusal) = check_authorization(&policy) {
            return refusal;
        }
        let selector = selector_of(ap.spec.selector.as_ref());
        self.authorization.insert(key.clone(), (selector, policy));
        Verdict::Accepted
    }

    /// Checks a PeerAuthentication and, when it passes, holds it for the
    /// workloads it selects. A second namespace-wide policy (no selector)
    /// in one namespace is refused: the oldest applies.
    pub(super) fn apply_peer_authentication(
        &mut self,
        key: &Key,
        pa: &PeerAuthentication,
    ) -> Verdict {
        fn mode(m: CrdMode, field: &str) -> Result<Option<MtlsMode>, Verdict> {
            match m {
                CrdMode::Unset => Ok(None),
                CrdMode::Permissive => Ok(Some(MtlsMode::Permissive)),
                CrdMode::Strict => Ok(Some(MtlsMode::Strict)),
                CrdMode::Disable => Err(Verdict::refused(
                    "Unsupported",
                    format!(
                        "{field}: DISABLE is not supported (a proxy always accepts mutual TLS \
                         from peer proxies); PERMISSIVE also accepts plaintext"
                    ),
                )),
            }
        }
        let spec = &pa.spec;
        let selector = selector_of(spec.selector.as_ref());
        let workload_mode = match mode(
            spec.mtls.as_ref().map(|m| m.mode).unwrap_or_default(),
            "spec.mtls.mode",
        ) {
            Ok(m) => m,
            Err(v) => return v,
        };
        if !spec.port_level_mtls.is_empty() && selector.is_none() {
            return Verdict::refused(
                "InvalidSpec",
                "spec.portLevelMtls: applies to the workloads of a selector only (add \
                 spec.selector), as in Istio",
            );
        }
        let mut ports = BTreeMap::new();
        for (port, m) in &spec.port_level_mtls {
            let field = format!("spec.portLevelMtls[{port}]");
            let Some(p) = u16::try_from(*port).ok().filter(|p| *p > 0) else {
                return Verdict::refused(
                    "InvalidSpec",
                    format!("{field}: not a port number (1-65535)"),
                );
            };
            match mode(m.mode, &format!("{field}.mode")) {
                Ok(m) => ports.insert(p, m),
                Err(v) => return v,
            };
        }
        if selector.is_none() {
            if let Some(other) = self
                .peer_authentication
                .iter()
                .find(|r| r.selector.is_none() && r.key.namespace == key.namespace)
            {
                return Verdict::refused(
                    "Conflict",
                    format!(
                        "namespace {} already has the namespace-wide PeerAuthentication {} \
                         (the oldest applies)",
                        key.namespace, other.key
                    ),
                );
            }
        }
        self.peer_authentication.push(PeerAuthRule {
            key: key.clone(),
            selector,
            mode: workload_mode,
            ports,
        });
        Verdict::Accepted
    }

    /// The accepted AuthorizationPolicies a pod of `namespace` with
    /// `labels` (None: a pod the store does not know) enforces: those of its
    /// namespace and of the root namespace whose selector its labels
    /// satisfy (no selector: every pod).
    pub(super) fn authorization_for(
        &self,
        namespace: &str,
        labels: Option<&BTreeMap<String, String>>,
    ) -> Vec<WirePolicy> {
        self.authorization
            .iter()
            .filter(|(k, _)| k.namespace == namespace || k.namespace == self.root_namespace)
            .filter(|(_, (selector, _))| selects(selector.as_ref(), labels))
            .map(|(_, (_, p))| p.clone())
            .collect()
    }

    /// The peer-authentication mode of a pod of `namespace` with `labels`,
    /// as Istio resolves
    /// it: the oldest policy that selects the pod, else its namespace's
    /// (no selector), else the mesh's (the root namespace's, no selector);
    /// an UNSET mode inherits from the next of these, and PERMISSIVE is
    /// the default. Port-level modes come from the selecting policy only.
    pub(super) fn mtls_for(
        &self,
        namespace: &str,
        labels: Option<&BTreeMap<String, String>>,
    ) -> Mtls {
        let in_ns = |ns: &str| -> Vec<&PeerAuthRule> {
            self.peer_authentication
                .iter()
                .filter(|r| r.key.namespace == ns)
                .collect()
        };
        let own = in_ns(namespace);
        let workload = own
            .iter()
            .find(|r| r.selector.is_some() && selects(r.selector.as_ref(), labels))
            .copied();
        let namespace = own.iter().find(|r| r.selector.is_none()).copied();
        let mesh = in_ns(&self.root_namespace)
            .into_iter()
            .find(|r| r.selector.is_none());
        let mode = [workload, namespace, mesh]
            .into_iter()
            .flatten()
            .find_map(|r| r.mode)
            .unwrap_or_default();
        let ports = workload
            .into_iter()
            .flat_map(|r| &r.ports)
            .map(|(port, m)| (*port, m.unwrap_or(mode)))
            .filter(|(_, m)| *m != mode)
            .collect();
        Mtls { mode, ports }
    }
}

/// One accepted PeerAuthentication; `None` modes are UNSET (inherited).
#[derive(Clone, Debug)]
struct PeerAuthRule {
    key: Key,
    selector: Option<BTreeMap<String, String>>,
    mode: Option<MtlsMode>,
    ports: BTreeMap<u16, Option<MtlsMode>>,
}

/// A resource's workload selector; an empty one selects the whole
/// namespace, as no selector does (Istio's reading).
fn selector_of(s: Option<&crate::crd::WorkloadSelector>) -> Option<BTreeMap<String, String>> {
    s.map(|s| s.match_labels.clone()).filter(|m| !m.is_empty())
}

/// Whether a pod with `labels` (None: a pod the store does not know) is
/// among the workloads `selector` picks; no selector picks every pod.
fn selects(
    selector: Option<&BTreeMap<String, String>>,
    labels: Option<&BTreeMap<String, String>>,
) -> bool {
    match selector {
        None => true,
        Some(want) => labels.is_some_and(|have| want.iter().all(|(k, v)| have.get(k) == Some(v))),
    }
}
