//! Workload identities for mesh-TLS tests: one that certifies at the
//! control plane ([`workload_identity`]), one already holding a
//! certificate with no control plane involved ([`held_identity`]), and who
//! the control plane is ([`control_plane_id`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use outrigger_identity::{Ca, SpiffeId, WorkloadKey};
use outrigger_proxy::identity::{Identity, IdentityConfig};
use rustls::pki_types::CertificateDer;

/// The trust domain of every identity here.
pub const TRUST_DOMAIN: &str = "cluster.local";

/// The control plane's identity (ServiceAccount `outrigger-control-plane`
/// in `outrigger-system`), as proxies check it.
pub fn control_plane_id() -> SpiffeId {
    SpiffeId::new(TRUST_DOMAIN, "outrigger-system", "outrigger-control-plane").unwrap()
}

/// An identity for ServiceAccount `sa` in namespace `ns` that holds no
/// certificate yet: it certifies at the control plane with the token in
/// `token_file` and trusts `roots`.
pub fn workload_identity(
    ns: &str,
    sa: &str,
    token_file: PathBuf,
    roots: &[CertificateDer<'static>],
) -> Arc<Identity> {
    Identity::new(IdentityConfig {
        id: SpiffeId::new(TRUST_DOMAIN, ns, sa).unwrap(),
        token_file,
        control_plane: control_plane_id(),
        roots: roots.to_vec(),
    })
    .unwrap()
}

/// An identity for ServiceAccount `sa` in namespace `ns`, already holding
/// an hour-long certificate from `ca` (no control plane involved).
pub fn held_identity(ca: &Ca, ns: &str, sa: &str) -> Arc<Identity> {
    let identity = workload_identity(ns, sa, "/nonexistent".into(), ca.roots());
    let id = &identity.id;
    let key = WorkloadKey::generate().unwrap();
    let issued = ca
        .issue(
            &key.csr(id).unwrap(),
            id,
            Duration::from_secs(3600),
            std::time::SystemTime::now(),
        )
        .unwrap();
    identity.cert.set(key.certified(issued.chain).unwrap().1);
    identity.mark_held();
    identity
}
