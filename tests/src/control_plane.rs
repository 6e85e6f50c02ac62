//! An in-process control plane (folder mode) for tests, and the folder it
//! reads.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use outrigger_control_plane::certify::Certifier;
use outrigger_control_plane::folder::Folder;
use outrigger_control_plane::metrics::Metrics;
use outrigger_control_plane::publish::{run_folder, Debounce};
use outrigger_control_plane::server::Server;
use outrigger_control_plane::translate::Options as TranslateOptions;
use outrigger_identity::SpiffeId;
use outrigger_runtime::drain;
use tokio::sync::watch;

/// A folder under the system temp dir, removed on drop.
pub struct Dir(tempfile::TempDir);

impl Dir {
    pub fn new(name: &str) -> Self {
        Self(
            tempfile::Builder::new()
                .prefix(&format!("outrigger-cp-{name}-"))
                .tempdir()
                .unwrap(),
        )
    }

    pub fn path(&self) -> &Path {
        self.0.path()
    }

    /// Writes a file atomically (write then rename), as editors and
    /// ConfigMap volumes do, so the control plane never reads half a file.
    pub fn write(&self, file: &str, text: &str) {
        let tmp = self.path().join(format!(".{file}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.path().join(file)).unwrap();
    }
}

/// An in-process control plane on `listener`, reading `folder`.
pub struct ControlPlane {
    pub addr: SocketAddr,
    stop: drain::Signal,
    pub metrics: Arc<Metrics>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl ControlPlane {
    pub async fn start(folder: &Path, listener: tokio::net::TcpListener) -> Self {
        Self::start_with(folder, listener, None).await
    }

    /// With `certifier`: the mesh CA too, everything over TLS.
    pub async fn start_with(
        folder: &Path,
        listener: tokio::net::TcpListener,
        certifier: Option<Arc<Certifier>>,
    ) -> Self {
        let addr = listener.local_addr().unwrap();
        let metrics = Arc::new(Metrics::new());
        let (tx, rx) = watch::channel(None);
        let (stop, stopped) = drain::channel();
        let source = tokio::spawn(run_folder(
            Folder::new(folder, "default"),
            TranslateOptions::default(),
            Duration::from_millis(20),
            Debounce::new(Duration::from_millis(10), Duration::from_millis(100)),
            tx,
            metrics.clone(),
            stopped.clone(),
        ));
        let mut server = Server::new(rx, metrics.clone());
        if let Some(c) = certifier {
            let id = SpiffeId::new(
                "cluster.local",
                "outrigger-system",
                "outrigger-control-plane",
            )
            .unwrap();
            let tls = c.server_tls(id, &[b"h2"], stopped.clone()).unwrap();
            server = server.with_certifier(c).with_tls(Arc::new(tls));
        }
        let server = tokio::spawn(server.run(listener, stopped));
        Self {
            addr,
            stop,
            metrics,
            tasks: vec![source, server],
        }
    }

    pub async fn bind_and_start(folder: &Path) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::start(folder, listener).await
    }

    pub async fn stop(self) {
        self.stop.stop();
        for t in self.tasks {
            let _ = t.await;
        }
    }
}
