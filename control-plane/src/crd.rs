//! The mesh's custom resources, group `outrigger.dev`, version `v1alpha1`.
//!
//! Field names are Istio's where the feature is shared, so an Istio manifest
//! ports by changing its `apiVersion`. The route and policy bodies are the
//! wire model's own types (`outrigger_api::policy`): one definition serves the
//! CRD schema, the control plane and the proxy.
//!
//! Two things the Rust types cannot say are added to the generated schemas by
//! [`definitions`]:
//! - every object keeps unknown fields (`x-kubernetes-preserve-unknown-fields`),
//!   so that a field Outrigger does not support reaches the control plane, which
//!   marks the resource not accepted and names the field, instead of the API
//!   server pruning it and the mesh silently doing something else;
//! - the CEL rules the API server can check itself ([`RULES`]).

use std::collections::BTreeMap;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{CustomResource, CustomResourceExt};
use outrigger_api::authz::{AuthorizationAction, AuthorizationRule};
use outrigger_api::policy::{HttpRoute, Subset, TrafficPolicy};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// The API group of every mesh resource.
pub const GROUP: &str = "outrigger.dev";
pub const VERSION: &str = "v1alpha1";

/// Istio's `VirtualService`, HTTP routes only.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "outrigger.dev",
    version = "v1alpha1",
    kind = "VirtualService",
    namespaced,
    status = "Status",
    derive = "PartialEq",
    shortname = "vs",
    category = "outrigger",
    printcolumn = r#"{"name":"Hosts","type":"string","jsonPath":".spec.hosts"}"#,
    printcolumn = r#"{"name":"Accepted","type":"string","jsonPath":".status.conditions[?(@.type==\"Accepted\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct VirtualServiceSpec {
    /// The services whose traffic these routes govern: `name` (in the
    /// resource's namespace), `name.namespace`, or
    /// `name.namespace.svc.cluster.local`.
    pub hosts: Vec<String>,
    /// Istio's gateways: only `mesh` (every sidecar, the one gateway this
    /// mesh has, and what an empty list means) is accepted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<String>,
    /// Ordered HTTP routes; the first match wins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http: Vec<HttpRoute>,
    /// Namespaces whose proxies see these routes: `.` (this namespace), `*`
    /// (every namespace) or names. Empty: every namespace, as in Istio.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub export_to: Vec<String>,
}

/// Istio's `DestinationRule`: subsets and traffic policy of one service.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "outrigger.dev",
    version = "v1alpha1",
    kind = "DestinationRule",
    namespaced,
    status = "Status",
    derive = "PartialEq",
    shortname = "dr",
    category = "outrigger",
    printcolumn = r#"{"name":"Host","type":"string","jsonPath":".spec.host"}"#,
    printcolumn = r#"{"name":"Accepted","type":"string","jsonPath":".status.conditions[?(@.type==\"Accepted\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DestinationRuleSpec {
    /// The service: `name`, `name.namespace` or the cluster-local FQDN.
    pub host: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subsets: Vec<Subset>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_policy: Option<TrafficPolicy>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub export_to: Vec<String>,
}

// The action and rules are the proxy's own wire types (`outrigger_api::authz`).
/// Istio's `AuthorizationPolicy` (ALLOW and DENY; sources by principal and
/// namespace, operations by port, method and path).
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "outrigger.dev",
    version = "v1alpha1",
    kind = "AuthorizationPolicy",
    namespaced,
    status = "Status",
    derive = "PartialEq",
    shortname = "ap",
    category = "outrigger",
    printcolumn = r#"{"name":"Action","type":"string","jsonPath":".spec.action"}"#,
    printcolumn = r#"{"name":"Accepted","type":"string","jsonPath":".status.conditions[?(@.type==\"Accepted\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthorizationPolicySpec {
    /// The workloads (pods of the resource's namespace) the policy applies
    /// to; absent: every workload of the namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    #[serde(default)]
    pub action: AuthorizationAction,
    /// A request matching any rule matches the policy. No rules: an ALLOW
    /// policy matches nothing, a DENY policy matches nothing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<AuthorizationRule>,
}

/// Pods of the resource's namespace whose labels include all of these.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WorkloadSelector {
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

/// Istio's `PeerAuthentication`: whether a workload's inbound side requires
/// mutual TLS (STRICT) or also accepts plaintext (PERMISSIVE).
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "outrigger.dev",
    version = "v1alpha1",
    kind = "PeerAuthentication",
    namespaced,
    status = "Status",
    derive = "PartialEq",
    shortname = "pa",
    category = "outrigger",
    printcolumn = r#"{"name":"Mode","type":"string","jsonPath":".spec.mtls.mode"}"#,
    printcolumn = r#"{"name":"Accepted","type":"string","jsonPath":".status.conditions[?(@.type==\"Accepted\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PeerAuthenticationSpec {
    /// Absent: every workload of the namespace (of the whole mesh when the
    /// resource is in the control plane's namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtls: Option<MutualTls>,
    /// App (container) port → its own mode; only with a selector, as in Istio.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub port_level_mtls: BTreeMap<u32, MutualTls>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MutualTls {
    #[serde(default)]
    pub mode: MtlsMode,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum MtlsMode {
    /// Inherit from the namespace-wide or mesh-wide policy (PERMISSIVE at the top).
    #[default]
    Unset,
    Permissive,
    Strict,
    /// Istio's plaintext-only mode: not supported (refused by name).
    Disable,
}

/// The status every mesh resource carries: one `Accepted` condition.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// `Accepted`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True` or `False`.
    pub status: String,
    /// A CamelCase reason (`Accepted`, `InvalidSpec`, `UnknownSubset`, ...).
    pub reason: String,
    /// What was wrong, naming the field.
    #[serde(default)]
    pub message: String,
    /// The `metadata.generation` this condition describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
}

/// A CEL rule the API server checks on create and update.
pub struct Rule {
    pub kind: &'static str,
    /// JSON pointer into `openAPIV3Schema` of the schema node the rule sits on.
    pub at: &'static str,
    pub rule: &'static str,
    pub message: &'static str,
}

/// Every CEL rule of the CRDs. Each sits on the smallest node it needs, so
/// the API server's cost estimate stays low; lists it iterates have a
/// `maxItems` ([`MAX_ITEMS`]).
pub const RULES: &[Rule] = &[
    Rule {
        kind: "VirtualService",
        at: "/properties/spec",
        rule: "size(self.hosts) > 0",
        message: "spec.hosts names at least one service",
    },
    Rule {
        kind: "VirtualService",
        at: "/properties/spec/properties/http/items",
        rule: "has(self.route) && size(self.route) > 0",
        message: "a route has at least one destination (http[].route)",
    },
    Rule {
        kind: "VirtualService",
        at: "/properties/spec/properties/http/items",
        rule: "!has(self.route) || size(self.route) <= 1 || self.route.exists(d, has(d.weight) && d.weight > 0)",
        message: "the weights of a route's destinations add up to more than 0",
    },
    Rule {
        kind: "VirtualService",
        at: "/properties/spec/properties/http/items/properties/fault/properties/abort",
        rule: "has(self.httpStatus) != has(self.grpcStatus)",
        message: "fault.abort sets exactly one of httpStatus and grpcStatus",
    },
    Rule {
        kind: "PeerAuthentication",
        at: "/properties/spec",
        rule: "!has(self.portLevelMtls) || (has(self.selector) && has(self.selector.matchLabels) && size(self.selector.matchLabels) > 0)",
        message: "portLevelMtls applies to the workloads of a selector with matchLabels only",
    },
    Rule {
        kind: "DestinationRule",
        at: "/properties/spec/properties/subsets",
        rule: "self.all(s, self.exists_one(t, t.name == s.name))",
        message: "subset names are unique",
    },
];

/// Bounds on lists the CEL rules iterate (the API server prices a rule by
/// the longest list it may see).
pub const MAX_ITEMS: &[(&str, &str, u64)] = &[
    ("VirtualService", "/properties/spec/properties/http", 256),
    (
        "VirtualService",
        "/properties/spec/properties/http/items/properties/route",
        64,
    ),
    ("DestinationRule", "/properties/spec/properties/subsets", 64),
];

/// The CRDs as the API server receives them, with unknown fields kept and
/// the CEL rules in place.
pub fn definitions() -> Vec<CustomResourceDefinition> {
    [
        VirtualService::crd(),
        DestinationRule::crd(),
        AuthorizationPolicy::crd(),
        PeerAuthentication::crd(),
    ]
    .into_iter()
    .map(finish)
    .collect()
}

fn finish(crd: CustomResourceDefinition) -> CustomResourceDefinition {
    let kind = crd.spec.names.kind.clone();
    let mut value = serde_json::to_value(&crd).expect("a CRD serializes");
    for version in value["spec"]["versions"]
        .as_array_mut()
        .expect("a CRD has versions")
    {
        let schema = &mut version["schema"]["openAPIV3Schema"];
        if let Some(spec) = schema.pointer_mut("/properties/spec") {
            maps_as_additional_properties(spec);
            keep_unknown_fields(spec);
        }
        for (k, at, max) in MAX_ITEMS {
            if *k == kind {
                let node = schema
                    .pointer_mut(at)
                    .unwrap_or_else(|| panic!("{kind}: no schema node at {at}"));
                node["maxItems"] = json!(max);
            }
        }
        for r in RULES.iter().filter(|r| r.kind == kind) {
            let node = schema
                .pointer_mut(r.at)
                .unwrap_or_else(|| panic!("{kind}: no schema node at {}", r.at));
            let list = node
                .as_object_mut()
                .expect("a rule sits on an object schema")
                .entry("x-kubernetes-validations")
                .or_insert_with(|| json!([]));
            list.as_array_mut()
                .expect("x-kubernetes-validations is a list")
                .push(json!({ "rule": r.rule, "message": r.message }));
        }
    }
    serde_json::from_value(value).expect("the finished CRD is still a CRD")
}

/// A map with number keys (`portLevelMtls`) comes out of schemars as
/// `patternProperties`, which a structural schema may not use: the API
/// server takes the value schema as `additionalProperties` instead.
fn maps_as_additional_properties(node: &mut Value) {
    match node {
        Value::Object(map) => {
            if let Some(Value::Object(patterns)) = map.remove("patternProperties") {
                let value = patterns.into_iter().next().map(|(_, v)| v);
                map.insert("additionalProperties".into(), value.unwrap_or(json!({})));
            }
            map.values_mut().for_each(maps_as_additional_properties);
        }
        Value::Array(items) => items.iter_mut().for_each(maps_as_additional_properties),
        _ => {}
    }
}

/// Marks every object schema under `node` as keeping unknown fields.
fn keep_unknown_fields(node: &mut Value) {
    match node {
        Value::Object(map) => {
            if map.contains_key("properties") {
                map.insert(
                    "x-kubernetes-preserve-unknown-fields".into(),
                    Value::Bool(true),
                );
            }
            for v in map.values_mut() {
                keep_unknown_fields(v);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(keep_unknown_fields),
        _ => {}
    }
}

/// The CRDs as one multi-document YAML file (what `manifests/crds/` holds).
pub fn definitions_yaml() -> String {
    to_yaml(definitions())
}

/// The annotation that makes Helm leave an object in place when its release
/// is uninstalled (or when an upgrade no longer renders it).
pub const HELM_KEEP: (&str, &str) = ("helm.sh/resource-policy", "keep");

/// The CRDs as the `outrigger-crds` chart's template holds them: the same
/// definitions, kept by Helm on uninstall ([`HELM_KEEP`]: deleting a CRD
/// deletes every resource of its kind) and labelled as part of Outrigger.
/// A template rather than the chart's `crds/`, so that `helm upgrade`
/// upgrades them.
pub fn chart_definitions_yaml() -> String {
    let mut crds = definitions();
    for crd in &mut crds {
        let (key, value) = HELM_KEEP;
        crd.metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(key.into(), value.into());
        crd.metadata
            .labels
            .get_or_insert_with(BTreeMap::new)
            .insert("app.kubernetes.io/part-of".into(), "outrigger".into());
    }
    to_yaml(crds)
}

fn to_yaml(crds: Vec<CustomResourceDefinition>) -> String {
    let mut out = String::from(
        "# Generated from the Rust types in control-plane/src/crd.rs; do not edit.\n\
         # Regenerate: OUTRIGGER_BLESS=1 cargo test -p outrigger-control-plane --test crds\n",
    );
    for crd in crds {
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(&crd).expect("a CRD serializes to YAML"));
    }
    out
}
