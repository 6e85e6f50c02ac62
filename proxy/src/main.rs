//! The `outrigger-proxy` command.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use outrigger_api::Snapshot;
use outrigger_identity::SpiffeId;
use outrigger_proxy::identity::{Identity, IdentityConfig};
use outrigger_proxy::init;
use outrigger_proxy::probe::Probes;
use outrigger_proxy::{Drained, Options, Proxy};
use outrigger_runtime::{log, signal};

// Parsed once at start-up: the size of the `run` variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Parser)]
#[command(
    name = "outrigger-proxy",
    version,
    about = "The Outrigger sidecar proxy"
)]
enum Command {
    /// Serve traffic: from a static snapshot (YAML or JSON), or, with
    /// `--control-plane`, with that snapshot as the bootstrap (listeners,
    /// admin, limits) and the services streamed by the control plane.
    Run {
        /// The snapshot (YAML or JSON) to serve, or the bootstrap to start from.
        #[arg(long, short, required_unless_present = "bootstrap")]
        config: Option<PathBuf>,
        /// The bootstrap itself (JSON or YAML) instead of a file: what the
        /// injector hands an injected proxy.
        #[arg(
            long,
            env = "OUTRIGGER_BOOTSTRAP",
            conflicts_with = "config",
            hide_env_values = true
        )]
        bootstrap: Option<String>,
        /// `host:port` of the control plane's config server. The proxy stays
        /// unready until its first update, and keeps the last good snapshot
        /// while the control plane is away.
        #[arg(long, env = "OUTRIGGER_CONTROL_PLANE")]
        control_plane: Option<String>,
        /// This proxy's pod (downward API), to name itself to the control plane.
        #[arg(long, env = "POD_NAME")]
        pod_name: Option<String>,
        /// This proxy's namespace (downward API).
        #[arg(long, env = "POD_NAMESPACE")]
        pod_namespace: Option<String>,
        /// The mesh's trust roots (PEM). With it, the proxy gets a workload
        /// certificate from the control plane (and follows its stream over
        /// mTLS); without, it follows over plain HTTP/2.
        #[arg(long, env = "OUTRIGGER_TRUST_ROOTS", requires = "control_plane")]
        trust_roots: Option<PathBuf>,
        /// The trust roots themselves (PEM) instead of a file, as the
        /// injector hands them over.
        #[arg(
            long,
            env = "OUTRIGGER_TRUST_ROOTS_PEM",
            requires = "control_plane",
            conflicts_with = "trust_roots",
            hide_env_values = true
        )]
        trust_roots_pem: Option<String>,
        /// The token proving this workload's ServiceAccount: the projected
        /// token (audience `outrigger`) or a bootstrap token file.
        #[arg(
            long,
            env = "OUTRIGGER_TOKEN_FILE",
            default_value = "/var/run/secrets/outrigger.dev/token"
        )]
        token_file: PathBuf,
        /// This workload's ServiceAccount (downward API).
        #[arg(long, env = "SERVICE_ACCOUNT")]
        service_account: Option<String>,
        #[arg(long, env = "OUTRIGGER_TRUST_DOMAIN", default_value = "cluster.local")]
        trust_domain: String,
        /// Who the control plane must be.
        #[arg(
            long,
            env = "OUTRIGGER_CONTROL_PLANE_IDENTITY",
            default_value = "spiffe://cluster.local/ns/outrigger-system/sa/outrigger-control-plane"
        )]
        control_plane_identity: String,
        /// Kubelet probes to answer on the admin port for the app, as JSON:
        /// `{"/app-health/<container>/livez": {"httpGet": {"path": "/healthz",
        /// "port": 8080}}, ...}` (the injector writes it; see docs/security.md,
        /// "Probes under STRICT").
        #[arg(long, env = "OUTRIGGER_APP_PROBES")]
        app_probes: Option<String>,
        /// This pod's IP (downward API): where app probes without a host go.
        #[arg(long, env = "POD_IP", default_value = "127.0.0.1")]
        pod_ip: std::net::IpAddr,
        /// One access-log line per request on stdout: `off`, `text` (Envoy's
        /// shape) or `json`; a bare `--access-log` means `text`.
        #[arg(long, env = "OUTRIGGER_ACCESS_LOG", default_value = "off",
              num_args = 0..=1, default_missing_value = "text")]
        access_log: outrigger_proxy::access_log::Format,
        /// Log filter, e.g. `info` or `outrigger_proxy=debug,info`.
        #[arg(long, env = "OUTRIGGER_LOG", default_value = "info")]
        log_level: String,
        #[arg(long, env = "OUTRIGGER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Plain)]
        log_format: LogFormat,
        /// Data-plane worker threads (default: one per core).
        #[arg(long, env = "OUTRIGGER_THREADS")]
        threads: Option<usize>,
        /// Names and labels of the request and TCP metrics: `outrigger`
        /// (`outrigger_*`) or `istio` (Istio's standard metrics, for
        /// Istio's dashboards and Kiali; see docs/metrics.md).
        #[arg(long, env = "OUTRIGGER_METRICS_FORMAT", default_value = "outrigger")]
        metrics_format: outrigger_api::MetricsFormat,
        /// The cluster DNS suffix (Istio format: `destination_service` is
        /// `name.namespace.svc.<domain>`).
        #[arg(
            long,
            env = "OUTRIGGER_CLUSTER_DOMAIN",
            default_value = "cluster.local"
        )]
        cluster_domain: String,
        /// The cluster's name (Istio format: `source_cluster`,
        /// `destination_cluster`).
        #[arg(long, env = "OUTRIGGER_CLUSTER_NAME", default_value = "Kubernetes")]
        cluster_name: String,
        /// This pod's labels that name its app, version and canonical
        /// service and revision, as a JSON object (the injector writes it).
        #[arg(long, env = "OUTRIGGER_POD_LABELS")]
        pod_labels: Option<String>,
        /// Distributed tracing: the OpenTelemetry collector spans are sent
        /// to, over OTLP/HTTP (protobuf), e.g.
        /// `http://otel-collector.observability:4318` (posted to
        /// `/v1/traces`). Tracing is off without it.
        #[arg(long, env = "OUTRIGGER_TRACE_COLLECTOR")]
        trace_collector: Option<String>,
        /// The percentage (0-100) of the traces this proxy starts that are
        /// sampled; a caller's sampling decision stands.
        #[arg(long, env = "OUTRIGGER_TRACE_SAMPLING", default_value = "1")]
        trace_sampling: String,
        /// The spans' `service.name` (default: `<workload>.<namespace>`);
        /// the injector sets the pod's canonical service name, as Istio does.
        #[arg(long, env = "OUTRIGGER_TRACE_SERVICE_NAME")]
        trace_service_name: Option<String>,
    },
    /// Check a snapshot file and list every error with its path.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Install the transparent redirect (iptables NAT rules) in this
    /// network namespace: the pod's init step. Rerunning it replaces the
    /// rules.
    Init {
        /// The proxy's UID, whose own traffic is never redirected.
        #[arg(long, default_value_t = 2102)]
        proxy_uid: u32,
        #[arg(long, default_value_t = 4143)]
        inbound_port: u16,
        #[arg(long, default_value_t = 4140)]
        outbound_port: u16,
        /// Inbound ports left alone, e.g. `4191,9000-9010` (the admin port
        /// belongs here).
        #[arg(long, default_value = "4191")]
        skip_inbound_ports: String,
        /// Outbound destination ports left alone.
        #[arg(long, default_value = "")]
        skip_outbound_ports: String,
        /// Destination subnets left alone, e.g. `169.254.169.254/32`.
        #[arg(long, default_value = "")]
        skip_subnets: String,
        #[arg(long, value_enum, default_value_t = init::Mode::Auto)]
        iptables_mode: init::Mode,
        /// Print the rules instead of installing them.
        #[arg(long)]
        dry_run: bool,
    },
    /// Wait until the proxy on `--admin` is ready (the postStart hook that
    /// holds the app when native sidecars are off).
    WaitReady {
        #[arg(long, default_value = "127.0.0.1:4191")]
        admin: String,
        #[arg(long, default_value = "120s")]
        timeout: outrigger_api::Duration,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Plain,
    Json,
}

/// jemalloc (the `jemalloc` feature, on by default): it holds less per
/// connection than the system allocator and, with its background thread
/// (turned on in `run`), gives memory back to the system after a burst of
/// connections. BENCHMARKS.md, "Memory per connection", has the measurements.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> anyhow::Result<()> {
    match Command::parse() {
        Command::Init {
            proxy_uid,
            inbound_port,
            outbound_port,
            skip_inbound_ports,
            skip_outbound_ports,
            skip_subnets,
            iptables_mode,
            dry_run,
        } => {
            let plan = init::Plan {
                proxy_uid,
                inbound_port,
                outbound_port,
                skip_inbound: init::parse_port_ranges(&skip_inbound_ports)
                    .map_err(anyhow::Error::msg)
                    .context("--skip-inbound-ports")?,
                skip_outbound: init::parse_port_ranges(&skip_outbound_ports)
                    .map_err(anyhow::Error::msg)
                    .context("--skip-outbound-ports")?,
                skip_subnets: init::parse_subnets(&skip_subnets)
                    .map_err(anyhow::Error::msg)
                    .context("--skip-subnets")?,
            };
            let report = init::run(&plan, iptables_mode, dry_run)?;
            print!("{report}");
            Ok(())
        }
        Command::WaitReady { admin, timeout } => wait_ready(&admin, timeout.0),
        Command::Check { config } => {
            let snapshot = load(&config)?;
            snapshot
                .validate()
                .with_context(|| format!("{} is not a valid snapshot", config.display()))?;
            println!(
                "{}: ok ({} listeners, {} services)",
                config.display(),
                snapshot.listeners.len(),
                snapshot.services.len()
            );
            Ok(())
        }
        Command::Run {
            config,
            bootstrap,
            control_plane,
            pod_name,
            pod_namespace,
            trust_roots,
            trust_roots_pem,
            token_file,
            service_account,
            trust_domain,
            control_plane_identity,
            app_probes,
            pod_ip,
            access_log,
            log_level,
            log_format,
            threads,
            metrics_format,
            cluster_domain,
            cluster_name,
            pod_labels,
            trace_collector,
            trace_sampling,
            trace_service_name,
        } => {
            let tracing_settings = tracing_settings(
                trace_collector.as_deref(),
                &trace_sampling,
                trace_service_name,
                pod_name.clone(),
            )?;
            let format = match log_format {
                LogFormat::Plain => log::Format::Plain,
                LogFormat::Json => log::Format::Json,
            };
            log::init(
                &log_level,
                format,
                log::Output::Stderr,
                log::Color::OnTerminal,
            )?;
            // jemalloc purges freed pages only as the process allocates
            // again, unless its background thread does it: without it a
            // proxy left idle after a burst of connections keeps their
            // memory. (`_RJEM_MALLOC_CONF` still tunes the rest.)
            #[cfg(feature = "jemalloc")]
            if let Err(e) = tikv_jemalloc_ctl::background_thread::write(true) {
                tracing::warn!(error = %e, "jemalloc's background thread did not start; freed memory returns to the system only as the proxy allocates again");
            }
            let (snapshot, source) = match (&config, &bootstrap) {
                (Some(path), _) => (load(path)?, path.display().to_string()),
                (None, Some(text)) => (
                    Snapshot::from_yaml(text)
                        .context("parsing --bootstrap (OUTRIGGER_BOOTSTRAP)")?,
                    "--bootstrap (OUTRIGGER_BOOTSTRAP)".to_string(),
                ),
                (None, None) => unreachable!("clap requires one"),
            };
            let follow = match control_plane {
                None => None,
                Some(address) => {
                    let namespace = pod_namespace
                        .or_else(|| Some(snapshot.proxy.namespace.clone()))
                        .filter(|n| !n.is_empty())
                        .context(
                            "--pod-namespace (POD_NAMESPACE) is needed with --control-plane",
                        )?;
                    let roots = match (trust_roots, trust_roots_pem) {
                        (Some(path), _) => Some((
                            std::fs::read(&path)
                                .with_context(|| format!("--trust-roots {}", path.display()))?,
                            format!("--trust-roots {}", path.display()),
                        )),
                        (None, Some(pem)) => Some((
                            pem.into_bytes(),
                            "--trust-roots-pem (OUTRIGGER_TRUST_ROOTS_PEM)".to_string(),
                        )),
                        (None, None) => None,
                    };
                    let identity = match roots {
                        None => None,
                        Some((pem, what)) => Some(identity(
                            &pem,
                            &what,
                            token_file,
                            &trust_domain,
                            &namespace,
                            service_account.as_deref(),
                            &control_plane_identity,
                        )?),
                    };
                    Some(outrigger_proxy::control::Follow {
                        address,
                        namespace,
                        pod: pod_name
                            .context("--pod-name (POD_NAME) is needed with --control-plane")?,
                        identity,
                    })
                }
            };
            // One worker: a current-thread runtime, with no cross-thread
            // wake-ups or work stealing to pay for (as linkerd2-proxy does on
            // one core). More: the multi-thread scheduler.
            let mut rt = match threads {
                Some(1) => tokio::runtime::Builder::new_current_thread(),
                Some(n) => {
                    let mut b = tokio::runtime::Builder::new_multi_thread();
                    b.worker_threads(n.max(1));
                    b
                }
                None => tokio::runtime::Builder::new_multi_thread(),
            };
            let rt = rt
                .enable_all()
                .thread_name("outrigger-proxy")
                .build()
                .context("starting the runtime")?;
            let probes = match app_probes.as_deref().map(str::trim) {
                None | Some("") => Probes::default(),
                Some(json) => {
                    Probes::parse(json, pod_ip).context("--app-probes (OUTRIGGER_APP_PROBES)")?
                }
            };
            let pod_labels = match pod_labels.as_deref().map(str::trim) {
                None | Some("") => Default::default(),
                Some(json) => serde_json::from_str(json)
                    .context("--pod-labels (OUTRIGGER_POD_LABELS): a JSON object of strings")?,
            };
            let opts = Options {
                probes: Arc::new(probes),
                access_log,
                access_log_sink: Default::default(),
                wait_for_config: follow.is_some(),
                identity: follow.as_ref().and_then(|f| f.identity.clone()),
                metrics: outrigger_proxy::metrics::MetricsOptions {
                    format: metrics_format,
                    cluster_domain,
                    cluster_name,
                    pod_labels,
                },
                tracing: tracing_settings,
                chance: Default::default(),
            };
            rt.block_on(run(snapshot, &source, opts, follow))
        }
    }
}

/// Tracing's settings from the flags (None: off); errors name the flag.
fn tracing_settings(
    collector: Option<&str>,
    sampling: &str,
    service_name: Option<String>,
    pod_name: Option<String>,
) -> anyhow::Result<Option<outrigger_proxy::trace::Settings>> {
    let sampling: outrigger_proxy::trace::Percent = sampling
        .parse()
        .map_err(anyhow::Error::msg)
        .context("--trace-sampling (OUTRIGGER_TRACE_SAMPLING)")?;
    let Some(collector) = collector.map(str::trim).filter(|c| !c.is_empty()) else {
        return Ok(None);
    };
    let collector = collector
        .parse()
        .map_err(anyhow::Error::msg)
        .context("--trace-collector (OUTRIGGER_TRACE_COLLECTOR)")?;
    Ok(Some(outrigger_proxy::trace::Settings {
        collector,
        sampling,
        service_name: service_name.filter(|s| !s.trim().is_empty()),
        pod_name: pod_name.filter(|s| !s.is_empty()),
        batching: Default::default(),
    }))
}

/// The proxy's identity from its flags; errors name the flag.
fn identity(
    pem: &[u8],
    what: &str,
    token_file: PathBuf,
    trust_domain: &str,
    namespace: &str,
    service_account: Option<&str>,
    control_plane: &str,
) -> anyhow::Result<Arc<Identity>> {
    use rustls::pki_types::pem::PemObject;
    let roots_der = rustls::pki_types::CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{what}: not PEM certificates"))?;
    let service_account = service_account
        .context("--service-account (SERVICE_ACCOUNT) is needed with --trust-roots")?;
    let id = SpiffeId::new(trust_domain, namespace, service_account)?;
    let control_plane: SpiffeId = control_plane.parse().context("--control-plane-identity")?;
    Identity::new(IdentityConfig {
        id,
        token_file,
        control_plane,
        roots: roots_der,
    })
    .with_context(|| what.to_string())
}

/// Polls the admin port's `/ready` until it answers 200, at most `timeout`.
#[allow(
    clippy::disallowed_methods,
    reason = "a process-level wait on the wall clock, outside any runtime"
)]
fn wait_ready(admin: &str, timeout: std::time::Duration) -> anyhow::Result<()> {
    use std::io::{Read, Write};
    let deadline = std::time::Instant::now() + timeout;
    let mut last: String;
    loop {
        let attempt = (|| -> std::io::Result<bool> {
            let addr = std::net::ToSocketAddrs::to_socket_addrs(admin)?
                .next()
                .ok_or_else(|| std::io::Error::other("no address"))?;
            let mut s =
                std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(1))?;
            s.set_read_timeout(Some(std::time::Duration::from_secs(1)))?;
            s.write_all(b"GET /ready HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")?;
            let mut head = [0u8; 12];
            s.read_exact(&mut head)?;
            Ok(&head[9..12] == b"200")
        })();
        match attempt {
            Ok(true) => return Ok(()),
            Ok(false) => last = "not ready".into(),
            Err(e) => last = e.to_string(),
        }
        if std::time::Instant::now() >= deadline {
            anyhow::bail!("the proxy at {admin} was not ready within {timeout:?} ({last})");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

async fn run(
    snapshot: Snapshot,
    source: &str,
    opts: Options,
    follow: Option<outrigger_proxy::control::Follow>,
) -> anyhow::Result<()> {
    let proxy = Proxy::start(snapshot.clone(), opts)
        .await
        .with_context(|| format!("cannot start with {source}"))?;
    if let Some(follow) = follow {
        tracing::info!(control_plane = %follow.address, namespace = %follow.namespace, pod = %follow.pod, "following the control plane");
        outrigger_proxy::control::spawn(follow, snapshot, proxy.applier(), proxy.metrics.clone())
            .context("starting the control-plane client thread")?;
    }
    let shutdown = signal_or_admin(&proxy);
    tokio::pin!(shutdown);
    let waiting = proxy.wait();
    tokio::pin!(waiting);
    let outcome = tokio::select! {
        outcome = &mut waiting => outcome,
        _ = &mut shutdown => waiting.await,
    };
    match outcome {
        Drained::Clean => Ok(()),
        Drained::DeadlinePassed => {
            anyhow::bail!("drain deadline passed with requests still in flight")
        }
    }
}

/// Completes on SIGTERM or SIGINT, after starting the drain.
fn signal_or_admin(proxy: &Proxy) -> impl std::future::Future<Output = ()> + use<> {
    let trigger = proxy.shutdown_handle();
    async move {
        signal::shutdown()
            .await
            .expect("installing the SIGTERM handler");
        trigger.notify_one();
    }
}

fn load(path: &Path) -> anyhow::Result<Snapshot> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let parsed = if path.extension().is_some_and(|e| e == "json") {
        Snapshot::from_json(&text)
    } else {
        Snapshot::from_yaml(&text)
    };
    parsed.with_context(|| format!("parsing {}", path.display()))
}
