//! The `outrigger-injector` command: the mutating admission webhook.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use outrigger_injector::config::MeshConfig;
use outrigger_injector::metrics::Metrics;
use outrigger_injector::namespaces::{self, Namespaces};
use outrigger_injector::server::{self, ReloadingCert};
use outrigger_injector::webhook::Webhook;
use outrigger_runtime::{drain, log, signal};
use tokio::net::TcpListener;

#[derive(Parser)]
#[command(
    name = "outrigger-injector",
    version,
    about = "The Outrigger injector (mutating admission webhook)"
)]
enum Command {
    /// Serve `POST /mutate` over HTTPS, with the namespaces watched from
    /// the cluster (in-cluster config or the kubeconfig).
    Run {
        /// The mesh config (YAML): images, control plane, ports, defaults.
        #[arg(long, env = "OUTRIGGER_MESH_CONFIG")]
        config: PathBuf,
        /// The mesh's trust roots (PEM), handed to every proxy.
        #[arg(long, env = "OUTRIGGER_TRUST_ROOTS")]
        trust_roots: PathBuf,
        /// The serving certificate (PEM chain) and key; read again when they change.
        #[arg(long, env = "OUTRIGGER_TLS_CERT")]
        tls_cert: PathBuf,
        #[arg(long, env = "OUTRIGGER_TLS_KEY")]
        tls_key: PathBuf,
        /// How often the certificate files and --trust-roots are checked
        /// for changes.
        #[arg(long, default_value = "5s", value_parser = duration)]
        reload_every: Duration,
        #[arg(long, default_value = "0.0.0.0:8443")]
        listen: String,
        /// Plaintext `/metrics`, `/ready`, `/live`.
        #[arg(long, default_value = "0.0.0.0:9443")]
        admin: String,
        /// Local mode: the namespaces from this file (a YAML list of
        /// Namespace objects) instead of a watch of the cluster, for trying
        /// the webhook, and for its benchmark, without an API server.
        #[arg(long)]
        namespaces: Option<PathBuf>,
        #[arg(long, env = "OUTRIGGER_LOG", default_value = "info")]
        log_level: String,
    },
}

fn duration(s: &str) -> Result<Duration, String> {
    s.parse::<outrigger_api::Duration>()
        .map(|d| d.0)
        .map_err(|e| e.to_string())
}

fn main() -> anyhow::Result<()> {
    let Command::Run {
        config,
        trust_roots,
        tls_cert,
        tls_key,
        reload_every,
        listen,
        admin,
        namespaces: namespaces_file,
        log_level,
    } = Command::parse();
    log::init(
        &log_level,
        log::Format::Plain,
        log::Output::Stderr,
        log::Color::UnlessNoColor,
    )?;
    let text = std::fs::read_to_string(&config)
        .with_context(|| format!("--config {}", config.display()))?;
    let mut mesh =
        MeshConfig::from_yaml(&text).with_context(|| format!("--config {}", config.display()))?;
    mesh.trust_roots = std::fs::read_to_string(&trust_roots)
        .with_context(|| format!("--trust-roots {}", trust_roots.display()))?;
    if !mesh.trust_roots.contains("-----BEGIN CERTIFICATE-----") {
        anyhow::bail!(
            "--trust-roots {}: no PEM certificate",
            trust_roots.display()
        );
    }
    let cert =
        Arc::new(ReloadingCert::load(&tls_cert, &tls_key).context("the serving certificate")?);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("outrigger-injector")
        .build()
        .context("starting the runtime")?;
    rt.block_on(async move {
        let namespaces = match &namespaces_file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("--namespaces {}", path.display()))?;
                let list: Vec<k8s_openapi::api::core::v1::Namespace> =
                    serde_saphyr::from_str(&text)
                        .map_err(|e| anyhow::anyhow!("{e}"))
                        .with_context(|| {
                            format!("--namespaces {}: not a list of Namespaces", path.display())
                        })?;
                Arc::new(Namespaces::fixed(list.into_iter().filter_map(|n| {
                    Some(outrigger_injector::inject::Namespace {
                        name: n.metadata.name?,
                        annotations: n.metadata.annotations.unwrap_or_default(),
                    })
                })))
            }
            None => {
                let client = kube::Client::try_default()
                    .await
                    .context("no Kubernetes client (in-cluster config or kubeconfig)")?;
                let namespaces = Arc::new(Namespaces::default());
                tokio::spawn(namespaces::watch(client, namespaces.clone()));
                namespaces
            }
        };
        tokio::spawn(cert.clone().keep_reloading(reload_every));
        let webhook = Arc::new(Webhook {
            config: Arc::new(mesh).into(),
            namespaces,
            metrics: Arc::new(Metrics::new()),
        });
        tokio::spawn(follow_trust_roots(
            webhook.clone(),
            trust_roots,
            reload_every,
        ));
        let (stop, stopped) = drain::channel();
        let l = TcpListener::bind(&listen)
            .await
            .with_context(|| format!("--listen {listen}"))?;
        let a = TcpListener::bind(&admin)
            .await
            .with_context(|| format!("--admin {admin}"))?;
        tracing::info!(%listen, %admin, "serving the webhook");
        let tls = Arc::new(server::tls_config(cert));
        tokio::spawn(server::serve_admin(a, webhook.clone(), stopped.clone()));
        let serving = tokio::spawn(server::serve_webhook(l, tls, webhook, stopped));
        signal::shutdown()
            .await
            .context("installing the SIGTERM handler")?;
        stop.stop();
        let _ = serving.await;
        Ok(())
    })
}

/// Keeps the roots given to newly injected pods equal to the mounted
/// `--trust-roots` file (a CA rotation updates it); a file with no PEM
/// certificate is refused and the roots in force stay.
async fn follow_trust_roots(webhook: Arc<Webhook>, path: PathBuf, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        match std::fs::read_to_string(&path) {
            Ok(pem) if pem.contains("-----BEGIN CERTIFICATE-----") => {
                if webhook.set_trust_roots(&pem) {
                    tracing::info!(file = %path.display(), "trust roots reloaded: pods injected from now on trust them");
                }
            }
            Ok(_) => {
                tracing::warn!(file = %path.display(), "trust roots not reloaded: no PEM certificate; the roots in force stay")
            }
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "trust roots not reloaded; the roots in force stay")
            }
        }
    }
}
