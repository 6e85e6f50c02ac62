//! Sockets: the replaying and byte-counting IO wrappers, original-destination
//! lookup, and upstream connects.

pub mod metered;
pub mod orig_dst;
pub mod prefixed;

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
    Ok(stream)
}
