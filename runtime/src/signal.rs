//! Waiting for the shutdown signals: SIGTERM (what Kubernetes sends) or
//! SIGINT (Ctrl-C). Each binary then stops or drains in its own order.

use std::fmt;

/// Which signal asked for the shutdown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Received {
    Term,
    Int,
}

impl fmt::Display for Received {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Received::Term => "SIGTERM",
            Received::Int => "SIGINT",
        })
    }
}

/// Completes on the first SIGTERM or SIGINT, logging which one came; an
/// error when the SIGTERM handler cannot be installed.
pub async fn shutdown() -> std::io::Result<Received> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let received = tokio::select! {
        _ = term.recv() => Received::Term,
        _ = tokio::signal::ctrl_c() => Received::Int,
    };
    tracing::info!("{received} received");
    Ok(received)
}
