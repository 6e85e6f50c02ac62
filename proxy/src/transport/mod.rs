//! Sockets: the replaying, byte-counting, idle-watching and HTTP/2 flood-guarding IO wrappers, original-destination
//! lookup, and upstream connects.

pub mod h2_guard;
pub mod idle;
pub mod metered;
pub mod orig_dst;
pub mod prefixed;
pub mod tls;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;

/// Connects to an upstream with a deadline; Nagle off (request/response traffic).
pub async fn connect(addr: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("connect to {addr} timed out after {timeout:?}"),
            )
        })??;
    stream.set_nodelay(true)?;
    set_keepalive(&stream);
    Ok(stream)
}

/// TCP keepalive, so that a peer that vanished without a FIN or RST (a
/// node gone, a NAT entry dropped) does not hold a connection forever.
pub fn set_keepalive(stream: &TcpStream) {
    let ka = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(60))
        .with_interval(Duration::from_secs(10));
    if let Err(e) = socket2::SockRef::from(stream).set_tcp_keepalive(&ka) {
        tracing::debug!(error = %e, "could not set TCP keepalive");
    }
}
