//! The config stream between the control plane and a proxy.
//!
//! A proxy opens one long-lived request, `GET /v1/config?namespace=NS&pod=NAME`
//! (HTTP/2), and the control plane answers with a never-ending body of
//! newline-delimited JSON: one [`ConfigUpdate`] per line, the first at once,
//! then one whenever what this proxy may see changes. Empty lines are
//! heartbeats. Newline-delimited JSON keeps the stream readable with `curl`
//! and needs no code generation; HTTP/2 gives flow control and PINGs.

use serde::{Deserialize, Serialize};

use crate::inbound::Inbound;

use crate::snapshot::{ProxyInfo, Service, Snapshot};

/// The path of the config stream.
pub const CONFIG_PATH: &str = "/v1/config";

/// What the control plane sends: the parts of a [`Snapshot`] it owns. The
/// proxy keeps its own listeners, admin address, limits and HTTP settings
/// (its bootstrap).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigUpdate {
    /// Changes exactly when the content changes (a hash of it), so a proxy
    /// that reconnects to a restarted control plane sees the same version.
    pub version: String,
    pub proxy: ProxyInfo,
    /// What this proxy's inbound side enforces; absent: nothing.
    #[serde(default, skip_serializing_if = "Inbound::is_empty")]
    pub inbound: Inbound,
    pub services: Vec<Service>,
}

impl ConfigUpdate {
    /// `bootstrap` with this update's version, identity and services.
    pub fn apply_to(&self, bootstrap: &Snapshot) -> Snapshot {
        Snapshot {
            version: self.version.clone(),
            proxy: self.proxy.clone(),
            admin: bootstrap.admin.clone(),
            limits: bootstrap.limits.clone(),
            http: bootstrap.http.clone(),
            listeners: bootstrap.listeners.clone(),
            services: self.services.clone(),
            inbound: self.inbound.clone(),
        }
    }
}
