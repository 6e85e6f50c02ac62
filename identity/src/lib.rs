//! Mesh identities: SPIFFE IDs (`spiffe.rs`), the mesh CA that signs
//! workload certificates (`ca.rs`), the rustls configurations of a mesh
//! hop (`tls.rs`), and every certificate verifier, those that check the
//! peer's SPIFFE identity and the one kubelet-style probes use
//! (`verify.rs`); when a certificate is renewed and when an unrenewed
//! one is a problem (`renewal.rs`).
//! Pure of I/O: the control plane serves the CA, the proxy holds the key
//! and the connections.
#![forbid(unsafe_code)]

pub mod ca;
pub mod inspect;
pub mod renewal;
pub mod spiffe;
pub mod tls;
mod verify;

pub use ca::{Ca, Issued, SecretLayout};
pub use spiffe::SpiffeId;
pub use tls::{CurrentCert, TrustBundle, WorkloadKey};

/// What can go wrong with identities and certificates; each message names
/// the identity, file part or peer involved.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid SPIFFE ID {id:?}: {reason}")]
    InvalidId { id: String, reason: String },
    #[error("certificate request refused: {0}")]
    Csr(String),
    #[error(
        "certificate request refused: it asks for {requested}, the caller may only have {allowed}"
    )]
    IdentityMismatch { requested: String, allowed: String },
    #[error("the CA cannot sign: {0}")]
    Ca(String),
    #[error("{what}: {reason}")]
    Pem { what: &'static str, reason: String },
    #[error("{0}")]
    Certificate(String),
}
