//! `outrigger-api`: the wire model shared by the control plane and the proxy.
//!
//! The central type is [`Snapshot`]: everything one proxy needs to serve traffic
//! (its own identity, its listeners, the services it may reach and their
//! endpoints). It is plain serde data, readable from YAML (static bootstrap
//! files) and JSON (the control-plane stream). Addresses are kept as strings on
//! the wire so that [`Snapshot::validate`] can report *every* malformed value
//! with its path instead of stopping at the first one, as a typed
//! deserialization would.
#![forbid(unsafe_code)]

mod access_log;
pub mod authz;
pub mod certify;
mod duration;
pub mod features;
pub mod health;
pub mod inbound;
mod metrics_format;
pub mod policy;
pub mod probe;
pub mod redirect;
mod snapshot;
pub mod spiffe;
pub mod stream;
pub mod tolerant;
mod trace;
mod validate;

pub use access_log::AccessLogFormat;
#[cfg(feature = "schema")]
pub use duration::SCHEMA_PATTERN as DURATION_PATTERN;
pub use duration::{Duration, DurationError};
pub use metrics_format::MetricsFormat;
pub use snapshot::{
    Admin, Direction, Endpoint, HttpSettings, Limits, Listener, ParseError, PathNormalization,
    ProxyInfo, Service, ServiceProtocol, ServiceRef, Snapshot,
};
pub use trace::{TraceCollector, TraceSampling};
pub use validate::{check_gateway, compile_full_match, FieldError, ValidationErrors, MESH_GATEWAY};
