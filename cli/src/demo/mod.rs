//! `outrigger demo`: the whole mesh on one machine, with no cluster.
//!
//! ```text
//!  client app ──▶ client proxy :4310 ──mTLS──▶ web-v1 proxy :4321 ──▶ web-v1 app
//!  (this process)   (outbound)         └─────▶ web-v2 proxy :4331 ──▶ web-v2 app
//!                        ▲  config stream + certificates (TLS)
//!                 control plane :4300 ◀── reads manifests/ (edit the VirtualService)
//! ```
//!
//! The control plane (folder mode, the mesh CA) and the three proxies are
//! the real binaries, found next to `outrigger` (or in `--bin-dir`); the
//! apps and the client's trickle of requests run in this process. What is
//! set up is a pure function of the ports and the folder ([`plan`]); what is
//! counted and printed is pure too ([`tally`]).

pub mod net;
pub mod plan;
pub mod tally;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outrigger_control_plane::certify::CaSource;
use outrigger_control_plane::folder::Folder;
use outrigger_control_plane::translate::{Mesh, Options, Verdict};
use outrigger_identity::SpiffeId;

use crate::output::Format;

use self::plan::{Layout, Ports, Workload, CLIENT, NAMESPACE, TRUST_DOMAIN, WORKLOADS};
use self::tally::{Answer, Tally};

/// The flags of `outrigger demo`.
#[derive(Clone, Debug, clap::Args)]
pub struct DemoArgs {
    /// Check that the mesh works (traffic over mutual TLS, plaintext
    /// refused, a VirtualService edit followed, a bad edit refused with the
    /// split kept), then exit: 0 when every check passed, 1 naming the one
    /// that failed.
    #[arg(long)]
    pub smoke: bool,
    /// The demo's first port: the control plane on N, then the client,
    /// web-v1 and web-v2 on N+10..N+13, N+20..N+23 and N+30..N+33
    /// (outbound, inbound, admin, app).
    #[arg(long, default_value_t = plan::DEFAULT_BASE_PORT)]
    pub base_port: u16,
    /// Where `outrigger-proxy` and `outrigger-control-plane` are (default:
    /// the directory of this `outrigger`).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// Keep the demo's files (manifests, CA, logs) in this folder, written
    /// afresh on start and kept on exit (default: a temporary folder,
    /// removed on exit).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// With --smoke: the checks as a table of lines (as they pass), or as
    /// one JSON or YAML document at the end.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Table)]
    pub output: Format,
}

/// Why the demo stopped.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(transparent)]
    Ports(#[from] plan::BasePortTooHigh),
    #[error("port {port} ({what}) is already in use on 127.0.0.1: stop what holds it, or move the demo with --base-port")]
    PortInUse { port: u16, what: String },
    #[error(
        "cannot bind port {port} ({what}) on 127.0.0.1: {source}; move the demo with --base-port"
    )]
    Bind {
        port: u16,
        what: String,
        source: std::io::Error,
    },
    #[error("{name} is not in {dir}: build it next to outrigger with `cargo build -p outrigger-cli -p outrigger-proxy -p outrigger-control-plane` (add --release for release builds), or pass --bin-dir")]
    MissingBinary { name: &'static str, dir: PathBuf },
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("the mesh CA in {dir}: {source}")]
    Ca {
        dir: PathBuf,
        source: outrigger_control_plane::certify::CaError,
    },
    #[error("{name} exited ({status}); the end of its log {log}:\n{tail}")]
    Exited {
        name: String,
        status: std::process::ExitStatus,
        log: PathBuf,
        tail: String,
    },
    #[error("{what} not ready within {secs} s; the logs are in {logs}")]
    NotReady {
        what: String,
        secs: u64,
        logs: PathBuf,
    },
    #[error("smoke check failed: {check}: {detail} (logs in {logs})")]
    Smoke {
        check: &'static str,
        detail: String,
        logs: PathBuf,
    },
    #[error("-o {0} goes with --smoke (the live demo prints a running tally)")]
    OutputWithoutSmoke(&'static str),
    #[error(transparent)]
    Output(#[from] crate::output::OutputError),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DemoError {
    let what = what.into();
    move |source| DemoError::Io { what, source }
}

/// Runs the demo until Ctrl-C (or, with `--smoke`, until its checks are
/// done). Every process it started is stopped before it returns.
pub async fn run(args: DemoArgs) -> Result<(), DemoError> {
    let ports = Ports::new(args.base_port)?;
    if !args.smoke && args.output != Format::Table {
        let name = match args.output {
            Format::Json => "json",
            _ => "yaml",
        };
        return Err(DemoError::OutputWithoutSmoke(name));
    }
    let bin_dir = match args.bin_dir.clone() {
        Some(d) => d,
        None => std::env::current_exe()
            .map_err(io("finding the outrigger binary"))?
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default(),
    };
    let proxy_bin = binary(&bin_dir, "outrigger-proxy")?;
    let cp_bin = binary(&bin_dir, "outrigger-control-plane")?;

    // The apps' listeners are kept; every other port is checked free now,
    // so that a clash is named before anything starts.
    let mut apps = Vec::new();
    for (port, what) in ports.all() {
        let listener = std::net::TcpListener::bind(("127.0.0.1", port)).map_err(|source| {
            if source.kind() == std::io::ErrorKind::AddrInUse {
                DemoError::PortInUse { port, what }
            } else {
                DemoError::Bind { port, what, source }
            }
        })?;
        if let Some(w) = WORKLOADS.iter().find(|w| ports.of(w).app == port) {
            listener
                .set_nonblocking(true)
                .map_err(io("the app's listener"))?;
            apps.push((w.pod, listener));
        }
    }

    let (layout, temp) = match &args.dir {
        Some(d) => (Layout { root: d.clone() }, None),
        None => {
            let t = tempfile::Builder::new()
                .prefix("outrigger-demo-")
                .tempdir()
                .map_err(io("creating a temporary folder"))?;
            (
                Layout {
                    root: t.path().to_path_buf(),
                },
                Some(t),
            )
        }
    };
    write_files(&ports, &layout)?;

    let mut _apps = Vec::new();
    for (name, listener) in apps {
        let listener =
            tokio::net::TcpListener::from_std(listener).map_err(io("the app's listener"))?;
        _apps.push(AbortOnDrop(tokio::spawn(net::serve_app(listener, name))));
    }

    let mut children = Children::default();
    // Ctrl-C, SIGTERM, or SIGHUP (the terminal closed): the children are
    // in their own process group, so no signal but ours stops them.
    let shutdown = async {
        let hangup = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
                Ok(mut hup) => {
                    hup.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        let stop = async {
            if outrigger_runtime::signal::shutdown().await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            _ = hangup => {}
            _ = stop => {}
        }
    };
    let work = async {
        children.spawn(
            "control-plane",
            &cp_bin,
            &plan::control_plane_args(&ports, &layout),
            &layout.log("control-plane"),
        )?;
        for w in &WORKLOADS {
            children.spawn(
                &format!("{}-proxy", w.pod),
                &proxy_bin,
                &plan::proxy_args(&ports, &layout, w),
                &layout.log(&format!("{}-proxy", w.pod)),
            )?;
        }
        wait_ready(&ports, &layout, &mut children).await?;
        if args.smoke {
            smoke(&ports, &layout, &mut children, args.output).await
        } else {
            live(&ports, &layout, &mut children).await
        }
    };
    // Ctrl-C (or SIGTERM, SIGHUP) at any point, starting included, stops it all.
    let outcome = tokio::select! {
        biased;
        _ = shutdown => {
            println!("stopping the demo");
            Ok(())
        }
        outcome = work => outcome,
    };
    children.stop().await;
    if outcome.is_err() {
        // The logs the error points at stay.
        if let Some(t) = temp {
            let _ = t.keep();
        }
    }
    outcome
}

fn binary(dir: &Path, name: &'static str) -> Result<PathBuf, DemoError> {
    let path = dir.join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(DemoError::MissingBinary {
            name,
            dir: dir.to_path_buf(),
        })
    }
}

/// The manifests, the VirtualService (50/50), the tokens, the bootstraps,
/// the CA, and the logs' folder.
fn write_files(ports: &Ports, layout: &Layout) -> Result<(), DemoError> {
    for dir in [
        layout.manifests(),
        layout.tokens().join(NAMESPACE),
        layout.logs(),
        layout.root.join("proxies"),
    ] {
        std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
    }
    let write = |path: PathBuf, text: &str| {
        std::fs::write(&path, text).map_err(io(format!("writing {}", path.display())))
    };
    write(
        layout.manifests().join(plan::PLATFORM_FILE),
        &plan::platform(ports),
    )?;
    write_atomically(&layout.virtual_service(), &plan::virtual_service(50, 50))?;
    for w in &WORKLOADS {
        write(layout.token(w), &token()?)?;
        write(layout.bootstrap(w), &plan::bootstrap(ports, w))?;
    }
    CaSource::Dir(layout.ca())
        .load(TRUST_DOMAIN)
        .map_err(|source| DemoError::Ca {
            dir: layout.ca(),
            source,
        })?;
    Ok(())
}

/// Written then renamed, as an editor saves: the control plane never
/// reads half a file.
fn write_atomically(path: &Path, text: &str) -> Result<(), DemoError> {
    let tmp = path.with_extension("yaml.tmp");
    std::fs::write(&tmp, text).map_err(io(format!("writing {}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(io(format!("writing {}", path.display())))
}

/// A bootstrap token: 16 random bytes, hex.
fn token() -> Result<String, DemoError> {
    use std::io::Read as _;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(io("reading /dev/urandom for a bootstrap token"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The processes the demo started, killed when it stops (and when it is
/// dropped, on any error).
#[derive(Default)]
struct Children(Vec<Child>);

struct Child {
    name: String,
    process: tokio::process::Child,
    log: PathBuf,
}

impl Children {
    fn spawn(
        &mut self,
        name: &str,
        bin: &Path,
        args: &[String],
        log: &Path,
    ) -> Result<(), DemoError> {
        let out = std::fs::File::create(log).map_err(io(format!("creating {}", log.display())))?;
        let err = out
            .try_clone()
            .map_err(io(format!("opening {}", log.display())))?;
        let process = tokio::process::Command::new(bin)
            .args(args)
            .env("NO_COLOR", "1")
            .stdin(std::process::Stdio::null())
            .stdout(out)
            .stderr(err)
            // Its own process group: a Ctrl-C in the terminal reaches the
            // demo alone, which stops them in order.
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(io(format!("starting {}", bin.display())))?;
        self.0.push(Child {
            name: name.to_string(),
            process,
            log: log.to_path_buf(),
        });
        Ok(())
    }

    /// An error naming the first process that has exited, with its log's end.
    fn check(&mut self) -> Result<(), DemoError> {
        for c in &mut self.0 {
            if let Ok(Some(status)) = c.process.try_wait() {
                let text = std::fs::read_to_string(&c.log).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                let tail = lines[lines.len().saturating_sub(10)..].join("\n");
                return Err(DemoError::Exited {
                    name: c.name.clone(),
                    status,
                    log: c.log.clone(),
                    tail,
                });
            }
        }
        Ok(())
    }

    /// Kills them all, proxies first, and reaps them.
    async fn stop(&mut self) {
        for c in self.0.iter_mut().rev() {
            let _ = c.process.start_kill();
            let _ = c.process.wait().await;
        }
        self.0.clear();
    }
}

fn admin(ports: &Ports, w: &Workload) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], ports.of(w).admin))
}

fn outbound(ports: &Ports) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], ports.of(&CLIENT).outbound))
}

const READY_WITHIN: Duration = Duration::from_secs(60);

/// Until every proxy answers `/ready` (it has its certificate and its
/// first configuration), or one of the processes exits.
async fn wait_ready(
    ports: &Ports,
    layout: &Layout,
    children: &mut Children,
) -> Result<(), DemoError> {
    let deadline = tokio::time::Instant::now() + READY_WITHIN;
    let mut waiting: Vec<&Workload> = WORKLOADS.iter().collect();
    while !waiting.is_empty() {
        children.check()?;
        let mut still = Vec::new();
        for w in waiting {
            if !matches!(net::get(admin(ports, w), "/ready").await, Ok((200, _))) {
                still.push(w);
            }
        }
        waiting = still;
        if waiting.is_empty() {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            let names: Vec<String> = waiting.iter().map(|w| format!("{}-proxy", w.pod)).collect();
            return Err(DemoError::NotReady {
                what: names.join(", "),
                secs: READY_WITHIN.as_secs(),
                logs: layout.logs(),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// One request through the client's proxy.
async fn ask(ports: &Ports) -> Answer {
    match net::get(outbound(ports), "/").await {
        Ok((status, body)) => Answer::of(status, &body),
        Err(e) => Answer::Failed(e.to_string()),
    }
}

const VERSIONS: [&str; 2] = ["web-v1", "web-v2"];

/// Until a process exits (Ctrl-C is handled by [`run`]): a request every 100 ms, a tally line every 2 s, and a
/// line for each save of the VirtualService with the control plane's
/// verdict on it.
async fn live(ports: &Ports, layout: &Layout, children: &mut Children) -> Result<(), DemoError> {
    print!("{}", plan::banner(ports, layout));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let _trickle = {
        let tally = tally.clone();
        let ports = *ports;
        AbortOnDrop(tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_millis(100));
            // A stalled answer delays the next request; no burst after it.
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                let a = ask(&ports).await;
                tally.lock().unwrap_or_else(|e| e.into_inner()).add(&a);
            }
        }))
    };
    let mut every = tokio::time::interval(Duration::from_secs(2));
    every.tick().await;
    let mut seen = std::fs::read_to_string(layout.virtual_service()).unwrap_or_default();
    let mut verdicts = Verdicts::new(layout);
    verdicts.update();
    let started = tokio::time::Instant::now();
    loop {
        every.tick().await;
        children.check()?;
        let now = std::fs::read_to_string(layout.virtual_service()).unwrap_or_default();
        if now != seen {
            seen = now;
            println!("{} saved: {}", plan::VS_FILE, verdicts.update());
        }
        let window = std::mem::take(&mut *tally.lock().unwrap_or_else(|e| e.into_inner()));
        println!(
            "[{:>4}s] {}",
            (started.elapsed().as_millis() + 500) / 1000,
            window.line(&VERSIONS)
        );
    }
}

/// A task that ends with its owner (the demo's future may be dropped at
/// any await, on Ctrl-C).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The control plane's verdicts on the folder, as the running control
/// plane reaches them: the same folder reader (last good version per
/// document) and the same translator, rebuilt on the previous mesh (so a
/// refused edit keeps the version in force, and says so).
struct Verdicts {
    folder: Folder,
    mesh: Option<Mesh>,
}

impl Verdicts {
    fn new(layout: &Layout) -> Self {
        Self {
            folder: Folder::new(layout.manifests(), NAMESPACE),
            mesh: None,
        }
    }

    /// Reads the folder again; the VirtualService's verdict (or the
    /// folder's first error), one line.
    fn update(&mut self) -> String {
        if let Err(e) = self.folder.rescan() {
            return format!("cannot read {}: {e}", self.folder.root().display());
        }
        let mesh = Mesh::rebuild(
            &self.folder.store(),
            &Options::default(),
            self.mesh.as_ref(),
        );
        let mut lines: Vec<String> = self.folder.errors().iter().map(|e| e.to_string()).collect();
        lines.extend(
            mesh.verdicts()
                .iter()
                .filter(|(id, _)| id.kind == "VirtualService")
                .map(|(id, v)| match v {
                    Verdict::Accepted => format!("{id}: accepted"),
                    Verdict::Refused { reason, message } => {
                        format!("{id}: not accepted ({reason}): {message}")
                    }
                }),
        );
        self.mesh = Some(mesh);
        if lines.is_empty() {
            "no VirtualService: web's requests spread over both versions".into()
        } else {
            lines.join("; ")
        }
    }
}

/// What `--smoke` found: each check passed, or the one that failed.
#[derive(Debug, serde::Serialize)]
struct Report {
    passed: bool,
    control_plane: String,
    admin: BTreeMap<&'static str, String>,
    folder: String,
    checks: Vec<Check>,
    #[serde(skip)]
    format: Format,
}

#[derive(Debug, serde::Serialize)]
struct Check {
    check: String,
    passed: bool,
    detail: String,
}

impl Report {
    fn record(&mut self, check: &str, passed: bool, detail: String) {
        if self.format == Format::Table {
            println!("{} {check}: {detail}", if passed { "✔" } else { "×" });
        }
        self.checks.push(Check {
            check: check.to_string(),
            passed,
            detail,
        });
    }

    fn pass(&mut self, check: &str, detail: String) {
        self.record(check, true, detail);
    }
}

/// The smoke test: its checks, printed as they pass (`-o table`) or as
/// one document at the end; the first failure stops it.
async fn smoke(
    ports: &Ports,
    layout: &Layout,
    children: &mut Children,
    format: Format,
) -> Result<(), DemoError> {
    let mut report = Report {
        passed: false,
        control_plane: format!("127.0.0.1:{}", ports.control_plane()),
        admin: WORKLOADS
            .iter()
            .map(|w| (w.pod, format!("127.0.0.1:{}", ports.of(w).admin)))
            .collect(),
        folder: layout.root.display().to_string(),
        checks: Vec::new(),
        format,
    };
    if format == Format::Table {
        println!(
            "mesh up: control plane {}, proxies' admin ports {}",
            report.control_plane,
            WORKLOADS
                .iter()
                .map(|w| format!("{} {}", w.pod, ports.of(w).admin))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let outcome = smoke_checks(ports, layout, children, &mut report).await;
    match &outcome {
        Ok(()) => report.passed = true,
        Err(DemoError::Smoke { check, detail, .. }) => report.record(check, false, detail.clone()),
        Err(e) => report.record("the demo keeps running", false, e.to_string()),
    }
    match crate::output::structured(format, &report)? {
        Some(text) => print!("{text}"),
        None if report.passed => println!("smoke test passed"),
        None => {}
    }
    outcome
}

async fn smoke_checks(
    ports: &Ports,
    layout: &Layout,
    children: &mut Children,
    report: &mut Report,
) -> Result<(), DemoError> {
    let fail = |check: &'static str, detail: String| DemoError::Smoke {
        check,
        detail,
        logs: layout.logs(),
    };
    let client_id = format!(
        "spiffe://{TRUST_DOMAIN}/ns/{NAMESPACE}/sa/{}",
        CLIENT.service_account
    );
    // 1. Traffic reaches both versions (50/50) with no error.
    const SPLIT: &str = "requests through the client's proxy reach both versions (50/50)";
    let mut t = Tally::default();
    for _ in 0..200 {
        let a = ask(ports).await;
        t.add(&a);
        if let Answer::Failed(_) | Answer::Status(..) = a {
            return Err(fail(SPLIT, format!("{a:?}")));
        }
        if t.count("web-v1") >= 5 && t.count("web-v2") >= 5 {
            break;
        }
    }
    if t.count("web-v1") < 5 || t.count("web-v2") < 5 {
        return Err(fail(SPLIT, t.line(&VERSIONS)));
    }
    report.pass(SPLIT, t.line(&VERSIONS));
    children.check()?;

    // 2. Each version's proxy took them over mutual TLS from the client.
    const MTLS: &str = "each version's proxy took them over mutual TLS from the client";
    for w in &WORKLOADS[1..] {
        let text = match net::get(admin(ports, w), "/metrics").await {
            Ok((200, text)) => text,
            other => return Err(fail(MTLS, format!("{}'s /metrics: {other:?}", w.pod))),
        };
        let n = tally::mtls_requests_from(&text, &client_id);
        if n < 1.0 {
            return Err(fail(
                MTLS,
                format!(
                    "{}'s proxy counts no inbound request with source_principal=\"{client_id}\" and connection_security_policy=\"mutual_tls\"",
                    w.pod
                ),
            ));
        }
        report.pass(
            &format!("{}'s proxy took them over mutual TLS", w.pod),
            format!("{n} requests from {client_id} over mutual_tls"),
        );
    }

    // 3. STRICT: plaintext straight to a version's inbound port is closed
    //    unanswered, and counted.
    const STRICT: &str = "plaintext to web-v1's inbound port is refused (STRICT)";
    let v1 = &WORKLOADS[1];
    let inbound = SocketAddr::from(([127, 0, 0, 1], ports.of(v1).inbound));
    if let Ok((status, body)) = net::get(inbound, "/").await {
        return Err(fail(STRICT, format!("answered {status}: {}", body.trim())));
    }
    let refused = match net::get(admin(ports, v1), "/metrics").await {
        Ok((200, text)) => tally::metric_sum(&text, "outrigger_tcp_plaintext_refused_total", &[]),
        other => return Err(fail(STRICT, format!("web-v1's /metrics: {other:?}"))),
    };
    if refused < 1.0 {
        return Err(fail(
            STRICT,
            "closed, but web-v1's proxy counts no outrigger_tcp_plaintext_refused_total".into(),
        ));
    }
    report.pass(
        STRICT,
        format!("closed unanswered; outrigger_tcp_plaintext_refused_total {refused}"),
    );

    // 4. An edit sending everything to v2 is followed.
    const EDIT: &str = "a VirtualService edit sending 100% to v2 is followed";
    let mut verdicts = Verdicts::new(layout);
    verdicts.update();
    write_atomically(&layout.virtual_service(), &plan::virtual_service(0, 100))?;
    verdicts.update();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut in_a_row = 0;
    let mut t = Tally::default();
    while in_a_row < 30 {
        if tokio::time::Instant::now() >= deadline {
            return Err(fail(EDIT, format!("after 20 s: {}", t.line(&VERSIONS))));
        }
        let a = ask(ports).await;
        t.add(&a);
        match a.workload() {
            Some("web-v2") => in_a_row += 1,
            Some(_) => in_a_row = 0,
            None => return Err(fail(EDIT, format!("{a:?}"))),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    report.pass(EDIT, "30 answers in a row from web-v2".into());
    children.check()?;

    // 5. A bad edit (a subset no DestinationRule defines) is refused by
    //    the running control plane...
    const BAD: &str = "a bad VirtualService edit (subset v3) is refused";
    write_atomically(
        &layout.virtual_service(),
        &plan::virtual_service_to(("v1", 100), ("v3", 0)),
    )?;
    let roots = std::fs::read(layout.roots())
        .map_err(io(format!("reading {}", layout.roots().display())))?;
    let cp_id = SpiffeId::new(TRUST_DOMAIN, "outrigger-system", "outrigger-control-plane")
        .map_err(|e| fail(BAD, e.to_string()))?;
    let cp = SocketAddr::from(([127, 0, 0, 1], ports.control_plane()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let rejected = match net::get_tls(cp, "/metrics", &roots, &cp_id).await {
            Ok((200, text)) => tally::metric_sum(
                &text,
                "outrigger_cp_rejected_resources",
                &[("kind", "VirtualService")],
            ),
            Ok((status, _)) => {
                return Err(fail(
                    BAD,
                    format!("the control plane's /metrics: HTTP {status}"),
                ))
            }
            Err(e) => return Err(fail(BAD, format!("the control plane's /metrics: {e}"))),
        };
        if rejected >= 1.0 {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(fail(
                BAD,
                "after 20 s the control plane counts no refused VirtualService (outrigger_cp_rejected_resources)".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    report.pass(BAD, verdicts.update());

    // 6. ...and the split in force (all to v2) stays.
    const KEPT: &str = "the previous split stays in force";
    let mut t = Tally::default();
    for _ in 0..50 {
        let a = ask(ports).await;
        t.add(&a);
        if a.workload() != Some("web-v2") {
            return Err(fail(KEPT, format!("{a:?} after {} answers", t.total())));
        }
    }
    report.pass(KEPT, t.line(&VERSIONS));
    children.check()?;
    Ok(())
}
