//! The Helm chart (`charts/outrigger`), rendered by the real Helm engine and
//! its binaries started as its Deployments say, with no cluster: every object parses as its
//! Kubernetes type; the pieces point at each other (webhook → Service →
//! container port, the mesh config → the control plane's Service and
//! identity, RBAC → what the binaries read and write); and the injector and
//! the control plane start from the rendered Deployments (their args, env
//! and volumes) against a stand-in API server, and serve: the injector's
//! certificate verifies against the webhook's caBundle for the Service's
//! name, and the control plane presents its SPIFFE identity under the CA
//! the chart was given.
//!
//! Needs the Helm engine (`pip install helm-python-sdk`, which `.ci/run`
//! does); without it these tests say so and pass, unless
//! `OUTRIGGER_REQUIRE_HELM=1` (CI) makes that a failure. The binaries are
//! the workspace's, next to this test (see [`workspace_bin`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Affinity, Toleration, TopologySpreadConstraint};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use outrigger_tests::chart::{
    base64_decode, data_of, fake_api_server, fake_api_server_with, merge_values, render,
    render_or_skip, test_ca, token_audience, Container, RenderError, Rendered,
};
use outrigger_tests::{empty, eventually, full, workspace_bin};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use serde_json::{json, Value};

const NAMESPACE: &str = "outrigger-system";

/// The chart with a test CA (its certificate PEM returned too), or `None`
/// (with the reason printed) where the Helm engine is missing and not
/// required.
fn rendered_with(extra: Value) -> Option<(Rendered, String)> {
    let (cert, key) = test_ca();
    let mut values = json!({ "identity": { "ca": { "cert": cert, "key": key } } });
    merge_values(&mut values, extra);
    render_or_skip(values, "outrigger", NAMESPACE).map(|r| (r, cert))
}

fn typed<T: for<'de> k8s_openapi::serde::Deserialize<'de>>(o: &Value) -> T {
    serde_json::from_value(o.clone()).unwrap_or_else(|e| {
        panic!(
            "{} {}: not a valid {}: {e}",
            o["kind"],
            o["metadata"]["name"],
            std::any::type_name::<T>()
        )
    })
}

#[test]
fn the_chart_lints_clean_and_renders_the_mesh() {
    let Some((r, _)) = rendered_with(json!({})) else {
        return;
    };
    r.assert_lints_clean();

    // Every object is a valid object of its kind, in the release's
    // namespace when it is namespaced.
    let mut names = Vec::new();
    for o in &r.objects {
        let kind = o["kind"].as_str().unwrap();
        match kind {
            "Deployment" => drop(typed::<Deployment>(o)),
            "Service" => drop(typed::<Service>(o)),
            "ServiceAccount" => drop(typed::<ServiceAccount>(o)),
            "ConfigMap" => drop(typed::<ConfigMap>(o)),
            "Secret" => drop(typed::<Secret>(o)),
            "ClusterRole" => drop(typed::<ClusterRole>(o)),
            "ClusterRoleBinding" => drop(typed::<ClusterRoleBinding>(o)),
            "Role" => drop(typed::<Role>(o)),
            "RoleBinding" => drop(typed::<RoleBinding>(o)),
            "Pod" => drop(typed::<Pod>(o)),
            "MutatingWebhookConfiguration" => drop(typed::<MutatingWebhookConfiguration>(o)),
            other => panic!("unexpected kind {other} in the chart"),
        }
        let cluster_scoped = kind.starts_with("Cluster") || kind.starts_with("Mutating");
        if !cluster_scoped {
            assert_eq!(o["metadata"]["namespace"], NAMESPACE, "{kind}");
        }
        assert_eq!(
            o["metadata"]["labels"]["app.kubernetes.io/part-of"],
            "outrigger"
        );
        names.push(format!(
            "{kind}/{}",
            o["metadata"]["name"].as_str().unwrap()
        ));
    }
    names.sort();
    assert_eq!(
        names,
        [
            "ClusterRole/outrigger-check-outrigger-system",
            "ClusterRole/outrigger-control-plane",
            "ClusterRole/outrigger-injector",
            "ClusterRoleBinding/outrigger-check-outrigger-system",
            "ClusterRoleBinding/outrigger-control-plane",
            "ClusterRoleBinding/outrigger-injector",
            "ConfigMap/outrigger-mesh-config",
            "Deployment/outrigger-control-plane",
            "Deployment/outrigger-injector",
            "MutatingWebhookConfiguration/outrigger-injector-outrigger-system",
            "Pod/outrigger-check",
            "Role/outrigger-check",
            "Role/outrigger-control-plane-leader",
            "RoleBinding/outrigger-check",
            "RoleBinding/outrigger-control-plane-leader",
            "Secret/outrigger-ca",
            "Secret/outrigger-injector-tls",
            "Service/outrigger-control-plane",
            "Service/outrigger-injector",
            "ServiceAccount/outrigger-check",
            "ServiceAccount/outrigger-control-plane",
            "ServiceAccount/outrigger-injector",
        ]
    );
    // The CRDs are the outrigger-crds chart's (tests/tests/chart_crds.rs):
    // none in crds/ either, which Helm would never upgrade.
    assert!(r.crds.is_empty(), "{:?}", r.crds);
}

#[test]
fn without_a_ca_the_chart_says_what_to_give() {
    let values = json!({});
    match render(values, "outrigger", NAMESPACE) {
        Err(RenderError::Helm(e)) => {
            assert!(
                e.contains("identity.ca")
                    && e.contains("existingSecret")
                    && e.contains("--set-file"),
                "{e}"
            );
        }
        Err(RenderError::NoHelm(why)) => {
            assert!(
                std::env::var_os("OUTRIGGER_REQUIRE_HELM").is_none(),
                "{why}"
            );
        }
        Ok(_) => panic!("the chart rendered without a mesh CA"),
    }
}

/// Values are checked by the chart's schema before anything renders, and
/// the refusal names the value.
#[test]
fn bad_values_are_refused_naming_the_value() {
    let (cert, key) = test_ca();
    for (extra, why) in [
        (
            json!({ "injector": { "failurePolicy": "Ignored" } }),
            "/injector/failurePolicy",
        ),
        (
            json!({ "proxy": { "skipInboundPorts": [70000] } }),
            "/proxy/skipInboundPorts/0",
        ),
        (
            json!({ "controlPlan": { "port": 9000 } }),
            "'controlPlan' not allowed",
        ),
        (
            json!({ "identity": { "certificateLifetime": "1 day" } }),
            "/identity/certificateLifetime",
        ),
        (
            json!({ "image": { "pullPolicy": "Sometimes" } }),
            "/image/pullPolicy",
        ),
        (
            json!({ "proxyInit": { "image": { "pullPolicy": "Sometimes" } } }),
            "/proxyInit/image/pullPolicy",
        ),
        (
            json!({ "podMonitor": { "enabled": "yes" } }),
            "/podMonitor/enabled",
        ),
        (
            json!({ "podMonitor": { "interval": "30 seconds" } }),
            "/podMonitor/interval",
        ),
        (
            json!({ "controlPlane": { "metricsPort": 0 } }),
            "/controlPlane/metricsPort",
        ),
        (
            json!({ "prometheusRule": { "objectives": { "successRatio": 99 } } }),
            "/prometheusRule/objectives/successRatio",
        ),
        (
            json!({ "dashboards": { "enable": true } }),
            "'enable' not allowed",
        ),
        (
            json!({ "proxy": { "accessLog": "on" } }),
            "/proxy/accessLog",
        ),
        // Unquoted `off` in a values file is YAML's false.
        (
            json!({ "proxy": { "accessLog": false } }),
            "/proxy/accessLog",
        ),
        (
            json!({ "proxy": { "metricsFormat": "prometheus" } }),
            "/proxy/metricsFormat",
        ),
        (json!({ "clusterDomain": "a..b" }), "/clusterDomain"),
        (json!({ "clusterName": "" }), "/clusterName"),
        (
            json!({ "proxy": { "tracing": { "sampling": 150 } } }),
            "/proxy/tracing/sampling",
        ),
        (
            json!({ "proxy": { "tracing": { "collector": "https://otel:4318" } } }),
            "/proxy/tracing/collector",
        ),
        (
            json!({ "proxy": { "tracing": { "rate": 1 } } }),
            "'rate' not allowed",
        ),
        (
            json!({ "controlPlane": { "nodeSelecter": {} } }),
            "'nodeSelecter' not allowed",
        ),
        (
            json!({ "injector": { "image": { "digets": "x" } } }),
            "'digets' not allowed",
        ),
        (
            json!({ "controlPlane": { "image": { "digest": "latest" } } }),
            "/controlPlane/image/digest",
        ),
        (
            json!({ "injector": { "image": { "pullPolicy": "Sometimes" } } }),
            "/injector/image/pullPolicy",
        ),
        (
            json!({ "imagePullSecrets": [{ "nam": "x" }] }),
            "/imagePullSecrets/0",
        ),
        (
            json!({ "injector": { "tolerations": {} } }),
            "/injector/tolerations",
        ),
        (
            json!({ "controlPlane": { "podAntiAffinity": "hard" } }),
            "/controlPlane/podAntiAffinity",
        ),
        (
            json!({ "injector": { "podDisruptionBudget": { "maxUnavailable": 0 } } }),
            "/injector/podDisruptionBudget/maxUnavailable",
        ),
        (
            json!({ "injector": { "podLabels": { "a": 1 } } }),
            "/injector/podLabels/a",
        ),
        // The chart's own labels and annotations are not the values' to set.
        (
            json!({ "controlPlane": { "podLabels": { "app.kubernetes.io/name": "x" } } }),
            "/controlPlane/podLabels/app.kubernetes.io~1name",
        ),
        (
            json!({ "injector": { "podAnnotations": { "prometheus.io/port": "1" } } }),
            "/injector/podAnnotations/prometheus.io~1port",
        ),
        (
            json!({ "injector": { "reinvocationPolicy": "Always" } }),
            "/injector/reinvocationPolicy",
        ),
        (
            json!({ "injector": { "matchConditions": [{ "name": "a" }] } }),
            "/injector/matchConditions/0",
        ),
        (
            json!({ "injector": { "matchConditions": [{ "name": "a", "expression": "true", "x": 1 }] } }),
            "'x' not allowed",
        ),
        (
            json!({ "injector": { "certManagerNamespace": "Cert_Manager" } }),
            "/injector/certManagerNamespace",
        ),
        (json!({ "test": { "wait": "forever" } }), "/test/wait"),
        (
            json!({ "proxy": { "image": { "tagg": "x" } } }),
            "'tagg' not allowed",
        ),
    ] {
        let mut values = json!({ "identity": { "ca": { "cert": cert, "key": key } } });
        merge_values(&mut values, extra.clone());
        match render(values, "outrigger", NAMESPACE) {
            Err(RenderError::Helm(e)) => assert!(e.contains(why), "{extra}: {e}"),
            Err(RenderError::NoHelm(w)) => {
                assert!(std::env::var_os("OUTRIGGER_REQUIRE_HELM").is_none(), "{w}");
                return;
            }
            Ok(_) => panic!("{extra} was taken"),
        }
    }
}

/// `proxy.accessLog` is the mesh config's default access log.
#[test]
fn the_access_log_value_reaches_the_mesh_config() {
    for format in ["off", "text", "json"] {
        let Some((r, _)) = rendered_with(json!({ "proxy": { "accessLog": format } })) else {
            return;
        };
        let mesh = r.get("ConfigMap", "outrigger-mesh-config");
        let text = String::from_utf8(data_of(mesh, "mesh.yaml").unwrap()).unwrap();
        let cfg = outrigger_injector::config::MeshConfig::from_yaml(&text).unwrap();
        assert_eq!(cfg.access_log.as_str(), format, "{text}");
    }
}

/// `proxy.metricsFormat`, `clusterDomain` and `clusterName` reach the mesh
/// config (outrigger's names, cluster.local and Kubernetes by default).
#[test]
fn the_metrics_format_and_the_cluster_reach_the_mesh_config() {
    for (extra, format, domain, name) in [
        (json!({}), "outrigger", "cluster.local", "Kubernetes"),
        (
            json!({ "proxy": { "metricsFormat": "istio" }, "clusterDomain": "corp.example", "clusterName": "east" }),
            "istio",
            "corp.example",
            "east",
        ),
    ] {
        let Some((r, _)) = rendered_with(extra) else {
            return;
        };
        let mesh = r.get("ConfigMap", "outrigger-mesh-config");
        let text = String::from_utf8(data_of(mesh, "mesh.yaml").unwrap()).unwrap();
        let cfg = outrigger_injector::config::MeshConfig::from_yaml(&text).unwrap();
        assert_eq!(cfg.metrics_format.as_str(), format, "{text}");
        assert_eq!(cfg.cluster_domain, domain, "{text}");
        assert_eq!(cfg.cluster_name, name, "{text}");
    }
}

/// `proxy.tracing` is the mesh config's tracing: off by default, on with
/// a collector, at the sampling given.
#[test]
fn the_tracing_values_reach_the_mesh_config() {
    let mesh_config = |values: serde_json::Value| {
        let (r, _) = rendered_with(values)?;
        let mesh = r.get("ConfigMap", "outrigger-mesh-config");
        let text = String::from_utf8(data_of(mesh, "mesh.yaml").unwrap()).unwrap();
        Some(outrigger_injector::config::MeshConfig::from_yaml(&text).unwrap())
    };
    let Some(off) = mesh_config(json!({})) else {
        return;
    };
    assert_eq!(off.tracing.collector, "");
    assert_eq!(off.tracing.sampling.get(), 1.0);
    let on = mesh_config(json!({ "proxy": { "tracing": {
        "collector": "http://otel-collector.observability:4318",
        "sampling": 12.5,
    } } }))
    .unwrap();
    assert_eq!(
        on.tracing.collector,
        "http://otel-collector.observability:4318"
    );
    assert_eq!(on.tracing.sampling.get(), 12.5);
}

/// The dashboards (ConfigMaps for Grafana's sidecar) and the rules (a
/// PrometheusRule) are off by default; on, they hold the chart's files
/// unchanged (tests/tests/dashboards.rs tests those against a real
/// Prometheus), labelled as the values say, with the objectives from the
/// values.
#[test]
fn the_dashboards_and_the_rules_render_as_their_files() {
    let Some((r, _)) = rendered_with(json!({})) else {
        return;
    };
    assert_eq!(r.all("PrometheusRule").count(), 0);
    assert!(!r.all("ConfigMap").any(|c| c["metadata"]["name"]
        .as_str()
        .unwrap()
        .starts_with("outrigger-dashboard-")));

    let chart = outrigger_tests::chart::chart_dir();
    let rules_text = std::fs::read_to_string(chart.join("rules/outrigger.rules.yaml")).unwrap();
    let rules: Value = serde_saphyr::from_str(&rules_text).unwrap();
    let mut dashboards = BTreeMap::new();
    for entry in std::fs::read_dir(chart.join("dashboards")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        dashboards.insert(name, std::fs::read_to_string(&path).unwrap());
    }
    assert_eq!(dashboards.len(), 4);

    let Some((r, _)) = rendered_with(json!({
        "dashboards": { "enabled": true, "annotations": { "grafana_folder": "Outrigger" } },
        "prometheusRule": { "enabled": true, "labels": { "release": "kube-prometheus-stack" } },
    })) else {
        return;
    };
    r.assert_lints_clean();
    let maps: Vec<_> = r
        .all("ConfigMap")
        .filter(|c| {
            c["metadata"]["name"]
                .as_str()
                .unwrap()
                .starts_with("outrigger-dashboard-")
        })
        .collect();
    assert_eq!(maps.len(), dashboards.len());
    for (file, text) in &dashboards {
        let name = format!("outrigger-dashboard-{}", file.trim_end_matches(".json"));
        let map = r.get("ConfigMap", &name);
        let typed_map: ConfigMap = typed(map);
        let data = typed_map.data.unwrap_or_default();
        assert_eq!(data.keys().collect::<Vec<_>>(), [file], "{name}");
        assert!(data[file] == *text, "{name} differs from dashboards/{file}");
        let meta = &map["metadata"];
        assert_eq!(meta["namespace"], NAMESPACE);
        assert_eq!(meta["labels"]["grafana_dashboard"], "1", "{name}");
        assert_eq!(meta["labels"]["app.kubernetes.io/part-of"], "outrigger");
        assert_eq!(meta["annotations"]["grafana_folder"], "Outrigger");
    }
    let rule = r.get("PrometheusRule", "outrigger");
    assert_eq!(rule["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(rule["metadata"]["namespace"], NAMESPACE);
    assert_eq!(
        rule["metadata"]["labels"]["release"],
        "kube-prometheus-stack"
    );
    assert_eq!(
        rule["metadata"]["labels"]["app.kubernetes.io/part-of"],
        "outrigger"
    );
    assert_eq!(
        rule["spec"], rules,
        "the PrometheusRule's spec is not the rules file"
    );

    // The sidecar's label, the namespaces and the objectives are values.
    let Some((r, _)) = rendered_with(json!({
        "dashboards": { "enabled": true, "label": "dashboard", "labelValue": "outrigger", "namespace": "monitoring" },
        "prometheusRule": {
            "enabled": true,
            "namespace": "monitoring",
            "objectives": { "successRatio": 0.995, "latencyP99Seconds": 0.25 },
        },
    })) else {
        return;
    };
    let map = r.get("ConfigMap", "outrigger-dashboard-workload");
    assert_eq!(map["metadata"]["namespace"], "monitoring");
    assert_eq!(map["metadata"]["labels"]["dashboard"], "outrigger");
    assert!(map["metadata"]["labels"].get("grafana_dashboard").is_none());
    let rule = r.get("PrometheusRule", "outrigger");
    assert_eq!(rule["metadata"]["namespace"], "monitoring");
    let mut expected = rules.clone();
    let mut replaced = 0;
    for group in expected["groups"].as_array_mut().unwrap() {
        for r in group["rules"].as_array_mut().unwrap() {
            let objective = match r["record"].as_str() {
                Some("outrigger:objective:success_ratio") => "vector(0.995)",
                Some("outrigger:objective:latency_p99_seconds") => "vector(0.25)",
                _ => continue,
            };
            r["expr"] = json!(objective);
            replaced += 1;
        }
    }
    assert_eq!(replaced, 2, "the rules file has both objectives");
    assert_eq!(rule["spec"], expected);
}

/// The pieces point at each other.
#[test]
fn the_charts_pieces_agree() {
    let Some((r, cert)) = rendered_with(json!({ "trustDomain": "mesh.example" })) else {
        return;
    };
    // The webhook calls the injector's Service, whose port reaches the
    // injector's webhook port.
    let webhook = &webhook_of(&r)["webhooks"][0];
    let target = &webhook["clientConfig"]["service"];
    assert_eq!(target["path"], "/mutate");
    let service = r.get("Service", target["name"].as_str().unwrap());
    assert_eq!(service["metadata"]["namespace"], target["namespace"]);
    let port = service["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["port"] == target["port"])
        .expect("the Service has the webhook's port");
    let injector = r.get("Deployment", "outrigger-injector");
    assert_selects(service, injector);
    let c = &injector["spec"]["template"]["spec"]["containers"][0];
    let webhook_port = named_port(c, port["targetPort"].as_str().unwrap());
    assert!(
        args(c).contains(&format!("--listen=0.0.0.0:{webhook_port}")),
        "the injector listens on its webhook port: {:?}",
        args(c)
    );
    // Pods only, on CREATE; never the control plane's namespace.
    assert_eq!(webhook["rules"][0]["resources"], json!(["pods"]));
    assert_eq!(webhook["rules"][0]["operations"], json!(["CREATE"]));
    assert_eq!(webhook["sideEffects"], "None");
    let excluded = &webhook["namespaceSelector"]["matchExpressions"][0];
    assert_eq!(excluded["operator"], "NotIn");
    assert!(excluded["values"]
        .as_array()
        .unwrap()
        .contains(&json!(NAMESPACE)));

    // The mesh config: a valid one, naming the control plane's Service and
    // identity, and the proxy image of this chart.
    let mesh = r.get("ConfigMap", "outrigger-mesh-config");
    let text = String::from_utf8(data_of(mesh, "mesh.yaml").unwrap()).unwrap();
    let cfg = outrigger_injector::config::MeshConfig::from_yaml(&text)
        .unwrap_or_else(|e| panic!("the chart's mesh config: {e}\n{text}"));
    let cp_service = r.get("Service", "outrigger-control-plane");
    let cp_port = cp_service["spec"]["ports"][0]["port"].as_u64().unwrap();
    assert_eq!(
        cfg.control_plane_address,
        format!("outrigger-control-plane.{NAMESPACE}.svc:{cp_port}")
    );
    assert_eq!(cfg.control_plane_namespace, NAMESPACE);
    let cp = r.get("Deployment", "outrigger-control-plane");
    assert_selects(cp_service, cp);
    let cp_pod = &cp["spec"]["template"]["spec"];
    assert_eq!(
        cp_pod["serviceAccountName"].as_str().unwrap(),
        cfg.control_plane_service_account
    );
    assert_eq!(cfg.trust_domain, "mesh.example");
    assert_eq!(cfg.proxy_image, "outrigger/proxy:0.1.0");
    assert_eq!(cfg.access_log, outrigger_api::AccessLogFormat::Off);
    let cp_container = &cp_pod["containers"][0];
    assert_eq!(cp_container["image"], "outrigger/control-plane:0.1.0");
    assert!(args(cp_container).contains(&"--trust-domain=mesh.example".to_string()));
    let target_port = cp_service["spec"]["ports"][0]["targetPort"]
        .as_str()
        .unwrap();
    assert_eq!(named_port(cp_container, target_port), cp_port);

    // The CA Secret holds what the control plane's arguments name, and
    // its roots are what the injector hands proxies.
    let ca = r.get("Secret", "outrigger-ca");
    assert_eq!(data_of(ca, "ca.pem").unwrap(), cert.as_bytes());
    assert_eq!(data_of(ca, "roots.pem").unwrap(), cert.as_bytes());
    assert!(data_of(ca, "ca.key")
        .unwrap()
        .starts_with(b"-----BEGIN PRIVATE KEY"));

    // Each service account may do what its binary does, and no more
    // than that: the control plane watches the translator's inputs,
    // writes the mesh resources' status and creates TokenReviews; the
    // injector watches namespaces.
    let cp_rules = r.grants("outrigger-control-plane", NAMESPACE).cluster;
    for (group, resource) in [
        ("", "namespaces"),
        ("", "services"),
        ("", "pods"),
        ("discovery.k8s.io", "endpointslices"),
        ("outrigger.dev", "virtualservices"),
        ("outrigger.dev", "destinationrules"),
        ("outrigger.dev", "authorizationpolicies"),
        ("outrigger.dev", "peerauthentications"),
    ] {
        for verb in ["list", "watch"] {
            assert!(
                cp_rules.contains(&(group.into(), resource.into(), verb.into())),
                "control plane: {verb} {group}/{resource}"
            );
        }
        if group == "outrigger.dev" {
            let status = format!("{resource}/status");
            assert!(
                cp_rules.contains(&(group.into(), status, "patch".into())),
                "{resource}/status"
            );
        }
    }
    assert!(cp_rules.contains(&(
        "authentication.k8s.io".into(),
        "tokenreviews".into(),
        "create".into()
    )));
    assert!(
        !cp_rules.iter().any(|(_, res, _)| res == "secrets"),
        "the control plane reads no Secrets through the API"
    );
    let inj_rules = r.grants("outrigger-injector", NAMESPACE).cluster;
    for verb in ["list", "watch"] {
        assert!(inj_rules.contains(&("".into(), "namespaces".into(), verb.into())));
    }
    assert!(
        inj_rules.iter().all(|(_, res, _)| res == "namespaces"),
        "{inj_rules:?}"
    );

    // The injector sees the CA's roots only, never its key.
    let inj_pod = &injector["spec"]["template"]["spec"];
    let roots_volume = inj_pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["secret"]["secretName"] == "outrigger-ca")
        .expect("the injector mounts the CA's roots");
    assert_eq!(
        roots_volume["secret"]["items"],
        json!([{ "key": "roots.pem", "path": "roots.pem" }])
    );
    // The injector reads its mesh config at start: any change of it
    // (here the control plane's port) changes the pod template, so the
    // injector restarts with it.
    let checksum = |r: &Rendered| {
        r.get("Deployment", "outrigger-injector")["spec"]["template"]["metadata"]["annotations"]
            ["checksum/mesh-config"]
            .clone()
    };
    let (moved, _) =
        rendered_with(json!({ "trustDomain": "mesh.example", "controlPlane": { "port": 9000 } }))
            .unwrap();
    assert_ne!(checksum(&r), checksum(&moved));
    // Neither runs as root nor can gain privileges.
    for d in [injector, cp] {
        let sc = &d["spec"]["template"]["spec"]["containers"][0]["securityContext"];
        assert_eq!(sc["runAsNonRoot"], true);
        assert_eq!(sc["allowPrivilegeEscalation"], false);
        assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
    }
}

/// `failurePolicy` and the webhook certificate are the operator's choice.
#[test]
fn the_webhook_takes_a_given_certificate_and_failure_policy() {
    let Some((r, _)) = rendered_with(json!({
        "injector": {
            "failurePolicy": "Fail",
            "tls": { "existingSecret": "my-webhook-tls", "caBundle": "PEM OF MY CA" },
        }
    })) else {
        return;
    };
    let webhook = &webhook_of(&r)["webhooks"][0];
    assert_eq!(webhook["failurePolicy"], "Fail");
    let bundle = base64_decode(webhook["clientConfig"]["caBundle"].as_str().unwrap()).unwrap();
    assert_eq!(bundle, b"PEM OF MY CA");
    assert!(r
        .all("Secret")
        .all(|s| s["metadata"]["name"] != "outrigger-injector-tls"));
    let tls = volume(r.get("Deployment", "outrigger-injector"), "tls");
    assert_eq!(tls["secret"]["secretName"], "my-webhook-tls");
}

/// The mesh CA can be cert-manager's Secret (`kubernetes.io/tls`): the
/// control plane reads either layout from the mounted folder (and re-reads
/// it on change), and the injector hands proxies its `ca.crt`.
#[test]
fn the_mesh_ca_can_be_a_cert_manager_secret() {
    let Some((r, _)) = rendered_with(json!({
        "identity": { "ca": { "existingSecret": "mesh-ca", "existingSecretLayout": "tls" } }
    })) else {
        return;
    };
    r.assert_lints_clean();
    assert!(r
        .all("Secret")
        .all(|s| s["metadata"]["name"] != "outrigger-ca"));
    let cp = r.get("Deployment", "outrigger-control-plane");
    assert_eq!(volume(cp, "ca")["secret"]["secretName"], "mesh-ca");
    let container = &cp["spec"]["template"]["spec"]["containers"][0];
    let mount = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "ca")
        .unwrap();
    assert!(args(container).contains(&format!(
        "--ca-secret={}",
        mount["mountPath"].as_str().unwrap()
    )));
    assert!(mount.get("subPath").is_none(), "a subPath is never updated");
    let roots = volume(r.get("Deployment", "outrigger-injector"), "roots");
    assert_eq!(roots["secret"]["secretName"], "mesh-ca");
    assert_eq!(
        roots["secret"]["items"],
        json!([{ "key": "ca.crt", "path": "roots.pem" }])
    );
    // Outrigger's own layout stays the default.
    let (r, _) = rendered_with(json!({})).unwrap();
    let roots = volume(r.get("Deployment", "outrigger-injector"), "roots");
    assert_eq!(roots["secret"]["items"][0]["key"], "roots.pem");
    let Err(RenderError::Helm(e)) = render(
        json!({ "identity": { "ca": { "existingSecret": "x", "existingSecretLayout": "pkcs12" } } }),
        "outrigger",
        NAMESPACE,
    ) else {
        panic!("an unknown layout was accepted");
    };
    assert!(e.contains("/identity/ca/existingSecretLayout"), "{e}");
}

/// cert-manager can issue the webhook's certificate: the chart renders a
/// Certificate for the Service's names into the Secret the injector mounts,
/// and leaves caBundle to cert-manager's CA injector.
#[test]
fn the_webhook_certificate_can_come_from_cert_manager() {
    let issuer = json!({ "kind": "ClusterIssuer", "name": "my-ca" });
    let Some((r, _)) = rendered_with(json!({
        "injector": { "tls": { "certManager": { "issuerRef": issuer } } }
    })) else {
        return;
    };
    let cert = r.get("Certificate", "outrigger-injector");
    assert_eq!(cert["apiVersion"], "cert-manager.io/v1");
    assert_eq!(cert["spec"]["issuerRef"], issuer);
    assert!(cert["spec"]["dnsNames"]
        .as_array()
        .unwrap()
        .contains(&json!(format!("outrigger-injector.{NAMESPACE}.svc"))));
    let secret = cert["spec"]["secretName"].as_str().unwrap();
    let tls = volume(r.get("Deployment", "outrigger-injector"), "tls");
    assert_eq!(tls["secret"]["secretName"], secret);
    // No certificate of the chart's own, and the bundle is cert-manager's.
    assert!(r.all("Secret").all(|s| s["metadata"]["name"] != secret));
    let config = webhook_of(&r);
    assert_eq!(
        config["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
        format!("{NAMESPACE}/outrigger-injector")
    );
    assert!(config["webhooks"][0]["clientConfig"]
        .get("caBundle")
        .is_none());

    // Both ways at once is refused.
    let (cert, key) = test_ca();
    let both = json!({
        "identity": { "ca": { "cert": cert, "key": key } },
        "injector": { "tls": { "certManager": { "issuerRef": issuer },
                               "existingSecret": "x", "caBundle": "y" } }
    });
    match render(both, "outrigger", NAMESPACE) {
        Err(RenderError::Helm(e)) => assert!(e.contains("not both"), "{e}"),
        other => panic!("both certificate sources were taken: {other:?}"),
    }
}

/// The injector, started from the rendered Deployment against a stand-in
/// API server, is ready once it has the namespaces, and answers an
/// AdmissionReview over TLS that verifies against the webhook's caBundle
/// for the Service's DNS name, as the API server checks it; the pod it
/// returns carries the chart's proxy image, control plane and trust roots.
#[tokio::test]
async fn the_charts_injector_answers_the_api_server() {
    let Some((r, cert)) = rendered_with(json!({})) else {
        return;
    };
    let binary = workspace_bin("outrigger-injector").expect("the outrigger-injector binary");
    let scratch = tempfile::tempdir().unwrap();
    let shop = meshed_namespace();
    let api = fake_api_server(
        BTreeMap::from([("/api/v1/namespaces".to_string(), vec![shop])]),
        scratch.path(),
    )
    .await;
    let deployment = r.get("Deployment", "outrigger-injector");
    let injector = Container::start(
        &r,
        deployment,
        &binary,
        &[("KUBECONFIG", api.kubeconfig.to_str().unwrap())],
    );

    wait_ready(&injector, deployment, "the injector", &[]).await;
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "generateName": "web-5c9d-", "namespace": "shop" },
        "spec": { "serviceAccountName": "web",
                  "containers": [{ "name": "web", "image": "web:1" }] }
    });
    let injected = admit(&r, &injector, &pod).await;
    let injected: Pod = serde_json::from_value(injected).unwrap();
    let spec = injected.spec.unwrap();
    let proxy = spec
        .init_containers
        .iter()
        .flatten()
        .find(|c| c.name == "outrigger-proxy")
        .expect("the proxy, as a native sidecar");
    assert_eq!(proxy.image.as_deref(), Some("outrigger/proxy:0.1.0"));
    let init = spec
        .init_containers
        .iter()
        .flatten()
        .find(|c| c.name == "outrigger-init")
        .expect("the init step");
    assert_eq!(init.image.as_deref(), Some("outrigger/proxy-init:0.1.0"));
    let env = |name: &str| {
        proxy
            .env
            .iter()
            .flatten()
            .find(|e| e.name == name)
            .and_then(|e| e.value.clone())
            .unwrap_or_else(|| panic!("the proxy has no {name}"))
    };
    assert_eq!(
        env("OUTRIGGER_CONTROL_PLANE"),
        format!("outrigger-control-plane.{NAMESPACE}.svc:8090")
    );
    assert_eq!(
        env("OUTRIGGER_CONTROL_PLANE_IDENTITY"),
        format!("spiffe://cluster.local/ns/{NAMESPACE}/sa/outrigger-control-plane")
    );
    assert_eq!(env("OUTRIGGER_TRUST_ROOTS_PEM").trim(), cert.trim());
    injector.running().unwrap();
    assert_granted(&r, "outrigger-injector", &api.seen());
}

/// The control plane, started from the rendered Deployment against a
/// stand-in API server with an empty cluster: its readiness probe (HTTPS,
/// as the kubelet runs it, without verifying) passes once every kind is
/// listed, and it presents the SPIFFE identity proxies expect, under the
/// chart's CA.
#[tokio::test]
async fn the_charts_control_plane_serves_under_the_charts_ca() {
    let Some((r, cert)) = rendered_with(json!({})) else {
        return;
    };
    let binary =
        workspace_bin("outrigger-control-plane").expect("the outrigger-control-plane binary");
    let scratch = tempfile::tempdir().unwrap();
    // One mesh resource, so that the control plane writes a status.
    let vs = json!({
        "apiVersion": "outrigger.dev/v1alpha1", "kind": "VirtualService",
        "metadata": { "name": "web", "namespace": "shop", "resourceVersion": "1",
                      "generation": 1, "uid": "vs-1" },
        "spec": { "hosts": ["web"], "http": [{ "route": [{ "destination": { "host": "web" } }] }] }
    });
    let api = fake_api_server(
        BTreeMap::from([(
            "/apis/outrigger.dev/v1alpha1/virtualservices".to_string(),
            vec![vs],
        )]),
        scratch.path(),
    )
    .await;
    let deployment = r.get("Deployment", "outrigger-control-plane");
    let cp = Container::start(
        &r,
        deployment,
        &binary,
        &[("KUBECONFIG", api.kubeconfig.to_str().unwrap())],
    );
    let c = &deployment["spec"]["template"]["spec"]["containers"][0];
    let probe = &c["readinessProbe"]["httpGet"];
    assert_eq!(probe["scheme"], "HTTPS");
    let addr = cp.ports[probe["port"].as_str().unwrap()];
    let path = probe["path"].as_str().unwrap().to_string();

    // The proxies' view: trust the chart's roots, expect the control
    // plane's identity.
    let roots: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert.as_bytes())
        .map(|c| c.unwrap())
        .collect();
    let trust = outrigger_identity::tls::TrustBundle::new("cluster.local", &roots).unwrap();
    let expected = outrigger_identity::spiffe::SpiffeId::new(
        "cluster.local",
        NAMESPACE,
        "outrigger-control-plane",
    )
    .unwrap();
    let tls = outrigger_identity::tls::client_config(
        Arc::new(Default::default()),
        &trust,
        expected,
        &[b"http/1.1"],
    )
    .unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
    let get = |path: String| {
        let connector = connector.clone();
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
            let stream = connector
                .connect(outrigger_identity::tls::server_name(), tcp)
                .await
                .ok()?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .ok()?;
            tokio::spawn(conn);
            let resp = sender
                .send_request(
                    http::Request::get(path)
                        .header("host", "outrigger-control-plane")
                        .body(empty())
                        .unwrap(),
                )
                .await
                .ok()?;
            Some(resp.status().as_u16())
        }
    };
    let ready = eventually(Duration::from_secs(30), || {
        let path = path.clone();
        async move { get(path).await == Some(200) }
    })
    .await;
    cp.running().unwrap();
    assert!(
        ready,
        "the control plane never answered {path} as {NAMESPACE}/outrigger-control-plane: {}",
        cp.logs()
    );
    assert_eq!(get("/live".into()).await, Some(200));
    // Ready means every kind was listed and watched; then the
    // VirtualService's status is written. All of it allowed.
    let patched = eventually(Duration::from_secs(30), || {
        let seen = api.seen();
        async move {
            seen.iter()
                .any(|q| q.method == "PATCH" && q.path.ends_with("/virtualservices/web/status"))
        }
    })
    .await;
    assert!(patched, "no status write: {:?}\n{}", api.seen(), cp.logs());
    assert_granted(&r, "outrigger-control-plane", &api.seen());

    // Prometheus, as the pod's annotations tell it: plain HTTP, on the
    // metrics port, where build and process metrics are with the rest.
    let annotations = &deployment["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(annotations.get("prometheus.io/scheme"), None);
    let port: u64 = annotations["prometheus.io/port"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(named_port(c, "metrics"), port);
    let (status, text) = outrigger_tests::get(cp.ports["metrics"], "/metrics").await;
    assert_eq!(status, 200, "{text}");
    assert!(
        text.contains("outrigger_build_info{version=\"")
            && text.contains("outrigger_cp_connected_proxies")
            && text.contains("process_resident_memory_bytes"),
        "{text}"
    );
}

#[test]
fn podmonitors_are_optional_and_name_the_containers_ports() {
    let Some((r, _)) = rendered_with(json!({})) else {
        return;
    };
    assert_eq!(r.all("PodMonitor").count(), 0);
    let Some((r, _)) = rendered_with(json!({ "podMonitor": {
        "enabled": true, "interval": "15s", "labels": { "release": "kube-prometheus" } } }))
    else {
        return;
    };
    let cp = r.get("Deployment", "outrigger-control-plane");
    let injector = r.get("Deployment", "outrigger-injector");
    let container = |d: &Value| d["spec"]["template"]["spec"]["containers"][0].clone();
    for (name, deployment) in [
        ("outrigger-control-plane", Some(cp)),
        ("outrigger-injector", Some(injector)),
        ("outrigger-proxies", None),
    ] {
        let m = r.get("PodMonitor", name);
        assert_eq!(m["apiVersion"], "monitoring.coreos.com/v1");
        assert_eq!(m["metadata"]["namespace"], NAMESPACE);
        assert_eq!(m["metadata"]["labels"]["release"], "kube-prometheus");
        let endpoint = &m["spec"]["podMetricsEndpoints"][0];
        assert_eq!(endpoint["path"], "/metrics", "{name}");
        assert_eq!(endpoint["interval"], "15s", "{name}");
        let port = endpoint["port"].as_str().unwrap();
        match deployment {
            // The PodMonitor selects its Deployment's pods, by a port the
            // container declares, the one the pod's annotations name.
            Some(d) => {
                let labels = &d["spec"]["template"]["metadata"]["labels"];
                for (k, v) in m["spec"]["selector"]["matchLabels"].as_object().unwrap() {
                    assert_eq!(&labels[k], v, "{name}: {k}");
                }
                let n = named_port(&container(d), port);
                assert_eq!(
                    d["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"],
                    n.to_string(),
                    "{name}"
                );
            }
            // Proxies anywhere: the port the injector gives the proxy.
            None => {
                assert_eq!(m["spec"]["namespaceSelector"]["any"], true);
                assert_eq!(port, "outrigger-admin");
            }
        }
    }
}

#[test]
fn servicemonitors_scrape_the_metrics_ports_of_the_services() {
    let Some((r, _)) = rendered_with(json!({})) else {
        return;
    };
    assert_eq!(r.all("ServiceMonitor").count(), 0);
    let Some((r, _)) = rendered_with(json!({
        "serviceMonitor": { "enabled": true, "interval": "30s", "labels": { "release": "kp" } },
        "podMonitor": { "enabled": true } }))
    else {
        return;
    };
    for name in ["outrigger-control-plane", "outrigger-injector"] {
        let m = r.get("ServiceMonitor", name);
        assert_eq!(m["apiVersion"], "monitoring.coreos.com/v1");
        assert_eq!(m["metadata"]["namespace"], NAMESPACE);
        assert_eq!(m["metadata"]["labels"]["release"], "kp");
        let service = r.get("Service", name);
        for (k, v) in m["spec"]["selector"]["matchLabels"].as_object().unwrap() {
            assert_eq!(&service["metadata"]["labels"][k], v, "{name}: {k}");
        }
        let endpoint = &m["spec"]["endpoints"][0];
        assert_eq!(endpoint["path"], "/metrics");
        assert_eq!(endpoint["scheme"], "http");
        assert_eq!(endpoint["interval"], "30s");
        // The Service's port of that name leads to the container port the
        // pod's prometheus.io/port annotation names: plain /metrics.
        let port = service["spec"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == endpoint["port"])
            .unwrap_or_else(|| panic!("{name}: no Service port {}", endpoint["port"]));
        let deployment = r.get("Deployment", name);
        let container = &deployment["spec"]["template"]["spec"]["containers"][0];
        let target = named_port(container, port["targetPort"].as_str().unwrap());
        assert_eq!(
            deployment["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"],
            target.to_string(),
            "{name}"
        );
        // Not scraped twice: the PodMonitors keep to the proxies.
        assert!(
            r.all("PodMonitor").all(|p| p["metadata"]["name"] != name),
            "{name} has both a PodMonitor and a ServiceMonitor"
        );
    }
    assert_eq!(r.all("PodMonitor").count(), 1);
}

/// The cluster path end to end, minus the kubelet's network: a pod the
/// chart's injector injects gets a proxy that, started from the injected
/// container (its args, its env with the downward API filled in, the
/// projected token), certifies with the chart's control plane (a
/// TokenReview for audience `outrigger` at the stand-in API server), checks
/// the control plane's identity, follows its config stream and turns
/// ready. Only the control plane's address is changed (its Service's DNS
/// name does not resolve here), and the init step is not run (it needs the
/// pod's network namespace; `netns_mesh.rs` runs it).
#[tokio::test]
async fn a_pod_the_chart_injects_joins_the_charts_mesh() {
    let Some((r, _)) = rendered_with(json!({})) else {
        return;
    };
    let bin = |name: &str| workspace_bin(name).unwrap_or_else(|| panic!("the {name} binary"));
    let scratch = tempfile::tempdir().unwrap();
    let shop = meshed_namespace();
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": "web-1", "namespace": "shop", "labels": { "app": "web" },
                      "resourceVersion": "1" },
        "spec": { "serviceAccountName": "web",
                  "containers": [{ "name": "web", "image": "web:1" }] }
    });
    let mut listed = pod.clone();
    listed["status"] = json!({ "phase": "Running", "podIP": "127.0.0.1" });
    // The API server's TokenReview, as a real one decides: this pod's
    // token, minted for an audience the review asks about.
    let review: outrigger_tests::chart::Create = Arc::new(|sent: &Value| {
        let token = sent["spec"]["token"].as_str().unwrap_or_default();
        let asked = sent["spec"]["audiences"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let ok = token_audience(token)
            .is_some_and(|(t, aud)| t == "token-of-web-1" && asked.contains(&json!(aud)));
        let mut answer = sent.clone();
        answer["status"] = if ok {
            json!({ "authenticated": true, "audiences": asked,
                    "user": { "username": "system:serviceaccount:shop:web" } })
        } else {
            json!({ "authenticated": false, "error": "token not valid for these audiences" })
        };
        answer
    });
    // One stand-in API server per binary, so that each one's requests are
    // held against its own ServiceAccount's rules.
    let cp_dir = scratch.path().join("cp");
    let inj_dir = scratch.path().join("injector");
    std::fs::create_dir_all(&cp_dir).unwrap();
    std::fs::create_dir_all(&inj_dir).unwrap();
    let cp_api = fake_api_server_with(
        BTreeMap::from([
            ("/api/v1/namespaces".to_string(), vec![shop.clone()]),
            ("/api/v1/pods".to_string(), vec![listed]),
        ]),
        BTreeMap::from([(
            "/apis/authentication.k8s.io/v1/tokenreviews".to_string(),
            review,
        )]),
        &cp_dir,
    )
    .await;
    let inj_api = fake_api_server(
        BTreeMap::from([("/api/v1/namespaces".to_string(), vec![shop])]),
        &inj_dir,
    )
    .await;
    let cp_deployment = r.get("Deployment", "outrigger-control-plane");
    let cp = Container::start(
        &r,
        cp_deployment,
        &bin("outrigger-control-plane"),
        &[("KUBECONFIG", cp_api.kubeconfig.to_str().unwrap())],
    );
    let inj_deployment = r.get("Deployment", "outrigger-injector");
    let injector = Container::start(
        &r,
        inj_deployment,
        &bin("outrigger-injector"),
        &[("KUBECONFIG", inj_api.kubeconfig.to_str().unwrap())],
    );
    wait_ready(&injector, inj_deployment, "the injector", &[&cp]).await;

    let injected = admit(&r, &injector, &pod).await;
    let cp_addr = cp.ports["config"].to_string();
    let proxy = Container::start_in_pod(
        &r,
        &injected,
        "outrigger-proxy",
        &bin("outrigger-proxy"),
        &[("OUTRIGGER_CONTROL_PLANE", &cp_addr)],
        &[4140, 4143],
        Some("token-of-web-1"),
    );
    let container = injected["spec"]["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "outrigger-proxy")
        .unwrap()
        .clone();
    let as_deployment =
        json!({ "spec": { "template": { "spec": { "containers": [container] } } } });
    wait_ready(&proxy, &as_deployment, "the injected proxy", &[&cp]).await;

    // Ready means the first update of the stream is applied, and the
    // control plane serves the stream only to a client certificate of the
    // pod's namespace and ServiceAccount (server::authorize): the proxy
    // holds shop/web's identity from the chart's CA. Its log names it.
    let logs = proxy.logs();
    assert!(
        logs.contains("certificate held")
            && logs.contains("identity=spiffe://cluster.local/ns/shop/sa/web"),
        "{logs}"
    );

    // The control plane asked the API server about the token, and each
    // binary asked only what its RBAC allows.
    let seen = cp_api.seen();
    assert!(
        seen.iter()
            .any(|q| q.method == "POST" && q.path.ends_with("/tokenreviews")),
        "{seen:?}"
    );
    assert_granted(&r, "outrigger-control-plane", &seen);
    assert_granted(&r, "outrigger-injector", &inj_api.seen());
}

/// Every request a binary made of the API server is one the chart's RBAC
/// allows its ServiceAccount (cluster-wide, or in the namespace of a
/// RoleBinding).
fn assert_granted(r: &Rendered, account: &str, seen: &[outrigger_tests::chart::ApiRequest]) {
    r.grants(account, NAMESPACE).assert_allow(account, seen);
}

/// Polls the readiness probe of `deployment`'s container (HTTP, as the
/// kubelet runs it) until it answers 200; panics with its logs and those
/// of `others` if it never does within 60 s, or if any of them exits.
async fn wait_ready(container: &Container, deployment: &Value, what: &str, others: &[&Container]) {
    let c = &deployment["spec"]["template"]["spec"]["containers"][0];
    let probe = &c["readinessProbe"]["httpGet"];
    let port = match &probe["port"] {
        Value::String(name) => name.clone(),
        other => other.to_string(),
    };
    let admin = container.ports[&port];
    let path = probe["path"].as_str().unwrap().to_string();
    let exited = || {
        std::iter::once(container)
            .chain(others.iter().copied())
            .find_map(|c| c.running().err())
    };
    let ready = eventually(Duration::from_secs(60), || {
        let path = path.clone();
        let gone = exited().is_some();
        async move { gone || matches!(outrigger_tests::try_get(admin, &path).await, Ok((200, _))) }
    })
    .await;
    if let Some(e) = exited() {
        panic!("while waiting for {what}: a process {e}");
    }
    let logs: Vec<String> = others.iter().map(|o| o.logs()).collect();
    assert!(
        ready,
        "{what} never became ready: {}\n--- the others:\n{}",
        container.logs(),
        logs.join("\n---\n")
    );
}

/// What the API server does with `pod` at admission: the webhook call as
/// the webhook configuration says (the Service's DNS name, verified with
/// the caBundle; the path), and the returned JSON Patch applied. Returns
/// the pod as it would be created.
async fn admit(r: &Rendered, injector: &Container, pod: &Value) -> Value {
    let webhook = &webhook_of(r)["webhooks"][0];
    let bundle = base64_decode(webhook["clientConfig"]["caBundle"].as_str().unwrap()).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for der in CertificateDer::pem_slice_iter(&bundle) {
        roots.add(der.unwrap()).unwrap();
    }
    let service = &webhook["clientConfig"]["service"];
    let host = format!(
        "{}.{}.svc",
        service["name"].as_str().unwrap(),
        service["namespace"].as_str().unwrap()
    );
    let tls = rustls::ClientConfig::builder_with_provider(outrigger_identity::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(injector.ports["webhook"])
        .await
        .unwrap();
    let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(
            rustls::pki_types::ServerName::try_from(host.clone()).unwrap(),
            tcp,
        )
        .await
        .unwrap_or_else(|e| panic!("TLS to the injector as {host}: {e}"));
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let review = json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "chart-1",
            "kind": { "group": "", "version": "v1", "kind": "Pod" },
            "resource": { "group": "", "version": "v1", "resource": "pods" },
            "namespace": pod["metadata"]["namespace"], "operation": "CREATE",
            "userInfo": { "username": "system:serviceaccount:kube-system:replicaset-controller" },
            "object": pod, "dryRun": false
        }
    });
    let resp = sender
        .send_request(
            http::Request::post(service["path"].as_str().unwrap())
                .header("host", &host)
                .header("content-type", "application/json")
                .body(full(review.to_string()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value =
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    let answer = &body["response"];
    assert_eq!(answer["uid"], "chart-1");
    assert_eq!(answer["allowed"], true, "{answer}");
    assert_eq!(answer["patchType"], "JSONPatch", "{answer}");
    let patch: json_patch::Patch =
        serde_json::from_slice(&base64_decode(answer["patch"].as_str().unwrap()).unwrap()).unwrap();
    let mut injected = pod.clone();
    json_patch::patch(&mut injected, &patch).unwrap();
    injected
}

/// The chart's MutatingWebhookConfiguration (there is one).
fn webhook_of(r: &Rendered) -> &Value {
    r.all("MutatingWebhookConfiguration")
        .next()
        .expect("the chart renders a MutatingWebhookConfiguration")
}

/// The volume `name` of a Deployment's pod template.
fn volume<'a>(deployment: &'a Value, name: &str) -> &'a Value {
    deployment["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("no volume {name}"))
}

/// The namespace `shop`, opted in to injection, as the API server lists it.
fn meshed_namespace() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": { "name": "shop", "resourceVersion": "1",
                      "annotations": { "outrigger.dev/inject": "enabled" } }
    })
}

fn args(container: &Value) -> Vec<String> {
    container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect()
}

fn named_port(container: &Value, name: &str) -> u64 {
    container["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no container port named {name}"))["containerPort"]
        .as_u64()
        .unwrap()
}

/// The Service's selector picks the Deployment's pods.
fn assert_selects(service: &Value, deployment: &Value) {
    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    let selector = service["spec"]["selector"].as_object().unwrap();
    assert!(!selector.is_empty());
    for (k, v) in selector {
        assert_eq!(
            &labels[k], v,
            "{} selects {k}={v}",
            service["metadata"]["name"]
        );
    }
    let matching = deployment["spec"]["selector"]["matchLabels"]
        .as_object()
        .unwrap();
    for (k, v) in matching {
        assert_eq!(&labels[k], v, "the Deployment's selector {k}={v}");
    }
}

/// The pod spec of a rendered Deployment, as its Kubernetes type.
fn pod_spec_of(r: &Rendered, name: &str) -> (k8s_openapi::api::core::v1::PodSpec, Value) {
    let d: Deployment = typed(r.get("Deployment", name));
    let template = d.spec.expect("a spec").template;
    let spec = template.spec.expect("a pod spec");
    (spec, serde_json::to_value(template.metadata).unwrap())
}

/// Each component's values reach its pod spec, and each Kubernetes-typed
/// value parses back as its type; the proxy's image reaches the mesh config.
#[test]
fn every_components_values_reach_its_pod() {
    let component = |name: &str| {
        json!({
            "image": { "repository": format!("registry.example/{name}"), "digest": format!("sha256:{}", "ab".repeat(32)), "pullPolicy": "Always" },
            "imagePullSecrets": ["shared", { "name": format!("{name}-pull") }],
            "nodeSelector": { "kubernetes.io/os": "linux" },
            "tolerations": [{ "key": "dedicated", "operator": "Equal", "value": "mesh", "effect": "NoSchedule" }],
            "affinity": { "nodeAffinity": { "requiredDuringSchedulingIgnoredDuringExecution": { "nodeSelectorTerms": [{ "matchExpressions": [{ "key": "pool", "operator": "In", "values": ["system"] }] }] } } },
            "topologySpreadConstraints": [{ "maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "ScheduleAnyway", "labelSelector": { "matchLabels": { "app.kubernetes.io/name": name } } }],
            "priorityClassName": "system-cluster-critical",
            "podLabels": { "team": "mesh" },
            "podAnnotations": { "example.com/owner": "mesh" },
        })
    };
    let Some((r, _)) = rendered_with(json!({
        "imagePullSecrets": [{ "name": "shared" }],
        "controlPlane": component("control-plane"),
        "injector": component("injector"),
        "proxy": { "image": { "repository": "registry.example/proxy", "tag": "1.2.3", "pullPolicy": "Always" } },
    })) else {
        return;
    };
    r.assert_lints_clean();
    for (deployment, name) in [
        ("outrigger-control-plane", "control-plane"),
        ("outrigger-injector", "injector"),
    ] {
        let (spec, meta) = pod_spec_of(&r, deployment);
        let c = &spec.containers[0];
        assert_eq!(
            c.image.as_deref(),
            Some(format!("registry.example/{name}@sha256:{}", "ab".repeat(32)).as_str())
        );
        assert_eq!(c.image_pull_policy.as_deref(), Some("Always"));
        let secrets: Vec<_> = spec
            .image_pull_secrets
            .iter()
            .flatten()
            .map(|s| s.name.clone())
            .collect();
        assert_eq!(
            secrets,
            ["shared".to_string(), format!("{name}-pull")],
            "{deployment}: global first, once"
        );
        assert_eq!(
            spec.node_selector.as_ref().unwrap()["kubernetes.io/os"],
            "linux"
        );
        let tolerations: &Vec<Toleration> = spec.tolerations.as_ref().unwrap();
        assert_eq!(tolerations[0].key.as_deref(), Some("dedicated"));
        assert_eq!(tolerations[0].effect.as_deref(), Some("NoSchedule"));
        let affinity: &Affinity = spec.affinity.as_ref().unwrap();
        let terms = &affinity
            .node_affinity
            .as_ref()
            .unwrap()
            .required_during_scheduling_ignored_during_execution
            .as_ref()
            .unwrap()
            .node_selector_terms;
        assert_eq!(terms[0].match_expressions.as_ref().unwrap()[0].key, "pool");
        assert!(
            affinity.pod_anti_affinity.is_none(),
            "no anti-affinity unless asked"
        );
        let spread: &Vec<TopologySpreadConstraint> =
            spec.topology_spread_constraints.as_ref().unwrap();
        assert_eq!(spread[0].topology_key, "topology.kubernetes.io/zone");
        assert_eq!(spread[0].when_unsatisfiable, "ScheduleAnyway");
        assert_eq!(
            spec.priority_class_name.as_deref(),
            Some("system-cluster-critical")
        );
        assert_eq!(meta["labels"]["team"], "mesh");
        assert_eq!(
            meta["labels"]["app.kubernetes.io/name"], deployment,
            "the chart's labels stay"
        );
        assert_eq!(meta["annotations"]["example.com/owner"], "mesh");
        assert_eq!(meta["annotations"]["prometheus.io/scrape"], "true");
    }
    let mesh = r.get("ConfigMap", "outrigger-mesh-config")["data"]["mesh.yaml"]
        .as_str()
        .unwrap()
        .to_string();
    let config =
        outrigger_injector::config::MeshConfig::from_yaml(&mesh).expect("the injector takes it");
    assert_eq!(config.proxy_image, "registry.example/proxy:1.2.3");
    assert_eq!(config.image_pull_policy, "Always");

    // Without component values: today's image.repository/tag, as before.
    let Some((r, _)) = rendered_with(
        json!({ "image": { "repository": "r.example/o", "tag": "9", "pullPolicy": "Never" } }),
    ) else {
        return;
    };
    for (deployment, name) in [
        ("outrigger-control-plane", "control-plane"),
        ("outrigger-injector", "injector"),
    ] {
        let (spec, _) = pod_spec_of(&r, deployment);
        assert_eq!(
            spec.containers[0].image.as_deref(),
            Some(format!("r.example/o/{name}:9").as_str())
        );
        assert_eq!(
            spec.containers[0].image_pull_policy.as_deref(),
            Some("Never")
        );
        assert!(
            spec.image_pull_secrets.is_none()
                && spec.affinity.is_none()
                && spec.tolerations.is_none()
        );
    }
    assert!(
        r.all("PodDisruptionBudget").next().is_none(),
        "one replica: no PDB"
    );
    let mesh = r.get("ConfigMap", "outrigger-mesh-config")["data"]["mesh.yaml"]
        .as_str()
        .unwrap()
        .to_string();
    let config = outrigger_injector::config::MeshConfig::from_yaml(&mesh).unwrap();
    assert_eq!(config.proxy_image, "r.example/o/proxy:9");
    assert_eq!(config.image_pull_policy, "Never");
}

/// `proxyInit.image` renders into the injector's mesh config, which the
/// injector reads and puts on the init container of every injected pod;
/// without it the init image is `<image.repository>/proxy-init` with the
/// release's tag.
#[test]
fn the_proxy_init_image_reaches_the_init_container() {
    use outrigger_injector::inject::{inject, Namespace, Outcome};
    let digest = format!("sha256:{}", "ab".repeat(32));
    let pod = json!({
        "metadata": { "name": "web", "namespace": "shop" },
        "spec": { "containers": [{ "name": "web", "image": "web:1" }] }
    });
    let shop = Namespace {
        name: "shop".into(),
        annotations: BTreeMap::from([("outrigger.dev/inject".into(), "enabled".into())]),
    };
    for (values, image, policy) in [
        (
            json!({ "proxyInit": { "image": {
                "repository": "r.example/init", "digest": digest, "pullPolicy": "Always" } },
                "proxy": { "image": { "digest": format!("sha256:{}", "cd".repeat(32)) } } }),
            format!("r.example/init@{digest}"),
            "Always",
        ),
        (
            json!({ "image": { "repository": "r.example/o", "tag": "9", "pullPolicy": "Never" } }),
            "r.example/o/proxy-init:9".to_string(),
            "Never",
        ),
    ] {
        let Some((r, _)) = rendered_with(values) else {
            return;
        };
        let mesh = r.get("ConfigMap", "outrigger-mesh-config")["data"]["mesh.yaml"]
            .as_str()
            .unwrap()
            .to_string();
        let config = outrigger_injector::config::MeshConfig::from_yaml(&mesh)
            .unwrap_or_else(|e| panic!("{e}\n{mesh}"));
        let Outcome::Inject { patch, .. } = inject(&pod, &shop, &config) else {
            panic!("not injected");
        };
        let mut after = pod.clone();
        json_patch::patch(&mut after, &patch).unwrap();
        let after: Pod = serde_json::from_value(after).unwrap();
        let inits = after.spec.unwrap().init_containers.unwrap();
        let init = inits.iter().find(|c| c.name == "outrigger-init").unwrap();
        assert_eq!(init.image.as_deref(), Some(image.as_str()), "{mesh}");
        assert_eq!(init.image_pull_policy.as_deref(), Some(policy), "{mesh}");
        let proxy = inits.iter().find(|c| c.name == "outrigger-proxy").unwrap();
        assert_ne!(proxy.image, init.image);
    }
}

/// values-ha.yaml: three replicas of each, spread softly over nodes, a PDB
/// each, the webhook failing closed; the Lease RBAC is always there.
#[test]
fn the_ha_values_render_replicas_pdbs_anti_affinity_and_fail() {
    let path = outrigger_tests::chart::chart_dir().join("values-ha.yaml");
    let ha: Value = serde_saphyr::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let Some((r, _)) = rendered_with(ha) else {
        return;
    };
    r.assert_lints_clean();
    for name in ["outrigger-control-plane", "outrigger-injector"] {
        let d: Deployment = typed(r.get("Deployment", name));
        assert_eq!(d.spec.as_ref().unwrap().replicas, Some(3), "{name}");
        let (spec, _) = pod_spec_of(&r, name);
        let anti = spec
            .affinity
            .unwrap()
            .pod_anti_affinity
            .expect("anti-affinity");
        assert!(
            anti.required_during_scheduling_ignored_during_execution
                .is_none(),
            "soft only"
        );
        let preferred = anti
            .preferred_during_scheduling_ignored_during_execution
            .unwrap();
        let term = &preferred[0].pod_affinity_term;
        assert_eq!(term.topology_key, "kubernetes.io/hostname");
        let selector = term
            .label_selector
            .as_ref()
            .unwrap()
            .match_labels
            .as_ref()
            .unwrap();
        assert_eq!(selector["app.kubernetes.io/name"], name);
        assert_eq!(selector["app.kubernetes.io/instance"], "outrigger");

        let pdb: PodDisruptionBudget = typed(r.get("PodDisruptionBudget", name));
        let pdb_spec = pdb.spec.unwrap();
        assert_eq!(
            pdb_spec.max_unavailable,
            Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1))
        );
        assert!(pdb_spec.min_available.is_none());
        // The PDB selects exactly the Deployment's pods.
        let pdb_labels = serde_json::to_value(pdb_spec.selector.unwrap().match_labels).unwrap();
        assert_eq!(
            pdb_labels,
            r.get("Deployment", name)["spec"]["selector"]["matchLabels"]
        );
    }
    assert_eq!(webhook_of(&r)["webhooks"][0]["failurePolicy"], "Fail");
    assert_lease_rbac(&r);

    // The default: no PDBs, the Lease RBAC all the same; a PDB on request.
    let Some((r, _)) = rendered_with(json!({})) else {
        return;
    };
    assert!(r.all("PodDisruptionBudget").next().is_none());
    assert_lease_rbac(&r);
    let Some((r, _)) = rendered_with(
        json!({ "injector": { "podDisruptionBudget": { "enabled": true, "maxUnavailable": "50%" } } }),
    ) else {
        return;
    };
    let pdb: PodDisruptionBudget = typed(r.get("PodDisruptionBudget", "outrigger-injector"));
    assert_eq!(
        pdb.spec.unwrap().max_unavailable,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String("50%".into()))
    );
    assert_eq!(r.all("PodDisruptionBudget").count(), 1);
}

/// The control plane's ServiceAccount may get, create and update Leases in
/// the release's namespace, and nothing more through that Role.
fn assert_lease_rbac(r: &Rendered) {
    let role: Role = typed(r.get("Role", "outrigger-control-plane-leader"));
    assert_eq!(role.metadata.namespace.as_deref(), Some(NAMESPACE));
    let rules = role.rules.unwrap();
    assert_eq!(rules.len(), 1);
    assert_eq!(
        rules[0].api_groups.as_deref(),
        Some(&["coordination.k8s.io".to_string()][..])
    );
    assert_eq!(
        rules[0].resources.as_deref(),
        Some(&["leases".to_string()][..])
    );
    assert_eq!(rules[0].verbs, ["get", "create", "update"]);
    let binding: RoleBinding = typed(r.get("RoleBinding", "outrigger-control-plane-leader"));
    assert_eq!(binding.metadata.namespace.as_deref(), Some(NAMESPACE));
    assert_eq!(binding.role_ref.kind, "Role");
    assert_eq!(binding.role_ref.name, "outrigger-control-plane-leader");
    let subject = &binding.subjects.unwrap()[0];
    assert_eq!(
        (
            subject.kind.as_str(),
            subject.name.as_str(),
            subject.namespace.as_deref()
        ),
        ("ServiceAccount", "outrigger-control-plane", Some(NAMESPACE))
    );
}

/// The webhook's scope: never kube-system, the release's namespace,
/// cert-manager's, or what is labelled outrigger.dev/inject=disabled (the
/// injector's own opt-out value); reinvocationPolicy and matchConditions
/// from the values.
#[test]
fn the_webhook_scope_excludes_cert_manager_and_opt_outs() {
    let Some((r, _)) = rendered_with(json!({
        "injector": {
            "reinvocationPolicy": "Never",
            "matchConditions": [{ "name": "not-jobs", "expression": "!has(object.metadata.ownerReferences)" }],
        }
    })) else {
        return;
    };
    let config: MutatingWebhookConfiguration = typed(r.get(
        "MutatingWebhookConfiguration",
        "outrigger-injector-outrigger-system",
    ));
    let hook = &config.webhooks.unwrap()[0];
    assert_eq!(hook.reinvocation_policy.as_deref(), Some("Never"));
    let conditions = hook.match_conditions.as_ref().unwrap();
    assert_eq!(conditions[0].name, "not-jobs");
    assert_eq!(
        conditions[0].expression,
        "!has(object.metadata.ownerReferences)"
    );
    let expressions =
        |s: &Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>| {
            s.as_ref()
                .unwrap()
                .match_expressions
                .clone()
                .unwrap()
                .into_iter()
                .map(|e| (e.key, e.operator, e.values.unwrap()))
                .collect::<Vec<_>>()
        };
    let disabled = (
        outrigger_injector::annotations::INJECT.to_string(),
        "NotIn".to_string(),
        vec!["disabled".to_string()],
    );
    assert_eq!(
        expressions(&hook.namespace_selector),
        [
            (
                "kubernetes.io/metadata.name".to_string(),
                "NotIn".to_string(),
                vec![
                    "kube-system".to_string(),
                    NAMESPACE.to_string(),
                    "cert-manager".to_string()
                ]
            ),
            disabled.clone(),
        ]
    );
    assert_eq!(expressions(&hook.object_selector), [disabled]);

    // The defaults: IfNeeded, no conditions; no cert-manager exclusion when
    // its namespace is emptied.
    let Some((r, _)) = rendered_with(json!({ "injector": { "certManagerNamespace": "" } })) else {
        return;
    };
    let w = &webhook_of(&r)["webhooks"][0];
    assert_eq!(w["reinvocationPolicy"], "IfNeeded");
    assert!(w.get("matchConditions").is_none());
    assert_eq!(
        w["namespaceSelector"]["matchExpressions"][0]["values"],
        json!(["kube-system", NAMESPACE])
    );
}

/// helm test: a hook Pod runs `outrigger check` on the release's namespace
/// under its own ServiceAccount, which may read exactly what check reads.
#[test]
fn helm_test_runs_check_with_read_only_rbac() {
    let Some((r, _)) = rendered_with(
        json!({ "test": { "image": { "repository": "r.example/cli", "tag": "7" }, "wait": "90s" } }),
    ) else {
        return;
    };
    let pod: Pod = typed(r.get("Pod", "outrigger-check"));
    let annotations = pod.metadata.annotations.clone().unwrap();
    assert_eq!(annotations["helm.sh/hook"], "test");
    assert_eq!(
        pod.metadata.labels.as_ref().unwrap()["outrigger.dev/inject"],
        "disabled"
    );
    let spec = pod.spec.unwrap();
    assert_eq!(
        spec.service_account_name.as_deref(),
        Some("outrigger-check")
    );
    assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
    let c = &spec.containers[0];
    assert_eq!(c.image.as_deref(), Some("r.example/cli:7"));
    assert_eq!(
        c.command.as_deref(),
        Some(&["/usr/local/bin/outrigger".to_string()][..])
    );
    assert_eq!(
        c.args.as_deref().unwrap(),
        ["check", "--mesh-namespace=outrigger-system", "--wait=90s"]
    );
    // Every object the test needs is a test hook too.
    for (kind, name) in [
        ("ServiceAccount", "outrigger-check"),
        ("ClusterRole", "outrigger-check-outrigger-system"),
        ("ClusterRoleBinding", "outrigger-check-outrigger-system"),
        ("Role", "outrigger-check"),
        ("RoleBinding", "outrigger-check"),
    ] {
        assert_eq!(
            r.get(kind, name)["metadata"]["annotations"]["helm.sh/hook"],
            "test",
            "{kind}"
        );
    }
    let mut cluster_wide = r.grants("outrigger-check", NAMESPACE).cluster;
    cluster_wide.sort();
    let own = |v: &[(&str, &str, &str)]| {
        let mut v: Vec<(String, String, String)> = v
            .iter()
            .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
            .collect();
        v.sort();
        v
    };
    // cli/src/check.rs, fetch: lists cluster-wide, pods/proxy for the
    // proxies' /metrics.
    assert_eq!(
        cluster_wide,
        own(&[
            ("apiextensions.k8s.io", "customresourcedefinitions", "list"),
            (
                "admissionregistration.k8s.io",
                "mutatingwebhookconfigurations",
                "list"
            ),
            ("", "namespaces", "list"),
            ("", "pods", "list"),
            ("", "pods/proxy", "get"),
            ("outrigger.dev", "virtualservices", "list"),
            ("outrigger.dev", "destinationrules", "list"),
            ("outrigger.dev", "authorizationpolicies", "list"),
            ("outrigger.dev", "peerauthentications", "list"),
        ])
    );
    // The release's namespace only: its Deployments and Secrets.
    let role: Role = typed(r.get("Role", "outrigger-check"));
    assert_eq!(role.metadata.namespace.as_deref(), Some(NAMESPACE));
    let mut in_namespace = Vec::new();
    for rule in role.rules.unwrap() {
        for g in rule.api_groups.unwrap() {
            for res in rule.resources.clone().unwrap() {
                for v in &rule.verbs {
                    in_namespace.push((g.clone(), res.clone(), v.clone()));
                }
            }
        }
    }
    in_namespace.sort();
    assert_eq!(
        in_namespace,
        own(&[("", "secrets", "list"), ("apps", "deployments", "list")])
    );
    let binding: RoleBinding = typed(r.get("RoleBinding", "outrigger-check"));
    assert_eq!(binding.role_ref.name, "outrigger-check");
    assert_eq!(binding.subjects.unwrap()[0].name, "outrigger-check");
}
