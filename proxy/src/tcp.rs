//! Opaque TCP: bytes spliced between the client and one upstream, over
//! mutual TLS when the upstream is a meshed endpoint with an identity and
//! this proxy has one. A splice with no byte either way for `idle` is
//! closed (Istio's TCP idle timeout; `None`: never).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use outrigger_identity::SpiffeId;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::identity::{Alpn, Identity};
use crate::transport;
use crate::transport::idle::{Activity, Watched};
use crate::transport::tls::Io;

/// How an opaque splice ended.
#[derive(Debug)]
pub enum Ended {
    /// Both sides closed: bytes sent up, and down.
    Closed(u64, u64),
    /// Nothing passed for the idle timeout.
    Idle,
}

pub async fn forward<I>(
    client: I,
    upstream: SocketAddr,
    tls: Option<(&Identity, &Arc<SpiffeId>)>,
    connect_timeout: Duration,
    idle: Option<Duration>,
) -> std::io::Result<Ended>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let tcp = transport::connect(upstream, connect_timeout).await?;
    let mut server = match tls {
        Some((identity, peer)) => identity.connect_peer(tcp, peer, Alpn::Opaque).await?,
        None => Io::Plain(tcp),
    };
    // Every byte either way passes through the client's side.
    let activity = Activity::new();
    let mut client = Watched::new(client, activity.clone());
    tokio::select! {
        r = tokio::io::copy_bidirectional(&mut client, &mut server) => {
            r.map(|(up, down)| Ended::Closed(up, down))
        }
        () = idle_for(&activity, idle) => Ok(Ended::Idle),
    }
}

async fn idle_for(activity: &Activity, idle: Option<Duration>) {
    match idle {
        Some(idle) => activity.idle_for(idle).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Real sockets, so a real clock (a paused one would jump to the idle
    /// deadline while a byte is on the wire): the gaps between bytes are a
    /// tenth of the timeout, and the splice then ends idle.
    #[tokio::test]
    async fn an_idle_splice_is_closed_and_a_busy_one_is_not() {
        let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = upstream.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = upstream.accept().await.unwrap();
            let mut buf = [0u8; 16];
            while let Ok(n) = s.read(&mut buf).await {
                if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        });
        let (mut client, proxy_side) = tokio::io::duplex(64);
        let idle = Duration::from_secs(1);
        let start = tokio::time::Instant::now();
        let splice = tokio::spawn(async move {
            forward(proxy_side, addr, None, Duration::from_secs(1), Some(idle)).await
        });
        // Busy for twice the timeout: still open.
        while start.elapsed() < 2 * idle {
            tokio::time::sleep(idle / 10).await;
            client.write_all(b"x").await.unwrap();
            let mut b = [0u8; 1];
            client.read_exact(&mut b).await.unwrap();
        }
        assert!(!splice.is_finished(), "closed while busy");
        // Then silent: closed once the timeout passes.
        let ended = tokio::time::timeout(10 * idle, splice)
            .await
            .expect("an idle splice is closed")
            .unwrap()
            .unwrap();
        assert!(matches!(ended, Ended::Idle), "{ended:?}");
        assert!(start.elapsed() >= 3 * idle);
    }
}
