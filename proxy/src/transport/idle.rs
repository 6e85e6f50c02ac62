//! Idle timeouts for connections that carry bytes the proxy does not parse
//! (opaque TCP): an IO wrapper that notes when a byte last passed either
//! way, and a watch that completes once none has for the timeout.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::metered::{Observed, Observer};

/// When a byte last passed.
#[derive(Debug)]
pub struct Activity {
    base: Instant,
    /// Nanoseconds after `base`.
    last: AtomicU64,
}

impl Activity {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            base: Instant::now(),
            last: AtomicU64::new(0),
        })
    }

    fn touch(&self) {
        let nanos = u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last.store(nanos, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.base + Duration::from_nanos(self.last.load(Ordering::Relaxed))
    }

    /// How long since a byte last passed.
    pub fn quiet_for(&self) -> Duration {
        Instant::now().saturating_duration_since(self.last())
    }

    /// Completes once no byte has passed for `idle`.
    pub async fn idle_for(&self, idle: Duration) {
        loop {
            let deadline = self.last() + idle;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// An IO that touches its [`Activity`] whenever bytes pass.
pub type Watched<I> = Observed<I, Arc<Activity>>;

impl Observer for Arc<Activity> {
    fn read(&self, _: usize) {
        self.touch();
    }

    fn written(&self, _: usize) {
        self.touch();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn traffic_either_way_puts_the_deadline_off() {
        let (mut peer, io) = tokio::io::duplex(64);
        let activity = Activity::new();
        let mut io = Watched::new(io, activity.clone());
        let idle = Duration::from_secs(60);
        let start = Instant::now();

        tokio::time::sleep(Duration::from_secs(50)).await;
        peer.write_all(b"x").await.unwrap();
        let mut b = [0u8; 1];
        io.read_exact(&mut b).await.unwrap();
        tokio::time::sleep(Duration::from_secs(50)).await;
        io.write_all(b"y").await.unwrap();

        activity.idle_for(idle).await;
        // The last byte passed at 100 s: idle from then, for 60 s.
        assert_eq!(start.elapsed(), Duration::from_secs(160));
    }
}
