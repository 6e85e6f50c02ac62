//! An in-process control plane (folder mode) for tests, the folder it
//! reads, its certifier for short-lived test certificates, and proxies
//! that follow it.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use outrigger_api::Snapshot;
use outrigger_control_plane::authn::TokenFiles;
use outrigger_control_plane::certify::Certifier;
use outrigger_control_plane::folder::Folder;
use outrigger_control_plane::metrics::Metrics;
use outrigger_control_plane::publish::{run_folder, Debounce};
use outrigger_control_plane::server::Server;
use outrigger_control_plane::translate::Options as TranslateOptions;
use outrigger_identity::Ca;
use outrigger_proxy::control::Follow;
use outrigger_proxy::identity::Identity;
use outrigger_proxy::{Options, Proxy};
use outrigger_runtime::drain;
use tokio::sync::watch;

use crate::identity::{control_plane_id, workload_identity, TRUST_DOMAIN};

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

pub use outrigger_control_plane::mounted_secret::MountedSecret;

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
            let tls = c
                .server_tls(control_plane_id(), &[b"h2"], stopped.clone())
                .unwrap();
            server = server.with_certifier(c).with_tls_swapped(tls);
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

/// The mesh CA behind a control plane, for certificates that live
/// `lifetime`: callers prove who they are with the token files under
/// `tokens` (`<namespace>/<service account>`). The per-address rate limit,
/// made for day-long certificates, is raised: every test proxy calls from
/// 127.0.0.1 and renews every few seconds.
pub fn certifier(ca: Arc<Ca>, lifetime: Duration, tokens: &Path) -> Arc<Certifier> {
    Arc::new(
        Certifier::new(
            ca,
            TRUST_DOMAIN,
            lifetime,
            Arc::new(TokenFiles::new(tokens)),
        )
        .with_rate_limit(20.0, 10.0),
    )
}

/// A proxy started from `boot` that is not ready until its first config
/// arrives; `identity`, if any, is its own on mesh hops.
pub async fn waiting_proxy(boot: Snapshot, identity: Option<Arc<Identity>>) -> Proxy {
    Proxy::start(
        boot,
        Options {
            wait_for_config: true,
            identity,
            ..Options::default()
        },
    )
    .await
    .unwrap()
}

/// Has `proxy` follow the control plane at `cp` as pod `pod` of
/// `namespace`, each update merged into `boot` (the snapshot it started
/// from); with `identity`, certified by the control plane and over mutual
/// TLS.
pub fn follow(
    proxy: &Proxy,
    cp: SocketAddr,
    boot: Snapshot,
    namespace: &str,
    pod: &str,
    identity: Option<Arc<Identity>>,
) {
    outrigger_proxy::control::spawn(
        Follow {
            address: cp.to_string(),
            namespace: namespace.into(),
            pod: pod.into(),
            identity,
        },
        boot,
        proxy.applier(),
        proxy.metrics.clone(),
    )
    .unwrap();
}

/// A proxy of pod `pod` (ServiceAccount `sa`) in `shop`, following the
/// control plane at `cp` with an identity that starts from `ca`'s roots and
/// certifies with the token file `tokens/shop/<sa>`, used for its mesh hops
/// too (as the binary does).
pub async fn certified_follower(
    boot: Snapshot,
    pod: &str,
    sa: &str,
    cp: SocketAddr,
    ca: &outrigger_identity::Ca,
    tokens: &Dir,
) -> Proxy {
    let identity = workload_identity("shop", sa, tokens.path().join("shop").join(sa), ca.roots());
    let p = waiting_proxy(boot.clone(), Some(identity.clone())).await;
    follow(&p, cp, boot, "shop", pod, Some(identity));
    p
}

/// A stand-in control plane that streams exactly the NDJSON lines a test
/// gives it, over plain HTTP/2 (`GET /v1/config`): for updates the real
/// control plane of this build never writes, such as a newer release's.
/// A stream opens with the last line sent, then gets every line sent
/// from then on.
pub struct FakeStream {
    pub addr: SocketAddr,
    lines: watch::Sender<Vec<bytes::Bytes>>,
    requests: Arc<std::sync::Mutex<Vec<Opened>>>,
}

/// A stream a proxy opened on a [`FakeStream`].
#[derive(Clone, Debug)]
pub struct Opened {
    pub uri: String,
    pub user_agent: Option<String>,
}

impl FakeStream {
    pub async fn start() -> Self {
        use http_body_util::{BodyExt, StreamBody};

        let (lines, rx) = watch::channel(Vec::<bytes::Bytes>::new());
        let requests = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = requests.clone();
        let addr = crate::serve_http(move |req: http::Request<hyper::body::Incoming>| {
            let mut rx = rx.clone();
            let seen = seen.clone();
            async move {
                if req.uri().path() != outrigger_api::stream::CONFIG_PATH {
                    let mut r = http::Response::new(crate::empty());
                    *r.status_mut() = http::StatusCode::NOT_FOUND;
                    return r;
                }
                let user_agent = req
                    .headers()
                    .get(http::header::USER_AGENT)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                seen.lock().unwrap().push(Opened {
                    uri: req.uri().to_string(),
                    user_agent,
                });
                // As a control plane does: the latest update at once, then
                // every line sent from now on, in order.
                let sent = rx.borrow_and_update().len().saturating_sub(1);
                let body =
                    futures_util::stream::unfold((rx, sent), |(mut rx, mut sent)| async move {
                        loop {
                            let next = rx.borrow_and_update().get(sent).cloned();
                            if let Some(line) = next {
                                sent += 1;
                                let frame =
                                    Ok::<_, crate::BoxError>(hyper::body::Frame::data(line));
                                return Some((frame, (rx, sent)));
                            }
                            if rx.changed().await.is_err() {
                                return None;
                            }
                        }
                    });
                http::Response::new(StreamBody::new(body).boxed_unsync())
            }
        })
        .await;
        FakeStream {
            addr,
            lines,
            requests,
        }
    }

    /// Streams `line` (a newline is added) to the proxy following.
    pub fn send(&self, line: &str) {
        assert!(!line.contains('\n'), "one update is one line");
        self.lines
            .send_modify(|all| all.push(bytes::Bytes::from(format!("{line}\n"))));
    }

    /// The streams opened so far.
    pub fn requests(&self) -> Vec<Opened> {
        self.requests.lock().unwrap().clone()
    }
}
