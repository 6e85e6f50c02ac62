//! The proxy's lifecycle: apply a snapshot, bind the listeners and the admin
//! port, serve, and drain on request.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use outrigger_api::{Snapshot, ValidationErrors};
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use crate::admin::Admin;
use crate::http::client::{Client, ClientSettings};
use crate::http::proxy::Shared;
use crate::identity::Identity;
use crate::listener::{Listener, ListenerSpec};
use crate::metrics::Metrics;
use crate::probe::Probes;
use outrigger_proxy_policy::config::Config;
use outrigger_runtime::drain;

/// How long the end of a drain waits for the access log's last lines.
const ACCESS_LOG_FLUSH: Duration = Duration::from_secs(1);
/// How long the end of a drain waits for the last spans' export.
const TRACE_FLUSH: Duration = Duration::from_secs(2);

/// How often the accept window looks whether any connection is still open.
const OPEN_POLL: Duration = Duration::from_millis(100);

/// The accept window of a drain: completes `window` after it starts, or,
/// with `exit_when_idle`, as soon as `nothing_open` says no connection is
/// open (a proxy with nothing to finish exits at once; one still serving
/// keeps taking the connections that arrive while Kubernetes removes its
/// endpoint). Without it the window always runs its length: a sidecar
/// whose app is still shutting down keeps taking the app's calls.
async fn accept_window(window: Duration, exit_when_idle: bool, nothing_open: impl Fn() -> bool) {
    let end = tokio::time::Instant::now() + window;
    loop {
        let now = tokio::time::Instant::now();
        if now >= end || (exit_when_idle && nothing_open()) {
            return;
        }
        tokio::time::sleep(OPEN_POLL.min(end - now)).await;
    }
}

#[derive(Clone, Debug, Default)]
pub struct Options {
    /// One access-log line per request, in this format (off by default).
    pub access_log: crate::access_log::Format,
    /// Where access-log lines go: stdout, or a buffer (tests).
    pub access_log_sink: crate::access_log::Sink,
    /// Stay unready (`/ready` 503) until the first [`Applier::apply`]
    /// succeeds: the bootstrap snapshot only binds the listeners, and the
    /// control plane's first update is the config to serve.
    pub wait_for_config: bool,
    /// This proxy's identity: with one, hops to meshed endpoints are mutual
    /// TLS and the inbound side accepts mutual TLS from peer proxies.
    pub identity: Option<Arc<Identity>>,
    /// Kubelet probes answered on the admin port (`/app-health/...`).
    pub probes: Arc<Probes>,
    /// The request and TCP metrics' names and labels (`--metrics-format`).
    pub metrics: crate::metrics::MetricsOptions,
    /// Distributed tracing: off (None) unless a collector is set.
    pub tracing: Option<crate::trace::Settings>,
    /// Randomness for every decision (sampling, faults, balancing): the
    /// thread's generator, or a seeded one in tests.
    pub chance: outrigger_proxy_policy::chance::Chance,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Invalid(#[from] ValidationErrors),
    #[error("cannot start the access-log writer thread: {source}")]
    AccessLog { source: std::io::Error },
    #[error("cannot start the trace exporter thread: {source}")]
    Tracing { source: std::io::Error },
    #[error("cannot bind {what} on {addr}: {source}")]
    Bind {
        what: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// How the drain ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Drained {
    /// Every connection finished its work in time.
    Clean,
    /// The drain deadline passed with work still in flight.
    DeadlinePassed,
}

/// A running proxy.
pub struct Proxy {
    pub admin_addr: SocketAddr,
    listeners: Vec<(String, SocketAddr)>,
    shutdown: Arc<Notify>,
    done: JoinHandle<Drained>,
    pub metrics: Arc<Metrics>,
    applier: Applier,
}

/// Applies new snapshots to a running proxy; cheap to clone, usable from
/// any thread (the control-plane client runs on its own runtime).
#[derive(Clone)]
pub struct Applier {
    config: Arc<ArcSwap<Config>>,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    draining: Arc<AtomicBool>,
    /// Set at the first applied config, never cleared (unlike `ready`,
    /// which a drain clears).
    configured: Arc<AtomicBool>,
    /// Told of every applied config that changes the inbound policies
    /// (open connections re-check theirs).
    inbound_changes: Arc<watch::Sender<u64>>,
}

impl Proxy {
    /// Validates the snapshot, binds every listener and the admin port, and
    /// starts serving. Nothing is bound if the snapshot is invalid.
    pub async fn start(snapshot: Snapshot, opts: Options) -> Result<Self, StartError> {
        let cfg = Config::try_from(snapshot)?;
        let metrics = Arc::new(Metrics::with_options(&opts.metrics));
        metrics.applied(&cfg);
        let limits = cfg.limits.clone();
        let snapshot = cfg.snapshot.clone();
        let config = Arc::new(ArcSwap::from_pointee(cfg));

        let admin_bind = snapshot.admin.bind_addr().expect("validated");
        let admin_listener =
            TcpListener::bind(admin_bind)
                .await
                .map_err(|source| StartError::Bind {
                    what: "admin".into(),
                    addr: admin_bind,
                    source,
                })?;
        let mut bound = Vec::new();
        for l in &snapshot.listeners {
            let addr = l.bind_addr().expect("validated");
            let tcp = TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Bind {
                    what: format!("listener {:?}", l.name),
                    addr,
                    source,
                })?;
            bound.push((l, tcp));
        }

        let configured = Arc::new(AtomicBool::new(!opts.wait_for_config));
        let inbound_changes = Arc::new(watch::Sender::new(0u64));
        let access_log = crate::access_log::Logger::start(
            opts.access_log,
            &opts.access_log_sink,
            metrics.access_log_dropped.clone(),
        )
        .map_err(|source| StartError::AccessLog { source })?
        .map(Arc::new);
        let tracer = match opts.tracing.clone() {
            None => None,
            Some(settings) => {
                tracing::info!(collector = %settings.collector, sampling = %settings.sampling, "tracing on");
                Some(Arc::new(
                    crate::trace::Tracer::start(settings, metrics.tracing.clone())
                        .map_err(|source| StartError::Tracing { source })?,
                ))
            }
        };
        let drain_tracer = tracer.clone();
        let shared = Arc::new(Shared {
            tracer,
            configured: configured.clone(),
            inbound_changes: inbound_changes.clone(),
            chance: opts.chance.clone(),
            client: Client::new(ClientSettings {
                connect_timeout: limits.connect_timeout,
                idle_timeout: limits.idle_timeout,
                max_header_bytes: limits.max_header_bytes,
                identity: opts.identity.clone(),
            }),
            metrics: metrics.clone(),
            access_log: access_log.clone(),
            identity: opts.identity.clone(),
            principal: opts
                .identity
                .as_ref()
                .map(|i| std::sync::Arc::from(i.id.to_string().as_str())),
        });
        let (signal, watch) = drain::channel();
        let (stop_accepting, accepting) = drain::channel();
        let mut listeners = Vec::new();
        let mut open = Vec::new();
        for (l, tcp) in bound {
            let local = tcp.local_addr().expect("bound socket has an address");
            listeners.push((l.name.clone(), local));
            let listener = Arc::new(Listener {
                spec: ListenerSpec {
                    name: l.name.clone(),
                    direction: l.direction,
                    target: l.target.clone(),
                    app: l.app_addr().expect("validated"),
                    opaque_ports: l.opaque_ports.clone(),
                },
                config: config.clone(),
                shared: shared.clone(),
                connections: Arc::new(tokio::sync::Semaphore::new(limits.max_connections)),
            });
            open.push(listener.connections.clone());
            tracing::info!(listener = %l.name, direction = l.direction.as_str(), addr = %local, "listening");
            tokio::spawn(listener.run(tcp, watch.clone(), accepting.clone()));
        }

        let ready = Arc::new(AtomicBool::new(!opts.wait_for_config));
        metrics.ready.set(i64::from(!opts.wait_for_config));
        let draining = Arc::new(AtomicBool::new(false));
        let shutdown = Arc::new(Notify::new());
        let admin_addr = admin_listener
            .local_addr()
            .expect("bound socket has an address");
        let (stop_admin, admin_stopped) = drain::channel();
        let admin = Arc::new(Admin {
            metrics: metrics.clone(),
            config: config.clone(),
            ready: ready.clone(),
            shutdown: shutdown.clone(),
            probes: opts.probes.clone(),
        });
        tokio::spawn(admin.run(admin_listener, admin_stopped));
        if opts.wait_for_config {
            tracing::info!(addr = %admin_addr, "admin listening; not ready until the first config arrives");
        } else {
            tracing::info!(addr = %admin_addr, version = %snapshot.version, "admin listening; ready");
        }
        let applier = Applier {
            config: config.clone(),
            metrics: metrics.clone(),
            ready: ready.clone(),
            draining: draining.clone(),
            configured,
            inbound_changes,
        };

        let trigger = shutdown.clone();
        let drain_metrics = metrics.clone();
        let deadline = limits.drain_timeout;
        let window = limits.drain_accept;
        let exit_when_idle = limits.drain_exit_when_idle;
        let max_connections = limits.max_connections;
        let done = tokio::spawn(async move {
            trigger.notified().await;
            draining.store(true, Ordering::Release);
            ready.store(false, Ordering::Release);
            drain_metrics.ready.set(0);
            tracing::info!(deadline = ?deadline, accepting = ?window, "draining: closing connections between requests; finishing in-flight work");
            drop(watch);
            drop(accepting);
            let nothing_open = move || {
                open.iter()
                    .all(|s| s.available_permits() == max_connections)
            };
            let accept_then_stop = async move {
                accept_window(window, exit_when_idle, nothing_open).await;
                tracing::info!("draining: no new connections");
                stop_accepting.stop();
            };
            let drained = async { tokio::join!(signal.drain(), accept_then_stop) };
            let outcome = match tokio::time::timeout(deadline, drained).await {
                Ok(_) => Drained::Clean,
                Err(_) => Drained::DeadlinePassed,
            };
            match outcome {
                Drained::Clean => tracing::info!("drained"),
                Drained::DeadlinePassed => {
                    tracing::warn!("drain deadline passed with work in flight; stopping anyway")
                }
            }
            stop_admin.stop();
            // The last requests' lines out before the process ends.
            if let Some(log) = access_log {
                let flush = move || log.flush(ACCESS_LOG_FLUSH);
                if !tokio::task::spawn_blocking(flush).await.unwrap_or(false) {
                    tracing::warn!(
                        "the access log's last lines may be lost: stdout did not take them"
                    );
                }
            }
            // The last requests' spans out too.
            if let Some(tracer) = drain_tracer {
                let flush = move || tracer.flush(TRACE_FLUSH);
                if !tokio::task::spawn_blocking(flush).await.unwrap_or(false) {
                    tracing::warn!(
                        "the last spans may be lost: the collector did not take them in time"
                    );
                }
            }
            outcome
        });

        Ok(Self {
            admin_addr,
            listeners,
            shutdown,
            done,
            metrics,
            applier,
        })
    }

    /// A handle that applies snapshots to this proxy.
    pub fn applier(&self) -> Applier {
        self.applier.clone()
    }

    /// Applies a new snapshot to the running proxy: the next request (on new
    /// and open connections alike) is routed by it; requests in flight are
    /// not touched, and an open inbound connection it would now refuse (a
    /// plaintext one on a port turned STRICT, an opaque one its
    /// AuthorizationPolicies now deny) is closed, an HTTP one gracefully
    /// (see `http::hold::Hold`). Live endpoint state (load, outlier
    /// ejections, retry budgets, pool slots) carries over. An invalid
    /// snapshot is refused and the one in force stays. Listeners and the
    /// admin address are bound at start and cannot change here.
    pub fn apply(&self, snapshot: Snapshot) -> Result<(), ValidationErrors> {
        self.applier.apply(snapshot)
    }

    /// The bound address of the named listener (useful with port 0).
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| *a)
    }

    /// A handle that starts the drain when notified.
    pub fn shutdown_handle(&self) -> Arc<Notify> {
        self.shutdown.clone()
    }

    /// Starts draining (as SIGTERM or `POST /shutdown` do).
    pub fn shutdown(&self) {
        self.shutdown.notify_one();
    }

    /// Waits until a shutdown has drained.
    pub async fn wait(self) -> Drained {
        self.done.await.unwrap_or(Drained::DeadlinePassed)
    }

    /// Starts draining and waits for it, at most `limit` beyond the drain deadline.
    pub async fn stop(self, limit: Duration) -> Drained {
        self.shutdown();
        tokio::time::timeout(limit, self.wait())
            .await
            .unwrap_or(Drained::DeadlinePassed)
    }
}

impl Applier {
    /// See [`Proxy::apply`]. A refused snapshot is counted in
    /// `outrigger_config_rejected`; the first applied one makes a proxy
    /// started with `wait_for_config` ready.
    pub fn apply(&self, snapshot: Snapshot) -> Result<(), ValidationErrors> {
        let result = self.swap(snapshot);
        match &result {
            Ok(()) => {
                self.configured.store(true, Ordering::Release);
                if !self.draining.load(Ordering::Acquire)
                    && !self.ready.swap(true, Ordering::AcqRel)
                {
                    if self.draining.load(Ordering::Acquire) {
                        // The drain began in between (it sets `draining`
                        // before clearing `ready`): it owns readiness now.
                        self.ready.store(false, Ordering::Release);
                    } else {
                        self.metrics.ready.set(1);
                        tracing::info!("ready");
                    }
                }
            }
            Err(_) => {
                self.metrics.config_rejected.inc();
            }
        }
        result
    }

    /// Counts an update refused before it was a snapshot (unreadable).
    pub fn count_rejected(&self) {
        self.metrics.config_rejected.inc();
    }

    fn swap(&self, snapshot: Snapshot) -> Result<(), ValidationErrors> {
        let current = self.config.load_full();

        let mut frozen = Vec::new();
        if snapshot.listeners != current.snapshot.listeners {
            frozen.push(outrigger_api::FieldError {
                path: "listeners".into(),
                message: "listeners are bound at start; changing them needs a restart".into(),
            });
        }
        if snapshot.admin != current.snapshot.admin {
            frozen.push(outrigger_api::FieldError {
                path: "admin".into(),
                message: "the admin listener is bound at start; changing it needs a restart".into(),
            });
        }
        if !frozen.is_empty() {
            return Err(ValidationErrors(frozen));
        }
        let version = snapshot.version.clone();
        let next = Config::build(snapshot, Some(&current))?;
        let inbound_changed = next.snapshot.inbound != current.snapshot.inbound;
        self.metrics.applied(&next);
        self.config.store(Arc::new(next));
        if inbound_changed {
            self.inbound_changes
                .send_modify(|generation| *generation += 1);
        }
        tracing::info!(%version, "snapshot applied");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[tokio::test(start_paused = true)]
    async fn the_accept_window_lasts_its_length_while_connections_are_open() {
        let start = tokio::time::Instant::now();
        accept_window(Duration::from_secs(5), true, || false).await;
        assert_eq!(start.elapsed(), Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn the_accept_window_ends_once_nothing_is_open() {
        let start = tokio::time::Instant::now();
        accept_window(Duration::from_secs(5), true, || true).await;
        assert_eq!(start.elapsed(), Duration::ZERO, "idle: at once");
        // The last connection closes 1.25 s in: the window ends at the
        // next look, within one poll.
        let looks = AtomicUsize::new(0);
        let start = tokio::time::Instant::now();
        accept_window(Duration::from_secs(5), true, || {
            looks.fetch_add(1, Ordering::Relaxed);
            start.elapsed() >= Duration::from_millis(1250)
        })
        .await;
        assert_eq!(start.elapsed(), Duration::from_millis(1300));
        assert_eq!(looks.load(Ordering::Relaxed), 14);
    }

    #[tokio::test(start_paused = true)]
    async fn not_exiting_when_idle_the_accept_window_runs_its_length() {
        let start = tokio::time::Instant::now();
        accept_window(Duration::from_secs(5), false, || true).await;
        assert_eq!(start.elapsed(), Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn a_zero_window_stops_accepting_at_once() {
        let start = tokio::time::Instant::now();
        accept_window(Duration::ZERO, true, || false).await;
        assert_eq!(start.elapsed(), Duration::ZERO);
    }
}
