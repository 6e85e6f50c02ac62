//! Following the control plane: one long-lived HTTP/2 request per proxy
//! (`outrigger_api::stream`), each update merged into the bootstrap snapshot
//! and applied. Runs on its own thread and runtime (as ztunnel does), so
//! config work never competes with the data path for a worker.
//!
//! - An update that fails validation is refused and logged with every
//!   error; the snapshot in force stays (`outrigger_config_rejected`).
//! - Version skew: each line is read tolerantly (`outrigger_api::tolerant`),
//!   so fields of a newer control plane that this proxy predates are left
//!   out, logged with their paths and counted
//!   (`outrigger_control_plane_unknown_fields`); an update whose `requires`
//!   names a feature this proxy lacks (`outrigger_api::features`) is
//!   refused whole, as an invalid one is.
//! - When the stream breaks, or stays silent past [`IDLE_LIMIT`] (the
//!   control plane sends a heartbeat every 15 s), the proxy keeps serving with
//!   the last good snapshot and reconnects after a fully jittered,
//!   exponentially growing pause ([`Backoff`]).

use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use outrigger_api::features::{self, Feature, FEATURES};
use outrigger_api::stream::{ConfigUpdate, CONFIG_PATH, PROXY_AGENT};
use outrigger_api::tolerant::{self, Ignored, ReadError};
use outrigger_api::Snapshot;
use outrigger_proxy_policy::backoff::Backoff;

use crate::app::Applier;
use crate::identity::{Identity, IdentityError};
use crate::metrics::Metrics;
use crate::transport::tls::Io;
use outrigger_proxy_policy::chance::Chance;

/// Silence on the stream after which the proxy reconnects.
pub const IDLE_LIMIT: Duration = Duration::from_secs(45);
/// Longest single line accepted from the control plane.
pub const MAX_UPDATE_BYTES: usize = 64 * 1024 * 1024;

/// Where the control plane is and who this proxy is.
#[derive(Clone)]
pub struct Follow {
    /// `host:port` of the config server.
    pub address: String,
    pub namespace: String,
    pub pod: String,
    /// With an identity, the proxy holds a certificate from the control
    /// plane's CA (`identity::keep`) and follows the stream over mTLS once
    /// it has one; without, over plain HTTP/2.
    pub identity: Option<Arc<Identity>>,
}

/// Starts following on a thread of its own; it ends with the process.
pub fn spawn(
    follow: Follow,
    bootstrap: Snapshot,
    applier: Applier,
    metrics: Arc<Metrics>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("outrigger-control".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("starting the control-plane client runtime");
            if let Some(identity) = follow.identity.clone() {
                rt.spawn(crate::identity::keep(
                    identity,
                    follow.address.clone(),
                    metrics.clone(),
                ));
            }
            rt.block_on(run(follow, bootstrap, applier, metrics));
        })
}

/// Follows the stream forever, reconnecting as needed.
pub async fn run(follow: Follow, bootstrap: Snapshot, applier: Applier, metrics: Arc<Metrics>) {
    let chance = Chance::default();
    let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(10));
    loop {
        let outcome = session(&follow, &bootstrap, &applier, &metrics, &mut backoff).await;
        metrics.control_plane_connected.set(0);
        let pause = backoff.next_pause(chance.unit());
        tracing::warn!(
            control_plane = %follow.address,
            reason = %outcome,
            retry_in = ?pause,
            "config stream lost; serving with the last good snapshot"
        );
        tokio::time::sleep(pause).await;
    }
}

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
pub enum Ended {
    #[error("cannot connect: {0}")]
    Connect(std::io::Error),
    #[error("{0}")]
    Tls(IdentityError),
    #[error("HTTP/2 handshake failed: {0}")]
    Handshake(hyper::Error),
    #[error("request failed: {0}")]
    Request(hyper::Error),
    #[error("the control plane answered {0}: {1}")]
    Status(StatusCode, String),
    #[error("the stream broke: {0}")]
    Body(hyper::Error),
    #[error("the control plane closed the stream")]
    Closed,
    #[error("no data for {0:?}")]
    Idle(Duration),
    #[error("an update line passed {MAX_UPDATE_BYTES} bytes")]
    TooLong,
}

/// One connection: open the stream, apply updates until it ends.
async fn session(
    follow: &Follow,
    bootstrap: &Snapshot,
    applier: &Applier,
    metrics: &Metrics,
    backoff: &mut Backoff,
) -> Ended {
    let io = match &follow.identity {
        Some(identity) => {
            // The stream needs this proxy's certificate.
            identity.held().await;
            match identity.connect(&follow.address).await {
                Ok(io) => io,
                Err(e) => return Ended::Tls(e),
            }
        }
        None => match tokio::net::TcpStream::connect(&follow.address).await {
            Ok(t) => {
                let _ = t.set_nodelay(true);
                Io::Plain(t)
            }
            Err(e) => return Ended::Connect(e),
        },
    };
    let (mut send, conn) = match hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(20))
        .handshake(TokioIo::new(io))
        .await
    {
        Ok(x) => x,
        Err(e) => return Ended::Handshake(e),
    };
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "control-plane connection ended");
        }
    });
    let scheme = if follow.identity.is_some() {
        "https"
    } else {
        "http"
    };
    let uri = format!(
        "{scheme}://{}{CONFIG_PATH}?namespace={}&pod={}",
        follow.address, follow.namespace, follow.pod
    );
    let req = Request::get(uri)
        .header(http::header::USER_AGENT, user_agent())
        .body(Empty::<Bytes>::new())
        .expect("a valid request");
    let resp = match send.send_request(req).await {
        Ok(r) => r,
        Err(e) => return Ended::Request(e),
    };
    if resp.status() != StatusCode::OK {
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).trim().to_string())
            .unwrap_or_default();
        return Ended::Status(status, body);
    }
    metrics.control_plane_connected.set(1);
    tracing::info!(control_plane = %follow.address, "config stream open");
    let mut body = resp.into_body();
    let mut lines = Lines::default();
    // The unknown fields last logged on this stream: the same ones again are
    // only counted.
    let mut logged = Vec::new();
    loop {
        let frame = match tokio::time::timeout(IDLE_LIMIT, body.frame()).await {
            Err(_) => return Ended::Idle(IDLE_LIMIT),
            Ok(None) => return Ended::Closed,
            Ok(Some(Err(e))) => return Ended::Body(e),
            Ok(Some(Ok(f))) => f,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if lines.push(&data).is_err() {
            return Ended::TooLong;
        }
        while let Some(line) = lines.next_line() {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue; // heartbeat
            }
            if apply_line(&line, bootstrap, applier, metrics, &mut logged) {
                backoff.reset();
            }
        }
    }
}

/// How this proxy names itself to the control plane: its release, so the
/// control plane can tell a proxy outside the supported skew.
pub fn user_agent() -> String {
    format!("{PROXY_AGENT}{}", outrigger_runtime::build::VERSION)
}

/// Applies one update line; true when it was applied. Unknown fields are
/// counted every time, logged when they differ from those `logged` last.
fn apply_line(
    line: &[u8],
    bootstrap: &Snapshot,
    applier: &Applier,
    metrics: &Metrics,
    logged: &mut Vec<String>,
) -> bool {
    let update = match read_update(line, FEATURES) {
        Ok((update, ignored)) => {
            if !ignored.is_empty() {
                metrics.count_unknown_fields(crate::metrics::CONFIG_UPDATE, &ignored);
            }
            if !ignored.is_empty() && *logged != ignored.paths {
                logged.clone_from(&ignored.paths);
                tracing::warn!(
                    version = %update.version,
                    count = ignored.count,
                    fields = %ignored,
                    "config update carries fields this proxy does not know (a newer \
                     control plane); applied without them"
                );
            }
            update
        }
        Err(refused) => {
            tracing::error!("config update refused; the snapshot in force stays: {refused}");
            applier.count_rejected();
            return false;
        }
    };
    let version = update.version.clone();
    match applier.apply(update.apply_to(bootstrap)) {
        Ok(()) => true,
        Err(errors) => {
            tracing::error!(%version, "config update refused; the snapshot in force stays: {errors}");
            false
        }
    }
}

/// Why an update line was refused before it became a snapshot.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("unreadable: {0}")]
    Unreadable(#[from] ReadError),
    #[error(
        "version {version} requires {} that this proxy lacks; upgrade the proxy",
        missing.join(", ")
    )]
    Requires {
        version: String,
        missing: Vec<String>,
    },
}

/// One update line as this proxy takes it, given the features it
/// implements (`registry`): the update and the fields it left out, or why
/// it is refused (never partly: a missing feature refuses it whole).
pub fn read_update(line: &[u8], registry: &[Feature]) -> Result<(ConfigUpdate, Ignored), Refused> {
    let (update, ignored) =
        tolerant::from_json_slice::<ConfigUpdate>(line, outrigger_api::features::UNDERSTOOD_WHOLE)?;
    let missing = features::missing(registry, &update.requires);
    if !missing.is_empty() {
        return Err(Refused::Requires {
            version: update.version.clone(),
            missing: missing.into_iter().map(str::to_string).collect(),
        });
    }
    Ok((update, ignored))
}

/// Splits a byte stream into newline-terminated lines (public for the
/// fuzz targets, `fuzz/`).
#[derive(Default)]
pub struct Lines {
    buf: BytesMut,
    /// Bytes of `buf` already searched for a newline.
    scanned: usize,
}

impl Lines {
    /// Adds the bytes of one frame; `Err` when a line grows past
    /// [`MAX_UPDATE_BYTES`] without ending.
    #[allow(clippy::result_unit_err, reason = "the caller names the error")]
    pub fn push(&mut self, data: &Bytes) -> Result<(), ()> {
        self.buf.extend_from_slice(data);
        if self.buf.len() > MAX_UPDATE_BYTES && !self.buf[self.scanned..].contains(&b'\n') {
            return Err(());
        }
        Ok(())
    }

    /// The next complete line; each byte is searched once, however the
    /// line was split into frames.
    pub fn next_line(&mut self) -> Option<Bytes> {
        let Some(at) = self.buf[self.scanned..].iter().position(|b| *b == b'\n') else {
            self.scanned = self.buf.len();
            return None;
        };
        let end = self.scanned + at;
        let line = self.buf.split_to(end).freeze();
        self.buf.advance(1);
        self.scanned = 0;
        Some(line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use outrigger_api::features::Part;

    const UPDATE: &str = r#"{"version":"v2","proxy":{"workload":"web","namespace":"shop"},
        "services":[{"name":"api","namespace":"shop","ports":[80],
          "endpoints":[{"address":"10.0.0.1:80"}]}]"#;

    #[test]
    fn unknown_fields_are_left_out_and_reported() {
        // A top-level field and one nested in a service's endpoint.
        let line = format!("{UPDATE},\"telemetry\":{{\"sampling\":1}}}}").replace(
            r#""address":"10.0.0.1:80""#,
            r#""address":"10.0.0.1:80","zone":"a""#,
        );
        let (update, ignored) = read_update(line.as_bytes(), FEATURES).unwrap();
        assert_eq!(update.services[0].endpoints[0].address, "10.0.0.1:80");
        let mut paths = ignored.paths.clone();
        paths.sort();
        assert_eq!(paths, ["services[0].endpoints[0].zone", "telemetry"]);
        // The strict reader (what the previous release used) refuses it.
        assert!(serde_json::from_str::<ConfigUpdate>(&line).is_err());
    }

    #[test]
    fn an_update_requiring_a_missing_feature_is_refused_naming_it() {
        let line = format!("{UPDATE},\"requires\":[\"from-the-future\",\"known\"]}}");
        let err = read_update(line.as_bytes(), FEATURES).unwrap_err();
        assert!(
            matches!(&err, Refused::Requires { missing, .. } if missing == &["from-the-future", "known"]),
            "{err}"
        );
        assert_eq!(
            err.to_string(),
            "version v2 requires from-the-future, known that this proxy lacks; upgrade the proxy"
        );
        // A proxy that implements the feature takes the same update.
        let registry = [
            Feature {
                name: "from-the-future",
                used_in: |_: Part<'_>| false,
            },
            Feature {
                name: "known",
                used_in: |_: Part<'_>| false,
            },
        ];
        let (update, ignored) = read_update(line.as_bytes(), &registry).unwrap();
        assert_eq!(update.requires, ["from-the-future", "known"]);
        assert!(ignored.is_empty());
    }

    #[test]
    fn an_unreadable_update_is_refused_with_its_path() {
        let line = UPDATE.replace(r#""ports":[80]"#, r#""ports":["http"]"#) + "}";
        let err = read_update(line.as_bytes(), FEATURES)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("unreadable: services[0].ports[0]: invalid type"),
            "{err}"
        );
    }

    #[test]
    fn lines_are_split_across_frames_and_heartbeats_are_empty() {
        let mut l = Lines::default();
        l.push(&Bytes::from_static(b"{\"a\":")).unwrap();
        assert_eq!(l.next_line(), None);
        l.push(&Bytes::from_static(b"1}\n\n{\"b\"")).unwrap();
        assert_eq!(l.next_line().as_deref(), Some(&b"{\"a\":1}"[..]));
        assert_eq!(l.next_line().as_deref(), Some(&b""[..]));
        assert_eq!(l.next_line(), None);
        l.push(&Bytes::from_static(b":2}\n")).unwrap();
        assert_eq!(l.next_line().as_deref(), Some(&b"{\"b\":2}"[..]));
    }
}
