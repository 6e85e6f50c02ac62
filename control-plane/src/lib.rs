//! `outrigger-control-plane`: the mesh's custom resources, the sources that
//! fill the store (a folder of manifests; Kubernetes), the translator from the
//! store to per-proxy snapshots, the config stream, and the mesh CA's
//! certify endpoint (`certify.rs`, with callers authenticated in `authn.rs`).
//!
//! ```text
//! manifests / kube watches ──▶ store ──▶ translate::Mesh::build ──▶ Mesh::config_for(proxy)
//!                                           └─▶ verdicts (status.conditions[Accepted])
//! ```
//!
//! In Kubernetes mode every replica serves config and certificates; the
//! statuses are written by one, elected with a Lease (`leader.rs` decides,
//! `election.rs` asks the API server).
#![forbid(unsafe_code)]

pub mod analyze;
pub mod authn;
pub mod certify;
pub mod crd;
pub mod election;
pub mod folder;
pub mod kubernetes;
pub mod leader;
pub mod manifest;
pub mod metrics;
#[cfg(any(test, feature = "test-support"))]
pub mod mounted_secret;
pub mod publish;
pub mod server;
pub mod status;
pub mod store;
pub mod translate;
