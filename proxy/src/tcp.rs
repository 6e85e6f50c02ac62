//! Opaque TCP: bytes spliced between the client and one upstream.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::transport;

pub async fn forward<I>(
    mut client: I,
    upstream: SocketAddr,
    connect_timeout: Duration,
) -> std::io::Result<(u64, u64)>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let mut server = transport::connect(upstream, connect_timeout).await?;
    tokio::io::copy_bidirectional(&mut client, &mut server).await
}
