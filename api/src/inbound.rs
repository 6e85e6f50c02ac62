//! What one proxy's inbound side enforces: peer authentication (whether a
//! caller must speak mutual TLS) and authorization (who may do what).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::authz::AuthorizationPolicy;

/// What one proxy's inbound side enforces.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Inbound {
    /// Whether callers must speak mutual TLS; absent: PERMISSIVE.
    #[serde(default, skip_serializing_if = "Mtls::is_default")]
    pub mtls: Mtls,
    /// The AuthorizationPolicies that select this workload.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub authorization: Vec<AuthorizationPolicy>,
}

impl Inbound {
    pub fn is_empty(&self) -> bool {
        self.mtls.is_default() && self.authorization.is_empty()
    }
}

/// Istio's `PeerAuthentication`, resolved for one workload: the mode of its
/// inbound side, and port-level exceptions (keyed by the app's port).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mtls {
    #[serde(default)]
    pub mode: MtlsMode,
    /// App port → its own mode.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ports: BTreeMap<u16, MtlsMode>,
}

impl Mtls {
    pub fn is_default(&self) -> bool {
        *self == Mtls::default()
    }

    /// The mode for connections to the app's `port`.
    pub fn mode_for(&self, port: u16) -> MtlsMode {
        self.ports.get(&port).copied().unwrap_or(self.mode)
    }

    pub fn strict(port_modes: impl IntoIterator<Item = (u16, MtlsMode)>) -> Self {
        Mtls {
            mode: MtlsMode::Strict,
            ports: port_modes.into_iter().collect(),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum MtlsMode {
    /// Mutual TLS from peer proxies, plaintext from anyone else.
    #[default]
    Permissive,
    /// Mutual TLS only: a plaintext connection is closed.
    Strict,
}

impl MtlsMode {
    pub fn as_str(self) -> &'static str {
        match self {
            MtlsMode::Permissive => "PERMISSIVE",
            MtlsMode::Strict => "STRICT",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_level_mode_overrides_the_workload_mode() {
        let m = Mtls::strict([(8080, MtlsMode::Permissive)]);
        assert_eq!(m.mode_for(8080), MtlsMode::Permissive);
        assert_eq!(m.mode_for(9090), MtlsMode::Strict);
        assert_eq!(Mtls::default().mode_for(1), MtlsMode::Permissive);
    }

    #[test]
    fn reads_from_json_and_yaml_with_numeric_port_keys() {
        let json: Inbound =
            serde_json::from_str(r#"{"mtls":{"mode":"STRICT","ports":{"8080":"PERMISSIVE"}}}"#)
                .unwrap();
        let yaml: Inbound =
            serde_saphyr::from_str("mtls: { mode: STRICT, ports: { 8080: PERMISSIVE } }").unwrap();
        assert_eq!(json, yaml);
        assert_eq!(json.mtls, Mtls::strict([(8080, MtlsMode::Permissive)]));
        assert!(!json.is_empty());
        assert!(Inbound::default().is_empty());
        assert_eq!(
            serde_json::to_string(&json).unwrap(),
            r#"{"mtls":{"mode":"STRICT","ports":{"8080":"PERMISSIVE"}}}"#
        );
        assert!(serde_json::from_str::<Inbound>(r#"{"mtls":{"mode":"DISABLE"}}"#).is_err());
        assert!(serde_json::from_str::<Inbound>(r#"{"mtls":{"ports":{"web":"STRICT"}}}"#).is_err());
    }
}
