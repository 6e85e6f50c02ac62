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

/// How a proxy names itself on the stream request (`user-agent`), followed
/// by its release (`outrigger-proxy/0.4.1`), so the control plane can tell
/// a proxy outside the supported skew.
pub const PROXY_AGENT: &str = "outrigger-proxy/";

/// Where a proxy's release stands against its control plane's. Supported:
/// the same release (`MAJOR.MINOR`) or the one before; a proxy newer than
/// its control plane is not (upgrade the control plane first).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skew {
    Supported,
    /// More than one release behind the control plane.
    TooOld,
    /// A later release than the control plane.
    Newer,
    /// The proxy did not say (releases before the agent was sent), or said
    /// something that is not a version.
    Unknown,
}

impl Skew {
    pub fn as_str(self) -> &'static str {
        match self {
            Skew::Supported => "supported",
            Skew::TooOld => "too_old",
            Skew::Newer => "newer",
            Skew::Unknown => "unknown",
        }
    }
}

/// The skew of a proxy whose `user-agent` is `agent` (None: none sent)
/// against a control plane of release `control_plane` (`MAJOR.MINOR.PATCH`).
pub fn skew(control_plane: &str, agent: Option<&str>) -> Skew {
    let release = |v: &str| -> Option<(u64, u64)> {
        let mut parts = v.split(['.', '-', '+']);
        Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
    };
    let proxy = agent
        .and_then(|a| a.strip_prefix(PROXY_AGENT))
        .and_then(|v| v.split_whitespace().next())
        .and_then(release);
    let (Some(proxy), Some(cp)) = (proxy, release(control_plane)) else {
        return Skew::Unknown;
    };
    if proxy > cp {
        Skew::Newer
    } else if proxy.0 == cp.0 && proxy.1 + 1 >= cp.1 {
        Skew::Supported
    } else {
        Skew::TooOld
    }
}

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
    fn the_supported_skew_is_the_same_release_or_the_one_before() {
        let at = |agent: &str| skew("0.4.2", Some(agent));
        assert_eq!(at("outrigger-proxy/0.4.0"), Skew::Supported);
        assert_eq!(at("outrigger-proxy/0.4.9-rc.1"), Skew::Supported);
        assert_eq!(at("outrigger-proxy/0.3.7"), Skew::Supported);
        assert_eq!(at("outrigger-proxy/0.2.7"), Skew::TooOld);
        assert_eq!(at("outrigger-proxy/0.5.0"), Skew::Newer);
        assert_eq!(at("outrigger-proxy/1.0.0"), Skew::Newer);
        assert_eq!(skew("1.0.0", Some("outrigger-proxy/0.9.0")), Skew::TooOld);
        assert_eq!(at("curl/8.0"), Skew::Unknown);
        assert_eq!(at("outrigger-proxy/dev"), Skew::Unknown);
        assert_eq!(skew("0.4.2", None), Skew::Unknown);
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
