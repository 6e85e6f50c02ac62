//! HTTP proxying: serving detected connections, header rules, the upstream
//! pool, metered bodies and the request handler itself.

pub mod admit;
pub mod body;
pub mod client;
pub mod forward;
pub mod headers;
pub mod hold;
pub mod proxy;
pub mod server;
pub mod stack;

// The admin endpoints answer with the proxy's body type.
pub use crate::svc::{full, Body, BoxError};
