//! Version skew between a proxy and a newer control plane, against a real
//! proxy following a stand-in control plane ([`FakeStream`]) that sends what
//! a newer release would: an update with fields this proxy does not know is
//! applied without them and the fields are counted; an update that requires
//! a feature this proxy lacks is refused whole, the last good configuration
//! still serving, and the stream goes on. A file an operator writes stays
//! strict: the real proxy binary refuses a snapshot with an unknown field,
//! naming it, its file and its line.

use std::net::SocketAddr;
use std::time::Duration;

use outrigger_proxy::Proxy;
use outrigger_tests::control_plane::{follow, waiting_proxy, ControlPlane, Dir, FakeStream};
use outrigger_tests::*;

/// An update for the client's pod with `web.shop:80` at `endpoint`;
/// `extra` is spliced in as more top-level members (with a leading comma).
fn update(version: &str, endpoint: SocketAddr, endpoint_extra: &str, extra: &str) -> String {
    format!(
        r#"{{"version":"{version}","proxy":{{"workload":"client","namespace":"shop"}},"services":[{{"name":"web","namespace":"shop","ports":[80],"endpoints":[{{"address":"{endpoint}","workload":"web"{endpoint_extra}}}]}}]{extra}}}"#
    )
}

async fn answer(p: &Proxy) -> String {
    get(p.listener_addr("outbound").unwrap(), "/").await.1
}

async fn counter(p: &Proxy, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric(&scrape(p).await, name, labels)
}

#[tokio::test]
async fn a_newer_control_plane_is_followed_within_what_the_proxy_knows() {
    let (v1, v2) = (app("v1").await, app("v2").await);
    let cp = FakeStream::start().await;
    let boot = web_snapshot("bootstrap", "");
    let p = waiting_proxy(boot.clone(), None).await;
    follow(&p, cp.addr, boot, "shop", "client-1", None);

    // A newer control plane's optional fields: top-level, in a service, in
    // an endpoint. Applied without them; the three counted.
    let first = update(
        "skew-1",
        v1,
        r#","zone":"eu-1a""#,
        r#","telemetry":{"sampling":0.5}"#,
    )
    .replace(
        r#""ports":[80]"#,
        r#""ports":[80],"sessionAffinity":"none""#,
    );
    cp.send(&first);
    assert!(
        eventually(Duration::from_secs(10), || ready(&p)).await,
        "the update with unknown fields was never applied"
    );
    assert_eq!(answer(&p).await, "hello from v1");
    let unknown = "outrigger_control_plane_unknown_fields_total";
    assert_eq!(counter(&p, unknown, &[("message", "config")]).await, 3.0);
    assert_eq!(
        counter(&p, "outrigger_config_rejected_total", &[]).await,
        0.0
    );

    // An update that moves web to v2 but requires a feature this proxy
    // lacks: refused whole, counted, v1 still serving.
    cp.send(&update(
        "skew-2",
        v2,
        "",
        r#","requires":["from-a-later-release"]"#,
    ));
    assert!(
        eventually(Duration::from_secs(10), || async {
            counter(&p, "outrigger_config_rejected_total", &[]).await == 1.0
        })
        .await,
        "the update requiring a missing feature was not refused"
    );
    for _ in 0..5 {
        assert_eq!(answer(&p).await, "hello from v1");
    }
    let config = get(p.admin_addr, "/config").await.1;
    assert!(
        config.contains("skew-1") && !config.contains("skew-2"),
        "{config}"
    );

    // The stream goes on: the next update that needs nothing new applies.
    cp.send(&update("skew-3", v2, "", ""));
    assert!(
        eventually(Duration::from_secs(10), || async {
            answer(&p).await == "hello from v2"
        })
        .await,
        "the update after the refused one was never applied"
    );
    assert_eq!(counter(&p, unknown, &[("message", "config")]).await, 3.0);
    assert_eq!(
        counter(&p, "outrigger_config_rejected_total", &[]).await,
        1.0
    );
    // One stream, never reopened, on which the proxy named its release.
    let opened = cp.requests();
    assert_eq!(opened.len(), 1, "{opened:?}");
    assert!(
        opened[0].uri.contains("namespace=shop&pod=client-1"),
        "{opened:?}"
    );
    assert_eq!(
        opened[0].user_agent.as_deref(),
        Some(format!("outrigger-proxy/{}", outrigger_runtime::build::VERSION).as_str())
    );
}

/// The control plane counts each stream by its proxy's release against its
/// own: the same or the one before is supported; newer, much older, or
/// unsaid are counted apart (and the first two logged).
#[tokio::test]
async fn the_control_plane_counts_streams_by_the_proxies_release() {
    let folder = Dir::new("skew");
    let cp = ControlPlane::bind_and_start(folder.path()).await;
    let (major, minor) = {
        let mut v = outrigger_runtime::build::VERSION.split('.');
        let major: u64 = v.next().unwrap().parse().unwrap();
        let minor: u64 = v.next().unwrap().parse().unwrap();
        (major, minor)
    };
    let agents = [
        Some(format!(
            "outrigger-proxy/{}",
            outrigger_runtime::build::VERSION
        )),
        Some(format!("outrigger-proxy/{major}.{}.0", minor + 1)),
        Some(format!("outrigger-proxy/{}.0.0", major + 1)),
        None,
    ];
    for (i, agent) in agents.into_iter().enumerate() {
        let mut send = http2(cp.addr).await;
        let mut req = http::Request::get(format!(
            "http://{}/v1/config?namespace=shop&pod=p{i}",
            cp.addr
        ));
        if let Some(agent) = agent {
            req = req.header(http::header::USER_AGENT, agent);
        }
        let req = req.body(empty()).unwrap();
        // The stream stays open; its answer is not what is checked here.
        tokio::spawn(async move {
            let _answer = send.send_request(req).await;
            std::future::pending::<()>().await;
        });
    }
    let counted = |skew: &'static str| {
        let metrics = cp.metrics.clone();
        async move {
            metric(
                &metrics.encode(),
                "outrigger_cp_streams_by_skew_total",
                &[("skew", skew)],
            )
        }
    };
    assert!(
        eventually(Duration::from_secs(10), || async {
            counted("supported").await + counted("newer").await + counted("unknown").await == 4.0
        })
        .await,
        "{}",
        cp.metrics.encode()
    );
    assert_eq!(counted("supported").await, 1.0);
    assert_eq!(counted("newer").await, 2.0);
    assert_eq!(counted("unknown").await, 1.0);
    assert_eq!(counted("too_old").await, 0.0);
    cp.stop().await;
}

#[tokio::test]
async fn a_snapshot_file_with_an_unknown_field_is_still_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("proxy.yaml");
    std::fs::write(
        &file,
        "version: \"1\"\nproxy: { workload: web, namespace: shop }\nlisteners: []\nservices:\n  - name: web\n    namespace: shop\n    ports: [80]\n    endpoints: [{ address: \"10.0.0.1:80\", zone: a }]\n",
    )
    .unwrap();
    let (status, _, stderr) = run_bin(
        "outrigger-proxy",
        &["check", "--config", file.to_str().unwrap()],
        "",
    )
    .await;
    assert_ne!(status, 0, "{stderr}");
    assert!(stderr.contains(file.to_str().unwrap()), "{stderr}");
    assert!(stderr.contains("unknown field `zone`"), "{stderr}");
    assert!(stderr.contains("line 8"), "{stderr}");
}
