//! Distributed tracing through two real proxies over mutual TLS,
//! `app client → outbound proxy → inbound proxy → app`, exporting to a real
//! OTLP/HTTP receiver that decodes the official OpenTelemetry protobuf
//! messages ([`OtlpReceiver`]). The app (`/headers`) answers with the
//! headers it got, so each test sees what the last hop propagated.
//!
//! Sampling draws use a seeded `Chance`, so every run draws the same.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use http::Request;
use http_body_util::BodyExt;
use outrigger_identity::Ca;
use outrigger_proxy::trace::{Batching, Percent, Settings};
use outrigger_proxy::{Options, Proxy};
use outrigger_proxy_policy::chance::Chance;
use outrigger_tests::identity::TRUST_DOMAIN;
use outrigger_tests::otlp::{Received, SpanKind};
use outrigger_tests::*;

const LIMIT: Duration = Duration::from_secs(10);
const WEB: &str = "spiffe://cluster.local/ns/shop/sa/web";
const CLIENT: &str = "spiffe://cluster.local/ns/shop/sa/client";
/// W3C Trace Context's own example.
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const APP_SPAN: &str = "00f067aa0ba902b7";

fn traced(collector: &str, sampling: f64, seed: u64, pod: &str) -> Options {
    Options {
        tracing: Some(Settings {
            collector: collector.parse().unwrap(),
            sampling: Percent::try_from(sampling).unwrap(),
            service_name: None,
            pod_name: Some(pod.into()),
            batching: Batching {
                delay: Duration::from_millis(50),
                timeout: Duration::from_secs(2),
                ..Batching::default()
            },
        }),
        chance: Chance::seeded(seed),
        ..Options::default()
    }
}

/// Two proxies with identities from one CA, both tracing to `collector`.
struct Pair {
    client: Proxy,
    server: Proxy,
}

impl Pair {
    async fn start(collector: &str, sampling: f64, app: SocketAddr) -> Self {
        Self::start_with(app, traced(collector, sampling, 1, "web-0"), |o| {
            *o = traced(collector, sampling, 2, "client-0")
        })
        .await
    }

    async fn start_with(
        app: SocketAddr,
        mut server_opts: Options,
        client_opts: impl FnOnce(&mut Options),
    ) -> Self {
        let ca = Ca::generate(TRUST_DOMAIN, SystemTime::now()).unwrap();
        server_opts.identity = Some(held_identity(&ca, "shop", "web"));
        let server = Proxy::start(server_snapshot(app), server_opts)
            .await
            .unwrap();
        let inbound = server.listener_addr("inbound").unwrap();
        let mut snap = client_snapshot(&[(inbound, true)]);
        snap.services[0].endpoints[0].identity = Some(WEB.into());
        let mut opts = Options::default();
        client_opts(&mut opts);
        opts.identity = Some(held_identity(&ca, "shop", "client"));
        let client = Proxy::start(snap, opts).await.unwrap();
        Self { client, server }
    }

    fn outbound(&self) -> SocketAddr {
        self.client.listener_addr("outbound").unwrap()
    }
}

/// GET /headers through `to` with `headers`; the headers the app got.
async fn app_saw(to: SocketAddr, headers: &[(&str, &str)]) -> BTreeMap<String, String> {
    let mut c = http1(to).await;
    let mut req = Request::get("/headers").header("host", "web.shop");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = c.send_request(req.body(empty()).unwrap()).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(body.to_vec())
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The client and the server span, once both arrived (and no more).
async fn two_spans(rx: &OtlpReceiver) -> (Received, Received) {
    let have = eventually(LIMIT, || async { rx.spans().len() >= 2 }).await;
    let spans = rx.spans();
    assert!(have, "spans: {spans:#?} refused: {:?}", rx.refused);
    assert_eq!(spans.len(), 2, "{spans:#?}");
    let client = spans.iter().find(|s| s.kind() == SpanKind::Client);
    let server = spans.iter().find(|s| s.kind() == SpanKind::Server);
    (client.unwrap().clone(), server.unwrap().clone())
}

/// The fields of a `traceparent`: (trace id, parent id, flags).
fn traceparent(v: &str) -> (String, String, String) {
    let p: Vec<&str> = v.split('-').collect();
    assert_eq!((p.len(), p[0]), (4, "00"), "{v}");
    (p[1].into(), p[2].into(), p[3].into())
}

/// What every span of the hop carries, whichever form propagated it.
fn assert_linked(client: &Received, server: &Received, trace: &str, app_parent: &str) {
    assert_eq!(client.trace_id(), trace);
    assert_eq!(server.trace_id(), trace, "one trace throughout");
    assert_eq!(client.parent_id(), APP_SPAN, "the app's span is the parent");
    assert_eq!(server.parent_id(), client.span_id(), "client → server");
    assert_eq!(app_parent, server.span_id(), "the app sees the server span");
}

#[tokio::test]
async fn a_w3c_trace_is_joined_across_both_proxies() {
    let rx = OtlpReceiver::start().await;
    let app = app("web").await;
    // 0 %: only the app's own decision samples this request.
    let pair = Pair::start(&rx.url(), 0.0, app).await;
    let saw = app_saw(
        pair.outbound(),
        &[
            ("traceparent", &format!("00-{TRACE}-{APP_SPAN}-01")),
            ("tracestate", "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"),
            ("user-agent", "tracing-test/1"),
        ],
    )
    .await;
    let (client, server) = two_spans(&rx).await;
    let (trace, parent, flags) = traceparent(&saw["traceparent"]);
    assert_eq!((trace.as_str(), flags.as_str()), (TRACE, "01"));
    assert_linked(&client, &server, TRACE, &parent);
    assert_eq!(
        saw["tracestate"], "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE",
        "tracestate passes unchanged"
    );
    assert_eq!(client.span.trace_state, saw["tracestate"]);
    assert!(
        !saw.contains_key("x-b3-traceid") && !saw.contains_key("b3"),
        "only the form that came: {saw:?}"
    );

    // The request id: generated once (UUID v4) and on both spans.
    let id = &saw["x-request-id"];
    assert_eq!((id.len(), &id[14..15]), (36, "4"), "{id}");
    assert_eq!(client.attr("guid:x-request-id").as_ref(), Some(id));
    assert_eq!(server.attr("guid:x-request-id").as_ref(), Some(id));

    // OpenTelemetry's HTTP conventions and the mesh's attributes.
    for s in [&client, &server] {
        assert_eq!(s.span.name, "GET");
        assert_eq!(s.attr("http.request.method").as_deref(), Some("GET"));
        assert_eq!(s.attr("url.path").as_deref(), Some("/headers"));
        assert_eq!(s.attr("url.scheme").as_deref(), Some("http"));
        assert_eq!(s.attr("server.address").as_deref(), Some("web.shop"));
        assert_eq!(s.attr("server.port").as_deref(), Some("80"));
        assert_eq!(s.attr("http.response.status_code").as_deref(), Some("200"));
        assert_eq!(
            s.attr("user_agent.original").as_deref(),
            Some("tracing-test/1")
        );
        assert_eq!(s.attr("outrigger.response_flags").as_deref(), Some("-"));
        assert!(s.span.status.is_none(), "2xx leaves the status unset");
        assert!(s.span.end_time_unix_nano >= s.span.start_time_unix_nano);
    }
    assert_eq!(
        client.attr("network.protocol.version").as_deref(),
        Some("1.1")
    );
    assert_eq!(
        server.attr("network.protocol.version").as_deref(),
        Some("2"),
        "the hop between the proxies is HTTP/2"
    );
    assert_eq!(
        client.attr("url.full").as_deref(),
        Some("http://web.shop/headers")
    );
    assert_eq!(client.attr("outrigger.peer.identity").as_deref(), Some(WEB));
    // The endpoint's workload, as the client side's snapshot names it.
    assert_eq!(
        client.attr("outrigger.peer.workload").as_deref(),
        Some("web-0")
    );
    assert_eq!(
        client.attr("outrigger.upstream.address"),
        Some(pair.server.listener_addr("inbound").unwrap().to_string())
    );
    assert_eq!(client.attr("outrigger.route").as_deref(), Some("default"));
    assert_eq!(
        server.attr("outrigger.peer.identity").as_deref(),
        Some(CLIENT)
    );
    assert_eq!(
        server.attr("outrigger.upstream.address"),
        Some(app.to_string())
    );
    assert_eq!(server.attr("client.address").as_deref(), Some("127.0.0.1"));
    assert_eq!(
        server
            .attr("outrigger.connection_security_policy")
            .as_deref(),
        Some("mutual_tls")
    );
    // The resources: each proxy's workload, as Istio names services.
    assert_eq!(
        client.resource_attr("service.name").as_deref(),
        Some("client.shop")
    );
    assert_eq!(
        server.resource_attr("service.name").as_deref(),
        Some("web.shop")
    );
    assert_eq!(
        server.resource_attr("service.namespace").as_deref(),
        Some("shop")
    );
    assert_eq!(
        server.resource_attr("k8s.pod.name").as_deref(),
        Some("web-0")
    );
    assert!(rx.refused.lock().unwrap().is_empty());
    let text = scrape(&pair.client).await;
    assert_eq!(
        metric(&text, "outrigger_trace_spans_exported_total", &[]),
        1.0,
        "{text}"
    );
}

#[tokio::test]
async fn a_b3_multi_trace_is_joined_and_kept_in_its_form() {
    let rx = OtlpReceiver::start().await;
    let app = app("web").await;
    let pair = Pair::start(&rx.url(), 0.0, app).await;
    // A 64-bit trace id, as older Zipkin tracers send.
    let saw = app_saw(
        pair.outbound(),
        &[
            ("x-b3-traceid", "a3ce929d0e0e4736"),
            ("x-b3-spanid", APP_SPAN),
            ("x-b3-parentspanid", "05e3ac9a4f6e3b90"),
            ("x-b3-sampled", "1"),
        ],
    )
    .await;
    let (client, server) = two_spans(&rx).await;
    assert_eq!(saw["x-b3-traceid"], "a3ce929d0e0e4736", "its width kept");
    assert_eq!(saw["x-b3-sampled"], "1");
    assert_eq!(saw["x-b3-parentspanid"], client.span_id());
    assert_linked(
        &client,
        &server,
        "0000000000000000a3ce929d0e0e4736",
        &saw["x-b3-spanid"],
    );
    assert!(!saw.contains_key("traceparent"), "{saw:?}");
}

#[tokio::test]
async fn a_b3_single_trace_is_joined_and_kept_in_its_form() {
    let rx = OtlpReceiver::start().await;
    let app = app("web").await;
    let pair = Pair::start(&rx.url(), 0.0, app).await;
    let saw = app_saw(pair.outbound(), &[("b3", &format!("{TRACE}-{APP_SPAN}-1"))]).await;
    let (client, server) = two_spans(&rx).await;
    let b3: Vec<&str> = saw["b3"].split('-').collect();
    assert_eq!(b3.len(), 4, "{b3:?}");
    assert_eq!(
        (b3[0], b3[2], b3[3]),
        (TRACE, "1", client.span_id().as_str())
    );
    assert_linked(&client, &server, TRACE, b3[1]);
    assert!(!saw.contains_key("traceparent") && !saw.contains_key("x-b3-traceid"));
}

#[tokio::test]
async fn a_request_without_a_trace_starts_one() {
    let rx = OtlpReceiver::start().await;
    let app = app("web").await;
    let pair = Pair::start(&rx.url(), 100.0, app).await;
    // A malformed traceparent (uppercase) is no trace: a new one, and the
    // request goes through.
    for headers in [
        vec![],
        vec![(
            "traceparent",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01",
        )],
    ] {
        let before = rx.spans().len();
        let saw = app_saw(pair.outbound(), &headers).await;
        let have = eventually(LIMIT, || async { rx.spans().len() >= before + 2 }).await;
        assert!(have, "{:#?}", rx.spans());
        let spans = rx.spans().split_off(before);
        let client = spans.iter().find(|s| s.kind() == SpanKind::Client).unwrap();
        let server = spans.iter().find(|s| s.kind() == SpanKind::Server).unwrap();
        assert_eq!(client.parent_id(), "", "a root span");
        assert_ne!(client.trace_id(), TRACE.to_lowercase());
        assert_eq!(server.trace_id(), client.trace_id());
        assert_eq!(server.parent_id(), client.span_id());
        let (trace, parent, flags) = traceparent(&saw["traceparent"]);
        assert_eq!(
            (trace, parent, flags),
            (client.trace_id(), server.span_id(), "01".into())
        );
        // A new trace leaves with traceparent alone.
        assert!(
            !saw.keys().any(|k| k.starts_with("x-b3-") || k == "b3"),
            "{saw:?}"
        );
    }
}

#[tokio::test]
async fn sampling_holds_its_ratio_and_the_server_follows_the_client() {
    let rx = OtlpReceiver::start().await;
    let app = app("web").await;
    // 10 % on the side that starts the traces; the server side would take
    // every trace of its own (100 %), yet it follows the client's decision,
    // which for an unsampled request is no trace header at all.
    let pair = Pair::start_with(app, traced(&rx.url(), 100.0, 1, "web-0"), |o| {
        *o = traced(&rx.url(), 10.0, 7, "client-0")
    })
    .await;
    let n = 2000;
    let mut c = http1(pair.outbound()).await;
    for _ in 0..n {
        let req = Request::get("/")
            .header("host", "web.shop")
            .body(empty())
            .unwrap();
        let resp = c.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        resp.into_body().collect().await.unwrap();
    }
    let sampled = |text: &str| metric(text, "outrigger_trace_spans_exported_total", &[]);
    let settled = eventually(LIMIT, || async {
        let (c, s) = (scrape(&pair.client).await, scrape(&pair.server).await);
        sampled(&c) > 0.0
            && sampled(&c) == sampled(&s)
            && rx.spans().len() as f64 == 2.0 * sampled(&c)
    })
    .await;
    let spans = rx.spans();
    let clients = spans
        .iter()
        .filter(|s| s.kind() == SpanKind::Client)
        .count();
    let servers = spans
        .iter()
        .filter(|s| s.kind() == SpanKind::Server)
        .count();
    assert!(settled, "client {clients} server {servers}");
    // Binomial(2000, 0.1): mean 200, standard deviation 13.4; 4.5 sigma.
    assert!((140..=260).contains(&clients), "{clients} of {n}");
    assert_eq!(servers, clients, "the server side follows every decision");
    let text = scrape(&pair.client).await;
    for reason in ["queue_full", "export_failed"] {
        assert_eq!(
            metric(
                &text,
                "outrigger_trace_spans_dropped_total",
                &[("reason", reason)]
            ),
            0.0
        );
    }
}

#[tokio::test]
async fn an_unreachable_collector_loses_spans_counted_and_never_a_request() {
    // A port nothing listens on.
    let nowhere = format!("http://127.0.0.1:{}", free_port());
    let app = app("web").await;
    let pair = Pair::start(&nowhere, 100.0, app).await;
    let n = 50;
    let started = tokio::time::Instant::now();
    let mut c = http1(pair.outbound()).await;
    for _ in 0..n {
        let req = Request::get("/")
            .header("host", "web.shop")
            .body(empty())
            .unwrap();
        let resp = c.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200, "every request succeeds");
        resp.into_body().collect().await.unwrap();
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "no request waits for the collector: {:?}",
        started.elapsed()
    );
    let dropped = |text: &str, reason| {
        metric(
            text,
            "outrigger_trace_spans_dropped_total",
            &[("reason", reason)],
        )
    };
    let counted = eventually(LIMIT, || async {
        let text = scrape(&pair.client).await;
        dropped(&text, "export_failed") + dropped(&text, "queue_full") == n as f64
    })
    .await;
    let text = scrape(&pair.client).await;
    assert!(counted, "{text}");
    assert_eq!(
        metric(&text, "outrigger_trace_spans_exported_total", &[]),
        0.0
    );
}

#[tokio::test]
async fn a_sampled_request_gets_a_request_id_when_missing_and_keeps_its_own() {
    let rx = OtlpReceiver::start().await;
    let app = app("web").await;
    let pair = Pair::start(&rx.url(), 100.0, app).await;
    let saw = app_saw(pair.outbound(), &[]).await;
    let id = &saw["x-request-id"];
    assert_eq!(id.len(), 36, "{id}");
    assert_eq!(&id[14..15], "4", "UUID version 4: {id}");
    assert!(
        matches!(&id[19..20], "8" | "9" | "a" | "b"),
        "variant: {id}"
    );
    assert!(saw["traceparent"].ends_with("-01"), "{saw:?}");
    let saw = app_saw(pair.outbound(), &[("x-request-id", "mine-1")]).await;
    assert_eq!(saw["x-request-id"], "mine-1");
    // Not sampled: neither a request id nor a trace header is added.
    let rx = OtlpReceiver::start().await;
    let pair = Pair::start(&rx.url(), 0.0, app).await;
    let saw = app_saw(pair.outbound(), &[]).await;
    assert!(
        !saw.contains_key("x-request-id") && !saw.contains_key("traceparent"),
        "{saw:?}"
    );
}

#[tokio::test]
async fn with_tracing_and_the_access_log_off_a_request_is_left_as_it_came() {
    let app = app("web").await;
    let mesh = Mesh::start(app).await;
    let saw = app_saw(mesh.outbound(), &[]).await;
    assert!(
        !saw.contains_key("x-request-id") && !saw.contains_key("traceparent"),
        "{saw:?}"
    );
    let saw = app_saw(mesh.outbound(), &[("x-request-id", "mine-1")]).await;
    assert_eq!(saw["x-request-id"], "mine-1");
}

#[tokio::test]
async fn the_last_spans_leave_at_the_end_of_a_drain() {
    let rx = OtlpReceiver::start().await;
    let app = app("web").await;
    // Batches that would wait an hour: only the drain sends them.
    let mut opts = traced(&rx.url(), 100.0, 3, "web-0");
    if let Some(t) = opts.tracing.as_mut() {
        t.batching.delay = Duration::from_secs(3600);
    }
    let proxy = Proxy::start(server_snapshot(app), opts).await.unwrap();
    let inbound = proxy.listener_addr("inbound").unwrap();
    for _ in 0..3 {
        let (status, _) = get(inbound, "/").await;
        assert_eq!(status, 200);
    }
    assert!(rx.spans().is_empty(), "nothing before the batch is due");
    let drained = proxy.stop(LIMIT).await;
    assert_eq!(drained, outrigger_proxy::Drained::Clean);
    let spans = rx.spans();
    assert_eq!(spans.len(), 3, "{spans:#?}");
    assert!(spans.iter().all(|s| s.kind() == SpanKind::Server));
}
