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

    /// The peer-authentication mode of a pod of `namespace` with `labels`
    /// (None: a pod the store does not know), as Istio resolves it: the
    /// oldest policy that selects the pod, else its namespace's (no
    /// selector), else the mesh's (the root namespace's, no selector); an
    /// UNSET mode inherits from the next of these, and PERMISSIVE is the
    /// default. Port-level modes come from the selecting policy only.
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
        let namespace_wide = own.iter().find(|r| r.selector.is_none()).copied();
        let mesh = in_ns(&self.root_namespace)
            .into_iter()
            .find(|r| r.selector.is_none());
        let mode = [workload, namespace_wide, mesh]
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

#[cfg(test)]
mod tests {
    use outrigger_api::inbound::{Mtls, MtlsMode};

    use crate::store::Key;
    use crate::translate::fixtures::*;
    use crate::translate::{Mesh, Options, Verdict, PREVIOUS_STAYS};

    /// Two pods of `shop`, `web-1` and `db-1`, labelled `app: web` and `app: db`.
    macro_rules! web_and_db_pods {
        () => {
            r#"
apiVersion: v1
kind: Pod
metadata: { name: web-1, namespace: shop, labels: { app: web } }
spec: { containers: [{ name: web }] }
---
apiVersion: v1
kind: Pod
metadata: { name: db-1, namespace: shop, labels: { app: db } }
spec: { containers: [{ name: db }] }
---
"#
        };
    }

    const PEER_AUTH: &str = concat!(
        web_and_db_pods!(),
        r#"apiVersion: v1
kind: Pod
metadata: { name: cache-1, namespace: shop, labels: { app: cache } }
spec: { containers: [{ name: cache }] }
---
apiVersion: outrigger.dev/v1alpha1
kind: PeerAuthentication
metadata: { name: default, namespace: outrigger-system }
spec: { mtls: { mode: STRICT } }
---
apiVersion: outrigger.dev/v1alpha1
kind: PeerAuthentication
metadata: { name: default, namespace: shop }
spec: { mtls: { mode: PERMISSIVE } }
---
apiVersion: outrigger.dev/v1alpha1
kind: PeerAuthentication
metadata: { name: db, namespace: shop }
spec:
  selector: { matchLabels: { app: db } }
  mtls: { mode: STRICT }
  portLevelMtls: { 9102: { mode: PERMISSIVE }, 5432: { mode: STRICT } }
---
apiVersion: outrigger.dev/v1alpha1
kind: PeerAuthentication
metadata: { name: cache, namespace: shop }
spec:
  selector: { matchLabels: { app: cache } }
  portLevelMtls: { 6379: { mode: STRICT } }
"#
    );

    fn mtls(m: &Mesh, ns: &str, pod: &str) -> Mtls {
        config(m, ns, pod).inbound.mtls
    }

    #[test]
    fn peer_authentication_resolves_workload_then_namespace_then_mesh() {
        use MtlsMode::{Permissive, Strict};
        let m = mesh(PEER_AUTH);
        for name in ["db", "cache", "default"] {
            assert_eq!(
                verdict(&m, "PeerAuthentication", "shop", name),
                Verdict::Accepted
            );
        }
        // The namespace's PERMISSIVE wins over the mesh's STRICT.
        assert_eq!(mtls(&m, "shop", "web-1"), Mtls::default());
        assert_eq!(mtls(&m, "shop", "unknown-pod"), Mtls::default());
        // The workload's own policy wins; its port exceptions come along
        // (a port that only repeats the mode is left out).
        assert_eq!(mtls(&m, "shop", "db-1"), Mtls::strict([(9102, Permissive)]));
        // UNSET inherits the namespace's mode; its port rule still applies.
        let cache = mtls(&m, "shop", "cache-1");
        assert_eq!((cache.mode, cache.mode_for(6379)), (Permissive, Strict));
        // A namespace without a policy of its own gets the mesh's.
        assert_eq!(mtls(&m, "billing", "x"), Mtls::strict([]));
        // No policy anywhere: PERMISSIVE, and nothing on the wire.
        let none = mesh("");
        assert!(config(&none, "shop", "web-1").inbound.is_empty());
    }

    #[test]
    fn unsupported_peer_authentications_are_refused_by_field() {
        let cases = [
            (
                "spec: { mtls: { mode: DISABLE } }",
                "Unsupported",
                "spec.mtls.mode: DISABLE is not supported",
            ),
            (
                "spec: { portLevelMtls: { 8080: { mode: STRICT } } }",
                "InvalidSpec",
                "spec.portLevelMtls: applies to the workloads of a selector only",
            ),
            (
                "spec: { selector: { matchLabels: { app: db } }, portLevelMtls: { 70000: { mode: STRICT } } }",
                "InvalidSpec",
                "spec.portLevelMtls[70000]: not a port number",
            ),
            (
                "spec: { selector: { matchLabels: { app: db } }, portLevelMtls: { 8080: { mode: DISABLE } } }",
                "Unsupported",
                "spec.portLevelMtls[8080].mode: DISABLE is not supported",
            ),
        ];
        for (spec, want_reason, want_message) in cases {
            let yaml = format!(
                "apiVersion: outrigger.dev/v1alpha1\nkind: PeerAuthentication\n\
                 metadata: {{ name: p, namespace: shop }}\n{spec}\n"
            );
            let m = mesh(&yaml);
            let (reason, message) = refused(verdict(&m, "PeerAuthentication", "shop", "p"));
            assert_eq!(reason, want_reason, "{spec}");
            assert!(message.starts_with(want_message), "{spec}: {message}");
            assert_eq!(
                mtls(&m, "shop", "db-1"),
                Mtls::default(),
                "{spec}: applies nothing"
            );
        }
    }

    #[test]
    fn an_empty_selector_is_namespace_wide() {
        let yaml = r#"
apiVersion: outrigger.dev/v1alpha1
kind: PeerAuthentication
metadata: { name: all, namespace: shop }
spec: { selector: { matchLabels: {} }, mtls: { mode: STRICT } }
---
apiVersion: outrigger.dev/v1alpha1
kind: PeerAuthentication
metadata: { name: ports, namespace: shop }
spec: { selector: {}, portLevelMtls: { 80: { mode: STRICT } } }
"#;
        let m = mesh(yaml);
        // Namespace-wide: it applies to a pod the store does not know.
        assert_eq!(mtls(&m, "shop", "unknown"), Mtls::strict([]));
        // A second namespace-wide one conflicts, and portLevelMtls needs a
        // real selector.
        let (reason, _) = refused(verdict(&m, "PeerAuthentication", "shop", "ports"));
        assert_eq!(reason, "InvalidSpec");
    }

    #[test]
    fn the_oldest_namespace_wide_peer_authentication_applies() {
        let yaml = r#"
apiVersion: outrigger.dev/v1alpha1
kind: PeerAuthentication
metadata: { name: newer, namespace: shop, creationTimestamp: "2026-02-01T00:00:00Z" }
spec: { mtls: { mode: PERMISSIVE } }
---
apiVersion: outrigger.dev/v1alpha1
kind: PeerAuthentication
metadata: { name: older, namespace: shop, creationTimestamp: "2026-01-01T00:00:00Z" }
spec: { mtls: { mode: STRICT } }
"#;
        let m = mesh(yaml);
        assert_accepted(&m, "PeerAuthentication", "shop", "older");
        let (reason, message) = refused(verdict(&m, "PeerAuthentication", "shop", "newer"));
        assert_eq!(reason, "Conflict");
        assert!(message.contains("shop/older"), "{message}");
        assert_eq!(mtls(&m, "shop", "any"), Mtls::strict([]));
    }

    #[test]
    fn a_broken_edit_of_a_strict_policy_keeps_it_strict() {
        let good = mesh(PEER_AUTH);
        // Refused edit: the version in force stays.
        let disabled = PEER_AUTH.replace(
            "  mtls: { mode: STRICT }\n  portLevelMtls: { 9102",
            "  mtls: { mode: DISABLE }\n  portLevelMtls: { 9102",
        );
        assert_ne!(disabled, PEER_AUTH);
        let next = rebuild(&disabled, &good);
        let (reason, message) = refused(verdict(&next, "PeerAuthentication", "shop", "db"));
        assert_eq!(reason, "Unsupported");
        assert!(
            message.ends_with(&format!("({PREVIOUS_STAYS})")),
            "{message}"
        );
        assert_eq!(mtls(&next, "shop", "db-1").mode, MtlsMode::Strict);
        // Unreadable edit: the same.
        let mut unreadable = store(PEER_AUTH);
        unreadable
            .peer_authentications
            .remove(&Key::new("outrigger-system", "default"));
        unreadable.invalid.insert(
            (
                "PeerAuthentication",
                Key::new("outrigger-system", "default"),
            ),
            "spec: unknown field `mtl`".into(),
        );
        let next = Mesh::rebuild(&unreadable, &Options::default(), Some(&good));
        assert!(refused(verdict(
            &next,
            "PeerAuthentication",
            "outrigger-system",
            "default"
        ))
        .1
        .ends_with(&format!("({PREVIOUS_STAYS})")));
        assert_eq!(mtls(&next, "billing", "x"), Mtls::strict([]));
        // With no history, nothing applies: PERMISSIVE.
        let fresh = Mesh::build(&unreadable, &Options::default());
        assert_eq!(mtls(&fresh, "billing", "x"), Mtls::default());
    }

    const POLICIES: &str = concat!(
        web_and_db_pods!(),
        r#"apiVersion: outrigger.dev/v1alpha1
kind: AuthorizationPolicy
metadata: { name: web-read, namespace: shop }
spec:
  selector: { matchLabels: { app: web } }
  rules: [{ to: [{ operation: { methods: [GET] } }] }]
---
apiVersion: outrigger.dev/v1alpha1
kind: AuthorizationPolicy
metadata: { name: no-debug, namespace: shop }
spec: { action: DENY, rules: [{ to: [{ operation: { ports: ["9090"] } }] }] }
---
apiVersion: outrigger.dev/v1alpha1
kind: AuthorizationPolicy
metadata: { name: mesh-wide, namespace: outrigger-system }
spec: { action: DENY, rules: [{ from: [{ source: { namespaces: [quarantine] } }] }] }
---
apiVersion: outrigger.dev/v1alpha1
kind: AuthorizationPolicy
metadata: { name: elsewhere, namespace: billing }
spec: { rules: [{}] }
"#
    );

    fn policy_names(m: &Mesh, ns: &str, pod: &str) -> Vec<String> {
        config(m, ns, pod)
            .inbound
            .authorization
            .iter()
            .map(|p| p.name.clone())
            .collect()
    }

    #[test]
    fn a_workload_gets_the_authorization_policies_that_select_it() {
        let m = mesh(POLICIES);
        for name in ["web-read", "no-debug", "elsewhere"] {
            let ns = if name == "elsewhere" {
                "billing"
            } else {
                "shop"
            };
            assert_eq!(
                verdict(&m, "AuthorizationPolicy", ns, name),
                Verdict::Accepted
            );
        }
        assert_eq!(
            policy_names(&m, "shop", "web-1"),
            [
                "outrigger-system/mesh-wide",
                "shop/no-debug",
                "shop/web-read"
            ]
        );
        assert_eq!(
            policy_names(&m, "shop", "db-1"),
            ["outrigger-system/mesh-wide", "shop/no-debug"],
            "the selector picks web only"
        );
        assert_eq!(
            policy_names(&m, "shop", "unknown-pod"),
            ["outrigger-system/mesh-wide", "shop/no-debug"],
            "a pod the store does not know gets the policies without a selector"
        );
        assert_eq!(
            policy_names(&m, "billing", "x"),
            ["billing/elsewhere", "outrigger-system/mesh-wide"]
        );
        let web = config(&m, "shop", "web-1");
        let read = &web.inbound.authorization[2];
        assert_eq!(
            read.action,
            outrigger_api::authz::AuthorizationAction::Allow
        );
        assert_eq!(read.rules[0].to[0].operation.methods, ["GET"]);
    }

    #[test]
    fn a_bad_authorization_policy_is_refused_by_field_and_its_previous_version_stays() {
        let good = mesh(POLICIES);
        let broken = POLICIES.replace("ports: [\"9090\"]", "ports: [\"debug\"]");
        let next = rebuild(&broken, &good);
        let (reason, message) = refused(verdict(&next, "AuthorizationPolicy", "shop", "no-debug"));
        assert_eq!(reason, "InvalidSpec");
        assert!(
            message.starts_with(
                "spec.rules[0].to[0].operation.ports[0]: \"debug\" is not a port number"
            ) && message.ends_with(&format!("({PREVIOUS_STAYS})")),
            "{message}"
        );
        // The DENY stays in force: a broken edit does not open the port.
        assert!(policy_names(&next, "shop", "db-1").contains(&"shop/no-debug".to_string()));
        let fresh = Mesh::build(&store(&broken), &Options::default());
        assert!(!policy_names(&fresh, "shop", "db-1").contains(&"shop/no-debug".to_string()));
    }
}
