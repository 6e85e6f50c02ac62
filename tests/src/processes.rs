//! Waiting for things to be so: a condition polled until a limit
//! ([`eventually`]), a proxy's readiness ([`ready`]); and for tests that run
//! processes, the workspace's own binaries ([`workspace_bin`]) and a port
//! to give them ([`free_port`]), a real Prometheus ([`PrometheusBin`]), and
//! the proxy binary on a static snapshot ([`StaticProxy`]).

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

/// The file `name` in a folder of PATH, as the shell would find it.
pub fn on_path(name: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(name))
            .find(|f| f.is_file())
    })
}

/// `promtool`, from the same Debian package as Prometheus, or `None` (the
/// test skips, saying so) when it is not on PATH; CI sets
/// `OUTRIGGER_REQUIRE_PROMETHEUS`, so there a missing one fails the test.
pub fn promtool() -> Option<std::path::PathBuf> {
    prometheus_tool("promtool")
}

/// `name` (a binary of Debian's prometheus package) on PATH, or `None`
/// after saying so, unless `OUTRIGGER_REQUIRE_PROMETHEUS` makes it a failure.
fn prometheus_tool(name: &str) -> Option<std::path::PathBuf> {
    let found = on_path(name);
    if found.is_none() {
        assert!(
            std::env::var_os("OUTRIGGER_REQUIRE_PROMETHEUS").is_none(),
            "{name} is required (OUTRIGGER_REQUIRE_PROMETHEUS is set) but not on PATH"
        );
        eprintln!("{name} not found; skipping (install Debian's prometheus package to run it)");
    }
    found
}

/// The `prometheus` binary on PATH, for the tests that run a real one.
pub struct PrometheusBin(std::path::PathBuf);

/// A Prometheus server scraping the given targets every second, with its
/// own data folder; killed when dropped.
pub struct Prometheus {
    child: std::process::Child,
    /// Where its HTTP API answers.
    pub addr: std::net::SocketAddr,
    _dir: tempfile::TempDir,
}

/// A scrape target: its `/metrics` address, the target labels Prometheus
/// adds to its series (as Kubernetes service discovery adds `namespace`
/// and `pod`), and whether it answers over TLS.
pub struct Target {
    /// The scrape job it is in (`outrigger` unless named); a TLS target's
    /// job is this name with `-tls`.
    pub job: &'static str,
    pub addr: std::net::SocketAddr,
    pub labels: Vec<(&'static str, String)>,
    /// HTTPS, without verifying the certificate: the control plane's
    /// carries only its SPIFFE ID.
    pub tls: bool,
}

impl Target {
    pub fn plain(addr: std::net::SocketAddr) -> Self {
        Self {
            job: "outrigger",
            addr,
            labels: Vec::new(),
            tls: false,
        }
    }
}

impl PrometheusBin {
    /// The binary, or `None` (the test skips, saying so) when it is not on
    /// PATH; CI sets `OUTRIGGER_REQUIRE_PROMETHEUS`, so there a missing one
    /// fails the test.
    pub fn find() -> Option<Self> {
        prometheus_tool("prometheus").map(Self)
    }

    /// Starts it, scraping each of `targets`' `/metrics` every second
    /// (one job, `outrigger`).
    pub fn start(self, targets: &[std::net::SocketAddr]) -> Prometheus {
        let targets: Vec<Target> = targets.iter().map(|a| Target::plain(*a)).collect();
        self.start_with(&targets, None)
    }

    /// Starts it with one scrape job per `(job name, targets)`, each
    /// target's `/metrics` scraped every second over plain HTTP.
    pub fn start_jobs(self, jobs: &[(&'static str, &[std::net::SocketAddr])]) -> Prometheus {
        let targets: Vec<Target> = jobs
            .iter()
            .flat_map(|(job, addrs)| {
                addrs.iter().map(|a| Target {
                    job,
                    ..Target::plain(*a)
                })
            })
            .collect();
        self.start_with(&targets, None)
    }

    /// Starts it, scraping each of `targets` every second (one scrape job
    /// per job name, in the order they first appear) and, with `rules`
    /// (the text of a rules file), evaluating them every second.
    pub fn start_with(self, targets: &[Target], rules: Option<&str>) -> Prometheus {
        let dir = tempfile::Builder::new()
            .prefix("outrigger-prom-")
            .tempdir()
            .unwrap();
        let config = dir.path().join("prometheus.yml");
        let mut text = String::from(
            "global: { scrape_interval: 1s, scrape_timeout: 900ms, evaluation_interval: 1s }\n",
        );
        if let Some(rules) = rules {
            let file = dir.path().join("rules.yaml");
            std::fs::write(&file, rules).unwrap();
            text.push_str(&format!("rule_files: ['{}']\n", file.display()));
        }
        text.push_str("scrape_configs:\n");
        let mut jobs: Vec<(&str, bool)> = Vec::new();
        for t in targets {
            if !jobs.contains(&(t.job, t.tls)) {
                jobs.push((t.job, t.tls));
            }
        }
        for (name, tls) in jobs {
            let job = if tls {
                format!("{name}-tls")
            } else {
                name.to_string()
            };
            let of_job: Vec<String> = targets
                .iter()
                .filter(|t| t.tls == tls && t.job == name)
                .map(|t| {
                    let labels: Vec<String> = t
                        .labels
                        .iter()
                        .map(|(k, v)| format!("{k}: '{v}'"))
                        .collect();
                    format!(
                        "      - {{ targets: ['{}'], labels: {{ {} }} }}\n",
                        t.addr,
                        labels.join(", ")
                    )
                })
                .collect();
            if of_job.is_empty() {
                continue;
            }
            text.push_str(&format!("  - job_name: {job}\n"));
            if tls {
                text.push_str(
                    "    scheme: https\n    tls_config: { insecure_skip_verify: true }\n",
                );
            }
            text.push_str("    static_configs:\n");
            text.push_str(&of_job.concat());
        }
        std::fs::write(&config, text).unwrap();
        let port = free_port();
        let child = std::process::Command::new(self.0)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        Prometheus {
            child,
            addr: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
            _dir: dir,
        }
    }
}

impl Prometheus {
    /// Whether the server has exited.
    pub fn exited(&mut self) -> bool {
        self.child.try_wait().unwrap().is_some()
    }

    /// GET `path` (e.g. `/api/v1/query`) with the query parameters `params`,
    /// encoded: the JSON answer, or why there is none.
    pub async fn api(
        &self,
        path: &str,
        params: &[(&str, &str)],
    ) -> Result<serde_json::Value, String> {
        let query: Vec<String> = params
            .iter()
            .map(|(k, v)| format!("{}={}", url_encode(k), url_encode(v)))
            .collect();
        let uri = format!("{path}?{}", query.join("&"));
        match crate::clients::try_get(self.addr, &uri).await {
            Ok((_, body)) => serde_json::from_str(&body).map_err(|e| format!("{e}: {body}")),
            Err(e) => Err(e.to_string()),
        }
    }

    /// An instant query's result (`data.result`), or Prometheus's error.
    pub async fn query(&self, promql: &str) -> Result<Vec<serde_json::Value>, String> {
        let answer = self.api("/api/v1/query", &[("query", promql)]).await?;
        if answer["status"] != "success" {
            return Err(answer.to_string());
        }
        Ok(answer["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }
}

/// `text` as a URL query component: unreserved bytes kept, the rest as `%XX`.
fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The real `outrigger-proxy` binary, run from a static snapshot with no
/// listeners: only its admin port (`/metrics`, `/ready`); killed when
/// dropped.
pub struct StaticProxy {
    child: std::process::Child,
    pub admin: std::net::SocketAddr,
    _dir: tempfile::TempDir,
}

impl StaticProxy {
    /// Starts it as workload `workload` of `namespace`, its admin port on a
    /// free loopback port.
    pub fn start(workload: &str, namespace: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let admin = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
        let snapshot = dir.path().join("proxy.yaml");
        std::fs::write(
            &snapshot,
            format!(
                "version: \"static-1\"\nproxy: {{ workload: {workload}, namespace: {namespace} }}\n\
                 admin: {{ bind: \"{admin}\" }}\nlisteners: []\n"
            ),
        )
        .unwrap();
        let child = std::process::Command::new(
            workspace_bin("outrigger-proxy").expect("the outrigger-proxy binary"),
        )
        .args([
            "run",
            "--config",
            snapshot.to_str().unwrap(),
            "--threads",
            "1",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
        StaticProxy {
            child,
            admin,
            _dir: dir,
        }
    }
}

impl Drop for StaticProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the workspace binary `name` with `args` and `stdin`, without the
/// caller's `KUBECONFIG` (so only a `--kubeconfig` argument names a
/// cluster): (exit status, stdout, stderr).
pub async fn run_bin(name: &str, args: &[&str], stdin: &str) -> (i32, String, String) {
    use tokio::io::AsyncWriteExt as _;
    let bin =
        workspace_bin(name).unwrap_or_else(|| panic!("the {name} binary: cargo build --workspace"));
    let mut child = tokio::process::Command::new(bin)
        .args(args)
        .env_remove("KUBECONFIG")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.as_bytes()).await.unwrap();
    drop(input);
    let out = child.wait_with_output().await.unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}
