//! The tower layers of the request path (composed in
//! [`crate::http::stack`]), each a thin wrapper that reads what it needs
//! from the request, asks its pure decision in [`crate::policy`] and
//! answers, passes on or records.
//!
//! | layer | decision (pure, tested alone) |
//! |---|---|
//! | [`authz::Authorize`] (inbound) | [`crate::policy::authz::evaluate`]: Istio's AuthorizationPolicy |
//! | [`fault::Fault`] | [`crate::policy::fault::FaultPolicy::decide`] |
//! | [`rate_limit::RateLimit`] | [`crate::policy::rate_limit::TokenBucket`] |
//! | [`rewrite::Rewrite`] | [`crate::policy::rewrite::HeaderOps`], [`crate::policy::rewrite::UriRewrite`] |

pub mod authz;
pub mod fault;
pub mod rate_limit;
pub mod rewrite;
