//! The identity exchange between a proxy and the control plane (the mesh
//! CA): `POST /v1/certify` with the proxy's ServiceAccount token as a
//! bearer token and a CSR for its identity; the answer is a certificate
//! chain and the trust roots. The private key never leaves the proxy.

use serde::{Deserialize, Serialize};

pub const CERTIFY_PATH: &str = "/v1/certify";

/// The audience the proxy's projected ServiceAccount token is minted for.
pub const TOKEN_AUDIENCE: &str = "outrigger";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertifyRequest {
    /// PEM `CERTIFICATE REQUEST` asking for exactly the caller's SPIFFE ID.
    pub csr: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertifyResponse {
    /// PEM certificates: the workload's, then the CA chain.
    pub certificate_chain: String,
    /// PEM trust anchors of the mesh (more than one during a root rotation).
    pub trust_roots: String,
    /// When the workload certificate expires (Unix seconds).
    pub expires_unix_secs: u64,
}
