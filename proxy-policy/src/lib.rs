//! `outrigger-proxy-policy`: what the Outrigger proxy decides about a
//! request, apart from how it moves bytes. Each module is a pure decision,
//! a small state machine over [`tokio::time::Instant`] (so tests run on a
//! paused clock), or the tables they read, tested on its own; the proxy's
//! tower layers (`outrigger-proxy`'s `layers/`) call them for every request.
//!
//! No sockets, no HTTP server or client, no tokio I/O: `http` types for
//! what a request looks like, `outrigger-api` for the snapshot a policy is
//! built from, tokio's semaphores for pool slots.
//!
//! | module | decision |
//! |---|---|
//! | [`config`] | the config in force: a validated snapshot as lookup tables (services, endpoints and their live state, routes), carried over from the previous config |
//! | [`route`] | route matching ([`route::select`]): the first route whose match blocks accept the request |
//! | [`split`] | the weighted split ([`split::pick`]) of a route's destinations |
//! | [`retry`] | which failures are retried ([`retry::RetryPolicy`]), the pause between tries |
//! | [`backoff`] | jittered exponential back-off: between retries, and before reconnecting to the control plane or the CA |
//! | [`budget`] | the retry budget (a share of recent requests, a floor per second) |
//! | [`balance`] | endpoint choice ([`balance::choose`]: P2C peak-EWMA, round robin, random, least request, slow start) and each endpoint's load |
//! | [`health`] | the live state of every endpoint (ejection, load, slow start), as the admin port's `/endpoints` shows it |
//! | [`outlier`] | outlier detection: the ejection state machine and an endpoint's detector |
//! | [`pool`] | connection-pool limits: admission, retry slots, connection settings |
//! | [`rate_limit`] | token buckets, per route and per inbound port |
//! | [`authz`] | authorization: Istio's AuthorizationPolicy evaluated on what is known of a request |
//! | [`fault`] | fault injection: the delay and abort drawn for a request |
//! | [`rewrite`] | header operations, URI and authority rewrite |
//! | [`error`] | the kinds of the proxy's own answers, and their statuses |
//! | [`chance`] | randomness: the thread's generator, or a seeded one in tests |
//! | [`trace`] | distributed tracing: the trace context read from and written to headers (W3C, B3), the sampling decision, trace, span and request ids |
//! | [`workload`] | who is at either end of a hop, as metrics name them |

pub mod authz;
pub mod backoff;
pub mod balance;
pub mod budget;
pub mod chance;
pub mod config;
pub mod error;
pub mod fault;
pub mod health;
pub mod outlier;
pub mod pool;
pub mod rate_limit;
pub mod retry;
pub mod rewrite;
pub mod route;
pub mod split;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod trace;
pub mod workload;
