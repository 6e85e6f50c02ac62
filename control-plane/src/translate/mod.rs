//! The translator: a pure function from the [`Store`](crate::store::Store)
//! to what each proxy receives. This is where the mesh's semantics live.
//!
//! It works in two steps, so that a change costs one mesh-wide pass and then
//! a cheap filter per proxy:
//!
//! 1. [`Mesh::build`] resolves every object once: Services and their
//!    EndpointSlices (or hand-written Endpoints) and Pods become the wire
//!    model's [`Service`](outrigger_api::Service) entries, one per Service
//!    port; DestinationRules and VirtualServices are checked (hosts,
//!    destinations, subsets, ports, and every rule of the wire model's
//!    validation) and attached to their host, AuthorizationPolicies and
//!    PeerAuthentications held for the workloads they select; each resource
//!    is accepted or refused with a [`Verdict`] that names the field.
//! 2. [`Mesh::config_for`] picks what one proxy may see: the Services of its
//!    namespace and those exported to it, with the routes and policies
//!    exported to it, plus every Service those routes send to, and the
//!    inbound policies that select its pod.
//!
//! A bad edit never replaces a good config: when a resource that was
//! accepted before is refused now, its last accepted version stays in force
//! (given the previous mesh), and its verdict says so.
//!
//! Where each part lives. The first five know nothing of the [`Mesh`]:
//!
//! - `verdict`: [`Verdict`], accepted or refused with a reason.
//! - `export`: [`ExportTo`], who may see a Service, a route, a rule.
//! - `check`: the proxy's own validation on a scratch snapshot, its errors
//!   renamed to the resource's fields.
//! - `services`: Services, EndpointSlices/Endpoints and Pods → wire-model
//!   Services with endpoints; workloads, identities, port protocols.
//! - `security`: PeerAuthentication and AuthorizationPolicy, accepted and
//!   resolved for one pod.
//!
//! `mesh` holds the [`Mesh`], its [`Options`] and the order of one rebuild
//! (with what it holds back from the store); the others each add their
//! part of the Mesh's methods and import only `mesh` and the five above:
//!
//! - `routing`: DestinationRules and VirtualServices resolved and attached;
//!   dangling routes fail closed (503).
//! - `history`: what routes in force hold back from the store (refused
//!   subset removals, deleted rules and Services kept while in use).
//! - `admission`: the one admission every kind goes through
//!   (`MeshResource`): oldest first, the last accepted version kept.
//! - `view`: [`Mesh::config_for`] and what else one proxy receives.

mod admission;
mod check;
mod export;
mod history;
mod mesh;
mod routing;
mod security;
mod services;
mod verdict;
mod view;

pub use self::export::{ExportTo, EXPORT_TO_ANNOTATION};
pub use self::mesh::{Mesh, Options};
pub use self::services::{workload_of, MESHED_ANNOTATION, PROXY_CONTAINER, SERVICE_NAME_LABEL};
pub use self::verdict::{Verdict, PREVIOUS_STAYS};
pub use self::view::{ProxyConfig, ProxyId};
/// A mesh resource, for [`Mesh::verdicts`].
pub use crate::store::ResourceId;

#[cfg(test)]
mod fixtures;
