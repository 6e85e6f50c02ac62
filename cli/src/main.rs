//! `outrigger`: the operator's command line.

use std::io::Write as _;

use anyhow::Result;
use clap::{CommandFactory, Parser, Subcommand};
use outrigger_cli::cluster::ClusterArgs;

/// The Outrigger service mesh, from the operator's side: its health, its
/// config and its traffic.
#[derive(Debug, Parser)]
#[command(name = "outrigger", version, propagate_version = true)]
struct Cli {
    #[command(flatten)]
    cluster: ClusterArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print a shell completion script.
    ///
    /// Examples:
    ///   outrigger completion bash > /etc/bash_completion.d/outrigger
    ///   outrigger completion zsh > "${fpath[1]}/_outrigger"
    ///   outrigger completion fish > ~/.config/fish/completions/outrigger.fish
    #[command(verbatim_doc_comment)]
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Add the Outrigger proxy to the pod templates of manifests, offline,
    /// exactly as the injector's webhook would add it to their pods.
    ///
    /// Pods, Deployments, StatefulSets, DaemonSets, ReplicaSets,
    /// ReplicationControllers, Jobs and CronJobs (also inside a List) are
    /// injected unless their pod template says `outrigger.dev/inject: disabled`
    /// (the namespace's annotation is not read: injection is assumed wanted).
    /// Everything else passes through byte for byte; running it twice changes
    /// nothing. The mesh config comes from the cluster (the ConfigMap and
    /// trust roots the chart installed) unless --mesh-config is given.
    ///
    /// Examples:
    ///   outrigger inject -f deploy.yaml | kubectl apply -f -
    ///   kubectl get deploy web -o yaml | outrigger inject | kubectl apply -f -
    ///   outrigger inject -f app.yaml --mesh-config mesh.yaml --trust-roots roots.pem
    #[command(verbatim_doc_comment)]
    Inject(InjectArgs),
}

#[derive(Debug, clap::Args)]
struct InjectArgs {
    /// The manifests (YAML documents or JSON objects); `-` reads stdin.
    #[arg(short = 'f', long = "filename", default_value = "-")]
    file: std::path::PathBuf,
    /// The mesh config (the injector's YAML, as in the chart's
    /// outrigger-mesh-config ConfigMap, key mesh.yaml); no cluster is read.
    #[arg(long)]
    mesh_config: Option<std::path::PathBuf>,
    /// The mesh's trust roots (PEM). Default: the mesh config's trustRoots,
    /// else (without --mesh-config) the Secret the injector mounts.
    #[arg(long)]
    trust_roots: Option<std::path::PathBuf>,
    /// Where the mesh is installed (the chart's release namespace).
    #[arg(long, default_value = outrigger_cli::inject::DEFAULT_MESH_NAMESPACE)]
    mesh_namespace: String,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Completion { shell } => {
            let mut out = std::io::stdout().lock();
            clap_complete::generate(shell, &mut Cli::command(), "outrigger", &mut out);
            out.flush()?;
        }
        Command::Inject(args) => run_inject(&cli.cluster, args).await?,
    }
    Ok(())
}

async fn run_inject(cluster: &ClusterArgs, args: InjectArgs) -> Result<()> {
    use anyhow::{bail, Context as _};
    use outrigger_injector::config::MeshConfig;
    let read = |path: &std::path::Path| -> Result<String> {
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
            let config = cluster.config().await?;
            let ns = config.default_namespace.clone();
            let client = kube::Client::try_from(config)
                .context("building the Kubernetes client (or pass --mesh-config FILE)")?;
            let cfg = outrigger_cli::inject::mesh_config_from_cluster(
                client,
                &args.mesh_namespace,
                roots,
            )
            .await?;
            (cfg, ns)
        }
    };
    let injected = outrigger_cli::inject::inject_manifests(&input, &cfg, &namespace)?;
    eprint!("{}", outrigger_cli::inject::note_lines(&injected.notes));
    let mut out = std::io::stdout().lock();
    out.write_all(injected.text.as_bytes())?;
    out.flush()?;
    Ok(())
}
