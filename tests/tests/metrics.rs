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
        // The service its workload serves at the port the client dialed.
        ("destination_service", "web.shop"),
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
    let Some(prometheus) = PrometheusBin::find() else {
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

    let mut server = prometheus.start(&[mesh.client.admin_addr]);
    let api = server.addr;
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
    assert!(!server.exited(), "prometheus exited early");
    let last = last.into_inner().unwrap();
    assert!(found, "Prometheus never returned the series: {last}");
    let v: serde_json::Value = serde_json::from_str(&last).unwrap();
    let m = &v["data"]["result"][0]["metric"];
    assert_eq!(m["destination_service"], "web.shop");
    assert_eq!(m["source_workload"], "client");
    assert_eq!(m["response_flags"], "-");
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
            "GET / HTTP/1.1\r\nHost: web\r\nBad Header: x\r\n\r\n".to_string(),
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

/// GET `/metrics` from `addr` with `accept` (none: no Accept header);
/// returns the content type and the body.
async fn scrape_accepting(addr: std::net::SocketAddr, accept: Option<&str>) -> (String, String) {
    use http_body_util::BodyExt;
    let mut c = http1(addr).await;
    let mut req = http::Request::get("/metrics").header("host", "metrics");
    if let Some(a) = accept {
        req = req.header("accept", a);
    }
    let resp = c.send_request(req.body(empty()).unwrap()).await.unwrap();
    assert_eq!(resp.status(), 200);
    let content_type = resp.headers()["content-type"].to_str().unwrap().to_string();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (content_type, String::from_utf8(body.to_vec()).unwrap())
}

/// `promtool check metrics` on `text`: `Err` with its findings when it
/// does not pass.
fn promtool_check(promtool: &std::path::Path, text: &str) -> Result<(), String> {
    use std::io::Write;
    let mut child = std::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Each binary's `/metrics` answers the classic text format unless
/// OpenMetrics is asked for (as Prometheus does), and the classic answer
/// passes a real `promtool check metrics` (which refuses the OpenMetrics
/// text: a raw scrape used to fail it). CI sets
/// OUTRIGGER_REQUIRE_PROMETHEUS=1, so there promtool is never missing.
#[tokio::test]
async fn metrics_are_negotiated_and_the_classic_text_passes_promtool() {
    let Some(promtool) = promtool() else {
        return;
    };
    // The proxy, after traffic (counters, histograms, gauges with samples).
    let mesh = Mesh::start(app("web").await).await;
    for path in ["/", "/status/503"] {
        get(mesh.outbound(), path).await;
    }
    assert!(
        eventually(LIMIT, || async {
            metric(&scrape(&mesh.client).await, "outrigger_requests_total", &[]) == 2.0
        })
        .await
    );
    // The control plane, on an empty folder.
    let dir = outrigger_tests::control_plane::Dir::new("metrics");
    let cp = outrigger_tests::control_plane::ControlPlane::bind_and_start(dir.path()).await;
    // The injector's admin port.
    let webhook = std::sync::Arc::new(outrigger_injector::webhook::Webhook {
        config: std::sync::Arc::new(outrigger_injector::config::MeshConfig::with_image(
            "ghcr.io/outrigger/proxy:0.1.0",
        ))
        .into(),
        namespaces: std::sync::Arc::new(outrigger_injector::namespaces::Namespaces::fixed([])),
        metrics: std::sync::Arc::new(outrigger_injector::metrics::Metrics::new()),
    });
    webhook.review(b"not a review").unwrap_err(); // one error counted
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let injector = listener.local_addr().unwrap();
    let (_stop, stopped) = outrigger_runtime::drain::channel();
    tokio::spawn(outrigger_injector::server::serve_admin(
        listener, webhook, stopped,
    ));

    let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    for (who, addr, family) in [
        ("proxy", mesh.client.admin_addr, "outrigger_requests_total"),
        ("control plane", cp.addr, "outrigger_cp_pushes_total"),
        ("injector", injector, "outrigger_injector_errors_total"),
    ] {
        for accept in [None, Some("text/plain"), Some("*/*")] {
            let (ct, text) = scrape_accepting(addr, accept).await;
            assert_eq!(
                ct, "text/plain; version=0.0.4; charset=utf-8",
                "{who}, Accept {accept:?}"
            );
            assert!(!text.contains("# EOF"), "{who}:\n{text}");
            assert!(
                text.contains(&format!("# TYPE {family} counter\n")),
                "{who}: counters are named with _total:\n{text}"
            );
            promtool_check(&promtool, &text)
                .unwrap_or_else(|e| panic!("{who}, Accept {accept:?}: {e}\n{text}"));
        }
        let (ct, text) = scrape_accepting(addr, Some(prometheus)).await;
        assert_eq!(
            ct, "application/openmetrics-text; version=1.0.0; charset=utf-8",
            "{who}"
        );
        assert!(text.ends_with("# EOF\n"), "{who}:\n{text}");
        // What a raw scrape used to get: promtool refuses it.
        assert!(
            promtool_check(&promtool, &text).is_err(),
            "{who}: promtool passed OpenMetrics text; this test would prove nothing"
        );
    }
    cp.stop().await;
}

#[tokio::test]
async fn a_connection_hyper_drops_without_a_reply_counts_no_request() {
    // An HTTP/2 preface after an HTTP/1 request on the same connection:
    // hyper closes without answering, so nothing is counted as answered.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mesh = Mesh::start(app("web").await).await;
    let mut s = tokio::net::TcpStream::connect(mesh.outbound())
        .await
        .unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0u8; 12];
    s.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    let _ = s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(LIMIT, s.read_to_end(&mut rest)).await;
    assert!(
        !String::from_utf8_lossy(&rest).contains("HTTP/1.1 400"),
        "{rest:?}"
    );
    // One more request after the drop, counted: what the dropped
    // connection left to record has been recorded by then.
    assert_eq!(get(mesh.outbound(), "/").await.0, 200);
    assert!(
        eventually(LIMIT, || async {
            metric(
                &scrape(&mesh.client).await,
                "outrigger_requests_total",
                &[("response_flags", "-")],
            ) == 2.0
        })
        .await
    );
    let text = scrape(&mesh.client).await;
    assert_eq!(
        metric(&text, "outrigger_requests_total", &[]),
        2.0,
        "only the two requests answered: {text}"
    );
}

/// The three binaries, started as the chart runs them (the control plane
/// and the injector from its rendered Deployments, against a stand-in API
/// server; a proxy from a static snapshot), scraped by a real Prometheus
/// over plain HTTP on the ports the pods' `prometheus.io/port` annotations
/// name, one job each: every job has `outrigger_build_info` (this build's
/// version and commit) and every `process_*` family, with sane values.
/// Skipped, saying so, without Prometheus or the Helm engine unless CI
/// requires them.
#[tokio::test]
async fn prometheus_reads_build_and_process_metrics_of_all_three_binaries() {
    use outrigger_tests::chart::{fake_api_server, render_or_skip, test_ca, MeshBinaries};
    use serde_json::{json, Value};
    use std::collections::BTreeMap;

    let Some(prometheus) = PrometheusBin::find() else {
        return;
    };
    let (cert, key) = test_ca();
    let values = json!({ "identity": { "ca": { "cert": cert, "key": key } } });
    let Some(r) = render_or_skip(values, "outrigger", "outrigger-system") else {
        return;
    };
    let scratch = tempfile::tempdir().unwrap();
    let shop = json!({ "apiVersion": "v1", "kind": "Namespace",
        "metadata": { "name": "shop", "annotations": { "outrigger.dev/inject": "enabled" } } });
    let api = fake_api_server(
        BTreeMap::from([("/api/v1/namespaces".to_string(), vec![shop])]),
        scratch.path(),
    )
    .await;
    let kubeconfig = [("KUBECONFIG", api.kubeconfig.to_str().unwrap())];
    let mesh = MeshBinaries::start(&r, &kubeconfig).await;
    let (cp_metrics, injector_metrics) = (mesh.control_plane_metrics, mesh.injector_metrics);
    let proxy_admin = mesh.proxy.admin;

    let mut server = prometheus.start_jobs(&[
        ("control-plane", &[cp_metrics]),
        ("injector", &[injector_metrics]),
        ("proxy", &[proxy_admin]),
    ]);
    let prom = server.addr;
    // Every series of `promql`, by job, once each of the three has one.
    let by_job = |promql: &'static str| async move {
        let path = outrigger_cli::stat::promql::query_path(promql, None);
        let seen = std::sync::Mutex::new((String::new(), BTreeMap::new()));
        let found = eventually(Duration::from_secs(60), || {
            let (path, seen) = (path.clone(), &seen);
            async move {
                let Ok((200, body)) = try_get(prom, &path).await else {
                    return false;
                };
                let v: Value = serde_json::from_str(&body).unwrap_or_default();
                let jobs: BTreeMap<String, (Value, f64)> = v["data"]["result"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|s| {
                        let job = s["metric"]["job"].as_str().unwrap_or("").to_string();
                        let value: f64 = s["value"][1].as_str().unwrap_or("NaN").parse().unwrap();
                        (job, (s["metric"].clone(), value))
                    })
                    .collect();
                let all = jobs.len() == 3;
                *seen.lock().unwrap() = (body, jobs);
                all
            }
        })
        .await;
        let (last, jobs) = seen.into_inner().unwrap();
        assert!(found, "{promql}: not from all three jobs: {last}");
        jobs
    };

    for (job, (labels, value)) in by_job("outrigger_build_info").await {
        assert_eq!(value, 1.0, "{job}");
        assert_eq!(labels["version"], env!("CARGO_PKG_VERSION"), "{job}");
        assert_eq!(
            labels["git_sha"],
            outrigger_runtime::build::GIT_SHA,
            "{job}"
        );
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let rss = by_job("process_resident_memory_bytes").await;
    let vsz = by_job("process_virtual_memory_bytes").await;
    let fds = by_job("process_open_fds").await;
    let max = by_job("process_max_fds").await;
    let start = by_job("process_start_time_seconds").await;
    let cpu = by_job("process_cpu_seconds_total").await;
    for job in ["control-plane", "injector", "proxy"] {
        let rss = rss[job].1;
        assert!(rss > 1048576.0, "{job}: resident {rss}");
        assert!(
            vsz[job].1 >= rss,
            "{job}: virtual {} < resident {rss}",
            vsz[job].1
        );
        let fds = fds[job].1;
        assert!(fds > 3.0, "{job}: {fds} open fds");
        assert!(
            max[job].1 >= fds,
            "{job}: max fds {} < open {fds}",
            max[job].1
        );
        let start = start[job].1;
        assert!(
            start <= now + 1.0 && start > now - 3600.0,
            "{job}: started at {start}, now {now}"
        );
        let cpu = cpu[job].1;
        assert!((0.0..600.0).contains(&cpu), "{job}: {cpu} CPU seconds");
    }
    assert!(!server.exited(), "prometheus exited early");
    mesh.control_plane.running().unwrap();
    mesh.injector.running().unwrap();
}
