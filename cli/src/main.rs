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
    let _ = &cli.cluster;
    match cli.command {
        Command::Completion { shell } => {
            let mut out = std::io::stdout().lock();
            clap_complete::generate(shell, &mut Cli::command(), "outrigger", &mut out);
            out.flush()?;
        }
        Command::Demo(args) => outrigger_cli::demo::run(args).await?,
    }
    Ok(())
}
