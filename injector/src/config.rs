//! The mesh-wide settings injection works from: which images, where the
//! control plane is, which ports and user the proxy has, its default
//! resources. Read from a YAML file (the chart renders it into a
//! ConfigMap); every field but the image has a default.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::quantity;

/// The UID the proxy runs as; the init step exempts its traffic from the
/// redirect (Linkerd uses 2102 too).
pub const PROXY_UID: i64 = 2102;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MeshConfig {
    /// The proxy's image (distroless: no shell, no iptables).
    pub proxy_image: String,
    #[serde(default = "defaults::pull_policy")]
    pub image_pull_policy: String,
    /// The init step's image: `outrigger-proxy init` with iptables (the
    /// Dockerfile's `proxy-init`). Absent: the proxy image's name with
    /// `-init` and the same tag (`outrigger/proxy:0.1.0` →
    /// `outrigger/proxy-init:0.1.0`); required when `proxyImage` is pinned
    /// by digest, which names one image only. See [`MeshConfig::init_image`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_init_image: Option<String>,
    /// The init image's pull policy; absent: `imagePullPolicy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_init_image_pull_policy: Option<String>,
    /// `host:port` of the control plane's config and certify server.
    #[serde(default = "defaults::control_plane")]
    pub control_plane_address: String,
    /// The control plane's namespace: never injected.
    #[serde(default = "defaults::control_plane_namespace")]
    pub control_plane_namespace: String,
    /// The control plane's ServiceAccount (its SPIFFE identity, which proxies check).
    #[serde(default = "defaults::control_plane_service_account")]
    pub control_plane_service_account: String,
    #[serde(default = "defaults::trust_domain")]
    pub trust_domain: String,
    /// The mesh's trust roots (PEM), handed to every proxy; usually filled
    /// from `--trust-roots` rather than written here.
    #[serde(default)]
    pub trust_roots: String,
    #[serde(default = "defaults::proxy_uid")]
    pub proxy_uid: i64,
    #[serde(default)]
    pub ports: Ports,
    /// The proxy's resources unless a pod's annotations say otherwise.
    #[serde(default = "defaults::resources")]
    pub resources: Resources,
    /// Native sidecars (an init container with `restartPolicy: Always`,
    /// Kubernetes 1.29+) unless a pod says otherwise.
    #[serde(default = "defaults::yes")]
    pub native_sidecar: bool,
    #[serde(default = "defaults::log_level")]
    pub log_level: String,
    /// Every proxy's access log (`off`, `text`, `json`) unless a pod's
    /// `config.outrigger.dev/access-log` says otherwise.
    #[serde(default)]
    pub access_log: outrigger_api::AccessLogFormat,
    /// Ports the init step never redirects inbound, for every pod.
    #[serde(default)]
    pub skip_inbound_ports: Vec<u16>,
    /// Ports the init step never redirects outbound, for every pod.
    #[serde(default)]
    pub skip_outbound_ports: Vec<u16>,
    /// How every proxy normalizes request paths before routing and
    /// authorization (Istio's names: `NONE`, `BASE`, `MERGE_SLASHES`,
    /// `DECODE_AND_MERGE_SLASHES`).
    #[serde(default)]
    pub path_normalization: outrigger_api::PathNormalization,
    /// `Upgrade` protocols that may become tunnels (`CONNECT` for HTTP/1.1
    /// CONNECT); any other upgrade is refused with 403.
    #[serde(default = "defaults::upgrades")]
    pub upgrades: Vec<String>,
    /// Names and labels of every proxy's request and TCP metrics:
    /// `outrigger` or `istio` (Istio's standard metrics).
    #[serde(default)]
    pub metrics_format: outrigger_api::MetricsFormat,
    /// The cluster DNS suffix (Istio metrics: `destination_service` is
    /// `name.namespace.svc.<clusterDomain>`).
    #[serde(default = "defaults::cluster_domain")]
    pub cluster_domain: String,
    /// The cluster's name (Istio metrics: `source_cluster`,
    /// `destination_cluster`; Istio's default is `Kubernetes`).
    #[serde(default = "defaults::cluster_name")]
    pub cluster_name: String,
    /// Distributed tracing for every proxy: off unless a collector is set.
    #[serde(default)]
    pub tracing: Tracing,
}

/// Distributed tracing (the proxy's `--trace-collector` and
/// `--trace-sampling`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Tracing {
    /// The OpenTelemetry collector (OTLP over HTTP), e.g.
    /// `http://otel-collector.observability:4318`; empty: tracing off.
    #[serde(default)]
    pub collector: String,
    /// The percentage of new traces sampled, unless a pod's
    /// `config.outrigger.dev/trace-sampling` says otherwise.
    #[serde(default)]
    pub sampling: outrigger_api::TraceSampling,
}

/// The proxy's ports inside the pod.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Ports {
    pub outbound: u16,
    pub inbound: u16,
    pub admin: u16,
}

impl Default for Ports {
    fn default() -> Self {
        Self {
            outbound: 4140,
            inbound: 4143,
            admin: 4191,
        }
    }
}

/// Kubernetes quantities (`100m`, `64Mi`), by resource name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    #[serde(default)]
    pub requests: BTreeMap<String, String>,
    #[serde(default)]
    pub limits: BTreeMap<String, String>,
}

impl Resources {
    /// These (the mesh's defaults) with a pod's own requests and limits
    /// over them. A request above its limit, which the API server would
    /// refuse with a message about the proxy container, is an error that
    /// names where each number came from.
    pub fn with_overrides(
        &self,
        requests: &BTreeMap<String, String>,
        limits: &BTreeMap<String, String>,
    ) -> Result<Resources, String> {
        let mut merged = self.clone();
        merged.requests.extend(requests.clone());
        merged.limits.extend(limits.clone());
        // Where a number came from: the pod's annotation, or the mesh
        // config. With no annotation in play (the mesh config checked
        // alone, which its own error names), the field is enough.
        let from = |own: &BTreeMap<String, String>, kind: &str, resource: &str| {
            if own.contains_key(resource) {
                format!("{}proxy-{resource}-{kind}", crate::annotations::PREFIX)
            } else if requests.contains_key(resource) || limits.contains_key(resource) {
                format!("the mesh config's resources.{kind}s.{resource}")
            } else {
                format!("resources.{kind}s.{resource}")
            }
        };
        for (resource, request) in &merged.requests {
            let Some(limit) = merged.limits.get(resource) else {
                continue;
            };
            let (Ok(r), Ok(l)) = (quantity::parse(request), quantity::parse(limit)) else {
                continue; // each is checked where it is read
            };
            if r > l {
                return Err(format!(
                    "{} {request:?} is above {} {limit:?}: a request cannot exceed its limit",
                    from(requests, "request", resource),
                    from(limits, "limit", resource),
                ));
            }
        }
        Ok(merged)
    }
}

mod defaults {
    use super::*;

    pub fn upgrades() -> Vec<String> {
        outrigger_api::HttpSettings::default().upgrades
    }

    pub fn pull_policy() -> String {
        "IfNotPresent".into()
    }
    pub fn control_plane() -> String {
        "outrigger-control-plane.outrigger-system.svc:8090".into()
    }
    pub fn control_plane_namespace() -> String {
        "outrigger-system".into()
    }
    pub fn control_plane_service_account() -> String {
        "outrigger-control-plane".into()
    }
    pub fn trust_domain() -> String {
        "cluster.local".into()
    }
    pub fn cluster_domain() -> String {
        "cluster.local".into()
    }
    pub fn cluster_name() -> String {
        "Kubernetes".into()
    }
    pub fn proxy_uid() -> i64 {
        PROXY_UID
    }
    pub fn resources() -> Resources {
        Resources {
            requests: [("cpu", "100m"), ("memory", "32Mi")]
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .into(),
            limits: [("memory", "128Mi")]
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .into(),
        }
    }
    pub fn yes() -> bool {
        true
    }
    pub fn log_level() -> String {
        "warn,outrigger_proxy=info".into()
    }
}

/// A mesh config that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the mesh config: {0}")]
    Parse(String),
    #[error("mesh config field {field}: {message}")]
    Field {
        field: &'static str,
        message: String,
    },
}

impl MeshConfig {
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        let cfg: MeshConfig =
            serde_saphyr::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        cfg.check()?;
        Ok(cfg)
    }

    /// A config with every default, for `image` (tests and the CLI).
    pub fn with_image(image: &str) -> Self {
        Self::from_yaml(&format!("proxyImage: {image:?}")).expect("the defaults are valid")
    }

    fn check(&self) -> Result<(), ConfigError> {
        let field = |field, message: &str| {
            Err(ConfigError::Field {
                field,
                message: message.to_string(),
            })
        };
        if self.proxy_image.trim().is_empty() {
            return field("proxyImage", "must name an image");
        }
        match &self.proxy_init_image {
            Some(image) if image.trim().is_empty() => {
                return field("proxyInitImage", "must name an image (or be left out)");
            }
            None if init_image_of(&self.proxy_image).is_none() => {
                return field(
                    "proxyInitImage",
                    "must be given when proxyImage is pinned by digest (a digest names one image)",
                );
            }
            _ => {}
        }
        if !self.control_plane_address.contains(':') {
            return field("controlPlaneAddress", "must be host:port");
        }
        if self.proxy_uid <= 0 {
            return field("proxyUid", "must be a non-root UID (above 0)");
        }
        let dns = |s: &str| {
            !s.is_empty()
                && s.split('.').all(|l| {
                    !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                })
        };
        if !dns(&self.cluster_domain) {
            return field("clusterDomain", "must be a DNS name, like cluster.local");
        }
        if self.cluster_name.trim().is_empty() {
            return field("clusterName", "must not be empty");
        }
        let p = &self.ports;
        if p.outbound == 0 || p.inbound == 0 || p.admin == 0 {
            return field("ports", "every port must be 1-65535");
        }
        if p.outbound == p.inbound || p.inbound == p.admin || p.outbound == p.admin {
            return field("ports", "outbound, inbound and admin must differ");
        }
        let http = outrigger_api::HttpSettings {
            path_normalization: self.path_normalization,
            upgrades: self.upgrades.clone(),
        };
        if let Some((i, u)) = http.bad_upgrade() {
            return field(
                "upgrades",
                &format!("[{i}] {u:?} is not an Upgrade protocol name"),
            );
        }
        let collector = self.tracing.collector.trim();
        if !collector.is_empty() {
            if let Err(e) = collector.parse::<outrigger_api::TraceCollector>() {
                return field("tracing.collector", &e);
            }
        }
        for (k, v) in self.resources.requests.iter().chain(&self.resources.limits) {
            if let Err(e) = quantity::parse(v) {
                return field("resources", &format!("{k}: {e}"));
            }
        }
        if let Err(e) = self
            .resources
            .with_overrides(&BTreeMap::new(), &BTreeMap::new())
        {
            return field("resources", &e);
        }
        Ok(())
    }

    /// The init container's image: `proxyInitImage`, else the one named
    /// after the proxy image (`<name>-init`, same tag).
    pub fn init_image(&self) -> String {
        self.proxy_init_image
            .clone()
            .or_else(|| init_image_of(&self.proxy_image))
            .expect("checked when the config was read: a digest needs proxyInitImage")
    }

    /// The init container's pull policy.
    pub fn init_image_pull_policy(&self) -> &str {
        self.proxy_init_image_pull_policy
            .as_deref()
            .unwrap_or(&self.image_pull_policy)
    }

    /// The control plane's SPIFFE identity.
    pub fn control_plane_identity(&self) -> String {
        format!(
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.control_plane_namespace, self.control_plane_service_account
        )
    }
}

/// `repo/name:tag` → `repo/name-init:tag` (no tag: `repo/name-init`); none
/// for an image pinned by digest.
fn init_image_of(proxy: &str) -> Option<String> {
    if proxy.contains('@') {
        return None;
    }
    let name = proxy.rfind('/').map_or(0, |i| i + 1);
    Some(match proxy[name..].find(':') {
        Some(i) => {
            let (image, tag) = proxy.split_at(name + i);
            format!("{image}-init{tag}")
        }
        None => format!("{proxy}-init"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_init_image_is_configured_or_named_after_the_proxy_image() {
        for (proxy, init) in [
            ("outrigger/proxy:0.1.0", "outrigger/proxy-init:0.1.0"),
            ("localhost:5000/o/proxy:1", "localhost:5000/o/proxy-init:1"),
            ("localhost:5000/o/proxy", "localhost:5000/o/proxy-init"),
            ("proxy", "proxy-init"),
        ] {
            let c = MeshConfig::with_image(proxy);
            assert_eq!(c.init_image(), init);
            assert_eq!(c.init_image_pull_policy(), "IfNotPresent");
        }
        let c = MeshConfig::from_yaml(
            "proxyImage: r.example/proxy@sha256:aa\n\
             imagePullPolicy: Always\n\
             proxyInitImage: r.example/init@sha256:bb\n\
             proxyInitImagePullPolicy: IfNotPresent",
        )
        .unwrap();
        assert_eq!(c.init_image(), "r.example/init@sha256:bb");
        assert_eq!(c.init_image_pull_policy(), "IfNotPresent");
        assert_eq!(c.image_pull_policy, "Always");
    }

    #[test]
    fn a_digest_pinned_proxy_needs_an_init_image() {
        for (yaml, why) in [
            ("proxyImage: r.example/proxy@sha256:aa", "pinned by digest"),
            ("proxyImage: p:1\nproxyInitImage: ' '", "must name an image"),
        ] {
            let e = MeshConfig::from_yaml(yaml).unwrap_err().to_string();
            assert!(e.contains("proxyInitImage") && e.contains(why), "{e}");
        }
    }

    #[test]
    fn a_minimal_config_takes_every_default() {
        let c = MeshConfig::from_yaml("proxyImage: ghcr.io/outrigger/proxy:0.1.0").unwrap();
        assert_eq!(c.ports, Ports::default());
        assert_eq!(c.proxy_uid, 2102);
        assert!(c.native_sidecar);
        assert_eq!(c.access_log, outrigger_api::AccessLogFormat::Off);
        assert_eq!(c.metrics_format, outrigger_api::MetricsFormat::Outrigger);
        assert_eq!(c.cluster_domain, "cluster.local");
        assert_eq!(c.cluster_name, "Kubernetes");
        assert_eq!(c.resources.requests["cpu"], "100m");
        assert_eq!(
            c.control_plane_identity(),
            "spiffe://cluster.local/ns/outrigger-system/sa/outrigger-control-plane"
        );
    }

    #[test]
    fn bad_configs_name_the_field() {
        for (yaml, want) in [
            ("proxyImage: ''", "proxyImage"),
            (
                "proxyImage: x\ncontrolPlaneAddress: cp",
                "controlPlaneAddress",
            ),
            ("proxyImage: x\nproxyUid: 0", "proxyUid"),
            (
                "proxyImage: x\nports: { outbound: 4140, inbound: 4140, admin: 4191 }",
                "ports",
            ),
            (
                "proxyImage: x\nresources: { requests: { cpu: lots } }",
                "resources",
            ),
            (
                "proxyImage: x\nresources: { requests: { memory: 1Gi }, limits: { memory: 1G } }",
                "mesh config field resources: resources.requests.memory \"1Gi\" is above resources.limits.memory \"1G\": a request cannot exceed its limit",
            ),
            ("proxyImage: x\nsidecar: yes", "unknown field"),
            ("proxyImage: x\nupgrades: ['web socket']", "upgrades"),
            ("proxyImage: x\npathNormalization: STRICT", "unknown variant"),
            ("proxyImage: x\naccessLog: yes", "accessLog"),
            ("proxyImage: x\nmetricsFormat: prometheus", "metricsFormat"),
            ("proxyImage: x\nclusterDomain: ''", "clusterDomain"),
            ("proxyImage: x\nclusterDomain: 'a..b'", "clusterDomain"),
            ("proxyImage: x\nclusterName: ' '", "clusterName"),
            (
                "proxyImage: x\ntracing: { collector: 'https://c:4318' }",
                "tracing.collector",
            ),
            ("proxyImage: x\ntracing: { sampling: 120 }", "120"),
            ("proxyImage: x\ntracing: { rate: 1 }", "unknown field"),
        ] {
            let e = MeshConfig::from_yaml(yaml).unwrap_err().to_string();
            assert!(e.contains(want), "{yaml}: {e}");
        }
    }

    #[test]
    fn the_http_settings_reach_every_proxys_bootstrap() {
        let c = MeshConfig::from_yaml(
            "proxyImage: x\npathNormalization: DECODE_AND_MERGE_SLASHES\nupgrades: [websocket, CONNECT]",
        )
        .unwrap();
        let b = crate::inject::bootstrap("shop", &Default::default(), &c, None, true);
        assert_eq!(
            b.http.path_normalization,
            outrigger_api::PathNormalization::DecodeAndMergeSlashes
        );
        assert!(b.http.allows_upgrade("connect"));
        b.validate().unwrap();
        // The defaults: MERGE_SLASHES and WebSocket only.
        let d = crate::inject::bootstrap(
            "shop",
            &Default::default(),
            &MeshConfig::with_image("x"),
            None,
            true,
        );
        assert_eq!(d.http, outrigger_api::HttpSettings::default());
    }
}
