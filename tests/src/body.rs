//! The body type every harness server and client speaks: a boxed,
//! unsync body of `Bytes` with a boxed error, and its two constructors.

use bytes::Bytes;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Empty, Full};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|n| match n {}).boxed_unsync()
}

pub fn empty() -> Body {
    Empty::new().map_err(|n| match n {}).boxed_unsync()
}
