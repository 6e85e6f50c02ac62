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
    }
    Ok(())
}
