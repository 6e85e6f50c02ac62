//! `outrigger-injector`: the mutating admission webhook that meshes pods.
//!
//! [`inject::inject`] is the whole decision, pure: a pod, its namespace and
//! the mesh config in, a JSON Patch (or a reason to leave the pod alone)
//! out. [`annotations`] reads what a pod asks for; [`config`] is the mesh
//! config. The webhook around it is I/O: [`webhook`] turns an
//! AdmissionReview into a response, [`server`] serves it over HTTPS with
//! certificates reloaded from files, [`namespaces`] keeps the namespaces'
//! annotations from a watch, [`metrics`] counts.
#![forbid(unsafe_code)]

pub mod annotations;
pub mod config;
pub mod inject;
pub mod metrics;
pub mod namespaces;
pub mod quantity;
pub mod server;
pub mod webhook;
