//! Workload identities: the SPIFFE ID type lives in `outrigger-api` (one
//! parser for validation, the proxy and the CA); the identity crate's
//! errors carry its refusals.

pub use outrigger_api::spiffe::{SpiffeId, SpiffeIdError};

impl From<SpiffeIdError> for crate::Error {
    fn from(e: SpiffeIdError) -> Self {
        crate::Error::InvalidId {
            id: e.id,
            reason: e.reason,
        }
    }
}
