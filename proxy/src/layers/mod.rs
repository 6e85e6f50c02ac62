//! The tower layers of the request path (composed in
//! [`crate::http::stack`]), each a thin wrapper that reads what it needs
//! from the request, asks its pure decision in [`outrigger_proxy_policy`] (the
//! `outrigger-proxy-policy` crate) and answers, passes on or records.
//!
//! | layer | decision (pure, tested alone) |
//! |---|---|
//! | [`admit::Admit`] | [`admit::normalize_path`], [`admit::upgrade`]: path normalization, the upgrade allow-list |
//! | [`route::Router`] | [`outrigger_proxy_policy::route::select`]: first matching route |
//! | [`authz::Authorize`] (inbound) | [`outrigger_proxy_policy::authz::evaluate`]: Istio's AuthorizationPolicy |
//! | [`rate_limit::RateLimit`] | [`outrigger_proxy_policy::rate_limit::TokenBucket`] |
//! | [`fault::Fault`] | [`outrigger_proxy_policy::fault::FaultPolicy::decide`] |
//! | [`rewrite::Rewrite`] | [`outrigger_proxy_policy::rewrite::HeaderOps`], [`outrigger_proxy_policy::rewrite::UriRewrite`] |
//! | [`timeout::Timeout`] | route and per-try deadlines |
//! | [`split::Split`] | [`outrigger_proxy_policy::split::pick`]: weighted destinations |
//! | [`retry::Retry`] | [`outrigger_proxy_policy::retry::RetryPolicy`], [`outrigger_proxy_policy::retry::backoff`], [`outrigger_proxy_policy::budget::RetryBudget`], [`replay::ReplayBody`] |
//! | [`balance::Balance`] | [`outrigger_proxy_policy::balance::choose`]: P2C peak-EWMA and friends |
//! | [`pool::PoolLimit`] | [`outrigger_proxy_policy::pool::Pool::admit`] |
//! | [`outlier::RecordOutcome`] | [`outrigger_proxy_policy::outlier::Outlier`]: the ejection state machine |

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
