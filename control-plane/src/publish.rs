//! From source changes to published meshes: changes are debounced (a burst
//! of edits is translated once) with a bound on staleness (a steady stream
//! of edits still publishes at least every `max_wait`).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use outrigger_runtime::drain;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::folder::{Folder, ReadError};
use crate::metrics::{KindLabel, Metrics};
use crate::server::Published;
use crate::store::Store;
use crate::translate::{Mesh, Options, ResourceId, Verdict};

/// When to translate after changes: once `quiet` has passed without a new
/// change, and never later than `max_wait` after the first unpublished one.
#[derive(Clone, Debug)]
pub struct Debounce {
    pub quiet: Duration,
    pub max_wait: Duration,
    first: Option<Instant>,
    last: Option<Instant>,
}

impl Debounce {
    pub fn new(quiet: Duration, max_wait: Duration) -> Self {
        Self {
            quiet,
            max_wait,
            first: None,
            last: None,
        }
    }

    pub fn changed(&mut self, now: Instant) {
        self.first.get_or_insert(now);
        self.last = Some(now);
    }

    /// When the pending changes are due; None when nothing is pending.
    pub fn deadline(&self) -> Option<Instant> {
        let (first, last) = (self.first?, self.last?);
        Some((last + self.quiet).min(first + self.max_wait))
    }

    /// Takes the pending changes if they are due at `now`; returns when the
    /// first of them was seen.
    pub fn take_due(&mut self, now: Instant) -> Option<Instant> {
        if self.deadline()? <= now {
            self.last = None;
            self.first.take()
        } else {
            None
        }
    }
}

/// Translates `store` (a refused resource keeps the version `previous` had
/// in force), publishes it, and reports what changed in the verdicts (logs
/// and metrics).
pub fn publish(
    store: &Store,
    options: &Options,
    changed_at: Instant,
    tx: &watch::Sender<Option<Arc<Published>>>,
    metrics: &Metrics,
    previous: &mut Option<Arc<Mesh>>,
) {
    let mesh = Mesh::rebuild(store, options, previous.as_deref());
    let before: BTreeMap<ResourceId, Verdict> = previous
        .as_ref()
        .map(|p| p.verdicts().clone())
        .unwrap_or_default();
    metrics.translations.inc();
    let mut rejected: BTreeMap<&'static str, i64> = BTreeMap::new();
    for kind in [
        "Service",
        "VirtualService",
        "DestinationRule",
        "AuthorizationPolicy",
        "PeerAuthentication",
    ] {
        rejected.insert(kind, 0);
    }
    for (id, v) in mesh.verdicts() {
        if let Verdict::Refused { reason, message } = v {
            *rejected.entry(id.kind).or_default() += 1;
            if before.get(id) != Some(v) {
                tracing::warn!(kind = id.kind, resource = %id.key, reason, "not accepted: {message}");
            }
        } else if before.get(id).is_some_and(|p| !p.is_accepted()) {
            tracing::info!(kind = id.kind, resource = %id.key, "accepted");
        }
    }
    for (kind, n) in rejected {
        metrics
            .rejected_resources
            .get_or_create(&KindLabel { kind: kind.into() })
            .set(n);
    }
    report_kept_deleted(&mesh, previous.as_deref(), metrics);
    let mesh = Arc::new(mesh);
    *previous = Some(mesh.clone());
    tx.send_replace(Some(Arc::new(Published::new(mesh, changed_at.into_std()))));
}

/// Logs the deleted resources `mesh` keeps in force for routes that use
/// them, and those it no longer keeps; sets their gauge.
fn report_kept_deleted(mesh: &Mesh, before: Option<&Mesh>, metrics: &Metrics) {
    let empty = BTreeMap::new();
    let before = before.map_or(&empty, Mesh::kept_deleted);
    let now = mesh.kept_deleted();
    for (id, users) in now {
        if before.get(id) != Some(users) {
            let users: Vec<String> = users
                .iter()
                .map(|k| format!("VirtualService {k}"))
                .collect();
            tracing::warn!(
                kind = id.kind,
                resource = %id.key,
                "deleted, but its last accepted version stays in force while routes in force use it: {}",
                users.join(", ")
            );
        }
    }
    for id in before.keys().filter(|id| !now.contains_key(id)) {
        tracing::info!(kind = id.kind, resource = %id.key, "deleted, and no route in force uses it any more: gone");
    }
    for kind in ["DestinationRule", "Service"] {
        metrics
            .deleted_in_force
            .get_or_create(&KindLabel { kind: kind.into() })
            .set(now.keys().filter(|id| id.kind == kind).count() as i64);
    }
}

/// The folder source's loop: rescans every `poll`, translates debounced
/// changes, and publishes. Bad files and documents are logged once per new
/// error; what they name keeps its last good version. Reading, parsing and
/// translating run on the blocking pool, off the runtime that serves the
/// proxies' streams and `/ready`, however large the folder.
pub async fn run_folder(
    mut folder: Folder,
    options: Options,
    poll: Duration,
    mut debounce: Debounce,
    tx: watch::Sender<Option<Arc<Published>>>,
    metrics: Arc<Metrics>,
    stop: drain::Watch,
) {
    let options = Arc::new(options);
    let tx = Arc::new(tx);
    let mut in_force: Option<Arc<Mesh>> = None;
    let mut first_scan = true;
    let mut reported: Vec<ReadError> = Vec::new();
    loop {
        let scanned = off_runtime(&stop, move || {
            let scan = folder.rescan();
            (folder, scan)
        });
        let Some((back, scan)) = scanned.await else {
            return;
        };
        folder = back;
        match scan {
            Ok(scan) => {
                // The first scan publishes even an empty folder: proxies
                // wait for a first config.
                if scan.changed || first_scan {
                    debounce.changed(Instant::now());
                }
                first_scan = false;
                let errors = folder.errors();
                let known: HashSet<&ReadError> = reported.iter().collect();
                for e in errors.iter().filter(|e| !known.contains(e)) {
                    tracing::warn!("{e}");
                }
                metrics.manifest_errors.set(errors.len() as i64);
                reported = errors;
            }
            Err(e) => {
                tracing::warn!(folder = %folder.root().display(), error = %e, "cannot read the manifest folder; the last good config stays in force");
            }
        }
        if let Some(first) = debounce.take_due(Instant::now()) {
            let (options, tx, metrics) = (options.clone(), tx.clone(), metrics.clone());
            let published = off_runtime(&stop, move || {
                publish(
                    &folder.store(),
                    &options,
                    first,
                    &tx,
                    &metrics,
                    &mut in_force,
                );
                (folder, in_force)
            });
            let Some(back) = published.await else {
                return;
            };
            (folder, in_force) = back;
        }
        let next_poll = Instant::now() + poll;
        let wake = debounce.deadline().map_or(next_poll, |d| d.min(next_poll));
        tokio::select! {
            _ = tokio::time::sleep_until(wake) => {}
            _ = stop.signaled() => return,
        }
    }
}

/// Runs `work` on the blocking pool; None when `stop` is asked for first
/// (the work then finishes on its own, its result dropped).
async fn off_runtime<T: Send + 'static>(
    stop: &drain::Watch,
    work: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    let task = tokio::task::spawn_blocking(work);
    tokio::select! {
        r = task => match r {
            Ok(t) => Some(t),
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => panic!("the folder source's blocking work was cancelled: {e}"),
        },
        _ = stop.signaled() => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_burst_publishes_once_after_the_quiet_time() {
        let mut d = Debounce::new(Duration::from_millis(100), Duration::from_secs(1));
        let t0 = Instant::now();
        assert_eq!(d.deadline(), None);
        d.changed(t0);
        d.changed(t0 + Duration::from_millis(50));
        assert_eq!(d.deadline(), Some(t0 + Duration::from_millis(150)));
        assert_eq!(d.take_due(t0 + Duration::from_millis(149)), None);
        assert_eq!(d.take_due(t0 + Duration::from_millis(150)), Some(t0));
        assert_eq!(d.deadline(), None, "nothing pending after publishing");
    }

    #[tokio::test(start_paused = true)]
    async fn a_steady_stream_of_changes_still_publishes_within_max_wait() {
        let mut d = Debounce::new(Duration::from_millis(100), Duration::from_secs(1));
        let t0 = Instant::now();
        let mut published = Vec::new();
        for i in 0..30u64 {
            let now = t0 + Duration::from_millis(80 * i);
            if let Some(first) = d.take_due(now) {
                published.push((now - t0, first - t0));
            }
            d.changed(now);
        }
        // Changes every 80 ms never leave 100 ms of quiet: only max_wait publishes.
        assert_eq!(
            published,
            [
                (Duration::from_millis(1040), Duration::ZERO),
                (Duration::from_millis(2080), Duration::from_millis(1040)),
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_folder_is_published_one_quiet_time_after_start_then_on_each_edit() {
        let tmp = tempfile::Builder::new()
            .prefix("outrigger-publish-")
            .tempdir()
            .unwrap();
        let dir = tmp.path();
        let svc = "apiVersion: v1\nkind: Service\nmetadata: { name: web }\nspec: { clusterIP: 10.0.0.1, ports: [{ port: 80 }] }\n";
        std::fs::write(dir.join("a.yaml"), svc).unwrap();
        let (tx, mut rx) = watch::channel(None);
        let (_stop_tx, stop) = drain::channel();
        let metrics = Arc::new(Metrics::new());
        let t0 = Instant::now();
        tokio::spawn(run_folder(
            Folder::new(dir, "default"),
            Options::default(),
            Duration::from_millis(500),
            Debounce::new(Duration::from_millis(100), Duration::from_secs(1)),
            tx,
            metrics.clone(),
            stop,
        ));
        rx.changed().await.unwrap();
        assert_eq!(
            t0.elapsed(),
            Duration::from_millis(100),
            "one quiet time, not max_wait"
        );
        std::fs::write(dir.join("b.yaml"), svc.replace("web", "api")).unwrap();
        rx.changed().await.unwrap();
        // Written at 100 ms, seen by the next poll (at 600 ms: a poll
        // follows each wake-up by 500 ms), published one quiet time later.
        assert_eq!(t0.elapsed(), Duration::from_millis(700));
        let published = rx.borrow().clone().unwrap();
        let names: Vec<String> = published
            .mesh
            .config_for(&crate::translate::ProxyId {
                namespace: "default".into(),
                pod: "p".into(),
            })
            .services
            .iter()
            .map(|s| s.name.clone())
            .collect();
        assert_eq!(names, ["api", "web"]);
        assert!(metrics
            .encode()
            .contains("outrigger_cp_translations_total 2"));
    }

    /// A raw HTTP/1.1 GET; the response as text.
    async fn get(addr: std::net::SocketAddr, path: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nhost: cp\r\nconnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    /// On a single-threaded runtime, so that folder work done on it would
    /// stop the server too.
    #[tokio::test(flavor = "current_thread")]
    async fn the_server_answers_while_a_file_is_being_read() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let tmp = tempfile::Builder::new()
            .prefix("outrigger-publish-gate-")
            .tempdir()
            .unwrap();
        let dir = tmp.path().to_path_buf();
        let svc = "apiVersion: v1\nkind: Service\nmetadata: { name: web }\nspec: { clusterIP: 10.0.0.1, ports: [{ port: 80 }] }\n";
        std::fs::write(dir.join("a.yaml"), svc).unwrap();
        let (tx, rx) = watch::channel(None);
        let mut published = rx.clone();
        let (_stop_tx, stop) = drain::channel();
        let metrics = Arc::new(Metrics::new());
        tokio::spawn(run_folder(
            Folder::new(&dir, "default"),
            Options::default(),
            Duration::from_millis(10),
            Debounce::new(Duration::from_millis(1), Duration::from_millis(10)),
            tx,
            metrics.clone(),
            stop.clone(),
        ));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(crate::server::Server::new(rx, metrics).run(listener, stop));
        published.wait_for(Option::is_some).await.unwrap();

        // The gate: a FIFO, whose read blocks the scan until the writer
        // below lets it go. Its open for writing returns once the scan has
        // opened it for reading.
        let fifo = dir.join("big.yaml");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let api = svc.replace("web", "api").replace("10.0.0.1", "10.0.0.2");
        let (opened_tx, opened) = tokio::sync::oneshot::channel();
        let (release, released_rx) = std::sync::mpsc::channel::<()>();
        let released = Arc::new(AtomicBool::new(false));
        let writer = std::thread::spawn({
            let (released, fifo, dir, api) =
                (released.clone(), fifo.clone(), dir.clone(), api.clone());
            move || {
                use std::io::Write;
                let mut w = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
                let _ = opened_tx.send(());
                // Held until the test has its answer; if the scan holds
                // the test's own thread, it never comes, and the gate
                // opens after a while so the test can fail.
                let _ = released_rx.recv_timeout(Duration::from_secs(30));
                released.store(true, Ordering::SeqCst);
                // A regular file takes the FIFO's place for the later scans.
                std::fs::write(dir.join(".big.tmp"), &api).unwrap();
                std::fs::rename(dir.join(".big.tmp"), &fifo).unwrap();
                w.write_all(api.as_bytes()).unwrap();
            }
        });
        opened.await.unwrap();
        let ready = get(addr, "/ready").await;
        let config = get(addr, "/debug/config?namespace=default&pod=p").await;
        assert!(
            !released.load(Ordering::SeqCst),
            "the server answered only once the scan was over"
        );
        assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");
        assert!(
            config.starts_with("HTTP/1.1 200") && config.contains("\"web\""),
            "{config}"
        );
        release.send(()).unwrap();
        tokio::task::spawn_blocking(move || writer.join().unwrap())
            .await
            .unwrap();
        // The file read at last is published.
        published
            .wait_for(|p| {
                p.as_ref().is_some_and(|p| {
                    p.mesh
                        .config_for(&crate::translate::ProxyId {
                            namespace: "default".into(),
                            pod: "p".into(),
                        })
                        .services
                        .iter()
                        .any(|s| s.name == "api")
                })
            })
            .await
            .unwrap();
    }
}
