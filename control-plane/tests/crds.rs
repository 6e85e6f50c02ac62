//! The checked-in CRDs are the Rust types' CRDs, and they carry what the API
//! server needs to check and keep.

use outrigger_control_plane::crd;

/// Where the generated CRDs are checked in: the plain manifests, and the
/// template of the `outrigger-crds` chart (with Helm's keep policy), each
/// with the function that generates it.
type Generator = fn() -> String;

const CHECKED_IN: [(&str, Generator); 2] = [
    ("manifests/crds/outrigger.dev.yaml", crd::definitions_yaml),
    (
        "charts/outrigger-crds/templates/outrigger.dev.yaml",
        crd::chart_definitions_yaml,
    ),
];

#[test]
fn checked_in_crds_match_the_rust_types() {
    for (file, generate) in CHECKED_IN {
        let generated = generate();
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(file);
        let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
        if on_disk == generated {
            continue;
        }
        if std::env::var_os("OUTRIGGER_BLESS").is_some() {
            std::fs::write(&path, &generated).unwrap();
            continue;
        }
        panic!(
            "{file} is out of date with control-plane/src/crd.rs; regenerate it with \
             OUTRIGGER_BLESS=1 cargo test -p outrigger-control-plane --test crds"
        );
    }
}

/// The chart's CRDs are the plain ones plus Helm's keep policy and the
/// part-of label, nothing else.
#[test]
fn the_chart_crds_differ_only_by_helm_metadata() {
    let plain: Vec<serde_json::Value> =
        serde_saphyr::from_multiple(&crd::definitions_yaml()).unwrap();
    let chart: Vec<serde_json::Value> =
        serde_saphyr::from_multiple(&crd::chart_definitions_yaml()).unwrap();
    assert_eq!(plain.len(), chart.len());
    for (mut p, mut c) in plain.into_iter().zip(chart) {
        let name = p["metadata"]["name"].clone();
        assert_eq!(
            c["metadata"]["annotations"][crd::HELM_KEEP.0],
            crd::HELM_KEEP.1,
            "{name}"
        );
        assert_eq!(
            c["metadata"]["labels"]["app.kubernetes.io/part-of"], "outrigger",
            "{name}"
        );
        for o in [&mut p, &mut c] {
            let m = o["metadata"].as_object_mut().unwrap();
            m.remove("annotations");
            m.remove("labels");
        }
        assert_eq!(p, c, "{name}");
    }
}

fn schema_of(kind: &str) -> serde_json::Value {
    let crd = crd::definitions()
        .into_iter()
        .find(|c| c.spec.names.kind == kind)
        .unwrap();
    let v = serde_json::to_value(&crd).unwrap();
    v["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

#[test]
fn every_rule_sits_where_it_was_meant_to() {
    for r in crd::RULES {
        let schema = schema_of(r.kind);
        let node = schema
            .pointer(r.at)
            .unwrap_or_else(|| panic!("{}: no {}", r.kind, r.at));
        let rules = node["x-kubernetes-validations"].as_array().unwrap();
        assert!(
            rules
                .iter()
                .any(|x| x["rule"] == r.rule && x["message"] == r.message),
            "{}: rule {:?} missing at {}",
            r.kind,
            r.rule,
            r.at
        );
    }
    for (kind, at, max) in crd::MAX_ITEMS {
        assert_eq!(schema_of(kind).pointer(at).unwrap()["maxItems"], *max);
    }
}

#[test]
fn unknown_fields_reach_the_control_plane() {
    let vs = schema_of("VirtualService");
    for at in [
        "/properties/spec",
        "/properties/spec/properties/http/items",
        "/properties/spec/properties/http/items/properties/retries",
    ] {
        assert_eq!(
            vs.pointer(at).unwrap()["x-kubernetes-preserve-unknown-fields"],
            true,
            "{at}"
        );
    }
}

/// What the API server refuses in a structural schema (the rules of
/// `apiextensions.k8s.io/v1`): `patternProperties`, `additionalProperties:
/// false`, and `additionalProperties` beside `properties`.
fn structural_faults(node: &serde_json::Value, at: &str, out: &mut Vec<String>) {
    match node {
        serde_json::Value::Object(map) => {
            if map.contains_key("patternProperties") {
                out.push(format!("{at}: patternProperties"));
            }
            match map.get("additionalProperties") {
                Some(serde_json::Value::Bool(false)) => {
                    out.push(format!("{at}: additionalProperties: false"))
                }
                Some(_) if map.contains_key("properties") => {
                    out.push(format!("{at}: properties and additionalProperties"))
                }
                _ => {}
            }
            for (k, v) in map {
                structural_faults(v, &format!("{at}/{k}"), out);
            }
        }
        serde_json::Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                structural_faults(v, &format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

#[test]
fn every_schema_is_structural() {
    let mut faults = Vec::new();
    for c in crd::definitions() {
        let kind = c.spec.names.kind.clone();
        structural_faults(&schema_of(&kind), &kind, &mut faults);
    }
    assert!(faults.is_empty(), "{faults:#?}");
    // The map of port-level modes keeps its value schema.
    let pa = schema_of("PeerAuthentication");
    let modes = pa
        .pointer(
            "/properties/spec/properties/portLevelMtls/additionalProperties/properties/mode/enum",
        )
        .unwrap();
    assert!(modes.as_array().unwrap().contains(&"STRICT".into()));
}

#[test]
fn weights_ports_and_durations_are_checked_by_the_schema() {
    let vs = schema_of("VirtualService");
    let dest = "/properties/spec/properties/http/items/properties/route/items";
    assert_eq!(
        vs.pointer(&format!("{dest}/properties/weight")).unwrap()["minimum"].as_f64(),
        Some(0.0)
    );
    let timeout = vs
        .pointer("/properties/spec/properties/http/items/properties/timeout")
        .unwrap();
    assert_eq!(timeout["type"], "string");
    assert!(timeout["pattern"].as_str().unwrap().contains("ms|s|m|h"));
}

#[test]
fn every_kind_has_a_status_subresource_and_the_group() {
    for c in crd::definitions() {
        assert_eq!(c.spec.group, "outrigger.dev");
        let v = &c.spec.versions[0];
        assert_eq!(v.name, "v1alpha1");
        assert!(
            v.subresources.as_ref().unwrap().status.is_some(),
            "{}",
            c.spec.names.kind
        );
        assert_eq!(c.spec.scope, "Namespaced");
    }
}
