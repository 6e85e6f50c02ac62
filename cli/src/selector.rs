//! Kubernetes label selectors (`matchLabels`, and `matchExpressions` with
//! `In`, `NotIn`, `Exists`, `DoesNotExist`) held against a set of labels,
//! as the API server evaluates a webhook's `namespaceSelector` and
//! `objectSelector`. Pure.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// A selector that cannot be evaluated: an operator Kubernetes does not
/// have, or values where the operator takes none (or none where it needs
/// some). The API server refuses such selectors; one read from elsewhere
/// is an error, never a match or a miss.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("matchExpressions key {key:?}: {reason}")]
pub struct SelectorError {
    pub key: String,
    pub reason: String,
}

/// Whether `selector` selects an object with `labels`. No selector, and
/// the empty selector, select everything; every `matchLabels` entry and
/// every expression must hold. `NotIn` and `DoesNotExist` hold for a key
/// the labels lack.
pub fn matches(
    selector: Option<&LabelSelector>,
    labels: &BTreeMap<String, String>,
) -> Result<bool, SelectorError> {
    let Some(selector) = selector else {
        return Ok(true);
    };
    let mut all = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    for e in selector.match_expressions.iter().flatten() {
        let values = e.values.as_deref().unwrap_or_default();
        let error = |reason: &str| SelectorError {
            key: e.key.clone(),
            reason: reason.to_string(),
        };
        let held = match e.operator.as_str() {
            "In" | "NotIn" if values.is_empty() => {
                return Err(error(&format!("operator {} needs values", e.operator)))
            }
            "Exists" | "DoesNotExist" if !values.is_empty() => {
                return Err(error(&format!("operator {} takes no values", e.operator)))
            }
            "In" => labels.get(&e.key).is_some_and(|v| values.contains(v)),
            "NotIn" => labels.get(&e.key).is_none_or(|v| !values.contains(v)),
            "Exists" => labels.contains_key(&e.key),
            "DoesNotExist" => !labels.contains_key(&e.key),
            other => {
                return Err(error(&format!(
                    "unknown operator {other:?} (In, NotIn, Exists or DoesNotExist)"
                )))
            }
        };
        all &= held;
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn selector(v: serde_json::Value) -> LabelSelector {
        serde_json::from_value(v).unwrap()
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn no_selector_and_the_empty_one_select_everything() {
        assert_eq!(matches(None, &labels(&[])), Ok(true));
        assert_eq!(
            matches(Some(&selector(json!({}))), &labels(&[("a", "b")])),
            Ok(true)
        );
    }

    #[test]
    fn match_labels_needs_every_pair() {
        let s = selector(json!({"matchLabels": {"istio-injection": "enabled", "team": "a"}}));
        assert_eq!(
            matches(
                Some(&s),
                &labels(&[("istio-injection", "enabled"), ("team", "a")])
            ),
            Ok(true)
        );
        assert_eq!(
            matches(Some(&s), &labels(&[("istio-injection", "enabled")])),
            Ok(false)
        );
        assert_eq!(
            matches(
                Some(&s),
                &labels(&[("istio-injection", "disabled"), ("team", "a")])
            ),
            Ok(false)
        );
    }

    #[test]
    fn each_operator_as_the_api_server_reads_it() {
        let one = |op: &str, values: &[&str]| {
            let mut e = json!({"key": "k", "operator": op});
            if !values.is_empty() {
                e["values"] = json!(values);
            }
            selector(json!({"matchExpressions": [e]}))
        };
        let with = labels(&[("k", "x")]);
        let other = labels(&[("k", "y")]);
        let without = labels(&[("j", "x")]);
        let table = [
            (one("In", &["x", "z"]), [true, false, false]),
            (one("NotIn", &["x", "z"]), [false, true, true]),
            (one("Exists", &[]), [true, true, false]),
            (one("DoesNotExist", &[]), [false, false, true]),
        ];
        for (s, want) in table {
            let got = [&with, &other, &without].map(|l| matches(Some(&s), l).unwrap());
            assert_eq!(got, want, "{s:?}");
        }
    }

    #[test]
    fn labels_and_expressions_must_all_hold() {
        // Linkerd's injector: any namespace not opted out.
        let s = selector(json!({
            "matchLabels": {"env": "prod"},
            "matchExpressions": [
                {"key": "config.linkerd.io/admission-webhooks", "operator": "NotIn",
                 "values": ["disabled"]},
                {"key": "kubernetes.io/metadata.name", "operator": "NotIn",
                 "values": ["kube-system"]}]}));
        let ns = |name: &str, extra: &[(&str, &str)]| {
            let mut l = labels(extra);
            l.insert("kubernetes.io/metadata.name".into(), name.into());
            l
        };
        assert_eq!(matches(Some(&s), &ns("shop", &[("env", "prod")])), Ok(true));
        assert_eq!(matches(Some(&s), &ns("shop", &[])), Ok(false));
        assert_eq!(
            matches(Some(&s), &ns("kube-system", &[("env", "prod")])),
            Ok(false)
        );
        assert_eq!(
            matches(
                Some(&s),
                &ns(
                    "shop",
                    &[
                        ("env", "prod"),
                        ("config.linkerd.io/admission-webhooks", "disabled")
                    ]
                )
            ),
            Ok(false)
        );
    }

    #[test]
    fn a_selector_the_api_server_would_refuse_is_an_error_naming_its_key() {
        let s = selector(json!({"matchExpressions": [
            {"key": "k", "operator": "Gt", "values": ["1"]}]}));
        assert_eq!(
            matches(Some(&s), &labels(&[])).unwrap_err().to_string(),
            "matchExpressions key \"k\": unknown operator \"Gt\" (In, NotIn, Exists or \
             DoesNotExist)"
        );
        let s = selector(json!({"matchExpressions": [{"key": "k", "operator": "In"}]}));
        assert_eq!(
            matches(Some(&s), &labels(&[])).unwrap_err().to_string(),
            "matchExpressions key \"k\": operator In needs values"
        );
        let s = selector(json!({"matchExpressions": [
            {"key": "k", "operator": "Exists", "values": ["x"]}]}));
        assert_eq!(
            matches(Some(&s), &labels(&[])).unwrap_err().to_string(),
            "matchExpressions key \"k\": operator Exists takes no values"
        );
    }
}
