//! Injection, pure: (pod, namespace, mesh config) → what to do, and the
//! JSON Patch (RFC 6902) that does it. The webhook calls [`inject`], and
//! so will the CLI's offline `inject`.
//!
//! What a meshed pod gets:
//! - `outrigger-init` (first init container): `outrigger-proxy init` in the
//!   init image ([`MeshConfig::init_image`], with iptables), the iptables
//!   redirect; the only piece with NET_ADMIN and NET_RAW, and root;
//! - `outrigger-proxy`: as a native sidecar (an init container with
//!   `restartPolicy: Always`, right after the init step, so even the app's
//!   own init containers are meshed) or, where asked, as the first
//!   container with a postStart hook that holds the app until it is ready;
//!   with the downward-API environment, a projected ServiceAccount token
//!   (audience `outrigger`), its bootstrap, resources and a non-root
//!   security context; probes on its admin port;
//! - the app containers' HTTP, TCP and gRPC probes pointed at the proxy's admin
//!   port (`/app-health/<container>/livez|readyz|startupz`), the originals
//!   handed to the proxy, so that they keep working under STRICT mTLS;
//! - `outrigger.dev/proxy-version` (the proxy image's version), which
//!   marks the pod as injected;
//! - Prometheus scrape annotations, unless the pod has any `prometheus.io/`
//!   annotation of its own (then its set is kept whole).
//!
//! A pod that already has a container or volume of one of these names is
//! refused, naming it: the API server would refuse a pod with two.

use std::collections::BTreeMap;

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation, ReplaceOperation};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvVar, EnvVarSource, ExecAction, HTTPGetAction,
    Lifecycle, LifecycleHandler, ObjectFieldSelector, Pod, Probe, ProjectedVolumeSource,
    ResourceRequirements, SeccompProfile, SecurityContext, ServiceAccountTokenProjection, Volume,
    VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use outrigger_api::probe::{
    AppProbe, AppProbes, GrpcProbe, HttpGetProbe, ProbeHeader, TcpSocketProbe, APP_HEALTH_PREFIX,
};
use outrigger_api::{Admin, Direction, HttpSettings, Limits, Listener, ProxyInfo, Snapshot};
use serde_json::Value;

use crate::annotations::{self, Overrides};
use crate::config::{MeshConfig, Resources};

/// The proxy's container name; a pod that has it is meshed (with or
/// without the [`annotations::PROXY_VERSION`] marker).
pub const PROXY_CONTAINER: &str = "outrigger-proxy";
/// The init step's container name.
pub const INIT_CONTAINER: &str = "outrigger-init";
/// The projected token volume and where the proxy reads it.
pub const TOKEN_VOLUME: &str = "outrigger-token";
pub const TOKEN_DIR: &str = "/var/run/secrets/outrigger.dev";
/// The audience the control plane's TokenReview asks for.
pub const TOKEN_AUDIENCE: &str = "outrigger";
const TOKEN_LIFETIME_SECONDS: i64 = 3600;

/// The namespace a pod is created in, as the injector's cache holds it.
#[derive(Clone, Debug, Default)]
pub struct Namespace {
    pub name: String,
    pub annotations: BTreeMap<String, String>,
}

/// Why a pod is left as it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SkipReason {
    /// Neither the pod nor its namespace asks for the proxy.
    NotEnabled,
    /// The pod says `outrigger.dev/inject: disabled`.
    Disabled,
    HostNetwork,
    /// It carries the injection marker or the proxy container (a
    /// reinvocation, or injected by hand).
    AlreadyInjected,
    ControlPlaneNamespace,
}

impl SkipReason {
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::NotEnabled => "not_enabled",
            SkipReason::Disabled => "disabled",
            SkipReason::HostNetwork => "host_network",
            SkipReason::AlreadyInjected => "already_injected",
            SkipReason::ControlPlaneNamespace => "control_plane_namespace",
        }
    }
}

#[derive(Debug)]
pub enum Outcome {
    Inject {
        patch: Patch,
        /// For the operator (AdmissionResponse warnings).
        warnings: Vec<String>,
    },
    Skip(SkipReason),
    /// An annotation asks for something impossible: the pod is refused
    /// with this message, which names the annotation.
    Refuse(String),
    /// The pod cannot be read as a Pod: admitted unchanged, with a warning.
    CannotHandle(String),
}

/// What to do with `pod` (its JSON as the API server sent it), created in
/// `namespace`.
pub fn inject(pod: &Value, namespace: &Namespace, cfg: &MeshConfig) -> Outcome {
    let typed: Pod = match serde_json::from_value(pod.clone()) {
        Ok(p) => p,
        Err(e) => return Outcome::CannotHandle(format!("not a readable Pod: {e}")),
    };
    let ns = typed
        .metadata
        .namespace
        .clone()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| namespace.name.clone());
    if ns == cfg.control_plane_namespace {
        return Outcome::Skip(SkipReason::ControlPlaneNamespace);
    }
    let pod_annotations = typed.metadata.annotations.clone().unwrap_or_default();
    let asked = match annotations::inject(&pod_annotations) {
        Ok(Some(v)) => Some(v),
        Ok(None) => match annotations::inject(&namespace.annotations) {
            Ok(v) => v,
            // The namespace's typo must not refuse every pod created there:
            // they are admitted as they are, and told why.
            Err(e) => return Outcome::CannotHandle(format!("namespace {ns}: {e}")),
        },
        Err(e) => return Outcome::Refuse(e.to_string()),
    };
    match asked {
        Some(true) => {}
        Some(false) if pod_annotations.contains_key(annotations::INJECT) => {
            return Outcome::Skip(SkipReason::Disabled)
        }
        _ => return Outcome::Skip(SkipReason::NotEnabled),
    }
    let Some(spec) = typed.spec.as_ref() else {
        return Outcome::CannotHandle("the pod has no spec".into());
    };
    // The typed read fills in a missing `metadata`; the patch's
    // `/metadata/annotations` needs the one sent (the API server always
    // sends it; a hand-made review may not).
    if !pod.get("metadata").is_some_and(Value::is_object) {
        return Outcome::CannotHandle("the pod has no metadata".into());
    }
    if spec.host_network == Some(true) {
        return Outcome::Skip(SkipReason::HostNetwork);
    }
    let container_names = || {
        spec.containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
            .map(|c| c.name.as_str())
            .chain(
                spec.ephemeral_containers
                    .iter()
                    .flatten()
                    .map(|c| c.name.as_str()),
            )
    };
    if pod_annotations.contains_key(annotations::PROXY_VERSION)
        || container_names().any(|n| n == PROXY_CONTAINER)
    {
        return Outcome::Skip(SkipReason::AlreadyInjected);
    }
    // What injection adds must not be there already: the API server
    // refuses a pod with two containers, or two volumes, of one name.
    let mut clashes: Vec<String> = container_names()
        .filter(|n| *n == INIT_CONTAINER)
        .map(|n| format!("a container named {n:?}"))
        .collect();
    clashes.extend(
        spec.volumes
            .iter()
            .flatten()
            .filter(|v| v.name == TOKEN_VOLUME)
            .map(|v| format!("a volume named {:?}", v.name)),
    );
    if !clashes.is_empty() {
        return Outcome::Refuse(format!(
            "the pod already has {}, which injection adds; rename {}, or set {}: disabled \
             on the pod",
            clashes.join(" and "),
            if clashes.len() == 1 { "it" } else { "them" },
            annotations::INJECT,
        ));
    }
    let overrides = match annotations::overrides(&pod_annotations) {
        Ok(o) => o,
        Err(e) => return Outcome::Refuse(e.to_string()),
    };
    build(&typed, &ns, &overrides, cfg)
}

fn build(pod: &Pod, ns: &str, o: &Overrides, cfg: &MeshConfig) -> Outcome {
    let spec = pod.spec.as_ref().expect("checked");
    let native = o.native_sidecar.unwrap_or(cfg.native_sidecar);
    let resources = match cfg.resources.with_overrides(&o.requests, &o.limits) {
        Ok(r) => r,
        Err(e) => return Outcome::Refuse(e),
    };
    let mut warnings = Vec::new();
    let mut ops = Vec::new();

    // The app's probes, pointed at the admin port (indices are those of the
    // pod as sent: these run before anything is inserted into the list).
    let mut app_probes = AppProbes::new();
    for (i, c) in spec.containers.iter().enumerate() {
        for (field, kind, probe) in [
            ("livenessProbe", "livez", &c.liveness_probe),
            ("readinessProbe", "readyz", &c.readiness_probe),
            ("startupProbe", "startupz", &c.startup_probe),
        ] {
            let Some(probe) = probe else { continue };
            let original = match original_probe(c, probe) {
                Ok(Some(p)) => p,
                Ok(None) => continue, // exec: runs in the container
                Err(why) => {
                    warnings.push(format!("container {}: {field} left as is: {why}", c.name));
                    continue;
                }
            };
            let path = format!("{APP_HEALTH_PREFIX}{}/{kind}", c.name);
            app_probes.insert(path.clone(), original);
            let rewritten = Probe {
                http_get: Some(HTTPGetAction {
                    path: Some(path),
                    port: IntOrString::Int(cfg.ports.admin.into()),
                    scheme: Some("HTTP".into()),
                    ..Default::default()
                }),
                tcp_socket: None,
                exec: None,
                grpc: None,
                ..probe.clone()
            };
            ops.push(replace(
                &["spec", "containers", &i.to_string(), field],
                &rewritten,
            ));
        }
    }

    let grace = spec.termination_grace_period_seconds;
    let mut proxy = proxy_container(ns, o, cfg, native, &app_probes, &resources, grace);
    proxy
        .env
        .get_or_insert_with(Vec::new)
        .extend(metrics_env(pod, cfg));
    add_tracing(&mut proxy, pod, ns, o, cfg);
    let init = init_container(o, cfg);

    // Init containers: ours first, then (native) the proxy, then the app's.
    let mut ours = vec![to_value(&init)];
    if native {
        ours.push(to_value(&proxy));
    } else if !spec
        .init_containers
        .as_deref()
        .unwrap_or_default()
        .is_empty()
    {
        warnings.push(
            "native sidecars are off: the app's init containers run before the proxy, and \
             their traffic is redirected to it all the same (skip their ports, or turn \
             config.outrigger.dev/native-sidecar on)"
                .into(),
        );
    }
    if spec.init_containers.is_none() {
        ops.push(add(&["spec", "initContainers"], Value::Array(ours)));
    } else {
        for (i, c) in ours.into_iter().enumerate() {
            ops.push(add(&["spec", "initContainers", &i.to_string()], c));
        }
    }
    if !native {
        ops.push(add(&["spec", "containers", "0"], to_value(&proxy)));
    }

    let volume = to_value(&token_volume());
    match spec.volumes {
        None => ops.push(add(&["spec", "volumes"], Value::Array(vec![volume]))),
        Some(_) => ops.push(add(&["spec", "volumes", "-"], volume)),
    }

    // The marker, and Prometheus scrape annotations unless the pod has any
    // of its own: those are kept whole (a pod that scrapes its app, or
    // says `scrape: "false"`, is not half rewritten to scrape the proxy).
    let mut wanted = BTreeMap::from([(
        annotations::PROXY_VERSION.to_string(),
        proxy_version(&cfg.proxy_image),
    )]);
    let has_own_prometheus = pod
        .metadata
        .annotations
        .iter()
        .flatten()
        .any(|(k, _)| k.starts_with(PROMETHEUS_PREFIX));
    if !has_own_prometheus {
        for (k, v) in [
            ("prometheus.io/scrape", "true".to_string()),
            ("prometheus.io/port", cfg.ports.admin.to_string()),
            ("prometheus.io/path", "/metrics".to_string()),
        ] {
            wanted.insert(k.to_string(), v);
        }
    }
    match &pod.metadata.annotations {
        None => ops.push(add(
            &["metadata", "annotations"],
            serde_json::to_value(&wanted).expect("serializes"),
        )),
        Some(_) => {
            // None of these is there: a pod with the marker was skipped,
            // one with any prometheus.io/ key gets none.
            for (k, v) in wanted {
                ops.push(add(&["metadata", "annotations", &k], Value::String(v)));
            }
        }
    }
    Outcome::Inject {
        patch: Patch(ops),
        warnings,
    }
}

/// The annotations Prometheus' Kubernetes discovery reads.
const PROMETHEUS_PREFIX: &str = "prometheus.io/";

/// The version of a proxy image reference, for the marker annotation:
/// what follows the repository (`0.1.0`, `sha256:…`, `0.1.0@sha256:…`),
/// or `latest`, which an image without a tag or digest means.
pub fn proxy_version(image: &str) -> String {
    let (name, digest) = match image.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (image, None),
    };
    // A tag follows the last `:` of the last path component (an earlier
    // `:` is a registry's port).
    let last = name.rsplit('/').next().unwrap_or(name);
    let tag = last.split_once(':').map(|(_, t)| t);
    match (tag, digest) {
        (Some(t), Some(d)) => format!("{t}@{d}"),
        (Some(t), None) => t.to_string(),
        (None, Some(d)) => d.to_string(),
        (None, None) => "latest".to_string(),
    }
}

/// The probe as the proxy runs it; `Ok(None)` for probes that need no
/// help (`exec`).
fn original_probe(c: &Container, p: &Probe) -> Result<Option<AppProbe>, String> {
    let port = |port: &IntOrString| -> Result<u16, String> {
        match port {
            IntOrString::Int(n) => u16::try_from(*n)
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("port {n} is not a port number")),
            IntOrString::String(name) => c
                .ports
                .iter()
                .flatten()
                .find(|cp| cp.name.as_deref() == Some(name.as_str()))
                .and_then(|cp| u16::try_from(cp.container_port).ok())
                .ok_or_else(|| format!("the container has no port named {name:?}")),
        }
    };
    let timeout_seconds = p.timeout_seconds.and_then(|t| u32::try_from(t).ok());
    if let Some(h) = &p.http_get {
        return Ok(Some(AppProbe {
            http_get: Some(HttpGetProbe {
                path: h.path.clone(),
                port: port(&h.port)?,
                host: h.host.clone(),
                scheme: h.scheme.clone(),
                http_headers: h
                    .http_headers
                    .iter()
                    .flatten()
                    .map(|hd| ProbeHeader {
                        name: hd.name.clone(),
                        value: hd.value.clone(),
                    })
                    .collect(),
            }),
            timeout_seconds,
            ..Default::default()
        }));
    }
    if let Some(t) = &p.tcp_socket {
        return Ok(Some(AppProbe {
            tcp_socket: Some(TcpSocketProbe {
                port: port(&t.port)?,
                host: t.host.clone(),
            }),
            timeout_seconds,
            ..Default::default()
        }));
    }
    if let Some(g) = &p.grpc {
        // gRPC probes name their port by number only.
        return Ok(Some(AppProbe {
            grpc: Some(GrpcProbe {
                port: port(&IntOrString::Int(g.port))?,
                service: g.service.clone().filter(|s| !s.is_empty()),
            }),
            timeout_seconds,
            ..Default::default()
        }));
    }
    Ok(None)
}

/// Kubernetes' `terminationGracePeriodSeconds` when a pod does not set it.
const DEFAULT_GRACE_SECONDS: i64 = 30;
/// The most of a pod's grace period kept back from the proxy's drain.
const DRAIN_MARGIN: std::time::Duration = std::time::Duration::from_secs(5);

/// The proxy's grace period (`limits.drain_timeout`) for a pod whose
/// `terminationGracePeriodSeconds` is `grace` (30 s when unset): the pod's
/// grace less a margin, a fifth of it up to 5 s, so that the proxy has
/// flushed its access log and spans (up to 3 s) and exited before the
/// kubelet's SIGKILL; at least 1 s.
pub fn drain_timeout(grace: Option<i64>) -> std::time::Duration {
    let grace = std::time::Duration::from_secs(
        grace.unwrap_or(DEFAULT_GRACE_SECONDS).max(0).unsigned_abs(),
    );
    let margin = (grace / 5).min(DRAIN_MARGIN);
    (grace - margin).max(std::time::Duration::from_secs(1))
}

/// The proxy's bootstrap: its listeners and admin port (the services come
/// from the control plane), and its grace period from the pod's
/// `terminationGracePeriodSeconds` (`grace`; see [`drain_timeout`]).
pub fn bootstrap(
    ns: &str,
    o: &Overrides,
    cfg: &MeshConfig,
    grace: Option<i64>,
    native: bool,
) -> Snapshot {
    let listener = |name: &str, direction, bind: String, opaque_ports| Listener {
        name: name.into(),
        direction,
        bind,
        target: None,
        app: None,
        opaque_ports,
        rate_limits: Vec::new(),
    };
    Snapshot {
        version: "bootstrap".into(),
        proxy: ProxyInfo {
            workload: "unknown".into(),
            namespace: ns.into(),
            identity: None,
        },
        admin: Admin {
            bind: format!("0.0.0.0:{}", cfg.ports.admin),
        },
        limits: Limits {
            drain_timeout: outrigger_api::Duration(drain_timeout(grace)),
            // Not native, the app gets SIGTERM with the proxy and may call
            // out while it shuts down: the proxy takes those calls for the
            // whole accept window, even when idle (Istio's default).
            drain_exit_when_idle: native,
            ..Limits::default()
        },
        http: HttpSettings {
            path_normalization: cfg.path_normalization,
            upgrades: cfg.upgrades.clone(),
        },
        listeners: vec![
            // The redirect sends the app's own traffic here, on loopback.
            listener(
                "outbound",
                Direction::Outbound,
                format!("127.0.0.1:{}", cfg.ports.outbound),
                Vec::new(),
            ),
            listener(
                "inbound",
                Direction::Inbound,
                format!("0.0.0.0:{}", cfg.ports.inbound),
                o.opaque_ports.clone(),
            ),
        ],
        services: Vec::new(),
        inbound: Default::default(),
    }
}

/// Istio's canonical service labels, in the order it reads them.
const CANONICAL_NAME_LABELS: [&str; 3] = [
    "service.istio.io/canonical-name",
    "app.kubernetes.io/name",
    "app",
];

/// Tracing's settings for the proxy, when the mesh has a collector: the
/// collector, the sampling (the pod's annotation, else the mesh's), and
/// the spans' `service.name`, `<canonical name>.<namespace>` as Istio
/// names it (from the pod's labels; without one, the proxy uses its
/// workload's name).
fn add_tracing(proxy: &mut Container, pod: &Pod, ns: &str, o: &Overrides, cfg: &MeshConfig) {
    let collector = cfg.tracing.collector.trim();
    if collector.is_empty() {
        return;
    }
    let value = |name: &str, v: String| EnvVar {
        name: name.into(),
        value: Some(v),
        value_from: None,
    };
    let sampling = o.trace_sampling.unwrap_or(cfg.tracing.sampling);
    let env = proxy.env.get_or_insert_with(Vec::new);
    env.push(value("OUTRIGGER_TRACE_COLLECTOR", collector.to_string()));
    env.push(value("OUTRIGGER_TRACE_SAMPLING", sampling.to_string()));
    let labels = pod.metadata.labels.as_ref();
    let canonical = CANONICAL_NAME_LABELS
        .iter()
        .find_map(|k| labels?.get(*k).filter(|v| !v.is_empty()));
    if let Some(name) = canonical {
        env.push(value(
            "OUTRIGGER_TRACE_SERVICE_NAME",
            format!("{name}.{ns}"),
        ));
    }
}

fn proxy_container(
    ns: &str,
    o: &Overrides,
    cfg: &MeshConfig,
    native: bool,
    app_probes: &AppProbes,
    resources: &Resources,
    grace: Option<i64>,
) -> Container {
    let field = |name: &str, path: &str| EnvVar {
        name: name.into(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                api_version: None,
            }),
            ..Default::default()
        }),
    };
    let value = |name: &str, v: String| EnvVar {
        name: name.into(),
        value: Some(v),
        value_from: None,
    };
    let mut env = vec![
        field("POD_NAME", "metadata.name"),
        field("POD_NAMESPACE", "metadata.namespace"),
        field("SERVICE_ACCOUNT", "spec.serviceAccountName"),
        field("POD_IP", "status.podIP"),
        value("OUTRIGGER_CONTROL_PLANE", cfg.control_plane_address.clone()),
        value(
            "OUTRIGGER_CONTROL_PLANE_IDENTITY",
            cfg.control_plane_identity(),
        ),
        value("OUTRIGGER_TRUST_DOMAIN", cfg.trust_domain.clone()),
        value("OUTRIGGER_TRUST_ROOTS_PEM", cfg.trust_roots.clone()),
        value("OUTRIGGER_TOKEN_FILE", format!("{TOKEN_DIR}/token")),
        value(
            "OUTRIGGER_LOG",
            o.log_level.clone().unwrap_or_else(|| cfg.log_level.clone()),
        ),
        value(
            "OUTRIGGER_ACCESS_LOG",
            o.access_log.unwrap_or(cfg.access_log).to_string(),
        ),
        value(
            "OUTRIGGER_BOOTSTRAP",
            serde_json::to_string(&bootstrap(ns, o, cfg, grace, native)).expect("serializes"),
        ),
    ];
    if !app_probes.is_empty() {
        env.push(value(
            "OUTRIGGER_APP_PROBES",
            serde_json::to_string(app_probes).expect("serializes"),
        ));
    }
    let admin = IntOrString::Int(cfg.ports.admin.into());
    let get = |path: &str, period: i32, failures: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: admin.clone(),
            ..Default::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        ..Default::default()
    };
    let quantities = |m: &BTreeMap<String, String>| {
        m.iter()
            .map(|(k, v)| (k.clone(), Quantity(v.clone())))
            .collect()
    };
    Container {
        name: PROXY_CONTAINER.into(),
        image: Some(cfg.proxy_image.clone()),
        image_pull_policy: Some(cfg.image_pull_policy.clone()),
        args: Some(vec!["run".into()]),
        env: Some(env),
        ports: Some(vec![ContainerPort {
            name: Some("outrigger-admin".into()),
            container_port: cfg.ports.admin.into(),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        resources: Some(ResourceRequirements {
            requests: Some(quantities(&resources.requests)),
            limits: Some(quantities(&resources.limits)),
            ..Default::default()
        }),
        security_context: Some(SecurityContext {
            run_as_user: Some(cfg.proxy_uid),
            run_as_group: Some(cfg.proxy_uid),
            run_as_non_root: Some(true),
            allow_privilege_escalation: Some(false),
            privileged: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: None,
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                localhost_profile: None,
            }),
            ..Default::default()
        }),
        readiness_probe: Some(get("/ready", 5, 3)),
        liveness_probe: Some(get("/live", 10, 3)),
        // Up to two minutes to get a certificate and the first config.
        startup_probe: Some(get("/ready", 1, 120)),
        volume_mounts: Some(vec![VolumeMount {
            name: TOKEN_VOLUME.into(),
            mount_path: TOKEN_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        }]),
        restart_policy: native.then(|| "Always".into()),
        // Without native sidecars, kubelet starts containers in order and
        // waits for each postStart hook: the app starts once this returns.
        lifecycle: (!native).then(|| Lifecycle {
            post_start: Some(LifecycleHandler {
                exec: Some(ExecAction {
                    command: Some(vec![
                        "outrigger-proxy".into(),
                        "wait-ready".into(),
                        "--admin".into(),
                        format!("127.0.0.1:{}", cfg.ports.admin),
                        "--timeout".into(),
                        "120s".into(),
                    ]),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Default::default()
    }
}

/// What the proxy's metrics need from the mesh config and the pod: the
/// format, the cluster's domain and name, and the pod's labels that name
/// its app, version and canonical service and revision (Istio's injector
/// hands its proxy the pod's labels too).
fn metrics_env(pod: &Pod, cfg: &MeshConfig) -> Vec<EnvVar> {
    let value = |name: &str, v: String| EnvVar {
        name: name.into(),
        value: Some(v),
        value_from: None,
    };
    let mut env = vec![
        value("OUTRIGGER_METRICS_FORMAT", cfg.metrics_format.to_string()),
        value("OUTRIGGER_CLUSTER_DOMAIN", cfg.cluster_domain.clone()),
        value("OUTRIGGER_CLUSTER_NAME", cfg.cluster_name.clone()),
    ];
    let labels: std::collections::BTreeMap<&str, &str> = pod
        .metadata
        .labels
        .iter()
        .flatten()
        .filter(|(k, _)| WORKLOAD_LABELS.contains(&k.as_str()))
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    if !labels.is_empty() {
        env.push(value(
            "OUTRIGGER_POD_LABELS",
            serde_json::to_string(&labels).expect("serializes"),
        ));
    }
    env
}

/// The pod labels the proxy's Istio-format metrics derive its app,
/// version, canonical service and canonical revision from.
pub const WORKLOAD_LABELS: [&str; 6] = [
    "service.istio.io/canonical-name",
    "service.istio.io/canonical-revision",
    "app.kubernetes.io/name",
    "app.kubernetes.io/version",
    "app",
    "version",
];

fn init_container(o: &Overrides, cfg: &MeshConfig) -> Container {
    let join = |v: Vec<String>| v.join(",");
    let mut inbound_skips: Vec<String> = vec![cfg.ports.admin.to_string()];
    inbound_skips.extend(cfg.skip_inbound_ports.iter().map(u16::to_string));
    inbound_skips.extend(o.skip_inbound_ports.iter().map(|r| r.to_string()));
    let mut outbound_skips: Vec<String> =
        cfg.skip_outbound_ports.iter().map(u16::to_string).collect();
    outbound_skips.extend(o.skip_outbound_ports.iter().map(|r| r.to_string()));
    let mut args = vec![
        "init".to_string(),
        "--proxy-uid".into(),
        cfg.proxy_uid.to_string(),
        "--outbound-port".into(),
        cfg.ports.outbound.to_string(),
        "--inbound-port".into(),
        cfg.ports.inbound.to_string(),
        "--skip-inbound-ports".into(),
        join(inbound_skips),
    ];
    if !outbound_skips.is_empty() {
        args.extend(["--skip-outbound-ports".into(), join(outbound_skips)]);
    }
    if !o.skip_subnets.is_empty() {
        let subnets: Vec<&str> = o.skip_subnets.iter().map(|s| s.text.as_str()).collect();
        args.extend(["--skip-subnets".into(), subnets.join(",")]);
    }
    let q = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), Quantity(v.to_string())))
            .collect()
    };
    Container {
        name: INIT_CONTAINER.into(),
        image: Some(cfg.init_image()),
        image_pull_policy: Some(cfg.init_image_pull_policy().into()),
        args: Some(args),
        resources: Some(ResourceRequirements {
            requests: Some(q(&[("cpu", "10m"), ("memory", "10Mi")])),
            limits: Some(q(&[("memory", "50Mi")])),
            ..Default::default()
        }),
        // iptables needs root with NET_ADMIN and NET_RAW in the pod's
        // network namespace; nothing else does.
        security_context: Some(SecurityContext {
            run_as_user: Some(0),
            run_as_non_root: Some(false),
            allow_privilege_escalation: Some(false),
            privileged: Some(false),
            read_only_root_filesystem: Some(false),
            capabilities: Some(Capabilities {
                add: Some(vec!["NET_ADMIN".into(), "NET_RAW".into()]),
                drop: Some(vec!["ALL".into()]),
            }),
            ..Default::default()
        }),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Default::default()
    }
}

fn token_volume() -> Volume {
    Volume {
        name: TOKEN_VOLUME.into(),
        projected: Some(ProjectedVolumeSource {
            sources: Some(vec![VolumeProjection {
                service_account_token: Some(ServiceAccountTokenProjection {
                    audience: Some(TOKEN_AUDIENCE.into()),
                    expiration_seconds: Some(TOKEN_LIFETIME_SECONDS),
                    path: "token".into(),
                }),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn to_value<T: serde::Serialize>(t: &T) -> Value {
    serde_json::to_value(t).expect("Kubernetes types serialize")
}

fn pointer(tokens: &[&str]) -> PointerBuf {
    PointerBuf::from_tokens(tokens.iter().copied())
}

fn add(tokens: &[&str], value: Value) -> PatchOperation {
    PatchOperation::Add(AddOperation {
        path: pointer(tokens),
        value,
    })
}

fn replace<T: serde::Serialize>(tokens: &[&str], value: &T) -> PatchOperation {
    PatchOperation::Replace(ReplaceOperation {
        path: pointer(tokens),
        value: to_value(value),
    })
}
