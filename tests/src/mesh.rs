//! The two-proxy hop the product is about, in process:
//! `client → outbound proxy → (HTTP/2) → inbound proxy → app`.

use std::net::SocketAddr;

use outrigger_api::Snapshot;
use outrigger_proxy::{Options, Proxy};

use crate::snapshots::{client_snapshot, server_snapshot};

/// Two proxies in front of one app: `client → outbound → inbound → app`.
pub struct Mesh {
    pub client: Proxy,
    pub server: Proxy,
    pub app: SocketAddr,
}

impl Mesh {
    pub async fn start(app: SocketAddr) -> Self {
        Self::start_with(app, |_| {}, |_| {}).await
    }

    /// Starts the pair, letting the test edit each snapshot first.
    pub async fn start_with(
        app: SocketAddr,
        edit_server: impl FnOnce(&mut Snapshot),
        edit_client: impl FnOnce(&mut Snapshot),
    ) -> Self {
        let mut s = server_snapshot(app);
        edit_server(&mut s);
        let server = Proxy::start(s, Options::default())
            .await
            .expect("server proxy starts");
        let inbound = server.listener_addr("inbound").unwrap();
        let mut c = client_snapshot(&[(inbound, true)]);
        edit_client(&mut c);
        let client = Proxy::start(c, Options::default())
            .await
            .expect("client proxy starts");
        Self {
            client,
            server,
            app,
        }
    }

    /// Where the app's client sends its traffic.
    pub fn outbound(&self) -> SocketAddr {
        self.client.listener_addr("outbound").unwrap()
    }

    pub fn inbound(&self) -> SocketAddr {
        self.server.listener_addr("inbound").unwrap()
    }
}
