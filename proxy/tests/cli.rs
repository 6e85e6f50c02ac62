//! The `outrigger-proxy` binary as an operator runs it: config checking, and
//! graceful drain on SIGTERM and on `POST /shutdown` with a request in flight.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

const BIN: &str = env!("CARGO_BIN_EXE_outrigger-proxy");
const LIMIT: Duration = Duration::from_secs(15);

fn temp_file(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("outrigger-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

#[test]
fn check_lists_every_error_with_its_path() {
    let path = temp_file(
        "bad.yaml",
        r#"
version: "1"
admin: { bind: "127.0.0.1:99999" }
listeners:
  - { name: out, direction: outbound, bind: "127.0.0.1:4140", target: { name: web, namespace: shop, port: 80 } }
services:
  - name: web
    namespace: shop
    ports: [80]
    endpoints:
      - { address: "10.0.0.1" }
      - { address: "10.0.0.2:80", identity: "web" }
"#,
    );
    let out = run(&["check", "--config", path.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is not a valid snapshot"), "{err}");
    assert!(err.contains("invalid snapshot (3 errors)"), "{err}");
    assert!(
        err.contains("admin.bind: \"127.0.0.1:99999\" is not an IP:port"),
        "{err}"
    );
    assert!(
        err.contains("services[0].endpoints[0].address: \"10.0.0.1\" is not an IP:port"),
        "{err}"
    );
    assert!(err.contains("services[0].endpoints[1].identity:"), "{err}");

    // `run` refuses the same file before binding anything.
    let out = run(&["run", "--config", path.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot start with"), "{err}");
    assert!(err.contains("services[0].endpoints[0].address"), "{err}");
}

#[test]
fn bad_app_probes_stop_the_proxy_naming_the_probe() {
    let path = format!(
        "{}/../examples/static/server-proxy.yaml",
        env!("CARGO_MANIFEST_DIR")
    );
    let out = Command::new(BIN)
        .args(["run", "--config", &path])
        .env(
            "OUTRIGGER_APP_PROBES",
            r#"{"/app-health/web/livez": {"httpGet": {"port": 0}}}"#,
        )
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--app-probes (OUTRIGGER_APP_PROBES)"), "{err}");
    assert!(
        err.contains("app probe \"/app-health/web/livez\": httpGet.port: 0 is not a port number"),
        "{err}"
    );
}

#[test]
fn bad_tracing_settings_stop_the_proxy_naming_the_flag() {
    let path = format!(
        "{}/../examples/static/server-proxy.yaml",
        env!("CARGO_MANIFEST_DIR")
    );
    for (env, value, want) in [
        (
            "OUTRIGGER_TRACE_SAMPLING",
            "150",
            "--trace-sampling (OUTRIGGER_TRACE_SAMPLING)",
        ),
        (
            "OUTRIGGER_TRACE_COLLECTOR",
            "https://otel:4318",
            "--trace-collector (OUTRIGGER_TRACE_COLLECTOR)",
        ),
    ] {
        let out = Command::new(BIN)
            .args(["run", "--config", &path])
            .env(env, value)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{err}");
        assert!(err.contains(value), "{err}");
    }
}

#[test]
fn check_accepts_the_checked_in_examples() {
    for f in ["client-proxy.yaml", "server-proxy.yaml"] {
        let path = format!("{}/../examples/static/{f}", env!("CARGO_MANIFEST_DIR"));
        let out = run(&["check", "--config", &path]);
        assert!(
            out.status.success(),
            "{f}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains(": ok ("));
    }
}

#[test]
fn syntax_errors_name_the_file() {
    let path = temp_file("syntax.yaml", "version: [\n");
    let out = run(&["check", "--config", path.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("syntax.yaml"), "{err}");
    assert!(err.contains("invalid YAML snapshot"), "{err}");
}

/// An upstream that tells the test when a request arrived, then answers
/// after `delay`.
async fn slow_upstream(delay: Duration) -> (SocketAddr, mpsc::Receiver<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::channel(8);
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = tx.send(()).await;
                tokio::time::sleep(delay).await;
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\ndone")
                    .await;
            });
        }
    });
    (addr, rx)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Running {
    child: Child,
    outbound: SocketAddr,
    admin: SocketAddr,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_proxy(upstream: SocketAddr, drain_timeout: &str) -> Running {
    let outbound: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = temp_file(
        &format!("drain-{}.yaml", outbound.port()),
        &format!(
            r#"
version: "drain-test"
proxy: {{ workload: client, namespace: test }}
admin: {{ bind: "{admin}" }}
limits: {{ drain_timeout: {drain_timeout} }}
listeners:
  - {{ name: outbound, direction: outbound, bind: "{outbound}", target: {{ name: slow, namespace: test, port: 80 }} }}
services:
  - {{ name: slow, namespace: test, ports: [80], endpoints: [{{ address: "{upstream}" }}] }}
"#
        ),
    );
    let child = Command::new(BIN)
        .args([
            "run",
            "--config",
            config.to_str().unwrap(),
            "--log-format",
            "json",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let running = Running {
        child,
        outbound,
        admin,
    };
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        if let Ok(r) = http(admin, "GET", "/ready").await {
            if r.starts_with("HTTP/1.1 200") {
                break;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "proxy never became ready"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    running
}

/// One request on a fresh connection; the whole raw response.
async fn http(addr: SocketAddr, method: &str, path: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(
        format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\ncontent-length: 0\r\n\r\n"
        )
        .as_bytes(),
    )
    .await?;
    let mut out = Vec::new();
    tokio::time::timeout(LIMIT, s.read_to_end(&mut out)).await??;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

async fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(tokio::time::Instant::now() < deadline, "proxy did not exit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn stderr_of(child: &mut Child) -> String {
    let mut s = String::new();
    use std::io::Read;
    child.stderr.take().unwrap().read_to_string(&mut s).unwrap();
    s
}

async fn drain_with_request_in_flight(trigger: impl AsyncFnOnce(&Running)) {
    let (upstream, mut arrived) = slow_upstream(Duration::from_millis(1500)).await;
    let mut proxy = start_proxy(upstream, "10s").await;

    let in_flight = tokio::spawn(http(proxy.outbound, "GET", "/slow"));
    tokio::time::timeout(LIMIT, arrived.recv())
        .await
        .unwrap()
        .unwrap();
    trigger(&proxy).await;

    // While draining: not ready; a connection that arrives while the
    // request is in flight (its client may not have seen the endpoint go)
    // is still served.
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let ready = http(proxy.admin, "GET", "/ready").await.unwrap();
        if ready.starts_with("HTTP/1.1 503") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still ready: {ready}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let late = http(proxy.outbound, "GET", "/slow").await.unwrap();
    assert!(late.starts_with("HTTP/1.1 200"), "{late}");

    // The request in flight finishes, then the process exits cleanly.
    let answer = in_flight.await.unwrap().unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("done"), "{answer}");
    let status = wait_exit(&mut proxy.child).await;
    let logs = stderr_of(&mut proxy.child);
    assert!(status.success(), "{status:?}\n{logs}");
    assert!(logs.contains("\"message\":\"drained\""), "{logs}");
}

#[tokio::test]
async fn sigterm_drains_in_flight_requests_then_exits() {
    drain_with_request_in_flight(async |p: &Running| {
        let ok = Command::new("kill")
            .args(["-TERM", &p.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    })
    .await;
}

#[tokio::test]
async fn post_shutdown_on_the_admin_port_drains_too() {
    drain_with_request_in_flight(async |p: &Running| {
        let r = http(p.admin, "GET", "/shutdown").await.unwrap();
        assert!(r.starts_with("HTTP/1.1 405"), "shutdown needs POST: {r}");
        let r = http(p.admin, "POST", "/shutdown").await.unwrap();
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    })
    .await;
}

#[tokio::test]
async fn past_the_drain_deadline_the_proxy_exits_anyway_and_says_so() {
    let (upstream, mut arrived) = slow_upstream(Duration::from_secs(600)).await;
    let mut proxy = start_proxy(upstream, "300ms").await;
    let _stuck = tokio::spawn(http(proxy.outbound, "GET", "/slow"));
    tokio::time::timeout(LIMIT, arrived.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(Command::new("kill")
        .args(["-TERM", &proxy.child.id().to_string()])
        .status()
        .unwrap()
        .success());
    let status = wait_exit(&mut proxy.child).await;
    let logs = stderr_of(&mut proxy.child);
    assert!(!status.success());
    assert!(logs.contains("drain deadline passed"), "{logs}");
}

#[test]
fn init_prints_its_rules_on_a_dry_run_and_names_a_bad_flag() {
    let out = run(&[
        "init",
        "--dry-run",
        "--skip-inbound-ports",
        "4191,9000-9001",
        "--skip-subnets",
        "169.254.169.254/32",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rules = String::from_utf8_lossy(&out.stdout);
    for line in [
        "-A OUTRIGGER_INBOUND -p tcp --dport 9000:9001 -j RETURN",
        "-A OUTRIGGER_OUTPUT -m owner --uid-owner 2102 -j RETURN",
        "-A OUTRIGGER_OUTPUT -d 169.254.169.254/32 -j RETURN",
        "-A OUTRIGGER_OUTPUT -p tcp -j REDIRECT --to-ports 4140",
        "-A PREROUTING -p tcp -j OUTRIGGER_INBOUND",
    ] {
        assert!(rules.contains(line), "{line} missing from\n{rules}");
    }
    let out = run(&["init", "--dry-run", "--skip-outbound-ports", "ssh"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--skip-outbound-ports") && err.contains("\"ssh\" is not a port number"),
        "{err}"
    );
}

#[tokio::test]
async fn a_bootstrap_from_the_environment_serves_and_wait_ready_sees_it() {
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    // Nobody listens yet: wait-ready gives up after its timeout, saying why.
    let out = run(&[
        "wait-ready",
        "--admin",
        &admin.to_string(),
        "--timeout",
        "300ms",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("the proxy at {admin} was not ready within 300ms")),
        "{err}"
    );
    let bootstrap = format!(
        r#"{{"version": "bootstrap", "admin": {{"bind": "{admin}"}},
            "listeners": [{{"name": "inbound", "direction": "inbound", "bind": "127.0.0.1:0", "app": "127.0.0.1:9"}}]}}"#
    );
    let child = Command::new(BIN)
        .arg("run")
        .env("OUTRIGGER_BOOTSTRAP", bootstrap)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _running = Running {
        child,
        outbound: admin,
        admin,
    };
    let waited = tokio::task::spawn_blocking(move || {
        run(&[
            "wait-ready",
            "--admin",
            &admin.to_string(),
            "--timeout",
            "15s",
        ])
    })
    .await
    .unwrap();
    assert!(
        waited.status.success(),
        "{}",
        String::from_utf8_lossy(&waited.stderr)
    );
    // A bootstrap that does not parse stops the proxy, naming where it came from.
    let out = Command::new(BIN)
        .arg("run")
        .env("OUTRIGGER_BOOTSTRAP", "{")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--bootstrap (OUTRIGGER_BOOTSTRAP)"));
}

#[test]
fn a_bad_metrics_format_or_pod_labels_stop_the_proxy_naming_them() {
    let path = temp_file(
        "metrics-format.yaml",
        "version: \"1\"\nadmin: { bind: \"127.0.0.1:0\" }\n",
    );
    let config = path.to_str().unwrap();
    let out = run(&["run", "--config", config, "--metrics-format", "prometheus"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for part in ["--metrics-format", "\"prometheus\"", "outrigger or istio"] {
        assert!(err.contains(part), "{part}: {err}");
    }
    let out = Command::new(BIN)
        .args(["run", "--config", config, "--metrics-format", "istio"])
        .env("OUTRIGGER_POD_LABELS", "[\"app\"]")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--pod-labels (OUTRIGGER_POD_LABELS): a JSON object of strings"),
        "{err}"
    );
}
