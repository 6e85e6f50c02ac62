//! `outrigger-proxy`: the Outrigger sidecar.
//!
//! Read [`listener`] first: it is the path of every accepted connection, from
//! the socket to HTTP ([`http`]) or opaque TCP ([`tcp`]). [`app`] binds and
//! drains; [`config`] turns a snapshot into lookup tables; [`admin`] serves
//! the operator's endpoints (and kubelet's app probes, [`probe`]);
//! [`control`] follows the control plane's stream.
//!
//! The modules form layers, and a module names only its own layer or those
//! below it (`.ci/deps` checks this):
//!
//! | layer | modules |
//! |---|---|
//! | edges | [`app`], [`listener`], [`admin`], [`control`], [`probe`], [`init`] |
//! | HTTP and TCP | [`http`] (server, request handler, the stack of layers in [`http::stack`], upstream client, forwarding), [`tcp`], [`identity`] |
//! | layers | [`layers`]: the tower layers, each a thin wrapper over one decision |
//! | shared | [`svc`] (request, response, body and error types, request extensions), [`metrics`], [`access_log`], [`headers`], [`detect`], [`drain`], [`transport`] |
//! | decisions | [`policy`] (the `outrigger-proxy-policy` crate) and [`config`], its tables |
#![forbid(unsafe_code)]

pub mod access_log;
pub mod admin;
pub mod app;
pub mod control;
pub mod detect;
pub mod headers;
pub mod http;
pub mod identity;
pub mod init;
pub mod layers;
pub mod listener;
pub mod metrics;
pub mod probe;
pub mod svc;
pub mod tcp;
pub mod transport;

/// The proxy's decisions and the config tables they read, in their own
/// crate: no I/O, tested alone.
pub use outrigger_proxy_policy as policy;
/// The config in force (see [`policy::config`]).
pub use outrigger_proxy_policy::config;
pub use outrigger_runtime::drain;

pub use app::{Applier, Drained, Options, Proxy, StartError};
