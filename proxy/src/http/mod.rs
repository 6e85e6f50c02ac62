//! HTTP proxying: serving detected connections, header rules, the upstream
//! pool, metered bodies and the request handler itself.

pub mod admit;
pub mod body;
pub mod client;
pub mod error;
pub mod forward;
pub mod headers;
pub mod proxy;
pub mod server;
pub mod stack;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type on the proxy's inside: upstream bodies and local answers alike.
pub type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}
