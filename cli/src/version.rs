//! `outrigger version`: this client's version, and the versions the
//! cluster runs, read from the running processes where they answer:
//!
//! - the control plane and the injector: `outrigger_build_info` from the
//!   `/metrics` of one of their pods, through the API server's pod proxy,
//!   on the port their pod template's `prometheus.io/port` annotation
//!   names (the control plane's plain metrics port, the injector's admin
//!   port);
//! - with `--proxies`, each meshed pod's proxy: the same family from its
//!   admin port's `/metrics` ([`crate::proxy_admin`]).
//!
//! Where a running version cannot be read, the tag of the image the
//! Deployment or pod names stands in (read as the injector reads the
//! proxy's: [`proxy_version`]), and the output says so and why.
//!
//! [`render`], [`component`], [`proxies`] and [`build_info`] are pure;
//! [`fetch`] and [`run`] are the edges.

use std::io::Write as _;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::Api;
use outrigger_injector::inject::{proxy_version, PROXY_CONTAINER};
use serde::Serialize;

use crate::cluster::ClusterArgs;
use crate::output::{self, Format, OutputError};
use crate::proxy_admin::{pod_get, Admin};

/// The chart's Deployments and their containers.
pub const CONTROL_PLANE: (&str, &str) = ("outrigger-control-plane", "control-plane");
pub const INJECTOR: (&str, &str) = ("outrigger-injector", "injector");

/// The pod template annotations that say where a component's metrics are.
pub const PORT_ANNOTATION: &str = "prometheus.io/port";
pub const PATH_ANNOTATION: &str = "prometheus.io/path";

/// `outrigger version`'s flags.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Also each meshed pod's proxy version (in -n's namespace, else in all).
    #[arg(long)]
    pub proxies: bool,
    /// Only the client's version; the cluster is not read.
    #[arg(long, conflicts_with = "proxies")]
    pub client: bool,
    /// Where the mesh is installed (the chart's release namespace).
    #[arg(long, default_value = crate::inject::DEFAULT_MESH_NAMESPACE)]
    pub mesh_namespace: String,
    #[arg(short = 'o', long, value_enum, default_value_t)]
    pub output: Format,
}

/// This binary's version, and the commit it was built from when the build
/// knew it (`outrigger_runtime::build`, as the other binaries report it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Client {
    pub version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub git_sha: Option<String>,
}

impl Client {
    pub fn this() -> Self {
        Self {
            version: outrigger_runtime::build::VERSION.to_string(),
            git_sha: outrigger_runtime::build::git_sha().map(str::to_string),
        }
    }
}

/// Where a version shown was read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Source {
    /// The running process's `outrigger_build_info`.
    Running,
    /// The image tag: the running version could not be read.
    Image,
}

/// What a running process says it is (`outrigger_build_info`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Build {
    pub version: String,
    /// `None` when the build did not know it ("unknown").
    pub git_sha: Option<String>,
}

/// A component of the mesh: its version, from the running process or
/// else from the image its Deployment runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Component {
    pub version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub git_sha: Option<String>,
    pub source: Source,
    /// The pod read (running), or none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    pub image: String,
    /// Why the running version could not be read (source: image).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unreadable: Option<String>,
}

impl Component {
    /// From the image alone, `why` the running version is not known.
    fn from_image(image: String, why: String) -> Self {
        Component {
            version: proxy_version(&image),
            git_sha: None,
            source: Source::Image,
            pod: None,
            image,
            unreadable: Some(why),
        }
    }

    /// The running version read from `pod` replaces the image's.
    fn running(&mut self, pod: String, build: Build) {
        self.version = build.version;
        self.git_sha = build.git_sha;
        self.source = Source::Running;
        self.pod = Some(pod);
        self.unreadable = None;
    }
}

/// One meshed pod's proxy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Proxy {
    pub namespace: String,
    pub pod: String,
    pub version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub git_sha: Option<String>,
    pub source: Source,
    pub image: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unreadable: Option<String>,
}

/// What the cluster runs. `None`: not found where the chart puts it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Server {
    pub namespace: String,
    pub control_plane: Option<Component>,
    pub injector: Option<Component>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxies: Option<Vec<Proxy>>,
}

/// The whole answer, for `-o json|yaml`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Versions {
    pub client: Client,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<Server>,
}

impl Versions {
    /// Whether everything asked for was found (the exit status).
    pub fn complete(&self) -> bool {
        self.server
            .as_ref()
            .is_some_and(|s| s.control_plane.is_some() && s.injector.is_some())
    }
}

/// `outrigger_build_info` in a `/metrics` answer (either text format).
pub fn build_info(metrics: &str) -> Option<Build> {
    let s = crate::prom::parse(metrics)
        .into_iter()
        .find(|s| s.name == "outrigger_build_info")?;
    let version = s.label("version");
    if version.is_empty() {
        return None;
    }
    let sha = s.label("git_sha");
    Some(Build {
        version: version.to_string(),
        git_sha: (!sha.is_empty() && sha != outrigger_runtime::build::UNKNOWN_SHA)
            .then(|| sha.to_string()),
    })
}

/// Where `deploy`'s pods serve their metrics: the port and path its pod
/// template's annotations name.
pub fn metrics_endpoint(deploy: &Deployment) -> Result<(u16, String), String> {
    let annotations = deploy
        .spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.annotations.as_ref());
    let port = annotations
        .and_then(|a| a.get(PORT_ANNOTATION))
        .ok_or_else(|| format!("its pod template has no {PORT_ANNOTATION} annotation"))?;
    let port = port
        .parse()
        .map_err(|_| format!("{PORT_ANNOTATION} {port:?} is not a port"))?;
    let path = annotations
        .and_then(|a| a.get(PATH_ANNOTATION))
        .cloned()
        .unwrap_or_else(|| "/metrics".into());
    Ok((port, path))
}

/// The image of `container` of `deploy` (by name, else its first one), as
/// a component whose running version is not read yet.
pub fn component(deploy: &Deployment, container: &str) -> Option<Component> {
    let containers = &deploy.spec.as_ref()?.template.spec.as_ref()?.containers;
    let c = containers
        .iter()
        .find(|c| c.name == container)
        .or(containers.first())?;
    let image = c.image.clone()?;
    Some(Component::from_image(image, "not read".into()))
}

/// The meshed pods' proxies (the pods with an `outrigger-proxy` container,
/// native sidecar or not), by namespace and name, with their image's
/// version until the running one is read.
pub fn proxies(pods: &[Pod]) -> Vec<Proxy> {
    let mut out: Vec<Proxy> = pods
        .iter()
        .filter_map(|p| {
            let spec = p.spec.as_ref()?;
            let proxy = spec
                .init_containers
                .iter()
                .flatten()
                .chain(&spec.containers)
                .find(|c| c.name == PROXY_CONTAINER)?;
            let image = proxy.image.clone().unwrap_or_default();
            Some(Proxy {
                namespace: p.metadata.namespace.clone().unwrap_or_default(),
                pod: p.metadata.name.clone().unwrap_or_default(),
                version: proxy_version(&image),
                git_sha: None,
                source: Source::Image,
                image,
                unreadable: Some("not read".into()),
            })
        })
        .collect();
    out.sort_by(|a, b| (&a.namespace, &a.pod).cmp(&(&b.namespace, &b.pod)));
    out
}

/// A commit as printed: its first 12 characters.
fn short(sha: &str) -> &str {
    sha.get(..12).unwrap_or(sha)
}

/// `version (commit)`, the commit shortened.
fn with_sha(version: &str, sha: Option<&str>) -> String {
    match sha {
        Some(sha) => format!("{version} ({})", short(sha)),
        None => version.to_string(),
    }
}

/// What `outrigger version` prints.
pub fn render(v: &Versions, format: Format) -> Result<String, OutputError> {
    if let Some(text) = output::structured(format, v)? {
        return Ok(text);
    }
    let mut out = format!(
        "Client version:        {}\n",
        with_sha(&v.client.version, v.client.git_sha.as_deref())
    );
    let Some(server) = &v.server else {
        return Ok(out);
    };
    for (label, c, (deploy, _)) in [
        (
            "Control plane version",
            &server.control_plane,
            CONTROL_PLANE,
        ),
        ("Injector version", &server.injector, INJECTOR),
    ] {
        let pad = " ".repeat(21 - label.len());
        let line = match c {
            Some(c) => match c.source {
                Source::Running => format!(
                    "{label}: {pad}{} ({}running in pod {}; image {})\n",
                    c.version,
                    c.git_sha
                        .as_deref()
                        .map(|sha| format!("commit {}, ", short(sha)))
                        .unwrap_or_default(),
                    c.pod.as_deref().unwrap_or(""),
                    c.image
                ),
                Source::Image => format!(
                    "{label}: {pad}{} (image tag of {}; the running version is unknown: {})\n",
                    c.version,
                    c.image,
                    c.unreadable.as_deref().unwrap_or("")
                ),
            },
            None => format!(
                "{label}: {pad}not found (no deployment/{deploy} in namespace {}; pass --mesh-namespace)\n",
                server.namespace,
            ),
        };
        out.push_str(&line);
    }
    if let Some(proxies) = &server.proxies {
        if proxies.is_empty() {
            out.push_str("\nNo meshed pods.\n");
        } else {
            let rows: Vec<Vec<String>> = proxies
                .iter()
                .map(|p| {
                    vec![
                        p.namespace.clone(),
                        p.pod.clone(),
                        with_sha(&p.version, p.git_sha.as_deref()),
                        match p.source {
                            Source::Running => "running".into(),
                            Source::Image => "image tag".into(),
                        },
                    ]
                })
                .collect();
            out.push('\n');
            out.push_str(&output::table(
                &["NAMESPACE", "POD", "PROXY VERSION", "FROM"],
                &rows,
            ));
            let unread: Vec<&Proxy> = proxies
                .iter()
                .filter(|p| p.source == Source::Image)
                .collect();
            if let Some(first) = unread.first() {
                out.push_str(&format!(
                    "\nThe running version of {} of {} proxies could not be read; their image tag \
                     is shown (first: {}/{}: {})\n",
                    unread.len(),
                    proxies.len(),
                    first.namespace,
                    first.pod,
                    first.unreadable.as_deref().unwrap_or("")
                ));
            }
        }
    }
    Ok(out)
}

#[derive(Debug, thiserror::Error)]
#[error("cannot read {what} from the cluster: {source}")]
pub struct FetchError {
    pub what: String,
    pub source: kube::Error,
}

/// The running version of `deploy`'s component: the first of its pods
/// (by name) whose metrics answer with `outrigger_build_info`.
async fn read_running(
    client: &kube::Client,
    namespace: &str,
    deploy: &Deployment,
    c: &mut Component,
) {
    let (port, path) = match metrics_endpoint(deploy) {
        Ok(e) => e,
        Err(why) => {
            c.unreadable = Some(why);
            return;
        }
    };
    let selector = deploy
        .spec
        .as_ref()
        .and_then(|s| s.selector.match_labels.as_ref())
        .map(|labels| {
            labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let mut pods = match pods.list(&ListParams::default().labels(&selector)).await {
        Ok(list) => list.items,
        Err(e) => {
            c.unreadable = Some(format!("cannot list its pods ({selector}): {e}"));
            return;
        }
    };
    pods.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    if pods.is_empty() {
        c.unreadable = Some(format!(
            "no pod matches {selector} in namespace {namespace}"
        ));
        return;
    }
    let mut why = String::new();
    for pod in pods {
        let name = pod.metadata.name.unwrap_or_default();
        match pod_get(client, namespace, &name, port, &path).await {
            Ok(text) => match build_info(&text) {
                Some(b) => return c.running(name, b),
                None => why = format!("pod {name}:{port}{path} has no outrigger_build_info"),
            },
            Err(e) => {
                why = format!(
                "GET {path} from pod {namespace}/{name}:{port} through the API server failed: {e} \
                     (is the pod running, and may you get pods/proxy there?)"
            )
            }
        }
    }
    c.unreadable = Some(why);
}

/// A proxy's running version, from its admin port's `/metrics`.
async fn read_proxy(client: kube::Client, mut p: Proxy) -> Proxy {
    let admin = Admin::Pod {
        client,
        namespace: p.namespace.clone(),
        name: p.pod.clone(),
    };
    match admin.get("/metrics").await {
        Ok(text) => match build_info(&text) {
            Some(b) => {
                p.version = b.version;
                p.git_sha = b.git_sha;
                p.source = Source::Running;
                p.unreadable = None;
            }
            None => p.unreadable = Some("its /metrics has no outrigger_build_info".into()),
        },
        Err(e) => p.unreadable = Some(e.to_string()),
    }
    p
}

/// The server side: the chart's Deployments in `namespace` and their
/// running versions, and with `proxies_in`, the proxies of that
/// namespace's pods (of every namespace for `Some(None)`).
pub async fn fetch(
    client: kube::Client,
    namespace: &str,
    proxies_in: Option<Option<&str>>,
) -> Result<Server, FetchError> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let list = deployments
        .list(&ListParams::default())
        .await
        .map_err(|source| FetchError {
            what: format!("the deployments in namespace {namespace}"),
            source,
        })?;
    let mut found = Vec::new();
    for (name, container) in [CONTROL_PLANE, INJECTOR] {
        let deploy = list
            .items
            .iter()
            .find(|d| d.metadata.name.as_deref() == Some(name));
        let mut c = deploy.and_then(|d| component(d, container));
        if let (Some(d), Some(c)) = (deploy, c.as_mut()) {
            read_running(&client, namespace, d, c).await;
        }
        found.push(c);
    }
    let injector = found.pop().flatten();
    let control_plane = found.pop().flatten();
    let mut server = Server {
        namespace: namespace.to_string(),
        control_plane,
        injector,
        proxies: None,
    };
    if let Some(ns) = proxies_in {
        let api: Api<Pod> = match ns {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        };
        let pods = api
            .list(&ListParams::default())
            .await
            .map_err(|source| FetchError {
                what: "the pods".into(),
                source,
            })?;
        let mut reads = tokio::task::JoinSet::new();
        for (i, p) in proxies(&pods.items).into_iter().enumerate() {
            let client = client.clone();
            reads.spawn(async move { (i, read_proxy(client, p).await) });
        }
        let mut read: Vec<(usize, Proxy)> = reads.join_all().await;
        read.sort_by_key(|(i, _)| *i);
        server.proxies = Some(read.into_iter().map(|(_, p)| p).collect());
    }
    Ok(server)
}

/// `outrigger version`: prints what it found; exits 1 when the cluster is
/// unreachable or a component is missing.
pub async fn run(cluster: &ClusterArgs, args: Args) -> anyhow::Result<()> {
    let mut versions = Versions {
        client: Client::this(),
        server: None,
    };
    let print = |v: &Versions| -> anyhow::Result<()> {
        let mut out = std::io::stdout().lock();
        out.write_all(render(v, args.output)?.as_bytes())?;
        out.flush()?;
        Ok(())
    };
    if args.client {
        return print(&versions);
    }
    let proxies_in = args.proxies.then_some(cluster.namespace.as_deref());
    let server = match cluster.client().await {
        Ok(client) => fetch(client, &args.mesh_namespace, proxies_in)
            .await
            .map_err(anyhow::Error::from),
        Err(e) => Err(e.into()),
    };
    match server {
        Ok(server) => versions.server = Some(server),
        Err(e) => {
            print(&versions)?;
            eprintln!(
                "Error: the cluster is unreachable: {e:#} (check --kubeconfig and --context; \
                 --client prints the client's version alone)"
            );
            std::process::exit(1);
        }
    }
    print(&versions)?;
    if !versions.complete() {
        std::process::exit(1);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn versions(proxies: Option<Vec<Proxy>>) -> Versions {
        let mut cp = Component::from_image(
            "ghcr.io/outrigger/control-plane:0.1.0".into(),
            "not read".into(),
        );
        cp.running(
            "outrigger-control-plane-7c9-x".into(),
            Build {
                version: "0.1.1".into(),
                git_sha: Some("0123456789abcdef0123".into()),
            },
        );
        Versions {
            client: Client {
                version: "0.1.0".into(),
                git_sha: None,
            },
            server: Some(Server {
                namespace: "outrigger-system".into(),
                control_plane: Some(cp),
                injector: None,
                proxies,
            }),
        }
    }

    fn proxy(pod: &str, version: &str, source: Source) -> Proxy {
        Proxy {
            namespace: "shop".into(),
            pod: pod.into(),
            version: version.into(),
            git_sha: None,
            source,
            image: format!("p:{version}"),
            unreadable: (source == Source::Image).then(|| "connection refused".into()),
        }
    }

    #[test]
    fn the_table_says_where_each_version_was_read_and_what_is_missing() {
        let v = versions(Some(vec![
            proxy("web-1", "0.1.1", Source::Running),
            proxy("web-2", "0.0.9", Source::Image),
        ]));
        assert_eq!(
            render(&v, Format::Table).unwrap(),
            "Client version:        0.1.0\n\
             Control plane version: 0.1.1 (commit 0123456789ab, running in pod outrigger-control-plane-7c9-x; image ghcr.io/outrigger/control-plane:0.1.0)\n\
             Injector version:      not found (no deployment/outrigger-injector in namespace outrigger-system; pass --mesh-namespace)\n\
             \n\
             NAMESPACE  POD    PROXY VERSION  FROM\n\
             shop       web-1  0.1.1          running\n\
             shop       web-2  0.0.9          image tag\n\
             \n\
             The running version of 1 of 2 proxies could not be read; their image tag is shown (first: shop/web-2: connection refused)\n"
        );
        assert!(!v.complete());
        let mut v = v;
        let server = v.server.as_mut().unwrap();
        server.control_plane = Some(Component::from_image(
            "r/control-plane:0.1.0".into(),
            "no pod matches app=x in namespace outrigger-system".into(),
        ));
        server.proxies = None;
        assert_eq!(
            render(&v, Format::Table).unwrap().lines().nth(1).unwrap(),
            "Control plane version: 0.1.0 (image tag of r/control-plane:0.1.0; the running \
             version is unknown: no pod matches app=x in namespace outrigger-system)"
        );
    }

    #[test]
    fn build_info_from_either_text_format() {
        let classic = "# TYPE outrigger_build_info gauge\n\
            outrigger_build_info{version=\"0.2.0\",git_sha=\"abc123\"} 1\n\
            process_open_fds 9\n";
        assert_eq!(
            build_info(classic),
            Some(Build {
                version: "0.2.0".into(),
                git_sha: Some("abc123".into())
            })
        );
        let unknown = "outrigger_build_info{version=\"0.2.0\",git_sha=\"unknown\"} 1\n# EOF\n";
        assert_eq!(build_info(unknown).unwrap().git_sha, None);
        assert_eq!(build_info("process_open_fds 9\n"), None);
        assert_eq!(build_info("outrigger_build_info{git_sha=\"a\"} 1\n"), None);
    }

    #[test]
    fn the_metrics_endpoint_is_the_pod_templates_annotation() {
        let deploy = |annotations: serde_json::Value| -> Deployment {
            serde_json::from_value(json!({"metadata": {"name": "d"},
                "spec": {"selector": {}, "template": {"metadata": {"annotations": annotations}}}}))
            .unwrap()
        };
        assert_eq!(
            metrics_endpoint(&deploy(json!({"prometheus.io/port": "15014"}))),
            Ok((15014, "/metrics".into()))
        );
        assert_eq!(
            metrics_endpoint(&deploy(
                json!({"prometheus.io/port": "9443", "prometheus.io/path": "/m"})
            )),
            Ok((9443, "/m".into()))
        );
        assert_eq!(
            metrics_endpoint(&deploy(json!({"prometheus.io/port": "https"}))),
            Err("prometheus.io/port \"https\" is not a port".into())
        );
        assert_eq!(
            metrics_endpoint(&deploy(json!({}))),
            Err("its pod template has no prometheus.io/port annotation".into())
        );
    }

    #[test]
    fn proxies_are_the_pods_with_the_proxy_container() {
        let pod = |name: &str, init: serde_json::Value, containers: serde_json::Value| -> Pod {
            serde_json::from_value(json!({"metadata": {"name": name, "namespace": "shop"},
                "spec": {"initContainers": init, "containers": containers}}))
            .unwrap()
        };
        let pods = [
            pod(
                "native",
                json!([{"name": "outrigger-init", "image": "r/proxy:0.2.0"},
                       {"name": "outrigger-proxy", "image": "r/proxy:0.2.0"}]),
                json!([{"name": "app", "image": "app:1"}]),
            ),
            pod(
                "classic",
                json!([]),
                json!([{"name": "outrigger-proxy", "image": "r:5000/proxy@sha256:ab"},
                       {"name": "app", "image": "app:1"}]),
            ),
            pod(
                "plain",
                json!([]),
                json!([{"name": "app", "image": "app:1"}]),
            ),
        ];
        let got: Vec<(String, String)> = proxies(&pods)
            .into_iter()
            .map(|p| (p.pod, p.version))
            .collect();
        assert_eq!(
            got,
            vec![
                ("classic".into(), "sha256:ab".into()),
                ("native".into(), "0.2.0".into())
            ]
        );
    }

    #[test]
    fn json_carries_the_same_data() {
        let v = versions(Some(vec![proxy("web-2", "0.0.9", Source::Image)]));
        let j: serde_json::Value =
            serde_json::from_str(&render(&v, Format::Json).unwrap()).unwrap();
        assert_eq!(j["client"]["version"], "0.1.0");
        assert_eq!(j["server"]["controlPlane"]["version"], "0.1.1");
        assert_eq!(j["server"]["controlPlane"]["source"], "running");
        assert_eq!(
            j["server"]["controlPlane"]["gitSha"],
            "0123456789abcdef0123"
        );
        assert_eq!(j["server"]["injector"], serde_json::Value::Null);
        assert_eq!(j["server"]["proxies"][0]["source"], "image");
        assert_eq!(
            j["server"]["proxies"][0]["unreadable"],
            "connection refused"
        );
    }
}
