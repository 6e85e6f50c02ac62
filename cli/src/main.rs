//! `outrigger`: the operator's command line.

use std::io::Write as _;

use anyhow::{Context as _, Result};
use clap::{CommandFactory, Parser, Subcommand};
use outrigger_cli::cluster::ClusterArgs;
use outrigger_cli::output::{self, Format};
use outrigger_cli::proxy_admin::Admin;
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
    /// Reads the proxy's admin /config (which it answers to loopback peers
    /// only) and /metrics through a port-forward to the pod's port 4191, as
    /// kubectl port-forward opens it; or at --local ADDR (the demo).
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
        /// (rows are named by the proxies' own workload labels).
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
        Command::ProxyConfig {
            args,
            local,
            output,
        } => {
            let (pod, view) = proxy_config::arguments(&args, local.is_some())?;
            let admin = match (local, pod) {
                (Some(addr), _) => Admin::Local(addr),
                (None, pod) => {
                    let config = cli.cluster.config().await?;
                    let namespace = config.default_namespace.clone();
                    let client =
                        kube::Client::try_from(config).context("cannot build a cluster client")?;
                    Admin::PortForward {
                        client,
                        namespace,
                        name: pod.unwrap_or_default(),
                    }
                }
            };
            run_proxy_config(view, admin, output).await?
        }
        Command::Stat {
            target,
            window,
            local,
            from,
            output,
        } => run_stat(&cli.cluster, target, window, local, from, output).await?,
        Command::Demo(args) => outrigger_cli::demo::run(args).await?,
    }
    Ok(())
}

async fn run_proxy_config(view: proxy_config::View, admin: Admin, format: Format) -> Result<()> {
    let (snapshot, live) = proxy_config::fetch(&admin).await.with_context(|| {
        format!(
            "cannot read the configuration of the proxy at {}",
            admin.describe()
        )
    })?;
    let text = match output::structured(format, &proxy_config::view_value(view, &snapshot, &live))?
    {
        Some(text) => text,
        None => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64);
            proxy_config::render(view, &snapshot, &live, now)
        }
    };
    print(&text)
}

async fn run_stat(
    cluster: &ClusterArgs,
    target: stat::Selector,
    window: std::time::Duration,
    local: Vec<std::net::SocketAddr>,
    from: Option<String>,
    format: Format,
) -> Result<()> {
    if let Some(url) = from {
        let namespace = match cluster.namespace.clone() {
            Some(ns) => ns,
            // Without -n, the kubeconfig's namespace when there is one.
            None => cluster
                .config()
                .await
                .map_or_else(|_| "default".to_string(), |c| c.default_namespace),
        };
        let rows = stat::edge::from_prometheus(&url, &target, &namespace, window).await?;
        return print_rows(&rows, format);
    }
    let targets = if local.is_empty() {
        let config = cluster.config().await?;
        let namespace = config.default_namespace.clone();
        let client = kube::Client::try_from(config).context("cannot build a cluster client")?;
        stat::edge::pods(&client, &target, &namespace).await?
    } else {
        local
            .into_iter()
            .map(|a| (String::new(), Admin::Local(a)))
            .collect()
    };
    let (scrapes, elapsed) = stat::edge::scrape_twice(&targets, window)
        .await
        .context("cannot scrape the proxies' metrics")?;
    print_rows(&stat::rows(&scrapes, elapsed), format)
}

fn print_rows(rows: &[stat::Row], format: Format) -> Result<()> {
    let text = match output::structured(format, &rows)? {
        Some(text) => text,
        None => stat::render(rows),
    };
    print(&text)
}

fn print(text: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}
