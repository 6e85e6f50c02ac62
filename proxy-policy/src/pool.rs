//! Connection-pool limits per service (Istio `connectionPool`), Envoy's
//! circuit breakers: `http2MaxRequests` bounds requests in flight to the
//! service; `tcp.maxConnections` bounds HTTP/1 requests in flight (each holds
//! its own upstream connection), and up to `http1MaxPendingRequests` more
//! wait for one. Past the limits a request is answered 503 at once (`UO`).
//! A request holds its slots until its response body ends.
//!
//! `http.maxRetries` bounds the retries outstanding to the service
//! ([`Pool::retry_slot`], taken by the retry layer), and the connection
//! settings (`tcp.connectTimeout`, `http.idleTimeout`,
//! `http.maxRequestsPerConnection`) travel to the upstream client as
//! [`ConnSettings`].

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outrigger_api::policy::ConnectionPool;
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

/// Connection settings of one destination (DestinationRule
/// `connectionPool`); unset fields fall back to the client's own.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ConnSettings {
    /// Instead of the client's connect timeout (`tcp.connectTimeout`).
    pub connect_timeout: Option<Duration>,
    /// Instead of the client's idle timeout (`http.idleTimeout`); zero:
    /// never closed for idleness.
    pub idle_timeout: Option<Duration>,
    /// Requests one connection carries before it is retired
    /// (`http.maxRequestsPerConnection`); 0: no limit.
    pub max_requests_per_connection: u32,
}

impl ConnSettings {
    /// Whether a connection that has carried `sent` requests takes another.
    pub fn reusable(&self, sent: u32) -> bool {
        self.max_requests_per_connection == 0 || sent < self.max_requests_per_connection
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolLimits {
    pub max_connections: Option<u32>,
    pub max_pending: Option<u32>,
    pub max_requests: Option<u32>,
    pub max_retries: Option<u32>,
    /// How connections to the service's endpoints are opened and kept.
    pub conn: ConnSettings,
    /// Opaque TCP connections to the service close after this long with no
    /// byte either way (`tcp.idleTimeout`); zero: never; None: the proxy's.
    pub tcp_idle_timeout: Option<std::time::Duration>,
}

impl From<Option<&ConnectionPool>> for PoolLimits {
    fn from(cp: Option<&ConnectionPool>) -> Self {
        let Some(cp) = cp else {
            return Self::default();
        };
        let tcp = cp.tcp.as_ref();
        let http = cp.http.as_ref();
        Self {
            max_connections: tcp.and_then(|t| t.max_connections),
            max_pending: http.and_then(|h| h.http1_max_pending_requests),
            max_requests: http.and_then(|h| h.http2_max_requests),
            max_retries: http.and_then(|h| h.max_retries),
            tcp_idle_timeout: tcp.and_then(|t| t.idle_timeout).map(|d| d.get()),
            conn: ConnSettings {
                connect_timeout: tcp.and_then(|t| t.connect_timeout).map(|d| d.get()),
                // Istio: HTTP connections fall back to the TCP idle timeout.
                idle_timeout: http
                    .and_then(|h| h.idle_timeout)
                    .or_else(|| tcp.and_then(|t| t.idle_timeout))
                    .map(|d| d.get()),
                max_requests_per_connection: http
                    .and_then(|h| h.max_requests_per_connection)
                    .unwrap_or(0),
            },
        }
    }
}

#[derive(Debug)]
pub struct Pool {
    pub limits: PoolLimits,
    requests: Option<Arc<Semaphore>>,
    connections: Option<Arc<Connections>>,
    retries: Option<Arc<Semaphore>>,
}

/// Slots a request holds until its response ends.
#[derive(Debug, Default)]
pub struct Slots {
    _request: Option<OwnedSemaphorePermit>,
    _connection: Option<Connection>,
}

/// The HTTP/1 connection slots (`maxConnections`) and the requests waiting
/// for one (`http1MaxPendingRequests`). A freed slot goes straight to the
/// first waiter, which leaves the queue at that moment (as Envoy attaches a
/// pending request to the connection that frees up), so a request that
/// arrives right after never counts a waiter that is already served.
#[derive(Debug)]
struct Connections {
    max: u32,
    state: Mutex<Queue>,
}

#[derive(Debug, Default)]
struct Queue {
    busy: u32,
    waiting: VecDeque<oneshot::Sender<Connection>>,
}

/// One HTTP/1 connection slot; handed to the next waiter when dropped.
#[derive(Debug)]
struct Connection(Option<Arc<Connections>>);

impl Drop for Connection {
    fn drop(&mut self) {
        let Some(conns) = self.0.take() else { return };
        let mut q = conns.state.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(waiter) = q.waiting.pop_front() {
            match waiter.send(Connection(Some(conns.clone()))) {
                Ok(()) => return,
                // That waiter gave up: the slot, disarmed, goes to the next.
                Err(mut slot) => slot.0 = None,
            }
        }
        q.busy -= 1;
    }
}

impl Connections {
    /// A slot now, or a place in the queue (at most `max_pending` waiting).
    async fn take(self: &Arc<Self>, max_pending: u32) -> Result<Connection, Overflow> {
        let granted = {
            let mut q = self.state.lock().unwrap_or_else(|p| p.into_inner());
            if q.busy < self.max {
                q.busy += 1;
                return Ok(Connection(Some(self.clone())));
            }
            q.waiting.retain(|w| !w.is_closed());
            if q.waiting.len() as u64 >= u64::from(max_pending) {
                return Err(Overflow::Pending(max_pending));
            }
            let (tx, rx) = oneshot::channel();
            q.waiting.push_back(tx);
            rx
        };
        // Only a pool dropped with waiters would close the channel, and
        // every waiter holds the pool.
        granted.await.map_err(|_| Overflow::Pending(max_pending))
    }
}

/// Why a request was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Overflow {
    Requests(u32),
    Pending(u32),
}

impl Pool {
    pub fn new(limits: PoolLimits) -> Self {
        let sem = |n: Option<u32>| n.map(|n| Arc::new(Semaphore::new(n as usize)));
        Self {
            limits,
            requests: sem(limits.max_requests),
            connections: limits.max_connections.map(|max| {
                Arc::new(Connections {
                    max,
                    state: Mutex::default(),
                })
            }),
            retries: sem(limits.max_retries),
        }
    }

    /// Whether requests are admitted without a check.
    pub fn is_unlimited(&self) -> bool {
        self.requests.is_none() && self.connections.is_none()
    }

    /// A slot for one retry to the service (`maxRetries`), held until that
    /// retry's answer is known (Envoy counts a retry outstanding from its
    /// decision until then); `Err(max)` when all are taken, `Ok(None)`
    /// without a limit.
    pub fn retry_slot(&self) -> Result<Option<OwnedSemaphorePermit>, u32> {
        match &self.retries {
            None => Ok(None),
            Some(sem) => sem
                .clone()
                .try_acquire_owned()
                .map(Some)
                .map_err(|_| self.limits.max_retries.unwrap_or(0)),
        }
    }

    /// Takes the slots for one request, waiting for an HTTP/1 connection if
    /// the pending queue has room; refuses at once otherwise.
    pub async fn admit(&self, http1: bool) -> Result<Slots, Overflow> {
        let mut slots = Slots::default();
        if let Some(sem) = &self.requests {
            slots._request = Some(
                sem.clone()
                    .try_acquire_owned()
                    .map_err(|_| Overflow::Requests(self.limits.max_requests.unwrap_or(0)))?,
            );
        }
        if let (true, Some(conns)) = (http1, &self.connections) {
            let max_pending = self.limits.max_pending.unwrap_or(u32::MAX);
            slots._connection = Some(conns.take(max_pending).await?);
        }
        Ok(slots)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(conns: Option<u32>, pending: Option<u32>, requests: Option<u32>) -> Pool {
        Pool::new(PoolLimits {
            max_connections: conns,
            max_pending: pending,
            max_requests: requests,
            ..Default::default()
        })
    }

    #[test]
    fn a_destination_rule_pool_becomes_limits_and_connection_settings() {
        let cp: ConnectionPool = serde_json::from_str(
            r#"{ "tcp": { "maxConnections": 1, "connectTimeout": "250ms" },
                 "http": { "http1MaxPendingRequests": 1, "maxRequestsPerConnection": 1,
                           "maxRetries": 2, "idleTimeout": "30s" } }"#,
        )
        .unwrap();
        let limits = PoolLimits::from(Some(&cp));
        assert_eq!(limits.max_retries, Some(2));
        assert_eq!(
            limits.conn,
            ConnSettings {
                connect_timeout: Some(Duration::from_millis(250)),
                idle_timeout: Some(Duration::from_secs(30)),
                max_requests_per_connection: 1,
            }
        );
        // Retries and connection settings alone admit every request at once.
        let only = PoolLimits {
            max_retries: Some(1),
            conn: limits.conn,
            ..Default::default()
        };
        assert!(Pool::new(only).is_unlimited());
    }

    #[test]
    fn the_tcp_idle_timeout_bounds_opaque_connections_and_stands_in_for_http() {
        let cp: ConnectionPool =
            serde_json::from_str(r#"{ "tcp": { "idleTimeout": "5m" } }"#).unwrap();
        let limits = PoolLimits::from(Some(&cp));
        assert_eq!(limits.tcp_idle_timeout, Some(Duration::from_secs(300)));
        assert_eq!(limits.conn.idle_timeout, Some(Duration::from_secs(300)));
        // An HTTP idle timeout of its own wins for HTTP connections.
        let cp: ConnectionPool = serde_json::from_str(
            r#"{ "tcp": { "idleTimeout": "5m" }, "http": { "idleTimeout": "30s" } }"#,
        )
        .unwrap();
        let limits = PoolLimits::from(Some(&cp));
        assert_eq!(limits.tcp_idle_timeout, Some(Duration::from_secs(300)));
        assert_eq!(limits.conn.idle_timeout, Some(Duration::from_secs(30)));
    }

    #[test]
    fn retry_slots_are_bounded_by_max_retries() {
        let p = Pool::new(PoolLimits {
            max_retries: Some(2),
            ..Default::default()
        });
        let a = p.retry_slot().unwrap().unwrap();
        let _b = p.retry_slot().unwrap().unwrap();
        assert_eq!(p.retry_slot().unwrap_err(), 2);
        drop(a);
        assert!(p.retry_slot().unwrap().is_some());
        assert!(pool(None, None, None).retry_slot().unwrap().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn requests_past_http2_max_requests_overflow_at_once() {
        let p = pool(None, None, Some(2));
        let a = p.admit(false).await.unwrap();
        let _b = p.admit(false).await.unwrap();
        assert_eq!(p.admit(false).await.unwrap_err(), Overflow::Requests(2));
        drop(a);
        assert!(p.admit(false).await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn http1_requests_wait_for_a_connection_up_to_the_pending_limit() {
        let p = Arc::new(pool(Some(1), Some(1), None));
        let first = p.admit(true).await.unwrap();
        let waiter = {
            let p = p.clone();
            tokio::spawn(async move { p.admit(true).await.map(|_| ()) })
        };
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(p.admit(true).await.unwrap_err(), Overflow::Pending(1));
        // HTTP/2 requests need no connection of their own.
        assert!(p.admit(false).await.is_ok());
        drop(first);
        waiter.await.unwrap().unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_freed_connection_goes_to_the_waiter_which_leaves_the_queue_at_once() {
        let p = Arc::new(pool(Some(1), Some(1), None));
        let first = p.admit(true).await.unwrap();
        let waiter = {
            let p = p.clone();
            tokio::spawn(async move { p.admit(true).await.map(|_| ()) })
        };
        tokio::time::sleep(Duration::from_millis(1)).await;
        // The slot goes to the waiter; before it even runs, a new request
        // finds the queue empty and takes its place there (it does not
        // overflow: one request has the connection, one waits).
        drop(first);
        let mut third = std::pin::pin!(p.admit(true));
        let polled_once = tokio::time::timeout(Duration::ZERO, third.as_mut()).await;
        assert!(
            polled_once.is_err(),
            "the third request waits: {polled_once:?}"
        );
        waiter.await.unwrap().unwrap();
        // The waiter is done with its slot: the third request gets it.
        third.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_that_gives_up_leaves_its_place() {
        let p = Arc::new(pool(Some(1), Some(1), None));
        let first = p.admit(true).await.unwrap();
        let gave_up = {
            let p = p.clone();
            tokio::spawn(async move { p.admit(true).await.map(|_| ()) })
        };
        tokio::time::sleep(Duration::from_millis(1)).await;
        gave_up.abort();
        let _ = gave_up.await;
        // Its place is free for another; the slot it never took is not lost.
        let next = {
            let p = p.clone();
            tokio::spawn(async move { p.admit(true).await.map(|_| ()) })
        };
        tokio::time::sleep(Duration::from_millis(1)).await;
        drop(first);
        next.await.unwrap().unwrap();
        assert!(p.admit(true).await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_pending_limit_http1_requests_queue() {
        let p = Arc::new(pool(Some(1), None, None));
        let first = p.admit(true).await.unwrap();
        let waiters: Vec<_> = (0..5)
            .map(|_| {
                let p = p.clone();
                tokio::spawn(async move { p.admit(true).await.map(|_| ()) })
            })
            .collect();
        drop(first);
        for w in waiters {
            w.await.unwrap().unwrap();
        }
    }
}
