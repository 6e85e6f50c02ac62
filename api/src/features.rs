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

/// The structs a proxy must understand whole: an unknown field in one of
/// them refuses the update (the configuration in force kept) instead of
/// being left out, whether or not a [`Feature`] names it. They are where a
/// dropped field would make the proxy enforce less than asked or send
/// traffic where no route sent it: the inbound side's mTLS and
/// authorization, a route's match, the client TLS mode. A field added to
/// one of them is read by older proxies as a refusal: the fleet keeps its
/// last good configuration until its proxies are upgraded, never a weaker
/// one, even if the feature registry was not updated.
pub const UNDERSTOOD_WHOLE: &[&str] = &[
    "Inbound",
    "Mtls",
    "AuthorizationPolicy",
    "AuthorizationRule",
    "RuleFrom",
    "Source",
    "RuleTo",
    "Operation",
    "HttpMatch",
    "StringMatch",
    "ClientTls",
];

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

    #[test]
    fn the_structs_understood_whole_are_the_wire_types_of_those_names() {
        use crate::authz::{AuthorizationPolicy, AuthorizationRule, Operation, RuleFrom, RuleTo};
        use crate::inbound::Mtls;
        use crate::policy::{ClientTls, HttpMatch, StringMatch};
        fn name<T>() -> &'static str {
            let full = std::any::type_name::<T>();
            full.rsplit("::").next().unwrap_or(full)
        }
        // A renamed type fails to compile here, or differs below.
        let types = [
            name::<Inbound>(),
            name::<Mtls>(),
            name::<AuthorizationPolicy>(),
            name::<AuthorizationRule>(),
            name::<RuleFrom>(),
            name::<crate::authz::Source>(),
            name::<RuleTo>(),
            name::<Operation>(),
            name::<HttpMatch>(),
            name::<StringMatch>(),
            name::<ClientTls>(),
        ];
        assert_eq!(types, UNDERSTOOD_WHOLE);
    }

    #[test]
    fn an_unknown_field_where_dropping_it_weakens_a_setting_refuses_the_update() {
        let read = |json: serde_json::Value| {
            crate::tolerant::from_json_slice::<ConfigUpdate>(
                json.to_string().as_bytes(),
                UNDERSTOOD_WHOLE,
            )
        };
        let with = |inbound: serde_json::Value, service_extra: serde_json::Value| {
            let mut service = serde_json::json!({"name": "api", "namespace": "shop",
                "ports": [80], "endpoints": [{"address": "10.0.0.1:80", "zone": "a"}],
                "http": [{"name": "all", "match": [{"uri": {"prefix": "/"}}]}]});
            service
                .as_object_mut()
                .unwrap()
                .extend(service_extra.as_object().unwrap().clone());
            serde_json::json!({"version": "1",
                "proxy": {"workload": "web", "namespace": "shop"},
                "inbound": inbound, "services": [service]})
        };
        // An endpoint's new field is left out and reported.
        let (_, ignored) = read(with(serde_json::json!({}), serde_json::json!({}))).unwrap();
        assert_eq!(ignored.paths, ["services[0].endpoints[0].zone"]);
        // A new field of an authorization rule, of the mTLS settings or of
        // a route's match refuses the whole update, naming it.
        let rule = serde_json::json!({"authorization": [{"name": "shop/p",
            "rules": [{"notWhen": "x"}]}]});
        let e = read(with(rule, serde_json::json!({}))).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("inbound.authorization[0].rules[0].notWhen: unknown field"),
            "{e}"
        );
        let mtls = serde_json::json!({"mtls": {"mode": "STRICT", "minVersion": "1.3"}});
        let e = read(with(mtls, serde_json::json!({}))).unwrap_err();
        assert!(e.to_string().contains("of Mtls, which this proxy"), "{e}");
        let matched = serde_json::json!({"http": [{"name": "all",
            "match": [{"uri": {"prefix": "/"}, "queryParams": {"a": {"exact": "1"}}}]}]});
        let e = read(with(serde_json::json!({}), matched)).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("services[0].http[0].match[0].queryParams: unknown field"),
            "{e}"
        );
    }
}
