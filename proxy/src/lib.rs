//! `outrigger-proxy`: the Outrigger sidecar.
//!
//! Read [`listener`] first: it is the path of every accepted connection, from
//! the socket to HTTP ([`http`]) or opaque TCP ([`tcp`]). [`app`] binds and
//! drains; [`config`] turns a snapshot into lookup tables; [`admin`] serves
//! the operator's endpoints (and kubelet's app probes, [`probe`]); [`control`] follows the control plane's stream.
#![forbid(unsafe_code)]

pub mod access_log;
pub mod admin;
pub mod app;
pub mod config;
pub mod control;
pub mod detect;
pub mod http;
pub mod identity;
pub mod init;
pub mod listener;
pub mod metrics;
pub mod policy;
pub mod probe;
pub mod tcp;
pub mod transport;

pub use outrigger_runtime::drain;

pub use app::{Applier, Drained, Options, Proxy, StartError};
