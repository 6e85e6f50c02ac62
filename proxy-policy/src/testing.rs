//! Tables built from small snapshots, for tests here and for the proxy's
//! layer tests (feature `testing`).

use std::sync::Arc;
use std::time::Duration;

use outrigger_api::{ServiceRef, Snapshot};
use prometheus_client::metrics::gauge::Gauge;
use tokio::time::Instant;

use crate::config::{Config, ServiceState};
use crate::fault::{Abort, FaultPolicy};
use crate::outlier::{Outcome, OutlierPolicy, Transition};
use crate::retry::RetryPolicy;
use crate::rewrite::UriRewrite;
use crate::route::{Backend, Route};

/// A config with service `name.shop:80` and `endpoints` endpoints at
/// 10.0.<k>.<i+1>:80, with `policy` YAML appended to the service.
pub fn config(services: &[(&str, usize, &str)]) -> Config {
    let mut yaml = String::from("version: '1'\nservices:\n");
    for (k, (name, n, policy)) in services.iter().enumerate() {
        yaml.push_str(&format!(
            "  - name: {name}\n    namespace: shop\n    ports: [80]\n    endpoints:\n"
        ));
        for i in 0..*n {
            yaml.push_str(&format!(
                "      - {{ address: \"10.0.{k}.{}:80\", labels: {{ version: v{} }} }}\n",
                i + 1,
                i % 2 + 1
            ));
        }
        for line in policy.lines() {
            yaml.push_str(&format!("    {line}\n"));
        }
    }
    Config::try_from(Snapshot::from_yaml(&yaml).expect("test yaml")).expect("test snapshot")
}

pub fn service_ref(name: &str) -> ServiceRef {
    ServiceRef {
        name: name.into(),
        namespace: "shop".into(),
        port: 80,
    }
}

/// The default route of a one-endpoint `web.shop`, changed by `edit`.
pub fn route_with(edit: impl FnOnce(&mut Route)) -> Arc<Route> {
    let cfg = config(&[("web", 1, "")]);
    let mut route = (*cfg.routes(&service_ref("web")).unwrap()[0]).clone();
    edit(&mut route);
    Arc::new(route)
}

/// A backend for all endpoints of a one-endpoint service `name.shop`.
pub fn backend_named(name: &str) -> Backend {
    let cfg = config(&[(name, 1, "")]);
    Backend::whole(cfg.service(&service_ref(name)).unwrap())
}

/// Ejects endpoint `i` for 30 s, as the outlier layer does
/// (one 5xx ejects, whatever the service's own policy).
pub fn eject(svc: &ServiceState, i: usize) {
    let d = &svc.endpoints[i].stats.outlier;
    d.carry(
        Some(&OutlierPolicy {
            consecutive_5xx: 1,
            consecutive_gateway: 0,
            interval: Duration::from_secs(10),
            base_ejection: Duration::from_secs(30),
            max_ejection_percent: 100,
        }),
        Instant::now(),
    );
    let t = d.observe(
        Outcome::Status(503),
        Instant::now(),
        |_| true,
        Gauge::default,
    );
    assert!(matches!(t, Transition::Ejected { .. }), "{t:?}");
}

/// A retry policy: `attempts` retries on `on` (Istio `retryOn`).
pub fn retry_policy(on: &str, attempts: u32) -> RetryPolicy {
    RetryPolicy::from(&outrigger_api::policy::Retries {
        attempts,
        per_try_timeout: None,
        retry_on: Some(on.into()),
        retry_non_idempotent: false,
    })
}

/// A fault policy: a delay of `ms` for a share, an abort for a share.
pub fn fault_policy(delay: Option<(u64, f64)>, abort: Option<(Abort, f64)>) -> FaultPolicy {
    FaultPolicy {
        delay: delay.map(|(ms, p)| (Duration::from_millis(ms), p)),
        abort,
    }
}

/// A URI and authority rewrite.
pub fn uri_rewrite(uri: Option<&str>, authority: Option<&str>) -> UriRewrite {
    UriRewrite::from(&outrigger_api::policy::Rewrite {
        uri: uri.map(Into::into),
        authority: authority.map(Into::into),
    })
}
