//! `outrigger-proxy-policy`: what the Outrigger proxy decides about a
//! request, apart from how it moves bytes. Each module is a pure decision
//! or a small state machine over [`tokio::time::Instant`] (so tests run on
//! a paused clock), tested on its own; the proxy's tower layers
//! (`outrigger-proxy`'s `layers/`) call them for every request.
//!
//! No sockets, no HTTP server or client, no tokio I/O: `http` types for
//! what a request looks like, `outrigger-api` for the snapshot a policy is
//! built from.
//!
//! | module | decision |
//! |---|---|
//! | [`authz`] | authorization: Istio's AuthorizationPolicy evaluated on what is known of a request |
//! | [`chance`] | randomness: the thread's generator, or a seeded one in tests |
//! | [`budget`] | the retry budget (a share of recent requests, a floor per second) |
//! | [`error`] | the kinds of the proxy's own answers, and their statuses |
//! | [`fault`] | fault injection: the delay and abort drawn for a request |
//! | [`rate_limit`] | token buckets, per route and per inbound port |
//! | [`rewrite`] | header operations, URI and authority rewrite |

pub mod authz;
pub mod budget;
pub mod chance;
pub mod error;
pub mod fault;
pub mod rate_limit;
pub mod rewrite;
