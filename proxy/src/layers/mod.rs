//! The tower layers of the request path (composed in
//! [`crate::http::stack`]), each a thin wrapper that reads what it needs
//! from the request, asks its pure decision in [`crate::policy`] (the
//! `outrigger-proxy-policy` crate) and answers, passes on or records.
//!
//! | layer | decision (pure, tested alone) |
//! |---|---|
//! | [`admit::Admit`] | [`admit::normalize_path`], [`admit::upgrade`]: path normalization, the upgrade allow-list |
//! | [`route::Router`] | [`crate::policy::route::select`]: first matching route |
//! | [`authz::Authorize`] (inbound) | [`crate::policy::authz::evaluate`]: Istio's AuthorizationPolicy |
//! | [`rate_limit::RateLimit`] | [`crate::policy::rate_limit::TokenBucket`] |
//! | [`fault::Fault`] | [`crate::policy::fault::FaultPolicy::decide`] |
//! | [`rewrite::Rewrite`] | [`crate::policy::rewrite::HeaderOps`], [`crate::policy::rewrite::UriRewrite`] |
//! | [`timeout::Timeout`] | route and per-try deadlines |
//! | [`split::Split`] | [`crate::policy::split::pick`]: weighted destinations |
//! | [`retry::Retry`] | [`crate::policy::retry::RetryPolicy`], [`crate::policy::retry::backoff`], [`crate::policy::budget::RetryBudget`], [`replay::ReplayBody`] |
//! | [`balance::Balance`] | [`crate::policy::balance::choose`]: P2C peak-EWMA and friends |
//! | [`pool::PoolLimit`] | [`crate::policy::pool::Pool::admit`] |
//! | [`outlier::RecordOutcome`] | [`crate::policy::outlier::Outlier`]: the ejection state machine |

pub mod admit;
pub mod authz;
pub mod balance;
pub mod fault;
pub mod outlier;
pub mod pool;
pub mod rate_limit;
pub mod replay;
pub mod retry;
pub mod rewrite;
pub mod route;
pub mod split;
pub mod timeout;

#[cfg(test)]
pub(crate) mod testing;
