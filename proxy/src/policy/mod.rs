//! Traffic policy: the layers of the outbound request path (composed in
//! [`crate::http::stack`]) and the pure decisions inside them.
//!
//! | layer | decision (pure, tested alone) |
//! |---|---|
//! | [`route::Router`] | [`route::select`]: first matching route |
//! | [`rate_limit::RateLimit`] | [`rate_limit::TokenBucket`] |
//! | [`fault::Fault`] | [`fault::FaultPolicy::decide`] |
//! | [`rewrite::Rewrite`] | [`rewrite::HeaderOps`], [`rewrite::UriRewrite`] |
//! | [`timeout::Timeout`] | route and per-try deadlines |
//! | [`retry::Retry`] | [`retry::RetryPolicy`], [`retry::backoff`], [`budget::RetryBudget`], [`replay::ReplayBody`] |
//! | [`split::Split`] | [`split::pick`]: weighted destinations |
//! | [`balance::Balance`] | [`balance::choose`]: P2C peak-EWMA and friends |
//! | [`pool::PoolLimit`] | [`pool::Pool::admit`] |
//! | [`outlier::RecordOutcome`] | [`outlier::Outlier`]: the ejection state machine |

pub use outrigger_proxy_policy::{authz, budget, chance, fault, rate_limit, rewrite};

pub mod balance;
pub mod outlier;
pub mod pool;
pub mod replay;
pub mod retry;
pub mod route;
pub mod split;
pub mod timeout;

#[cfg(test)]
pub(crate) mod testing;
