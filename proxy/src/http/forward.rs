//! The bottom of every stack: sends a request to the upstream chosen above
//! it (the [`Upstream`] extension) over a pooled connection, or, for
//! upgrades and CONNECT, over a dedicated HTTP/1 connection that is spliced
//! to the client once the upstream agrees.

use std::sync::Arc;

use http::header::{CONNECTION, UPGRADE};
use http::uri::Authority;
use http::{HeaderValue, Method, StatusCode, Version};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use tower::Service;

use super::client::Client;
use super::hold::{until_revoked, Hold};
use super::proxy::SentTo;
use crate::headers::{self, ORIG_PROTO, ORIG_PROTO_HTTP1, SOURCE_WORKLOAD};
use crate::svc::{always_ready, Fut, Req, Rsp};
use crate::svc::{response_version, BodyFault, ProxyError, Upstream, UpstreamProto};
use crate::transport::idle::{Activity, Watched};
use outrigger_proxy_policy::balance::Chosen;
use outrigger_proxy_policy::pool::ConnSettings;

#[derive(Clone)]
pub struct Forward {
    client: Client,
    /// Held by spliced tunnels: the accepted connection's slot and drain
    /// watch stay taken until the tunnel closes.
    conn: Arc<dyn Send + Sync>,
    /// A tunnel is held to the policies in force like the connection it
    /// came from: closed when a later config refuses it.
    hold: Option<Arc<Hold>>,
    /// A tunnel with no byte either way for this long is closed, as an
    /// opaque splice is (`limits.tcp_idle_timeout`).
    tunnel_idle: std::time::Duration,
    /// This proxy's workload, told to meshed endpoints ([`SOURCE_WORKLOAD`]).
    source_workload: Option<HeaderValue>,
}

impl Forward {
    pub fn new(
        client: Client,
        conn: Arc<dyn Send + Sync>,
        hold: Option<Arc<Hold>>,
        tunnel_idle: std::time::Duration,
        source_workload: Option<HeaderValue>,
    ) -> Self {
        Self {
            client,
            conn,
            hold,
            tunnel_idle,
            source_workload,
        }
    }
}

impl Service<Req> for Forward {
    always_ready!();

    fn call(&mut self, req: Req) -> Fut {
        let this = self.clone();
        Box::pin(async move {
            let Some(up) = req.extensions().get::<Upstream>().cloned() else {
                return Err(ProxyError::new(
                    crate::svc::ErrorKind::NoHealthyUpstream,
                    "no upstream was chosen for this request",
                ));
            };
            let mut served = up.served.clone();
            served.mtls = this.client.uses_tls(up.tls.as_ref());
            if let Some(sent) = req.extensions().get::<SentTo>() {
                sent.set(&served);
            }
            let body_fault = req.extensions().get::<BodyFault>().cloned();
            let result = if req.version() != Version::HTTP_2
                && headers::is_upgrade(req.version(), req.method(), req.headers())
            {
                this.upgrade(req, &up).await
            } else {
                this.send(req, &up).await
            };
            match result {
                Ok(mut resp) => {
                    resp.extensions_mut().insert(served);
                    Ok(resp)
                }
                Err(mut e) => {
                    if let Some(f) = &body_fault {
                        e.blame_client(f);
                    }
                    e.served = Some(Box::new(served));
                    Err(e)
                }
            }
        })
    }
}

/// The connection settings of the service the request was sent to (its
/// DestinationRule's `connectionPool`); defaults outside a service.
fn conn_settings(req: &Req) -> ConnSettings {
    req.extensions()
        .get::<Chosen>()
        .map(|c| c.service.pool.limits.conn)
        .unwrap_or_default()
}

impl Forward {
    async fn send(&self, req: Req, up: &Upstream) -> Result<Rsp, ProxyError> {
        let client_version = req.version();
        let conn = conn_settings(&req);
        let (mut parts, body) = req.into_parts();
        let mtls = self.client.uses_tls(up.tls.as_ref());
        prepare(
            &mut parts,
            up,
            mtls.then_some(self.source_workload.as_ref()).flatten(),
        );
        let resp = self
            .client
            .send(
                up.addr,
                up.tls.as_ref(),
                conn,
                up.proto,
                http::Request::from_parts(parts, body),
            )
            .await?;
        let (mut parts, body) = resp.into_parts();
        headers::strip_hop_by_hop(&mut parts.headers);
        parts.version = response_version(client_version);
        Ok(Rsp::from_parts(parts, body))
    }

    /// WebSocket and other upgrades, and CONNECT: forwarded on a dedicated
    /// HTTP/1 connection; on success both sides are spliced byte for byte.
    async fn upgrade(&self, mut req: Req, up: &Upstream) -> Result<Rsp, ProxyError> {
        let client_version = req.version();
        let conn = conn_settings(&req);
        let is_connect = req.method() == Method::CONNECT;
        let client_upgrade = hyper::upgrade::on(&mut req);
        let (mut parts, body) = req.into_parts();
        let protocol = parts.headers.get(UPGRADE).cloned();
        headers::strip_hop_by_hop(&mut parts.headers);
        parts.headers.remove(&ORIG_PROTO);
        let mtls = self.client.uses_tls(up.tls.as_ref());
        tell_source(
            &mut parts.headers,
            mtls.then_some(self.source_workload.as_ref()).flatten(),
        );
        let authority =
            headers::authority(&parts).or_else(|| Authority::try_from(up.addr.to_string()).ok());
        headers::to_http1(&mut parts, authority.as_ref(), false);
        if let Some(p) = protocol {
            parts
                .headers
                .insert(CONNECTION, HeaderValue::from_static("upgrade"));
            parts.headers.insert(UPGRADE, p);
        }
        let mut resp = self
            .client
            .send_upgrade(
                up.addr,
                up.tls.as_ref(),
                conn,
                http::Request::from_parts(parts, body),
            )
            .await?;

        let switched = resp.status() == StatusCode::SWITCHING_PROTOCOLS
            || (is_connect && resp.status().is_success());
        if switched {
            let upstream_upgrade = hyper::upgrade::on(&mut resp);
            let conn = self.conn.clone();
            let hold = self.hold.clone();
            let idle = self.tunnel_idle;
            tokio::spawn(async move {
                let _conn = conn;
                let activity = Activity::new();
                let tunnel = async {
                    match tokio::try_join!(client_upgrade, upstream_upgrade) {
                        Ok((client, upstream)) => {
                            let mut client = Watched::new(TokioIo::new(client), activity.clone());
                            let mut upstream = TokioIo::new(upstream);
                            if let Err(e) =
                                tokio::io::copy_bidirectional(&mut client, &mut upstream).await
                            {
                                tracing::debug!(error = %e, "upgraded connection ended");
                            }
                        }
                        Err(e) => tracing::debug!(error = %e, "upgrade did not complete"),
                    }
                };
                tokio::select! {
                    () = tunnel => {}
                    () = until_revoked(hold.as_deref()) => {}
                    () = activity.idle_for(idle) => {
                        tracing::debug!(?idle, "upgraded connection idle; closed");
                    }
                }
            });
        }
        let (mut parts, body) = resp.into_parts();
        if !switched {
            headers::strip_hop_by_hop(&mut parts.headers);
        }
        parts.version = response_version(client_version);
        Ok(Rsp::from_parts(
            parts,
            body.map_err(Into::into).boxed_unsync(),
        ))
    }
}

/// Removes any [`SOURCE_WORKLOAD`] the request came with, and names this
/// proxy's workload in it (`source`: given only for a mutual TLS hop to a
/// meshed endpoint).
fn tell_source(headers: &mut http::HeaderMap, source: Option<&HeaderValue>) {
    headers.remove(&SOURCE_WORKLOAD);
    if let Some(source) = source {
        headers.insert(SOURCE_WORKLOAD.clone(), source.clone());
    }
}

/// Rewrites the request for the upstream hop; `source`: this proxy's
/// workload, to name on a mutual TLS hop.
fn prepare(parts: &mut http::request::Parts, up: &Upstream, source: Option<&HeaderValue>) {
    let client_h1 = parts.version != Version::HTTP_2;
    headers::strip_hop_by_hop(&mut parts.headers);
    parts.headers.remove(&ORIG_PROTO);
    tell_source(&mut parts.headers, source);
    // An HTTP/1.0 request may carry no Host at all: name the endpoint.
    let authority = headers::authority(parts).unwrap_or_else(|| {
        Authority::try_from(up.addr.to_string()).expect("a socket address is an authority")
    });
    match up.proto {
        UpstreamProto::Http1 => {
            headers::to_http1(parts, Some(&authority), client_h1 && up.keep_absolute)
        }
        UpstreamProto::Http2 => {
            headers::to_http2(parts, authority);
            if up.mark_http1 {
                parts.headers.insert(ORIG_PROTO.clone(), ORIG_PROTO_HTTP1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_source_workload_is_replaced_on_mtls_and_removed_otherwise() {
        let mut h = http::HeaderMap::new();
        h.insert(SOURCE_WORKLOAD.clone(), HeaderValue::from_static("forged"));
        let ours = HeaderValue::from_static("client");
        tell_source(&mut h, Some(&ours));
        assert_eq!(
            h.get_all(&SOURCE_WORKLOAD).iter().collect::<Vec<_>>(),
            [&ours]
        );
        tell_source(&mut h, None);
        assert!(h.get(&SOURCE_WORKLOAD).is_none());
    }
}
