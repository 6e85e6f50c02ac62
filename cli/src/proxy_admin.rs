//! Reaching one proxy's admin port, three ways:
//!
//! - [`Admin::Local`]: an address this machine reaches (`--local`: the
//!   demo's proxies, or a pod's through `kubectl port-forward`).
//! - [`Admin::Pod`]: the API server's pod proxy subresource
//!   (`/api/v1/namespaces/NS/pods/NAME:4191/proxy/PATH`): one HTTP request
//!   through the API server, with the user's credentials and RBAC
//!   (`pods/proxy`), no tunnel to hold open, and a stand-in API server can
//!   serve it in tests. The API server reaches the pod on its IP, so this
//!   gets what the admin port answers anyone who reaches the pod
//!   (`/metrics`, `/ready`, `/live`): `stat` uses it.
//! - [`Admin::PortForward`]: a port-forward to the pod's admin port, as
//!   `kubectl port-forward` opens it (RBAC: `pods/portforward`). It arrives
//!   inside the pod's network namespace, from loopback, which `/config`
//!   requires (it holds every endpoint, identity and authorization rule,
//!   so the proxy answers it to loopback peers only): `proxy-config` uses
//!   it.

use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

/// The proxy's admin port, as the injector sets it.
pub const ADMIN_PORT: u16 = 4191;

/// How long one proxy's admin port may take to answer all that is asked
/// of it (it answers from memory: a proxy silent this long is stuck, or
/// not a proxy).
pub const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a failed port-forward waits for kubelet's reason on its error
/// channel (it comes with the failure, or not at all).
const REFUSAL_WAIT: Duration = Duration::from_secs(1);

/// Where one proxy's admin port is.
#[derive(Clone)]
pub enum Admin {
    /// An address this machine reaches directly.
    Local(SocketAddr),
    /// A meshed pod, through the API server's pod proxy.
    Pod {
        client: kube::Client,
        namespace: String,
        name: String,
    },
    /// A meshed pod, through a port-forward to its admin port.
    PortForward {
        client: kube::Client,
        namespace: String,
        name: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("cannot connect to {what} at {addr}: {source} (is it running there?)")]
    Connect {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("GET {path} from {addr} failed: {source}")]
    Http {
        addr: SocketAddr,
        path: String,
        source: hyper::Error,
    },
    #[error("GET {path} from {addr}: no answer within {} s (is it a proxy's admin port, and is the proxy stuck?)", .timeout.as_secs_f64())]
    Timeout {
        addr: SocketAddr,
        path: String,
        timeout: Duration,
    },
    #[error("GET {path} from {addr} answered {status}: {body}")]
    Status {
        addr: SocketAddr,
        path: String,
        status: http::StatusCode,
        body: String,
    },
    #[error(
        "cannot port-forward to pod {namespace}/{name}:{port}: {source} (is the pod running, \
         and may you create pods/portforward there?)"
    )]
    PortForward {
        namespace: String,
        name: String,
        port: u16,
        source: Box<kube::Error>,
    },
    #[error(
        "the port-forward to pod {namespace}/{name}:{port} failed: {message} (is the pod's \
         proxy running, and listening on its admin port {port}?)"
    )]
    Refused {
        namespace: String,
        name: String,
        port: u16,
        message: String,
    },
    #[error("GET {path} from pod {namespace}/{name} through a port-forward failed: {source}")]
    Forwarded {
        namespace: String,
        name: String,
        path: String,
        source: Box<AdminError>,
    },
    #[error(
        "GET {path} from pod {namespace}/{name} through the API server failed: {source} \
         (is the pod running and meshed, and may you get pods/proxy there?)"
    )]
    Pod {
        namespace: String,
        name: String,
        path: String,
        source: Box<kube::Error>,
    },
}

impl Admin {
    /// What it is, for messages: the address or `pod NS/NAME`.
    pub fn describe(&self) -> String {
        match self {
            Admin::Local(addr) => addr.to_string(),
            Admin::Pod {
                namespace, name, ..
            }
            | Admin::PortForward {
                namespace, name, ..
            } => format!("pod {namespace}/{name}"),
        }
    }

    /// The body of a GET of `path` (which starts with `/`).
    pub async fn get(&self, path: &str) -> Result<String, AdminError> {
        Ok(self.get_all(&[path]).await?.remove(0))
    }

    /// The bodies of GETs of `paths`, in order, over one connection (one
    /// port-forward) where there is one.
    pub async fn get_all(&self, paths: &[&str]) -> Result<Vec<String>, AdminError> {
        self.get_all_found(paths, &[])
            .await
            .map(|bodies| bodies.into_iter().map(Option::unwrap_or_default).collect())
    }

    /// [`Admin::get_all`], where a path of `optional` the proxy answers 404
    /// (an older proxy that does not serve it) is `None` instead of an
    /// error. Through the pod proxy a 404 may be the API server's (no such
    /// pod), so there every path is required.
    pub async fn get_all_found(
        &self,
        paths: &[&str],
        optional: &[&str],
    ) -> Result<Vec<Option<String>>, AdminError> {
        let wanted = |answers: Vec<Answer>| -> Result<Vec<Option<String>>, AdminError> {
            answers
                .into_iter()
                .map(|a| match a {
                    Answer::Body(b) => Ok(Some(b)),
                    Answer::Failed(e) if not_found(&e).is_some_and(|p| optional.contains(&p)) => {
                        Ok(None)
                    }
                    Answer::Failed(e) => Err(e),
                })
                .collect()
        };
        match self {
            Admin::Local(addr) => {
                wanted(answers_from(*addr, "the proxy's admin port", paths, ADMIN_TIMEOUT).await?)
            }
            Admin::PortForward {
                client,
                namespace,
                name,
            } => {
                let api: kube::Api<k8s_openapi::api::core::v1::Pod> =
                    kube::Api::namespaced(client.clone(), namespace);
                let mut forward = api
                    .portforward(name, &[ADMIN_PORT])
                    .await
                    .map_err(|source| AdminError::PortForward {
                        namespace: namespace.clone(),
                        name: name.clone(),
                        port: ADMIN_PORT,
                        source: Box::new(source),
                    })?;
                let stream = forward
                    .take_stream(ADMIN_PORT)
                    .expect("the stream of the port asked for");
                let refusal = forward.take_error(ADMIN_PORT);
                // Named as the proxy sees it: its own loopback admin port.
                let at = SocketAddr::from(([127, 0, 0, 1], ADMIN_PORT));
                let answers = get_over(stream, at, paths, ADMIN_TIMEOUT).await;
                // Failed: what kubelet said on the error channel, when it
                // said something (nothing listens on the port, typically).
                let said = match (&answers, refusal) {
                    (Err(_), Some(said)) => tokio::time::timeout(REFUSAL_WAIT, said)
                        .await
                        .ok()
                        .flatten(),
                    _ => None,
                };
                forward.abort();
                if let Some(message) = said {
                    return Err(AdminError::Refused {
                        namespace: namespace.clone(),
                        name: name.clone(),
                        port: ADMIN_PORT,
                        message,
                    });
                }
                let forwarded = |path: String, e: AdminError| AdminError::Forwarded {
                    namespace: namespace.clone(),
                    name: name.clone(),
                    path,
                    source: Box::new(e),
                };
                let answers = answers.map_err(|e| forwarded(paths.join(" "), e))?;
                wanted(
                    answers
                        .into_iter()
                        .zip(paths)
                        .map(|(a, path)| match a {
                            Answer::Failed(e) if not_found(&e).is_none() => {
                                Answer::Failed(forwarded(path.to_string(), e))
                            }
                            a => a,
                        })
                        .collect(),
                )
            }
            Admin::Pod {
                client,
                namespace,
                name,
            } => {
                let mut bodies = Vec::new();
                for path in paths {
                    bodies.push(Some(
                        pod_get(client, namespace, name, ADMIN_PORT, path)
                            .await
                            .map_err(|source| AdminError::Pod {
                                namespace: namespace.clone(),
                                name: name.clone(),
                                path: path.to_string(),
                                source: Box::new(source),
                            })?,
                    ));
                }
                Ok(bodies)
            }
        }
    }
}

/// Whether `pod` runs an Outrigger proxy: an `outrigger-proxy` container
/// (the injector adds it as a native sidecar, an init container that
/// keeps running, or as a plain container on older clusters).
pub fn has_proxy(pod: &k8s_openapi::api::core::v1::Pod) -> bool {
    let proxy = outrigger_injector::inject::PROXY_CONTAINER;
    pod.spec.as_ref().is_some_and(|spec| {
        spec.containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
            .any(|c| c.name == proxy)
    })
}

/// The API server path that proxies `path` to a pod's admin port.
pub fn pod_proxy_path(namespace: &str, name: &str, path: &str) -> String {
    pod_port_proxy_path(namespace, name, ADMIN_PORT, path)
}

/// The API server path that proxies `path` to `port` of a pod.
pub fn pod_port_proxy_path(namespace: &str, name: &str, port: u16, path: &str) -> String {
    format!("/api/v1/namespaces/{namespace}/pods/{name}:{port}/proxy{path}")
}

/// The body of a GET of `path` on `port` of pod `namespace/name`, through
/// the API server's pod proxy (plain HTTP from the API server to the pod),
/// within [`ADMIN_TIMEOUT`]. The caller names the pod in its error.
pub async fn pod_get(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    port: u16,
    path: &str,
) -> Result<String, kube::Error> {
    let req = http::Request::get(pod_port_proxy_path(namespace, name, port, path))
        .body(Vec::new())
        .expect("a valid request");
    match tokio::time::timeout(ADMIN_TIMEOUT, client.request_text(req)).await {
        Ok(r) => r,
        Err(_) => Err(kube::Error::Service(
            format!("no answer within {} s", ADMIN_TIMEOUT.as_secs()).into(),
        )),
    }
}

/// What the admin port answered one GET: its body, or why not (its
/// status, or the connection failing on the way).
enum Answer {
    Body(String),
    Failed(AdminError),
}

/// The path a 404 answered, if `e` is one.
fn not_found(e: &AdminError) -> Option<&str> {
    match e {
        AdminError::Status {
            status: http::StatusCode::NOT_FOUND,
            path,
            ..
        } => Some(path),
        _ => None,
    }
}

/// Every body, or the first failure.
fn bodies(answers: Vec<Answer>) -> Result<Vec<String>, AdminError> {
    answers
        .into_iter()
        .map(|a| match a {
            Answer::Body(b) => Ok(b),
            Answer::Failed(e) => Err(e),
        })
        .collect()
}

/// GETs of `paths` over one plain HTTP/1.1 connection to `addr`, all
/// within `timeout`. `what` names the server in errors.
pub(crate) async fn get_from(
    addr: SocketAddr,
    what: &'static str,
    paths: &[&str],
    timeout: Duration,
) -> Result<Vec<String>, AdminError> {
    bodies(answers_from(addr, what, paths, timeout).await?)
}

/// [`get_from`], each path's answer on its own.
async fn answers_from(
    addr: SocketAddr,
    what: &'static str,
    paths: &[&str],
    timeout: Duration,
) -> Result<Vec<Answer>, AdminError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let tcp = tokio::time::timeout_at(deadline, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| AdminError::Timeout {
            addr,
            path: paths.join(" "),
            timeout,
        })?
        .map_err(|source| AdminError::Connect { what, addr, source })?;
    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
    get_over(tcp, addr, paths, left).await.map_err(|e| match e {
        // Named with the whole time it had, connecting included.
        AdminError::Timeout { addr, path, .. } => AdminError::Timeout {
            addr,
            path,
            timeout,
        },
        e => e,
    })
}

/// GETs of `paths` over one HTTP/1.1 connection on `io`, all within
/// `timeout`; `addr` names the admin port in errors.
async fn get_over<I>(
    io: I,
    addr: SocketAddr,
    paths: &[&str],
    timeout: Duration,
) -> Result<Vec<Answer>, AdminError>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    tokio::time::timeout(timeout, exchange(io, addr, paths))
        .await
        .map_err(|_| AdminError::Timeout {
            addr,
            path: paths.join(" "),
            timeout,
        })?
}

async fn exchange<I>(io: I, addr: SocketAddr, paths: &[&str]) -> Result<Vec<Answer>, AdminError>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let http = |path: &str, source| AdminError::Http {
        addr,
        path: path.to_string(),
        source,
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| http(paths.first().copied().unwrap_or("/"), e))?;
    tokio::spawn(conn);
    let mut answers = Vec::new();
    for path in paths {
        let req = http::Request::get(*path)
            .header(http::header::HOST, addr.to_string())
            .body(Empty::<Bytes>::new())
            .expect("a valid request");
        let res = sender.send_request(req).await.map_err(|e| http(path, e))?;
        let status = res.status();
        let body = res
            .into_body()
            .collect()
            .await
            .map_err(|e| http(path, e))?
            .to_bytes();
        let body = String::from_utf8_lossy(&body).into_owned();
        answers.push(if status.is_success() {
            Answer::Body(body)
        } else {
            Answer::Failed(AdminError::Status {
                addr,
                path: path.to_string(),
                status,
                body: body.trim_end().to_string(),
            })
        });
    }
    Ok(answers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_port_that_never_answers_is_an_error_not_a_hang() {
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = silent.local_addr().unwrap();
        // Accepts, reads nothing, answers nothing.
        let _held = tokio::spawn(async move {
            let mut conns = Vec::new();
            loop {
                conns.push(silent.accept().await.unwrap());
            }
        });
        let got = tokio::time::timeout(
            Duration::from_secs(5),
            get_from(
                addr,
                "the proxy's admin port",
                &["/config"],
                Duration::from_millis(200),
            ),
        )
        .await
        .expect("get_from gave up by itself");
        let err = got.unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "GET /config from {addr}: no answer within 0.2 s (is it a proxy's admin port, \
                 and is the proxy stuck?)"
            )
        );
    }

    #[test]
    fn the_pod_proxy_path_names_the_admin_port() {
        assert_eq!(
            pod_proxy_path("shop", "web-7d4b9-x2x", "/metrics"),
            "/api/v1/namespaces/shop/pods/web-7d4b9-x2x:4191/proxy/metrics"
        );
    }
}
