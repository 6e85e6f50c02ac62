//! `outrigger`: the operator's command line.

use std::io::Write as _;

use anyhow::Result;
use clap::{CommandFactory, Parser, Subcommand};
use outrigger_cli::cluster::ClusterArgs;
use outrigger_cli::output::{self, Format};
use outrigger_cli::{proxy_config, stat};

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
    /// Show the configuration in force in one proxy: its routes, endpoints,
    /// identity and inbound policies, read from its admin port.
    ///
    /// Reads the proxy's admin /config and /endpoints (which it answers to
    /// loopback peers only: each endpoint's health, ejection, load) and
    /// /metrics through a port-forward to the pod's port 4191, as kubectl
    /// port-forward opens it; or at --local ADDR (the demo). A pod without
    /// the proxy, or not running, says so first.
    ///
    /// Examples:
    ///   outrigger proxy-config web-5d9c7-x2x -n shop
    ///   outrigger proxy-config pod/web-5d9c7-x2x routes -n shop
    ///   outrigger proxy-config web-5d9c7-x2x endpoints -n shop -o yaml
    ///   outrigger proxy-config --local 127.0.0.1:4191 identity
    #[command(verbatim_doc_comment)]
    ProxyConfig {
        /// POD (NAME or pod/NAME), then VIEW: routes, endpoints, identity,
        /// policies or all (the default). With --local, VIEW only.
        #[arg(value_name = "POD] [VIEW", num_args = 0..=2)]
        args: Vec<String>,
        /// Read the proxy at this admin address instead (e.g. 127.0.0.1:4191).
        #[arg(long)]
        local: Option<std::net::SocketAddr>,
        #[arg(short, long, value_enum, default_value_t)]
        output: Format,
    },
    /// Show golden metrics per workload, inbound and outbound: requests per
    /// second, success rate, p50/p95/p99 latency, share of mutual TLS.
    ///
    /// Scrapes each selected pod's proxy /metrics twice, --window apart,
    /// through the API server's pod proxy (no Prometheus needed), or the
    /// proxies at --local ADDR... (the demo); or asks Prometheus (--from)
    /// for the same numbers over the last --window.
    /// A proxy that cannot be read is a warning on stderr; the exit status
    /// is 1 only when none could be.
    ///
    /// Examples:
    ///   outrigger stat deploy -n shop
    ///   outrigger stat deploy/reviews -n shop --window 10s
    ///   outrigger stat pod/reviews-v1-5d9c7-x2x -n shop -o json
    ///   outrigger stat ns/shop
    ///   outrigger stat deploy -n shop --from http://localhost:9090 --window 1m
    ///   outrigger stat deploy --local 127.0.0.1:4191 127.0.0.1:4192
    #[command(verbatim_doc_comment)]
    Stat {
        /// What to show: deploy, ns or pod, and maybe /NAME.
        target: stat::Selector,
        /// How long to count for.
        #[arg(long, default_value = "30s", value_parser = stat::parse_window)]
        window: std::time::Duration,
        /// Scrape these proxy admin addresses instead of the cluster's pods
        /// (rows are named by the proxies' own namespace and workload).
        #[arg(long, num_args = 1.., conflicts_with = "from")]
        local: Vec<std::net::SocketAddr>,
        /// Ask this Prometheus (http://HOST:PORT) instead of the proxies.
        #[arg(long, value_name = "PROMETHEUS_URL")]
        from: Option<String>,
        #[arg(short, long, value_enum, default_value_t)]
        output: Format,
    },
    /// Run the whole mesh on this machine, with no cluster: the control
    /// plane (folder mode, the mesh CA), a client and two versions of web
    /// with their proxies over mutual TLS, a steady trickle of requests,
    /// and a VirtualService file to edit while a tally shows the split.
    /// Needs outrigger-proxy and outrigger-control-plane next to this
    /// binary: `cargo build -p outrigger-cli -p outrigger-proxy
    /// -p outrigger-control-plane` builds all three.
    ///
    /// Examples:
    ///   outrigger demo                      # until Ctrl-C
    ///   outrigger demo --base-port 14300    # move all its ports
    ///   outrigger demo --smoke              # check it works, exit 0 or 1
    ///   outrigger demo --smoke -o json      # the same checks as one document
    ///   outrigger demo --dir ./demo         # keep the manifests, CA and logs
    #[command(verbatim_doc_comment)]
    Demo(outrigger_cli::demo::DemoArgs),
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
    /// Report what the control plane would refuse, before it is applied:
    /// unsupported fields, unknown subsets, conflicts, export scope, subsets
    /// in use... (the control plane's own verdicts), over manifest files and
    /// folders, or over what the cluster holds (--cluster). One line per
    /// finding; exit status 1 when anything would be refused, 0 otherwise.
    ///
    /// Examples:
    ///   outrigger analyze routes/ reviews-vs.yaml
    ///   outrigger analyze --cluster
    ///   outrigger analyze routes/ -o json | jq '.findings[].field'
    #[command(verbatim_doc_comment)]
    Analyze(AnalyzeArgs),
    /// Print the client's version, the control plane's and the injector's
    /// (the image tag their Deployments run), and with --proxies each meshed
    /// pod's proxy version. Without a reachable cluster it prints the
    /// client's version, says why on stderr and exits 1 (as kubectl does).
    ///
    /// Examples:
    ///   outrigger version
    ///   outrigger version --proxies
    ///   outrigger version --proxies -n shop -o json
    ///   outrigger version --client
    #[command(verbatim_doc_comment)]
    Version(VersionArgs),
    /// Check that the mesh is healthy, one line per check: ✔ passed, ⚠
    /// worth a look, × failed (with what to do). Exit status 0 only when
    /// nothing failed.
    ///
    /// After install: the CRDs installed with this CLI's schema; the
    /// control plane and injector Deployments available and ready; the
    /// webhook registered, its caBundle accepting the injector's serving
    /// certificate for <service>.<namespace>.svc, not expiring within 30
    /// days; the mesh CA under the trust roots, not expiring within 30
    /// days; the mesh resources the control plane refused (Accepted=False);
    /// the annotated namespaces; each meshed pod's proxy ready, of the
    /// control plane's version, its certificate not near expiry and its
    /// config stream connected (its /metrics, through the pod proxy).
    ///
    /// With --pre, before install: the API server reachable and new enough
    /// for native sidecars, permission to create what the chart creates,
    /// no other mesh's injection webhook.
    ///
    /// Examples:
    ///   outrigger check --pre          # before helm install
    ///   outrigger check
    ///   outrigger check --wait 5m      # retry until everything passes
    ///   outrigger check -o json | jq '.checks[] | select(.level == "fail")'
    #[command(verbatim_doc_comment)]
    Check(CheckArgs),
}

#[derive(Debug, clap::Args)]
struct CheckArgs {
    /// The checks before install instead.
    #[arg(long)]
    pre: bool,
    /// Retry until nothing fails or this much time has passed (e.g. 30s,
    /// 5m), printing a progress line on stderr between tries.
    #[arg(long, value_parser = outrigger_cli::stat::parse_window)]
    wait: Option<std::time::Duration>,
    /// Where the mesh is installed (the chart's release namespace).
    #[arg(long, default_value = outrigger_cli::inject::DEFAULT_MESH_NAMESPACE)]
    mesh_namespace: String,
    #[arg(short = 'o', long, value_enum, default_value_t)]
    output: outrigger_cli::output::Format,
}

#[derive(Debug, clap::Args)]
struct VersionArgs {
    /// Also each meshed pod's proxy version (in -n's namespace, else in all).
    #[arg(long)]
    proxies: bool,
    /// Only the client's version; the cluster is not read.
    #[arg(long, conflicts_with = "proxies")]
    client: bool,
    /// Where the mesh is installed (the chart's release namespace).
    #[arg(long, default_value = outrigger_cli::inject::DEFAULT_MESH_NAMESPACE)]
    mesh_namespace: String,
    #[arg(short = 'o', long, value_enum, default_value_t)]
    output: outrigger_cli::output::Format,
}

#[derive(Debug, clap::Args)]
struct AnalyzeArgs {
    /// Manifest files, or folders read recursively for *.yaml and *.yml.
    #[arg(required_unless_present = "cluster", conflicts_with = "cluster")]
    paths: Vec<std::path::PathBuf>,
    /// Analyze the mesh resources, Services, EndpointSlices, Pods and
    /// Namespaces the cluster holds, with the control plane's options
    /// (read from its Deployment in --mesh-namespace).
    #[arg(long)]
    cluster: bool,
    /// Where the mesh is installed (the chart's release namespace).
    #[arg(long, default_value = outrigger_cli::inject::DEFAULT_MESH_NAMESPACE)]
    mesh_namespace: String,
    /// For files: who sees a Service without an outrigger.dev/export-to
    /// annotation, as the control plane's flag ("." or "*").
    #[arg(long, default_value = ".", conflicts_with = "cluster")]
    default_export_to: String,
    #[arg(short = 'o', long, value_enum, default_value_t)]
    output: outrigger_cli::output::Format,
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

fn main() -> std::process::ExitCode {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let cli = Cli::parse();
    let cluster = cli.cluster.clone();
    runtime.block_on(async {
        match run(cli).await {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                // A cluster that never answered: one line, the server, the context and
                // what to do (cluster.rs), whichever request found it out.
                match cluster.unreachable(e.as_ref()).await {
                    Some(unreachable) => eprintln!("Error: {unreachable}"),
                    None => eprintln!("Error: {}", describe(&e)),
                }
                std::process::ExitCode::FAILURE
            }
        }
    })
}

/// An error and its causes on one line, as `{:#}` prints them, without a
/// cause whose text the message before it already carries (many library
/// errors quote their source in their own message).
fn describe(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Completion { shell } => {
            let mut out = std::io::stdout().lock();
            clap_complete::generate(shell, &mut Cli::command(), "outrigger", &mut out);
            out.flush()?;
        }
        Command::ProxyConfig {
            args,
            local,
            output,
        } => proxy_config::run(&cli.cluster, &args, local, output).await?,
        Command::Stat {
            target,
            window,
            local,
            from,
            output,
        } => stat::run(&cli.cluster, target, window, local, from, output).await?,
        Command::Demo(args) => outrigger_cli::demo::run(args).await?,
        Command::Inject(args) => run_inject(&cli.cluster, args).await?,
        Command::Version(args) => run_version(&cli.cluster, args).await?,
        Command::Check(args) => run_check(&cli.cluster, args).await?,
        Command::Analyze(args) => {
            // 1 means "would be refused": a failure to read is 2, as a usage error.
            if let Err(e) = run_analyze(&cli.cluster, args).await {
                eprintln!("Error: {}", describe(&e));
                std::process::exit(2);
            }
        }
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

async fn run_analyze(cluster: &ClusterArgs, args: AnalyzeArgs) -> Result<()> {
    use anyhow::Context as _;
    use outrigger_cli::analyze::{self, Report};
    use outrigger_control_plane::analyze as cp;
    let analysis = if args.cluster {
        let client = cluster.client().await?;
        let options = analyze::options_from_cluster(client.clone(), &args.mesh_namespace)
            .await?
            .unwrap_or_else(|| {
                eprintln!(
                    "warning: no deployment/{} in namespace {}: analyzing with the control \
                     plane's default options (pass --mesh-namespace)",
                    analyze::CONTROL_PLANE_DEPLOYMENT,
                    args.mesh_namespace
                );
                Default::default()
            });
        let store = cp::from_cluster(client)
            .await
            .context("reading the mesh from the cluster")?;
        cp::Analysis::of(&store, Vec::new(), &options)
    } else {
        let options = analyze::options_from_args(&[format!(
            "--default-export-to={}",
            args.default_export_to
        )])
        .map_err(anyhow::Error::msg)?;
        let namespace = cluster
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let (store, errors) = cp::read_paths(
            &args.paths,
            &namespace,
            outrigger_control_plane::folder::DEFAULT_MAX_FILE_BYTES,
        )?;
        cp::Analysis::of(&store, errors, &options)
    };
    let report = Report::of(&analysis);
    let mut out = std::io::stdout().lock();
    out.write_all(analyze::render(&report, args.output)?.as_bytes())?;
    out.flush()?;
    if !report.ok {
        std::process::exit(1);
    }
    Ok(())
}

async fn run_version(cluster: &ClusterArgs, args: VersionArgs) -> Result<()> {
    use outrigger_cli::version::{self, Client, Versions};
    let mut versions = Versions {
        client: Client::this(),
        server: None,
    };
    let print = |v: &Versions| -> Result<()> {
        let mut out = std::io::stdout().lock();
        out.write_all(version::render(v, args.output)?.as_bytes())?;
        out.flush()?;
        Ok(())
    };
    if args.client {
        return print(&versions);
    }
    let proxies_in = args.proxies.then_some(cluster.namespace.as_deref());
    let server = match cluster.client().await {
        Ok(client) => version::fetch(client, &args.mesh_namespace, proxies_in)
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

async fn run_check(cluster: &ClusterArgs, args: CheckArgs) -> Result<()> {
    use outrigger_cli::check::{self, Report};
    let client = cluster.client().await?;
    let deadline = args.wait.map(|w| tokio::time::Instant::now() + w);
    let report = loop {
        let report = if args.pre {
            match check::fetch_pre(client.clone(), &args.mesh_namespace).await {
                Ok(objects) => Report::of(check::pre_install(&objects)),
                Err(e) => Report::of(vec![check::unreachable(&e)]),
            }
        } else {
            match check::fetch(
                client.clone(),
                &args.mesh_namespace,
                cluster.namespace.as_deref(),
            )
            .await
            {
                Ok(objects) => {
                    Report::of(check::post_install(&objects, std::time::SystemTime::now()))
                }
                Err(e) => Report::of(vec![check::unreachable(&e)]),
            }
        };
        let left = deadline.map(|d| d.saturating_duration_since(tokio::time::Instant::now()));
        match left {
            Some(left) if !report.ok && !left.is_zero() => {
                eprintln!("{}", check::progress(&report, left));
                tokio::time::sleep(check::RETRY.min(left)).await;
            }
            _ => break report,
        }
    };
    print(&check::render(&report, args.output)?)?;
    if !report.ok {
        std::process::exit(1);
    }
    Ok(())
}

fn print(text: &str) -> Result<()> {
    Ok(output::print(text)?)
}
