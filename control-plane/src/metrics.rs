//! The control plane's own metrics (`GET /metrics` on the config server).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

/// A proxy's release against the control plane's (`outrigger_api::stream::Skew`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SkewLabel {
    pub skew: &'static str,
}

pub struct Metrics {
    /// Proxies holding a config stream open.
    pub connected_proxies: Gauge,
    /// Config updates written to a proxy's stream.
    pub pushes: Counter,
    /// From the moment a source change was seen to the moment the update
    /// that carries it was written to a proxy's stream.
    pub push_latency: Histogram,
    /// Size of each update written, in bytes.
    pub update_bytes: Histogram,
    /// Mesh resources currently not accepted, by kind.
    pub rejected_resources: Family<KindLabel, Gauge>,
    /// Deleted DestinationRules and Services kept in force because routes
    /// in force use them, by kind.
    pub deleted_in_force: Family<KindLabel, Gauge>,
    /// Manifest files and documents whose last read failed (folder source).
    pub manifest_errors: Gauge,
    /// Mesh-wide translations run.
    pub translations: Counter,
    /// Kubernetes watch errors (each followed by a re-list after back-off).
    pub watch_errors: Counter,
    /// Status conditions written to mesh resources, and failed writes.
    pub status_writes: Counter,
    pub status_write_errors: Counter,
    /// 1 while this replica leads (writes the statuses), else 0.
    pub leader: Gauge,
    /// Times this replica gained or lost the leadership.
    pub leader_changes: Counter,
    /// Certificate requests, by result: issued, refused, unauthenticated,
    /// bad_request, rate_limited, unavailable.
    pub certify_requests: Family<ResultLabel, Counter>,
    /// Changes of the mesh CA's files, by result: applied, refused.
    pub ca_reloads: Family<ResultLabel, Counter>,
    /// Config streams opened, by the proxy's release against this one's.
    pub streams_by_skew: Family<SkewLabel, Counter>,
    registry: Registry,
}

impl Metrics {
    pub fn new() -> Self {
        let mut reg = Registry::default();
        outrigger_runtime::metrics::register_build_and_process(&mut reg);
        let connected_proxies = Gauge::default();
        reg.register(
            "outrigger_cp_connected_proxies",
            "Proxies holding a config stream open",
            connected_proxies.clone(),
        );
        let pushes = Counter::default();
        reg.register(
            "outrigger_cp_pushes",
            "Config updates written to proxies' streams",
            pushes.clone(),
        );
        let push_latency = Histogram::new([
            0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ]);
        reg.register(
            "outrigger_cp_push_latency_seconds",
            "From a resource change seen by the control plane to the update written to a proxy",
            push_latency.clone(),
        );
        let update_bytes = Histogram::new([1e3, 4e3, 16e3, 64e3, 256e3, 1e6, 4e6, 16e6]);
        reg.register(
            "outrigger_cp_update_bytes",
            "Size of each config update written to a proxy",
            update_bytes.clone(),
        );
        let rejected_resources = Family::<KindLabel, Gauge>::default();
        reg.register(
            "outrigger_cp_rejected_resources",
            "Mesh resources currently not accepted, by kind",
            rejected_resources.clone(),
        );
        let deleted_in_force = Family::<KindLabel, Gauge>::default();
        reg.register(
            "outrigger_cp_deleted_in_force",
            "Deleted resources kept in force, as last accepted, because routes in force use them, by kind",
            deleted_in_force.clone(),
        );
        let manifest_errors = Gauge::default();
        reg.register(
            "outrigger_cp_manifest_errors",
            "Manifest files and documents whose last read failed (what they name keeps its last good version)",
            manifest_errors.clone(),
        );
        let translations = Counter::default();
        reg.register(
            "outrigger_cp_translations",
            "Mesh-wide translations of the store",
            translations.clone(),
        );
        let watch_errors = Counter::default();
        reg.register(
            "outrigger_cp_watch_errors",
            "Kubernetes watch errors; the watch re-lists after a back-off",
            watch_errors.clone(),
        );
        let status_writes = Counter::default();
        reg.register(
            "outrigger_cp_status_writes",
            "Accepted conditions written to mesh resources",
            status_writes.clone(),
        );
        let status_write_errors = Counter::default();
        reg.register(
            "outrigger_cp_status_write_errors",
            "Status writes that failed (tried again 5 s later, or with the next change)",
            status_write_errors.clone(),
        );
        let leader = Gauge::default();
        reg.register(
            "outrigger_cp_leader",
            "1 while this replica holds the Lease and writes the statuses, else 0",
            leader.clone(),
        );
        let leader_changes = Counter::default();
        reg.register(
            "outrigger_cp_leader_changes",
            "Times this replica gained or lost the leadership of the status writes",
            leader_changes.clone(),
        );
        let certify_requests = Family::<ResultLabel, Counter>::default();
        // Every result starts at zero, so that increase() counts the first.
        for result in [
            "issued",
            "refused",
            "unauthenticated",
            "bad_request",
            "rate_limited",
            "unavailable",
        ] {
            drop(certify_requests.get_or_create(&ResultLabel { result }));
        }
        reg.register(
            "outrigger_cp_certify_requests",
            "Certificate requests to the mesh CA, by result",
            certify_requests.clone(),
        );
        let ca_reloads = Family::<ResultLabel, Counter>::default();
        for result in ["applied", "refused"] {
            drop(ca_reloads.get_or_create(&ResultLabel { result }));
        }
        reg.register(
            "outrigger_cp_ca_reloads",
            "Changes of the mesh CA's files, by result: applied, or refused (the CA in force stays)",
            ca_reloads.clone(),
        );
        let streams_by_skew = Family::<SkewLabel, Counter>::default();
        for skew in ["supported", "too_old", "newer", "unknown"] {
            drop(streams_by_skew.get_or_create(&SkewLabel { skew }));
        }
        reg.register(
            "outrigger_cp_streams_by_skew",
            "Config streams opened, by the proxy's release against the control plane's: supported, too_old, newer, unknown",
            streams_by_skew.clone(),
        );
        Self {
            connected_proxies,
            pushes,
            push_latency,
            update_bytes,
            rejected_resources,
            deleted_in_force,
            manifest_errors,
            translations,
            watch_errors,
            status_writes,
            status_write_errors,
            leader,
            leader_changes,
            certify_requests,
            ca_reloads,
            streams_by_skew,
            registry: reg,
        }
    }

    pub fn encode(&self) -> String {
        outrigger_runtime::metrics::encode(&self.registry)
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
