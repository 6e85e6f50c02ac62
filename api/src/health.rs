//! What a proxy's admin `GET /endpoints` answers: the live state of every
//! endpoint of the configuration in force, as its balancer and outlier
//! detection see it right now (ejected or not, until when, how often;
//! requests in flight, latency estimate, slow start). The proxy builds it
//! (`outrigger-proxy-policy`'s `health`), `outrigger proxy-config` reads it.
//!
//! Not part of the snapshot: `/config` stays exactly the snapshot in force
//! (a valid bootstrap, which denies unknown fields), and this is state
//! that changes with every request. Unknown fields are accepted here, so a
//! CLI reads the answer of a newer proxy.

use serde::{Deserialize, Serialize};

/// The admin path that answers [`EndpointsHealth`] (to loopback peers only,
/// as `/config`).
pub const ENDPOINTS_PATH: &str = "/endpoints";

/// Every service entry of the configuration in force, in snapshot order.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EndpointsHealth {
    pub services: Vec<ServiceHealth>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ServiceHealth {
    pub name: String,
    pub namespace: String,
    pub ports: Vec<u16>,
    /// Whether outlier detection judges its endpoints (its DestinationRule
    /// has an `outlierDetection`).
    pub outlier_detection: bool,
    pub endpoints: Vec<EndpointHealth>,
}

/// One endpoint, as the balancer sees it now.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EndpointHealth {
    pub address: String,
    pub state: EndpointState,
    /// How long the ejection still lasts (`state: ejected` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ejected_for_ms: Option<u64>,
    /// When the ejection ends, by the proxy's clock (Unix milliseconds;
    /// `state: ejected` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ejected_until_unix_ms: Option<u64>,
    /// Ejections under the outlier policy in force (a new policy, or the
    /// endpoint leaving and coming back, starts it afresh).
    #[serde(default)]
    pub ejections: u32,
    /// Consecutive 5xx (and gateway errors) counted towards the next
    /// ejection.
    #[serde(default)]
    pub consecutive_5xx: u32,
    #[serde(default)]
    pub consecutive_gateway_errors: u32,
    /// Requests sent to it and not answered yet.
    #[serde(default)]
    pub in_flight: u32,
    /// The balancer's peak-EWMA latency estimate; none until the first answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<f64>,
    /// Under slow start (`warmupDurationSecs`): the share of its load it may
    /// take now, from 0.1 to 1; none once warm, or without slow start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warming: Option<f64>,
}

/// Whether the balancer may pick an endpoint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndpointState {
    /// Picked as the balancer decides (never ejected, or recovered).
    #[default]
    Healthy,
    /// Ejected by outlier detection: not picked until its time is up.
    Ejected,
    /// The ejection time is up: the next request to it is the trial that
    /// readmits it or ejects it again.
    TrialDue,
    /// The trial request is in flight; nothing else is sent to it.
    Trial,
}

impl EndpointState {
    /// As the `proxy-config endpoints` table prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            EndpointState::Healthy => "HEALTHY",
            EndpointState::Ejected => "EJECTED",
            EndpointState::TrialDue => "TRIAL DUE",
            EndpointState::Trial => "TRIAL",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_it_writes_and_what_a_newer_proxy_adds() {
        let h = EndpointsHealth {
            services: vec![ServiceHealth {
                name: "web".into(),
                namespace: "shop".into(),
                ports: vec![80],
                outlier_detection: true,
                endpoints: vec![EndpointHealth {
                    address: "10.0.0.1:8080".into(),
                    state: EndpointState::Ejected,
                    ejected_for_ms: Some(2500),
                    ejected_until_unix_ms: Some(1_800_000_002_500),
                    ejections: 1,
                    consecutive_5xx: 0,
                    consecutive_gateway_errors: 0,
                    in_flight: 0,
                    latency_ms: Some(1.5),
                    warming: None,
                }],
            }],
        };
        let json = serde_json::to_value(&h).unwrap();
        assert_eq!(json["services"][0]["endpoints"][0]["state"], "ejected");
        assert!(json["services"][0]["endpoints"][0].get("warming").is_none());
        let back: EndpointsHealth = serde_json::from_value(json).unwrap();
        assert_eq!(back, h);
        let newer = r#"{"services":[{"name":"web","namespace":"shop","ports":[80],
            "outlier_detection":false,"endpoints":[{"address":"10.0.0.1:8080",
            "state":"trial_due","zone":"a"}]}],"later":1}"#;
        let read: EndpointsHealth = serde_json::from_str(newer).unwrap();
        assert_eq!(read.services[0].endpoints[0].state, EndpointState::TrialDue);
    }
}
