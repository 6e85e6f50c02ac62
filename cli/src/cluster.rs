//! The cluster the user points at: a kube client built from their
//! kubeconfig, as kubectl reads it (`--kubeconfig`, else `KUBECONFIG`,
//! else `~/.kube/config`, else the in-cluster service account), and the
//! context they name.

use std::path::PathBuf;

use kube::config::{KubeConfigOptions, Kubeconfig};

/// The flags every command that talks to the cluster takes.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct ClusterArgs {
    /// The kubeconfig file (default: $KUBECONFIG, then ~/.kube/config).
    #[arg(long, global = true, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use (default: its current context).
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// The namespace (default: the context's namespace, else `default`).
    #[arg(short = 'n', long, global = true)]
    pub namespace: Option<String>,
}

/// The next step when the API server cannot be reached, or the kubeconfig
/// does not name one: every command that talks to the cluster says this.
pub const NEXT_STEP: &str = "check that `kubectl cluster-info` reaches it with the same \
     kubeconfig, or name another cluster with --context or --kubeconfig";

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot read the kubeconfig {path}: {source}: check the file, or pass another with --kubeconfig")]
    Read {
        path: PathBuf,
        source: kube::config::KubeconfigError,
    },
    #[error(
        "cannot use {context} of the kubeconfig: {source}: `kubectl config \
         get-contexts` lists the contexts; pick one with --context"
    )]
    Config {
        /// `context NAME`, or `its current context`.
        context: String,
        source: kube::config::KubeconfigError,
    },
    #[error(
        "no cluster to talk to: no usable kubeconfig ($KUBECONFIG, ~/.kube/config) and not \
         inside a cluster ({0}): pass --kubeconfig, or pick a context with --context"
    )]
    Infer(kube::config::InferConfigError),
    #[error("cannot build a client for {url}: {source}")]
    Client { url: String, source: kube::Error },
    #[error("cannot reach the Kubernetes API server at {server} (context {context}): {cause}: {NEXT_STEP}")]
    Unreachable {
        server: String,
        context: String,
        cause: String,
    },
}

/// Whether `e`, or an error it was caused by, is a request that never
/// reached the API server (refused, unresolvable, timed out, TLS): no
/// answer at all, as opposed to an answer that refuses. The innermost
/// cause's text, for the message.
pub fn never_reached(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut next = Some(e);
    while let Some(err) = next {
        // A kube error, or one boxed to keep its carrier small.
        let kube = err
            .downcast_ref::<kube::Error>()
            .or_else(|| err.downcast_ref::<Box<kube::Error>>().map(|b| &**b));
        if let Some(kube::Error::Service(_) | kube::Error::HyperError(_)) = kube {
            let mut inner: &dyn std::error::Error = err;
            while let Some(source) = inner.source() {
                inner = source;
            }
            return Some(inner.to_string());
        }
        next = err.source();
    }
    None
}

impl ClusterArgs {
    /// The client configuration these flags name.
    pub async fn config(&self) -> Result<kube::Config, ClusterError> {
        let options = KubeConfigOptions {
            context: self.context.clone(),
            ..Default::default()
        };
        let context = self.context.as_ref().map_or_else(
            || "its current context".to_string(),
            |c| format!("context {c}"),
        );
        let mut config = match &self.kubeconfig {
            Some(path) => {
                let file = Kubeconfig::read_from(path).map_err(|source| ClusterError::Read {
                    path: path.clone(),
                    source,
                })?;
                kube::Config::from_custom_kubeconfig(file, &options)
                    .await
                    .map_err(|source| ClusterError::Config { context, source })?
            }
            None if self.context.is_some() => kube::Config::from_kubeconfig(&options)
                .await
                .map_err(|source| ClusterError::Config { context, source })?,
            None => kube::Config::infer().await.map_err(ClusterError::Infer)?,
        };
        if let Some(ns) = &self.namespace {
            config.default_namespace = ns.clone();
        }
        // kube retries 429, 503 and 504 up to 15 times, backing off up to
        // 1000 s: for a controller. A command says what failed at once (a
        // pod's port nothing listens on is a 503 through the pod proxy).
        config.default_retry = false;
        Ok(config)
    }

    /// A client for the cluster these flags name.
    pub async fn client(&self) -> Result<kube::Client, ClusterError> {
        Ok(self.client_in().await?.0)
    }

    /// A client for the cluster these flags name, and the namespace they
    /// name (-n, else the context's, else `default`).
    pub async fn client_in(&self) -> Result<(kube::Client, String), ClusterError> {
        let config = self.config().await?;
        let namespace = config.default_namespace.clone();
        let url = config.cluster_url.to_string();
        let client = kube::Client::try_from(config)
            .map_err(|source| ClusterError::Client { url, source })?;
        Ok((client, namespace))
    }

    /// `e` as [`ClusterError::Unreachable`] when it is a request that never
    /// reached the API server these flags name (see [`never_reached`]).
    pub async fn unreachable(&self, e: &(dyn std::error::Error + 'static)) -> Option<ClusterError> {
        let cause = never_reached(e)?;
        let server = self
            .config()
            .await
            .map_or_else(|_| "?".into(), |c| c.cluster_url.to_string());
        Some(ClusterError::Unreachable {
            server,
            context: self.context_name(),
            cause,
        })
    }

    /// The context these flags use: --context, else the kubeconfig's
    /// current one (`in-cluster` without a kubeconfig).
    fn context_name(&self) -> String {
        if let Some(c) = &self.context {
            return c.clone();
        }
        let file = match &self.kubeconfig {
            Some(path) => Kubeconfig::read_from(path).ok(),
            None => Kubeconfig::read().ok(),
        };
        file.and_then(|k| k.current_context)
            .unwrap_or_else(|| "in-cluster".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_refused_connection_names_the_server_the_context_and_the_next_step() {
        let dir = tempfile::tempdir().unwrap();
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let path = dir.path().join("kubeconfig");
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\ncurrent-context: lab\n\
                 clusters: [{{name: lab, cluster: {{server: \"http://127.0.0.1:{port}\"}}}}]\n\
                 users: [{{name: u, user: {{token: t}}}}]\n\
                 contexts: [{{name: lab, context: {{cluster: lab, user: u}}}}]\n"
            ),
        )
        .unwrap();
        let args = ClusterArgs {
            kubeconfig: Some(path),
            ..Default::default()
        };
        let client = args.client().await.unwrap();
        let err = client.apiserver_version().await.unwrap_err();
        let wrapped = Wrapped(err);
        let e = args.unreachable(&wrapped).await.expect("never reached");
        assert_eq!(
            e.to_string(),
            format!(
                "cannot reach the Kubernetes API server at http://127.0.0.1:{port}/ (context \
                 lab): Connection refused (os error 111): {NEXT_STEP}"
            )
        );
        // Boxed, as some callers carry it.
        let err = client.apiserver_version().await.unwrap_err();
        assert!(never_reached(&Boxed(Box::new(err))).is_some());
        // An answer, even a refusal, is not "unreachable".
        let answered = kube::Error::Api(Box::default());
        assert_eq!(never_reached(&answered), None);
    }

    #[derive(Debug, thiserror::Error)]
    #[error("cannot get pods/proxy")]
    struct Boxed(#[source] Box<kube::Error>);

    /// A caller's error with the kube error as its source.
    #[derive(Debug, thiserror::Error)]
    #[error("cannot list the pods of namespace shop")]
    struct Wrapped(#[source] kube::Error);
}
