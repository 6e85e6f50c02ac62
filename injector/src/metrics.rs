//! The injector's own metrics (`GET /metrics` on its admin port).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

pub struct Metrics {
    /// AdmissionReviews answered (malformed ones included).
    pub requests: Counter,
    /// Pods given the proxy.
    pub injected: Counter,
    /// Pods left alone, by reason (`not_enabled`, `disabled`,
    /// `host_network`, `already_injected`, `control_plane_namespace`,
    /// `not_create`, `not_a_pod`, `namespace_not_cached`).
    pub skipped: Family<ReasonLabel, Counter>,
    /// Pods refused for their annotations.
    pub refused: Counter,
    /// Errors, by kind: `bad_request` (400), `cannot_handle` (admitted
    /// unchanged with a warning).
    pub errors: Family<ReasonLabel, Counter>,
    /// From a request's body read to its answer.
    pub latency: Histogram,
    registry: Registry,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut reg = Registry::default();
        outrigger_runtime::metrics::register_build_and_process(&mut reg);
        let requests = Counter::default();
        reg.register(
            "outrigger_injector_requests",
            "AdmissionReviews answered",
            requests.clone(),
        );
        let injected = Counter::default();
        reg.register(
            "outrigger_injector_injected",
            "Pods given the proxy",
            injected.clone(),
        );
        let skipped = Family::<ReasonLabel, Counter>::default();
        reg.register(
            "outrigger_injector_skipped",
            "Pods left as they were, by reason",
            skipped.clone(),
        );
        let refused = Counter::default();
        reg.register(
            "outrigger_injector_refused",
            "Pods refused because of an annotation",
            refused.clone(),
        );
        let errors = Family::<ReasonLabel, Counter>::default();
        reg.register(
            "outrigger_injector_errors",
            "Malformed requests (bad_request) and pods admitted unchanged with a warning (cannot_handle)",
            errors.clone(),
        );
        let latency = Histogram::new([
            0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
        ]);
        reg.register(
            "outrigger_injector_admission_duration_seconds",
            "Time to answer an AdmissionReview, from its body read",
            latency.clone(),
        );
        Self {
            requests,
            injected,
            skipped,
            refused,
            errors,
            latency,
            registry: reg,
        }
    }

    pub fn encode(&self) -> String {
        outrigger_runtime::metrics::encode(&self.registry)
    }
}
