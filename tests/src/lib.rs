//! Test harness for cross-crate tests: real upstream servers, real Outrigger
//! proxies (in-process, bound to port 0 on loopback), real clients, and a
//! reader for the proxies' Prometheus output.
//!
//! [`Mesh::start`] builds the two-proxy hop the product is about:
//! `client → outbound proxy → (HTTP/2) → inbound proxy → app`.
//! [`control_plane::ControlPlane`] runs a real control plane on a folder.
//!
//! | module | gives |
//! |---|---|
//! | [`body`] | [`Body`], [`BoxError`], [`full`], [`empty`]: the body type of every server and client here |
//! | [`servers`] | upstream apps: [`serve_tcp`], [`serve_http`], [`serve_https`] ([`APP_TLS_NAME`]), [`app`], [`counted_app`] ([`Answer`]), [`stalling_app`] |
//! | [`clients`] | [`http1`], [`http2`], [`get`], [`try_get`], [`raw_get`], [`https_get`]; load: [`keep_requesting`], [`tally`] |
//! | [`snapshots`] | proxy snapshots: [`server_snapshot`], [`client_snapshot`], [`web_snapshot`] |
//! | [`mesh`] | [`Mesh`]: the client proxy and the server proxy in front of one app |
//! | [`identity`] | [`workload_identity`] (certified by the control plane), [`held_identity`] (already holding a certificate) |
//! | [`metrics`] | [`scrape`] a proxy's `/metrics`, read one [`metric`], what is left of its certificate ([`cert_left`]), every family in docs/metrics.md ([`assert_documented`]) |
//! | [`otlp`] | [`OtlpReceiver`]: an OTLP/HTTP trace receiver decoding the official protobuf messages, its spans ([`otlp::Received`]) |
//! | [`processes`] | [`eventually`], [`ready`], [`workspace_bin`], [`run_bin`], [`free_port`], a real Prometheus ([`PrometheusBin`], its [`Target`]s, [`Prometheus::query`]) and [`promtool`], the proxy binary on a static snapshot ([`StaticProxy`]) |
//! | [`control_plane`] | an in-process control plane on a folder, the folder, its certifier; proxies that wait for it and follow it |
//! | [`chart`] | the Helm chart rendered, a rendered container run, a fake API server |
//! | [`crd_schema`] | a custom resource held against its CRD's served version and structural schema |
//!
//! Everything but `chart`, `crd_schema` and `control_plane` is re-exported here, so a test
//! file needs only `use outrigger_tests::*;`.

pub mod body;
pub mod chart;
pub mod clients;
pub mod control_plane;
pub mod crd_schema;
pub mod identity;
pub mod mesh;
pub mod metrics;
pub mod otlp;
pub mod processes;
pub mod servers;
pub mod snapshots;

pub use body::{empty, full, Body, BoxError};
pub use clients::{get, http1, http2, https_get, keep_requesting, raw_get, tally, try_get};
pub use identity::{held_identity, workload_identity};
pub use mesh::Mesh;
pub use metrics::{assert_documented, cert_left, metric, scrape};
pub use otlp::OtlpReceiver;
pub use processes::{
    eventually, free_port, on_path, promtool, ready, run_bin, workspace_bin, Prometheus,
    PrometheusBin, StaticProxy, Target,
};
pub use servers::{
    app, counted_app, serve_http, serve_https, serve_tcp, stalling_app, Answer, APP_TLS_NAME,
};
pub use snapshots::{client_snapshot, server_snapshot, web_snapshot};
