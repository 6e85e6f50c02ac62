//! Traffic policy through a real outbound proxy to real upstreams that
//! misbehave on cue: splits, header routing, retries, the retry budget,
//! outlier ejection, pool overflow, balancing, rate limits, faults, and a
//! live weight change.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http::Request;
use http_body_util::BodyExt;
use outrigger_proxy::{Options, Proxy};
use outrigger_tests::*;
use tokio::time::Instant;

async fn proxy(web_yaml: &str) -> Proxy {
    Proxy::start(web_snapshot("1", web_yaml), Options::default())
        .await
        .unwrap()
}

/// One request over a fresh HTTP/1.1 connection; status, body, headers.
async fn send(proxy: &Proxy, req: Request<Body>) -> (u16, String, http::HeaderMap) {
    let mut c = http1(proxy.listener_addr("outbound").unwrap()).await;
    let resp = c.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned(), headers)
}

fn get(path: &str) -> Request<Body> {
    Request::get(path)
        .header("host", "web.shop")
        .body(empty())
        .unwrap()
}

fn ok(_: usize, _: &Request<hyper::body::Incoming>) -> Answer {
    Answer::Status(200)
}

fn ep(addr: SocketAddr, version: &str) -> String {
    format!("  - {{ address: \"{addr}\", workload: web-{version}, labels: {{ version: {version} }} }}\n")
}

#[tokio::test]
async fn a_ninety_ten_split_lands_within_tolerance() {
    let (v1, hits1) = counted_app("v1", ok).await;
    let (v2, hits2) = counted_app("v2", ok).await;
    let p = proxy(&format!(
        "endpoints:\n{}{}subsets: [{{ name: v1, labels: {{ version: v1 }} }}, {{ name: v2, labels: {{ version: v2 }} }}]
http:
  - route:
      - {{ destination: {{ host: web, subset: v1 }}, weight: 90 }}
      - {{ destination: {{ host: web, subset: v2 }}, weight: 10 }}
",
        ep(v1, "v1"),
        ep(v2, "v2")
    ))
    .await;
    let n = 1000;
    for _ in 0..n {
        assert_eq!(send(&p, get("/")).await.0, 200);
    }
    let canary = hits2.load(Ordering::SeqCst);
    assert_eq!(hits1.load(Ordering::SeqCst) + canary, n);
    // Binomial(1000, 0.1): sd ≈ 9.5; ±40 is over 4 sd.
    assert!((60..=140).contains(&canary), "{canary} of {n} went to v2");
}

#[tokio::test]
async fn requests_are_routed_by_header_and_path() {
    let (v1, hits1) = counted_app("v1", ok).await;
    let (v2, hits2) = counted_app("v2", ok).await;
    let p = proxy(&format!(
        "endpoints:\n{}{}subsets: [{{ name: v1, labels: {{ version: v1 }} }}, {{ name: v2, labels: {{ version: v2 }} }}]
http:
  - name: jason
    match: [{{ headers: {{ end-user: {{ exact: jason }} }} }}]
    route: [{{ destination: {{ host: web, subset: v2 }} }}]
  - name: everyone
    match: [{{ uri: {{ prefix: / }} }}]
    route: [{{ destination: {{ host: web, subset: v1 }} }}]
",
        ep(v1, "v1"),
        ep(v2, "v2")
    ))
    .await;
    let jason = Request::get("/reviews")
        .header("host", "web.shop")
        .header("end-user", "jason")
        .body(empty())
        .unwrap();
    assert_eq!(send(&p, jason).await.1, "v2 200");
    assert_eq!(send(&p, get("/reviews")).await.1, "v1 200");
    assert_eq!(
        (hits1.load(Ordering::SeqCst), hits2.load(Ordering::SeqCst)),
        (1, 1)
    );
    let text = scrape(&p).await;
    assert_eq!(
        metric(
            &text,
            "outrigger_route_requests_total",
            &[("route", "jason"), ("response_code", "200")]
        ),
        1.0
    );
}

#[tokio::test]
async fn a_request_no_route_matches_gets_404_nr() {
    let (a, _) = counted_app("a", ok).await;
    let p = proxy(&format!(
        "endpoints:\n{}http:\n  - match: [{{ uri: {{ exact: /only }} }}]\n",
        ep(a, "v1")
    ))
    .await;
    let (status, body, headers) = send(&p, get("/other")).await;
    assert_eq!(status, 404);
    assert_eq!(headers["outrigger-response-flags"], "NR");
    assert!(
        body.contains("no route of web.shop matches GET /other"),
        "{body}"
    );
}

#[tokio::test]
async fn a_retry_saves_a_flaky_get() {
    let (a, hits) = counted_app("a", |n, _| Answer::Status(if n < 2 { 503 } else { 200 })).await;
    let p = proxy(&format!(
        "endpoints:\n{}http:\n  - retries: {{ attempts: 3, retryOn: 5xx }}\n",
        ep(a, "v1")
    ))
    .await;
    let (status, _, headers) = send(&p, get("/")).await;
    assert_eq!(status, 200);
    assert_eq!(headers["outrigger-attempt-count"], "3");
    assert_eq!(hits.load(Ordering::SeqCst), 3);
    let text = scrape(&p).await;
    assert_eq!(
        metric(
            &text,
            "outrigger_retries_total",
            &[("destination_service", "web.shop")]
        ),
        2.0
    );
    assert_eq!(metric(&text, "outrigger_retry_successes_total", &[]), 1.0);
}

#[tokio::test]
async fn retries_stay_in_the_destination_the_split_chose() {
    // Two subsets of two endpoints each, every endpoint failing: each
    // request takes three tries, all in the subset its split chose, each
    // retry on another endpoint of that subset while one is left. (Were the
    // split made per try, three tries would stay in one subset a quarter
    // of the time.)
    let fail = |_: usize, _: &Request<hyper::body::Incoming>| Answer::Status(503);
    let (v1a, v1a_hits) = counted_app("v1a", fail).await;
    let (v1b, v1b_hits) = counted_app("v1b", fail).await;
    let (v2a, v2a_hits) = counted_app("v2a", fail).await;
    let (v2b, v2b_hits) = counted_app("v2b", fail).await;
    let p = proxy(&format!(
        "endpoints:\n{}{}{}{}subsets: [{{ name: v1, labels: {{ version: v1 }} }}, {{ name: v2, labels: {{ version: v2 }} }}]
http:
  - route:
      - {{ destination: {{ host: web, subset: v1 }}, weight: 50 }}
      - {{ destination: {{ host: web, subset: v2 }}, weight: 50 }}
    retries: {{ attempts: 2, retryOn: 5xx }}
",
        ep(v1a, "v1"),
        ep(v1b, "v1"),
        ep(v2a, "v2"),
        ep(v2b, "v2")
    ))
    .await;
    let counts = || [&v1a_hits, &v1b_hits, &v2a_hits, &v2b_hits].map(|h| h.load(Ordering::SeqCst));
    // Ten requests with two retries each stay within the retry budget's
    // floor of 3 retries a second over 10 s.
    for i in 0..10 {
        let before = counts();
        let (status, _, headers) = send(&p, get("/")).await;
        let after = counts();
        let d: Vec<usize> = after.iter().zip(before).map(|(a, b)| a - b).collect();
        assert_eq!(status, 503, "request {i}");
        assert_eq!(headers["outrigger-attempt-count"], "3", "request {i}");
        assert_eq!(d.iter().sum::<usize>(), 3, "request {i}: {d:?}");
        let (v1, v2) = (d[0] + d[1], d[2] + d[3]);
        assert!(v1 == 0 || v2 == 0, "request {i} crossed subsets: {d:?}");
        // Both endpoints of the chosen subset were tried.
        let chosen = if v1 > 0 { &d[0..2] } else { &d[2..4] };
        assert!(chosen.iter().all(|n| *n > 0), "request {i}: {d:?}");
    }
}

#[tokio::test]
async fn a_post_the_upstream_saw_is_not_replayed() {
    let (a, hits) = counted_app("a", |_, _| Answer::Status(503)).await;
    let p = proxy(&format!(
        "endpoints:\n{}http:\n  - retries: {{ attempts: 3, retryOn: \"5xx,reset\" }}\n",
        ep(a, "v1")
    ))
    .await;
    let post = Request::post("/pay")
        .header("host", "web.shop")
        .body(full("charge 10 EUR"))
        .unwrap();
    let (status, _, headers) = send(&p, post).await;
    assert_eq!(status, 503);
    assert_eq!(headers["outrigger-attempt-count"], "1");
    assert_eq!(hits.load(Ordering::SeqCst), 1, "the payment was sent once");
}

#[tokio::test]
async fn a_post_that_never_connected_is_sent_to_another_endpoint() {
    let dead = {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let (a, hits) = counted_app("a", ok).await;
    let p = proxy(&format!(
        "endpoints:\n{}{}trafficPolicy: {{ loadBalancer: {{ simple: ROUND_ROBIN }} }}\n",
        ep(dead, "v1"),
        ep(a, "v1")
    ))
    .await;
    for _ in 0..4 {
        let post = Request::post("/pay")
            .header("host", "web.shop")
            .body(full("charge"))
            .unwrap();
        // The default policy retries connect failures, for any method.
        assert_eq!(send(&p, post).await.0, 200);
    }
    assert_eq!(hits.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn the_budget_stops_a_retry_storm() {
    let (a, hits) = counted_app("a", |_, _| Answer::Status(503)).await;
    let p = proxy(&format!(
        "endpoints:\n{}http:\n  - retries: {{ attempts: 5, retryOn: 5xx }}\n",
        ep(a, "v1")
    ))
    .await;
    let n = 300;
    let start = Instant::now();
    for _ in 0..n {
        assert_eq!(send(&p, get("/")).await.0, 503);
    }
    // Without a budget: 6 × 300 = 1800 upstream requests. With it: the 300,
    // plus 20 % of them, plus 3 per second over the 10 s window.
    let secs = start.elapsed().as_secs() as usize + 1;
    let upstream = hits.load(Ordering::SeqCst);
    let bound = n + n / 5 + 3 * 10.max(secs);
    assert!(upstream <= bound, "{upstream} upstream requests > {bound}");
    assert!(upstream > n, "some retries happened");
    let text = scrape(&p).await;
    assert!(metric(&text, "outrigger_retry_budget_exhausted_total", &[]) > 0.0);
    assert!(
        metric(
            &text,
            "outrigger_requests_total",
            &[("response_flags", "URX")]
        ) > 0.0
    );
}

#[tokio::test]
async fn an_endpoint_is_ejected_after_consecutive_5xx_and_readmitted_later() {
    let (bad, bad_hits) =
        counted_app("bad", |n, _| Answer::Status(if n < 3 { 500 } else { 200 })).await;
    let (good, good_hits) = counted_app("good", ok).await;
    let p = proxy(&format!(
        "endpoints:\n{}{}trafficPolicy:
  loadBalancer: {{ simple: ROUND_ROBIN }}
  outlierDetection: {{ consecutive5xxErrors: 3, baseEjectionTime: 400ms, maxEjectionPercent: 50 }}
http:
  - retries: {{ attempts: 0 }}
",
        ep(bad, "v1"),
        ep(good, "v2")
    ))
    .await;
    // Round robin: 6 requests give the bad endpoint its 3 errors.
    for _ in 0..6 {
        send(&p, get("/")).await;
    }
    assert_eq!(bad_hits.load(Ordering::SeqCst), 3);
    let text = scrape(&p).await;
    assert_eq!(metric(&text, "outrigger_outlier_ejections_total", &[]), 1.0);
    assert_eq!(
        metric(&text, "outrigger_outlier_ejected_endpoints", &[]),
        1.0
    );
    // Ejected: everything goes to the good one.
    for _ in 0..10 {
        assert_eq!(send(&p, get("/")).await.0, 200);
    }
    assert_eq!(bad_hits.load(Ordering::SeqCst), 3);
    // After the ejection time a trial request goes through and succeeds.
    tokio::time::sleep(Duration::from_millis(450)).await;
    for _ in 0..10 {
        assert_eq!(send(&p, get("/")).await.0, 200);
    }
    assert!(bad_hits.load(Ordering::SeqCst) > 3, "readmitted");
    assert!(good_hits.load(Ordering::SeqCst) >= 13);
    let text = scrape(&p).await;
    assert_eq!(
        metric(&text, "outrigger_outlier_ejected_endpoints", &[]),
        0.0
    );
}

/// The admin port's `/endpoints` names the endpoint outlier detection
/// ejected, until when and how often, and the other one's load.
#[tokio::test]
async fn the_admin_port_shows_which_endpoint_is_ejected_and_until_when() {
    use outrigger_api::health::{EndpointState, EndpointsHealth};
    let (bad, _) = counted_app("bad", |_, _| Answer::Status(500)).await;
    let (good, _) = counted_app("good", ok).await;
    let p = proxy(&format!(
        "endpoints:\n{}{}trafficPolicy:
  loadBalancer: {{ simple: ROUND_ROBIN }}
  outlierDetection: {{ consecutive5xxErrors: 2, baseEjectionTime: 60s, maxEjectionPercent: 50 }}
http:
  - retries: {{ attempts: 0 }}
",
        ep(bad, "v1"),
        ep(good, "v2")
    ))
    .await;
    let read = || async {
        let (status, body) = outrigger_tests::get(p.admin_addr, "/endpoints").await;
        assert_eq!(status, 200, "{body}");
        serde_json::from_str::<EndpointsHealth>(&body).unwrap()
    };
    let before = read().await;
    let web = &before.services[0];
    assert_eq!((web.name.as_str(), web.outlier_detection), ("web", true));
    assert!(web
        .endpoints
        .iter()
        .all(|e| e.state == EndpointState::Healthy));

    // Round robin: 4 requests give the bad endpoint its 2 errors.
    let started = std::time::SystemTime::now();
    for _ in 0..4 {
        send(&p, get("/")).await;
    }
    let sent = std::time::SystemTime::now();
    let after = read().await;
    let eps = &after.services[0].endpoints;
    let bad_ep = eps.iter().find(|e| e.address == bad.to_string()).unwrap();
    let good_ep = eps.iter().find(|e| e.address == good.to_string()).unwrap();
    assert_eq!(bad_ep.state, EndpointState::Ejected, "{bad_ep:?}");
    assert_eq!(bad_ep.ejections, 1);
    let left = bad_ep.ejected_for_ms.unwrap();
    assert!((50_000..=60_000).contains(&left), "{left} ms left");
    let until =
        std::time::UNIX_EPOCH + Duration::from_millis(bad_ep.ejected_until_unix_ms.unwrap());
    // Ejected for 60 s from a moment while the requests ran (a second of
    // slack each side for the clocks' conversion).
    let (earliest, latest) = (
        started + Duration::from_secs(59),
        sent + Duration::from_secs(61),
    );
    assert!(
        earliest <= until && until <= latest,
        "{until:?} not in {earliest:?}..{latest:?}"
    );
    assert_eq!(good_ep.state, EndpointState::Healthy);
    assert_eq!(good_ep.ejected_for_ms, None);
    assert!(good_ep.latency_ms.unwrap() > 0.0, "{good_ep:?}");
    assert_eq!(good_ep.in_flight, 0);
}

#[tokio::test]
async fn a_lone_ejected_endpoint_gets_a_quick_503_that_says_why() {
    let (bad, _) = counted_app("bad", |_, _| Answer::Status(500)).await;
    let p = proxy(&format!(
        "endpoints:\n{}trafficPolicy: {{ outlierDetection: {{ consecutive5xxErrors: 2, baseEjectionTime: 60s }} }}
http:
  - retries: {{ attempts: 0 }}
",
        ep(bad, "v1")
    ))
    .await;
    send(&p, get("/")).await;
    send(&p, get("/")).await;
    let (status, body, headers) = send(&p, get("/")).await;
    assert_eq!(
        (status, &headers["outrigger-response-flags"]),
        (503, &"UH".parse::<http::HeaderValue>().unwrap())
    );
    assert!(
        body.contains("all 1 endpoints of service web.shop are ejected"),
        "{body}"
    );
}

#[tokio::test]
async fn pool_overflow_answers_503_at_once() {
    let (slow, hits) = counted_app("slow", |_, _| Answer::Hang).await;
    let p = proxy(&format!(
        "endpoints:\n{}trafficPolicy: {{ connectionPool: {{ http: {{ http2MaxRequests: 1 }} }} }}\n",
        ep(slow, "v1")
    ))
    .await;
    let addr = p.listener_addr("outbound").unwrap();
    let mut first = http1(addr).await;
    let hanging = tokio::spawn(async move { first.send_request(get("/")).await });
    // The first request holds the only slot once the app has it.
    assert!(
        eventually(Duration::from_secs(5), || async {
            hits.load(Ordering::SeqCst) == 1
        })
        .await
    );
    let started = Instant::now();
    let (status, body, headers) = tokio::time::timeout(Duration::from_secs(5), send(&p, get("/")))
        .await
        .expect("the overflow is answered at once");
    assert!(started.elapsed() < Duration::from_millis(500));
    assert_eq!(
        (status, &headers["outrigger-response-flags"]),
        (503, &"UO".parse::<http::HeaderValue>().unwrap())
    );
    assert!(body.contains("http2MaxRequests"), "{body}");
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    let text = scrape(&p).await;
    assert_eq!(
        metric(
            &text,
            "outrigger_pool_overflow_total",
            &[("destination_service", "web.shop")]
        ),
        1.0
    );
    hanging.abort();
}

#[tokio::test]
async fn the_balancer_moves_load_away_from_a_slow_endpoint() {
    let (fast, fast_hits) = counted_app("fast", ok).await;
    let (slow, slow_hits) = counted_app("slow", |_, _| Answer::Slow(40, 200)).await;
    let p = proxy(&format!("endpoints:\n{}{}", ep(fast, "v1"), ep(slow, "v2"))).await;
    for _ in 0..200 {
        assert_eq!(send(&p, get("/")).await.0, 200);
    }
    let (f, s) = (
        fast_hits.load(Ordering::SeqCst),
        slow_hits.load(Ordering::SeqCst),
    );
    assert_eq!(f + s, 200);
    assert!(s <= 10, "the slow endpoint got {s} of 200");
}

#[tokio::test]
async fn requests_past_the_inbound_rate_get_429_with_retry_after() {
    let app = app("web").await;
    let mut snap = server_snapshot(app);
    snap.listeners[0].rate_limits = vec![outrigger_api::policy::PortRateLimit {
        port: None,
        token_bucket: outrigger_api::policy::TokenBucket {
            max_tokens: 5,
            tokens_per_fill: 5,
            fill_interval: outrigger_api::Duration::from_secs(60),
        },
    }];
    let server = Proxy::start(snap, Options::default()).await.unwrap();
    let inbound = server.listener_addr("inbound").unwrap();
    let mut codes = Vec::new();
    let mut c = http1(inbound).await;
    for _ in 0..8 {
        let resp = c.send_request(get("/")).await.unwrap();
        codes.push(resp.status().as_u16());
        if resp.status() == 429 {
            assert_eq!(resp.headers()["outrigger-response-flags"], "RL");
            let after: u64 = resp.headers()["retry-after"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!((1..=60).contains(&after), "{after}");
        }
        resp.into_body().collect().await.unwrap();
    }
    assert_eq!(codes, [200, 200, 200, 200, 200, 429, 429, 429]);
    let text = scrape(&server).await;
    assert_eq!(
        metric(
            &text,
            "outrigger_requests_total",
            &[("response_flags", "RL"), ("response_code", "429")]
        ),
        3.0
    );
}

#[tokio::test]
async fn fault_aborts_and_delays_hit_their_percentages() {
    let (a, hits) = counted_app("a", ok).await;
    let p = proxy(&format!(
        "endpoints:\n{}http:
  - name: abort
    match: [{{ uri: {{ prefix: /abort }} }}]
    fault: {{ abort: {{ httpStatus: 418, percentage: {{ value: 30 }} }} }}
  - name: delay
    fault: {{ delay: {{ fixedDelay: 50ms, percentage: {{ value: 50 }} }} }}
",
        ep(a, "v1")
    ))
    .await;
    let n = 300;
    let mut aborted = 0;
    for _ in 0..n {
        let (status, _, headers) = send(&p, get("/abort")).await;
        if status == 418 {
            assert_eq!(headers["outrigger-response-flags"], "FI");
            aborted += 1;
        }
    }
    // Binomial(300, 0.3): sd ≈ 7.9; ±40 is 5 sd.
    assert!((50..=130).contains(&aborted), "{aborted} of {n} aborted");
    assert_eq!(hits.load(Ordering::SeqCst), n - aborted);

    let mut slow = 0;
    for _ in 0..100 {
        let t = Instant::now();
        assert_eq!(send(&p, get("/d")).await.0, 200);
        if t.elapsed() >= Duration::from_millis(50) {
            slow += 1;
        }
    }
    assert!((30..=70).contains(&slow), "{slow} of 100 delayed");
    let text = scrape(&p).await;
    let flagged = metric(
        &text,
        "outrigger_requests_total",
        &[("response_flags", "DI")],
    );
    assert!(
        flagged >= slow as f64 - 5.0 && flagged <= slow as f64,
        "{flagged} flagged DI, {slow} slow"
    );
}

#[tokio::test]
async fn a_weight_change_under_load_fails_no_request() {
    let (blue, blue_hits) = counted_app("blue", |_, _| Answer::Slow(2, 200)).await;
    let (green, green_hits) = counted_app("green", |_, _| Answer::Slow(2, 200)).await;
    let web = |b: u32, g: u32| {
        format!(
            "endpoints:\n{}{}subsets: [{{ name: blue, labels: {{ version: blue }} }}, {{ name: green, labels: {{ version: green }} }}]
http:
  - route:
      - {{ destination: {{ host: web, subset: blue }}, weight: {b} }}
      - {{ destination: {{ host: web, subset: green }}, weight: {g} }}
",
            ep(blue, "blue"),
            ep(green, "green")
        )
    };
    let p = std::sync::Arc::new(
        Proxy::start(web_snapshot("blue", &web(100, 0)), Options::default())
            .await
            .unwrap(),
    );
    let addr = p.listener_addr("outbound").unwrap();
    // Four clients on long-lived connections (two HTTP/1.1, two HTTP/2).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients = keep_requesting(addr, stop.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    p.apply(web_snapshot("half", &web(50, 50))).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    p.apply(web_snapshot("green", &web(0, 100))).unwrap();
    let green_at_switch = green_hits.load(Ordering::SeqCst);
    let blue_at_switch = blue_hits.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    let (ok, failed) = tally(clients).await;
    assert_eq!(failed, 0, "{ok} requests succeeded");
    assert!(ok > 100, "{ok}");
    assert!(green_at_switch > 0, "the 50/50 split reached green");
    assert!(
        green_hits.load(Ordering::SeqCst) > green_at_switch,
        "green took over"
    );
    // At most the requests in flight at the switch reach blue afterwards.
    assert!(blue_hits.load(Ordering::SeqCst) <= blue_at_switch + 4);
    // A bad snapshot is refused and the good one stays in force.
    let mut bad = web_snapshot("bad", &web(0, 100));
    bad.services[0].http[0].route[0].destination.subset = Some("purple".into());
    let err = p.apply(bad).unwrap_err();
    assert!(err.to_string().contains("no subset \"purple\""), "{err}");
    assert_eq!(send(&p, get("/")).await.1, "green 200");
}

#[tokio::test]
async fn a_direct_response_route_is_answered_by_the_proxy() {
    // Istio's `directResponse`: the matching route is answered by the
    // proxy; the others still reach the endpoints.
    let (upstream, hits) = counted_app("web", ok).await;
    let p = proxy(&format!(
        r#"endpoints: [{{ address: "{upstream}" }}]
http:
  - name: maintenance
    match: [{{ uri: {{ prefix: /admin }} }}]
    directResponse: {{ status: 503, body: {{ string: "down for maintenance" }} }}
  - route: [{{ destination: {{ host: web.shop }} }}]"#
    ))
    .await;
    let (status, body, _) = send(&p, get("/admin/x")).await;
    assert_eq!((status, body.as_str()), (503, "down for maintenance"));
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 0);
    assert_eq!(send(&p, get("/shop")).await.0, 200);
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 1);
    let text = scrape(&p).await;
    assert_eq!(
        metric(
            &text,
            "outrigger_route_requests_total",
            &[("route", "maintenance"), ("response_code", "503")]
        ),
        1.0,
        "{text}"
    );
}

#[test]
fn a_direct_response_route_is_checked() {
    let bad = |yaml: &str| web_snapshot("1", yaml).validate().unwrap_err().to_string();
    let e = bad(
        "http:\n  - directResponse: { status: 99 }\n    route: [{ destination: { host: web.shop } }]",
    );
    assert!(
        e.contains("directResponse: a route answers directly or sends"),
        "{e}"
    );
    assert!(
        e.contains("directResponse.status: 99 is not an HTTP status"),
        "{e}"
    );
}
