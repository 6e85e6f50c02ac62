//! A custom resource held against its CRD as the API server's structural
//! schema check would: the object's `apiVersion` must name a served version
//! of the CRD of its kind, and its content must fit that version's
//! `openAPIV3Schema` (types, `nullable`, `required`, `enum`, `pattern`,
//! bounds, `additionalProperties`, `x-kubernetes-int-or-string`), with
//! unknown fields refused unless `x-kubernetes-preserve-unknown-fields` keeps
//! them (the API server would prune them: a field the new schema no longer
//! knows would be lost silently on an upgrade, so it is an error here, as
//! `kubectl apply`'s strict field validation makes it). Formats and CEL rules
//! (`x-kubernetes-validations`) are not evaluated: only a real API server
//! does that (see docs/testing.md).

use regex::Regex;
use serde_json::Value;

/// Each error as `path: what`, the path as a JSON pointer into the object;
/// empty when `object` fits one of `crds`.
pub fn check(crds: &[Value], object: &Value) -> Vec<String> {
    let api_version = object["apiVersion"].as_str().unwrap_or_default();
    let kind = object["kind"].as_str().unwrap_or_default();
    let Some((group, version)) = api_version.split_once('/') else {
        return vec![format!("/apiVersion: {api_version:?} is not group/version")];
    };
    let Some(crd) = crds
        .iter()
        .find(|c| c["spec"]["group"] == group && c["spec"]["names"]["kind"] == kind)
    else {
        return vec![format!("/kind: no CRD defines {kind} in {group}")];
    };
    let Some(served) = crd["spec"]["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["name"] == version && v["served"] == true)
    else {
        return vec![format!("/apiVersion: {kind} {version} is not served")];
    };
    let schema = &served["schema"]["openAPIV3Schema"];
    let mut errors = Vec::new();
    let Some(fields) = object.as_object() else {
        return vec![": not an object".into()];
    };
    for (key, value) in fields {
        let path = format!("/{key}");
        match key.as_str() {
            // The API server's own fields, implicit in every CRD's schema.
            "apiVersion" | "kind" => {}
            "metadata" if value.is_object() => {}
            _ => match schema["properties"].get(key) {
                Some(s) => fits(s, value, &path, &mut errors),
                None if schema["x-kubernetes-preserve-unknown-fields"] == true => {}
                None => errors.push(format!("{path}: unknown field")),
            },
        }
    }
    for key in required(schema) {
        if !fields.contains_key(key) {
            errors.push(format!("/{key}: required"));
        }
    }
    errors
}

fn required(schema: &Value) -> impl Iterator<Item = &str> {
    schema["required"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
}

fn fits(schema: &Value, value: &Value, path: &str, errors: &mut Vec<String>) {
    if value.is_null() {
        if schema["nullable"] != true {
            errors.push(format!("{path}: null, and the field is not nullable"));
        }
        return;
    }
    let int_or_string = schema["x-kubernetes-int-or-string"] == true;
    let type_ok = match (schema["type"].as_str(), value) {
        _ if int_or_string => value.is_string() || value.is_i64() || value.is_u64(),
        (None, _) => true,
        (Some("object"), Value::Object(_)) | (Some("array"), Value::Array(_)) => true,
        (Some("string"), Value::String(_)) | (Some("boolean"), Value::Bool(_)) => true,
        (Some("integer"), Value::Number(n)) => n.is_i64() || n.is_u64(),
        (Some("number"), Value::Number(_)) => true,
        _ => false,
    };
    if !type_ok {
        let want = if int_or_string {
            "integer or string"
        } else {
            schema["type"].as_str().unwrap_or_default()
        };
        errors.push(format!("{path}: {value} is not of type {want}"));
        return;
    }
    if let Some(allowed) = schema["enum"].as_array() {
        if !allowed.contains(value) {
            errors.push(format!("{path}: {value} is not one of {allowed:?}"));
        }
    }
    match value {
        Value::String(s) => {
            if let Some(pattern) = schema["pattern"].as_str() {
                let re = Regex::new(pattern)
                    .unwrap_or_else(|e| panic!("{path}: the schema's pattern: {e}"));
                if !re.is_match(s) {
                    errors.push(format!("{path}: {s:?} does not match {pattern}"));
                }
            }
            bound(
                schema,
                "minLength",
                "maxLength",
                s.chars().count(),
                path,
                errors,
            );
        }
        Value::Number(n) => {
            let n = n.as_f64().unwrap_or_default();
            if schema["minimum"].as_f64().is_some_and(|min| n < min) {
                errors.push(format!("{path}: {n} is below {}", schema["minimum"]));
            }
            if schema["maximum"].as_f64().is_some_and(|max| n > max) {
                errors.push(format!("{path}: {n} is above {}", schema["maximum"]));
            }
        }
        Value::Array(items) => {
            bound(schema, "minItems", "maxItems", items.len(), path, errors);
            for (i, item) in items.iter().enumerate() {
                fits(&schema["items"], item, &format!("{path}/{i}"), errors);
            }
        }
        Value::Object(fields) => {
            for (key, v) in fields {
                let at = format!("{path}/{key}");
                if let Some(s) = schema["properties"].get(key) {
                    fits(s, v, &at, errors);
                } else if schema["additionalProperties"].is_object() {
                    fits(&schema["additionalProperties"], v, &at, errors);
                } else if schema["x-kubernetes-preserve-unknown-fields"] != true
                    && schema["additionalProperties"] != true
                {
                    errors.push(format!("{at}: unknown field"));
                }
            }
            for key in required(schema) {
                if !fields.contains_key(key) {
                    errors.push(format!("{path}/{key}: required"));
                }
            }
        }
        _ => {}
    }
}

fn bound(schema: &Value, min: &str, max: &str, n: usize, path: &str, errors: &mut Vec<String>) {
    let n = n as u64;
    if schema[min].as_u64().is_some_and(|m| n < m) {
        errors.push(format!("{path}: {n} is fewer than {min} {}", schema[min]));
    }
    if schema[max].as_u64().is_some_and(|m| n > m) {
        errors.push(format!("{path}: {n} is more than {max} {}", schema[max]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn crd() -> Value {
        json!({
            "spec": {
                "group": "outrigger.dev",
                "names": { "kind": "Thing" },
                "versions": [
                    { "name": "v1alpha1", "served": false, "schema": { "openAPIV3Schema": {} } },
                    { "name": "v1beta1", "served": true, "schema": { "openAPIV3Schema": {
                        "type": "object",
                        "properties": { "spec": {
                            "type": "object",
                            "required": ["host"],
                            "properties": {
                                "host": { "type": "string", "pattern": "^[a-z]+$" },
                                "mode": { "type": "string", "enum": ["A", "B"] },
                                "port": { "x-kubernetes-int-or-string": true },
                                "weight": { "type": "integer", "minimum": 0, "maximum": 100 },
                                "hosts": { "type": "array", "maxItems": 1, "items": { "type": "string" } },
                                "labels": { "type": "object", "additionalProperties": { "type": "string" } },
                                "extra": { "type": "object", "x-kubernetes-preserve-unknown-fields": true,
                                           "properties": { "a": { "type": "boolean" } } },
                                "maybe": { "type": "string", "nullable": true }
                            }
                        } }
                    } } }
                ]
            }
        })
    }

    fn thing(version: &str, spec: Value) -> Value {
        json!({
            "apiVersion": format!("outrigger.dev/{version}"),
            "kind": "Thing",
            "metadata": { "name": "x", "namespace": "y" },
            "spec": spec,
        })
    }

    #[test]
    fn a_fitting_object_has_no_errors() {
        let spec = json!({
            "host": "web", "mode": "A", "port": "http", "weight": 100, "hosts": ["a"],
            "labels": { "k": "v" }, "extra": { "a": true, "istio": 1 }, "maybe": null
        });
        assert_eq!(
            check(&[crd()], &thing("v1beta1", spec)),
            Vec::<String>::new()
        );
        let spec = json!({ "host": "web", "port": 80 });
        assert_eq!(
            check(&[crd()], &thing("v1beta1", spec)),
            Vec::<String>::new()
        );
    }

    #[test]
    fn every_misfit_is_named_by_its_path() {
        let spec = json!({
            "mode": "C", "port": 1.5, "weight": 101, "hosts": ["a", "b"],
            "labels": { "k": 1 }, "extra": { "a": "yes" }, "typo": 1, "maybe": "ok"
        });
        let mut got = check(&[crd()], &thing("v1beta1", spec));
        got.sort();
        assert_eq!(
            got,
            [
                "/spec/extra/a: \"yes\" is not of type boolean",
                "/spec/host: required",
                "/spec/hosts: 2 is more than maxItems 1",
                "/spec/labels/k: 1 is not of type string",
                "/spec/mode: \"C\" is not one of [String(\"A\"), String(\"B\")]",
                "/spec/port: 1.5 is not of type integer or string",
                "/spec/typo: unknown field",
                "/spec/weight: 101 is above 100",
            ]
        );
        let got = check(
            &[crd()],
            &thing("v1beta1", json!({ "host": "Web", "hosts": null })),
        );
        assert_eq!(
            got,
            [
                "/spec/host: \"Web\" does not match ^[a-z]+$",
                "/spec/hosts: null, and the field is not nullable",
            ]
        );
    }

    #[test]
    fn a_version_not_served_or_a_kind_unknown_is_refused() {
        assert_eq!(
            check(&[crd()], &thing("v1alpha1", json!({ "host": "a" }))),
            ["/apiVersion: Thing v1alpha1 is not served"]
        );
        let mut other = thing("v1beta1", json!({ "host": "a" }));
        other["kind"] = json!("Other");
        assert_eq!(
            check(&[crd()], &other),
            ["/kind: no CRD defines Other in outrigger.dev"]
        );
        let mut top = thing("v1beta1", json!({ "host": "a" }));
        top["status"] = json!({});
        assert_eq!(check(&[crd()], &top), ["/status: unknown field"]);
    }
}
