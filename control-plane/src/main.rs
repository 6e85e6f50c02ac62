//! `outrigger-control-plane`: prints the CRDs, checks a folder of manifests,
//! and shows what a proxy would receive.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::Parser;
use outrigger_control_plane::analyze;
use outrigger_control_plane::authn::{Authenticate, TokenFiles, TokenReviewer};
use outrigger_control_plane::certify::{CaReloader, CaSource, Certifier};
use outrigger_control_plane::crd;
use outrigger_control_plane::election;
use outrigger_control_plane::folder::{Folder, DEFAULT_MAX_FILE_BYTES};
use outrigger_control_plane::kubernetes;
use outrigger_control_plane::metrics::Metrics;
use outrigger_control_plane::publish::{run_folder, Debounce};
use outrigger_control_plane::server::Server;
use outrigger_control_plane::translate::{ExportTo, Mesh, Options, ProxyId};
use outrigger_identity::SpiffeId;
use outrigger_runtime::{drain, log, signal};

// Parsed once at start-up: the size of the `run` variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Parser)]
#[command(name = "outrigger-control-plane", version, about)]
enum Command {
    /// Print the mesh's CustomResourceDefinitions (YAML, for `kubectl apply`).
    Crds,
    /// Read a folder of manifests and report every file that does not parse
    /// and every mesh resource that is not accepted, with the reason.
    Check {
        #[command(flatten)]
        manifests: Manifests,
    },
    /// Serve the config stream from a folder of manifests (local mode,
    /// following edits live) or from the cluster (`--kubernetes`).
    Run {
        /// Read manifests from this folder.
        #[arg(
            long,
            conflicts_with = "kubernetes",
            required_unless_present = "kubernetes"
        )]
        folder: Option<PathBuf>,
        /// Watch the cluster (in-cluster config, or the kubeconfig) and write
        /// each mesh resource's Accepted condition.
        #[arg(long)]
        kubernetes: bool,
        #[arg(long, default_value = "default")]
        namespace: String,
        /// Largest manifest file read, in bytes (default 8 MiB). A larger
        /// file is refused by name and its last good objects stay in force.
        #[arg(long, default_value_t = DEFAULT_MAX_FILE_BYTES)]
        max_manifest_bytes: u64,
        /// Address of the config server (`/v1/config`, `/metrics`, `/ready`).
        #[arg(long, default_value = "127.0.0.1:8090")]
        listen: String,
        /// Also serve `GET /metrics` alone, in plain HTTP, on this address
        /// (e.g. 0.0.0.0:15014, as the chart sets it): a Prometheus that
        /// verifies TLS cannot scrape the config server once it serves TLS.
        /// Without it, metrics are on --listen only.
        #[arg(long)]
        metrics_listen: Option<String>,
        /// How often the folder is read again.
        #[arg(long, default_value = "500ms")]
        poll: outrigger_api::Duration,
        /// Quiet time after a change before translating.
        #[arg(long, default_value = "100ms")]
        debounce: outrigger_api::Duration,
        /// Longest a change waits while changes keep coming.
        #[arg(long, default_value = "1s")]
        max_staleness: outrigger_api::Duration,
        /// SPIFFE trust domain of the mesh identities.
        #[arg(long, default_value = "cluster.local")]
        trust_domain: String,
        /// Who sees a Service without an `outrigger.dev/export-to`
        /// annotation: "." (its namespace; the default) or "*" (every namespace, as Istio).
        #[arg(long, default_value = ".")]
        default_export_to: String,
        /// The mesh CA's certificate (PEM: the signing certificate, then
        /// its issuers), e.g. from a mounted Secret. With --ca-key.
        #[arg(long, requires = "ca_key", conflicts_with_all = ["ca_dir", "ca_secret"])]
        ca_cert: Option<PathBuf>,
        /// The mesh CA's private key (PEM).
        #[arg(long, requires = "ca_cert")]
        ca_key: Option<PathBuf>,
        /// The trust roots (PEM), when the CA is an intermediate.
        #[arg(long, requires = "ca_cert")]
        ca_roots: Option<PathBuf>,
        /// Where a generated CA is kept (ca.pem, ca.key, roots.pem), made on
        /// first start and reused after. Default:
        /// $XDG_STATE_HOME/outrigger/ca (~/.local/state/outrigger/ca); with
        /// --kubernetes there is no default (give a CA, or name a volume).
        #[arg(long, conflicts_with = "ca_secret")]
        ca_dir: Option<PathBuf>,
        /// The mesh CA as a mounted Secret's directory: cert-manager's
        /// `kubernetes.io/tls` layout (tls.crt, tls.key, ca.crt: the trust
        /// roots) or Outrigger's (ca.pem, ca.key, roots.pem).
        #[arg(long)]
        ca_secret: Option<PathBuf>,
        /// How often the CA's files (--ca-secret, --ca-cert/--ca-key/--ca-roots)
        /// are read for a change; a good new CA is put in force without a
        /// restart, a bad one is refused and the CA in force stays.
        #[arg(long, default_value = "5s")]
        ca_reload_interval: outrigger_api::Duration,
        /// Lifetime of workload certificates.
        #[arg(long, default_value = "24h")]
        certificate_lifetime: outrigger_api::Duration,
        /// Folder mode: bootstrap tokens, one file per workload at
        /// DIR/<namespace>/<service-account>. Without it, the folder-mode
        /// control plane issues no certificates. (Kubernetes mode checks
        /// ServiceAccount tokens with TokenReview.)
        #[arg(long, conflicts_with = "kubernetes")]
        bootstrap_tokens: Option<PathBuf>,
        /// The control plane's own identity (its serving certificate, which
        /// proxies check): namespace and ServiceAccount.
        #[arg(long, env = "POD_NAMESPACE", default_value = "outrigger-system")]
        identity_namespace: String,
        #[arg(
            long,
            env = "SERVICE_ACCOUNT",
            default_value = "outrigger-control-plane"
        )]
        identity_service_account: String,
        #[command(flatten)]
        leader_election: LeaderElection,
        #[arg(long, default_value = "info")]
        log_level: String,
    },
    /// Print what the proxy of one pod would receive from a folder of manifests.
    Config {
        #[command(flatten)]
        manifests: Manifests,
        /// The proxy's pod, as namespace/name.
        #[arg(long)]
        pod: String,
    },
}

/// Kubernetes mode: the Lease that elects the one replica writing statuses
/// (every replica serves config and certificates). The names and defaults
/// are kube-controller-manager's.
#[derive(clap::Args)]
struct LeaderElection {
    /// This replica's identity in the Lease. Default: $POD_NAME (the chart
    /// sets it from the pod's name), else $HOSTNAME.
    #[arg(long, env = "POD_NAME")]
    leader_elect_identity: Option<String>,
    /// The Lease's name.
    #[arg(long, default_value = election::LEASE_NAME)]
    leader_elect_resource_name: String,
    /// The Lease's namespace. Default: --identity-namespace ($POD_NAMESPACE).
    #[arg(long)]
    leader_elect_resource_namespace: Option<String>,
    /// How long another replica waits, after the Lease was last renewed,
    /// before taking it over (whole seconds).
    #[arg(long, default_value = "15s")]
    leader_elect_lease_duration: outrigger_api::Duration,
    /// How long the leader keeps writing without a renewal accepted; less
    /// than --leader-elect-lease-duration.
    #[arg(long, default_value = "10s")]
    leader_elect_renew_deadline: outrigger_api::Duration,
    /// How often every replica reads (and the leader renews) the Lease; less
    /// than --leader-elect-renew-deadline.
    #[arg(long, default_value = "2s")]
    leader_elect_retry_period: outrigger_api::Duration,
}

impl LeaderElection {
    /// The Lease settings, each checked; an error names the flag.
    fn config(self, namespace: &str, hostname: Option<String>) -> Result<election::LeaseConfig> {
        use outrigger_control_plane::leader::{Timings, TimingsError};
        let timings = Timings::new(
            self.leader_elect_lease_duration.get(),
            self.leader_elect_renew_deadline.get(),
            self.leader_elect_retry_period.get(),
        )
        .map_err(|e| {
            let flag = match e {
                TimingsError::Duration(_) => "--leader-elect-lease-duration",
                TimingsError::RenewDeadline { .. } => "--leader-elect-renew-deadline",
                TimingsError::RetryPeriod { .. } => "--leader-elect-retry-period",
            };
            anyhow::anyhow!("{flag}: {e}")
        })?;
        let identity = self
            .leader_elect_identity
            .or(hostname)
            .filter(|i| !i.is_empty())
            .context(
                "--leader-elect-identity: not given, and neither POD_NAME nor HOSTNAME is set \
                 (the chart sets POD_NAME from the pod's name)",
            )?;
        Ok(election::LeaseConfig {
            namespace: self
                .leader_elect_resource_namespace
                .unwrap_or_else(|| namespace.to_string()),
            name: self.leader_elect_resource_name,
            identity,
            timings,
        })
    }
}

/// A folder of manifests, read once (`check`, `config`).
#[derive(clap::Args)]
struct Manifests {
    /// The folder (read recursively; *.yaml and *.yml).
    #[arg(long)]
    folder: PathBuf,
    /// Namespace of objects that name none.
    #[arg(long, default_value = "default")]
    namespace: String,
    /// Largest manifest file read, in bytes; a larger one is refused by name.
    #[arg(long, default_value_t = DEFAULT_MAX_FILE_BYTES)]
    max_manifest_bytes: u64,
}

impl Manifests {
    fn read(self) -> Result<Folder> {
        let mut f =
            Folder::new(&self.folder, self.namespace).with_max_file_bytes(self.max_manifest_bytes);
        f.rescan()
            .with_context(|| format!("cannot read folder {}", self.folder.display()))?;
        Ok(f)
    }
}

fn main() -> ExitCode {
    match run(Command::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(command: Command) -> Result<ExitCode> {
    match command {
        Command::Run {
            folder,
            kubernetes,
            namespace,
            max_manifest_bytes,
            listen,
            metrics_listen,
            poll,
            debounce,
            max_staleness,
            trust_domain,
            default_export_to,
            ca_cert,
            ca_key,
            ca_roots,
            ca_dir,
            ca_secret,
            ca_reload_interval,
            certificate_lifetime,
            bootstrap_tokens,
            identity_namespace,
            identity_service_account,
            leader_election,
            log_level,
        } => {
            log::init(
                &log_level,
                log::Format::Plain,
                log::Output::Stdout,
                log::Color::UnlessNoColor,
            )
            .with_context(|| format!("--log-level {log_level:?}"))?;
            let default_export_to = ExportTo::parse(std::slice::from_ref(&default_export_to), ".")
                .map_err(|e| anyhow::anyhow!("--default-export-to {default_export_to:?}: {e}"))?;
            let ca = match (ca_cert, ca_key, ca_secret) {
                (Some(cert), Some(key), _) => CaSource::Files {
                    cert,
                    key,
                    roots: ca_roots,
                },
                (_, _, Some(dir)) => CaSource::Secret(dir),
                _ => CaSource::Dir(generated_ca_dir(ca_dir, kubernetes)?),
            };
            let identity = Identity {
                ca,
                reload: ca_reload_interval.get(),
                lifetime: certificate_lifetime.get(),
                bootstrap_tokens,
                own: SpiffeId::new(
                    &trust_domain,
                    &identity_namespace,
                    &identity_service_account,
                )
                .context("--identity-namespace / --identity-service-account")?,
            };
            let options = Options {
                trust_domain,
                default_export_to,
                ..Options::default()
            };
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .context("starting the runtime")?;
            let debounce = Debounce::new(debounce.get(), max_staleness.get());
            let source = match folder {
                Some(folder) => Source::Folder {
                    folder,
                    namespace,
                    max_file_bytes: max_manifest_bytes,
                    poll: poll.get(),
                },
                None if kubernetes => Source::Kubernetes(
                    leader_election.config(&identity_namespace, std::env::var("HOSTNAME").ok())?,
                ),
                None => bail!("give --folder DIR or --kubernetes"),
            };
            runtime.block_on(serve(
                source,
                listen,
                metrics_listen,
                options,
                debounce,
                identity,
            ))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Crds => {
            print!("{}", crd::definitions_yaml());
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { manifests } => {
            let (store, errors) = analyze::read_paths(
                std::slice::from_ref(&manifests.folder),
                &manifests.namespace,
                manifests.max_manifest_bytes,
            )
            .with_context(|| format!("cannot read folder {}", manifests.folder.display()))?;
            let analysis = analyze::Analysis::of(&store, errors, &Options::default());
            print!("{}", analysis.check_lines());
            Ok(if analysis.refused() {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Config { manifests, pod } => {
            let Some((ns, name)) = pod.split_once('/') else {
                bail!("--pod {pod:?}: write it as namespace/name");
            };
            let f = manifests.read()?;
            // Each error says what stays in force for it (here, where the
            // folder is read once, nothing: there is no earlier good version).
            for e in f.errors() {
                eprintln!("warning: {e}");
            }
            let mesh = Mesh::build(&f.store(), &Options::default());
            let config = mesh.config_for(&ProxyId {
                namespace: ns.to_string(),
                pod: name.to_string(),
            });
            let snap = config.to_snapshot("preview");
            print!(
                "{}",
                serde_saphyr::to_string(&snap).context("serializing the snapshot")?
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

enum Source {
    Folder {
        folder: PathBuf,
        namespace: String,
        max_file_bytes: u64,
        poll: std::time::Duration,
    },
    Kubernetes(election::LeaseConfig),
}

/// How the control plane acts as the mesh CA.
struct Identity {
    ca: CaSource,
    /// How often the CA's files are looked at for a change.
    reload: std::time::Duration,
    lifetime: std::time::Duration,
    bootstrap_tokens: Option<PathBuf>,
    /// The control plane's own identity.
    own: SpiffeId,
}

/// Where a generated CA is kept. In a cluster the default (the container's
/// home) would not outlive a restart, and a new root on every restart cuts
/// every proxy's trust: there the CA is given (a Secret mounted as files),
/// or the folder is named on purpose (a persistent volume).
fn generated_ca_dir(given: Option<PathBuf>, kubernetes: bool) -> Result<PathBuf> {
    match given {
        Some(dir) => Ok(dir),
        None if kubernetes => bail!(
            "--kubernetes needs the mesh CA: give --ca-secret (a mounted Secret), or \
             --ca-cert and --ca-key, or --ca-dir on a volume that outlives a restart (a CA generated in \
             the container would be replaced on every restart)"
        ),
        None => Ok(default_ca_dir()),
    }
}

fn default_ca_dir() -> PathBuf {
    let state = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(|| PathBuf::from("."));
    state.join("outrigger/ca")
}

/// The certify endpoint's authority: the CA, and who may ask (TokenReview
/// in a cluster, bootstrap token files in folder mode, else nobody).
fn certifier(
    identity: &Identity,
    trust_domain: &str,
    kube: Option<kube::Client>,
) -> Result<Option<(Arc<Certifier>, u64)>> {
    let authn: Arc<dyn Authenticate> = match (kube, &identity.bootstrap_tokens) {
        (Some(client), _) => Arc::new(TokenReviewer::new(client)),
        (None, Some(dir)) => {
            std::fs::read_dir(dir)
                .with_context(|| format!("--bootstrap-tokens {}", dir.display()))?;
            Arc::new(TokenFiles::new(dir))
        }
        (None, None) => {
            tracing::info!("no --bootstrap-tokens: this control plane issues no certificates");
            return Ok(None);
        }
    };
    // Taken before loading, so that a change during the load is seen.
    let seen = identity.ca.fingerprint();
    let ca = identity.ca.load(trust_domain)?;
    if let CaSource::Dir(dir) = &identity.ca {
        tracing::info!(roots = %dir.join("roots.pem").display(), "mesh CA ready; proxies trust the roots in this file");
    }
    Ok(Some((
        Arc::new(Certifier::new(
            Arc::new(ca),
            trust_domain,
            identity.lifetime,
            authn,
        )),
        seen,
    )))
}

/// The source's loop and the config server until SIGINT/SIGTERM.
async fn serve(
    source: Source,
    listen: String,
    metrics_listen: Option<String>,
    options: Options,
    debounce: Debounce,
    identity: Identity,
) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .with_context(|| format!("--listen {listen}: cannot bind"))?;
    let bound = listener.local_addr()?;
    let metrics_listener = match &metrics_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("--metrics-listen {addr}: cannot bind"))?,
        ),
        None => None,
    };
    let metrics = Arc::new(Metrics::new());
    let (tx, rx) = tokio::sync::watch::channel(None);
    let (stop_signal, stop) = drain::channel();
    let metrics_server = metrics_listener.map(|l| {
        tracing::info!(listen = ?l.local_addr().ok(), "serving /metrics in plain HTTP");
        let m = metrics.clone();
        tokio::spawn(outrigger_runtime::metrics::listener::serve_metrics(
            l,
            stop.clone(),
            move || m.encode(),
        ))
    });
    let trust_domain = options.trust_domain.clone();
    let certify;
    let mut elector = None;
    let source = match source {
        Source::Folder {
            folder,
            namespace,
            max_file_bytes,
            poll,
        } => {
            std::fs::read_dir(&folder).with_context(|| format!("--folder {}", folder.display()))?;
            certify = certifier(&identity, &trust_domain, None)?;
            tracing::info!(folder = %folder.display(), listen = %bound, "control plane serving a folder of manifests");
            tokio::spawn(run_folder(
                Folder::new(folder, namespace).with_max_file_bytes(max_file_bytes),
                options,
                poll,
                debounce,
                tx,
                metrics.clone(),
                stop.clone(),
            ))
        }
        Source::Kubernetes(lease) => {
            let client = kube::Client::try_default()
                .await
                .context("no Kubernetes configuration (in-cluster or kubeconfig)")?;
            tracing::info!(listen = %bound, identity = %lease.identity, lease = %lease.name, namespace = %lease.namespace, "control plane watching the cluster; status writes go through the Lease's leader");
            certify = certifier(&identity, &trust_domain, Some(client.clone()))?;
            let shared = Arc::new(kubernetes::Shared::default());
            kubernetes::spawn_watchers(client.clone(), shared.clone(), metrics.clone());
            let (leading_tx, leading) = tokio::sync::watch::channel(false);
            elector = Some(tokio::spawn(election::run(
                client.clone(),
                lease,
                leading_tx,
                metrics.clone(),
                stop.clone(),
            )));
            tokio::spawn(kubernetes::run(
                client,
                shared,
                options,
                debounce,
                tx,
                leading,
                metrics.clone(),
                stop.clone(),
            ))
        }
    };
    let mut server = Server::new(rx, metrics.clone());
    if let Some((c, seen)) = certify {
        if !identity.ca.watched_files().is_empty() {
            let reloader = CaReloader::new(identity.ca.clone(), &trust_domain, c.clone(), seen);
            tokio::spawn(reloader.run(identity.reload, metrics.ca_reloads.clone(), stop.clone()));
        }
        // With a CA, everything is served over TLS under the control
        // plane's own identity, and streams need a client certificate.
        let tls = c
            .server_tls(identity.own.clone(), &[b"h2", b"http/1.1"], stop.clone())
            .context("the control plane's own certificate")?;
        tracing::info!(identity = %identity.own, "serving over TLS; proxies need the mesh roots");
        server = server.with_certifier(c).with_tls_swapped(tls);
    }
    let server = tokio::spawn(server.run(listener, stop));
    signal::shutdown()
        .await
        .context("installing the SIGTERM handler")?;
    tracing::info!("shutting down");
    stop_signal.stop();
    let _ = source.await;
    // The leader stops writing and releases the Lease (bounded).
    if let Some(elector) = elector {
        let _ = elector.await;
    }
    let _ = server.await;
    if let Some(m) = metrics_server {
        let _ = m.await;
    }
    Ok(())
}
