//! Opaque TCP: bytes spliced between the client and one upstream, over
//! mutual TLS when the upstream is a meshed endpoint with an identity and
//! this proxy has one.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use outrigger_identity::SpiffeId;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::identity::{Alpn, Identity};
use crate::transport;
use crate::transport::tls::Io;

pub async fn forward<I>(
    mut client: I,
    upstream: SocketAddr,
    tls: Option<(&Identity, &Arc<SpiffeId>)>,
    connect_timeout: Duration,
) -> std::io::Result<(u64, u64)>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let tcp = transport::connect(upstream, connect_timeout).await?;
    let mut server = match tls {
        Some((identity, peer)) => identity.connect_peer(tcp, peer, Alpn::Opaque).await?,
        None => Io::Plain(tcp),
    };
    tokio::io::copy_bidirectional(&mut client, &mut server).await
}
