//! Metric values after known traffic, on both proxies of a hop, and a real
//! Prometheus scrape.

use std::time::Duration;

use outrigger_tests::*;

const LIMIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn request_metrics_match_the_traffic_sent() {
    let mesh = Mesh::start(app("web").await).await;
    for _ in 0..5 {
        assert_eq!(
            get(mesh.outbound(), "/").await,
            (200, "hello from web".into())
        );
    }
    for _ in 0..2 {
        assert_eq!(get(mesh.outbound(), "/status/503").await.0, 503);
    }
    // Responses are counted when their bodies end; poll until all 7 landed.
    assert!(
        eventually(LIMIT, || async {
            metric(&scrape(&mesh.server).await, "outrigger_requests_total", &[]) == 7.0
                && metric(&scrape(&mesh.client).await, "outrigger_requests_total", &[]) == 7.0
        })
        .await
    );

    let c = scrape(&mesh.client).await;
    let out = [
        ("direction", "outbound"),
        ("source_workload", "client"),
        ("source_namespace", "shop"),
        ("destination_workload", "web-0"),
        ("destination_namespace", "shop"),
        ("destination_service", "web.shop"),
        ("connection_security_policy", "none"),
        ("grpc_response_status", ""),
        ("response_flags", "-"),
    ];
    let with = |extra: (&'static str, &'static str)| {
        let mut l = out.to_vec();
        l.push(extra);
        l
    };
    assert_eq!(
        metric(
            &c,
            "outrigger_requests_total",
            &with(("response_code", "200"))
        ),
        5.0,
        "{c}"
    );
    assert_eq!(
        metric(
            &c,
            "outrigger_requests_total",
            &with(("response_code", "503"))
        ),
        2.0
    );
    assert_eq!(
        metric(
            &c,
            "outrigger_request_duration_seconds_count",
            &with(("response_code", "200"))
        ),
        5.0
    );
    assert_eq!(
        metric(
            &c,
            "outrigger_request_duration_seconds_bucket",
            &[("response_code", "200"), ("le", "+Inf")]
        ),
        5.0
    );
    assert!(
        metric(
            &c,
            "outrigger_request_duration_seconds_sum",
            &[("response_code", "200")]
        ) > 0.0
    );
    // "hello from web" is 14 bytes, "status 503" 10.
    assert_eq!(
        metric(&c, "outrigger_response_bytes_total", &out[..7]),
        (5 * 14 + 2 * 10) as f64
    );
    assert_eq!(metric(&c, "outrigger_request_bytes_total", &out[..7]), 0.0);
    assert_eq!(
        metric(
            &c,
            "outrigger_tcp_connections_opened_total",
            &[("direction", "outbound"), ("protocol", "http1")]
        ),
        7.0
    );
    assert_eq!(metric(&c, "outrigger_config_applied_total", &[]), 1.0);
    assert_eq!(metric(&c, "outrigger_ready", &[]), 1.0);

    let s = scrape(&mesh.server).await;
    let inbound = [
        ("direction", "inbound"),
        ("destination_workload", "web"),
        ("destination_namespace", "shop"),
        ("source_workload", "unknown"),
    ];
    let mut ok = inbound.to_vec();
    ok.push(("response_code", "200"));
    assert_eq!(metric(&s, "outrigger_requests_total", &ok), 5.0, "{s}");
    assert_eq!(
        metric(&s, "outrigger_response_bytes_total", &inbound),
        (5 * 14 + 2 * 10) as f64
    );
    // All seven crossed the hop on one HTTP/2 connection.
    assert_eq!(
        metric(
            &s,
            "outrigger_tcp_connections_opened_total",
            &[("protocol", "http2")]
        ),
        1.0
    );
}

#[tokio::test]
async fn label_values_stay_bounded_whatever_the_paths() {
    let mesh = Mesh::start(app("web").await).await;
    for i in 0..50 {
        assert_eq!(
            get(mesh.outbound(), &format!("/users/{i}?token={i}"))
                .await
                .0,
            200
        );
    }
    assert!(
        eventually(LIMIT, || async {
            metric(&scrape(&mesh.client).await, "outrigger_requests_total", &[]) == 50.0
        })
        .await
    );
    let c = scrape(&mesh.client).await;
    let series = c
        .lines()
        .filter(|l| l.starts_with("outrigger_requests_total{"))
        .count();
    assert_eq!(series, 1, "one series for 50 distinct paths:\n{c}");
    assert!(!c.contains("/users/"), "no path in any label");
}

/// A real Prometheus server scrapes a real proxy and answers a query with the
/// proxy's series (the exposition is OpenMetrics, negotiated on scrape). CI
/// installs Prometheus and sets OUTRIGGER_REQUIRE_PROMETHEUS=1, so there this
/// test can never be skipped.
#[tokio::test]
async fn prometheus_scrapes_the_admin_port() {
    let Ok(prometheus) = which("prometheus") else {
        assert!(
            std::env::var_os("OUTRIGGER_REQUIRE_PROMETHEUS").is_none(),
            "prometheus is required (OUTRIGGER_REQUIRE_PROMETHEUS is set) but not on PATH"
        );
        eprintln!("prometheus not found; skipping (install Debian's prometheus package to run it)");
        return;
    };
    let mesh = Mesh::start(app("web").await).await;
    for _ in 0..3 {
        assert_eq!(get(mesh.outbound(), "/").await.0, 200);
    }
    assert!(
        eventually(LIMIT, || async {
            metric(&scrape(&mesh.client).await, "outrigger_requests_total", &[]) == 3.0
        })
        .await
    );

    let tmp = tempfile::Builder::new()
        .prefix("outrigger-prom-")
        .tempdir()
        .unwrap();
    let dir = tmp.path();
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global: {{ scrape_interval: 1s, scrape_timeout: 900ms }}\nscrape_configs:\n  - job_name: outrigger\n    static_configs: [{{ targets: ['{}'] }}]\n",
            mesh.client.admin_addr
        ),
    )
    .unwrap();
    let port = free_port();
    let mut server = KillOnDrop(
        std::process::Command::new(prometheus)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let api: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let query = "/api/v1/query?query=outrigger_requests_total%7Bdirection%3D%22outbound%22%2Cresponse_code%3D%22200%22%7D";
    let last = std::sync::Mutex::new(String::new());
    let found = eventually(Duration::from_secs(60), || {
        let last = &last;
        async move {
            match try_get(api, query).await {
                Ok((200, body)) => {
                    *last.lock().unwrap() = body.clone();
                    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                    v["data"]["result"][0]["value"][1] == "3"
                }
                _ => false,
            }
        }
    })
    .await;
    assert!(
        server.0.try_wait().unwrap().is_none(),
        "prometheus exited early"
    );
    let last = last.into_inner().unwrap();
    assert!(found, "Prometheus never returned the series: {last}");
    let v: serde_json::Value = serde_json::from_str(&last).unwrap();
    let m = &v["data"]["result"][0]["metric"];
    assert_eq!(m["destination_service"], "web.shop");
    assert_eq!(m["source_workload"], "client");
    assert_eq!(m["response_flags"], "-");
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn which(name: &str) -> Result<std::path::PathBuf, ()> {
    std::env::var_os("PATH")
        .and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(name))
                .find(|f| f.is_file())
        })
        .ok_or(())
}

#[tokio::test]
async fn requests_the_proxy_cannot_read_are_counted_and_flagged() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mesh = Mesh::start_with(
        app("web").await,
        |_| {},
        |c| c.limits.max_header_bytes = 128 * 1024,
    )
    .await;
    let long_uri = format!("/{}", "a".repeat(70_000));
    let huge_header = "x".repeat(200_000);
    let many_headers: String = (0..120).map(|i| format!("x-h{i}: v\r\n")).collect();
    let cases = [
        (
            format!("GET / HTTP/1.1\r\nHost: web\r\nBad Header: x\r\n\r\n"),
            400,
        ),
        (format!("GET {long_uri} HTTP/1.1\r\nHost: web\r\n\r\n"), 414),
        (
            format!("GET / HTTP/1.1\r\nHost: web\r\nx-big: {huge_header}\r\n\r\n"),
            431,
        ),
        (
            format!("GET / HTTP/1.1\r\nHost: web\r\n{many_headers}\r\n"),
            431,
        ),
    ];
    for (request, status) in &cases {
        let mut s = tokio::net::TcpStream::connect(mesh.outbound())
            .await
            .unwrap();
        let _ = s.write_all(request.as_bytes()).await;
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(LIMIT, s.read_to_end(&mut answer)).await;
        let want = format!("HTTP/1.1 {status} ");
        assert!(
            answer.starts_with(want.as_bytes()),
            "{status}: {:?}",
            String::from_utf8_lossy(&answer[..answer.len().min(80)])
        );
    }
    let text = scrape(&mesh.client).await;
    for (code, n) in [("400", 1.0), ("414", 1.0), ("431", 2.0)] {
        let labels = [
            ("direction", "outbound"),
            ("response_code", code),
            ("response_flags", "DPE"),
        ];
        assert_eq!(
            metric(&text, "outrigger_requests_total", &labels),
            n,
            "{code}: {text}"
        );
    }
}
