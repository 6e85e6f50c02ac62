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
        source: kube::Error,
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
        source: kube::Error,
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
        match self {
            Admin::Local(addr) => {
                get_from(*addr, "the proxy's admin port", paths, ADMIN_TIMEOUT).await
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
                        source,
                    })?;
                let stream = forward
                    .take_stream(ADMIN_PORT)
                    .expect("the stream of the port asked for");
                // Named as the proxy sees it: its own loopback admin port.
                let at = SocketAddr::from(([127, 0, 0, 1], ADMIN_PORT));
                let bodies = get_over(stream, at, paths, ADMIN_TIMEOUT).await;
                forward.abort();
                bodies.map_err(|e| AdminError::Forwarded {
                    namespace: namespace.clone(),
                    name: name.clone(),
                    path: paths.join(" "),
                    source: Box::new(e),
                })
            }
            Admin::Pod {
                client,
                namespace,
                name,
            } => {
                let mut bodies = Vec::new();
                for path in paths {
                    bodies.push(
                        pod_get(client, namespace, name, ADMIN_PORT, path)
                            .await
                            .map_err(|source| AdminError::Pod {
                                namespace: namespace.clone(),
                                name: name.clone(),
                                path: path.to_string(),
                                source,
                            })?,
                    );
                }
                Ok(bodies)
            }
        }
    }
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

/// GETs of `paths` over one plain HTTP/1.1 connection to `addr`, all
/// within `timeout`. `what` names the server in errors.
pub(crate) async fn get_from(
    addr: SocketAddr,
    what: &'static str,
    paths: &[&str],
    timeout: Duration,
) -> Result<Vec<String>, AdminError> {
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
) -> Result<Vec<String>, AdminError>
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

async fn exchange<I>(io: I, addr: SocketAddr, paths: &[&str]) -> Result<Vec<String>, AdminError>
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
    let mut bodies = Vec::new();
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
        if !status.is_success() {
            return Err(AdminError::Status {
                addr,
                path: path.to_string(),
                status,
                body: body.trim_end().to_string(),
            });
        }
        bodies.push(body);
    }
    Ok(bodies)
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
