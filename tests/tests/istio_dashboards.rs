//! Istio's own Grafana dashboards (mesh, service, workload) against proxies
//! in the Istio metrics format (`--metrics-format istio`): a real
//! Prometheus scrapes four real proxies carrying known traffic over mutual
//! TLS (HTTP/1 with and without bodies, gRPC with OK and UNAVAILABLE
//! statuses, an opaque TCP connection a tick), plus plaintext requests to
//! an unmeshed endpoint, and every query of the dashboards, kept with its
//! source in `istio_dashboards/queries.yaml`, runs through the HTTP API.
//!
//! Variables are substituted as Grafana does: a single-valued one
//! (`service`, `namespace`, `workload`) by each value its query finds in
//! turn, a multi-valued one (`qrep`, `srcwl`, ...) by all of them as a
//! regex alternation ("All"); `$__rate_interval` is [`WINDOW`]. A query
//! marked `data` must answer, for at least one choice of the single-valued
//! variables, within the tolerance of its kind (see [`judge`]); one marked
//! `empty` must answer nothing for every choice (Istio's does not either);
//! `not_emitted` ones ask for families Outrigger does not have, and are
//! only counted. A few Kiali graph queries (its edges, by reporter) run
//! the same way.
//!
//! Needs Debian's `prometheus` package; without it the test says so and
//! passes, unless `OUTRIGGER_REQUIRE_PROMETHEUS=1` (CI).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use outrigger_api::{MetricsFormat, Snapshot};
use outrigger_identity::Ca;
use outrigger_proxy::metrics::MetricsOptions;
use outrigger_proxy::{Options, Proxy};
use outrigger_tests::*;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What `$__rate_interval` becomes: ten scrapes.
const WINDOW: &str = "10s";
/// Traffic ticks per second; each tick sends the requests of [`tick`].
const TICKS: f64 = 5.0;
/// The largest request rate any query may show: every request of a tick,
/// counted by both reporters, with room.
const MAX_RPS: f64 = 10.0 * TICKS * 2.0;

fn queries() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/istio_dashboards/queries.yaml");
    serde_saphyr::from_str(&std::fs::read_to_string(path).unwrap()).expect("queries.yaml")
}

/// The app behind `reviews` (and `details`): gRPC calls answered with one
/// message and `grpc-status` in the trailers (14 for `/Fail`), `/status/N`
/// with N, anything else 200 with 2 KiB.
async fn reviews_app() -> SocketAddr {
    serve_http(|req: Request<hyper::body::Incoming>| async move {
        let grpc = req
            .headers()
            .get("content-type")
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        let path = req.uri().path().to_string();
        let _ = req.into_body().collect().await;
        if grpc {
            let mut trailers = HeaderMap::new();
            let status = if path.ends_with("/Fail") { "14" } else { "0" };
            trailers.insert("grpc-status", status.parse().unwrap());
            let frames: Vec<Result<Frame<Bytes>, BoxError>> = vec![
                Ok(Frame::data(Bytes::from_static(b"\0\0\0\0\x05hello"))),
                Ok(Frame::trailers(trailers)),
            ];
            let body = StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync();
            return Response::builder()
                .header("content-type", "application/grpc")
                .body(body)
                .unwrap();
        }
        if let Some(code) = path.strip_prefix("/status/") {
            return Response::builder()
                .status(code.parse::<u16>().unwrap_or(500))
                .body(empty())
                .unwrap();
        }
        Response::new(full(vec![b'r'; 2048]))
    })
    .await
}

/// The TCP app behind `mysqldb`: echoes.
async fn echo_app() -> SocketAddr {
    serve_tcp(|mut s| async move {
        let (mut r, mut w) = s.split();
        let _ = tokio::io::copy(&mut r, &mut w).await;
    })
    .await
}

const TD: &str = "cluster.local";

fn spiffe(sa: &str) -> String {
    format!("spiffe://{TD}/ns/shop/sa/{sa}")
}

/// A proxy in Istio's format with `sa`'s identity and `labels` as its pod's.
async fn istio_proxy(ca: &Ca, snapshot: Snapshot, sa: &str, labels: &[(&str, &str)]) -> Proxy {
    Proxy::start(
        snapshot,
        Options {
            identity: Some(held_identity(ca, "shop", sa)),
            metrics: MetricsOptions {
                format: MetricsFormat::Istio,
                pod_labels: labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                ..MetricsOptions::default()
            },
            ..Options::default()
        },
    )
    .await
    .unwrap()
}

/// The service `productpage` as servers see it: the client's workload,
/// so that they can name the peer its certificate proves.
fn productpage_service() -> String {
    format!(
        r#"
  - name: productpage
    namespace: shop
    ports: [9080]
    endpoints:
      - {{ address: "127.0.0.9:9080", workload: productpage-v1, identity: "{}", meshed: true, labels: {{ app: productpage, version: v1 }} }}"#,
        spiffe("productpage")
    )
}

/// A server proxy: workload `workload` of the service `service` in front
/// of `app` (opaque when `opaque`).
fn server_snapshot(workload: &str, service: &str, app: SocketAddr, opaque: bool) -> Snapshot {
    let opaque_ports = if opaque {
        format!(", opaque_ports: [{}]", app.port())
    } else {
        String::new()
    };
    Snapshot::from_yaml(&format!(
        r#"
version: "1"
proxy: {{ workload: {workload}, namespace: shop }}
admin: {{ bind: "127.0.0.1:0" }}
limits: {{ drain_timeout: 5s, detect_timeout: 300ms }}
listeners:
  - {{ name: inbound, direction: inbound, bind: "127.0.0.1:0", app: "{app}"{opaque_ports} }}
services:
  - name: {service}
    namespace: shop
    ports: [{port}]
    endpoints: [{{ address: "{app}", workload: {workload}, meshed: true }}]{peer}
"#,
        port = app.port(),
        peer = productpage_service(),
    ))
    .unwrap()
}

/// The client proxy (`productpage-v1`): `reviews` (HTTP and gRPC) and
/// `mysqldb` (opaque TCP) over mutual TLS to their proxies, `details`
/// plaintext to an unmeshed endpoint.
fn client_snapshot(reviews: SocketAddr, mysqldb: SocketAddr, details: SocketAddr) -> Snapshot {
    Snapshot::from_yaml(&format!(
        r#"
version: "1"
proxy: {{ workload: productpage-v1, namespace: shop }}
admin: {{ bind: "127.0.0.1:0" }}
limits: {{ drain_timeout: 5s, detect_timeout: 300ms, connect_timeout: 1s }}
listeners:
  - {{ name: reviews, direction: outbound, bind: "127.0.0.1:0", target: {{ name: reviews, namespace: shop, port: 9080 }} }}
  - {{ name: mysqldb, direction: outbound, bind: "127.0.0.1:0", target: {{ name: mysqldb, namespace: shop, port: 3306 }} }}
  - {{ name: details, direction: outbound, bind: "127.0.0.1:0", target: {{ name: details, namespace: shop, port: 9080 }} }}
services:
  - name: reviews
    namespace: shop
    ports: [9080]
    endpoints:
      - {{ address: "{reviews}", workload: reviews-v1, identity: "{rid}", meshed: true, labels: {{ app: reviews, version: v1 }} }}
  - name: mysqldb
    namespace: shop
    ports: [3306]
    protocol: opaque
    endpoints:
      - {{ address: "{mysqldb}", workload: mysqldb-v1, identity: "{mid}", meshed: true, labels: {{ app: mysqldb, version: v1 }} }}
  - name: details
    namespace: shop
    ports: [9080]
    endpoints:
      - {{ address: "{details}", workload: details-v1, labels: {{ app: details, version: v1 }} }}
"#,
        rid = spiffe("reviews"),
        mid = spiffe("mysqldb"),
    ))
    .unwrap()
}

async fn post(addr: SocketAddr, path: &str, size: usize) -> Result<u16, BoxError> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut c, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let resp = c
        .send_request(
            Request::post(path)
                .header("host", "reviews.shop:9080")
                .body(full(vec![b'p'; size]))?,
        )
        .await?;
    let status = resp.status().as_u16();
    resp.into_body().collect().await?;
    Ok(status)
}

/// One unary gRPC call over HTTP/2: its `grpc-status`.
async fn grpc_call(addr: SocketAddr, method: &str) -> Result<String, BoxError> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut c, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let resp = c
        .send_request(
            Request::post(format!("http://reviews.shop:9080/reviews.Reviews/{method}"))
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(full(&b"\0\0\0\0\x03abc"[..]))?,
        )
        .await?;
    let collected = resp.into_body().collect().await?;
    Ok(collected
        .trailers()
        .and_then(|t| t.get("grpc-status"))
        .map(|v| v.to_str().unwrap_or("?").to_string())
        .unwrap_or_default())
}

/// One opaque connection: 100 bytes there and back.
async fn tcp_round_trip(addr: SocketAddr) -> Result<(), BoxError> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(&[b't'; 100]).await?;
    let mut back = [0u8; 100];
    s.read_exact(&mut back).await?;
    s.shutdown().await?;
    Ok(())
}

/// Where a tick sends: the client proxy's listeners, and (as an unmeshed
/// client would, plaintext) the server proxies' inbound ports.
#[derive(Clone, Copy)]
struct To {
    reviews: SocketAddr,
    mysqldb: SocketAddr,
    details: SocketAddr,
    reviews_inbound: SocketAddr,
    mysqldb_inbound: SocketAddr,
}

/// What one tick sends, and what came back, by kind.
async fn tick(n: u64, to: To) -> Vec<String> {
    let To {
        reviews,
        mysqldb,
        details,
        reviews_inbound,
        mysqldb_inbound,
    } = to;
    let mut seen = vec![
        format!(
            "plaintext GET reviews {:?}",
            try_get(reviews_inbound, "/").await.map(|r| r.0).ok()
        ),
        format!(
            "plaintext TCP mysqldb {:?}",
            tcp_round_trip(mysqldb_inbound).await.is_ok()
        ),
        format!(
            "GET reviews {:?}",
            try_get(reviews, "/").await.map(|r| r.0).ok()
        ),
        format!("POST reviews {:?}", post(reviews, "/", 1000).await.ok()),
        format!("gRPC Get {:?}", grpc_call(reviews, "Get").await.ok()),
        format!("TCP mysqldb {:?}", tcp_round_trip(mysqldb).await.is_ok()),
        format!(
            "GET details {:?}",
            try_get(details, "/").await.map(|r| r.0).ok()
        ),
    ];
    if n.is_multiple_of(5) {
        seen.push(format!(
            "GET reviews 503 {:?}",
            try_get(reviews, "/status/503").await.map(|r| r.0).ok()
        ));
        seen.push(format!(
            "GET reviews 404 {:?}",
            try_get(reviews, "/status/404").await.map(|r| r.0).ok()
        ));
        seen.push(format!(
            "gRPC Fail {:?}",
            grpc_call(reviews, "Fail").await.ok()
        ));
    }
    seen
}

fn substitute(expr: &str, vars: &[(String, String)]) -> String {
    let mut e = expr.replace("$__rate_interval", WINDOW);
    // Longest names first: `$srcwl` before a `$src` that might exist.
    let mut vars: Vec<&(String, String)> = vars.iter().collect();
    vars.sort_by_key(|(k, _)| std::cmp::Reverse(k.len()));
    for (k, v) in vars {
        e = e
            .replace(&format!("${{{k}}}"), v)
            .replace(&format!("${k}"), v);
    }
    e
}

/// Every choice of the dashboard's variables, as Grafana would make them:
/// one per value of each single-valued variable, all values at once (a
/// regex alternation) for a multi-valued one.
async fn assignments(
    prom: &Prometheus,
    vars: &[Value],
) -> Result<Vec<Vec<(String, String)>>, String> {
    let mut all: Vec<Vec<(String, String)>> = vec![Vec::new()];
    for v in vars {
        let name = v["name"].as_str().unwrap().to_string();
        let query = v["query"].as_str().unwrap();
        let multi = v["multi"].as_bool().unwrap_or(false);
        let mut next = Vec::new();
        for a in &all {
            let values: BTreeSet<String> = if v["type"] == "custom" {
                query.split(',').map(|s| s.trim().to_string()).collect()
            } else {
                let promql = query
                    .trim()
                    .strip_prefix("query_result(")
                    .and_then(|q| q.strip_suffix(')'))
                    .unwrap_or_else(|| panic!("variable {name}: not query_result(…): {query}"));
                // `/.*<suffix>="([^"]*).*/`: the value of the label whose
                // name ends with <suffix> (each series has that one label).
                let regex = v["regex"].as_str().unwrap_or_default();
                let suffix = regex
                    .strip_prefix("/.*")
                    .and_then(|r| r.strip_suffix(r#"="([^"]*).*/"#))
                    .unwrap_or_else(|| {
                        panic!("variable {name}: a regex this test cannot apply: {regex}")
                    });
                let result = prom.query(&substitute(promql, a)).await?;
                result
                    .iter()
                    .filter_map(|s| s["metric"].as_object())
                    .flat_map(|m| {
                        m.iter()
                            .filter(|(k, _)| k.ends_with(suffix))
                            .filter_map(|(_, v)| v.as_str().map(String::from))
                            .collect::<Vec<_>>()
                    })
                    .collect()
            };
            if multi {
                // None found: Grafana's value is empty (the panels that
                // filter on it show nothing; the others still do).
                let mut b = a.clone();
                let joined: Vec<&str> = values.iter().map(String::as_str).collect();
                let value = if joined.is_empty() {
                    String::new()
                } else {
                    format!("({})", joined.join("|"))
                };
                b.push((name.clone(), value));
                next.push(b);
            } else {
                for value in values {
                    let mut b = a.clone();
                    b.push((name.clone(), value));
                    next.push(b);
                }
            }
        }
        if next.is_empty() {
            return Err(format!("variable {name} finds no value ({query})"));
        }
        all = next;
    }
    Ok(all)
}

/// Whether `result` is sane for `expr`, by its kind:
/// - a quantile of `istio_request_duration_milliseconds`: in 0..5000 (ms),
///   or 0..5 where the panel divides by 1000 (s), one above 0;
/// - a quantile of a size histogram: in 0..64 KiB (the test's bodies are
///   at most 2 KiB; bodiless requests are 0);
/// - a ratio (a division): in 0..1;
/// - anything else is a rate (requests or bytes per second): in
///   0..[`MAX_RPS`] for requests, ≥ 0 for bytes, one above 0.
///
/// NaN (a quantile or ratio over a window without that traffic) is no
/// data; at least one finite value must be there.
fn judge(expr: &str, result: &[Value]) -> Result<(), String> {
    let values: Vec<(String, f64)> = result
        .iter()
        .map(|s| {
            let v = s["value"][1].as_str().unwrap_or("NaN");
            (s["metric"].to_string(), v.parse().unwrap_or(f64::NAN))
        })
        .filter(|(_, v)| v.is_finite())
        .collect();
    if values.is_empty() {
        return Err(format!("no data ({} NaN series)", result.len()));
    }
    let each = |lo: f64, hi: f64, what: &str| -> Result<(), String> {
        match values.iter().find(|(_, v)| !(lo..=hi).contains(v)) {
            Some((m, v)) => Err(format!("{m} = {v}: not {what}")),
            None => Ok(()),
        }
    };
    let some_positive = || {
        if values.iter().any(|(_, v)| *v > 0.0) {
            Ok(())
        } else {
            Err(format!("every value is 0: {values:?}"))
        }
    };
    if expr.contains("histogram_quantile") {
        if expr.contains("_bytes_bucket") {
            return each(0.0, 65536.0, "a body size");
        }
        if expr.contains("/ 1000") {
            each(0.0, 5.0, "a latency in seconds")?;
        } else {
            each(0.0, 5000.0, "a latency in milliseconds")?;
        }
        return some_positive();
    }
    if expr.contains('/') {
        return each(0.0, 1.0, "a ratio");
    }
    if expr.contains("istio_requests_total") {
        each(0.0, MAX_RPS, "a request rate within what was sent")?;
    } else {
        each(0.0, f64::MAX, "a byte rate")?;
    }
    some_positive()
}

/// Kiali drops a series missing a label it groups by: for its queries,
/// every series has each of them (but `app`, a Prometheus target label).
fn kiali_labels(source: &str, expr: &str, result: &[Value]) -> Result<(), String> {
    if !source.starts_with("kiali") {
        return Ok(());
    }
    let by = expr
        .split(" by (")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .expect("a by clause");
    for s in result {
        for label in by.split(',').filter(|l| *l != "app") {
            if s["metric"][label].as_str().is_none_or(str::is_empty)
                && label != "grpc_response_status"
            {
                return Err(format!("{label} missing on {}", s["metric"]));
            }
        }
    }
    Ok(())
}

/// One query of the test data, with where it comes from.
struct Query {
    source: String,
    expr: String,
    expect: String,
    /// Its dashboard's variables.
    vars: Vec<Value>,
}

fn all_queries() -> Vec<Query> {
    let q = queries();
    assert_eq!(q["source"]["repository"], "istio/istio");
    assert_eq!(
        q["source"]["commit"].as_str().map(str::len),
        Some(40),
        "a full commit"
    );
    let mut all = Vec::new();
    for d in q["dashboards"].as_array().unwrap() {
        let vars = d["variables"].as_array().cloned().unwrap_or_default();
        for x in d["queries"].as_array().unwrap() {
            let expect = x["expect"].as_str().unwrap().to_string();
            assert!(
                ["data", "empty", "not_emitted"].contains(&expect.as_str()),
                "{x}"
            );
            assert!(
                expect == "data" || x["why"].as_str().is_some_and(|w| !w.is_empty()),
                "a query not expected to answer says why: {x}"
            );
            all.push(Query {
                source: format!(
                    "{} / {} {}",
                    d["file"].as_str().unwrap(),
                    x["panel"].as_str().unwrap_or("?"),
                    x["ref"].as_str().unwrap_or("?")
                ),
                expr: x["expr"].as_str().unwrap().to_string(),
                expect,
                vars: vars.clone(),
            });
        }
    }
    for x in q["kiali"].as_array().cloned().unwrap_or_default() {
        all.push(Query {
            source: format!("kiali / {}", x["name"].as_str().unwrap()),
            expr: x["expr"].as_str().unwrap().to_string(),
            expect: "data".into(),
            vars: Vec::new(),
        });
    }
    all
}

/// The test data holds every query of the three dashboards (their count
/// at that commit), each with an expectation.
#[test]
fn the_test_data_holds_every_query_of_the_three_dashboards() {
    let all = all_queries();
    let dashboards = all
        .iter()
        .filter(|q| !q.source.starts_with("kiali"))
        .count();
    assert_eq!(dashboards, 159);
    let by = |e: &str| all.iter().filter(|q| q.expect == e).count();
    assert_eq!(by("not_emitted"), 1, "istio_build alone");
    assert!(by("empty") > 0 && by("data") > 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istios_dashboards_answer_from_the_istio_format() {
    let Some(prometheus) = PrometheusBin::find() else {
        return;
    };
    let ca = Ca::generate(TD, SystemTime::now()).unwrap();
    let app = reviews_app().await;
    let echo = echo_app().await;
    let reviews = istio_proxy(
        &ca,
        server_snapshot("reviews-v1", "reviews", app, false),
        "reviews",
        &[("app", "reviews"), ("version", "v1")],
    )
    .await;
    let mysqldb = istio_proxy(
        &ca,
        server_snapshot("mysqldb-v1", "mysqldb", echo, true),
        "mysqldb",
        &[("app", "mysqldb"), ("version", "v1")],
    )
    .await;
    let client = istio_proxy(
        &ca,
        client_snapshot(
            reviews.listener_addr("inbound").unwrap(),
            mysqldb.listener_addr("inbound").unwrap(),
            app,
        ),
        "productpage",
        &[("app", "productpage"), ("version", "v1")],
    )
    .await;

    let stop = Arc::new(AtomicBool::new(false));
    let traffic = {
        let stop = stop.clone();
        let at = |l: &str| client.listener_addr(l).unwrap();
        let to = To {
            reviews: at("reviews"),
            mysqldb: at("mysqldb"),
            details: at("details"),
            reviews_inbound: reviews.listener_addr("inbound").unwrap(),
            mysqldb_inbound: mysqldb.listener_addr("inbound").unwrap(),
        };
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs_f64(1.0 / TICKS));
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut seen = BTreeMap::<String, usize>::new();
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                every.tick().await;
                n += 1;
                for s in tick(n, to).await {
                    *seen.entry(s).or_default() += 1;
                }
            }
            seen
        })
    };

    let target = |addr, pod: &str| Target {
        job: "istio",
        addr,
        labels: vec![("namespace", "shop".into()), ("pod", pod.into())],
        tls: false,
    };
    let mut prom = prometheus.start_with(
        &[
            target(client.admin_addr, "productpage-v1-0"),
            target(reviews.admin_addr, "reviews-v1-0"),
            target(mysqldb.admin_addr, "mysqldb-v1-0"),
        ],
        None,
    );

    let all = all_queries();
    let failing = std::sync::Mutex::new(
        all.iter()
            .enumerate()
            .filter(|(_, q)| q.expect == "data")
            .map(|(i, _)| (i, "never ran".to_string()))
            .collect::<BTreeMap<usize, String>>(),
    );
    eventually(Duration::from_secs(90), || async {
        let todo: Vec<usize> = failing.lock().unwrap().keys().copied().collect();
        for i in todo {
            let q = &all[i];
            let verdict = match assignments(&prom, &q.vars).await {
                Err(e) => Err(e),
                Ok(choices) => {
                    let mut why = Vec::new();
                    let mut passed = false;
                    for a in &choices {
                        let promql = substitute(&q.expr, a);
                        assert!(!promql.contains('$'), "an unknown variable: {promql}");
                        match prom.query(&promql).await {
                            Ok(r) => match judge(&promql, &r)
                                .and_then(|()| kiali_labels(&q.source, &promql, &r))
                            {
                                Ok(()) => {
                                    passed = true;
                                    break;
                                }
                                Err(e) => why.push(format!("{a:?}: {e}")),
                            },
                            Err(e) => why.push(format!("Prometheus refused it: {e}")),
                        }
                    }
                    if passed {
                        Ok(())
                    } else {
                        Err(why.join("; "))
                    }
                }
            };
            let mut failing = failing.lock().unwrap();
            match verdict {
                Ok(()) => drop(failing.remove(&i)),
                Err(e) => drop(failing.insert(i, e)),
            }
        }
        failing.lock().unwrap().is_empty()
    })
    .await;

    // The queries Istio leaves empty stay empty, for every choice.
    let mut wrongly_answered = Vec::new();
    for q in all.iter().filter(|q| q.expect != "data") {
        let choices = match assignments(&prom, &q.vars).await {
            Ok(c) => c,
            Err(e) => {
                wrongly_answered.push(format!("{}: {e}", q.source));
                continue;
            }
        };
        for a in &choices {
            let promql = substitute(&q.expr, a);
            let r = prom
                .query(&promql)
                .await
                .unwrap_or_else(|e| panic!("{promql}: {e}"));
            if !r.is_empty() {
                wrongly_answered.push(format!("{}: {r:?}", q.source));
            }
        }
    }
    assert!(!prom.exited(), "prometheus exited early");

    // The labels the dashboards read, as Istio sets them.
    let series = |promql: &str| {
        let prom = &prom;
        let promql = promql.to_string();
        async move { prom.query(&promql).await.unwrap() }
    };
    let grpc = series(
        r#"istio_requests_total{reporter="destination",request_protocol="grpc",grpc_response_status="14",
           source_workload="productpage-v1",source_canonical_service="productpage",source_app="productpage",
           destination_service="reviews.shop.svc.cluster.local",destination_canonical_revision="v1",
           connection_security_policy="mutual_tls",source_principal="spiffe://cluster.local/ns/shop/sa/productpage"}"#,
    )
    .await;
    let plaintext = series(
        r#"istio_requests_total{reporter="source",destination_service_name="details",
           destination_principal="unknown",connection_security_policy="unknown",request_protocol="http"}"#,
    )
    .await;
    let tcp = series(
        r#"istio_tcp_connections_opened_total{reporter="destination",request_protocol="tcp",
           destination_workload="mysqldb-v1",connection_security_policy="mutual_tls"}"#,
    )
    .await;
    let outrigger = series(r#"{__name__=~"outrigger_(requests|request_duration_seconds_count|tcp_connections_opened)_total|outrigger_request_duration_seconds_count"}"#).await;

    stop.store(true, Ordering::SeqCst);
    let seen = traffic.await.unwrap();
    let failing = failing.into_inner().unwrap();
    let report: Vec<String> = failing
        .iter()
        .map(|(i, why)| {
            let why: String = why.chars().take(600).collect();
            format!("{}: {why}\n    {}", all[*i].source, all[*i].expr)
        })
        .collect();
    assert!(
        report.is_empty(),
        "{} of {} queries never answered sanely (traffic {seen:?}):\n{}",
        report.len(),
        all.iter().filter(|q| q.expect == "data").count(),
        report.join("\n")
    );
    assert!(
        wrongly_answered.is_empty(),
        "queries Istio leaves empty answered: {wrongly_answered:?}"
    );
    assert!(!grpc.is_empty(), "no gRPC UNAVAILABLE series inbound");
    assert!(!plaintext.is_empty(), "no plaintext series to details");
    assert!(!tcp.is_empty(), "no opaque TCP series inbound");
    assert!(
        outrigger.is_empty(),
        "outrigger_* request families in Istio's format: {outrigger:?}"
    );
    // The traffic was what the tolerances assume.
    for kind in [
        "GET reviews Some(200)",
        "POST reviews Some(200)",
        "gRPC Get Some(\"0\")",
        "gRPC Fail Some(\"14\")",
        "TCP mysqldb true",
        "GET details Some(200)",
        "GET reviews 503 Some(503)",
        "plaintext GET reviews Some(200)",
        "plaintext TCP mysqldb true",
    ] {
        assert!(seen.get(kind).copied().unwrap_or(0) > 3, "{kind}: {seen:?}");
    }
    // Every family the Istio format exposes is in the reference.
    for (who, p) in [
        ("productpage's proxy", &client),
        ("reviews' proxy", &reviews),
        ("mysqldb's proxy", &mysqldb),
    ] {
        assert_documented(who, &scrape(p).await);
    }
}
