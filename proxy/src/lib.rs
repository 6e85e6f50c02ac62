//! `outrigger-proxy`: the Outrigger sidecar.
//!
//! Read [`listener`] first: it is the path of every accepted connection, from
//! the socket to HTTP ([`http`]) or opaque TCP ([`tcp`]). [`app`] binds and
//! drains; [`outrigger_proxy_policy::config`] turns a snapshot into lookup tables; [`admin`] serves
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
//! | shared | [`svc`] (request, response, body and error types, request extensions), [`metrics`], [`access_log`], [`headers`], [`detect`], [`transport`], [`trace`] (spans and their exporter); the drain is [`outrigger_runtime::drain`] |
//! | decisions | the [`outrigger_proxy_policy`] crate: every decision and [`outrigger_proxy_policy::config`], its tables |
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
pub mod trace;
pub mod transport;

pub use app::{Applier, Drained, Options, Proxy, StartError};
