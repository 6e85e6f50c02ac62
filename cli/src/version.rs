//! `outrigger version`: this client's version, the control plane's and the
//! injector's (the tag of the image their Deployments run, read as the
//! injector reads the proxy's: [`proxy_version`]), and with `--proxies`
//! each meshed pod's proxy (the image of its `outrigger-proxy` container).
//!
//! [`render`] is what to print, pure, and so are [`component`] and
//! [`proxies`]; [`fetch`] is the edge.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::Api;
use outrigger_injector::inject::{proxy_version, PROXY_CONTAINER};
use serde::Serialize;

use crate::output::{self, Format, OutputError};

/// The chart's Deployments and their containers.
pub const CONTROL_PLANE: (&str, &str) = ("outrigger-control-plane", "control-plane");
pub const INJECTOR: (&str, &str) = ("outrigger-injector", "injector");

/// This binary's version, and the commit it was built from when the build
/// said (`OUTRIGGER_GIT_SHA` at build time, as the Dockerfile or CI may set).
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
            version: env!("CARGO_PKG_VERSION").to_string(),
            git_sha: option_env!("OUTRIGGER_GIT_SHA").map(str::to_string),
        }
    }
}

/// A component of the mesh as its Deployment runs it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Component {
    pub version: String,
    pub image: String,
}

/// One meshed pod's proxy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Proxy {
    pub namespace: String,
    pub pod: String,
    pub version: String,
    pub image: String,
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

/// The version of `container` of `deploy` (by name, else its first one).
pub fn component(deploy: &Deployment, container: &str) -> Option<Component> {
    let containers = &deploy.spec.as_ref()?.template.spec.as_ref()?.containers;
    let c = containers
        .iter()
        .find(|c| c.name == container)
        .or(containers.first())?;
    let image = c.image.clone()?;
    Some(Component {
        version: proxy_version(&image),
        image,
    })
}

/// The meshed pods' proxies (the pods with an `outrigger-proxy` container,
/// native sidecar or not), by namespace and name.
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
                image,
            })
        })
        .collect();
    out.sort_by(|a, b| (&a.namespace, &a.pod).cmp(&(&b.namespace, &b.pod)));
    out
}

/// What `outrigger version` prints.
pub fn render(v: &Versions, format: Format) -> Result<String, OutputError> {
    if let Some(text) = output::structured(format, v)? {
        return Ok(text);
    }
    let mut out = format!("Client version:        {}", v.client.version);
    if let Some(sha) = &v.client.git_sha {
        out.push_str(&format!(" ({sha})"));
    }
    out.push('\n');
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
        let line = match c {
            Some(c) => format!("{label}: {:<width$}{} ({})\n", "", c.version, c.image, width = 21 - label.len()),
            None => format!(
                "{label}: {:<width$}not found (no deployment/{deploy} in namespace {}; pass --mesh-namespace)\n",
                "",
                server.namespace,
                width = 21 - label.len()
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
                .map(|p| vec![p.namespace.clone(), p.pod.clone(), p.version.clone()])
                .collect();
            out.push('\n');
            out.push_str(&output::table(
                &["NAMESPACE", "POD", "PROXY VERSION"],
                &rows,
            ));
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

/// The server side: the chart's Deployments in `namespace`, and with
/// `proxies_in`, the pods of that namespace (of every namespace for
/// `Some(None)`).
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
    let find = |(name, container): (&str, &str)| {
        list.items
            .iter()
            .find(|d| d.metadata.name.as_deref() == Some(name))
            .and_then(|d| component(d, container))
    };
    let mut server = Server {
        namespace: namespace.to_string(),
        control_plane: find(CONTROL_PLANE),
        injector: find(INJECTOR),
        proxies: None,
    };
    if let Some(ns) = proxies_in {
        let api: Api<Pod> = match ns {
            Some(ns) => Api::namespaced(client, ns),
            None => Api::all(client),
        };
        let pods = api
            .list(&ListParams::default())
            .await
            .map_err(|source| FetchError {
                what: "the pods".into(),
                source,
            })?;
        server.proxies = Some(proxies(&pods.items));
    }
    Ok(server)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn versions(proxies: Option<Vec<Proxy>>) -> Versions {
        Versions {
            client: Client {
                version: "0.1.0".into(),
                git_sha: None,
            },
            server: Some(Server {
                namespace: "outrigger-system".into(),
                control_plane: Some(Component {
                    version: "0.1.0".into(),
                    image: "ghcr.io/outrigger/control-plane:0.1.0".into(),
                }),
                injector: None,
                proxies,
            }),
        }
    }

    #[test]
    fn the_table_names_what_is_missing() {
        let v = versions(Some(vec![Proxy {
            namespace: "shop".into(),
            pod: "web-1".into(),
            version: "0.0.9".into(),
            image: "p:0.0.9".into(),
        }]));
        assert_eq!(
            render(&v, Format::Table).unwrap(),
            "Client version:        0.1.0\n\
             Control plane version: 0.1.0 (ghcr.io/outrigger/control-plane:0.1.0)\n\
             Injector version:      not found (no deployment/outrigger-injector in namespace outrigger-system; pass --mesh-namespace)\n\
             \n\
             NAMESPACE  POD    PROXY VERSION\n\
             shop       web-1  0.0.9\n"
        );
        assert!(!v.complete());
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
        let v = versions(None);
        let j: serde_json::Value =
            serde_json::from_str(&render(&v, Format::Json).unwrap()).unwrap();
        assert_eq!(j["client"]["version"], "0.1.0");
        assert_eq!(j["server"]["controlPlane"]["version"], "0.1.0");
        assert_eq!(j["server"]["injector"], serde_json::Value::Null);
        assert_eq!(j["server"].get("proxies"), None);
    }
}
