//! Workload identities for mesh-TLS tests, without a control plane.

use std::time::Duration;

/// An identity for ServiceAccount `sa` in namespace `ns`, already holding
/// an hour-long certificate from `ca` (no control plane involved).
pub fn held_identity(
    ca: &outrigger_identity::Ca,
    ns: &str,
    sa: &str,
) -> std::sync::Arc<outrigger_proxy::identity::Identity> {
    use outrigger_identity::{SpiffeId, WorkloadKey};
    use outrigger_proxy::identity::{Identity, IdentityConfig};
    let td = "cluster.local";
    let id = SpiffeId::new(td, ns, sa).unwrap();
    let identity = Identity::new(IdentityConfig {
        id: id.clone(),
        token_file: "/nonexistent".into(),
        control_plane: SpiffeId::new(td, "outrigger-system", "outrigger-control-plane").unwrap(),
        roots: ca.roots().to_vec(),
    })
    .unwrap();
    let key = WorkloadKey::generate().unwrap();
    let issued = ca
        .issue(
            &key.csr(&id).unwrap(),
            &id,
            Duration::from_secs(3600),
            std::time::SystemTime::now(),
        )
        .unwrap();
    identity.cert.set(key.certified(issued.chain).unwrap().1);
    identity.mark_held();
    identity
}
