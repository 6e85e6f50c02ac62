//! Reaching one proxy's admin port: directly at an address (`--local`, the
//! demo's proxies on this machine, or a pod's through
//! `kubectl port-forward`), or in the cluster through the API server's pod
//! proxy subresource (`/api/v1/namespaces/NS/pods/NAME:4191/proxy/PATH`):
//! one HTTP request through the API server, with the user's credentials and
//! RBAC (`pods/proxy`), no tunnel to hold open, and a stand-in API server
//! can serve it in tests.
//!
//! The pod proxy reaches the pod on its IP, so it gets what the admin port
//! answers anyone who reaches the pod: `/metrics`, `/ready`, `/live`. Not
//! `/config`, which answers loopback peers only.

use std::net::SocketAddr;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

/// The proxy's admin port, as the injector sets it.
pub const ADMIN_PORT: u16 = 4191;

/// Where one proxy's admin port is.
#[derive(Clone)]
pub enum Admin {
    /// An address this machine reaches directly.
    Local(SocketAddr),
    /// A meshed pod, through the API server.
    Pod {
        client: kube::Client,
        namespace: String,
        name: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("cannot connect to the admin port {addr}: {source} (is the proxy running there?)")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("GET {path} from {addr} failed: {source}")]
    Http {
        addr: SocketAddr,
        path: String,
        source: hyper::Error,
    },
    #[error("GET {path} from {addr} answered {status}: {body}")]
    Status {
        addr: SocketAddr,
        path: String,
        status: http::StatusCode,
        body: String,
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
            } => format!("pod {namespace}/{name}"),
        }
    }

    /// The body of a GET of `path` (which starts with `/`).
    pub async fn get(&self, path: &str) -> Result<String, AdminError> {
        match self {
            Admin::Local(addr) => get_local(*addr, path).await,
            Admin::Pod {
                client,
                namespace,
                name,
            } => {
                let uri = pod_proxy_path(namespace, name, path);
                let req = http::Request::get(uri)
                    .body(Vec::new())
                    .expect("a valid request");
                client
                    .request_text(req)
                    .await
                    .map_err(|source| AdminError::Pod {
                        namespace: namespace.clone(),
                        name: name.clone(),
                        path: path.to_string(),
                        source,
                    })
            }
        }
    }
}

/// The API server path that proxies `path` to a pod's admin port.
pub fn pod_proxy_path(namespace: &str, name: &str, path: &str) -> String {
    format!("/api/v1/namespaces/{namespace}/pods/{name}:{ADMIN_PORT}/proxy{path}")
}

async fn get_local(addr: SocketAddr, path: &str) -> Result<String, AdminError> {
    let http = |source| AdminError::Http {
        addr,
        path: path.to_string(),
        source,
    };
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|source| AdminError::Connect { addr, source })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(http)?;
    tokio::spawn(conn);
    let req = http::Request::get(path)
        .header(http::header::HOST, addr.to_string())
        .body(Empty::<Bytes>::new())
        .expect("a valid request");
    let res = sender.send_request(req).await.map_err(http)?;
    let status = res.status();
    let body = res.into_body().collect().await.map_err(http)?.to_bytes();
    let body = String::from_utf8_lossy(&body).into_owned();
    if !status.is_success() {
        return Err(AdminError::Status {
            addr,
            path: path.to_string(),
            status,
            body: body.trim_end().to_string(),
        });
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pod_proxy_path_names_the_admin_port() {
        assert_eq!(
            pod_proxy_path("shop", "web-7d4b9-x2x", "/metrics"),
            "/api/v1/namespaces/shop/pods/web-7d4b9-x2x:4191/proxy/metrics"
        );
    }
}
