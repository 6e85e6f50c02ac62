//! The Helm chart as a cluster would run it, without a cluster: rendered by
//! the real Helm engine ([`render`]), its containers started from the
//! rendered Deployments with their volumes, environment and arguments as the
//! kubelet would give them ([`Container::start`]; not their security
//! context: users, file modes and the read-only root are not modelled, only
//! the absence of HOME), and a stand-in API server for the watches they open
//! ([`fake_api_server`]), which records what they ask.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::StreamBody;
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;

use crate::body::{full, Body, BoxError};

/// The chart, in the repository.
pub fn chart_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/outrigger")
}

/// The chart of the CRDs (`outrigger-crds`), in the repository.
pub fn crds_chart_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/outrigger-crds")
}

/// The rendered chart: every object, in template order.
#[derive(Debug)]
pub struct Rendered {
    pub objects: Vec<Value>,
    /// The objects of the chart's `crds/` directory, as Helm loads them
    /// (applied on first install, never templated nor upgraded).
    pub crds: Vec<Value>,
    /// `helm lint --strict`'s findings: `{severity, path, error}`.
    pub lint: Vec<Value>,
}

impl Rendered {
    /// The object of this kind and name; panics naming both if absent.
    pub fn get(&self, kind: &str, name: &str) -> &Value {
        self.objects
            .iter()
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("the chart renders no {kind} {name}"))
    }

    /// `helm lint --strict` found nothing at warning level or above.
    pub fn assert_lints_clean(&self) {
        let serious: Vec<_> = self
            .lint
            .iter()
            .filter(|m| m["severity"].as_u64().unwrap_or(3) >= 2)
            .collect();
        assert!(serious.is_empty(), "helm lint: {serious:#?}");
    }

    /// Every object of this kind.
    pub fn all(&self, kind: &str) -> impl Iterator<Item = &Value> {
        let kind = kind.to_string();
        self.objects.iter().filter(move |o| o["kind"] == *kind)
    }

    /// What the chart's RBAC grants ServiceAccount `namespace/account`: the
    /// rules of the roles its ClusterRoleBindings bind cluster-wide, and of
    /// those its RoleBindings bind in their namespaces.
    pub fn grants(&self, account: &str, namespace: &str) -> Grants {
        let bound = |binding: &Value| {
            binding["subjects"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|s| {
                    s["kind"] == "ServiceAccount"
                        && s["name"] == account
                        && s["namespace"] == namespace
                })
        };
        let role_of = |binding: &Value| {
            let r = &binding["roleRef"];
            self.get(r["kind"].as_str().unwrap(), r["name"].as_str().unwrap())
        };
        let mut grants = Grants::default();
        for b in self.all("ClusterRoleBinding").filter(|b| bound(b)) {
            grants.cluster.extend(rules_of(role_of(b)));
        }
        for b in self.all("RoleBinding").filter(|b| bound(b)) {
            let ns = b["metadata"]["namespace"]
                .as_str()
                .expect("a RoleBinding's namespace");
            grants
                .namespaced
                .entry(ns.to_string())
                .or_default()
                .extend(rules_of(role_of(b)));
        }
        grants
    }
}

/// (API group, resource, verb) for each of a role's rules.
fn rules_of(role: &Value) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for rule in role["rules"].as_array().into_iter().flatten() {
        let strings = |k: &str| -> Vec<String> {
            rule[k]
                .as_array()
                .into_iter()
                .flatten()
                .map(|v| v.as_str().unwrap().to_string())
                .collect()
        };
        for g in strings("apiGroups") {
            for r in strings("resources") {
                for v in strings("verbs") {
                    out.push((g.clone(), r.clone(), v));
                }
            }
        }
    }
    out
}

/// What RBAC grants one ServiceAccount ([`Rendered::grants`]).
#[derive(Debug, Default)]
pub struct Grants {
    /// Through ClusterRoleBindings: everywhere.
    pub cluster: Vec<(String, String, String)>,
    /// Through RoleBindings: in their namespace only.
    pub namespaced: BTreeMap<String, Vec<(String, String, String)>>,
}

impl Grants {
    /// Whether the API server's authorizer would allow `request`.
    pub fn allows(&self, request: &ApiRequest) -> bool {
        let need = request.rbac();
        self.cluster.contains(&need)
            || request
                .namespace()
                .and_then(|ns| self.namespaced.get(ns))
                .is_some_and(|rules| rules.contains(&need))
    }

    /// Panics naming the first of `seen` (a binary's requests) that the
    /// grants do not allow, or if `seen` is empty.
    pub fn assert_allow(&self, who: &str, seen: &[ApiRequest]) {
        assert!(!seen.is_empty(), "{who} asked the API server nothing");
        for req in seen {
            assert!(
                self.allows(req),
                "{who} made {} {} (watch: {}), which needs {:?} (namespace {:?}); the chart grants {self:?}",
                req.method,
                req.path,
                req.watch,
                req.rbac(),
                req.namespace(),
            );
        }
    }
}

/// Why the chart could not be rendered here.
#[derive(Debug)]
pub enum RenderError {
    /// The Helm engine (the helm-python-sdk wheel) is not installed.
    NoHelm(String),
    /// Helm refused the chart or the values; its message.
    Helm(String),
}

/// [`render`] for a test that needs the chart: `None` (the test skips,
/// saying why) where the Helm engine is not installed, unless
/// `OUTRIGGER_REQUIRE_HELM` is set; a panic with Helm's message when it
/// refuses the chart or the values.
pub fn render_or_skip(values: Value, name: &str, namespace: &str) -> Option<Rendered> {
    render_chart_or_skip(&chart_dir(), values, name, namespace)
}

/// `from` over `into`, as Helm layers values: objects merge key by key,
/// anything else is replaced.
pub fn merge_values(into: &mut Value, from: Value) {
    match (into, from) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge_values(a.entry(k).or_insert(Value::Null), v);
            }
        }
        (a, b) => *a = b,
    }
}

/// Renders the chart as `helm install NAME -n NAMESPACE` would, with
/// `values` over values.yaml, and lints it.
pub fn render(values: Value, name: &str, namespace: &str) -> Result<Rendered, RenderError> {
    render_chart(&chart_dir(), values, name, namespace)
}

/// [`render_or_skip`] for the chart in `dir`.
pub fn render_chart_or_skip(
    dir: &Path,
    values: Value,
    name: &str,
    namespace: &str,
) -> Option<Rendered> {
    match render_chart(dir, values, name, namespace) {
        Ok(r) => Some(r),
        Err(RenderError::NoHelm(why)) => {
            assert!(
                std::env::var_os("OUTRIGGER_REQUIRE_HELM").is_none(),
                "OUTRIGGER_REQUIRE_HELM is set, but {} cannot be rendered: {why}",
                dir.display()
            );
            eprintln!("skipped: {why} (pip install helm-python-sdk)");
            None
        }
        Err(RenderError::Helm(e)) => panic!("helm refused {}: {e}", dir.display()),
    }
}

/// [`render`] for the chart in `dir`.
pub fn render_chart(
    dir: &Path,
    values: Value,
    name: &str,
    namespace: &str,
) -> Result<Rendered, RenderError> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/chart/render.py");
    let input = json!({
        "chart": dir,
        "values": values,
        "name": name,
        "namespace": namespace,
    });
    let mut child = Command::new("python3")
        .arg(&script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| RenderError::NoHelm(format!("python3: {e}")))?;
    serde_json::to_writer(child.stdin.take().expect("piped"), &input).expect("to python3");
    let out = child.wait_with_output().expect("python3 runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        if stderr.contains("No module named 'helm_python'") {
            return Err(RenderError::NoHelm(
                "the helm-python-sdk wheel is not installed".into(),
            ));
        }
        panic!("render.py failed: {stderr}");
    }
    let answer: Value = serde_json::from_slice(&out.stdout).expect("render.py prints JSON");
    if let Some(e) = answer["error"].as_str() {
        return Err(RenderError::Helm(e.to_string()));
    }
    let documents = |files: &Value| {
        let mut objects = Vec::new();
        for (file, text) in files.as_object().expect("files by name") {
            if !file.ends_with(".yaml") {
                continue; // NOTES.txt
            }
            let docs: Vec<Value> = serde_saphyr::from_multiple(text.as_str().unwrap())
                .unwrap_or_else(|e| panic!("{file} is not YAML: {e}\n{text}"));
            objects.extend(docs.into_iter().filter(|d| !d.is_null()));
        }
        objects
    };
    let objects = documents(&answer["rendered"]);
    let crds = documents(&answer["crds"]);
    let report = &answer["lint"];
    let errors = report["errors"]
        .as_array()
        .expect("the lint report's errors");
    assert!(
        errors
            .iter()
            .all(|e| e.as_str().unwrap_or_default().is_empty()),
        "helm lint errors: {errors:?}"
    );
    let lint = report["messages"]
        .as_array()
        .expect("the lint report's messages")
        .clone();
    Ok(Rendered {
        objects,
        crds,
        lint,
    })
}

/// A test mesh CA (ECDSA P-256, self-signed, the control plane's own
/// generator): `(cert PEM, key PEM)`.
pub fn test_ca() -> (String, String) {
    let ca = outrigger_identity::Ca::generate("cluster.local", std::time::SystemTime::now())
        .expect("a generated CA");
    let (cert, key) = ca.generated_pem().expect("generated");
    (cert.to_string(), key.to_string())
}

/// Replaces each `from` of `rules` with its `to` in one pass over `text`:
/// a match must stand alone (not inside a longer address, number or path
/// component), the longest rule wins, and replaced text is never matched
/// again. For moving `0.0.0.0:4191` without touching `0.0.0.0:41910`, and
/// mount paths without touching what an earlier rule wrote.
pub fn rewrite_once(text: &str, rules: &[(String, String)]) -> String {
    let mut rules: Vec<&(String, String)> = rules.iter().collect();
    rules.sort_by_key(|(from, _)| std::cmp::Reverse(from.len()));
    let word = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    'scan: while i < text.len() {
        let before = text[..i].chars().next_back();
        for (from, to) in &rules {
            // A path must start a path; an address may follow `//`.
            let joined = |c: char| word(c) || (c == '/' && from.starts_with('/'));
            if before.is_some_and(joined) {
                continue;
            }
            if let Some(rest) = text[i..].strip_prefix(from.as_str()) {
                if rest.chars().next().is_none_or(|c| !word(c)) {
                    out.push_str(to);
                    i += from.len();
                    continue 'scan;
                }
            }
        }
        let c = text[i..].chars().next().unwrap();
        out.push(c);
        i += c.len_utf8();
    }
    out
}

/// The content of a ConfigMap's or Secret's key (Secrets' base64 decoded).
pub fn data_of(object: &Value, key: &str) -> Option<Vec<u8>> {
    if let Some(s) = object["data"][key].as_str() {
        return Some(if object["kind"] == "Secret" {
            base64_decode(s).unwrap_or_else(|| panic!("Secret data {key} is not base64"))
        } else {
            s.as_bytes().to_vec()
        });
    }
    object["stringData"][key]
        .as_str()
        .map(|s| s.as_bytes().to_vec())
}

/// Standard base64 (what Kubernetes uses for Secret data and caBundle).
pub fn base64_decode(text: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(text).ok()
}

/// A container of a rendered Deployment, running as its process on this
/// machine: its volumes written under a temporary root, its `env` resolved
/// (values and the downward API), its arguments with each mount path
/// pointing into that root and each `0.0.0.0:<containerPort>` moved to a
/// free loopback port.
pub struct Container {
    child: Mutex<Child>,
    /// containerPort (and port name) → the loopback address it is served on.
    pub ports: BTreeMap<String, SocketAddr>,
    pub root: tempfile::TempDir,
    pub stderr: PathBuf,
}

impl Container {
    /// Starts `binary` as the only container of `deployment`. `env` comes
    /// on top of the container's own (a kubeconfig, for instance).
    pub fn start(
        rendered: &Rendered,
        deployment: &Value,
        binary: &Path,
        env: &[(&str, &str)],
    ) -> Container {
        let template = &deployment["spec"]["template"];
        let containers = template["spec"]["containers"]
            .as_array()
            .expect("containers");
        assert_eq!(containers.len(), 1, "one container per Deployment");
        let mut pod = template.clone();
        pod["metadata"]["namespace"] = deployment["metadata"]["namespace"].clone();
        pod["metadata"]["name"] = json!(format!(
            "{}-0",
            deployment["metadata"]["name"].as_str().unwrap()
        ));
        let name = containers[0]["name"].as_str().unwrap().to_string();
        Container::start_in_pod(rendered, &pod, &name, binary, env, &[], None)
    }

    /// Starts the workspace binary `binary` as deployment `name` of the
    /// chart, with the address of the port its pod template's
    /// `prometheus.io/port` annotation names (where its metrics are).
    pub fn start_scraped(
        rendered: &Rendered,
        name: &str,
        binary: &str,
        env: &[(&str, &str)],
    ) -> (Container, SocketAddr) {
        let d = rendered.get("Deployment", name);
        let bin = crate::workspace_bin(binary).unwrap_or_else(|| panic!("the {binary} binary"));
        let c = Container::start(rendered, d, &bin, env);
        let port = d["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"]
            .as_str()
            .unwrap_or_else(|| panic!("{name} has no prometheus.io/port annotation"))
            .to_string();
        let addr = c.ports[&port];
        (c, addr)
    }

    /// Starts `binary` as container `name` of `pod` (a Pod, or a pod
    /// template with its name and namespace filled in; the container may be
    /// an init container). Besides the container ports, each port in
    /// `more_ports` is moved too where `0.0.0.0:` or `127.0.0.1:` names it in
    /// the arguments or the environment. `token` is what a projected
    /// ServiceAccount token volume holds.
    pub fn start_in_pod(
        rendered: &Rendered,
        pod: &Value,
        name: &str,
        binary: &Path,
        env: &[(&str, &str)],
        more_ports: &[u16],
        token: Option<&str>,
    ) -> Container {
        let spec = &pod["spec"];
        let c = spec["containers"]
            .as_array()
            .into_iter()
            .chain(spec["initContainers"].as_array())
            .flatten()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("the pod has no container {name}"));
        let pod_name = pod["metadata"]["name"].as_str().expect("the pod's name");
        let namespace = pod["metadata"]["namespace"]
            .as_str()
            .expect("the pod's namespace");
        let pod = spec;
        let root = tempfile::tempdir().unwrap();

        // Volumes, as the kubelet projects them.
        let mut mounts = Vec::new();
        for m in c["volumeMounts"].as_array().into_iter().flatten() {
            let name = m["name"].as_str().unwrap();
            let path = m["mountPath"].as_str().unwrap();
            let volume = pod["volumes"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|v| v["name"] == name)
                .unwrap_or_else(|| panic!("volumeMount {name} has no volume"));
            let dir = root.path().join(path.trim_start_matches('/'));
            if let Some(projected) = volume.get("projected") {
                std::fs::create_dir_all(&dir).unwrap();
                for source in projected["sources"].as_array().into_iter().flatten() {
                    let sa = &source["serviceAccountToken"];
                    let file = sa["path"].as_str().unwrap_or_else(|| {
                        panic!("volume {name}: only ServiceAccount tokens are projected here")
                    });
                    let token = token.unwrap_or_else(|| panic!("volume {name} needs a token"));
                    // The token is minted for the projection's audience:
                    // `<token>@<audience>`, which a stand-in TokenReview
                    // can check (see `token_audience`).
                    let audience = sa["audience"].as_str().unwrap_or("");
                    std::fs::write(dir.join(file), format!("{token}@{audience}")).unwrap();
                }
                mounts.push((path.to_string(), dir));
                continue;
            }
            let (source, items) = if let Some(cm) = volume.get("configMap") {
                (
                    rendered.get("ConfigMap", cm["name"].as_str().unwrap()),
                    &cm["items"],
                )
            } else if let Some(s) = volume.get("secret") {
                (
                    rendered.get("Secret", s["secretName"].as_str().unwrap()),
                    &s["items"],
                )
            } else {
                panic!("volume {name}: only configMap and secret volumes are projected here")
            };
            std::fs::create_dir_all(&dir).unwrap();
            let keys: Vec<(String, String)> = match items.as_array() {
                Some(items) => items
                    .iter()
                    .map(|i| {
                        let key = i["key"].as_str().unwrap().to_string();
                        (key, i["path"].as_str().unwrap().to_string())
                    })
                    .collect(),
                None => source["data"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(k, _)| (k.clone(), k.clone()))
                    .collect(),
            };
            for (key, file) in keys {
                let bytes = data_of(source, &key).unwrap_or_else(|| {
                    panic!(
                        "volume {name}: {} has no key {key}",
                        source["metadata"]["name"]
                    )
                });
                std::fs::write(dir.join(file), bytes).unwrap();
            }
            mounts.push((path.to_string(), dir));
        }

        // Ports: each containerPort (and each of `more_ports`) gets a free
        // loopback port. The listeners are held until just before the
        // spawn, so that no two of them get the same port.
        let mut ports = BTreeMap::new();
        let mut held = Vec::new();
        let mut rules: Vec<(String, String)> = Vec::new();
        let declared = c["ports"].as_array().into_iter().flatten().map(|p| {
            (
                p["containerPort"].as_u64().unwrap() as u16,
                p["name"].as_str(),
            )
        });
        let extra = more_ports.iter().map(|&p| (p, None));
        for (port, name) in declared.chain(extra) {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let free = listener.local_addr().unwrap();
            held.push(listener);
            ports.insert(port.to_string(), free);
            if let Some(name) = name {
                ports.insert(name.to_string(), free);
            }
            for host in ["0.0.0.0", "127.0.0.1"] {
                rules.push((format!("{host}:{port}"), free.to_string()));
            }
        }
        for (path, dir) in &mounts {
            rules.push((path.clone(), dir.to_str().unwrap().to_string()));
        }
        let rewrite = |text: &str| rewrite_once(text, &rules);

        let args: Vec<String> = c["args"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|a| rewrite(a.as_str().unwrap()))
            .collect();

        let mut cmd = Command::new(binary);
        cmd.args(&args).env_clear();
        // No HOME: nothing may depend on a writable home directory (the
        // containers' root filesystems are read-only).
        if let Some(path) = std::env::var_os("PATH") {
            cmd.env("PATH", path);
        }
        for e in c["env"].as_array().into_iter().flatten() {
            let name = e["name"].as_str().unwrap();
            let value = if let Some(v) = e["value"].as_str() {
                rewrite(v)
            } else {
                match e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                    Some("metadata.name") => pod_name.to_string(),
                    Some("metadata.namespace") => namespace.to_string(),
                    Some("spec.serviceAccountName") => {
                        pod["serviceAccountName"].as_str().unwrap().to_string()
                    }
                    // The pod's "IP" on this machine.
                    Some("status.podIP") => "127.0.0.1".to_string(),
                    other => panic!("env {name}: {other:?} is not resolved here"),
                }
            };
            cmd.env(name, value);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        for field in ["command", "envFrom"] {
            assert!(
                c.get(field).is_none(),
                "container {name}: {field} is not modelled here"
            );
        }
        let stderr = root.path().join("stderr");
        cmd.stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap());
        drop(held);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", binary.display()));
        Container {
            child: Mutex::new(child),
            ports,
            root,
            stderr,
        }
    }

    /// What it wrote to stderr so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// SIGKILL, as a crash or a lost node ends it (nothing runs on its
    /// way out); returns once it has exited.
    pub fn kill(&self) {
        let mut child = self.child.lock().unwrap();
        let _ = child.kill();
        let _ = child.wait();
    }

    /// SIGTERM, as the kubelet stops a container: it drains and exits on
    /// its own. Returns once it has exited, or panics with its logs after
    /// `limit`.
    pub async fn terminate(&self, limit: std::time::Duration) -> std::process::ExitStatus {
        let pid = self.child.lock().unwrap().id();
        let sent = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("kill runs");
        assert!(sent.success(), "kill -TERM {pid}");
        let mut status = None;
        let exited = crate::eventually(limit, || {
            let done = self.child.lock().unwrap().try_wait().unwrap();
            status = status.or(done);
            async move { done.is_some() }
        })
        .await;
        assert!(
            exited,
            "still running {limit:?} after SIGTERM: {}",
            self.logs()
        );
        status.expect("exited")
    }

    /// Whether it is still running (its exit, if not).
    pub fn running(&self) -> Result<(), String> {
        match self.child.lock().unwrap().try_wait().unwrap() {
            None => Ok(()),
            Some(status) => Err(format!("exited with {status}: {}", self.logs())),
        }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let child = self.child.get_mut().unwrap();
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// A stand-in for the API server, for clients that list and watch: a list
/// answers with the objects given for its path (none by default) and the
/// server's current resourceVersion; a watch from a resourceVersion sends
/// every change made since (by [`FakeApi::replace`], a status write or a
/// Lease write) to an object of its collection, and is held open; `GET
/// /version` answers the object given for "/version" (if any); a create at
/// a path given to [`fake_api_server_with`] is answered by its function; a
/// patch of an object given (a status write) is merged into it as a JSON
/// merge patch (a patch of another object is taken and answered with its
/// name); `coordination.k8s.io/v1` Leases are kept as an API server keeps
/// them (GET, 404 when absent; POST, 409 when present; PUT, 409 on a stale
/// resourceVersion), every write accepted kept in order with its writer
/// ([`FakeApi::lease_writes`]); anything else is a 404. Every write bumps
/// the server's resourceVersion, and the object's. Every request is
/// recorded, with the bearer token it came with, so a test can hold what a
/// binary asked for against the RBAC rules the chart grants it, and tell
/// two clients apart ([`FakeApi::kubeconfig_as`]).
pub struct FakeApi {
    pub addr: SocketAddr,
    /// A kubeconfig pointing at it (token `fake-token`).
    pub kubeconfig: PathBuf,
    seen: Arc<Mutex<Vec<ApiRequest>>>,
    state: Arc<FakeState>,
    dir: PathBuf,
}

/// What the stand-in API server holds: the objects by collection path, the
/// changes made to them (for watches), and who is told of a change.
struct FakeState {
    store: Mutex<FakeStore>,
    /// The resourceVersion after each write.
    changed: tokio::sync::watch::Sender<u64>,
    creates: BTreeMap<String, Create>,
    pods: BTreeMap<String, SocketAddr>,
}

struct FakeStore {
    lists: BTreeMap<String, Vec<Value>>,
    /// The server's resourceVersion: bumped by every write.
    version: u64,
    /// Every change: its resourceVersion, the collections it is seen in
    /// (cluster-wide and namespaced forms), and the watch event.
    events: Vec<(u64, [String; 2], Value)>,
    /// Every Lease write accepted, in order.
    lease_writes: Vec<LeaseWrite>,
}

/// The API server's (and a watch's) two paths for the collection of an
/// object in `namespace`: `/apis/G/V/R` and `/apis/G/V/namespaces/NS/R`,
/// from either of them.
fn collection_forms(collection: &str, namespace: &str) -> [String; 2] {
    let parts: Vec<&str> = collection.split('/').collect();
    let (prefix, rest) = match parts.as_slice() {
        ["", "api", v, rest @ ..] => (format!("/api/{v}"), rest),
        ["", "apis", g, v, rest @ ..] => (format!("/apis/{g}/{v}"), rest),
        _ => return [collection.to_string(), collection.to_string()],
    };
    let resource = rest.last().copied().unwrap_or_default();
    [
        format!("{prefix}/{resource}"),
        format!("{prefix}/namespaces/{namespace}/{resource}"),
    ]
}

/// An object's path (`.../namespaces/NS/R/NAME[/status]`) → its collection
/// forms, namespace and name.
fn object_of(path: &str) -> Option<([String; 2], String, String)> {
    let path = path.strip_suffix("/status").unwrap_or(path);
    let (collection, name) = path.rsplit_once('/')?;
    let (_, after) = collection.split_once("/namespaces/")?;
    let (namespace, resource) = after.split_once('/')?;
    if resource.contains('/') {
        return None;
    }
    Some((
        collection_forms(collection, namespace),
        namespace.to_string(),
        name.to_string(),
    ))
}

/// RFC 7386: `patch` merged into `target`.
fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(fields) => {
            if !target.is_object() {
                *target = json!({});
            }
            let t = target.as_object_mut().unwrap();
            for (k, v) in fields {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

impl FakeState {
    /// Whether the object at `path` (or its subresource) is one it holds.
    fn holds(&self, path: &str) -> bool {
        object_of(path).is_some_and(|(forms, namespace, name)| {
            let store = self.store.lock().unwrap();
            store.find(&forms, &namespace, &name).is_some()
        })
    }
}

impl FakeStore {
    /// Where `name` in `namespace` is kept: its list's key and index.
    fn find(&self, forms: &[String; 2], namespace: &str, name: &str) -> Option<(String, usize)> {
        forms.iter().find_map(|collection| {
            let items = self.lists.get(collection)?;
            let i = items.iter().position(|o| {
                o["metadata"]["name"] == name
                    && (o["metadata"]["namespace"] == namespace
                        || o["metadata"]["namespace"].is_null())
            })?;
            Some((collection.clone(), i))
        })
    }

    /// Stores `object` (new, or at `at`) with a new resourceVersion and
    /// records the change for watches; returns the object as stored.
    fn write(
        &mut self,
        forms: [String; 2],
        at: Option<(String, usize)>,
        mut object: Value,
    ) -> Value {
        self.version += 1;
        object["metadata"]["resourceVersion"] = json!(self.version.to_string());
        let kind = match &at {
            Some((collection, i)) => {
                self.lists.get_mut(collection).unwrap()[*i] = object.clone();
                "MODIFIED"
            }
            None => {
                self.lists
                    .entry(forms[1].clone())
                    .or_default()
                    .push(object.clone());
                "ADDED"
            }
        };
        self.events.push((
            self.version,
            forms,
            json!({ "type": kind, "object": object.clone() }),
        ));
        object
    }
}

/// One write of a Lease the stand-in API server accepted.
#[derive(Clone, Debug, PartialEq)]
pub struct LeaseWrite {
    /// The Lease's path (`.../namespaces/NS/leases/NAME`).
    pub path: String,
    /// POST (created) or PUT (replaced).
    pub method: String,
    /// The bearer token of the writer.
    pub token: String,
    /// The resourceVersion the write was made on (a PUT's), None for a POST.
    pub on_version: Option<String>,
    /// The Lease as stored by it, its new resourceVersion included.
    pub stored: Value,
}

/// One request the stand-in API server received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiRequest {
    pub method: String,
    pub path: String,
    pub watch: bool,
    /// The bearer token it came with.
    pub token: String,
}

impl ApiRequest {
    /// The namespace of a namespaced request (`.../namespaces/NS/RESOURCE...`);
    /// None for a cluster-wide one, and for a Namespace object itself.
    pub fn namespace(&self) -> Option<&str> {
        let (_, after) = self.path.split_once("/namespaces/")?;
        let (namespace, resource) = after.split_once('/')?;
        (!resource.is_empty()).then_some(namespace)
    }

    /// The RBAC (API group, resource, verb) this request needs, as the API
    /// server's authorizer reads it: a collection is listed or watched, a
    /// named object got, patched, updated or deleted, and a subresource is
    /// `resource/subresource` (whatever path follows it, as the proxy
    /// subresource's).
    pub fn rbac(&self) -> (String, String, String) {
        let parts: Vec<&str> = self.path.trim_start_matches('/').split('/').collect();
        let (group, rest) = match parts.as_slice() {
            ["api", _version, rest @ ..] => (String::new(), rest),
            ["apis", group, _version, rest @ ..] => (group.to_string(), rest),
            _ => panic!("not an API path: {}", self.path),
        };
        // namespaces/<ns>/<resource>... is namespaced; namespaces and
        // namespaces/<name>[/<sub>] are the Namespace objects themselves.
        let rest = match rest {
            ["namespaces", _ns, resource, more @ ..] => {
                let mut r = vec![*resource];
                r.extend_from_slice(more);
                r
            }
            other => other.to_vec(),
        };
        let (resource, named) = match rest.as_slice() {
            [resource] => (resource.to_string(), false),
            [resource, _name] => (resource.to_string(), true),
            // The proxy subresource carries a path after it
            // (pods/NAME:PORT/proxy/metrics).
            [resource, _name, sub, ..] => (format!("{resource}/{sub}"), true),
            _ => panic!("cannot read {}", self.path),
        };
        let verb = match (self.method.as_str(), named, self.watch) {
            ("GET", false, true) => "watch",
            ("GET", false, false) => "list",
            ("GET", true, _) => "get",
            ("POST", false, _) => "create",
            ("PATCH", true, _) => "patch",
            ("PUT", true, _) => "update",
            ("DELETE", true, _) => "delete",
            (m, _, _) => panic!("unexpected {m} {}", self.path),
        };
        (group, resource, verb.to_string())
    }
}

impl FakeApi {
    /// What it was asked so far.
    pub fn seen(&self) -> Vec<ApiRequest> {
        self.seen.lock().unwrap().clone()
    }

    /// A kubeconfig pointing at it with `token` as the bearer token, so that
    /// [`FakeApi::seen`] tells this client's requests from others'.
    pub fn kubeconfig_as(&self, token: &str) -> PathBuf {
        let path = self.dir.join(format!("kubeconfig-{token}"));
        write_kubeconfig_with_token(&path, &format!("http://{}", self.addr), "fake", token);
        path
    }

    /// Every accepted write of the Lease at `path`, oldest first.
    pub fn lease_writes(&self, path: &str) -> Vec<LeaseWrite> {
        let store = self.state.store.lock().unwrap();
        store
            .lease_writes
            .iter()
            .filter(|w| w.path == path)
            .cloned()
            .collect()
    }

    /// The object at `path` (`.../namespaces/NS/RESOURCE/NAME`) as stored.
    pub fn object(&self, path: &str) -> Option<Value> {
        let (forms, namespace, name) = object_of(path)?;
        let store = self.state.store.lock().unwrap();
        let (collection, i) = store.find(&forms, &namespace, &name)?;
        Some(store.lists[&collection][i].clone())
    }

    /// Replaces the object of `collection` with `object`'s name and
    /// namespace (a client's update): stored with a new resourceVersion,
    /// and sent to the watches of its collection. Panics if there is none.
    pub fn replace(&self, collection: &str, object: Value) {
        let namespace = object["metadata"]["namespace"].as_str().unwrap_or_default();
        let name = object["metadata"]["name"].as_str().expect("a name");
        let forms = collection_forms(collection, namespace);
        let mut store = self.state.store.lock().unwrap();
        let at = store
            .find(&forms, namespace, name)
            .unwrap_or_else(|| panic!("{collection} has no {namespace}/{name}"));
        store.write(forms, Some(at), object);
        let version = store.version;
        drop(store);
        self.state.changed.send_replace(version);
    }
}

/// A token written by [`Container::start_in_pod`]: the token given, and the
/// audience it was projected for.
pub fn token_audience(written: &str) -> Option<(&str, &str)> {
    written.rsplit_once('@')
}

/// How the stand-in API server answers a create (POST) at one path: the
/// object sent in, the object answered.
pub type Create = Arc<dyn Fn(&Value) -> Value + Send + Sync>;

pub async fn fake_api_server(objects: BTreeMap<String, Vec<Value>>, dir: &Path) -> FakeApi {
    fake_api_server_with(objects, BTreeMap::new(), dir).await
}

/// [`fake_api_server`], also answering creates at the given paths.
pub async fn fake_api_server_with(
    objects: BTreeMap<String, Vec<Value>>,
    creates: BTreeMap<String, Create>,
    dir: &Path,
) -> FakeApi {
    serve_fake_api(objects, creates, BTreeMap::new(), dir).await
}

/// [`fake_api_server`], also serving, for the pods given, the pod proxy
/// subresource (`GET /api/v1/namespaces/NS/pods/NAME:PORT/proxy/PATH`: the
/// GET is forwarded there and its answer returned; unlike a real API
/// server, it connects from loopback) and port-forward
/// (`/api/v1/namespaces/NS/pods/NAME/portforward?ports=PORT`, a WebSocket
/// speaking `v4.channel.k8s.io`, one port, as kubelet does).
///
/// A pod's ports: `"NS/NAME:PORT"` → the address that port is reached at;
/// `"NS/NAME"` alone is the proxy's admin port (4191, as the injector sets
/// it). Any other port of a pod given answers as nothing listening there
/// would: the pod proxy with a 503 `error trying to reach service`, the
/// port-forward with an error on its error channel. A pod not given is a 404.
pub async fn fake_api_server_with_pods(
    objects: BTreeMap<String, Vec<Value>>,
    pods: BTreeMap<String, SocketAddr>,
    dir: &Path,
) -> FakeApi {
    serve_fake_api(objects, BTreeMap::new(), pods, dir).await
}

/// `/api/v1/namespaces/NS/pods/NAME:PORT/proxy/PATH` → (`NS/NAME`, port,
/// `/PATH`); without `:PORT`, the pod's first port, which this stand-in
/// reads as 0 (none).
fn pod_proxy(path: &str) -> Option<(String, u16, String)> {
    let rest = path.strip_prefix("/api/v1/namespaces/")?;
    let (ns, rest) = rest.split_once("/pods/")?;
    let (name_port, rest) = rest.split_once("/proxy")?;
    let (name, port) = match name_port.split_once(':') {
        Some((name, port)) => (name, port.parse().ok()?),
        None => (name_port, 0),
    };
    let rest = if rest.is_empty() { "/" } else { rest };
    Some((format!("{ns}/{name}"), port, rest.to_string()))
}

/// The proxy's admin port in a pod, as the injector sets it (checked
/// against `outrigger_injector::config::Ports` in this module's tests).
pub const PROXY_ADMIN_PORT: u16 = 4191;

/// Where a pod's `port` is reached: `Ok(addr)`; `Err(true)` when the pod
/// is given but not that port, `Err(false)` when the pod is not given.
fn pod_port(pods: &BTreeMap<String, SocketAddr>, pod: &str, port: u16) -> Result<SocketAddr, bool> {
    if let Some(addr) = pods.get(&format!("{pod}:{port}")) {
        return Ok(*addr);
    }
    if let Some(addr) = pods.get(pod) {
        return if port == PROXY_ADMIN_PORT {
            Ok(*addr)
        } else {
            Err(true)
        };
    }
    let prefix = format!("{pod}:");
    Err(pods.keys().any(|k| k.starts_with(&prefix)))
}

/// The API server's answer when nothing listens on the pod's port (it
/// dials the pod's IP and is refused).
fn refused_pod_port(pod: &str, port: u16) -> Response<Body> {
    let status = json!({
        "kind": "Status", "apiVersion": "v1", "status": "Failure",
        "message": format!(
            "error trying to reach service: dial tcp {pod}:{port}: connect: connection refused"
        ),
        "reason": "ServiceUnavailable", "code": 503,
    });
    Response::builder()
        .status(StatusCode::SERVICE_UNAVAILABLE)
        .header("content-type", "application/json")
        .body(full(status.to_string()))
        .unwrap()
}

/// Whether `object`'s labels match `selector`, a list's `labelSelector`
/// query value (percent-encoded); only equalities (`k=v,k2=v2`) are read,
/// and anything else matches.
fn selected(object: &Value, selector: &str) -> bool {
    let mut decoded = String::new();
    let mut bytes = selector.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'%' => {
                let hex: String = bytes.by_ref().take(2).map(char::from).collect();
                decoded.push(u8::from_str_radix(&hex, 16).map_or('?', char::from));
            }
            b'+' => decoded.push(' '),
            b => decoded.push(char::from(b)),
        }
    }
    decoded
        .split(',')
        .filter_map(|term| term.split_once('='))
        .filter(|(k, _)| !k.ends_with('!'))
        .all(|(k, v)| object["metadata"]["labels"][k.trim()] == v.trim_start_matches('='))
}

/// `/api/v1/namespaces/NS/pods/NAME/portforward` → `NS/NAME`.
fn pod_port_forward(path: &str) -> Option<String> {
    let rest = path.strip_prefix("/api/v1/namespaces/")?;
    let (ns, rest) = rest.split_once("/pods/")?;
    let name = rest.strip_suffix("/portforward")?;
    Some(format!("{ns}/{name}"))
}

/// The API server's 404 for a pod it does not have (`NS/NAME`).
fn not_found_pod(pod: &str) -> Response<Body> {
    not_found("pods", pod.split_once('/').map_or(pod, |(_, n)| n))
}

/// The API server's 404 for an object of `resource` it does not have.
fn not_found(resource: &str, name: &str) -> Response<Body> {
    let status = json!({
        "kind": "Status", "apiVersion": "v1", "status": "Failure",
        "message": format!("{resource} \"{name}\" not found"),
        "reason": "NotFound", "code": 404,
    });
    Response::builder()
        .status(StatusCode::NOT_FOUND)
        .header("content-type", "application/json")
        .body(full(status.to_string()))
        .unwrap()
}

/// Answers a port-forward's WebSocket upgrade and relays its first port's
/// data channel to where that port of `pod` is reached (`addr` of it; an
/// `Err` sends kubelet's refusal on the error channel instead).
fn port_forward(
    mut req: Request<Incoming>,
    pod: &str,
    addr: impl FnOnce(u16) -> Result<SocketAddr, bool>,
) -> Response<Body> {
    use futures_util::{SinkExt as _, StreamExt as _};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio_tungstenite::tungstenite::{handshake::derive_accept_key, protocol::Role, Message};

    let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
        return Response::builder()
            .status(StatusCode::BAD_REQUEST)
            .body(full("port-forward needs a WebSocket upgrade"))
            .unwrap();
    };
    let port: u16 = req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .find_map(|kv| kv.strip_prefix("ports="))
        .and_then(|p| p.split([',', '%']).next()?.parse().ok())
        .unwrap_or(0);
    let addr = addr(port).ok();
    let pod = pod.to_string();
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            Role::Server,
            None,
        )
        .await;
        let (mut sink, mut stream) = ws.split();
        let [lo, hi] = port.to_le_bytes();
        for channel in [0u8, 1] {
            if sink
                .send(Message::binary(vec![channel, lo, hi]))
                .await
                .is_err()
            {
                return;
            }
        }
        let refused = |why: String| Message::binary([&[1u8][..], why.as_bytes()].concat());
        let Some(addr) = addr else {
            // As kubelet words it when nothing listens on the port.
            let _ = sink
                .send(refused(format!(
                    "error forwarding port {port} to pod {pod}: failed to connect to \
                     localhost:{port} inside namespace: connection refused"
                )))
                .await;
            // Then the connection ends; after the client's first frame, so
            // that the reason has reached it before the end does (kube's
            // forwarder drops a reason that comes after a failed write).
            let _ = stream.next().await;
            let _ = sink.send(Message::Close(None)).await;
            return;
        };
        let Ok(tcp) = tokio::net::TcpStream::connect(addr).await else {
            let _ = sink.send(refused(format!("cannot reach {addr}"))).await;
            return;
        };
        let (mut from_pod, mut to_pod) = tcp.into_split();
        let up = async move {
            while let Some(Ok(msg)) = stream.next().await {
                // Data for the port is written in the guard; a failed write
                // ends the relay.
                match msg {
                    Message::Binary(b)
                        if b.len() > 1 && b[0] == 0 && to_pod.write_all(&b[1..]).await.is_err() =>
                    {
                        break
                    }
                    Message::Close(_) => break,
                    _ => {}
                }
            }
        };
        let down = async move {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                match from_pod.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let frame = [&[0u8][..], &buf[..n]].concat();
                        if sink.send(Message::binary(frame)).await.is_err() {
                            break;
                        }
                    }
                }
            }
            let _ = sink.send(Message::Close(None)).await;
        };
        tokio::select! { _ = up => {}, _ = down => {} }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("upgrade", "websocket")
        .header("connection", "Upgrade")
        .header("sec-websocket-accept", derive_accept_key(key.as_bytes()))
        .header("sec-websocket-protocol", "v4.channel.k8s.io")
        .body(crate::empty())
        .unwrap()
}

async fn forward_get(addr: SocketAddr, path: &str) -> Response<Body> {
    let bad_gateway = |why: String| {
        Response::builder()
            .status(StatusCode::BAD_GATEWAY)
            .body(full(why))
            .unwrap()
    };
    let tcp = match tokio::net::TcpStream::connect(addr).await {
        Ok(tcp) => tcp,
        Err(e) => return bad_gateway(format!("cannot reach {addr}: {e}")),
    };
    let Ok((mut sender, conn)) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await
    else {
        return bad_gateway(format!("no HTTP/1 from {addr}"));
    };
    tokio::spawn(conn);
    let req = Request::get(path)
        .header("host", addr.to_string())
        .body(crate::empty())
        .unwrap();
    match sender.send_request(req).await {
        Ok(res) => {
            let (parts, body) = res.into_parts();
            let body = http_body_util::BodyExt::collect(body)
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            Response::from_parts(parts, full(body))
        }
        Err(e) => bad_gateway(format!("GET {path} from {addr}: {e}")),
    }
}

async fn serve_fake_api(
    objects: BTreeMap<String, Vec<Value>>,
    creates: BTreeMap<String, Create>,
    pods: BTreeMap<String, SocketAddr>,
    dir: &Path,
) -> FakeApi {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = Arc::new(FakeState {
        store: Mutex::new(FakeStore {
            lists: objects,
            version: 1,
            events: Vec::new(),
            lease_writes: Vec::new(),
        }),
        changed: tokio::sync::watch::Sender::new(1),
        creates,
        pods,
    });
    let seen: Arc<Mutex<Vec<ApiRequest>>> = Arc::default();
    let record = seen.clone();
    let served = state.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (state, record) = (served.clone(), record.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let (state, record) = (state.clone(), record.clone());
                    async move {
                        let query = req.uri().query().unwrap_or("");
                        let token = req
                            .headers()
                            .get(http::header::AUTHORIZATION)
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.strip_prefix("Bearer "))
                            .unwrap_or_default()
                            .to_string();
                        let watch = query
                            .split('&')
                            .any(|kv| kv == "watch=true" || kv == "watch=1");
                        record.lock().unwrap().push(ApiRequest {
                            method: req.method().to_string(),
                            path: req.uri().path().to_string(),
                            watch,
                            token: token.clone(),
                        });
                        let pods = &state.pods;
                        if let Some(pod) = pod_port_forward(req.uri().path()) {
                            let known = pods.contains_key(&pod)
                                || pods.keys().any(|k| k.starts_with(&format!("{pod}:")));
                            return Ok::<_, Infallible>(if known {
                                port_forward(req, &pod, |port| pod_port(pods, &pod, port))
                            } else {
                                not_found_pod(&pod)
                            });
                        }
                        if req.method() == Method::GET {
                            if let Some((pod, port, path)) = pod_proxy(req.uri().path()) {
                                match pod_port(pods, &pod, port) {
                                    Ok(addr) => {
                                        return Ok::<_, Infallible>(forward_get(addr, &path).await)
                                    }
                                    Err(true) => {
                                        return Ok::<_, Infallible>(refused_pod_port(&pod, port))
                                    }
                                    Err(false) => return Ok::<_, Infallible>(not_found_pod(&pod)),
                                }
                            }
                        }
                        if req.method() == Method::POST {
                            if let Some(create) = state.creates.get(req.uri().path()) {
                                let create = create.clone();
                                let sent = read_json(req).await;
                                return Ok::<_, Infallible>(
                                    Response::builder()
                                        .status(StatusCode::CREATED)
                                        .header("content-type", "application/json")
                                        .body(full(create(&sent).to_string()))
                                        .unwrap(),
                                );
                            }
                        }
                        if is_lease(req.uri().path()) {
                            return Ok::<_, Infallible>(lease(&state, &token, req).await);
                        }
                        if req.method() == Method::GET && watch {
                            return Ok::<_, Infallible>(watch_events(&state, &req));
                        }
                        if req.method() == Method::PATCH && state.holds(req.uri().path()) {
                            let path = req.uri().path().to_string();
                            return Ok::<_, Infallible>(patch(&state, &path, req).await);
                        }
                        let store = state.store.lock().unwrap();
                        Ok::<_, Infallible>(answer(&store.lists, store.version, &req))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    let kubeconfig = dir.join("kubeconfig");
    write_kubeconfig(&kubeconfig, &format!("http://{addr}"), "fake");
    FakeApi {
        addr,
        kubeconfig,
        seen,
        state,
        dir: dir.to_path_buf(),
    }
}

/// A request's body as JSON (Null when it is not).
async fn read_json(req: Request<Incoming>) -> Value {
    let sent = http_body_util::BodyExt::collect(req.into_body())
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    serde_json::from_slice(&sent).unwrap_or(Value::Null)
}

fn json_response(status: StatusCode, body: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(full(body.to_string()))
        .unwrap()
}

/// The API server's refusal of a write: `reason` (Conflict,
/// AlreadyExists) with its code 409.
fn conflict(reason: &str, message: String) -> Response<Body> {
    let status = json!({
        "kind": "Status", "apiVersion": "v1", "status": "Failure",
        "message": message, "reason": reason, "code": 409,
    });
    json_response(StatusCode::CONFLICT, &status)
}

fn is_lease(path: &str) -> bool {
    path.starts_with("/apis/coordination.k8s.io/v1/namespaces/")
        && path.split('/').nth(6) == Some("leases")
}

/// A Lease's GET, POST or PUT, as the API server answers them; every
/// write accepted is kept, with `token`, its writer's.
async fn lease(state: &FakeState, token: &str, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let collection = path.split('/').take(7).collect::<Vec<_>>().join("/");
    let namespace = path.split('/').nth(5).unwrap_or_default().to_string();
    let named = path.split('/').nth(7).map(str::to_string);
    let sent = if method == Method::GET {
        Value::Null
    } else {
        read_json(req).await
    };
    let forms = collection_forms(&collection, &namespace);
    let mut store = state.store.lock().unwrap();
    let response = match (&method, named) {
        (&Method::GET, Some(name)) => match store.find(&forms, &namespace, &name) {
            Some((c, i)) => json_response(StatusCode::OK, &store.lists[&c][i]),
            None => not_found("leases.coordination.k8s.io", &name),
        },
        (&Method::POST, None) => {
            let name = sent["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            if store.find(&forms, &namespace, &name).is_some() {
                conflict(
                    "AlreadyExists",
                    format!("leases.coordination.k8s.io \"{name}\" already exists"),
                )
            } else {
                let mut object = sent;
                object["apiVersion"] = json!("coordination.k8s.io/v1");
                object["kind"] = json!("Lease");
                object["metadata"]["namespace"] = json!(namespace);
                let stored = store.write(forms, None, object);
                store.lease_writes.push(LeaseWrite {
                    path: format!("{collection}/{name}"),
                    method: method.to_string(),
                    token: token.to_string(),
                    on_version: None,
                    stored: stored.clone(),
                });
                json_response(StatusCode::CREATED, &stored)
            }
        }
        (&Method::PUT, Some(name)) => match store.find(&forms, &namespace, &name) {
            None => not_found("leases.coordination.k8s.io", &name),
            Some((c, i)) => {
                let current = &store.lists[&c][i]["metadata"]["resourceVersion"];
                if sent["metadata"]["resourceVersion"] != *current {
                    conflict(
                        "Conflict",
                        format!(
                            "Operation cannot be fulfilled on leases.coordination.k8s.io \"{name}\": \
                             the object has been modified; please apply your changes to the latest \
                             version and try again"
                        ),
                    )
                } else {
                    let on_version = current.as_str().map(str::to_string);
                    let mut object = sent;
                    object["apiVersion"] = json!("coordination.k8s.io/v1");
                    object["kind"] = json!("Lease");
                    object["metadata"]["namespace"] = json!(namespace);
                    let stored = store.write(forms, Some((c, i)), object);
                    store.lease_writes.push(LeaseWrite {
                        path,
                        method: method.to_string(),
                        token: token.to_string(),
                        on_version,
                        stored: stored.clone(),
                    });
                    json_response(StatusCode::OK, &stored)
                }
            }
        },
        _ => {
            return Response::builder()
                .status(StatusCode::METHOD_NOT_ALLOWED)
                .body(full("not served by the fake API server"))
                .unwrap()
        }
    };
    let version = store.version;
    drop(store);
    state.changed.send_replace(version);
    response
}

/// A merge patch of an object given (a status write): merged into it.
async fn patch(state: &FakeState, path: &str, req: Request<Incoming>) -> Response<Body> {
    let Some((forms, namespace, name)) = object_of(path) else {
        return not_found("objects", path);
    };
    let sent = read_json(req).await;
    let mut store = state.store.lock().unwrap();
    let Some((c, i)) = store.find(&forms, &namespace, &name) else {
        return not_found(forms[0].rsplit('/').next().unwrap_or_default(), &name);
    };
    let mut object = store.lists[&c][i].clone();
    merge_patch(&mut object, &sent);
    let stored = store.write(forms, Some((c, i)), object);
    let version = store.version;
    drop(store);
    state.changed.send_replace(version);
    json_response(StatusCode::OK, &stored)
}

/// A watch of a collection: every change since the resourceVersion it asks
/// from (the server's current one if none), then each change as it comes.
fn watch_events(state: &Arc<FakeState>, req: &Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    let mut changed = state.changed.subscribe();
    changed.mark_unchanged();
    let since = {
        let current = state.store.lock().unwrap().version;
        req.uri()
            .query()
            .unwrap_or("")
            .split('&')
            .find_map(|kv| kv.strip_prefix("resourceVersion="))
            .and_then(|v| v.parse().ok())
            .unwrap_or(current)
    };
    let state = state.clone();
    changed.mark_unchanged();
    let events = futures_util::stream::unfold((since, changed), move |(since, mut changed)| {
        let state = state.clone();
        let path = path.clone();
        async move {
            loop {
                let (batch, version) = {
                    let store = state.store.lock().unwrap();
                    let batch: String = store
                        .events
                        .iter()
                        .filter(|(v, forms, _)| *v > since && forms.contains(&path))
                        .map(|(_, _, e)| format!("{e}\n"))
                        .collect();
                    (batch, store.version)
                };
                if !batch.is_empty() {
                    let frame = Frame::data(Bytes::from(batch));
                    return Some((Ok::<_, BoxError>(frame), (version, changed)));
                }
                if changed.changed().await.is_err() {
                    return None;
                }
            }
        }
    });
    Response::builder()
        .header("content-type", "application/json")
        .body(http_body_util::BodyExt::boxed_unsync(StreamBody::new(
            events,
        )))
        .unwrap()
}

/// Writes a kubeconfig at `path` whose one context, `context` (its
/// current one), names the API server at `server` with a bearer token.
pub fn write_kubeconfig(path: &Path, server: &str, context: &str) {
    write_kubeconfig_with_token(path, server, context, "fake-token");
}

/// [`write_kubeconfig`] with `token` as the bearer token.
pub fn write_kubeconfig_with_token(path: &Path, server: &str, context: &str, token: &str) {
    std::fs::write(
        path,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: {context}\n\
             clusters: [{{name: {context}, cluster: {{server: \"{server}\"}}}}]\n\
             users: [{{name: {context}, user: {{token: {token}}}}}]\n\
             contexts: [{{name: {context}, context: {{cluster: {context}, user: {context}}}}}]\n"
        ),
    )
    .unwrap();
}

fn answer(
    objects: &BTreeMap<String, Vec<Value>>,
    version: u64,
    req: &Request<Incoming>,
) -> Response<Body> {
    let path = req.uri().path();
    let query = req.uri().query().unwrap_or("");
    let listable = path.starts_with("/api/") || path.starts_with("/apis/");
    if req.method() == Method::PATCH && listable {
        // A status write to an object not given: taken, and answered with
        // the object's name.
        let parts: Vec<&str> = path.split('/').collect();
        let name = parts.iter().rev().nth(1).copied().unwrap_or_default();
        let namespace = parts
            .iter()
            .position(|p| *p == "namespaces")
            .and_then(|i| parts.get(i + 1))
            .copied()
            .unwrap_or_default();
        let object = json!({ "metadata": { "name": name, "namespace": namespace } });
        return Response::builder()
            .header("content-type", "application/json")
            .body(full(object.to_string()))
            .unwrap();
    }
    if req.method() == Method::GET && path == "/version" {
        // The server's version, when given as the one object at "/version".
        if let Some(info) = objects.get(path).and_then(|v| v.first()) {
            return Response::builder()
                .header("content-type", "application/json")
                .body(full(info.to_string()))
                .unwrap();
        }
    }
    if req.method() != Method::GET || !listable {
        return Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body(full("not served by the fake API server"))
            .unwrap();
    }
    // A named object of a collection given: it, or the API server's 404.
    if let Some((collection, name)) = path.rsplit_once('/') {
        if let (false, Some(items)) = (objects.contains_key(path), objects.get(collection)) {
            let resource = collection.rsplit('/').next().unwrap_or_default();
            return match items.iter().find(|o| o["metadata"]["name"] == name) {
                Some(object) => Response::builder()
                    .header("content-type", "application/json")
                    .body(full(object.to_string()))
                    .unwrap(),
                None => not_found(resource, name),
            };
        }
    }
    let mut items = objects.get(path).cloned().unwrap_or_default();
    if let Some(selector) = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("labelSelector="))
    {
        items.retain(|o| selected(o, selector));
    }
    let list = json!({
        "apiVersion": "v1",
        "kind": "List",
        "metadata": { "resourceVersion": version.to_string() },
        "items": items,
    });
    Response::builder()
        .header("content-type", "application/json")
        .body(full(list.to_string()))
        .unwrap()
}

/// The three binaries running, as far as a test without a cluster can
/// run them: the chart's control plane and injector (their Deployments,
/// against the API server `env` names) and a proxy on a static snapshot;
/// each serving `/metrics` once [`MeshBinaries::start`] returns.
pub struct MeshBinaries {
    pub control_plane: Container,
    /// Where the control plane's metrics are (its `prometheus.io/port`).
    pub control_plane_metrics: SocketAddr,
    pub injector: Container,
    /// Where the injector's metrics are (its `prometheus.io/port`).
    pub injector_metrics: SocketAddr,
    pub proxy: crate::StaticProxy,
}

impl MeshBinaries {
    pub async fn start(rendered: &Rendered, env: &[(&str, &str)]) -> Self {
        let (control_plane, control_plane_metrics) = Container::start_scraped(
            rendered,
            "outrigger-control-plane",
            "outrigger-control-plane",
            env,
        );
        let (injector, injector_metrics) =
            Container::start_scraped(rendered, "outrigger-injector", "outrigger-injector", env);
        let proxy = crate::StaticProxy::start("web", "shop");
        for addr in [control_plane_metrics, injector_metrics, proxy.admin] {
            let up = crate::eventually(std::time::Duration::from_secs(30), || async move {
                matches!(crate::try_get(addr, "/metrics").await, Ok((200, _)))
            })
            .await;
            assert!(
                up,
                "nothing serves /metrics on {addr}: {}{}",
                control_plane.logs(),
                injector.logs()
            );
        }
        MeshBinaries {
            control_plane,
            control_plane_metrics,
            injector,
            injector_metrics,
            proxy,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_proxy_and_port_forward_paths_name_the_pod() {
        assert_eq!(
            pod_proxy("/api/v1/namespaces/shop/pods/web-0:4191/proxy/metrics"),
            Some(("shop/web-0".into(), 4191, "/metrics".into()))
        );
        assert_eq!(
            pod_proxy("/api/v1/namespaces/shop/pods/web-0:9090/proxy"),
            Some(("shop/web-0".into(), 9090, "/".into()))
        );
        let addr = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
        let pods = BTreeMap::from([
            ("shop/web-0".to_string(), addr(1)),
            ("shop/cp-0:9090".to_string(), addr(2)),
        ]);
        assert_eq!(pod_port(&pods, "shop/web-0", 4191), Ok(addr(1)));
        assert_eq!(pod_port(&pods, "shop/web-0", 8080), Err(true));
        assert_eq!(pod_port(&pods, "shop/cp-0", 9090), Ok(addr(2)));
        assert_eq!(pod_port(&pods, "shop/cp-0", 4191), Err(true));
        assert_eq!(pod_port(&pods, "shop/gone-0", 4191), Err(false));
        assert_eq!(
            PROXY_ADMIN_PORT,
            outrigger_injector::config::Ports::default().admin
        );
        assert_eq!(pod_proxy("/api/v1/namespaces/shop/pods"), None);
        let pod =
            json!({ "metadata": { "labels": { "app.kubernetes.io/name": "cp", "tier": "a" } } });
        assert!(selected(&pod, "app.kubernetes.io%2Fname%3Dcp%2Ctier%3Da"));
        assert!(selected(&pod, "tier==a"));
        assert!(!selected(&pod, "app.kubernetes.io%2Fname%3Dinjector"));
        assert!(selected(&pod, ""));
        assert_eq!(
            pod_port_forward("/api/v1/namespaces/shop/pods/web-0/portforward"),
            Some("shop/web-0".into())
        );
        assert_eq!(pod_port_forward("/api/v1/namespaces/shop/pods/web-0"), None);
    }

    #[test]
    fn objects_are_found_under_either_form_of_their_collection() {
        assert_eq!(
            collection_forms("/apis/outrigger.dev/v1alpha1/virtualservices", "shop"),
            [
                "/apis/outrigger.dev/v1alpha1/virtualservices".to_string(),
                "/apis/outrigger.dev/v1alpha1/namespaces/shop/virtualservices".to_string(),
            ]
        );
        assert_eq!(
            collection_forms("/api/v1/namespaces/shop/pods", "shop")[0],
            "/api/v1/pods"
        );
        let (forms, ns, name) =
            object_of("/apis/outrigger.dev/v1alpha1/namespaces/shop/virtualservices/web/status")
                .unwrap();
        assert_eq!(
            (forms[0].as_str(), ns.as_str(), name.as_str()),
            (
                "/apis/outrigger.dev/v1alpha1/virtualservices",
                "shop",
                "web"
            )
        );
        assert_eq!(object_of("/api/v1/namespaces/shop"), None);
        let mut store = FakeStore {
            lists: BTreeMap::from([(
                forms[0].clone(),
                vec![json!({ "metadata": { "name": "web", "namespace": "shop" } })],
            )]),
            version: 1,
            events: Vec::new(),
            lease_writes: Vec::new(),
        };
        let at = store
            .find(&forms, "shop", "web")
            .expect("found cluster-wide");
        let written = store.write(
            forms.clone(),
            Some(at),
            json!({ "metadata": { "name": "web", "namespace": "shop" }, "status": {} }),
        );
        assert_eq!(written["metadata"]["resourceVersion"], "2");
        assert_eq!(store.events[0].2["type"], "MODIFIED");
        assert_eq!(store.find(&forms, "other", "web"), None);
    }

    #[test]
    fn a_merge_patch_replaces_merges_and_removes() {
        let mut target = json!({ "a": 1, "status": { "x": 1, "y": [1] }, "gone": true });
        merge_patch(
            &mut target,
            &json!({ "status": { "y": [2], "z": "new" }, "gone": null }),
        );
        assert_eq!(
            target,
            json!({ "a": 1, "status": { "x": 1, "y": [2], "z": "new" } })
        );
    }

    #[test]
    fn a_requests_namespace_is_that_of_its_resource() {
        let req = |path: &str| ApiRequest {
            method: "GET".into(),
            path: path.into(),
            watch: false,
            token: String::new(),
        };
        let lease = req("/apis/coordination.k8s.io/v1/namespaces/outrigger-system/leases/x");
        assert_eq!(lease.namespace(), Some("outrigger-system"));
        assert_eq!(req("/api/v1/namespaces/shop").namespace(), None);
        assert_eq!(req("/api/v1/pods").namespace(), None);
    }

    #[test]
    fn rewrites_stand_alone_matches_once() {
        let rules = [
            ("0.0.0.0:4191".to_string(), "127.0.0.1:41912".to_string()),
            ("127.0.0.1:4191".to_string(), "127.0.0.1:41912".to_string()),
            ("127.0.0.1:41912".to_string(), "127.0.0.1:1".to_string()),
            (
                "/var/run/outrigger".to_string(),
                "/tmp/r/var/run/outrigger".to_string(),
            ),
            (
                "/var/run/outrigger/ca".to_string(),
                "/tmp/r/var/run/outrigger/ca".to_string(),
            ),
        ];
        for (text, want) in [
            // A replacement is not matched again (41912 is a rule's `from` too).
            ("0.0.0.0:4191", "127.0.0.1:41912"),
            (
                r#"{"bind":"0.0.0.0:4191"}"#,
                r#"{"bind":"127.0.0.1:41912"}"#,
            ),
            // Inside a longer port or address: untouched.
            ("0.0.0.0:41910", "0.0.0.0:41910"),
            ("10.0.0.0:4191", "10.0.0.0:4191"),
            (
                "http://127.0.0.1:4191/ready",
                "http://127.0.0.1:41912/ready",
            ),
            // The longest path wins, and a rewritten path is not rewritten again.
            (
                "--ca=/var/run/outrigger/ca/ca.pem",
                "--ca=/tmp/r/var/run/outrigger/ca/ca.pem",
            ),
            (
                "/var/run/outrigger/roots.pem",
                "/tmp/r/var/run/outrigger/roots.pem",
            ),
            ("/var/run/outrigger-x/a", "/var/run/outrigger-x/a"),
            ("/srv/var/run/outrigger/a", "/srv/var/run/outrigger/a"),
        ] {
            assert_eq!(rewrite_once(text, &rules), want, "{text}");
        }
    }

    #[test]
    fn requests_need_what_the_authorizer_reads() {
        let rbac = |method: &str, path: &str, watch: bool| {
            ApiRequest {
                method: method.into(),
                path: path.into(),
                watch,
                token: String::new(),
            }
            .rbac()
        };
        for (method, path, watch, want) in [
            (
                "GET",
                "/api/v1/namespaces",
                false,
                ("", "namespaces", "list"),
            ),
            (
                "GET",
                "/api/v1/namespaces",
                true,
                ("", "namespaces", "watch"),
            ),
            (
                "GET",
                "/api/v1/namespaces/shop",
                false,
                ("", "namespaces", "get"),
            ),
            (
                "GET",
                "/api/v1/namespaces/shop/pods",
                false,
                ("", "pods", "list"),
            ),
            (
                "GET",
                "/api/v1/namespaces/shop/pods/web-1",
                false,
                ("", "pods", "get"),
            ),
            (
                "PATCH",
                "/apis/outrigger.dev/v1alpha1/namespaces/shop/virtualservices/web/status",
                false,
                ("outrigger.dev", "virtualservices/status", "patch"),
            ),
            (
                "PATCH",
                "/apis/outrigger.dev/v1alpha1/namespaces/shop/virtualservices/web",
                false,
                ("outrigger.dev", "virtualservices", "patch"),
            ),
            (
                "POST",
                "/apis/authentication.k8s.io/v1/tokenreviews",
                false,
                ("authentication.k8s.io", "tokenreviews", "create"),
            ),
            (
                "GET",
                "/apis/discovery.k8s.io/v1/endpointslices",
                true,
                ("discovery.k8s.io", "endpointslices", "watch"),
            ),
        ] {
            let (g, r, v) = want;
            assert_eq!(
                rbac(method, path, watch),
                (g.to_string(), r.to_string(), v.to_string()),
                "{method} {path} (watch: {watch})"
            );
        }
    }
}
