//! docs/metrics.md is the metrics reference: every family each binary
//! registers has its row there, with its type, written as queries see it
//! (counters with `_total`). Here, the families a binary has from its start;
//! the dashboards test checks every family its traffic brings to life.

use outrigger_tests::assert_documented;

fn check(who: &str, text: &str) {
    let n = assert_documented(who, text);
    assert!(
        text.contains("# TYPE outrigger_build_info gauge") && n > 5,
        "{who}: {n} families found:\n{text}"
    );
}

#[test]
fn every_proxy_family_is_documented() {
    check(
        "the proxy",
        &outrigger_proxy::metrics::Metrics::new().encode(),
    );
}

#[test]
fn every_control_plane_family_is_documented() {
    check(
        "the control plane",
        &outrigger_control_plane::metrics::Metrics::new().encode(),
    );
}

#[test]
fn every_injector_family_is_documented() {
    check(
        "the injector",
        &outrigger_injector::metrics::Metrics::new().encode(),
    );
}
