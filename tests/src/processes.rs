//! Waiting for things to be so: a condition polled until a limit
//! ([`eventually`]), a proxy's readiness ([`ready`]); and for tests that run
//! processes, the workspace's own binaries ([`workspace_bin`]) and a port
//! to give them ([`free_port`]).

use std::time::Duration;

use outrigger_proxy::Proxy;

use crate::clients::get;

/// Whether a proxy's admin port answers `/ready` with 200.
pub async fn ready(proxy: &Proxy) -> bool {
    get(proxy.admin_addr, "/ready").await.0 == 200
}

/// A binary of the workspace, in the target directory of the running test.
/// Cargo builds a package's binaries when its integration tests are
/// selected, and the proxy, injector and control-plane packages have some
/// (`*/tests/`), so `cargo test --workspace` builds all three before running
/// any test. (`cargo test -p outrigger-tests` alone may find a stale one.)
pub fn workspace_bin(name: &str) -> Option<std::path::PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?.parent()?;
    let path = dir.join(name);
    path.exists().then_some(path)
}

/// Polls `check` every 10 ms until it returns true or `limit` passes.
pub async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A loopback port that was free a moment ago (bound, then let go): for a
/// process to bind, or for a connection that must be refused.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
