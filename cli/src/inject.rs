//! `outrigger inject`: offline injection of manifests. Each pod template
//! (a Pod, or the template of a Deployment, StatefulSet, DaemonSet,
//! ReplicaSet, ReplicationController, Job or CronJob, also inside a List)
//! gets exactly what the webhook would give a pod created from it: the
//! injector's own [`inject`](outrigger_injector::inject::inject) makes the
//! patch, which is applied here instead of by the API server.
//!
//! Offline there is no namespace to read, so every workload is treated as
//! if its namespace said `outrigger.dev/inject: enabled` (what
//! `istioctl kube-inject` does): a workload is injected unless its pod
//! template says `outrigger.dev/inject: disabled`, or it is in the control
//! plane's namespace, or it uses the host network, or it is injected
//! already (which makes a second run change nothing).
//!
//! The input is a stream of YAML documents or of JSON objects. A document
//! that is not changed is written back byte for byte, comments included; a
//! changed one is written again from its data (its comments are lost, its
//! keys come out sorted).
//!
//! [`inject_manifests`] is the pure part; [`mesh_config_from_cluster`] is
//! the edge that reads the mesh config the chart installed.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::ListParams;
use kube::Api;
use outrigger_injector::annotations;
use outrigger_injector::config::MeshConfig;
use outrigger_injector::inject::{inject, Namespace, Outcome, SkipReason};
use serde_json::{json, Value};

use crate::cluster::ClusterArgs;

/// The ConfigMap the chart renders the mesh config into (in the release
/// namespace), and its key.
pub const MESH_CONFIG_MAP: &str = "outrigger-mesh-config";
pub const MESH_CONFIG_KEY: &str = "mesh.yaml";
/// The injector's Deployment, whose `roots` volume names the Secret that
/// holds the trust roots (key `roots.pem`).
pub const INJECTOR_DEPLOYMENT: &str = "outrigger-injector";
pub const ROOTS_VOLUME: &str = "roots";
pub const ROOTS_KEY: &str = "roots.pem";
/// The namespace `helm install` puts the mesh in, in the docs.
pub const DEFAULT_MESH_NAMESPACE: &str = "outrigger-system";

/// `outrigger inject`'s arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The manifests (YAML documents or JSON objects); `-` reads stdin.
    #[arg(short = 'f', long = "filename", default_value = "-")]
    pub file: std::path::PathBuf,
    /// The mesh config (the injector's YAML, as in the chart's
    /// outrigger-mesh-config ConfigMap, key mesh.yaml); no cluster is read.
    #[arg(long)]
    pub mesh_config: Option<std::path::PathBuf>,
    /// The mesh's trust roots (PEM). Default: the mesh config's trustRoots,
    /// else (without --mesh-config) the Secret the injector mounts.
    #[arg(long)]
    pub trust_roots: Option<std::path::PathBuf>,
    /// Where the mesh is installed (the chart's release namespace).
    #[arg(long, default_value = DEFAULT_MESH_NAMESPACE)]
    pub mesh_namespace: String,
}

/// Runs `outrigger inject`: the injected manifests on stdout, the notes on
/// stderr.
pub async fn run(cluster: &ClusterArgs, args: Args) -> anyhow::Result<()> {
    use anyhow::{bail, Context as _};
    let read = |path: &std::path::Path| -> anyhow::Result<String> {
        if path.as_os_str() == "-" {
            std::io::read_to_string(std::io::stdin()).context("reading the manifests from stdin")
        } else {
            std::fs::read_to_string(path).with_context(|| format!("-f {}", path.display()))
        }
    };
    let input = read(&args.file)?;
    let roots = match &args.trust_roots {
        Some(path) => {
            let pem = std::fs::read_to_string(path)
                .with_context(|| format!("--trust-roots {}", path.display()))?;
            if !pem.contains("-----BEGIN CERTIFICATE-----") {
                bail!("--trust-roots {}: no PEM certificate", path.display());
            }
            Some(pem)
        }
        None => None,
    };
    let (cfg, namespace) = match &args.mesh_config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("--mesh-config {}", path.display()))?;
            let mut cfg = MeshConfig::from_yaml(&text)
                .with_context(|| format!("--mesh-config {}", path.display()))?;
            if let Some(roots) = roots {
                cfg.trust_roots = roots;
            }
            if cfg.trust_roots.trim().is_empty() {
                bail!(
                    "--mesh-config {} has no trustRoots: pass --trust-roots FILE (the mesh CA's \
                     roots.pem), or the injected proxies could not trust the control plane",
                    path.display()
                );
            }
            let ns = cluster
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into());
            (cfg, ns)
        }
        None => {
            let (client, ns) = cluster
                .client_in()
                .await
                .context("building the Kubernetes client (or pass --mesh-config FILE)")?;
            let cfg = mesh_config_from_cluster(client, &args.mesh_namespace, roots).await?;
            (cfg, ns)
        }
    };
    let injected = inject_manifests(&input, &cfg, &namespace)?;
    eprint!("{}", note_lines(&injected.notes));
    crate::output::print(&injected.text)?;
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    #[error("document {doc}: not YAML or JSON: {message}")]
    Parse { doc: usize, message: String },
    #[error("{object}: refused, as the webhook would refuse its pods: {message}")]
    Refused { object: String, message: String },
    #[error("{object}: cannot write the injected document: {message}")]
    Write { object: String, message: String },
}

/// What happened to one workload, for the operator (stderr).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    /// `deployment/web -n shop`.
    pub object: String,
    pub message: String,
}

/// The manifests with every pod template injected, and the notes.
#[derive(Debug)]
pub struct Injected {
    pub text: String,
    pub notes: Vec<Note>,
}

/// Injects every pod template in `input` (YAML documents, or JSON objects
/// when the input starts with `{`). `default_namespace` stands for the
/// namespace of objects that name none (the one they will be applied to).
pub fn inject_manifests(
    input: &str,
    cfg: &MeshConfig,
    default_namespace: &str,
) -> Result<Injected, InjectError> {
    let mut notes = Vec::new();
    // JSON when it reads as JSON; a YAML flow mapping (`{kind: Pod, ...}`)
    // starts with `{` too.
    let json = if input.trim_start().starts_with('{') {
        match inject_json(input, cfg, default_namespace, &mut notes) {
            Ok(text) => Some(text),
            Err(InjectError::Parse { .. }) => None,
            Err(e) => return Err(e),
        }
    } else {
        None
    };
    let text = match json {
        Some(text) => text,
        None => {
            notes.clear();
            inject_yaml(input, cfg, default_namespace, &mut notes)?
        }
    };
    Ok(Injected { text, notes })
}

fn inject_json(
    input: &str,
    cfg: &MeshConfig,
    default_ns: &str,
    notes: &mut Vec<Note>,
) -> Result<String, InjectError> {
    let mut out = String::new();
    let mut stream = serde_json::Deserializer::from_str(input).into_iter::<Value>();
    let mut start = 0;
    let mut doc = 0;
    while let Some(next) = stream.next() {
        doc += 1;
        let mut value = next.map_err(|e| InjectError::Parse {
            doc,
            message: e.to_string(),
        })?;
        notes.extend(not_an_object(&value, doc));
        let end = stream.byte_offset();
        let original = &input[start..end];
        if inject_object(&mut value, cfg, default_ns, notes)? {
            // Keep the whitespace before the object, write it anew.
            let lead = original.len() - original.trim_start().len();
            out.push_str(&original[..lead]);
            out.push_str(&serde_json::to_string_pretty(&value).expect("JSON serializes"));
        } else {
            out.push_str(original);
        }
        start = end;
    }
    out.push_str(&input[start..]);
    Ok(out)
}

/// Splits on document separators (`---` at the start of a line), keeps
/// each separator line as it is.
fn inject_yaml(
    input: &str,
    cfg: &MeshConfig,
    default_ns: &str,
    notes: &mut Vec<Note>,
) -> Result<String, InjectError> {
    let mut out = String::new();
    let mut doc = String::new();
    let mut index = 0;
    let mut flush = |doc: &mut String, out: &mut String, index: &mut usize| {
        *index += 1;
        let text = std::mem::take(doc);
        out.push_str(&inject_yaml_doc(&text, *index, cfg, default_ns, notes)?);
        Ok::<_, InjectError>(())
    };
    for line in input.split_inclusive('\n') {
        if is_separator(line) {
            flush(&mut doc, &mut out, &mut index)?;
            if separator_content(line) {
                // `--- {kind: Pod, ...}`: the document starts on this line.
                doc.push_str(line);
            } else {
                out.push_str(line);
            }
        } else {
            doc.push_str(line);
        }
    }
    flush(&mut doc, &mut out, &mut index)?;
    Ok(out)
}

fn is_separator(line: &str) -> bool {
    let line = line.trim_end_matches(['\n', '\r']);
    line == "---" || line.starts_with("--- ") || line.starts_with("---\t")
}

/// Whether a separator line carries the start of its document
/// (`--- {kind: Pod}`, `--- !!map`) rather than nothing or a comment.
fn separator_content(line: &str) -> bool {
    let rest = line.trim_end_matches(['\n', '\r'])[3..].trim();
    !rest.is_empty() && !rest.starts_with('#')
}

fn inject_yaml_doc(
    text: &str,
    index: usize,
    cfg: &MeshConfig,
    default_ns: &str,
    notes: &mut Vec<Note>,
) -> Result<String, InjectError> {
    let blank = text.lines().all(|l| {
        let l = l.trim();
        l.is_empty() || l.starts_with('#') || l == "..."
    });
    if blank {
        return Ok(text.to_string());
    }
    let mut value: Value = serde_saphyr::from_str(text).map_err(|e| InjectError::Parse {
        doc: index,
        message: e.to_string(),
    })?;
    notes.extend(not_an_object(&value, index));
    if !inject_object(&mut value, cfg, default_ns, notes)? {
        return Ok(text.to_string());
    }
    let written = serde_saphyr::to_string(&value).map_err(|e| InjectError::Write {
        object: describe(&value, default_ns),
        message: e.to_string(),
    })?;
    // A document that started on its separator line keeps a separator.
    Ok(if is_separator(text.lines().next().unwrap_or("")) {
        format!("---\n{written}")
    } else {
        written
    })
}

/// A note for document `doc` when it is not a Kubernetes object (a
/// sequence, a scalar, a mapping without `kind`): it passes through as it
/// is, which would otherwise go unsaid.
fn not_an_object(value: &Value, doc: usize) -> Option<Note> {
    let what = match value {
        Value::Null => return None,
        Value::Object(o) if o.get("kind").is_some_and(Value::is_string) => return None,
        Value::Object(_) => "a mapping without kind",
        Value::Array(_) => "a sequence",
        _ => "a scalar",
    };
    Some(Note {
        object: format!("document {doc}"),
        message: format!(
            "left as is: {what}, not a Kubernetes object (to inject several objects \
             in one document, put them in the items of a kind: List)"
        ),
    })
}

/// Where a kind keeps its pod template (`""`: the object is the pod), for
/// the apiVersion group it must have.
fn template_of(api_version: &str, kind: &str) -> Option<&'static str> {
    let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
    match (group, kind) {
        ("", "Pod") => Some(""),
        ("", "ReplicationController") => Some("/spec/template"),
        ("apps", "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet") => {
            Some("/spec/template")
        }
        ("batch", "Job") => Some("/spec/template"),
        ("batch", "CronJob") => Some("/spec/jobTemplate/spec/template"),
        _ => None,
    }
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

/// `deployment/web -n shop`, as kubectl names objects.
fn describe(v: &Value, default_ns: &str) -> String {
    let ns = match str_at(v, "/metadata/namespace") {
        "" => default_ns,
        ns => ns,
    };
    let name = match str_at(v, "/metadata/name") {
        "" => "(no name)",
        n => n,
    };
    format!("{}/{name} -n {ns}", str_at(v, "/kind").to_ascii_lowercase())
}

/// Injects `object` in place (each item of a List); whether it changed.
pub fn inject_object(
    object: &mut Value,
    cfg: &MeshConfig,
    default_ns: &str,
    notes: &mut Vec<Note>,
) -> Result<bool, InjectError> {
    let kind = str_at(object, "/kind").to_string();
    if kind == "List" || kind.ends_with("List") && object.get("items").is_some() {
        let mut changed = false;
        if let Some(items) = object.get_mut("items").and_then(Value::as_array_mut) {
            for item in items {
                changed |= inject_object(item, cfg, default_ns, notes)?;
            }
        }
        return Ok(changed);
    }
    let Some(pointer) = template_of(str_at(object, "/apiVersion"), &kind) else {
        return Ok(false);
    };
    let name = describe(object, default_ns);
    let ns = match str_at(object, "/metadata/namespace") {
        "" => default_ns.to_string(),
        ns => ns.to_string(),
    };
    // The pod the workload's controller would create from its template.
    let pod = if pointer.is_empty() {
        object.clone()
    } else {
        let Some(template) = object.pointer(pointer).filter(|t| t.is_object()) else {
            notes.push(Note {
                object: name,
                message: format!("left as is: no pod template at {pointer}"),
            });
            return Ok(false);
        };
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": template.get("metadata").cloned().unwrap_or_else(|| json!({})),
            "spec": template.get("spec").cloned().unwrap_or(Value::Null),
        })
    };
    match pod_injected(pod, &ns, cfg) {
        Ok(Injection::Injected { pod, warnings }) => {
            for w in warnings {
                notes.push(Note {
                    object: name.clone(),
                    message: format!("warning: {w}"),
                });
            }
            if pointer.is_empty() {
                *object = pod;
            } else {
                let template = object.pointer_mut(pointer).expect("checked above");
                template["metadata"] = pod["metadata"].clone();
                template["spec"] = pod["spec"].clone();
            }
            Ok(true)
        }
        Ok(Injection::Unchanged(message)) => {
            notes.push(Note {
                object: name,
                message,
            });
            Ok(false)
        }
        Err(message) => Err(InjectError::Refused {
            object: name,
            message,
        }),
    }
}

enum Injection {
    Injected {
        pod: Value,
        warnings: Vec<String>,
    },
    /// Why not (a note for the operator).
    Unchanged(String),
}

/// One pod through the injector's function, in a namespace that asks for
/// injection; `Err`: the webhook would refuse it, with this message.
fn pod_injected(mut pod: Value, ns: &str, cfg: &MeshConfig) -> Result<Injection, String> {
    let namespace = Namespace {
        name: ns.to_string(),
        annotations: BTreeMap::from([(annotations::INJECT.to_string(), "enabled".to_string())]),
    };
    match inject(&pod, &namespace, cfg) {
        Outcome::Inject { patch, warnings } => {
            json_patch::patch(&mut pod, &patch)
                .map_err(|e| format!("the injector's patch does not apply: {e}"))?;
            Ok(Injection::Injected { pod, warnings })
        }
        Outcome::Skip(reason) => Ok(Injection::Unchanged(match reason {
            SkipReason::AlreadyInjected => return Ok(Injection::Unchanged(String::new())),
            SkipReason::Disabled => format!("left as is: {}: disabled", annotations::INJECT),
            SkipReason::HostNetwork => "left as is: it uses the host network".into(),
            SkipReason::ControlPlaneNamespace => {
                format!("left as is: {ns} is the control plane's namespace")
            }
            SkipReason::NotEnabled => "left as is: injection not enabled".into(),
        })),
        Outcome::Refuse(message) => Err(message),
        Outcome::CannotHandle(why) => Ok(Injection::Unchanged(format!("left as is: {why}"))),
    }
}

/// The notes worth printing (an already injected workload says nothing).
pub fn note_lines(notes: &[Note]) -> String {
    notes
        .iter()
        .filter(|n| !n.message.is_empty())
        .map(|n| format!("{}: {}\n", n.object, n.message))
        .collect()
}

#[derive(Debug, thiserror::Error)]
pub enum MeshConfigError {
    #[error("cannot read {what} in namespace {namespace}: {source} (is the mesh installed there? pass --mesh-namespace, or --mesh-config FILE to work offline)")]
    Api {
        what: String,
        namespace: String,
        source: kube::Error,
    },
    #[error("{what} not found in namespace {namespace} (is the mesh installed there? pass --mesh-namespace, or --mesh-config FILE to work offline)")]
    Missing { what: String, namespace: String },
    #[error("configmap/{MESH_CONFIG_MAP} -n {namespace}, key {MESH_CONFIG_KEY}: {source}")]
    Invalid {
        namespace: String,
        source: outrigger_injector::config::ConfigError,
    },
}

/// One object by name, through a list with a field selector (what the
/// caller's RBAC for `list` allows, and what the stand-in API server answers).
async fn get_one<K>(api: Api<K>, name: &str, what: String, ns: &str) -> Result<K, MeshConfigError>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let list = api
        .list(&ListParams::default().fields(&format!("metadata.name={name}")))
        .await
        .map_err(|source| MeshConfigError::Api {
            what: what.clone(),
            namespace: ns.into(),
            source,
        })?;
    list.items
        .into_iter()
        .find(|o| o.meta().name.as_deref() == Some(name))
        .ok_or(MeshConfigError::Missing {
            what,
            namespace: ns.into(),
        })
}

/// The mesh config the chart installed in `namespace`: its ConfigMap, and
/// the trust roots from the Secret the injector mounts (unless `roots` are
/// given).
pub async fn mesh_config_from_cluster(
    client: kube::Client,
    namespace: &str,
    roots: Option<String>,
) -> Result<MeshConfig, MeshConfigError> {
    let cm: ConfigMap = get_one(
        Api::namespaced(client.clone(), namespace),
        MESH_CONFIG_MAP,
        format!("configmap/{MESH_CONFIG_MAP}"),
        namespace,
    )
    .await?;
    let text = cm
        .data
        .unwrap_or_default()
        .remove(MESH_CONFIG_KEY)
        .ok_or_else(|| MeshConfigError::Missing {
            what: format!("configmap/{MESH_CONFIG_MAP} key {MESH_CONFIG_KEY}"),
            namespace: namespace.into(),
        })?;
    let mut cfg = MeshConfig::from_yaml(&text).map_err(|source| MeshConfigError::Invalid {
        namespace: namespace.into(),
        source,
    })?;
    cfg.trust_roots = match roots {
        Some(r) => r,
        None => roots_from_cluster(client, namespace).await?,
    };
    Ok(cfg)
}

async fn roots_from_cluster(client: kube::Client, ns: &str) -> Result<String, MeshConfigError> {
    let deploy: Deployment = get_one(
        Api::namespaced(client.clone(), ns),
        INJECTOR_DEPLOYMENT,
        format!("deployment/{INJECTOR_DEPLOYMENT}"),
        ns,
    )
    .await?;
    let secret_name = deploy
        .spec
        .and_then(|s| s.template.spec)
        .and_then(|s| s.volumes)
        .unwrap_or_default()
        .into_iter()
        .find(|v| v.name == ROOTS_VOLUME)
        .and_then(|v| v.secret)
        .and_then(|s| s.secret_name)
        .ok_or_else(|| MeshConfigError::Missing {
            what: format!(
                "the secret of volume {ROOTS_VOLUME:?} of deployment/{INJECTOR_DEPLOYMENT}"
            ),
            namespace: ns.into(),
        })?;
    let what = format!("secret/{secret_name} key {ROOTS_KEY}");
    let secret: Secret =
        get_one(Api::namespaced(client, ns), &secret_name, what.clone(), ns).await?;
    secret
        .data
        .unwrap_or_default()
        .remove(ROOTS_KEY)
        .and_then(|b| String::from_utf8(b.0).ok())
        .ok_or(MeshConfigError::Missing {
            what,
            namespace: ns.into(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> MeshConfig {
        let mut c = MeshConfig::with_image("ghcr.io/outrigger/proxy:0.1.0");
        c.trust_roots = "-----BEGIN CERTIFICATE-----\nroots\n-----END CERTIFICATE-----\n".into();
        c
    }

    const DEPLOY: &str = "\
# the web app
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: shop
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
        - name: web
          image: nginx
";

    #[test]
    fn a_deployment_gets_the_proxy_and_a_second_run_changes_nothing() {
        let once = inject_manifests(DEPLOY, &cfg(), "default").unwrap();
        let v: Value = serde_saphyr::from_str(&once.text).unwrap();
        let init = &v["spec"]["template"]["spec"]["initContainers"];
        assert_eq!(init[0]["name"], "outrigger-init");
        assert_eq!(init[1]["name"], "outrigger-proxy");
        assert_eq!(
            v["spec"]["template"]["metadata"]["annotations"]["outrigger.dev/proxy-version"],
            "0.1.0"
        );
        assert_eq!(v["spec"]["template"]["metadata"]["labels"]["app"], "web");
        let twice = inject_manifests(&once.text, &cfg(), "default").unwrap();
        assert_eq!(twice.text, once.text);
        assert_eq!(note_lines(&twice.notes), "");
    }

    #[test]
    fn other_documents_and_opted_out_workloads_pass_through_byte_for_byte() {
        let input = "\
# a comment that stays
apiVersion: v1
kind: Service
metadata: {name: web}   # and this one
spec: {ports: [{port: 80}]}
---
---
apiVersion: batch/v1
kind: Job
metadata: {name: once}
spec:
  template:
    metadata:
      annotations: {outrigger.dev/inject: disabled}
    spec: {containers: [{name: c, image: busybox}], restartPolicy: Never}
";
        let out = inject_manifests(input, &cfg(), "default").unwrap();
        assert_eq!(out.text, input);
        assert_eq!(
            note_lines(&out.notes),
            "job/once -n default: left as is: outrigger.dev/inject: disabled\n"
        );
    }

    #[test]
    fn list_items_cronjobs_and_json_streams_are_injected() {
        let cron = json!({
            "apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "nightly"},
            "spec": {"schedule": "@daily", "jobTemplate": {"spec": {"template": {"spec": {
                "containers": [{"name": "c", "image": "busybox"}], "restartPolicy": "Never"}}}}}
        });
        let list = json!({"apiVersion": "v1", "kind": "List", "items": [cron]});
        let svc = r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"s"}}"#;
        let input = format!("{list}\n{svc}\n");
        let out = inject_manifests(&input, &cfg(), "default").unwrap();
        let mut docs = serde_json::Deserializer::from_str(&out.text).into_iter::<Value>();
        let first = docs.next().unwrap().unwrap();
        let pod = &first["items"][0]["spec"]["jobTemplate"]["spec"]["template"];
        assert_eq!(pod["spec"]["initContainers"][1]["name"], "outrigger-proxy");
        assert!(out.text.ends_with(&format!("\n{svc}\n")), "{}", out.text);
    }

    #[test]
    fn what_is_not_a_kubernetes_object_passes_through_with_a_note() {
        let pod = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p"},"spec":{"containers":[{"name":"c","image":"c"}]}}"#;
        // A JSON array (kubectl applies none), then YAML without a kind.
        for (input, what) in [
            (format!("[{pod}]\n"), "a sequence"),
            (
                "name: web\nimage: nginx\n".to_string(),
                "a mapping without kind",
            ),
        ] {
            let out = inject_manifests(&input, &cfg(), "default").unwrap();
            assert_eq!(out.text, input);
            assert_eq!(
                note_lines(&out.notes),
                format!(
                    "document 1: left as is: {what}, not a Kubernetes object (to inject \
                     several objects in one document, put them in the items of a kind: List)\n"
                )
            );
        }
        // In a JSON stream, the second object is document 2.
        let input = format!("{pod}\n\"just a string\"\n");
        let out = inject_manifests(&input, &cfg(), "default").unwrap();
        assert!(
            note_lines(&out.notes).contains("document 2: left as is: a scalar"),
            "{:?}",
            out.notes
        );
    }

    #[test]
    fn a_yaml_flow_mapping_is_yaml_not_broken_json() {
        let input = "{apiVersion: v1, kind: Pod, metadata: {name: p}, spec: {containers: [{name: c, image: c}]}}\n";
        let out = inject_manifests(input, &cfg(), "default").unwrap();
        let v: Value = serde_saphyr::from_str(&out.text).unwrap();
        assert_eq!(v["spec"]["initContainers"][1]["name"], "outrigger-proxy");
    }

    #[test]
    fn a_document_on_its_separator_line_is_injected_not_passed_over() {
        let pod = "{apiVersion: v1, kind: Pod, metadata: {name: p}, spec: {containers: [{name: c, image: c}]}}\n";
        let input = format!("{DEPLOY}--- {pod}");
        let out = inject_manifests(&input, &cfg(), "default").unwrap();
        let docs: Vec<Value> = serde_saphyr::from_multiple(&out.text).unwrap();
        assert_eq!(docs.len(), 2, "{}", out.text);
        assert_eq!(
            docs[1]["spec"]["initContainers"][1]["name"],
            "outrigger-proxy"
        );
        // Unchanged, it stays byte for byte; a second run changes nothing.
        let service = "--- {apiVersion: v1, kind: Service, metadata: {name: s}}\n";
        let again = format!("{}{service}", out.text);
        assert_eq!(
            inject_manifests(&again, &cfg(), "default").unwrap().text,
            again
        );
    }

    #[test]
    fn a_pod_the_webhook_would_refuse_is_an_error_naming_it() {
        let input = "\
apiVersion: v1
kind: Pod
metadata:
  name: p
  annotations: {config.outrigger.dev/proxy-cpu-limit: lots}
spec: {containers: [{name: c, image: busybox}]}
";
        let err = inject_manifests(input, &cfg(), "shop")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("pod/p -n shop: refused"), "{err}");
        assert!(
            err.contains("config.outrigger.dev/proxy-cpu-limit"),
            "{err}"
        );
    }

    #[test]
    fn the_control_plane_namespace_is_left_alone() {
        let input = DEPLOY.replace("namespace: shop", "namespace: outrigger-system");
        let out = inject_manifests(&input, &cfg(), "default").unwrap();
        assert_eq!(out.text, input);
        assert!(note_lines(&out.notes).contains("control plane's namespace"));
    }
}
