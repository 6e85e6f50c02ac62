//! `outrigger`: the operator's command line.

use std::io::Write as _;

use anyhow::Result;
use clap::{CommandFactory, Parser, Subcommand};
use outrigger_cli::cluster::ClusterArgs;
use outrigger_cli::output::Format;
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
    Inject(outrigger_cli::inject::Args),
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
    Analyze(outrigger_cli::analyze::Args),
    /// Print the client's version, the control plane's and the injector's
    /// (what the running processes report in outrigger_build_info, read
    /// through the API server's pod proxy), and with --proxies each meshed
    /// pod's proxy version (from its admin port). Where a running version
    /// cannot be read, the image tag stands in and the output says why.
    /// Without a reachable cluster it prints the client's version, says why
    /// on stderr and exits 1 (as kubectl does).
    ///
    /// Examples:
    ///   outrigger version
    ///   outrigger version --proxies
    ///   outrigger version --proxies -n shop -o json
    ///   outrigger version --client
    #[command(verbatim_doc_comment)]
    Version(outrigger_cli::version::Args),
    /// Check that the mesh is healthy, one line per check: ✔ passed, ⚠
    /// worth a look, × failed (with what to do). Exit status 0 only when
    /// nothing failed.
    ///
    /// After install: the CRDs installed with this CLI's schema; the
    /// control plane and injector Deployments available and ready; the
    /// webhook registered, its caBundle accepting the injector's serving
    /// certificate for <service>.<namespace>.svc, not expiring within 30
    /// days; the mesh CA signed by one of the trust roots, not expiring
    /// within 30 days; the mesh resources the control plane refused (Accepted=False);
    /// the annotated namespaces; each meshed pod's proxy ready, of the
    /// control plane's version, its certificate not near expiry and its
    /// config stream connected (its /metrics, through the pod proxy).
    ///
    /// With --pre, before install: the API server reachable and new enough
    /// for native sidecars, permission to create what the chart creates,
    /// no other webhook changing the pods of the namespaces annotated for
    /// injection (another mesh's injector fails, any other warns).
    ///
    /// Examples:
    ///   outrigger check --pre          # before helm install
    ///   outrigger check
    ///   outrigger check --wait 5m      # retry until everything passes
    ///   outrigger check -o json | jq '.checks[] | select(.level == "fail")'
    #[command(verbatim_doc_comment)]
    Check(outrigger_cli::check::CheckArgs),
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
        Command::Inject(args) => outrigger_cli::inject::run(&cli.cluster, args).await?,
        Command::Version(args) => outrigger_cli::version::run(&cli.cluster, args).await?,
        Command::Check(args) => {
            if !outrigger_cli::check::run(&cli.cluster, args).await? {
                std::process::exit(1);
            }
        }
        Command::Analyze(args) => {
            // 1 means "would be refused": a failure to read is 2, as a usage error.
            match outrigger_cli::analyze::run(&cli.cluster, args).await {
                Ok(true) => {}
                Ok(false) => std::process::exit(1),
                Err(e) => {
                    eprintln!("Error: {}", describe(&e));
                    std::process::exit(2);
                }
            }
        }
    }
    Ok(())
}
