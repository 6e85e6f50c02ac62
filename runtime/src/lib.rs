//! `outrigger-runtime`: the runtime pieces the three binaries (proxy,
//! control plane, injector) share, so that each exists once.
//!
//! | module | what it is for |
//! |---|---|
//! | [`build`] | this build's version and commit |
//! | [`drain`] | telling tasks to stop, and waiting until they have finished |
//! | [`signal`] | waiting for SIGTERM or SIGINT |
//! | [`serve`] | the accept loop of a server, with its TLS handshake |
//! | [`metrics`] | the `/metrics` answer: format negotiation and encoding; build and process families; the plain metrics listener |
//! | [`log`] | log set-up from the `--log-level` and `--log-format` flags |
//! | [`timestamp`] | UTC timestamps as RFC 3339 text |

pub mod build;
pub mod drain;
pub mod log;
pub mod metrics;
pub mod serve;
pub mod signal;
pub mod timestamp;
