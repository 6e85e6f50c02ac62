//! The features a config update may require, and the one list of those
//! this build implements.
//!
//! A proxy reads its control plane tolerantly ([`crate::tolerant`]): a field
//! it predates is left out, logged and counted. That is right for an
//! optional addition and wrong for a field whose absence weakens security or
//! routing (an authorization rule, an mTLS setting): dropping it would make
//! the proxy enforce less than the operator asked for. Such a field belongs
//! to a [`Feature`]; the control plane lists the features an update uses in
//! its `requires` ([`required_by`]), and a proxy refuses an update that
//! requires a feature missing from its own [`FEATURES`] ([`missing`]),
//! keeping its last good configuration.
//!
//! [`FEATURES`] is empty in this release: every field of today's updates is
//! understood by every proxy within the supported skew (this release and
//! the one before, which denies unknown fields and so must never be sent a
//! field it lacks). A field added from now on that must not be dropped gets
//! its entry here in the same change that adds it.

use crate::inbound::Inbound;
use crate::snapshot::{ProxyInfo, Service};
use crate::stream::ConfigUpdate;

/// One part of an update, as the control plane builds it (the services
/// once per namespace, the rest per proxy).
#[derive(Clone, Copy, Debug)]
pub enum Part<'a> {
    Proxy(&'a ProxyInfo),
    Inbound(&'a Inbound),
    Services(&'a [Service]),
}

/// A feature an update may require.
#[derive(Clone, Copy, Debug)]
pub struct Feature {
    /// Its name in `requires` (kebab-case, never reused).
    pub name: &'static str,
    /// Whether `part` uses the field(s) this feature guards. Pure.
    pub used_in: fn(Part<'_>) -> bool,
}

/// The features this build implements: what its proxy accepts in
/// `requires`, and what its control plane lists when an update uses them.
pub const FEATURES: &[Feature] = &[];

/// The names of the features of `registry` that `parts` use, sorted and
/// without repeats.
pub fn required_by(registry: &[Feature], parts: &[Part<'_>]) -> Vec<String> {
    let mut names: Vec<String> = registry
        .iter()
        .filter(|f| parts.iter().any(|p| (f.used_in)(*p)))
        .map(|f| f.name.to_string())
        .collect();
    names.sort();
    names.dedup();
    names
}

/// The features `update` uses, of `registry`.
pub fn required_by_update(registry: &[Feature], update: &ConfigUpdate) -> Vec<String> {
    required_by(
        registry,
        &[
            Part::Proxy(&update.proxy),
            Part::Inbound(&update.inbound),
            Part::Services(&update.services),
        ],
    )
}

/// The names in `requires` that `registry` lacks, in their order.
pub fn missing<'a>(registry: &[Feature], requires: &'a [String]) -> Vec<&'a str> {
    requires
        .iter()
        .map(String::as_str)
        .filter(|name| !registry.iter().any(|f| f.name == *name))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A feature defined for the test: inbound authorization rules.
    const AUTHZ: Feature = Feature {
        name: "test-authorization",
        used_in: |part| matches!(part, Part::Inbound(i) if !i.authorization.is_empty()),
    };
    /// Another: services with HTTP routes.
    const ROUTES: Feature = Feature {
        name: "test-routes",
        used_in: |part| matches!(part, Part::Services(s) if s.iter().any(|s| !s.http.is_empty())),
    };

    fn update(inbound: serde_json::Value, services: serde_json::Value) -> ConfigUpdate {
        serde_json::from_value(serde_json::json!({
            "version": "1",
            "proxy": {"workload": "web", "namespace": "shop"},
            "inbound": inbound,
            "services": services,
        }))
        .unwrap()
    }

    #[test]
    fn a_feature_is_required_exactly_when_its_field_is_used() {
        let registry = [ROUTES, AUTHZ];
        let plain = update(serde_json::json!({}), serde_json::json!([]));
        assert!(required_by_update(&registry, &plain).is_empty());
        let both = update(
            serde_json::json!({"authorization": [{"name": "shop/p"}]}),
            serde_json::json!([{"name": "api", "namespace": "shop", "ports": [80],
                "http": [{"name": "all"}]}]),
        );
        assert_eq!(
            required_by_update(&registry, &both),
            ["test-authorization", "test-routes"]
        );
        // A proxy without the feature names it; one with it has nothing missing.
        let requires = required_by_update(&registry, &both);
        assert_eq!(missing(&[ROUTES], &requires), ["test-authorization"]);
        assert!(missing(&registry, &requires).is_empty());
    }
}
