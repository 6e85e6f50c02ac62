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

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot read the kubeconfig {path}: {source}")]
    Read {
        path: PathBuf,
        source: kube::config::KubeconfigError,
    },
    #[error("cannot use the kubeconfig (context {context}): {source}")]
    Config {
        context: String,
        source: kube::config::KubeconfigError,
    },
    #[error("no kubeconfig found and not inside a cluster: {0} (set --kubeconfig or KUBECONFIG)")]
    Infer(kube::config::InferConfigError),
    #[error("cannot build a client for {url}: {source}")]
    Client { url: String, source: kube::Error },
}

impl ClusterArgs {
    /// The client configuration these flags name.
    pub async fn config(&self) -> Result<kube::Config, ClusterError> {
        let options = KubeConfigOptions {
            context: self.context.clone(),
            ..Default::default()
        };
        let context = self.context.clone().unwrap_or_else(|| "current".into());
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
        Ok(config)
    }

    /// A client for the cluster these flags name.
    pub async fn client(&self) -> Result<kube::Client, ClusterError> {
        self.client_from(self.config().await?)
    }

    /// A client for `config` (from [`Self::config`]).
    pub fn client_from(&self, config: kube::Config) -> Result<kube::Client, ClusterError> {
        let url = config.cluster_url.to_string();
        kube::Client::try_from(config).map_err(|source| ClusterError::Client { url, source })
    }
}
