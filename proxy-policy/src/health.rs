//! The live state of every endpoint of the configuration in force, as the
//! admin port's `/endpoints` shows it ([`outrigger_api::health`]): outlier
//! detection's verdict (ejected or not, until when, how often), requests in
//! flight, the latency estimate, slow start. Pure: the clock is passed in.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use outrigger_api::health::{EndpointHealth, EndpointState, EndpointsHealth, ServiceHealth};
use tokio::time::Instant;

use crate::balance::warm_factor;
use crate::config::{Config, EndpointState as Endpoint, ServiceState};
use crate::outlier::Phase;

/// Every service entry of `config` with its endpoints' state at `now`;
/// `wall` is the wall-clock time at `now` (for when an ejection ends).
pub fn endpoints(config: &Config, now: Instant, wall: SystemTime) -> EndpointsHealth {
    let services = config
        .snapshot
        .services
        .iter()
        .zip(config.services())
        .map(|(svc, state)| ServiceHealth {
            name: svc.name.clone(),
            namespace: svc.namespace.clone(),
            ports: svc.ports.clone(),
            outlier_detection: state.outlier.is_some(),
            endpoints: state
                .endpoints
                .iter()
                .map(|ep| endpoint(state, ep, now, wall))
                .collect(),
        })
        .collect();
    EndpointsHealth { services }
}

fn endpoint(svc: &ServiceState, ep: &Endpoint, now: Instant, wall: SystemTime) -> EndpointHealth {
    let status = ep.stats.outlier.status(now);
    let (state, left) = match status.map(|s| s.phase) {
        None | Some(Phase::Healthy) => (EndpointState::Healthy, None),
        Some(Phase::Ejected { until }) => (EndpointState::Ejected, Some(until - now)),
        Some(Phase::TrialDue) => (EndpointState::TrialDue, None),
        Some(Phase::Trial) => (EndpointState::Trial, None),
    };
    let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let warm = warm_factor(&ep.stats, svc.lb.warmup, now);
    EndpointHealth {
        address: ep.addr.to_string(),
        state,
        ejected_for_ms: left.map(millis),
        ejected_until_unix_ms: left
            .map(|left| (wall + left).duration_since(UNIX_EPOCH).map_or(0, millis)),
        ejections: status.map_or(0, |s| s.ejections),
        consecutive_5xx: status.map_or(0, |s| s.consecutive_5xx),
        consecutive_gateway_errors: status.map_or(0, |s| s.consecutive_gateway),
        in_flight: ep.stats.load.in_flight(),
        latency_ms: ep.stats.load.estimate(now).map(|ns| ns / 1e6),
        warming: (warm < 1.0).then_some(warm),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outlier::Outcome;
    use outrigger_api::Snapshot;

    fn snapshot(outlier: &str) -> Snapshot {
        Snapshot::from_yaml(&format!(
            r#"
version: "1"
proxy: {{ workload: client, namespace: shop }}
services:
  - name: web
    namespace: shop
    ports: [80]
    endpoints:
      - {{ address: "10.0.0.1:8080" }}
      - {{ address: "10.0.0.2:8080" }}
    trafficPolicy:
      loadBalancer: {{ warmupDurationSecs: 100s }}
      {outlier}
  - name: db
    namespace: shop
    ports: [5432]
    endpoints: [{{ address: "10.0.0.9:5432" }}]
"#
        ))
        .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn an_ejected_endpoint_says_until_when_and_the_others_their_load() {
        let outlier = "outlierDetection: { consecutive5xxErrors: 2, baseEjectionTime: 30s }";
        let first = Config::try_from(snapshot(outlier)).unwrap();
        // A second snapshot: a new endpoint joins and warms up.
        let mut next = snapshot(outlier);
        next.services[0].endpoints.push(
            serde_json::from_value(serde_json::json!({ "address": "10.0.0.3:8080" })).unwrap(),
        );
        let config = Config::build(next, Some(&first)).unwrap();
        let web = &config.services()[0];
        let gauge = prometheus_client::metrics::gauge::Gauge::default;
        for _ in 0..2 {
            web.endpoints[0].stats.outlier.observe(
                Outcome::Status(503),
                Instant::now(),
                |_| true,
                gauge,
            );
        }
        web.endpoints[1]
            .stats
            .load
            .observe(Duration::from_micros(2500), Instant::now());
        tokio::time::advance(Duration::from_secs(10)).await;
        let wall = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let health = endpoints(&config, Instant::now(), wall);

        let web = &health.services[0];
        assert_eq!(
            (
                web.name.as_str(),
                web.ports.as_slice(),
                web.outlier_detection
            ),
            ("web", &[80][..], true)
        );
        let ejected = &web.endpoints[0];
        assert_eq!(ejected.address, "10.0.0.1:8080");
        assert_eq!(ejected.state, EndpointState::Ejected);
        assert_eq!(ejected.ejected_for_ms, Some(20_000));
        assert_eq!(ejected.ejected_until_unix_ms, Some(1_800_000_020_000));
        assert_eq!((ejected.ejections, ejected.consecutive_5xx), (1, 0));
        let measured = &web.endpoints[1];
        assert_eq!(measured.state, EndpointState::Healthy);
        assert_eq!(measured.ejected_for_ms, None);
        // 2.5 ms, decayed over 10 s idle by e^-1.
        let latency = measured.latency_ms.unwrap();
        assert!(
            (latency - 2.5 / std::f64::consts::E).abs() < 1e-6,
            "{latency}"
        );
        assert_eq!(measured.warming, None, "there from the first snapshot");
        let joined = &web.endpoints[2];
        assert_eq!(joined.latency_ms, None);
        assert_eq!(joined.warming, Some(0.1), "10 s of a 100 s warm-up");

        let db = &health.services[1];
        assert!(!db.outlier_detection);
        assert_eq!(db.endpoints[0].state, EndpointState::Healthy);

        tokio::time::advance(Duration::from_secs(20)).await;
        let health = endpoints(&config, Instant::now(), wall);
        assert_eq!(
            health.services[0].endpoints[0].state,
            EndpointState::TrialDue
        );
    }
}
