//! The control plane at scale: many simulated proxies (lightweight watch
//! clients of `/v1/config`) against a real `outrigger-control-plane` in
//! folder mode, with many services.
//!
//! For each proxy count it writes a mesh of manifests (namespaces of
//! services with endpoints, a DestinationRule and VirtualService per
//! namespace, a shared namespace exported to all, and one Pod per simulated
//! proxy), starts the control plane on them, connects every proxy, then
//! edits a VirtualService that every proxy sees and times, per edit, how
//! long after the file was written each proxy holds a new version. It also
//! reads the control plane's CPU time and memory from `/proc`.
//!
//! The clients parse each update line as JSON (the version and nothing
//! else is kept), so their cost is that of reading the stream, not of
//! applying it; the real proxy's apply path is measured elsewhere.
//!
//! Results go to stdout as one JSON object per proxy count;
//! `bench/control-plane.sh` runs it and writes the BENCHMARKS.md section.

#![allow(
    clippy::disallowed_methods,
    reason = "a benchmark: it times real latencies on the wall clock"
)]

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::Deserialize;
use tokio::sync::{mpsc, Semaphore};

#[derive(Parser)]
#[command(about = "Control-plane scale benchmark: simulated proxies against a real control plane")]
struct Args {
    /// The control-plane binary.
    #[arg(long)]
    control_plane: PathBuf,
    /// Proxy counts to run, one after the other.
    #[arg(long, value_delimiter = ',', default_value = "100,1000,5000")]
    proxies: Vec<usize>,
    /// Services in the mesh (spread evenly over the namespaces).
    #[arg(long, default_value_t = 1000)]
    services: usize,
    #[arg(long, default_value_t = 50)]
    namespaces: usize,
    /// Ready endpoints per service.
    #[arg(long, default_value_t = 3)]
    endpoints: usize,
    /// Edits timed per proxy count.
    #[arg(long, default_value_t = 10)]
    rounds: usize,
    /// Where the manifests are written (one folder per proxy count).
    #[arg(long)]
    work: PathBuf,
    #[arg(long, default_value = "127.0.0.1:18390")]
    listen: String,
    /// The folder source's poll interval (the control plane's `--poll`).
    #[arg(long, default_value = "100ms")]
    poll: String,
    /// The control plane's `--debounce` (quiet time before translating).
    #[arg(long, default_value = "100ms")]
    debounce: String,
    /// Run the control plane under `taskset -c CPUS` (the script pins this
    /// process to the other core, so the clients do not steal its CPU).
    #[arg(long)]
    control_plane_cpus: Option<String>,
    /// Connections opened at once while connecting the proxies.
    #[arg(long, default_value_t = 200)]
    connect_concurrency: usize,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    for &n in &args.proxies {
        let result = runtime.block_on(run_scale(&args, n))?;
        println!("{}", serde_json::to_string(&result)?);
    }
    Ok(())
}

/// The namespace (and Pod name) of simulated proxy `i`.
fn proxy_name(args: &Args, i: usize) -> (String, String) {
    (namespace(i % args.namespaces), format!("proxy-{i:05}"))
}

fn namespace(n: usize) -> String {
    format!("ns-{n:03}")
}

/// The namespace whose services are exported to every namespace.
const SHARED: usize = 0;

/// One namespace's Services, EndpointSlices, DestinationRule and
/// VirtualService (the first service of each namespace is split 90/10
/// over two subsets; the shared namespace's route is the one edited, in
/// its own file).
fn write_manifests(args: &Args, dir: &Path, proxies: usize) -> anyhow::Result<()> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let per_ns = args.services.div_ceil(args.namespaces);
    let mut made = 0;
    for n in 0..args.namespaces {
        let ns = namespace(n);
        let mut y = String::new();
        let mut pods = String::new();
        for s in 0..per_ns {
            if made == args.services {
                break;
            }
            made += 1;
            let export = if n == SHARED {
                "\n  annotations: { outrigger.dev/export-to: \"*\" }"
            } else {
                ""
            };
            let _ = write!(
                y,
                "---\napiVersion: v1\nkind: Service\nmetadata:\n  name: svc-{s:02}\n  namespace: {ns}{export}\nspec:\n  clusterIP: 10.{}.{}.{}\n  ports: [{{ name: http, port: 80, targetPort: 8080 }}]\n",
                96 + n / 256,
                n % 256,
                s + 1
            );
            let _ = write!(
                y,
                "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: svc-{s:02}-a\n  namespace: {ns}\n  labels: {{ kubernetes.io/service-name: svc-{s:02} }}\naddressType: IPv4\nports: [{{ name: http, port: 8080 }}]\nendpoints:\n"
            );
            for e in 0..args.endpoints {
                let version = if e == 0 { "v2" } else { "v1" };
                let _ = write!(
                    y,
                    "- addresses: [\"10.{}.{}.{}\"]\n  conditions: {{ ready: true }}\n  targetRef: {{ kind: Pod, name: svc-{s:02}-{e} }}\n",
                    64 + n / 256,
                    n % 256,
                    s * args.endpoints + e + 1
                );
                let _ = write!(
                    pods,
                    "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: svc-{s:02}-{e}\n  namespace: {ns}\n  labels: {{ app: svc-{s:02}, version: {version} }}\nspec:\n  serviceAccountName: svc-{s:02}\n  containers: [{{ name: app, image: app }}]\n"
                );
            }
        }
        y.push_str(&pods);
        let export = if n == SHARED {
            "\n  exportTo: [\"*\"]"
        } else {
            ""
        };
        let _ = write!(
            y,
            "---\napiVersion: outrigger.dev/v1alpha1\nkind: DestinationRule\nmetadata: {{ name: svc-00, namespace: {ns} }}\nspec:\n  host: svc-00{export}\n  subsets:\n  - {{ name: v1, labels: {{ version: v1 }} }}\n  - {{ name: v2, labels: {{ version: v2 }} }}\n"
        );
        if n != SHARED {
            y.push_str(&route(&ns, "", 90));
        }
        std::fs::write(dir.join(format!("{ns}.yaml")), y)?;
    }
    write_route(dir, 90)?;
    let mut pods = String::new();
    for i in 0..proxies {
        let (ns, pod) = proxy_name(args, i);
        let _ = write!(
            pods,
            "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: {pod}\n  namespace: {ns}\n  labels: {{ app: client }}\nspec:\n  serviceAccountName: client\n  containers: [{{ name: app, image: app }}]\n"
        );
    }
    std::fs::write(dir.join("proxies.yaml"), pods)?;
    Ok(())
}

fn route(ns: &str, export: &str, v1_weight: u32) -> String {
    format!(
        "---\napiVersion: outrigger.dev/v1alpha1\nkind: VirtualService\nmetadata: {{ name: svc-00, namespace: {ns} }}\nspec:\n  hosts: [svc-00]{export}\n  http:\n  - route:\n    - {{ destination: {{ host: svc-00, subset: v1 }}, weight: {v1_weight} }}\n    - {{ destination: {{ host: svc-00, subset: v2 }}, weight: {} }}\n",
        100 - v1_weight
    )
}

/// The edited route: the shared namespace's, exported to every namespace,
/// so every proxy receives each edit. Written to a temporary name and
/// renamed, as editors and `kubectl cp` do, so no half-written file is read.
fn write_route(dir: &Path, v1_weight: u32) -> anyhow::Result<()> {
    let tmp = dir.join(".shared-route.tmp");
    std::fs::write(
        &tmp,
        route(&namespace(SHARED), "\n  exportTo: [\"*\"]", v1_weight),
    )?;
    std::fs::rename(&tmp, dir.join("shared-route.yaml"))?;
    Ok(())
}

/// What a simulated proxy reports: it holds `version` since `at`.
struct Event {
    proxy: usize,
    version: Arc<str>,
    at: Instant,
    bytes: usize,
}

#[derive(Deserialize)]
struct VersionOnly {
    version: String,
}

/// One simulated proxy: opens its stream and reports every update.
async fn follow(
    addr: String,
    ns: String,
    pod: String,
    proxy: usize,
    events: mpsc::UnboundedSender<Event>,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> anyhow::Result<()> {
    let tcp = tokio::net::TcpStream::connect(&addr).await?;
    tcp.set_nodelay(true)?;
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    let req = Request::get(format!("http://{addr}/v1/config?namespace={ns}&pod={pod}"))
        .body(Empty::<Bytes>::new())?;
    let resp = send.send_request(req).await?;
    if !resp.status().is_success() {
        bail!("{pod}: HTTP {}", resp.status());
    }
    drop(permit);
    let mut body = resp.into_body();
    let mut buf: Vec<u8> = Vec::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        buf.extend_from_slice(&data);
        while let Some(end) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=end).collect();
            if line.len() <= 1 {
                continue; // heartbeat
            }
            let at = Instant::now();
            let v: VersionOnly = serde_json::from_slice(&line)
                .with_context(|| format!("{pod}: unreadable update"))?;
            let _ = events.send(Event {
                proxy,
                version: v.version.into(),
                at,
                bytes: line.len(),
            });
        }
    }
    bail!("{pod}: stream ended")
}

#[derive(serde::Serialize)]
struct ScaleResult {
    proxies: usize,
    services: usize,
    namespaces: usize,
    rounds: usize,
    /// Seconds from the first connect until every proxy held a config.
    connect_all_s: f64,
    /// Per edit: seconds from the write to the median, p99 and last proxy
    /// holding a new version.
    rounds_p50_s: Vec<f64>,
    rounds_p99_s: Vec<f64>,
    rounds_last_s: Vec<f64>,
    /// Update size per proxy (bytes of the last update line), median and max.
    update_bytes_median: usize,
    update_bytes_max: usize,
    /// Control-plane resident memory: ready with no proxy, with every proxy
    /// connected, after the edits; and its peak during the edits.
    rss_idle_kib: u64,
    rss_connected_kib: u64,
    rss_after_kib: u64,
    rss_peak_kib: u64,
    /// Control-plane CPU seconds (user + system) for connecting every proxy,
    /// and per edit: everything it did during the edit phase (translation,
    /// fan-out, folder polls, heartbeats) divided by the edits.
    cpu_connect_s: f64,
    cpu_per_edit_s: f64,
    wall_per_edit_s: f64,
    /// The control plane's own mean push latency over the edits: from its
    /// seeing the change (after the folder poll) to writing each update.
    push_latency_mean_s: f64,
    /// CPU the simulated proxies (this process, one core) used during the
    /// edits, as a share of the wall time: near 1, they limit the tail.
    client_cpu_share: f64,
}

async fn run_scale(args: &Args, proxies: usize) -> anyhow::Result<ScaleResult> {
    let dir = args.work.join(format!("proxies-{proxies}"));
    write_manifests(args, &dir, proxies)?;
    let mut child = spawn_control_plane(args, &dir)?;
    let pid = child.id();
    let result = measure(args, proxies, &dir, pid).await;
    let _ = child.kill();
    let _ = child.wait();
    result
}

fn spawn_control_plane(args: &Args, dir: &Path) -> anyhow::Result<Child> {
    let mut cmd = match &args.control_plane_cpus {
        Some(cpus) => {
            let mut c = Command::new("taskset");
            c.args(["-c", cpus]).arg(&args.control_plane);
            c
        }
        None => Command::new(&args.control_plane),
    };
    cmd.args(["run", "--folder"])
        .arg(dir)
        .args([
            "--listen",
            &args.listen,
            "--poll",
            &args.poll,
            "--debounce",
            &args.debounce,
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    cmd.spawn()
        .with_context(|| format!("starting {}", args.control_plane.display()))
}

async fn measure(args: &Args, proxies: usize, dir: &Path, pid: u32) -> anyhow::Result<ScaleResult> {
    wait_ready(&args.listen).await?;
    let rss_idle_kib = memory(pid)?.0;
    let cpu0 = cpu_seconds(pid)?;

    let (tx, mut rx) = mpsc::unbounded_channel::<Event>();
    let gate = Arc::new(Semaphore::new(args.connect_concurrency));
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..proxies {
        let permit = gate.clone().acquire_owned().await?;
        let (ns, pod) = proxy_name(args, i);
        tasks.spawn(follow(args.listen.clone(), ns, pod, i, tx.clone(), permit));
    }
    let mut holding: Vec<Option<Arc<str>>> = vec![None; proxies];
    let mut bytes = vec![0usize; proxies];
    let mut have = 0;
    while have < proxies {
        let e = next_event(&mut rx, &mut tasks).await?;
        if holding[e.proxy].is_none() {
            have += 1;
        }
        bytes[e.proxy] = e.bytes;
        holding[e.proxy] = Some(e.version);
    }
    let connect_all_s = start.elapsed().as_secs_f64();
    let cpu1 = cpu_seconds(pid)?;
    let rss_connected_kib = memory(pid)?.0;

    let mut rounds_p50_s = Vec::new();
    let mut rounds_p99_s = Vec::new();
    let mut rounds_last_s = Vec::new();
    let pushed0 = push_latency(&args.listen).await?;
    // The peak below is over the edits only: reset the high-water mark.
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5")
        .context("resetting VmHWM (/proc/PID/clear_refs)")?;
    let client_cpu0 = cpu_seconds(std::process::id())?;
    let edits_start = Instant::now();
    // Each edit waits a pseudo-random part of the poll interval first (a
    // fixed seed), so the edits sample every phase of the poll cycle rather
    // than all landing just after a poll.
    let poll_ms = millis(&args.poll)?;
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    for round in 0..args.rounds {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        tokio::time::sleep(Duration::from_millis((seed >> 33) % poll_ms.max(1))).await;
        let before = holding.clone();
        // 90/10, 89/11, ...: a different route each time.
        write_route(dir, 89 - round as u32 % 80)?;
        let written = Instant::now();
        let mut latency: Vec<Option<f64>> = vec![None; proxies];
        let mut moved = 0;
        while moved < proxies {
            let e = tokio::time::timeout(Duration::from_secs(60), next_event(&mut rx, &mut tasks))
                .await
                .with_context(|| {
                    format!(
                        "edit {round}: {} of {proxies} proxies got it within 60 s",
                        moved
                    )
                })??;
            bytes[e.proxy] = e.bytes;
            if latency[e.proxy].is_none() && before[e.proxy].as_ref() != Some(&e.version) {
                latency[e.proxy] = Some((e.at - written).as_secs_f64());
                moved += 1;
            }
            holding[e.proxy] = Some(e.version);
        }
        let mut l: Vec<f64> = latency.into_iter().flatten().collect();
        l.sort_by(f64::total_cmp);
        rounds_p50_s.push(quantile(&l, 0.50));
        rounds_p99_s.push(quantile(&l, 0.99));
        rounds_last_s.push(*l.last().expect("at least one proxy"));
    }
    let wall = edits_start.elapsed().as_secs_f64();
    let client_cpu_share = (cpu_seconds(std::process::id())? - client_cpu0) / wall;
    let cpu2 = cpu_seconds(pid)?;
    let pushed1 = push_latency(&args.listen).await?;
    let pushes = pushed1.1 - pushed0.1;
    if pushes < (proxies * args.rounds) as f64 {
        bail!(
            "the control plane counted {pushes} pushes for {} proxy updates",
            proxies * args.rounds
        );
    }
    let (rss_after_kib, rss_peak_kib) = memory(pid)?;
    let mut sizes = bytes.clone();
    sizes.sort_unstable();
    tasks.abort_all();
    Ok(ScaleResult {
        proxies,
        services: args.services,
        namespaces: args.namespaces,
        rounds: args.rounds,
        connect_all_s,
        rounds_p50_s,
        rounds_p99_s,
        rounds_last_s,
        update_bytes_median: sizes[sizes.len() / 2],
        update_bytes_max: *sizes.last().expect("at least one proxy"),
        rss_idle_kib,
        rss_connected_kib,
        rss_after_kib,
        rss_peak_kib,
        cpu_connect_s: cpu1 - cpu0,
        cpu_per_edit_s: (cpu2 - cpu1) / args.rounds as f64,
        wall_per_edit_s: wall / args.rounds as f64,
        push_latency_mean_s: (pushed1.0 - pushed0.0) / pushes,
        client_cpu_share,
    })
}

/// The next update from any proxy; a proxy whose stream fails fails the run.
async fn next_event(
    rx: &mut mpsc::UnboundedReceiver<Event>,
    tasks: &mut tokio::task::JoinSet<anyhow::Result<()>>,
) -> anyhow::Result<Event> {
    loop {
        tokio::select! {
            e = rx.recv() => return e.context("every proxy stopped"),
            Some(done) = tasks.join_next() => {
                done.context("a proxy task panicked")??;
            }
        }
    }
}

/// "100ms" or "2s" in milliseconds.
fn millis(d: &str) -> anyhow::Result<u64> {
    match (d.strip_suffix("ms"), d.strip_suffix('s')) {
        (Some(ms), _) => Ok(ms.parse()?),
        (None, Some(s)) => Ok(s.parse::<u64>()? * 1000),
        _ => bail!("durations are like 100ms or 2s, got {d:?}"),
    }
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// GET `path` over HTTP/1.1: the status and body.
async fn get(addr: &str, path: &str) -> anyhow::Result<(u16, String)> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    let req = Request::get(format!("http://{addr}{path}")).body(Empty::<Bytes>::new())?;
    let resp = send.send_request(req).await?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Polls `/ready` with a bound (the control plane reads the folder first).
async fn wait_ready(addr: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok((200, _)) = get(addr, "/ready").await {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the control plane at {addr} was not ready within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The control plane's own push-latency histogram (from the change being
/// seen to the update being written): (sum of seconds, count).
async fn push_latency(addr: &str) -> anyhow::Result<(f64, f64)> {
    let (_, text) = get(addr, "/metrics").await?;
    let value = |name: &str| -> anyhow::Result<f64> {
        let line = text
            .lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .with_context(|| format!("no {name} in /metrics"))?;
        Ok(line.rsplit(' ').next().unwrap_or_default().parse()?)
    };
    Ok((
        value("outrigger_cp_push_latency_seconds_sum")?,
        value("outrigger_cp_push_latency_seconds_count")?,
    ))
}

/// User + system CPU seconds of a process (`/proc/PID/stat` counts in
/// USER_HZ, which Linux fixes at 100 for user space).
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = &stat[stat.rfind(')').context("malformed stat")? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f[11].parse()?;
    let stime: f64 = f[12].parse()?;
    Ok((utime + stime) / 100.0)
}

/// (VmRSS, VmHWM) in KiB.
fn memory(pid: u32) -> anyhow::Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> anyhow::Result<u64> {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .with_context(|| format!("no {name} in /proc/{pid}/status"))?;
        Ok(line
            .split_whitespace()
            .nth(1)
            .context("malformed status line")?
            .parse()?)
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}
