//! Workload identities: `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`,
//! the form Istio and Linkerd use, so policies and dashboards port over.
//!
//! The one parser of them: snapshot validation, the proxy and the mesh CA
//! (`outrigger-identity` re-exports it) all read an ID with it, so an ID
//! that validates is one the proxy can hold its peer to.

use std::fmt;
use std::str::FromStr;

/// A string that is not a workload SPIFFE ID, and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid SPIFFE ID {id:?}: {reason}")]
pub struct SpiffeIdError {
    pub id: String,
    pub reason: String,
}

/// A workload's identity: its trust domain, namespace and ServiceAccount.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    trust_domain: String,
    namespace: String,
    service_account: String,
}

impl SpiffeId {
    pub fn new(
        trust_domain: impl Into<String>,
        namespace: impl Into<String>,
        service_account: impl Into<String>,
    ) -> Result<Self, SpiffeIdError> {
        let id = Self {
            trust_domain: trust_domain.into(),
            namespace: namespace.into(),
            service_account: service_account.into(),
        };
        let bad = |reason: String| SpiffeIdError {
            id: id.to_string(),
            reason,
        };
        if !is_trust_domain(&id.trust_domain) {
            return Err(bad(format!(
                "trust domain {:?}: lowercase letters, digits, '.', '-' and '_' only, not empty",
                id.trust_domain
            )));
        }
        if !is_name(&id.namespace) {
            return Err(bad(format!(
                "namespace {:?} is not a Kubernetes name",
                id.namespace
            )));
        }
        if !is_name(&id.service_account) {
            return Err(bad(format!(
                "service account {:?} is not a Kubernetes name",
                id.service_account
            )));
        }
        Ok(id)
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn service_account(&self) -> &str {
        &self.service_account
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;

    fn from_str(s: &str) -> Result<Self, SpiffeIdError> {
        let bad = |reason: &str| SpiffeIdError {
            id: s.to_string(),
            reason: reason.to_string(),
        };
        let rest = s
            .strip_prefix("spiffe://")
            .ok_or_else(|| bad("does not start with spiffe://"))?;
        match rest.split('/').collect::<Vec<_>>()[..] {
            [td, "ns", ns, "sa", sa] => SpiffeId::new(td, ns, sa),
            _ => Err(bad("the path is not /ns/<namespace>/sa/<service-account>")),
        }
    }
}

fn is_trust_domain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
}

/// A Kubernetes object name (DNS subdomain: ServiceAccounts may hold dots).
fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && !s.starts_with(['-', '.'])
        && !s.ends_with(['-', '.'])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_its_uri() {
        let id: SpiffeId = "spiffe://cluster.local/ns/shop/sa/buyer".parse().unwrap();
        assert_eq!(id.trust_domain(), "cluster.local");
        assert_eq!(id.namespace(), "shop");
        assert_eq!(id.service_account(), "buyer");
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/shop/sa/buyer");
        assert_eq!(SpiffeId::new("cluster.local", "shop", "buyer").unwrap(), id);
    }

    #[test]
    fn malformed_ids_are_refused_with_the_reason() {
        for (s, why) in [
            ("http://cluster.local/ns/a/sa/b", "spiffe://"),
            (
                "spiffe://cluster.local/ns/a",
                "/ns/<namespace>/sa/<service-account>",
            ),
            ("spiffe://cluster.local/ns/a/sa/b/c", "/ns/<namespace>/sa/"),
            ("spiffe://cluster.local/sa/b/ns/a", "/ns/<namespace>/sa/"),
            ("spiffe:///ns/a/sa/b", "trust domain \"\""),
            ("spiffe://Cluster.Local/ns/a/sa/b", "trust domain"),
            ("spiffe://cluster.local/ns/A/sa/b", "namespace \"A\""),
            (
                "spiffe://cluster.local/ns/a/sa/-b",
                "service account \"-b\"",
            ),
            ("spiffe://cluster.local/ns//sa/b", "namespace \"\""),
        ] {
            let e = s.parse::<SpiffeId>().unwrap_err().to_string();
            assert!(e.contains(why), "{s}: {e}");
            assert!(e.contains(s) || s.contains("ns//"), "{s}: {e}");
        }
    }
}
