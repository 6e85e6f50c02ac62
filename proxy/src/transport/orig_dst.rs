//! The original destination of a connection that iptables redirected to us.

use std::net::SocketAddr;

use tokio::net::TcpStream;

/// The address the client meant to reach, when the connection was redirected
/// (`SO_ORIGINAL_DST`). `None` when it was not: the lookup fails, or it
/// answers with our own listening address.
pub fn original_dst(stream: &TcpStream) -> Option<SocketAddr> {
    let sock = socket2::SockRef::from(stream);
    let local = stream.local_addr().ok()?;
    let orig = match local {
        SocketAddr::V4(_) => sock.original_dst_v4(),
        SocketAddr::V6(_) => sock.original_dst_v6(),
    }
    .ok()?
    .as_socket()?;
    (orig != local).then_some(orig)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_direct_connection_has_no_original_destination() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        assert_eq!(original_dst(&server), None);
    }
}
