//! `outrigger check`: whether the mesh the chart installed is healthy, one
//! line per check (✔ passed, ⚠ worth a look, × failed, with what to do).
//!
//! [`post_install`] turns the objects the cluster holds ([`Objects`]) into
//! [`Check`]s, and [`pre_install`] what `--pre` reads ([`PreObjects`]),
//! pure; [`render`] is what to print; [`fetch`] and [`fetch_pre`] are the
//! edges, and [`run`] the command (with `--wait`'s retries). The proxies' certificates and config streams are read from their
//! `/metrics` through the pod proxy ([`crate::proxy_admin`], [`crate::prom`]).
//! The CRDs are held against [`outrigger_control_plane::crd::definitions`]
//! (what the outrigger-crds chart is generated from), the webhook's serving
//! certificate against its `caBundle` as the API server would check it
//! ([`outrigger_identity::inspect`]), and the `Accepted` conditions are the
//! ones the control plane writes ([`outrigger_control_plane::status`]).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::admissionregistration::v1::{MutatingWebhook, MutatingWebhookConfiguration};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ApiResource, DynamicObject, ListParams};
use kube::Api;
use outrigger_control_plane::crd::{definitions, VERSION};
use outrigger_control_plane::status::ACCEPTED;
use outrigger_identity::{inspect, SecretLayout};
use outrigger_injector::annotations::{INJECT, PROXY_VERSION};
use outrigger_injector::inject::PROXY_CONTAINER;
use rustls::pki_types::CertificateDer;
use serde::Serialize;
use serde_json::Value;

use crate::output::{self, Format, OutputError};
use crate::version::{self, CONTROL_PLANE, INJECTOR};

/// The webhook the chart registers (its name in the configuration).
pub const WEBHOOK: &str = "injector.outrigger.dev";
/// A certificate expiring sooner than this is a warning.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(30 * 24 * 3600);

/// How a check came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Ok,
    Warn,
    Fail,
}

impl Level {
    pub fn mark(self) -> &'static str {
        match self {
            Level::Ok => "✔",
            Level::Warn => "⚠",
            Level::Fail => "×",
        }
    }
}

/// One line of the report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Check {
    /// The heading it is printed under.
    pub group: &'static str,
    pub level: Level,
    pub message: String,
    /// What to do, when it did not pass.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

impl Check {
    fn ok(group: &'static str, message: impl Into<String>) -> Self {
        Self {
            group,
            level: Level::Ok,
            message: message.into(),
            hint: None,
        }
    }
    fn warn(group: &'static str, message: impl Into<String>, hint: impl Into<String>) -> Self {
        Self {
            group,
            level: Level::Warn,
            message: message.into(),
            hint: Some(hint.into()),
        }
    }
    fn fail(group: &'static str, message: impl Into<String>, hint: impl Into<String>) -> Self {
        Self {
            group,
            level: Level::Fail,
            message: message.into(),
            hint: Some(hint.into()),
        }
    }
}

/// The whole answer, for `-o json|yaml`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Nothing failed (the exit status).
    pub ok: bool,
    pub checks: Vec<Check>,
}

impl Report {
    pub fn of(checks: Vec<Check>) -> Self {
        Self {
            ok: checks.iter().all(|c| c.level != Level::Fail),
            checks,
        }
    }
}

/// What the checks after install read from the cluster.
#[derive(Clone, Debug, Default)]
pub struct Objects {
    /// Where the chart is installed.
    pub mesh_namespace: String,
    pub crds: Vec<CustomResourceDefinition>,
    /// The Deployments in the mesh namespace.
    pub deployments: Vec<Deployment>,
    pub webhooks: Vec<MutatingWebhookConfiguration>,
    /// The Secrets in the mesh namespace (the webhook's serving certificate).
    pub secrets: Vec<Secret>,
    /// The mesh's custom resources: (kind, object).
    pub resources: Vec<(String, Value)>,
    pub namespaces: Vec<Namespace>,
    /// The pods (of -n's namespace, else of all), meshed or not.
    pub pods: Vec<Pod>,
    /// What the ready proxies' `/metrics` answered (`NS/NAME`), or why not.
    pub metrics: BTreeMap<String, Result<String, String>>,
}

const CRDS: &str = "outrigger CRDs";
const DEPLOYMENTS: &str = "outrigger control plane";
const WEBHOOKS: &str = "outrigger injector webhook";
const RESOURCES: &str = "outrigger resources";
const MESH_CA: &str = "outrigger mesh CA";
const NAMESPACES: &str = "meshed namespaces";
const PROXIES: &str = "outrigger proxies";

/// The checks after install, in the order printed.
pub fn post_install(o: &Objects, now: SystemTime) -> Vec<Check> {
    let mut out = crds(&o.crds);
    out.extend(deployments(&o.deployments, &o.mesh_namespace));
    out.extend(webhook(o, now));
    out.extend(mesh_ca(o, now));
    out.extend(resources(&o.resources));
    out.push(namespaces(&o.namespaces));
    let control_plane = o
        .deployments
        .iter()
        .find(|d| d.metadata.name.as_deref() == Some(CONTROL_PLANE.0))
        .and_then(|d| version::component(d, CONTROL_PLANE.1));
    out.extend(proxies(
        &o.pods,
        control_plane.as_ref().map(|c| c.version.as_str()),
        &o.metrics,
        now,
    ));
    out
}

/// A workload certificate with less left than this is a warning, from a
/// proxy that does not say when it renews (older than
/// `outrigger_identity_cert_renew_at_timestamp_seconds`): the control
/// plane's default lifetime is 24h, renewed with 7.2h left. Newer proxies
/// are judged as the alert judges them
/// ([`outrigger_identity::renewal::expiring_soon`]).
pub const CERT_WARNING: Duration = Duration::from_secs(3600);

/// What one proxy's `/metrics` says of its certificate
/// (`outrigger_identity_cert_expiry_timestamp_seconds`) and its config
/// stream (`outrigger_control_plane_connected`): (level, words, hint).
pub fn proxy_metrics(
    text: &Result<String, String>,
    ns: &str,
    name: &str,
    now: SystemTime,
) -> (Level, Vec<String>, Option<String>) {
    let logs = format!("kubectl -n {ns} logs {name} -c {PROXY_CONTAINER}");
    let text = match text {
        Ok(t) => t,
        Err(e) => {
            return (
                Level::Warn,
                vec![format!("cannot read its /metrics ({e})")],
                Some(format!(
                    "kubectl get --raw {} (needs pods/proxy)",
                    crate::proxy_admin::pod_proxy_path(ns, name, "/metrics")
                )),
            )
        }
    };
    let samples = crate::prom::parse(text);
    let value = |metric: &str| samples.iter().find(|s| s.name == metric).map(|s| s.value);
    let mut level = Level::Ok;
    let mut words = Vec::new();
    let mut hint = None;
    let now_secs = now
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    match value("outrigger_identity_cert_expiry_timestamp_seconds") {
        None | Some(0.0) => {
            level = Level::Fail;
            words.push("no certificate yet".to_string());
            hint = Some(format!(
                "{logs}: it has not been certified by the control plane"
            ));
        }
        Some(at) if at <= now_secs => {
            level = Level::Fail;
            words.push(format!(
                "certificate expired at {}",
                crate::proxy_config::rfc3339(at as i64)
            ));
            hint = Some(format!(
                "{logs}: it cannot renew its certificate; the control plane (the mesh CA) \
                 must be running and reachable from it, and its CA not expired (see the \
                 mesh CA lines)"
            ));
        }
        Some(at) => {
            let left = Duration::from_secs_f64(at - now_secs);
            let shown = if left.as_secs() >= 3600 {
                format!("{}h", left.as_secs() / 3600)
            } else {
                format!("{}m", left.as_secs() / 60)
            };
            let soon = match value("outrigger_identity_cert_renew_at_timestamp_seconds") {
                Some(renew) if renew > 0.0 => outrigger_identity::renewal::expiring_soon(
                    now,
                    UNIX_EPOCH + Duration::from_secs_f64(renew),
                    UNIX_EPOCH + Duration::from_secs_f64(at),
                ),
                _ => left < CERT_WARNING,
            };
            if soon {
                level = Level::Warn;
                words.push(format!("certificate expires in {shown}"));
                hint = Some(format!("{logs}: it should have renewed its certificate"));
            } else {
                words.push(format!("certificate valid for {shown}"));
            }
        }
    }
    if value("outrigger_control_plane_connected") == Some(1.0) {
        words.push("connected to the control plane".to_string());
    } else {
        level = Level::Fail;
        words.push("not connected to the control plane".to_string());
        hint.get_or_insert(format!("{logs}; and the control plane's logs"));
    }
    (level, words, hint)
}

/// How a proxy's version stands to the control plane's: equal is ✔; the
/// same major version and at most one minor apart (patches aside) is ⚠,
/// the supported skew; anything else, or a version that is not
/// MAJOR.MINOR.PATCH, is ×... except that an unreadable version (a
/// digest) is ⚠, as it cannot be compared.
pub fn skew(proxy: &str, control_plane: &str) -> Level {
    fn parse(v: &str) -> Option<(u64, u64)> {
        let v = v.strip_prefix('v').unwrap_or(v);
        let mut parts = v.split(['.', '-', '+']);
        Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
    }
    if proxy == control_plane {
        return Level::Ok;
    }
    match (parse(proxy), parse(control_plane)) {
        (Some((pa, pi)), Some((ca, ci))) if pa == ca && pi.abs_diff(ci) <= 1 => Level::Warn,
        (Some(_), Some(_)) => Level::Fail,
        _ => Level::Warn,
    }
}

/// Each meshed pod (an `outrigger-proxy` container, native sidecar or
/// not): its proxy ready, and its version (the `outrigger.dev/proxy-version`
/// annotation the injector set, else its image's tag) against the control
/// plane's by [`skew`]. One line per pod, at its worst level.
pub fn proxies(
    pods: &[Pod],
    control_plane: Option<&str>,
    metrics: &BTreeMap<String, Result<String, String>>,
    now: SystemTime,
) -> Vec<Check> {
    let listed = version::proxies(pods);
    if listed.is_empty() {
        return vec![Check::ok(PROXIES, "no meshed pods")];
    }
    listed
        .iter()
        .map(|p| {
            let pod = pods
                .iter()
                .find(|x| {
                    x.metadata.name.as_deref() == Some(p.pod.as_str())
                        && x.metadata.namespace.as_deref().unwrap_or_default() == p.namespace
                })
                .expect("listed from these pods");
            let (ns, name) = (&p.namespace, &p.pod);
            let proxy_version = pod
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(PROXY_VERSION))
                .cloned()
                .unwrap_or_else(|| p.version.clone());
            let ready = pod.status.as_ref().is_some_and(|s| {
                s.init_container_statuses
                    .iter()
                    .flatten()
                    .chain(s.container_statuses.iter().flatten())
                    .any(|c| c.name == PROXY_CONTAINER && c.ready)
            });
            let mut level = Level::Ok;
            let mut said = Vec::new();
            let mut hints = Vec::new();
            if ready {
                said.push("proxy ready".to_string());
            } else {
                level = Level::Fail;
                said.push("proxy not ready".to_string());
                hints.push(format!(
                    "kubectl -n {ns} describe pod {name}; kubectl -n {ns} logs {name} -c {PROXY_CONTAINER}"
                ));
            }
            match control_plane {
                Some(cp) => {
                    let l = skew(&proxy_version, cp);
                    level = level.max(l);
                    said.push(match l {
                        Level::Ok => format!("version {proxy_version}"),
                        _ => format!("version {proxy_version}, the control plane's is {cp}"),
                    });
                    if l != Level::Ok {
                        hints.push(
                            "restart its workload (kubectl rollout restart) so the injector \
                             gives it the control plane's proxy: one minor version apart is \
                             supported, further is not"
                                .to_string(),
                        );
                    }
                }
                None => said.push(format!(
                    "version {proxy_version} (no control plane to compare with)"
                )),
            }
            if let Some(text) = metrics.get(&format!("{ns}/{name}")) {
                let (l, words, hint) = proxy_metrics(text, ns, name, now);
                level = level.max(l);
                said.extend(words);
                hints.extend(hint);
            }
            Check {
                group: PROXIES,
                level,
                message: format!("pod {ns}/{name}: {}", said.join(", ")),
                hint: (!hints.is_empty()).then(|| hints.join("; ")),
            }
        })
        .collect()
}

/// Each CRD this CLI knows: installed, and its schema the same as this
/// CLI's (the served version's `openAPIV3Schema`).
pub fn crds(installed: &[CustomResourceDefinition]) -> Vec<Check> {
    let apply = "helm upgrade --install outrigger-crds with the outrigger-crds chart of this \
                 release (before the outrigger chart; docs/install.md), or run the outrigger \
                 CLI of the release installed";
    definitions()
        .into_iter()
        .map(|want| {
            let name = want.metadata.name.clone().unwrap_or_default();
            let Some(have) = installed
                .iter()
                .find(|c| c.metadata.name.as_deref() == Some(name.as_str()))
            else {
                return Check::fail(
                    CRDS,
                    format!("customresourcedefinition {name} is missing"),
                    apply,
                );
            };
            let schema = |crd: &CustomResourceDefinition| {
                crd.spec
                    .versions
                    .iter()
                    .find(|v| v.name == VERSION)
                    .and_then(|v| serde_json::to_value(&v.schema).ok())
            };
            match (schema(&want), schema(have)) {
                (Some(w), Some(h)) if w == h => Check::ok(
                    CRDS,
                    format!("customresourcedefinition {name} installed, same schema as this CLI"),
                ),
                (_, None) => Check::fail(
                    CRDS,
                    format!("customresourcedefinition {name} does not serve {VERSION}"),
                    apply,
                ),
                (w, Some(h)) => Check::fail(
                    CRDS,
                    format!(
                        "customresourcedefinition {name} has another schema than this CLI's \
                         (first difference at {})",
                        first_difference(&w.unwrap_or(Value::Null), &h, "")
                    ),
                    apply,
                ),
            }
        })
        .collect()
}

/// The JSON pointer of the first place `a` and `b` differ.
fn first_difference(a: &Value, b: &Value, at: &str) -> String {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                if x.get(k) != y.get(k) {
                    let here = format!("{at}/{k}");
                    return match (x.get(k), y.get(k)) {
                        (Some(p), Some(q)) => first_difference(p, q, &here),
                        _ => here,
                    };
                }
            }
            at.to_string()
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (p, q)) in x.iter().zip(y).enumerate() {
                if p != q {
                    return first_difference(p, q, &format!("{at}/{i}"));
                }
            }
            at.to_string()
        }
        _ if at.is_empty() => "/".into(),
        _ => at.to_string(),
    }
}

/// The control plane's and the injector's Deployments: available, and
/// every replica ready.
pub fn deployments(list: &[Deployment], namespace: &str) -> Vec<Check> {
    [CONTROL_PLANE.0, INJECTOR.0]
        .into_iter()
        .map(|name| {
            let Some(d) = list
                .iter()
                .find(|d| d.metadata.name.as_deref() == Some(name))
            else {
                return Check::fail(
                    DEPLOYMENTS,
                    format!("deployment/{name} is missing in namespace {namespace}"),
                    format!(
                        "install the chart (helm install outrigger charts/outrigger -n \
                         {namespace}), or pass --mesh-namespace where it is installed"
                    ),
                );
            };
            let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
            let status = d.status.clone().unwrap_or_default();
            let ready = status.ready_replicas.unwrap_or(0);
            let available = status
                .conditions
                .iter()
                .flatten()
                .any(|c| c.type_ == "Available" && c.status == "True");
            if available && ready >= want && want > 0 {
                Check::ok(
                    DEPLOYMENTS,
                    format!("deployment/{name} available, {ready}/{want} ready"),
                )
            } else {
                Check::fail(
                    DEPLOYMENTS,
                    format!(
                        "deployment/{name} {}, {ready}/{want} ready",
                        if available {
                            "available"
                        } else {
                            "not available"
                        }
                    ),
                    format!(
                        "kubectl -n {namespace} describe deployment/{name}; \
                         kubectl -n {namespace} logs deployment/{name}"
                    ),
                )
            }
        })
        .collect()
}

/// The chart's webhook: registered, and the injector's serving certificate
/// valid under its `caBundle` for `<service>.<namespace>.svc` (what the API
/// server checks), neither expiring within [`EXPIRY_WARNING`].
pub fn webhook(o: &Objects, now: SystemTime) -> Vec<Check> {
    let ns = &o.mesh_namespace;
    let found = o.webhooks.iter().find_map(|c| {
        c.webhooks.iter().flatten().find_map(|w| {
            let svc = w.client_config.service.as_ref()?;
            (w.name == WEBHOOK && svc.namespace == *ns).then(|| {
                (
                    c.metadata.name.clone().unwrap_or_default(),
                    svc.name.clone(),
                    w.client_config.ca_bundle.as_ref().map(|b| b.0.clone()),
                )
            })
        })
    });
    let Some((config, service, bundle)) = found else {
        return vec![Check::fail(
            WEBHOOKS,
            format!("no mutatingwebhookconfiguration has the webhook {WEBHOOK} for namespace {ns}"),
            "install the chart (helm install outrigger charts/outrigger), or pass \
             --mesh-namespace where it is installed",
        )];
    };
    let mut out = vec![Check::ok(
        WEBHOOKS,
        format!("mutatingwebhookconfiguration {config} registered"),
    )];
    let dns = format!("{service}.{ns}.svc");
    let reinstall = format!(
        "helm upgrade outrigger charts/outrigger -n {ns} makes a new serving certificate and \
         caBundle (or renew the Secret injector.tls.existingSecret names, and its caBundle)"
    );
    let bundle = String::from_utf8_lossy(bundle.as_deref().unwrap_or_default()).into_owned();
    let roots = match inspect::certificates(&bundle, "caBundle") {
        Ok(r) => r,
        Err(e) => {
            out.push(Check::fail(
                WEBHOOKS,
                format!("mutatingwebhookconfiguration {config}: {e}"),
                reinstall,
            ));
            return out;
        }
    };
    let serving = serving_secret(o).and_then(|(name, data)| {
        let pem = String::from_utf8_lossy(&data).into_owned();
        Some((name, inspect::certificates(&pem, "tls.crt").ok()?))
    });
    let Some((secret, chain)) = serving else {
        out.push(Check::fail(
            WEBHOOKS,
            format!(
                "no serving certificate (a Secret with tls.crt the injector mounts) in \
                 namespace {ns}"
            ),
            reinstall,
        ));
        return out;
    };
    match inspect::verify_server(&roots, &chain, &dns, now) {
        Ok(()) => out.push(Check::ok(
            WEBHOOKS,
            format!("caBundle valid for {dns} (secret/{secret})"),
        )),
        Err(e) => {
            out.push(Check::fail(
                WEBHOOKS,
                format!("caBundle of {config} does not accept secret/{secret} for {dns}: {e}"),
                reinstall,
            ));
            return out;
        }
    }
    let soonest = roots
        .iter()
        .chain(&chain)
        .filter_map(|c| inspect::not_after(c).ok())
        .min();
    if let Some(at) = soonest {
        let left = at.duration_since(now).unwrap_or_default();
        let days = left.as_secs() / 86_400;
        if left < EXPIRY_WARNING {
            out.push(Check::warn(
                WEBHOOKS,
                format!("webhook certificates expire in {days} days (within 30)"),
                reinstall,
            ));
        } else {
            out.push(Check::ok(
                WEBHOOKS,
                format!("webhook certificates valid for {days} more days"),
            ));
        }
    }
    out
}

/// The mesh CA the control plane signs with (the certificate and roots of
/// the Secret its Deployment mounts, in either layout the control plane
/// reads: [`SecretLayout`]): each certificate not expired (×) nor expiring
/// within [`EXPIRY_WARNING`] (⚠), and the CA under the roots the proxies
/// trust: its last certificate one of them or signed by one's key
/// ([`inspect::signed_by`]); an issuer named as a root but not signed by it
/// fails naming both.
pub fn mesh_ca(o: &Objects, now: SystemTime) -> Vec<Check> {
    let ns = &o.mesh_namespace;
    let rotate = "rotate the mesh CA as docs/security.md says (new root trusted, new root \
                  signing, old root dropped)";
    let Some((secret, data)) = mounted_secret(o, CONTROL_PLANE.0, SecretLayout::TLS.cert)
        .or_else(|| mounted_secret(o, CONTROL_PLANE.0, SecretLayout::OUTRIGGER.cert))
    else {
        return vec![Check::fail(
            MESH_CA,
            format!(
                "no mesh CA (a Secret with ca.pem, or cert-manager's tls.crt, the control \
                 plane mounts) in namespace {ns}"
            ),
            "install the chart with identity.ca.cert and identity.ca.key (or \
             identity.ca.existingSecret)",
        )];
    };
    let layout = SecretLayout::of(|k| data.contains_key(k));
    let (cert_key, roots_key) = (layout.cert, layout.roots);
    let text = |key: &str| {
        data.get(key)
            .map(|b| String::from_utf8_lossy(&b.0).into_owned())
            .unwrap_or_default()
    };
    let unreadable = |e| {
        vec![Check::fail(
            MESH_CA,
            format!("secret/{secret}: {e}"),
            rotate,
        )]
    };
    let chain = match inspect::certificates(&text(cert_key), cert_key) {
        Ok(c) => c,
        Err(e) => return unreadable(e),
    };
    // Without a roots key, the control plane trusts the chain's last
    // certificate alone.
    let roots = match data.contains_key(roots_key) {
        true => match inspect::certificates(&text(roots_key), roots_key) {
            Ok(r) => r,
            Err(e) => return unreadable(e),
        },
        false => chain.last().cloned().into_iter().collect(),
    };
    let mut out = Vec::new();
    let top = chain.last().expect("not empty");
    let subject = |c: &CertificateDer<'_>| inspect::names(c).map(|n| n.0).unwrap_or_default();
    // The CA is under a root when it is one, or when a root's key signed
    // its last certificate: names alone prove nothing.
    let signer = roots
        .iter()
        .find(|r| *r == top || inspect::signed_by(top, r).is_ok());
    let issuer = inspect::names(top).map(|n| n.1).unwrap_or_default();
    let namesake = roots.iter().find(|r| subject(r) == issuer);
    match (signer, namesake) {
        (Some(_), _) => out.push(Check::ok(
            MESH_CA,
            format!(
                "secret/{secret}: the CA is under the trust roots ({} root{})",
                roots.len(),
                if roots.len() == 1 { "" } else { "s" }
            ),
        )),
        (None, Some(root)) => out.push(Check::fail(
            MESH_CA,
            format!(
                "secret/{secret}: the CA ({cert_key}, {}) names the root {} ({roots_key}) as \
                 its issuer, but that root's key did not sign it: proxies would refuse the \
                 certificates it signs",
                subject(top),
                subject(root)
            ),
            format!(
                "put the root that signed the CA in the Secret's {roots_key} (identity.ca.roots), \
                 or the CA that root signed in its {cert_key} and {} (identity.ca.cert and \
                 identity.ca.key)",
                layout.key
            ),
        )),
        (None, None) => out.push(Check::fail(
            MESH_CA,
            format!(
                "secret/{secret}: the CA ({cert_key}, {}) is not under the trust roots \
                 ({roots_key}): proxies would refuse the certificates it signs",
                subject(top)
            ),
            format!(
                "put the CA's root in the Secret's {roots_key} (identity.ca.roots): the control \
                 plane re-reads it, and proxies take it with their next certificate"
            ),
        )),
    }
    // The certificate that expires first: (its file, its subject, when).
    let soonest = chain
        .iter()
        .map(|c| (cert_key, c))
        .chain(roots.iter().map(|c| (roots_key, c)))
        .filter_map(|(file, c)| Some((inspect::not_after(c).ok()?, file, subject(c))))
        .min();
    if let Some((at, file, name)) = soonest {
        let date = crate::proxy_config::rfc3339(
            at.duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64),
        );
        match at.duration_since(now) {
            Err(_) => out.push(Check::fail(
                MESH_CA,
                format!("secret/{secret}: {file} ({name}) expired at {date}"),
                format!(
                    "{rotate}: until then the proxies' certificates cannot be renewed \
                     nor trusted"
                ),
            )),
            Ok(left) if left < EXPIRY_WARNING => out.push(Check::warn(
                MESH_CA,
                format!(
                    "secret/{secret}: {file} ({name}) expires in {} days (within 30), at {date}",
                    left.as_secs() / 86_400
                ),
                rotate,
            )),
            Ok(left) => out.push(Check::ok(
                MESH_CA,
                format!(
                    "secret/{secret}: the CA valid for {} more days",
                    left.as_secs() / 86_400
                ),
            )),
        }
    }
    out
}

/// The Secret `deployment` mounts that has `key`: (name, its data).
fn mounted_secret(
    o: &Objects,
    deployment: &str,
    key: &str,
) -> Option<(String, BTreeMap<String, k8s_openapi::ByteString>)> {
    let d = o
        .deployments
        .iter()
        .find(|d| d.metadata.name.as_deref() == Some(deployment))?;
    let mounted: Vec<String> = d
        .spec
        .as_ref()?
        .template
        .spec
        .as_ref()?
        .volumes
        .iter()
        .flatten()
        .filter_map(|v| v.secret.as_ref()?.secret_name.clone())
        .collect();
    o.secrets.iter().find_map(|s| {
        let name = s.metadata.name.clone()?;
        let data = s.data.clone()?;
        (mounted.contains(&name) && data.contains_key(key)).then_some((name, data))
    })
}

/// The Secret the injector Deployment mounts that has a `tls.crt`: (name,
/// the PEM).
fn serving_secret(o: &Objects) -> Option<(String, Vec<u8>)> {
    let (name, data) = mounted_secret(o, INJECTOR.0, "tls.crt")?;
    Some((name, data.get("tls.crt")?.0.clone()))
}

/// The mesh's custom resources the control plane refused (`Accepted=False`,
/// with its reason), or has not judged yet.
pub fn resources(list: &[(String, Value)]) -> Vec<Check> {
    let mut out = Vec::new();
    let mut accepted = 0;
    for (kind, o) in list {
        let ns = o["metadata"]["namespace"].as_str().unwrap_or_default();
        let name = o["metadata"]["name"].as_str().unwrap_or_default();
        let condition = o["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == ACCEPTED);
        match condition {
            Some(c) if c["status"] == "True" => accepted += 1,
            Some(c) => out.push(Check::fail(
                RESOURCES,
                format!(
                    "{kind} {ns}/{name} refused: {}: {}",
                    c["reason"].as_str().unwrap_or("?"),
                    c["message"].as_str().unwrap_or_default()
                ),
                format!(
                    "fix it (kubectl -n {ns} edit {} {name}); outrigger analyze --cluster \
                     lists every refusal",
                    kind.to_lowercase()
                ),
            )),
            None => out.push(Check::warn(
                RESOURCES,
                format!("{kind} {ns}/{name} has no Accepted condition yet"),
                "the control plane writes it when it reads the resource: check that it runs \
                 (and its logs)",
            )),
        }
    }
    if out.is_empty() {
        out.push(Check::ok(
            RESOURCES,
            format!("every mesh resource accepted ({accepted})"),
        ));
    }
    out
}

/// Whether `n` asks for injection (`outrigger.dev/inject: enabled`), as
/// the injector reads it.
fn annotated(n: &Namespace) -> bool {
    n.metadata
        .annotations
        .as_ref()
        .is_some_and(|a| outrigger_injector::annotations::inject(a).is_ok_and(|v| v == Some(true)))
}

/// The namespaces annotated `outrigger.dev/inject: enabled`.
pub fn namespaces(list: &[Namespace]) -> Check {
    let mut names: Vec<&str> = list
        .iter()
        .filter(|n| annotated(n))
        .filter_map(|n| n.metadata.name.as_deref())
        .collect();
    names.sort();
    if names.is_empty() {
        Check::warn(
            NAMESPACES,
            format!("no namespace is annotated {INJECT}: enabled"),
            format!("kubectl annotate namespace NAME {INJECT}=enabled, then restart its pods"),
        )
    } else {
        Check::ok(
            NAMESPACES,
            format!("annotated {INJECT}: enabled: {}", names.join(", ")),
        )
    }
}

/// What `outrigger check` prints: the checks under their headings, each
/// failure's hint under it, then the verdict.
pub fn render(report: &Report, format: Format) -> Result<String, OutputError> {
    if let Some(text) = output::structured(format, report)? {
        return Ok(text);
    }
    let mut out = String::new();
    let mut group = "";
    for c in &report.checks {
        if c.group != group {
            if !group.is_empty() {
                out.push('\n');
            }
            group = c.group;
            out.push_str(&format!("{group}\n{}\n", "-".repeat(group.chars().count())));
        }
        out.push_str(&format!("{} {}\n", c.level.mark(), c.message));
        if let Some(hint) = &c.hint {
            out.push_str(&format!("    → {hint}\n"));
        }
    }
    let failed = report
        .checks
        .iter()
        .filter(|c| c.level == Level::Fail)
        .count();
    out.push('\n');
    if failed == 0 {
        out.push_str("Status check results are ✔\n");
    } else {
        out.push_str(&format!("Status check results are ×: {failed} failed\n"));
    }
    Ok(out)
}

/// The progress line `--wait` prints between tries.
pub fn progress(report: &Report, left: Duration) -> String {
    let failing: Vec<&str> = report
        .checks
        .iter()
        .filter(|c| c.level == Level::Fail)
        .map(|c| c.message.as_str())
        .collect();
    format!(
        "waiting: {} failing ({}), {}s left",
        failing.len(),
        failing.first().copied().unwrap_or_default(),
        left.as_millis().div_ceil(1000)
    )
}

#[derive(Debug, thiserror::Error)]
#[error("cannot read {what} from the cluster: {source} (check --kubeconfig and --context)")]
pub struct FetchError {
    pub what: String,
    pub source: kube::Error,
}

/// How long `--wait` waits between tries.
pub const RETRY: Duration = Duration::from_secs(2);

/// The line for a cluster that could not be read.
pub fn unreachable(e: &FetchError) -> Check {
    Check::fail(
        "kubernetes API",
        e.to_string(),
        "check that kubectl reaches this cluster with the same --kubeconfig and --context",
    )
}

/// Reads what [`post_install`] checks. A kind whose CRD the API server
/// does not serve has no resources (the CRD check says it is missing).
pub async fn fetch(
    client: kube::Client,
    mesh_namespace: &str,
    pods_in: Option<&str>,
) -> Result<Objects, FetchError> {
    async fn list<K>(api: Api<K>, what: &str) -> Result<Vec<K>, FetchError>
    where
        K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    {
        api.list(&ListParams::default())
            .await
            .map(|l| l.items)
            .map_err(|source| FetchError {
                what: what.to_string(),
                source,
            })
    }
    let ns = mesh_namespace;
    let mut objects = Objects {
        mesh_namespace: ns.to_string(),
        crds: list(Api::all(client.clone()), "the customresourcedefinitions").await?,
        deployments: list(
            Api::namespaced(client.clone(), ns),
            &format!("the deployments in namespace {ns}"),
        )
        .await?,
        webhooks: list(
            Api::all(client.clone()),
            "the mutatingwebhookconfigurations",
        )
        .await?,
        secrets: list(
            Api::namespaced(client.clone(), ns),
            &format!("the secrets in namespace {ns}"),
        )
        .await?,
        resources: Vec::new(),
        namespaces: list(Api::all(client.clone()), "the namespaces").await?,
        pods: match pods_in {
            Some(ns) => {
                list(
                    Api::namespaced(client.clone(), ns),
                    &format!("the pods in namespace {ns}"),
                )
                .await?
            }
            None => list(Api::all(client.clone()), "the pods").await?,
        },
        metrics: BTreeMap::new(),
    };
    for p in version::proxies(&objects.pods) {
        let pod = objects.pods.iter().find(|x| {
            x.metadata.name.as_deref() == Some(p.pod.as_str())
                && x.metadata.namespace.as_deref().unwrap_or_default() == p.namespace
        });
        let ready = pod.and_then(|x| x.status.as_ref()).is_some_and(|s| {
            s.init_container_statuses
                .iter()
                .flatten()
                .chain(s.container_statuses.iter().flatten())
                .any(|c| c.name == PROXY_CONTAINER && c.ready)
        });
        if !ready {
            continue;
        }
        let admin = crate::proxy_admin::Admin::Pod {
            client: client.clone(),
            namespace: p.namespace.clone(),
            name: p.pod.clone(),
        };
        let text = admin.get("/metrics").await.map_err(|e| e.to_string());
        objects
            .metrics
            .insert(format!("{}/{}", p.namespace, p.pod), text);
    }
    for crd in definitions() {
        let names = &crd.spec.names;
        let resource = ApiResource {
            group: crd.spec.group.clone(),
            version: VERSION.into(),
            api_version: format!("{}/{VERSION}", crd.spec.group),
            kind: names.kind.clone(),
            plural: names.plural.clone(),
        };
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
        match api.list(&ListParams::default()).await {
            Ok(l) => objects.resources.extend(l.items.into_iter().map(|o| {
                (
                    names.kind.clone(),
                    serde_json::to_value(o).unwrap_or_default(),
                )
            })),
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(source) => {
                return Err(FetchError {
                    what: format!("the {}", names.plural),
                    source,
                })
            }
        }
    }
    Ok(objects)
}

/// `outrigger check`'s flags.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// The checks before install instead.
    #[arg(long)]
    pub pre: bool,
    /// Retry until nothing fails or this much time has passed (e.g. 30s,
    /// 5m), printing a progress line on stderr between tries.
    #[arg(long, value_parser = crate::stat::parse_window)]
    pub wait: Option<Duration>,
    /// Where the mesh is installed (the chart's release namespace).
    #[arg(long, default_value = crate::inject::DEFAULT_MESH_NAMESPACE)]
    pub mesh_namespace: String,
    #[arg(short = 'o', long, value_enum, default_value_t)]
    pub output: Format,
}

/// Why `outrigger check` could not print a report (a cluster that cannot
/// be read is a failed check in the report, not this).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
    #[error(transparent)]
    Output(#[from] OutputError),
    #[error("cannot write the report to stdout: {0}")]
    Stdout(#[from] std::io::Error),
}

/// `outrigger check`: reads the cluster, checks, and prints the report;
/// with `--wait`, tries again (a progress line on stderr) until nothing
/// fails or the deadline passes. True when nothing failed (exit status 0).
pub async fn run(cluster: &crate::cluster::ClusterArgs, args: CheckArgs) -> Result<bool, RunError> {
    use std::io::Write as _;
    let client = cluster.client().await?;
    let deadline = args.wait.map(|w| tokio::time::Instant::now() + w);
    let report = loop {
        let report = if args.pre {
            match fetch_pre(client.clone(), &args.mesh_namespace).await {
                Ok(objects) => Report::of(pre_install(&objects)),
                Err(e) => Report::of(vec![unreachable(&e)]),
            }
        } else {
            match fetch(
                client.clone(),
                &args.mesh_namespace,
                cluster.namespace.as_deref(),
            )
            .await
            {
                Ok(objects) => Report::of(post_install(&objects, SystemTime::now())),
                Err(e) => Report::of(vec![unreachable(&e)]),
            }
        };
        let left = deadline.map(|d| d.saturating_duration_since(tokio::time::Instant::now()));
        match left {
            Some(left) if !report.ok && !left.is_zero() => {
                eprintln!("{}", progress(&report, left));
                tokio::time::sleep(RETRY.min(left)).await;
            }
            _ => break report,
        }
    };
    let mut out = std::io::stdout().lock();
    out.write_all(render(&report, args.output)?.as_bytes())?;
    out.flush()?;
    Ok(report.ok)
}

/// One kind of object the chart creates: (API group, resource, namespaced).
pub type Resource = (&'static str, &'static str, bool);

/// What `helm install` of the two charts creates (charts/outrigger-crds and
/// charts/outrigger), for the permission check.
pub const CHART_CREATES: &[Resource] = &[
    ("apiextensions.k8s.io", "customresourcedefinitions", false),
    ("rbac.authorization.k8s.io", "clusterroles", false),
    ("rbac.authorization.k8s.io", "clusterrolebindings", false),
    (
        "admissionregistration.k8s.io",
        "mutatingwebhookconfigurations",
        false,
    ),
    ("apps", "deployments", true),
    ("", "services", true),
    ("", "serviceaccounts", true),
    ("", "secrets", true),
    ("", "configmaps", true),
];

/// Meshes whose injectors are known: (a word of the webhook's or its
/// configuration's name, the mesh). Words are split at `.`, `-` and `_`.
pub const KNOWN_INJECTORS: &[(&str, &str)] = &[
    ("istio", "Istio"),
    ("linkerd", "Linkerd"),
    ("kuma", "Kuma"),
    ("consul", "Consul"),
    ("osm", "Open Service Mesh"),
    ("openservicemesh", "Open Service Mesh"),
    ("outrigger", "Outrigger (another install)"),
];

/// The annotation that asks Linkerd's injector for its proxy.
const LINKERD_INJECT: &str = "linkerd.io/inject";

/// The namespaces the chart's webhook is never sent (its namespaceSelector
/// in charts/outrigger/templates), besides the mesh's own.
pub const NEVER_INJECTED: &[&str] = &["kube-system"];

/// What the checks before install read: the API server's version (or why
/// it could not be read), whether the user may create each thing the
/// chart creates (allowed, the authorizer's reason), the mutating
/// webhook configurations already registered and the namespaces (or why
/// they could not be listed).
#[derive(Clone, Debug)]
pub struct PreObjects {
    pub mesh_namespace: String,
    pub version: Result<k8s_openapi::apimachinery::pkg::version::Info, String>,
    pub access: Vec<(Resource, bool, String)>,
    pub webhooks: Vec<MutatingWebhookConfiguration>,
    pub namespaces: Result<Vec<Namespace>, String>,
}

const API: &str = "kubernetes API";
const PERMISSIONS: &str = "permissions";
const OTHER_MESHES: &str = "other meshes";

/// The checks before install, in the order printed.
pub fn pre_install(o: &PreObjects) -> Vec<Check> {
    let mut out = Vec::new();
    match &o.version {
        Err(e) => {
            out.push(Check::fail(
                API,
                format!("cannot reach the API server: {e}"),
                "check that kubectl reaches this cluster with the same --kubeconfig and --context",
            ));
            return out;
        }
        Ok(v) => {
            out.push(Check::ok(
                API,
                format!("API server reachable ({})", v.git_version),
            ));
            let minor: Option<u64> = v.minor.trim_end_matches('+').parse().ok();
            let major: Option<u64> = v.major.parse().ok();
            let native = matches!((major, minor), (Some(1), Some(m)) if m >= 29)
                || major.is_some_and(|m| m > 1);
            if native {
                out.push(Check::ok(
                    API,
                    format!(
                        "Kubernetes {}.{} runs native sidecars (the SidecarContainers feature, \
                         on by default from 1.29)",
                        v.major, v.minor
                    ),
                ));
            } else {
                out.push(Check::fail(
                    API,
                    format!(
                        "Kubernetes {}.{} is older than 1.29: native sidecars (the proxy as an \
                         init container with restartPolicy: Always) need the SidecarContainers \
                         feature, on by default from 1.29",
                        v.major, v.minor
                    ),
                    "upgrade the cluster to 1.29 or later, or install with \
                     --set proxy.nativeSidecar=false (the proxy then runs as the pod's first \
                     container)",
                ));
            }
        }
    }
    let denied: Vec<&(Resource, bool, String)> = o.access.iter().filter(|a| !a.1).collect();
    if denied.is_empty() {
        out.push(Check::ok(
            PERMISSIONS,
            format!(
                "may create everything the chart creates ({} kinds)",
                o.access.len()
            ),
        ));
    }
    for ((group, resource, namespaced), _, reason) in denied {
        let what = if group.is_empty() {
            resource.to_string()
        } else {
            format!("{resource}.{group}")
        };
        let scope = if *namespaced {
            format!("in namespace {}", o.mesh_namespace)
        } else {
            "(cluster-wide)".to_string()
        };
        let why = if reason.is_empty() {
            String::new()
        } else {
            format!(": {reason}")
        };
        out.push(Check::fail(
            PERMISSIONS,
            format!("may not create {what} {scope}{why}"),
            "install as a cluster admin, or ask one for these permissions (kubectl auth \
             can-i create ... shows what you may do)",
        ));
    }
    out.extend(other_webhooks(o));
    out
}

/// Whether a webhook's rules send it pods being created (any API version;
/// `pods` or every resource, not only subresources).
fn mutates_pods_on_create(w: &MutatingWebhook) -> bool {
    let has = |list: &Option<Vec<String>>, any: &[&str]| {
        list.iter().flatten().any(|x| any.contains(&x.as_str()))
    };
    w.rules.iter().flatten().any(|r| {
        has(&r.operations, &["CREATE", "*"])
            && has(&r.api_groups, &["", "*"])
            && has(&r.resources, &["pods", "*", "*/*"])
            && r.scope.as_deref().is_none_or(|s| s != "Cluster")
    })
}

/// The mesh a webhook belongs to, by a word of its or its configuration's
/// name ([`KNOWN_INJECTORS`]).
fn known_mesh(config: &str, webhook: &str) -> Option<&'static str> {
    let words: Vec<&str> = config
        .split(['.', '-', '_'])
        .chain(webhook.split(['.', '-', '_']))
        .collect();
    KNOWN_INJECTORS
        .iter()
        .find(|(word, _)| words.contains(word))
        .map(|(_, mesh)| *mesh)
}

/// A namespace's labels as a selector sees them: with
/// `kubernetes.io/metadata.name`, which the API server always sets.
fn namespace_labels(n: &Namespace) -> BTreeMap<String, String> {
    let mut labels = n.metadata.labels.clone().unwrap_or_default();
    labels
        .entry("kubernetes.io/metadata.name".into())
        .or_insert_with(|| n.metadata.name.clone().unwrap_or_default());
    labels
}

/// Every other mutating webhook that would change the pods Outrigger
/// injects: its rules send it pods on CREATE, its namespaceSelector
/// matches a namespace annotated `outrigger.dev/inject: enabled` (or, none
/// being annotated yet, any namespace the chart's webhook is sent), and
/// its objectSelector matches a pod with no labels of its own. A known
/// mesh's injector ([`KNOWN_INJECTORS`]) fails; any other warns, as it may
/// reorder or remove the proxy. The chart's own webhook in the mesh
/// namespace is not another.
pub fn other_webhooks(o: &PreObjects) -> Vec<Check> {
    let namespaces = match &o.namespaces {
        Ok(n) => n,
        Err(e) => {
            return vec![Check::warn(
                OTHER_MESHES,
                format!("cannot list the namespaces ({e}): other webhooks not compared with them"),
                "run the check as a user who may list namespaces (kubectl auth can-i list \
                 namespaces)",
            )]
        }
    };
    let annotated: Vec<&Namespace> = namespaces.iter().filter(|n| annotated(n)).collect();
    let targets: Vec<&Namespace> = if annotated.is_empty() {
        namespaces
            .iter()
            .filter(|n| {
                let name = n.metadata.name.as_deref().unwrap_or_default();
                name != o.mesh_namespace && !NEVER_INJECTED.contains(&name)
            })
            .collect()
    } else {
        annotated.clone()
    };
    let which = if annotated.is_empty() {
        format!("(no namespace is annotated {INJECT}: enabled yet, so every one it could be)")
    } else {
        format!("(annotated {INJECT}: enabled)")
    };
    let mut out = Vec::new();
    for config in &o.webhooks {
        let config_name = config.metadata.name.as_deref().unwrap_or_default();
        for w in config.webhooks.iter().flatten() {
            let ours = w.name == WEBHOOK
                && w.client_config
                    .service
                    .as_ref()
                    .is_some_and(|s| s.namespace == o.mesh_namespace);
            if ours || !mutates_pods_on_create(w) {
                continue;
            }
            let what = format!(
                "mutatingwebhookconfiguration {config_name}, webhook {}",
                w.name
            );
            let pod = match crate::selector::matches(w.object_selector.as_ref(), &BTreeMap::new()) {
                Ok(m) => m,
                Err(e) => {
                    out.push(Check::warn(
                        OTHER_MESHES,
                        format!("{what}: objectSelector {e}"),
                        "fix that webhook's objectSelector: the API server would refuse it",
                    ));
                    continue;
                }
            };
            let mut overlap = Vec::new();
            for n in &targets {
                match crate::selector::matches(w.namespace_selector.as_ref(), &namespace_labels(n))
                {
                    Ok(true) if pod => overlap.push(n.metadata.name.as_deref().unwrap_or_default()),
                    Ok(_) => {}
                    Err(e) => {
                        out.push(Check::warn(
                            OTHER_MESHES,
                            format!("{what}: namespaceSelector {e}"),
                            "fix that webhook's namespaceSelector: the API server would refuse it",
                        ));
                        overlap.clear();
                        break;
                    }
                }
            }
            let mesh = known_mesh(config_name, &w.name);
            if mesh == Some("Linkerd") {
                // Linkerd's webhook is sent every namespace but injects
                // only where `linkerd.io/inject: enabled` is annotated.
                overlap.retain(|name| {
                    targets.iter().any(|n| {
                        n.metadata.name.as_deref() == Some(*name)
                            && n.metadata
                                .annotations
                                .as_ref()
                                .and_then(|a| a.get(LINKERD_INJECT))
                                .is_some_and(|v| v == "enabled")
                    })
                });
            }
            if overlap.is_empty() {
                continue;
            }
            overlap.sort();
            let namespaces = format!("{} {which}", overlap.join(", "));
            out.push(match mesh {
                Some(mesh) => Check::fail(
                    OTHER_MESHES,
                    format!(
                        "{what} ({mesh}'s injector) would also inject the pods of {namespaces}"
                    ),
                    format!(
                        "uninstall {mesh}, or turn its injection off in these namespaces (its own \
                         label or annotation) before annotating them {INJECT}: enabled"
                    ),
                ),
                None => Check::warn(
                    OTHER_MESHES,
                    format!("{what} also changes the pods created in {namespaces}"),
                    format!(
                        "check that it keeps the {PROXY_CONTAINER} init container first and \
                         unchanged, or narrow its namespaceSelector or objectSelector"
                    ),
                ),
            });
        }
    }
    if out.is_empty() {
        out.push(Check::ok(
            OTHER_MESHES,
            format!(
                "no other webhook changes the pods of {} namespace{} {which}",
                targets.len(),
                if targets.len() == 1 { "" } else { "s" }
            ),
        ));
    }
    out
}

/// Reads what [`pre_install`] checks; an unreachable API server is a
/// check that failed, not an error.
pub async fn fetch_pre(
    client: kube::Client,
    mesh_namespace: &str,
) -> Result<PreObjects, FetchError> {
    use k8s_openapi::api::authorization::v1::{
        ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
    };
    let mut o = PreObjects {
        mesh_namespace: mesh_namespace.to_string(),
        version: client.apiserver_version().await.map_err(|e| e.to_string()),
        access: Vec::new(),
        webhooks: Vec::new(),
        namespaces: Ok(Vec::new()),
    };
    if o.version.is_err() {
        return Ok(o);
    }
    let reviews: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    for r @ (group, resource, namespaced) in CHART_CREATES {
        let review = SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    group: Some(group.to_string()),
                    resource: Some(resource.to_string()),
                    verb: Some("create".into()),
                    namespace: namespaced.then(|| mesh_namespace.to_string()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let answer = reviews
            .create(&Default::default(), &review)
            .await
            .map_err(|source| FetchError {
                what: format!("whether you may create {resource} (a SelfSubjectAccessReview)"),
                source,
            })?;
        let status = answer.status.unwrap_or_default();
        o.access
            .push((*r, status.allowed, status.reason.unwrap_or_default()));
    }
    o.webhooks = Api::<MutatingWebhookConfiguration>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .map_err(|source| FetchError {
            what: "the mutatingwebhookconfigurations".into(),
            source,
        })?;
    o.namespaces = Api::<Namespace>::all(client)
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .map_err(|e| e.to_string());
    Ok(o)
}

#[cfg(test)]
mod tests {
    fn info(major: &str, minor: &str) -> k8s_openapi::apimachinery::pkg::version::Info {
        serde_json::from_value(json!({"major": major, "minor": minor,
            "gitVersion": format!("v{major}.{minor}.0"), "gitCommit": "", "gitTreeState": "",
            "buildDate": "", "goVersion": "", "compiler": "", "platform": ""}))
        .unwrap()
    }

    #[test]
    fn before_install_version_permissions_and_other_meshes() {
        let o = PreObjects {
            mesh_namespace: "outrigger-system".into(),
            version: Ok(info("1", "28+")),
            access: vec![
                (CHART_CREATES[0], true, String::new()),
                (CHART_CREATES[4], false, "no RBAC policy matched".into()),
            ],
            webhooks: vec![istio()],
            namespaces: Ok(vec![ns(
                "shop",
                json!({"istio-injection": "enabled"}),
                true,
            )]),
        };
        let got = pre_install(&o);
        let lines: Vec<(Level, &str)> = got.iter().map(|c| (c.level, c.message.as_str())).collect();
        assert_eq!(
            lines,
            [
                (Level::Ok, "API server reachable (v1.28+.0)"),
                (
                    Level::Fail,
                    "Kubernetes 1.28+ is older than 1.29: native sidecars (the proxy as an init \
                     container with restartPolicy: Always) need the SidecarContainers feature, \
                     on by default from 1.29"
                ),
                (
                    Level::Fail,
                    "may not create deployments.apps in namespace outrigger-system: no RBAC \
                     policy matched"
                ),
                (
                    Level::Fail,
                    "mutatingwebhookconfiguration istio-sidecar-injector, webhook \
                     namespace.sidecar-injector.istio.io (Istio's injector) would also inject \
                     the pods of shop (annotated outrigger.dev/inject: enabled)"
                ),
            ]
        );
        let good = PreObjects {
            version: Ok(info("1", "31")),
            access: vec![(CHART_CREATES[0], true, String::new())],
            webhooks: vec![],
            ..o
        };
        assert!(Report::of(pre_install(&good)).ok);
        let gone = PreObjects {
            version: Err("connection refused".into()),
            ..good
        };
        assert_eq!(pre_install(&gone).len(), 1);
    }

    /// A namespace with `labels`, annotated for Outrigger or not.
    fn ns(name: &str, labels: Value, annotated: bool) -> Namespace {
        let annotations = if annotated {
            json!({"outrigger.dev/inject": "enabled"})
        } else {
            json!({})
        };
        serde_json::from_value(
            json!({"metadata": {"name": name, "labels": labels, "annotations": annotations}}),
        )
        .unwrap()
    }

    /// Rules sending pods on `operations`.
    fn pod_rules(operations: &[&str]) -> Value {
        json!([{"operations": operations, "apiGroups": [""], "apiVersions": ["v1"],
            "resources": ["pods"]}])
    }

    /// Istio's injector as its chart registers it: by the revision label,
    /// by `istio-injection: enabled`, and by the pod's own label.
    fn istio() -> MutatingWebhookConfiguration {
        let not_false = json!({"matchExpressions": [
            {"key": "sidecar.istio.io/inject", "operator": "NotIn", "values": ["false"]}]});
        serde_json::from_value(json!({"metadata": {"name": "istio-sidecar-injector"},
            "webhooks": [
                {"name": "rev.namespace.sidecar-injector.istio.io", "rules": pod_rules(&["CREATE"]),
                 "namespaceSelector": {"matchExpressions": [
                    {"key": "istio.io/rev", "operator": "In", "values": ["default"]},
                    {"key": "istio-injection", "operator": "DoesNotExist"}]},
                 "objectSelector": not_false,
                 "clientConfig": {}, "sideEffects": "None", "admissionReviewVersions": ["v1"]},
                {"name": "namespace.sidecar-injector.istio.io", "rules": pod_rules(&["CREATE"]),
                 "namespaceSelector": {"matchExpressions": [
                    {"key": "istio-injection", "operator": "In", "values": ["enabled"]}]},
                 "objectSelector": not_false,
                 "clientConfig": {}, "sideEffects": "None", "admissionReviewVersions": ["v1"]},
                {"name": "object.sidecar-injector.istio.io", "rules": pod_rules(&["CREATE"]),
                 "namespaceSelector": {"matchExpressions": [
                    {"key": "istio-injection", "operator": "DoesNotExist"},
                    {"key": "istio.io/rev", "operator": "DoesNotExist"}]},
                 "objectSelector": {"matchExpressions": [
                    {"key": "sidecar.istio.io/inject", "operator": "In", "values": ["true"]}]},
                 "clientConfig": {}, "sideEffects": "None", "admissionReviewVersions": ["v1"]}]}))
        .unwrap()
    }

    /// A configuration of one webhook named `name` with `rules`, and no
    /// selectors but `namespace_selector`.
    fn one_webhook(
        config: &str,
        name: &str,
        rules: Value,
        namespace_selector: Value,
    ) -> MutatingWebhookConfiguration {
        serde_json::from_value(json!({"metadata": {"name": config},
            "webhooks": [{"name": name, "rules": rules, "namespaceSelector": namespace_selector,
                "clientConfig": {"service": {"name": "svc", "namespace": "outrigger-system"}},
                "sideEffects": "None", "admissionReviewVersions": ["v1"]}]}))
        .unwrap()
    }

    #[test]
    fn other_webhooks_are_judged_by_the_pods_they_would_change() {
        let namespaces = vec![
            ns("shop", json!({"istio-injection": "enabled"}), true),
            ns("web", json!({}), true),
            ns("legacy", json!({"istio-injection": "enabled"}), false),
            ns("kube-system", json!({}), false),
            ns("outrigger-system", json!({}), false),
        ];
        let o = PreObjects {
            mesh_namespace: "outrigger-system".into(),
            version: Ok(info("1", "31")),
            access: vec![],
            webhooks: vec![
                istio(),
                // Any name: what it does counts.
                one_webhook(
                    "vault-agent",
                    "vault.hashicorp.com",
                    pod_rules(&["*"]),
                    json!({}),
                ),
                // Only namespaces labelled team=data: none annotated is.
                one_webhook(
                    "data-defaults",
                    "defaults.data.example.com",
                    pod_rules(&["CREATE"]),
                    json!({"matchLabels": {"team": "data"}}),
                ),
                // Pods on UPDATE only, and another kind on CREATE.
                one_webhook(
                    "relabel",
                    "relabel.example.com",
                    pod_rules(&["UPDATE"]),
                    json!({}),
                ),
                one_webhook(
                    "cert-manager-webhook",
                    "webhook.cert-manager.io",
                    json!([{"operations": ["CREATE"], "apiGroups": ["cert-manager.io"],
                        "apiVersions": ["v1"], "resources": ["certificates"]}]),
                    json!({}),
                ),
                // The chart's own.
                one_webhook(
                    "outrigger-injector-outrigger-system",
                    WEBHOOK,
                    pod_rules(&["CREATE"]),
                    json!({}),
                ),
            ],
            namespaces: Ok(namespaces.clone()),
        };
        let said = |o: &PreObjects| -> Vec<(Level, String)> {
            other_webhooks(o)
                .into_iter()
                .map(|c| (c.level, c.message))
                .collect()
        };
        assert_eq!(
            said(&o),
            [
                (
                    Level::Fail,
                    "mutatingwebhookconfiguration istio-sidecar-injector, webhook \
                     namespace.sidecar-injector.istio.io (Istio's injector) would also inject \
                     the pods of shop (annotated outrigger.dev/inject: enabled)"
                        .into()
                ),
                (
                    Level::Warn,
                    "mutatingwebhookconfiguration vault-agent, webhook vault.hashicorp.com also \
                     changes the pods created in shop, web (annotated outrigger.dev/inject: \
                     enabled)"
                        .into()
                ),
            ]
        );
        let hints: Vec<String> = other_webhooks(&o)
            .into_iter()
            .filter_map(|c| c.hint)
            .collect();
        assert_eq!(
            hints,
            [
                "uninstall Istio, or turn its injection off in these namespaces (its own label \
                 or annotation) before annotating them outrigger.dev/inject: enabled",
                "check that it keeps the outrigger-proxy init container first and unchanged, or \
                 narrow its namespaceSelector or objectSelector",
            ]
        );
        // Linkerd's webhook is sent every namespace but injects only those
        // annotated linkerd.io/inject: enabled: web, not shop.
        let mut linkerd_ns = namespaces.clone();
        linkerd_ns[1]
            .metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert("linkerd.io/inject".into(), "enabled".into());
        let linkerd = PreObjects {
            webhooks: vec![one_webhook(
                "linkerd-proxy-injector-webhook-config",
                "linkerd-proxy-injector.linkerd.io",
                pod_rules(&["CREATE"]),
                json!({"matchExpressions": [{"key": "config.linkerd.io/admission-webhooks",
                    "operator": "NotIn", "values": ["disabled"]}]}),
            )],
            namespaces: Ok(linkerd_ns),
            ..o.clone()
        };
        assert_eq!(
            said(&linkerd),
            [(
                Level::Fail,
                "mutatingwebhookconfiguration linkerd-proxy-injector-webhook-config, webhook \
                 linkerd-proxy-injector.linkerd.io (Linkerd's injector) would also inject the \
                 pods of web (annotated outrigger.dev/inject: enabled)"
                    .into()
            )]
        );
        let quiet = PreObjects {
            namespaces: Ok(namespaces.clone()),
            ..linkerd.clone()
        };
        assert_eq!(
            said(&quiet),
            [(
                Level::Ok,
                "no other webhook changes the pods of 2 namespaces (annotated \
                 outrigger.dev/inject: enabled)"
                    .into()
            )]
        );
        // Before any namespace is annotated: every one the chart's webhook
        // is sent is compared; another install of Outrigger is a mesh too.
        let unannotated: Vec<Namespace> = namespaces
            .iter()
            .map(|n| {
                let mut n = n.clone();
                n.metadata.annotations = None;
                n
            })
            .collect();
        let before = PreObjects {
            webhooks: vec![
                istio(),
                one_webhook(
                    "outrigger-injector-mesh-b",
                    WEBHOOK,
                    pod_rules(&["CREATE"]),
                    json!({"matchExpressions": [{"key": "kubernetes.io/metadata.name",
                        "operator": "NotIn", "values": ["kube-system", "mesh-b"]}]}),
                ),
            ],
            namespaces: Ok(unannotated.clone()),
            ..o.clone()
        };
        let mut b = before.clone();
        b.webhooks[1].webhooks.as_mut().unwrap()[0]
            .client_config
            .service
            .as_mut()
            .unwrap()
            .namespace = "mesh-b".into();
        let every = "(no namespace is annotated outrigger.dev/inject: enabled yet, so every one \
                     it could be)";
        assert_eq!(
            said(&b),
            [
                (
                    Level::Fail,
                    format!(
                        "mutatingwebhookconfiguration istio-sidecar-injector, webhook \
                         namespace.sidecar-injector.istio.io (Istio's injector) would also \
                         inject the pods of legacy, shop {every}"
                    )
                ),
                (
                    Level::Fail,
                    format!(
                        "mutatingwebhookconfiguration outrigger-injector-mesh-b, webhook \
                         injector.outrigger.dev (Outrigger (another install)'s injector) would \
                         also inject the pods of legacy, shop, web {every}"
                    )
                ),
            ]
        );
        // Nothing else: one line saying what was compared.
        let clean = PreObjects {
            webhooks: vec![],
            ..before.clone()
        };
        assert_eq!(
            said(&clean),
            [(
                Level::Ok,
                format!("no other webhook changes the pods of 3 namespaces {every}")
            )]
        );
        // A selector the API server would refuse is named, not guessed.
        let bad = PreObjects {
            webhooks: vec![one_webhook(
                "odd",
                "odd.example.com",
                pod_rules(&["CREATE"]),
                json!({"matchExpressions": [{"key": "k", "operator": "Gt", "values": ["1"]}]}),
            )],
            ..before.clone()
        };
        assert_eq!(
            said(&bad),
            [(
                Level::Warn,
                "mutatingwebhookconfiguration odd, webhook odd.example.com: namespaceSelector \
                 matchExpressions key \"k\": unknown operator \"Gt\" (In, NotIn, Exists or \
                 DoesNotExist)"
                    .into()
            )]
        );
        let unlisted = PreObjects {
            namespaces: Err("forbidden".into()),
            ..before
        };
        assert_eq!(said(&unlisted)[0].0, Level::Warn);
    }

    use super::*;
    use serde_json::json;

    fn crd_named(name: &str) -> CustomResourceDefinition {
        definitions()
            .into_iter()
            .find(|c| c.metadata.name.as_deref() == Some(name))
            .unwrap()
    }

    #[test]
    fn crds_missing_or_of_another_schema_fail() {
        let mut other = crd_named("virtualservices.outrigger.dev");
        let v = other.spec.versions.iter_mut().next().unwrap();
        let mut schema = serde_json::to_value(&v.schema).unwrap();
        schema["openAPIV3Schema"]["properties"]["spec"]["properties"]
            .as_object_mut()
            .unwrap()
            .remove("http");
        v.schema = serde_json::from_value(schema).unwrap();
        let got = crds(&[other, crd_named("destinationrules.outrigger.dev")]);
        let lines: Vec<(Level, &str)> = got.iter().map(|c| (c.level, c.message.as_str())).collect();
        assert_eq!(
            lines,
            [
                (
                    Level::Fail,
                    "customresourcedefinition virtualservices.outrigger.dev has another schema \
                     than this CLI's (first difference at /openAPIV3Schema/properties/spec/\
                     properties/http)"
                ),
                (
                    Level::Ok,
                    "customresourcedefinition destinationrules.outrigger.dev installed, same \
                     schema as this CLI"
                ),
                (
                    Level::Fail,
                    "customresourcedefinition authorizationpolicies.outrigger.dev is missing"
                ),
                (
                    Level::Fail,
                    "customresourcedefinition peerauthentications.outrigger.dev is missing"
                ),
            ]
        );
        assert!(got[0]
            .hint
            .as_deref()
            .unwrap()
            .contains("the outrigger-crds chart"));
    }

    fn deployment(name: &str, ready: i32, available: &str) -> Deployment {
        serde_json::from_value(json!({"metadata": {"name": name},
            "spec": {"replicas": 1, "selector": {}, "template": {}},
            "status": {"readyReplicas": ready,
                "conditions": [{"type": "Available", "status": available}]}}))
        .unwrap()
    }

    #[test]
    fn deployments_must_be_available_and_ready() {
        let got = deployments(&[deployment("outrigger-control-plane", 0, "False")], "mesh");
        assert_eq!(got[0].level, Level::Fail);
        assert_eq!(
            got[0].message,
            "deployment/outrigger-control-plane not available, 0/1 ready"
        );
        assert_eq!(
            got[0].hint.as_deref(),
            Some(
                "kubectl -n mesh describe deployment/outrigger-control-plane; kubectl -n mesh \
                 logs deployment/outrigger-control-plane"
            )
        );
        assert_eq!(
            got[1].message,
            "deployment/outrigger-injector is missing in namespace mesh"
        );
        let got = deployments(&[deployment("outrigger-injector", 1, "True")], "mesh");
        assert_eq!(got[1].level, Level::Ok);
        assert_eq!(
            got[1].message,
            "deployment/outrigger-injector available, 1/1 ready"
        );
    }

    #[test]
    fn refused_resources_are_listed_with_their_reason() {
        let vs = |name: &str, status: Value| {
            (
                "VirtualService".to_string(),
                json!({"metadata": {"name": name, "namespace": "shop"}, "status": status}),
            )
        };
        let got = resources(&[
            vs(
                "reviews",
                json!({"conditions": [{"type": "Accepted", "status": "False",
                    "reason": "UnknownSubset", "message": "subset v9 is not defined"}]}),
            ),
            vs(
                "web",
                json!({"conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted"}]}),
            ),
            vs("new", json!({})),
        ]);
        let lines: Vec<(Level, &str)> = got.iter().map(|c| (c.level, c.message.as_str())).collect();
        assert_eq!(
            lines,
            [
                (
                    Level::Fail,
                    "VirtualService shop/reviews refused: UnknownSubset: subset v9 is not defined"
                ),
                (
                    Level::Warn,
                    "VirtualService shop/new has no Accepted condition yet"
                ),
            ]
        );
        assert_eq!(
            resources(&[vs(
                "web",
                json!({"conditions": [{"type": "Accepted", "status": "True"}]})
            )])[0]
                .message,
            "every mesh resource accepted (1)"
        );
    }

    #[test]
    fn proxy_versions_within_one_minor_warn_further_fail() {
        assert_eq!(skew("0.4.2", "0.4.2"), Level::Ok);
        assert_eq!(skew("0.4.1", "0.4.2"), Level::Warn);
        assert_eq!(skew("v0.3.9", "0.4.2"), Level::Warn);
        assert_eq!(skew("0.2.0", "0.4.2"), Level::Fail);
        assert_eq!(skew("1.4.2", "0.4.2"), Level::Fail);
        assert_eq!(skew("sha256:ab", "0.4.2"), Level::Warn);
    }

    #[test]
    fn each_meshed_pod_is_one_line_at_its_worst() {
        let pod = |name: &str, image: &str, ready: bool| -> Pod {
            serde_json::from_value(json!({"metadata": {"name": name, "namespace": "shop"},
                "spec": {"containers": [{"name": "app"},
                    {"name": "outrigger-proxy", "image": image}]},
                "status": {"containerStatuses": [
                    {"name": "outrigger-proxy", "ready": ready, "restartCount": 0,
                     "image": image, "imageID": ""}]}}))
            .unwrap()
        };
        let got = proxies(
            &[
                pod("a", "r/proxy:0.4.2", true),
                pod("b", "r/proxy:0.2.0", false),
                pod("c", "r/proxy:0.4.1", true),
            ],
            Some("0.4.2"),
            &BTreeMap::new(),
            SystemTime::now(),
        );
        let lines: Vec<(Level, &str)> = got.iter().map(|c| (c.level, c.message.as_str())).collect();
        assert_eq!(
            lines,
            [
                (Level::Ok, "pod shop/a: proxy ready, version 0.4.2"),
                (
                    Level::Fail,
                    "pod shop/b: proxy not ready, version 0.2.0, the control plane's is 0.4.2"
                ),
                (
                    Level::Warn,
                    "pod shop/c: proxy ready, version 0.4.1, the control plane's is 0.4.2"
                ),
            ]
        );
        let hint = got[1].hint.as_deref().unwrap();
        assert!(
            hint.starts_with(
                "kubectl -n shop describe pod b; kubectl -n shop logs b -c outrigger-proxy; "
            ),
            "{hint}"
        );
        assert_eq!(
            proxies(&[], Some("0.4.2"), &BTreeMap::new(), SystemTime::now())[0].message,
            "no meshed pods"
        );
    }

    #[test]
    fn a_proxy_certificate_near_expiry_warns_expired_or_absent_fails() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let text = |expiry: u64, connected: u8| -> Result<String, String> {
            Ok(format!(
                "# TYPE outrigger_identity_cert_expiry_timestamp_seconds gauge\n\
                 outrigger_identity_cert_expiry_timestamp_seconds {expiry}\n\
                 outrigger_control_plane_connected {connected}\n"
            ))
        };
        let said = |t: Result<String, String>| {
            let (level, words, _) = proxy_metrics(&t, "shop", "web-1", now);
            (level, words.join(", "))
        };
        assert_eq!(
            said(text(1_000_000 + 20 * 3600, 1)),
            (
                Level::Ok,
                "certificate valid for 20h, connected to the control plane".into()
            )
        );
        assert_eq!(
            said(text(1_000_000 + 1800, 1)),
            (
                Level::Warn,
                "certificate expires in 30m, connected to the control plane".into()
            )
        );
        assert_eq!(
            said(text(999_999, 1)),
            (
                Level::Fail,
                "certificate expired at 1970-01-12T13:46:39Z, connected to the control plane"
                    .into()
            )
        );
        assert_eq!(
            said(text(0, 0)),
            (
                Level::Fail,
                "no certificate yet, not connected to the control plane".into()
            )
        );
        assert_eq!(said(Err("503".into())).0, Level::Warn);
        // A proxy that says when it renews is judged by its renewal window:
        // a 24h certificate with 5h left is overdue, a 1h one with 17m
        // left (renewed at 18m) is not.
        let renewing = |expiry: u64, renew: u64| -> Result<String, String> {
            Ok(format!(
                "outrigger_identity_cert_expiry_timestamp_seconds {expiry}\n\
                 outrigger_identity_cert_renew_at_timestamp_seconds {renew}\n\
                 outrigger_control_plane_connected 1\n"
            ))
        };
        let five_h = 1_000_000 + 5 * 3600;
        assert_eq!(
            said(renewing(five_h, five_h - 25_920)),
            (
                Level::Warn,
                "certificate expires in 5h, connected to the control plane".into()
            )
        );
        let soon = 1_000_000 + 17 * 60;
        assert_eq!(said(renewing(soon, soon - 18 * 60)).0, Level::Ok);
        assert_eq!(said(renewing(soon, soon - 30 * 60)).0, Level::Warn);
    }

    #[test]
    fn the_mesh_ca_must_be_under_its_roots() {
        use outrigger_identity::Ca;
        let now = SystemTime::now();
        let pem = |ca: &Ca| ca.generated_pem().unwrap().0.to_string();
        let (ca, other) = (
            pem(&Ca::generate("cluster.local", now).unwrap()),
            pem(&Ca::generate("cluster.local", now).unwrap()),
        );
        let objects = |roots: &str| mesh_ca_objects(&ca, roots);
        let said = |o: &Objects| -> Vec<(Level, String)> {
            mesh_ca(o, now)
                .into_iter()
                .map(|c| (c.level, c.message))
                .collect()
        };
        assert_eq!(
            said(&objects(&ca)),
            [
                (
                    Level::Ok,
                    "secret/outrigger-ca: the CA is under the trust roots (1 root)".into()
                ),
                (
                    Level::Ok,
                    "secret/outrigger-ca: the CA valid for 3649 more days".into()
                ),
            ]
        );
        assert_eq!(said(&objects(&other))[0].0, Level::Fail);
        assert_eq!(
            said(&objects(&format!("{other}{ca}")))[0].1,
            "secret/outrigger-ca: the CA is under the trust roots (2 roots)"
        );
        assert_eq!(
            said(&Objects::default())[0].1,
            "no mesh CA (a Secret with ca.pem, or cert-manager's tls.crt, the control plane \
             mounts) in namespace "
        );
    }

    /// The mesh CA's Secret holding `ca` and `roots`, mounted by the
    /// control plane.
    fn mesh_ca_objects(ca: &str, roots: &str) -> Objects {
        mesh_ca_secret(SecretLayout::OUTRIGGER, ca, Some(roots))
    }

    /// The mesh CA's Secret in `layout` (with a key that is not part of the
    /// CA, as cert-manager's Secrets carry), mounted by the control plane.
    fn mesh_ca_secret(layout: SecretLayout, ca: &str, roots: Option<&str>) -> Objects {
        let b64 = |t: &str| k8s_openapi::ByteString(t.as_bytes().to_vec());
        let mut secret = Secret::default();
        secret.metadata.name = Some("outrigger-ca".into());
        let mut data = BTreeMap::from([
            (layout.cert.to_string(), b64(ca)),
            (layout.key.to_string(), b64("not read")),
        ]);
        data.extend(roots.map(|r| (layout.roots.to_string(), b64(r))));
        secret.data = Some(data);
        Objects {
            mesh_namespace: "mesh".into(),
            deployments: vec![serde_json::from_value(json!({
                "metadata": {"name": "outrigger-control-plane"},
                "spec": {"selector": {}, "template": {"spec": {"containers": [],
                    "volumes": [{"name": "ca", "secret": {"secretName": "outrigger-ca"}}]}}}
            }))
            .unwrap()],
            secrets: vec![secret],
            ..Default::default()
        }
    }

    #[test]
    fn the_mesh_ca_is_read_in_cert_managers_layout_too() {
        use outrigger_identity::Ca;
        let now = SystemTime::now();
        let pem = |ca: &Ca| ca.generated_pem().unwrap().0.to_string();
        let (ca, other) = (
            pem(&Ca::generate("cluster.local", now).unwrap()),
            pem(&Ca::generate("cluster.local", now).unwrap()),
        );
        let said = |o: &Objects| -> Vec<(Level, String)> {
            mesh_ca(o, now)
                .into_iter()
                .map(|c| (c.level, c.message))
                .collect()
        };
        let tls = SecretLayout::TLS;
        assert_eq!(
            said(&mesh_ca_secret(tls, &ca, Some(&format!("{other}{ca}"))))[0],
            (
                Level::Ok,
                "secret/outrigger-ca: the CA is under the trust roots (2 roots)".into()
            )
        );
        // Two generated CAs share their name: the other is a namesake,
        // named with the Secret's own keys.
        let name = "O=Outrigger, CN=Outrigger mesh CA for cluster.local";
        assert_eq!(
            said(&mesh_ca_secret(tls, &ca, Some(&other)))[0],
            (
                Level::Fail,
                format!(
                    "secret/outrigger-ca: the CA (tls.crt, {name}) names the root {name} \
                     (ca.crt) as its issuer, but that root's key did not sign it: proxies \
                     would refuse the certificates it signs"
                )
            )
        );
        // Without ca.crt (nor roots.pem), the control plane trusts the
        // chain's last certificate: a self-signed CA is its own root.
        for layout in [tls, SecretLayout::OUTRIGGER] {
            assert_eq!(
                said(&mesh_ca_secret(layout, &ca, None))[0],
                (
                    Level::Ok,
                    "secret/outrigger-ca: the CA is under the trust roots (1 root)".into()
                ),
                "{layout:?}"
            );
        }
        assert_eq!(
            said(&mesh_ca_secret(tls, "not a certificate", Some(&ca)))[0].0,
            Level::Fail
        );
    }

    #[test]
    fn an_intermediate_is_under_the_root_that_signed_it_not_a_namesake() {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        const DAY: Duration = Duration::from_secs(86_400);
        let now = UNIX_EPOCH + 20_000 * DAY;
        let params = |name: &str| {
            let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p.distinguished_name.push(DnType::CommonName, name);
            p.not_before = (now - DAY).into();
            p.not_after = (now + 400 * DAY).into();
            p
        };
        let root = |name: &str| {
            let key = KeyPair::generate().unwrap();
            let cert = params(name).self_signed(&key).unwrap();
            (cert.pem(), Issuer::new(params(name), key))
        };
        let (root_pem, issuer) = root("outrigger root");
        // The same name, another key.
        let (namesake_pem, _) = root("outrigger root");
        let mut intermediate = params("outrigger intermediate");
        intermediate.not_after = (now + 100 * DAY).into();
        let intermediate = intermediate
            .signed_by(&KeyPair::generate().unwrap(), &issuer)
            .unwrap()
            .pem();
        let said = |o: &Objects, at: SystemTime| -> Vec<(Level, String, Option<String>)> {
            mesh_ca(o, at)
                .into_iter()
                .map(|c| (c.level, c.message, c.hint))
                .collect()
        };
        assert_eq!(
            said(&mesh_ca_objects(&intermediate, &root_pem), now),
            [
                (
                    Level::Ok,
                    "secret/outrigger-ca: the CA is under the trust roots (1 root)".into(),
                    None
                ),
                (
                    Level::Ok,
                    "secret/outrigger-ca: the CA valid for 100 more days".into(),
                    None
                ),
            ]
        );
        let got = said(&mesh_ca_objects(&intermediate, &namesake_pem), now);
        assert_eq!(
            got[0],
            (
                Level::Fail,
                "secret/outrigger-ca: the CA (ca.pem, CN=outrigger intermediate) names the root \
                 CN=outrigger root (roots.pem) as its issuer, but that root's key did not sign \
                 it: proxies would refuse the certificates it signs"
                    .into(),
                Some(
                    "put the root that signed the CA in the Secret's roots.pem \
                     (identity.ca.roots), or the CA that root signed in its ca.pem and ca.key \
                     (identity.ca.cert and identity.ca.key)"
                        .into()
                )
            )
        );
        // Both roots: the one that signed it is among them.
        assert_eq!(
            said(
                &mesh_ca_objects(&intermediate, &format!("{namesake_pem}{root_pem}")),
                now
            )[0]
            .0,
            Level::Ok
        );
        // The intermediate expires first: named, with its date.
        let later = now + 101 * DAY;
        let got = said(&mesh_ca_objects(&intermediate, &root_pem), later);
        assert_eq!(
            got[1].1,
            format!(
                "secret/outrigger-ca: ca.pem (CN=outrigger intermediate) expired at {}",
                crate::proxy_config::rfc3339(
                    ((now + 100 * DAY).duration_since(UNIX_EPOCH))
                        .unwrap()
                        .as_secs() as i64
                )
            )
        );
        assert_eq!(got[1].0, Level::Fail);
        assert!(
            got[1]
                .2
                .as_deref()
                .unwrap()
                .starts_with("rotate the mesh CA"),
            "{got:?}"
        );
        let soon = now + 90 * DAY;
        assert_eq!(
            said(&mesh_ca_objects(&intermediate, &root_pem), soon)[1],
            (
                Level::Warn,
                format!(
                    "secret/outrigger-ca: ca.pem (CN=outrigger intermediate) expires in 10 days \
                     (within 30), at {}",
                    crate::proxy_config::rfc3339(
                        (now + 100 * DAY)
                            .duration_since(UNIX_EPOCH)
                            .unwrap()
                            .as_secs() as i64
                    )
                ),
                Some(
                    "rotate the mesh CA as docs/security.md says (new root trusted, new root \
                     signing, old root dropped)"
                        .into()
                )
            )
        );
    }

    #[test]
    fn annotated_namespaces_are_listed() {
        let ns = |name: &str, a: Value| -> Namespace {
            serde_json::from_value(json!({"metadata": {"name": name, "annotations": a}})).unwrap()
        };
        let got = namespaces(&[
            ns("shop", json!({"outrigger.dev/inject": "enabled"})),
            ns("bank", json!({"outrigger.dev/inject": "enabled"})),
            ns("kube-system", json!({})),
            ns("off", json!({"outrigger.dev/inject": "disabled"})),
        ]);
        assert_eq!(
            got.message,
            "annotated outrigger.dev/inject: enabled: bank, shop"
        );
        assert_eq!(namespaces(&[]).level, Level::Warn);
    }

    #[test]
    fn the_report_prints_marks_hints_and_the_verdict() {
        let report = Report::of(vec![
            Check::ok(CRDS, "a"),
            Check::fail(CRDS, "b", "do c"),
            Check::warn(NAMESPACES, "d", "do e"),
        ]);
        assert!(!report.ok);
        assert_eq!(
            render(&report, Format::Table).unwrap(),
            "outrigger CRDs\n--------------\n✔ a\n× b\n    → do c\n\n\
             meshed namespaces\n-----------------\n⚠ d\n    → do e\n\n\
             Status check results are ×: 1 failed\n"
        );
        let j: Value = serde_json::from_str(&render(&report, Format::Json).unwrap()).unwrap();
        assert_eq!(j["ok"], false);
        assert_eq!(j["checks"][1]["level"], "fail");
        assert_eq!(j["checks"][0].get("hint"), None);
        assert_eq!(
            progress(&report, Duration::from_secs(9)),
            "waiting: 1 failing (b), 9s left"
        );
    }
}
