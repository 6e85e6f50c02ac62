//! The config stream between the control plane and a proxy.
//!
//! A proxy opens one long-lived request, `GET /v1/config?namespace=NS&pod=NAME`
//! (HTTP/2), and the control plane answers with a never-ending body of
//! newline-delimited JSON: one [`ConfigUpdate`] per line, the first at once,
//! then one whenever what this proxy may see changes. Empty lines are
//! heartbeats. Newline-delimited JSON keeps the stream readable with `curl`
//! and needs no code generation; HTTP/2 gives flow control and PINGs.
//!
//! A proxy reads each line with the tolerant reader ([`crate::tolerant`]):
//! fields it predates are left out and reported, and an update whose
//! `requires` names a feature it lacks ([`crate::features`]) is refused.

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
    /// The features ([`crate::features`]) a proxy must implement to apply
    /// this update; omitted when empty, so proxies of the release before
    /// this field, which deny unknown fields, read updates that need
    /// nothing new.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requires: Vec<String>,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn update(requires: &[&str]) -> ConfigUpdate {
        ConfigUpdate {
            version: "v1".into(),
            requires: requires.iter().map(|s| s.to_string()).collect(),
            proxy: ProxyInfo::default(),
            inbound: Inbound::default(),
            services: Vec::new(),
        }
    }

    #[test]
    fn an_update_that_requires_nothing_is_sent_without_the_key() {
        let json = serde_json::to_string(&update(&[])).unwrap();
        assert!(!json.contains("requires"), "{json}");
        // ... so it is exactly what the previous release's proxies read.
        assert_eq!(
            json,
            r#"{"version":"v1","proxy":{"workload":"unknown","namespace":"default"},"services":[]}"#
        );
        assert_eq!(
            serde_json::from_str::<ConfigUpdate>(&json).unwrap(),
            update(&[])
        );
    }

    #[test]
    fn requires_round_trips_when_present() {
        let json = serde_json::to_string(&update(&["a-feature"])).unwrap();
        assert!(json.contains(r#""requires":["a-feature"]"#), "{json}");
        assert_eq!(
            serde_json::from_str::<ConfigUpdate>(&json).unwrap(),
            update(&["a-feature"])
        );
    }
}
