//! Injection over a table of pods: each patch is applied with a real JSON
//! Patch implementation and the result parsed back into a
//! `k8s_openapi` Pod, whose containers, ports, env and security context
//! are checked exactly.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use outrigger_api::probe::AppProbes;
use outrigger_api::Snapshot;
use outrigger_injector::config::MeshConfig;
use outrigger_injector::inject::{inject, Namespace, Outcome, SkipReason};
use serde_json::Value;

fn cfg() -> MeshConfig {
    let mut c = MeshConfig::with_image("ghcr.io/outrigger/proxy:0.1.0");
    c.trust_roots = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into();
    c
}

fn yaml(text: &str) -> Value {
    serde_saphyr::from_str(text).unwrap()
}

fn enabled(ns: &str) -> Namespace {
    Namespace {
        name: ns.into(),
        annotations: BTreeMap::from([("outrigger.dev/inject".into(), "enabled".into())]),
    }
}

fn plain(ns: &str) -> Namespace {
    Namespace {
        name: ns.into(),
        annotations: BTreeMap::new(),
    }
}

/// Injects and applies the patch; returns the pod after and the warnings.
/// The pod after has what the API server checks of names: no two
/// containers (init or not), and no two volumes, share one.
fn injected(pod: &Value, ns: &Namespace, cfg: &MeshConfig) -> (Pod, Value, Vec<String>) {
    match inject(pod, ns, cfg) {
        Outcome::Inject { patch, warnings } => {
            let mut doc = pod.clone();
            json_patch::patch(&mut doc, &patch).unwrap_or_else(|e| panic!("{e}: {patch:?}"));
            let typed: Pod = serde_json::from_value(doc.clone()).unwrap();
            let spec = typed.spec.as_ref().unwrap();
            let mut containers: Vec<&str> = spec
                .containers
                .iter()
                .chain(spec.init_containers.iter().flatten())
                .map(|c| c.name.as_str())
                .collect();
            let mut volumes: Vec<&str> = spec
                .volumes
                .iter()
                .flatten()
                .map(|v| v.name.as_str())
                .collect();
            for names in [&mut containers, &mut volumes] {
                let n = names.len();
                names.sort();
                names.dedup();
                assert_eq!(names.len(), n, "a name twice: {doc}");
            }
            (typed, doc, warnings)
        }
        other => panic!("not injected: {other:?}"),
    }
}

fn env(c: &Container) -> BTreeMap<String, String> {
    c.env
        .iter()
        .flatten()
        .map(|e| {
            let v = match (&e.value, &e.value_from) {
                (Some(v), _) => v.clone(),
                (None, Some(src)) => {
                    format!("fieldRef:{}", src.field_ref.as_ref().unwrap().field_path)
                }
                _ => String::new(),
            };
            (e.name.clone(), v)
        })
        .collect()
}

const WEB: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  generateName: web-7d9f8b6c5d-
  namespace: shop
  labels: { app: web }
spec:
  serviceAccountName: web
  containers:
    - name: web
      image: web:1
      ports: [{ name: http, containerPort: 8080 }, { containerPort: 9090 }]
      livenessProbe:
        httpGet: { path: /healthz, port: http, httpHeaders: [{ name: X-Probe, value: kubelet }] }
        periodSeconds: 7
        timeoutSeconds: 2
      readinessProbe:
        tcpSocket: { port: 8080 }
        failureThreshold: 5
      startupProbe:
        exec: { command: [cat, /tmp/ready] }
"#;

/// The init step runs the configured init image with its own pull policy;
/// the proxy keeps the proxy image.
#[test]
fn the_init_container_uses_the_configured_init_image() {
    let mut c = cfg();
    c.proxy_image = "r.example/proxy@sha256:1111".into();
    c.image_pull_policy = "IfNotPresent".into();
    c.proxy_init_image = Some("r.example/proxy-init@sha256:2222".into());
    c.proxy_init_image_pull_policy = Some("Always".into());
    for native in [true, false] {
        c.native_sidecar = native;
        let (after, _, _) = injected(&yaml(WEB), &enabled("shop"), &c);
        let spec = after.spec.unwrap();
        let inits = spec.init_containers.unwrap();
        let init = inits.iter().find(|c| c.name == "outrigger-init").unwrap();
        assert_eq!(
            init.image.as_deref(),
            Some("r.example/proxy-init@sha256:2222")
        );
        assert_eq!(init.image_pull_policy.as_deref(), Some("Always"));
        let proxy = inits
            .iter()
            .chain(&spec.containers)
            .find(|c| c.name == "outrigger-proxy")
            .unwrap();
        assert_eq!(proxy.image.as_deref(), Some("r.example/proxy@sha256:1111"));
        assert_eq!(proxy.image_pull_policy.as_deref(), Some("IfNotPresent"));
    }
}

#[test]
fn a_pod_from_a_replica_set_gets_the_init_step_and_a_native_sidecar() {
    let pod = yaml(WEB);
    let (after, doc, warnings) = injected(&pod, &enabled("shop"), &cfg());
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(
        doc["metadata"]["generateName"], "web-7d9f8b6c5d-",
        "the name is left to the API server"
    );
    let spec = after.spec.unwrap();
    let inits = spec.init_containers.unwrap();
    let names: Vec<&str> = inits.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["outrigger-init", "outrigger-proxy"]);

    // The init step: iptables with NET_ADMIN/NET_RAW, nothing more.
    let init = &inits[0];
    assert_eq!(
        init.image.as_deref(),
        Some("ghcr.io/outrigger/proxy-init:0.1.0"),
        "the proxy image's name with -init: the proxy image has no iptables"
    );
    assert_eq!(
        init.args.as_deref().unwrap(),
        [
            "init",
            "--proxy-uid",
            "2102",
            "--outbound-port",
            "4140",
            "--inbound-port",
            "4143",
            "--skip-inbound-ports",
            "4191"
        ]
    );
    let sc = init.security_context.as_ref().unwrap();
    assert_eq!(sc.run_as_user, Some(0));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.privileged, Some(false));
    let caps = sc.capabilities.as_ref().unwrap();
    assert_eq!(caps.add.as_deref().unwrap(), ["NET_ADMIN", "NET_RAW"]);
    assert_eq!(caps.drop.as_deref().unwrap(), ["ALL"]);
    assert!(init.restart_policy.is_none());

    // The proxy: a native sidecar, non-root, no capabilities.
    let proxy = &inits[1];
    assert_eq!(proxy.restart_policy.as_deref(), Some("Always"));
    assert!(proxy.lifecycle.is_none());
    assert_eq!(proxy.args.as_deref().unwrap(), ["run"]);
    let sc = proxy.security_context.as_ref().unwrap();
    assert_eq!(sc.run_as_user, Some(2102));
    assert_eq!(sc.run_as_group, Some(2102));
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(
        sc.capabilities.as_ref().unwrap().drop.as_deref().unwrap(),
        ["ALL"]
    );
    assert!(sc.capabilities.as_ref().unwrap().add.is_none());
    let ports = proxy.ports.as_ref().unwrap();
    assert_eq!(ports.len(), 1);
    assert_eq!(ports[0].container_port, 4191);
    assert_eq!(ports[0].name.as_deref(), Some("outrigger-admin"));
    for (probe, path) in [
        (&proxy.readiness_probe, "/ready"),
        (&proxy.startup_probe, "/ready"),
        (&proxy.liveness_probe, "/live"),
    ] {
        let get = probe.as_ref().unwrap().http_get.as_ref().unwrap();
        assert_eq!(get.path.as_deref(), Some(path));
        assert_eq!(get.port, IntOrString::Int(4191));
    }
    let res = proxy.resources.as_ref().unwrap();
    assert_eq!(res.requests.as_ref().unwrap()["cpu"].0, "100m");
    assert_eq!(res.requests.as_ref().unwrap()["memory"].0, "32Mi");
    assert_eq!(res.limits.as_ref().unwrap()["memory"].0, "128Mi");
    let mounts = proxy.volume_mounts.as_ref().unwrap();
    assert_eq!(mounts[0].mount_path, "/var/run/secrets/outrigger.dev");
    assert_eq!(mounts[0].read_only, Some(true));

    let e = env(proxy);
    let names: Vec<&str> = e.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "OUTRIGGER_ACCESS_LOG",
            "OUTRIGGER_APP_PROBES",
            "OUTRIGGER_BOOTSTRAP",
            "OUTRIGGER_CLUSTER_DOMAIN",
            "OUTRIGGER_CLUSTER_NAME",
            "OUTRIGGER_CONTROL_PLANE",
            "OUTRIGGER_CONTROL_PLANE_IDENTITY",
            "OUTRIGGER_LOG",
            "OUTRIGGER_METRICS_FORMAT",
            "OUTRIGGER_POD_LABELS",
            "OUTRIGGER_TOKEN_FILE",
            "OUTRIGGER_TRUST_DOMAIN",
            "OUTRIGGER_TRUST_ROOTS_PEM",
            "POD_IP",
            "POD_NAME",
            "POD_NAMESPACE",
            "SERVICE_ACCOUNT"
        ]
    );
    assert_eq!(e["POD_NAME"], "fieldRef:metadata.name");
    assert_eq!(e["POD_NAMESPACE"], "fieldRef:metadata.namespace");
    assert_eq!(e["SERVICE_ACCOUNT"], "fieldRef:spec.serviceAccountName");
    assert_eq!(e["POD_IP"], "fieldRef:status.podIP");
    assert_eq!(
        e["OUTRIGGER_CONTROL_PLANE"],
        "outrigger-control-plane.outrigger-system.svc:8090"
    );
    assert_eq!(
        e["OUTRIGGER_CONTROL_PLANE_IDENTITY"],
        "spiffe://cluster.local/ns/outrigger-system/sa/outrigger-control-plane"
    );
    assert_eq!(
        e["OUTRIGGER_TOKEN_FILE"],
        "/var/run/secrets/outrigger.dev/token"
    );
    assert!(e["OUTRIGGER_TRUST_ROOTS_PEM"].starts_with("-----BEGIN CERTIFICATE-----"));
    let boot = Snapshot::from_json(&e["OUTRIGGER_BOOTSTRAP"]).unwrap();
    boot.validate().unwrap();
    assert_eq!(boot.admin.bind, "0.0.0.0:4191");
    assert_eq!(boot.proxy.namespace, "shop");
    let binds: Vec<(&str, &str)> = boot
        .listeners
        .iter()
        .map(|l| (l.name.as_str(), l.bind.as_str()))
        .collect();
    assert_eq!(
        binds,
        [("outbound", "127.0.0.1:4140"), ("inbound", "0.0.0.0:4143")]
    );

    // The app's probes now ask the proxy, which runs the originals.
    let web = &spec.containers[0];
    let live = web.liveness_probe.as_ref().unwrap();
    let get = live.http_get.as_ref().unwrap();
    assert_eq!(get.path.as_deref(), Some("/app-health/web/livez"));
    assert_eq!(get.port, IntOrString::Int(4191));
    assert!(get.http_headers.is_none());
    assert_eq!(
        (live.period_seconds, live.timeout_seconds),
        (Some(7), Some(2))
    );
    let ready = web.readiness_probe.as_ref().unwrap();
    assert!(ready.tcp_socket.is_none());
    assert_eq!(
        ready.http_get.as_ref().unwrap().path.as_deref(),
        Some("/app-health/web/readyz")
    );
    assert_eq!(ready.failure_threshold, Some(5));
    assert!(
        web.startup_probe.as_ref().unwrap().exec.is_some(),
        "exec probes stay"
    );
    let probes: AppProbes = serde_json::from_str(&e["OUTRIGGER_APP_PROBES"]).unwrap();
    assert_eq!(
        serde_json::to_value(&probes).unwrap(),
        serde_json::json!({
            "/app-health/web/livez": {"httpGet": {"path": "/healthz", "port": 8080,
                "httpHeaders": [{"name": "X-Probe", "value": "kubelet"}]}, "timeoutSeconds": 2},
            "/app-health/web/readyz": {"tcpSocket": {"port": 8080}}
        })
    );

    // The token, projected for the control plane's audience.
    let volumes = spec.volumes.unwrap();
    assert_eq!(volumes.len(), 1);
    let token = volumes[0]
        .projected
        .as_ref()
        .unwrap()
        .sources
        .as_ref()
        .unwrap()[0]
        .service_account_token
        .as_ref()
        .unwrap();
    assert_eq!(token.audience.as_deref(), Some("outrigger"));
    assert_eq!(token.path, "token");
    assert_eq!(volumes[0].name, "outrigger-token");
    let ann = after.metadata.annotations.unwrap();
    assert_eq!(ann["prometheus.io/scrape"], "true");
    assert_eq!(ann["prometheus.io/port"], "4191");
    assert_eq!(ann["prometheus.io/path"], "/metrics");
    assert_eq!(ann["outrigger.dev/proxy-version"], "0.1.0");
    assert_eq!(ann.len(), 4, "{ann:?}");
}

#[test]
fn existing_init_containers_volumes_and_annotations_are_kept() {
    let pod = yaml(
        r#"
apiVersion: v1
kind: Pod
metadata:
  name: db-0
  namespace: shop
  annotations: { prometheus.io/port: "9187", team: data }
spec:
  initContainers: [{ name: migrate, image: migrate:1 }]
  containers: [{ name: db, image: postgres:16, ports: [{ containerPort: 5432 }] }]
  volumes: [{ name: data, emptyDir: {} }]
"#,
    );
    let (after, _, _) = injected(&pod, &enabled("shop"), &cfg());
    let spec = after.spec.unwrap();
    let names: Vec<&str> = spec
        .init_containers
        .as_ref()
        .unwrap()
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(
        names,
        ["outrigger-init", "outrigger-proxy", "migrate"],
        "the app's init containers run meshed, after the proxy"
    );
    let volumes: Vec<&str> = spec
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .map(|v| v.name.as_str())
        .collect();
    assert_eq!(volumes, ["data", "outrigger-token"]);
    assert_eq!(spec.containers.len(), 1);
    let ann = after.metadata.annotations.unwrap();
    assert_eq!(
        ann,
        BTreeMap::from([
            ("prometheus.io/port".to_string(), "9187".to_string()),
            ("team".to_string(), "data".to_string()),
            (
                "outrigger.dev/proxy-version".to_string(),
                "0.1.0".to_string()
            ),
        ]),
        "the pod's own Prometheus set stays whole"
    );
}

#[test]
fn a_pod_with_any_prometheus_annotation_keeps_its_set_whole() {
    let c = cfg();
    let prometheus = |ann: &BTreeMap<String, String>| -> BTreeMap<String, String> {
        ann.iter()
            .filter(|(k, _)| k.starts_with("prometheus.io/"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    for own in [
        // The app's path: the proxy's port must not be added to it.
        serde_json::json!({"prometheus.io/scrape": "true", "prometheus.io/path": "/app/metrics"}),
        // Not scraped: nothing may turn it on.
        serde_json::json!({"prometheus.io/scrape": "false"}),
        serde_json::json!({"prometheus.io/port": "9187"}),
        serde_json::json!({"prometheus.io/scheme": "https"}),
    ] {
        let mut pod = yaml(WEB);
        pod["metadata"]["annotations"] = own.clone();
        let (after, _, _) = injected(&pod, &enabled("shop"), &c);
        let ann = after.metadata.annotations.unwrap();
        let want: BTreeMap<String, String> = serde_json::from_value(own.clone()).unwrap();
        assert_eq!(prometheus(&ann), want, "{own}");
        assert_eq!(ann["outrigger.dev/proxy-version"], "0.1.0");
    }
    // Other annotations, or a look-alike prefix, are not the pod's own set.
    let mut pod = yaml(WEB);
    pod["metadata"]["annotations"] = serde_json::json!({"example.prometheus.io/x": "1"});
    let (after, _, _) = injected(&pod, &enabled("shop"), &c);
    let ann = after.metadata.annotations.unwrap();
    assert_eq!(ann["prometheus.io/scrape"], "true");
    assert_eq!(ann["prometheus.io/port"], "4191");
    assert_eq!(ann["prometheus.io/path"], "/metrics");
}

#[test]
fn a_name_injection_adds_that_the_pod_has_is_refused_naming_it() {
    let c = cfg();
    let refused = |edit: &dyn Fn(&mut Value)| {
        let mut pod = yaml(WEB);
        edit(&mut pod);
        match inject(&pod, &enabled("shop"), &c) {
            Outcome::Refuse(m) => m,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(
        refused(&|p| p["spec"]["volumes"] =
            serde_json::json!([{"name": "outrigger-token", "emptyDir": {}}])),
        "the pod already has a volume named \"outrigger-token\", which injection adds; \
         rename it, or set outrigger.dev/inject: disabled on the pod"
    );
    assert_eq!(
        refused(&|p| p["spec"]["initContainers"] =
            serde_json::json!([{"name": "outrigger-init", "image": "mine:1"}])),
        "the pod already has a container named \"outrigger-init\", which injection adds; \
         rename it, or set outrigger.dev/inject: disabled on the pod"
    );
    assert_eq!(
        refused(&|p| {
            p["spec"]["containers"][0]["name"] = "outrigger-init".into();
            p["spec"]["volumes"] = serde_json::json!([
                {"name": "data", "emptyDir": {}},
                {"name": "outrigger-token", "emptyDir": {}}
            ]);
        }),
        "the pod already has a container named \"outrigger-init\" and a volume named \
         \"outrigger-token\", which injection adds; rename them, or set \
         outrigger.dev/inject: disabled on the pod"
    );
    // Without native sidecars the proxy is a container: the same names count.
    let mut c2 = cfg();
    c2.native_sidecar = false;
    let mut pod = yaml(WEB);
    pod["spec"]["volumes"] = serde_json::json!([{"name": "outrigger-token", "emptyDir": {}}]);
    assert!(
        matches!(inject(&pod, &enabled("shop"), &c2), Outcome::Refuse(m) if m.contains("\"outrigger-token\"")),
    );
}

#[test]
fn the_proxy_version_is_marked_and_the_marker_means_injected() {
    use outrigger_injector::inject::proxy_version;
    for (image, want) in [
        ("ghcr.io/outrigger/proxy:0.1.0", "0.1.0"),
        ("registry:5000/outrigger/proxy:v2", "v2"),
        ("registry:5000/outrigger/proxy", "latest"),
        ("proxy", "latest"),
        ("ghcr.io/outrigger/proxy@sha256:abc", "sha256:abc"),
        (
            "ghcr.io/outrigger/proxy:0.1.0@sha256:abc",
            "0.1.0@sha256:abc",
        ),
    ] {
        assert_eq!(proxy_version(image), want, "{image}");
    }
    let mut c = cfg();
    c.proxy_image = "registry:5000/outrigger/proxy:v2".into();
    let (after, once, _) = injected(&yaml(WEB), &enabled("shop"), &c);
    assert_eq!(
        after.metadata.annotations.unwrap()["outrigger.dev/proxy-version"],
        "v2"
    );
    // The marker alone (its containers renamed or not yet seen) is enough
    // to leave the pod as it is: injection stays idempotent.
    let mut marked = yaml(WEB);
    marked["metadata"]["annotations"] = serde_json::json!({"outrigger.dev/proxy-version": "v1"});
    assert!(matches!(
        inject(&marked, &enabled("shop"), &c),
        Outcome::Skip(SkipReason::AlreadyInjected)
    ));
    // Reinvoked on its own output: skipped, by the marker and the proxy.
    assert!(matches!(
        inject(&once, &enabled("shop"), &c),
        Outcome::Skip(SkipReason::AlreadyInjected)
    ));
    // The proxy container without the marker (injected by hand, or by an
    // injector before the marker): meshed already.
    let mut by_hand = once.clone();
    by_hand["metadata"]["annotations"]
        .as_object_mut()
        .unwrap()
        .remove("outrigger.dev/proxy-version");
    assert!(matches!(
        inject(&by_hand, &enabled("shop"), &c),
        Outcome::Skip(SkipReason::AlreadyInjected)
    ));
}

#[test]
fn without_native_sidecars_the_proxy_is_the_first_container_and_holds_the_app() {
    let mut pod = yaml(WEB);
    pod["metadata"]["annotations"] =
        serde_json::json!({"config.outrigger.dev/native-sidecar": "false"});
    pod["spec"]["initContainers"] = serde_json::json!([{"name": "setup", "image": "setup:1"}]);
    let (after, _, warnings) = injected(&pod, &enabled("shop"), &cfg());
    let spec = after.spec.unwrap();
    let inits: Vec<&str> = spec
        .init_containers
        .as_ref()
        .unwrap()
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(inits, ["outrigger-init", "setup"]);
    let names: Vec<&str> = spec.containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["outrigger-proxy", "web"]);
    let proxy = &spec.containers[0];
    assert!(proxy.restart_policy.is_none());
    let hook = proxy
        .lifecycle
        .as_ref()
        .unwrap()
        .post_start
        .as_ref()
        .unwrap()
        .exec
        .as_ref()
        .unwrap();
    assert_eq!(
        hook.command.as_deref().unwrap(),
        [
            "outrigger-proxy",
            "wait-ready",
            "--admin",
            "127.0.0.1:4191",
            "--timeout",
            "120s"
        ]
    );
    // The probes of the app (now at index 1) were rewritten all the same.
    assert_eq!(
        spec.containers[1]
            .liveness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap()
            .path
            .as_deref(),
        Some("/app-health/web/livez")
    );
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("init containers"), "{warnings:?}");
    // The mesh config can turn native sidecars off for everyone.
    let mut c = cfg();
    c.native_sidecar = false;
    let (after, _, _) = injected(&yaml(WEB), &enabled("shop"), &c);
    assert_eq!(after.spec.unwrap().containers[0].name, "outrigger-proxy");
}

#[test]
fn annotations_tune_the_init_step_the_bootstrap_and_the_resources() {
    let mut pod = yaml(WEB);
    pod["metadata"]["annotations"] = serde_json::json!({
        "config.outrigger.dev/skip-inbound-ports": "9090",
        "config.outrigger.dev/skip-outbound-ports": "5432,6000-6010",
        "config.outrigger.dev/skip-subnets": "169.254.169.254/32",
        "config.outrigger.dev/opaque-ports": "3306",
        "config.outrigger.dev/proxy-cpu-request": "250m",
        "config.outrigger.dev/proxy-memory-limit": "256Mi",
        "config.outrigger.dev/proxy-log-level": "debug",
    });
    let (after, _, _) = injected(&pod, &enabled("shop"), &cfg());
    let inits = after.spec.unwrap().init_containers.unwrap();
    assert_eq!(
        inits[0].args.as_deref().unwrap(),
        [
            "init",
            "--proxy-uid",
            "2102",
            "--outbound-port",
            "4140",
            "--inbound-port",
            "4143",
            "--skip-inbound-ports",
            "4191,9090",
            "--skip-outbound-ports",
            "5432,6000:6010",
            "--skip-subnets",
            "169.254.169.254/32"
        ]
    );
    let proxy = &inits[1];
    let e = env(proxy);
    assert_eq!(e["OUTRIGGER_LOG"], "debug");
    let boot = Snapshot::from_json(&e["OUTRIGGER_BOOTSTRAP"]).unwrap();
    assert_eq!(boot.listeners[1].opaque_ports, [3306]);
    let res = proxy.resources.as_ref().unwrap();
    assert_eq!(res.requests.as_ref().unwrap()["cpu"].0, "250m");
    assert_eq!(res.requests.as_ref().unwrap()["memory"].0, "32Mi");
    assert_eq!(res.limits.as_ref().unwrap()["memory"].0, "256Mi");
}

#[test]
fn the_metrics_format_and_what_istio_labels_need_reach_the_proxy() {
    let proxy_env = |pod: &Value, c: &MeshConfig| {
        let (after, _, _) = injected(pod, &enabled("shop"), c);
        env(&after.spec.unwrap().init_containers.unwrap()[1])
    };
    // The defaults: outrigger's names, cluster.local, Kubernetes.
    let e = proxy_env(&yaml(WEB), &cfg());
    assert_eq!(e["OUTRIGGER_METRICS_FORMAT"], "outrigger");
    assert_eq!(e["OUTRIGGER_CLUSTER_DOMAIN"], "cluster.local");
    assert_eq!(e["OUTRIGGER_CLUSTER_NAME"], "Kubernetes");
    assert_eq!(e["OUTRIGGER_POD_LABELS"], r#"{"app":"web"}"#);
    // From the mesh config; only the labels Istio's derive from.
    let c = MeshConfig::from_yaml(
        "proxyImage: x\nmetricsFormat: istio\nclusterDomain: corp.example\nclusterName: east",
    )
    .unwrap();
    let mut pod = yaml(WEB);
    pod["metadata"]["labels"] = serde_json::json!({
        "app": "web", "version": "v2", "pod-template-hash": "7d9f8b6c5d",
        "service.istio.io/canonical-name": "shop-web",
        "app.kubernetes.io/version": "2.1"
    });
    let e = proxy_env(&pod, &c);
    assert_eq!(e["OUTRIGGER_METRICS_FORMAT"], "istio");
    assert_eq!(e["OUTRIGGER_CLUSTER_DOMAIN"], "corp.example");
    assert_eq!(e["OUTRIGGER_CLUSTER_NAME"], "east");
    let labels: BTreeMap<String, String> =
        serde_json::from_str(&e["OUTRIGGER_POD_LABELS"]).unwrap();
    assert_eq!(
        labels.keys().map(String::as_str).collect::<Vec<_>>(),
        [
            "app",
            "app.kubernetes.io/version",
            "service.istio.io/canonical-name",
            "version"
        ]
    );
    // A pod without any of them: no labels to pass.
    let mut pod = yaml(WEB);
    pod["metadata"]["labels"] = serde_json::json!({ "tier": "front" });
    assert!(!proxy_env(&pod, &c).contains_key("OUTRIGGER_POD_LABELS"));
    // A bad format names the field, the value and the choices.
    let e = MeshConfig::from_yaml("proxyImage: x\nmetricsFormat: prometheus")
        .unwrap_err()
        .to_string();
    for part in ["metricsFormat", "prometheus", "outrigger", "istio"] {
        assert!(e.contains(part), "{part}: {e}");
    }
}

#[test]
fn the_access_log_comes_from_the_pod_then_the_mesh_default() {
    let access_log = |annotation: Option<&str>, mesh: &str| {
        let mut pod = yaml(WEB);
        if let Some(a) = annotation {
            pod["metadata"]["annotations"] =
                serde_json::json!({ "config.outrigger.dev/access-log": a });
        }
        let mut c = cfg();
        c.access_log = mesh.parse().unwrap();
        let (after, _, _) = injected(&pod, &enabled("shop"), &c);
        let inits = after.spec.unwrap().init_containers.unwrap();
        env(&inits[1])["OUTRIGGER_ACCESS_LOG"].clone()
    };
    // Off unless the mesh config or the pod says otherwise.
    assert_eq!(access_log(None, "off"), "off");
    assert_eq!(access_log(None, "json"), "json");
    assert_eq!(access_log(Some("text"), "off"), "text");
    assert_eq!(access_log(Some("off"), "json"), "off");
    // The mesh default, from the chart's YAML.
    let c = MeshConfig::from_yaml("proxyImage: x\naccessLog: text").unwrap();
    assert_eq!(c.access_log.as_str(), "text");
    let e = MeshConfig::from_yaml("proxyImage: x\naccessLog: verbose").unwrap_err();
    assert!(e.to_string().contains("verbose"), "{e}");
    // A bad value refuses the pod, naming the annotation.
    let mut pod = yaml(WEB);
    pod["metadata"]["annotations"] =
        serde_json::json!({ "config.outrigger.dev/access-log": "yes" });
    match inject(&pod, &enabled("shop"), &cfg()) {
        Outcome::Refuse(m) => assert_eq!(
            m,
            "annotation config.outrigger.dev/access-log: \"yes\" is not an access-log format: off, text or json"
        ),
        other => panic!("{other:?}"),
    }
}

#[test]
fn tracing_reaches_the_proxy_only_with_a_collector() {
    let traced = |annotation: Option<&str>, mesh: &str, labels: Value| {
        let mut pod = yaml(WEB);
        pod["metadata"]["labels"] = labels;
        if let Some(a) = annotation {
            pod["metadata"]["annotations"] =
                serde_json::json!({ "config.outrigger.dev/trace-sampling": a });
        }
        let c = MeshConfig::from_yaml(&format!("proxyImage: x\n{mesh}")).unwrap();
        let (after, _, _) = injected(&pod, &enabled("shop"), &c);
        let inits = after.spec.unwrap().init_containers.unwrap();
        env(&inits[1])
    };
    let app = serde_json::json!({ "app": "web" });
    // Off by default: nothing for tracing in the proxy's environment.
    let e = traced(Some("50"), "", app.clone());
    assert!(!e.keys().any(|k| k.starts_with("OUTRIGGER_TRACE")), "{e:?}");
    // A collector: on, at the mesh's sampling (1 % unless set).
    let collector = "tracing: { collector: 'http://otel-collector.observability:4318' }";
    let e = traced(None, collector, app.clone());
    assert_eq!(
        e["OUTRIGGER_TRACE_COLLECTOR"],
        "http://otel-collector.observability:4318"
    );
    assert_eq!(e["OUTRIGGER_TRACE_SAMPLING"], "1");
    // Istio's service name: the canonical name (labels in Istio's order).
    assert_eq!(e["OUTRIGGER_TRACE_SERVICE_NAME"], "web.shop");
    let e = traced(
        None,
        collector,
        serde_json::json!({ "app": "web", "service.istio.io/canonical-name": "storefront" }),
    );
    assert_eq!(e["OUTRIGGER_TRACE_SERVICE_NAME"], "storefront.shop");
    let e = traced(None, collector, serde_json::json!({}));
    assert!(!e.contains_key("OUTRIGGER_TRACE_SERVICE_NAME"));
    // The pod's annotation over the mesh's sampling.
    let mesh = "tracing: { collector: 'otel:4318', sampling: 10 }";
    assert_eq!(
        traced(None, mesh, app.clone())["OUTRIGGER_TRACE_SAMPLING"],
        "10"
    );
    assert_eq!(
        traced(Some("0.5"), mesh, app.clone())["OUTRIGGER_TRACE_SAMPLING"],
        "0.5"
    );
    // A bad value refuses the pod, naming the annotation.
    let mut pod = yaml(WEB);
    pod["metadata"]["annotations"] =
        serde_json::json!({ "config.outrigger.dev/trace-sampling": "200" });
    match inject(&pod, &enabled("shop"), &cfg()) {
        Outcome::Refuse(m) => assert_eq!(
            m,
            "annotation config.outrigger.dev/trace-sampling: 200 is not a percentage from 0 to 100"
        ),
        other => panic!("{other:?}"),
    }
}

#[test]
fn who_is_skipped_and_why() {
    let c = cfg();
    let skip = |pod: &Value, ns: &Namespace| match inject(pod, ns, &c) {
        Outcome::Skip(r) => r,
        other => panic!("{other:?}"),
    };
    let web = yaml(WEB);
    assert_eq!(skip(&web, &plain("shop")), SkipReason::NotEnabled);
    let mut off = web.clone();
    off["metadata"]["annotations"] = serde_json::json!({"outrigger.dev/inject": "disabled"});
    assert_eq!(skip(&off, &enabled("shop")), SkipReason::Disabled);
    let mut host = web.clone();
    host["spec"]["hostNetwork"] = Value::Bool(true);
    assert_eq!(skip(&host, &enabled("shop")), SkipReason::HostNetwork);
    let mut system = web.clone();
    system["metadata"]["namespace"] = "outrigger-system".into();
    system["metadata"]["annotations"] = serde_json::json!({"outrigger.dev/inject": "enabled"});
    assert_eq!(
        skip(&system, &enabled("outrigger-system")),
        SkipReason::ControlPlaneNamespace
    );
    // The pod's own "enabled" wins over a namespace that is not.
    let mut on = web.clone();
    on["metadata"]["annotations"] = serde_json::json!({"outrigger.dev/inject": "enabled"});
    let (_, once, _) = injected(&on, &plain("shop"), &c);
    // Reinvoked on its own output (or on UPDATE): nothing more to do.
    assert_eq!(skip(&once, &enabled("shop")), SkipReason::AlreadyInjected);
    // A pod without a namespace in its metadata takes the request's.
    let mut bare = web.clone();
    bare["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("namespace");
    let (_, doc, _) = injected(&bare, &enabled("shop"), &c);
    let proxy = &doc["spec"]["initContainers"][1];
    let boot = proxy["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "OUTRIGGER_BOOTSTRAP")
        .unwrap();
    assert!(boot["value"]
        .as_str()
        .unwrap()
        .contains("\"namespace\":\"shop\""));
}

#[test]
fn a_proxy_request_above_its_limit_is_refused_naming_both_sources() {
    let c = cfg(); // memory: request 32Mi, limit 128Mi
    let refused = |annotations: serde_json::Value| {
        let mut pod = yaml(WEB);
        pod["metadata"]["annotations"] = annotations;
        match inject(&pod, &enabled("shop"), &c) {
            Outcome::Refuse(m) => m,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(
        refused(serde_json::json!({"config.outrigger.dev/proxy-memory-request": "256Mi"})),
        "config.outrigger.dev/proxy-memory-request \"256Mi\" is above the mesh config's \
         resources.limits.memory \"128Mi\": a request cannot exceed its limit"
    );
    assert_eq!(
        refused(serde_json::json!({"config.outrigger.dev/proxy-memory-limit": "16Mi"})),
        "the mesh config's resources.requests.memory \"32Mi\" is above \
         config.outrigger.dev/proxy-memory-limit \"16Mi\": a request cannot exceed its limit"
    );
    assert_eq!(
        refused(serde_json::json!({
            "config.outrigger.dev/proxy-cpu-request": "1.5",
            "config.outrigger.dev/proxy-cpu-limit": "1",
        })),
        "config.outrigger.dev/proxy-cpu-request \"1.5\" is above \
         config.outrigger.dev/proxy-cpu-limit \"1\": a request cannot exceed its limit"
    );
    // Equal amounts in other units are fine, and so is a request with no
    // limit (the default has no CPU limit).
    for ok in [
        serde_json::json!({
            "config.outrigger.dev/proxy-memory-request": "0.125Gi",
            "config.outrigger.dev/proxy-memory-limit": "128Mi",
        }),
        serde_json::json!({"config.outrigger.dev/proxy-cpu-request": "4"}),
    ] {
        let mut pod = yaml(WEB);
        pod["metadata"]["annotations"] = ok.clone();
        assert!(
            matches!(inject(&pod, &enabled("shop"), &c), Outcome::Inject { .. }),
            "{ok}"
        );
    }
}

#[test]
fn bad_annotations_are_refused_naming_the_annotation() {
    let c = cfg();
    let mut pod = yaml(WEB);
    pod["metadata"]["annotations"] =
        serde_json::json!({"config.outrigger.dev/skip-inbound-ports": "ssh"});
    match inject(&pod, &enabled("shop"), &c) {
        Outcome::Refuse(m) => assert!(
            m.starts_with("annotation config.outrigger.dev/skip-inbound-ports: \"ssh\""),
            "{m}"
        ),
        other => panic!("{other:?}"),
    }
    pod["metadata"]["annotations"] = serde_json::json!({"outrigger.dev/inject": "yes"});
    assert!(
        matches!(inject(&pod, &enabled("shop"), &c), Outcome::Refuse(m) if m.contains("outrigger.dev/inject"))
    );
    let mut ns = plain("shop");
    ns.annotations
        .insert("outrigger.dev/inject".into(), "on".into());
    // A typo on the namespace does not refuse its pods: admitted as they
    // are, with the reason.
    assert!(
        matches!(inject(&yaml(WEB), &ns, &c), Outcome::CannotHandle(m) if m.starts_with("namespace shop: annotation outrigger.dev/inject"))
    );
    // A disabled pod is not read any further: its other annotations do
    // not matter.
    pod["metadata"]["annotations"] = serde_json::json!({
        "outrigger.dev/inject": "disabled",
        "config.outrigger.dev/skip-inbound-ports": "ssh",
    });
    assert!(matches!(
        inject(&pod, &enabled("shop"), &c),
        Outcome::Skip(SkipReason::Disabled)
    ));
}

#[test]
fn what_cannot_be_handled_is_said_and_left_alone() {
    let c = cfg();
    let broken = serde_json::json!({"metadata": {"name": "x"}, "spec": {"containers": "web"}});
    assert!(matches!(
        inject(&broken, &enabled("shop"), &c),
        Outcome::CannotHandle(m) if m.starts_with("not a readable Pod")
    ));
    // Found by the fuzz target `admission_review`: a pod sent without
    // `metadata` reads (it is filled in), but a patch adding
    // `/metadata/annotations` cannot apply to it: left alone, said why.
    let bare = serde_json::json!({"spec": {"containers": [{"name": "web", "image": "web:1"}]}});
    assert!(matches!(
        inject(&bare, &enabled("shop"), &c),
        Outcome::CannotHandle(m) if m == "the pod has no metadata"
    ));
    // A probe on a port name the container does not have: left as it is,
    // with a warning.
    let pod = yaml(
        r#"
metadata: { name: api-1, namespace: shop }
spec:
  containers:
    - name: api
      livenessProbe: { httpGet: { path: /healthz, port: admin } }
"#,
    );
    let (after, _, warnings) = injected(&pod, &enabled("shop"), &c);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("livenessProbe left as is: the container has no port named \"admin\""),
        "{warnings:?}"
    );
    let api = &after.spec.as_ref().unwrap().containers[0];
    assert_eq!(
        api.liveness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap()
            .port,
        IntOrString::String("admin".into())
    );
    let proxy = &after.spec.unwrap().init_containers.unwrap()[1];
    assert!(!env(proxy).contains_key("OUTRIGGER_APP_PROBES"));
}

#[test]
fn grpc_probes_are_rewritten_and_handed_to_the_proxy() {
    let c = cfg();
    let pod = yaml(
        r#"
metadata: { name: api-1, namespace: shop }
spec:
  containers:
    - name: api
      ports: [{ name: grpc, containerPort: 9000 }]
      livenessProbe: { grpc: { port: 9000 }, periodSeconds: 7 }
      readinessProbe: { grpc: { port: 9000, service: shop.Cart }, timeoutSeconds: 2 }
      startupProbe: { grpc: { port: 9000, service: "" } }
"#,
    );
    let (after, _, warnings) = injected(&pod, &enabled("shop"), &c);
    assert!(warnings.is_empty(), "{warnings:?}");
    let api = &after.spec.as_ref().unwrap().containers[0];
    let live = api.liveness_probe.as_ref().unwrap();
    assert!(live.grpc.is_none());
    assert_eq!(live.period_seconds, Some(7));
    let get = live.http_get.as_ref().unwrap();
    assert_eq!(get.path.as_deref(), Some("/app-health/api/livez"));
    assert_eq!(get.port, IntOrString::Int(4191));
    let proxy = &after.spec.unwrap().init_containers.unwrap()[1];
    let probes: serde_json::Value =
        serde_json::from_str(&env(proxy)["OUTRIGGER_APP_PROBES"]).unwrap();
    assert_eq!(
        probes,
        serde_json::json!({
            "/app-health/api/livez": { "grpc": { "port": 9000 } },
            "/app-health/api/readyz": { "grpc": { "port": 9000, "service": "shop.Cart" }, "timeoutSeconds": 2 },
            "/app-health/api/startupz": { "grpc": { "port": 9000 } },
        })
    );
}

/// The proxy's grace period follows the pod's `terminationGracePeriodSeconds`
/// (Kubernetes' 30 s when unset), less the margin that lets it exit before
/// the kubelet's SIGKILL.
#[test]
fn the_proxys_grace_period_follows_the_pods_termination_grace() {
    use std::time::Duration;
    let grace_of = |pod: &str| bootstrap_of(pod, &cfg()).limits.drain_timeout.get();
    assert_eq!(
        grace_of(WEB),
        Duration::from_secs(25),
        "unset: 30 s less 5 s"
    );
    let with = |seconds: i64| {
        WEB.replace(
            "  serviceAccountName: web\n",
            &format!("  serviceAccountName: web\n  terminationGracePeriodSeconds: {seconds}\n"),
        )
    };
    assert_eq!(grace_of(&with(120)), Duration::from_secs(115));
    assert_eq!(
        grace_of(&with(10)),
        Duration::from_secs(8),
        "a fifth kept back"
    );
    assert_eq!(
        grace_of(&with(0)),
        Duration::from_secs(1),
        "never below 1 s"
    );
    // The pure rule, and what the kubelet does with the rest.
    use outrigger_injector::inject::drain_timeout;
    assert_eq!(drain_timeout(Some(60)), Duration::from_secs(55));
    assert_eq!(drain_timeout(Some(3)), Duration::from_millis(2400));
    assert_eq!(drain_timeout(Some(-5)), Duration::from_secs(1));
}

/// A native sidecar gets SIGTERM once the app has exited, so an idle proxy
/// may exit at once; one that is not native gets it with the app, which may
/// still call out while it shuts down, so the proxy keeps accepting for its
/// whole accept window (Istio's default; `EXIT_ON_ZERO_ACTIVE_CONNECTIONS`
/// is the opt-out there).
#[test]
fn only_a_native_sidecar_exits_its_drain_as_soon_as_it_is_idle() {
    let mut c = cfg();
    for native in [true, false] {
        c.native_sidecar = native;
        let boot = bootstrap_of(WEB, &c);
        assert_eq!(boot.limits.drain_exit_when_idle, native, "native: {native}");
    }
}

/// The bootstrap the injector gives the proxy of `pod` (YAML), validated.
fn bootstrap_of(pod: &str, c: &MeshConfig) -> Snapshot {
    let (after, _, _) = injected(&yaml(pod), &enabled("shop"), c);
    let spec = after.spec.unwrap();
    let proxy = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .find(|c| c.name == "outrigger-proxy")
        .unwrap()
        .clone();
    let boot = Snapshot::from_json(&env(&proxy)["OUTRIGGER_BOOTSTRAP"]).unwrap();
    boot.validate().unwrap();
    boot
}
