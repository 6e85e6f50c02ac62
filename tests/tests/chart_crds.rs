//! The CRD chart (`charts/outrigger-crds`) and the upgrade path to it, with
//! the real Helm engine: the CRDs are templates (so `helm upgrade` upgrades
//! them) that Helm keeps on uninstall; the main chart carries none; and an
//! install whose CRDs came from the previous chart's `crds/`
//! (`tests/chart/previous/outrigger-0.1.0`, kept verbatim) upgrades without
//! losing a kind, a served version or the storage version, and with every
//! resource written then, and every example of the repository, still
//! accepted by the new schemas.
//!
//! Needs the Helm engine, as tests/tests/chart.rs does
//! (`OUTRIGGER_REQUIRE_HELM=1` makes its absence a failure).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use outrigger_control_plane::crd;
use outrigger_tests::chart::{
    crds_chart_dir, merge_values, render_chart, render_chart_or_skip, render_or_skip, test_ca,
    RenderError, Rendered,
};
use outrigger_tests::crd_schema;
use serde_json::{json, Value};

const NAMESPACE: &str = "outrigger-system";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn previous_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/chart/previous")
}

fn crd_chart() -> Option<Rendered> {
    render_chart_or_skip(&crds_chart_dir(), json!({}), "outrigger-crds", NAMESPACE)
}

/// The previous chart as Helm loads it: its CRDs are in crds/.
fn previous_crds() -> Option<Vec<Value>> {
    let dir = previous_dir().join("outrigger-0.1.0");
    render_chart_or_skip(&dir, json!({}), "outrigger", NAMESPACE).map(|r| r.crds)
}

fn name(o: &Value) -> &str {
    o["metadata"]["name"].as_str().unwrap_or_default()
}

/// `(name, served, storage)` of each version of a CRD.
fn versions(crd: &Value) -> Vec<(String, bool, bool)> {
    crd["spec"]["versions"]
        .as_array()
        .unwrap_or_else(|| panic!("{} has no versions", name(crd)))
        .iter()
        .map(|v| {
            (
                v["name"].as_str().unwrap().to_string(),
                v["served"] == true,
                v["storage"] == true,
            )
        })
        .collect()
}

/// Every mesh resource (`outrigger.dev` group) in the YAML files of `dir`
/// and below, with where it came from.
fn mesh_resources(dir: &Path) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            out.extend(mesh_resources(&path));
        } else if path.extension().is_some_and(|e| e == "yaml") {
            out.extend(mesh_resources_in(&path));
        }
    }
    out
}

fn mesh_resources_in(path: &Path) -> Vec<(String, Value)> {
    let text = std::fs::read_to_string(path).unwrap();
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text)
        .unwrap_or_else(|e| panic!("{} is not YAML: {e}", path.display()));
    docs.into_iter()
        .filter(|d| {
            d["apiVersion"]
                .as_str()
                .is_some_and(|v| v.starts_with("outrigger.dev/"))
        })
        .map(|d| {
            let file = path.strip_prefix(repo()).unwrap_or(path);
            let at = format!("{} {}/{}", file.display(), d["kind"], name(&d));
            (at, d)
        })
        .collect()
}

#[test]
fn the_crd_chart_holds_every_crd_kept_on_uninstall() {
    let Some(r) = crd_chart() else { return };
    r.assert_lints_clean();
    assert!(r.crds.is_empty(), "CRDs in crds/ are never upgraded");
    let mut rendered = BTreeSet::new();
    for o in &r.objects {
        assert_eq!(o["kind"], "CustomResourceDefinition", "{}", name(o));
        let typed: CustomResourceDefinition =
            serde_json::from_value(o.clone()).unwrap_or_else(|e| panic!("{}: {e}", name(o)));
        let annotations = typed.metadata.annotations.unwrap_or_default();
        assert_eq!(
            annotations.get(crd::HELM_KEEP.0).map(String::as_str),
            Some(crd::HELM_KEEP.1),
            "{}: uninstalling the CRD chart would delete every resource of its kind",
            name(o)
        );
        rendered.insert(name(o).to_string());
    }
    let generated: BTreeSet<String> = crd::definitions()
        .into_iter()
        .map(|c| c.metadata.name.unwrap())
        .collect();
    assert_eq!(rendered, generated);
    assert_eq!(rendered.len(), 4);
}

#[test]
fn the_crd_chart_takes_no_values() {
    match render_chart(
        &crds_chart_dir(),
        json!({ "crds": { "enabled": true } }),
        "outrigger-crds",
        NAMESPACE,
    ) {
        Err(RenderError::Helm(e)) => assert!(e.contains("'crds'"), "{e}"),
        Err(RenderError::NoHelm(why)) => assert!(
            std::env::var_os("OUTRIGGER_REQUIRE_HELM").is_none(),
            "{why}"
        ),
        Ok(_) => panic!("the CRD chart accepted a value it does not have"),
    }
}

/// The two releases never claim the same object (Helm would refuse the
/// second install), and the main chart, with every optional object on,
/// carries no CRD, in its templates or in crds/.
#[test]
fn the_crd_chart_and_the_main_chart_render_disjoint_objects() {
    let Some(crds) = crd_chart() else { return };
    let (cert, key) = test_ca();
    let mut values = json!({ "identity": { "ca": { "cert": cert, "key": key } } });
    merge_values(
        &mut values,
        json!({
            "podMonitor": { "enabled": true },
            "serviceMonitor": { "enabled": true },
            "prometheusRule": { "enabled": true },
            "dashboards": { "enabled": true },
        }),
    );
    let Some(main) = render_or_skip(values, "outrigger", NAMESPACE) else {
        return;
    };
    let key = |o: &Value| {
        format!(
            "{}/{}/{}",
            o["kind"].as_str().unwrap(),
            o["metadata"]["namespace"].as_str().unwrap_or(""),
            name(o)
        )
    };
    let a: BTreeSet<String> = crds.objects.iter().map(key).collect();
    let b: BTreeSet<String> = main.objects.iter().map(key).collect();
    assert_eq!(a.len(), crds.objects.len(), "duplicates in the CRD chart");
    assert!(b.len() > 10, "{b:?}");
    let both: Vec<_> = a.intersection(&b).collect();
    assert!(both.is_empty(), "rendered by both charts: {both:?}");
    assert!(
        main.objects
            .iter()
            .chain(&main.crds)
            .all(|o| o["kind"] != "CustomResourceDefinition"),
        "the main chart carries CRDs"
    );
}

#[test]
fn upgrading_from_the_crds_directory_keeps_every_kind_and_served_version() {
    let Some(previous) = previous_crds() else {
        return;
    };
    let Some(new) = crd_chart() else { return };
    assert_eq!(previous.len(), 4, "the fixture holds the four CRDs");
    for old in &previous {
        let crd = name(old);
        let now = new
            .objects
            .iter()
            .find(|o| name(o) == crd)
            .unwrap_or_else(|| panic!("{crd} is dropped by the upgrade"));
        for field in ["group", "scope"] {
            assert_eq!(old["spec"][field], now["spec"][field], "{crd}: {field}");
        }
        for field in ["kind", "plural", "singular", "listKind"] {
            assert_eq!(
                old["spec"]["names"][field], now["spec"]["names"][field],
                "{crd}: names.{field}"
            );
        }
        let before = versions(old);
        let after = versions(now);
        for (version, served, storage) in &before {
            let kept = after.iter().find(|(v, _, _)| v == version);
            if *served {
                assert!(
                    kept.is_some_and(|(_, s, _)| *s),
                    "{crd}: {version} was served and is no longer"
                );
            }
            if *storage {
                // Objects stored as this version must stay readable until
                // they are migrated.
                assert!(
                    kept.is_some_and(|(_, s, _)| *s),
                    "{crd}: {version} was the storage version and is not served"
                );
            }
        }
        assert_eq!(
            after.iter().filter(|(_, _, storage)| *storage).count(),
            1,
            "{crd}: one storage version"
        );
    }
}

/// Every mesh resource of the repository's examples (examples/, the kind
/// run's manifests, the ported Istio tasks), and those written for the
/// previous CRDs, fits the new CRDs; the previous ones also fit the
/// previous CRDs, so that they stand for what a cluster may hold.
#[test]
fn the_new_crds_accept_every_example_and_every_previous_resource() {
    let Some(previous) = previous_crds() else {
        return;
    };
    let Some(new) = crd_chart() else { return };
    let old_resources = mesh_resources_in(&previous_dir().join("resources-0.1.0.yaml"));
    let mut examples = Vec::new();
    for dir in ["examples", "tests/e2e", "tests/tests/istio_tasks"] {
        examples.extend(mesh_resources(&repo().join(dir)));
    }
    let kinds = |rs: &[(String, Value)]| -> BTreeSet<String> {
        rs.iter()
            .map(|(_, r)| r["kind"].as_str().unwrap().to_string())
            .collect()
    };
    let all_kinds: BTreeSet<String> = crd::definitions()
        .into_iter()
        .map(|c| c.spec.names.kind)
        .collect();
    assert_eq!(kinds(&old_resources), all_kinds);
    assert_eq!(kinds(&examples), all_kinds);
    assert!(examples.len() > 20, "{}", examples.len());

    let mut refused = Vec::new();
    for (at, resource) in &old_resources {
        for e in crd_schema::check(&previous, resource) {
            refused.push(format!("{at} (previous CRDs): {e}"));
        }
    }
    for (at, resource) in old_resources.iter().chain(&examples) {
        for e in crd_schema::check(&new.objects, resource) {
            refused.push(format!("{at}: {e}"));
        }
    }
    assert!(refused.is_empty(), "{refused:#?}");
}
