//! Local rate limiting: a token bucket per route (outbound) or per inbound
//! app port. A request takes one token; without one it is refused, and the
//! bucket says how long until the next fill (the `Retry-After` of the
//! proxy's 429).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// Envoy's token bucket: starts full, gains `per_fill` tokens (up to `max`)
/// at every whole `interval`.
#[derive(Debug)]
pub struct TokenBucket {
    max: u32,
    per_fill: u32,
    interval: Duration,
    state: Mutex<(u32, Instant)>,
}

impl From<&outrigger_api::policy::TokenBucket> for TokenBucket {
    fn from(b: &outrigger_api::policy::TokenBucket) -> Self {
        TokenBucket::new(b.max_tokens, b.tokens_per_fill, b.fill_interval.get())
    }
}

impl TokenBucket {
    pub fn new(max: u32, per_fill: u32, interval: Duration) -> Self {
        Self {
            max,
            per_fill,
            interval,
            state: Mutex::new((max, Instant::now())),
        }
    }

    /// Whether `other` fills as this one does (same size, fill and
    /// interval): a configuration that did not change a limit keeps its
    /// bucket, tokens and all.
    pub fn same_fill(&self, other: &TokenBucket) -> bool {
        (self.max, self.per_fill, self.interval) == (other.max, other.per_fill, other.interval)
    }

    /// Takes a token, or says how long until the next fill.
    pub fn take(&self) -> Result<(), Duration> {
        let now = Instant::now();
        let mut g = self.state.lock().expect("bucket lock");
        let (tokens, last_fill) = &mut *g;
        let elapsed = now.saturating_duration_since(*last_fill);
        let fills = (elapsed.as_nanos() / self.interval.as_nanos().max(1)) as u64;
        if fills > 0 {
            let added = fills.saturating_mul(u64::from(self.per_fill));
            *tokens = (u64::from(*tokens) + added).min(u64::from(self.max)) as u32;
            *last_fill += self.interval * fills.min(u32::MAX as u64) as u32;
        }
        if *tokens > 0 {
            *tokens -= 1;
            Ok(())
        } else {
            Err((*last_fill + self.interval).saturating_duration_since(now))
        }
    }
}

/// An inbound listener's buckets: one per app port, and one for the others.
#[derive(Debug)]
pub struct PortLimits {
    by_port: Vec<(Option<u16>, Arc<TokenBucket>)>,
}

impl PortLimits {
    pub fn new(by_port: Vec<(Option<u16>, Arc<TokenBucket>)>) -> Self {
        Self { by_port }
    }

    /// The bucket given for exactly `port` (`None`: the listener-wide one).
    pub fn exactly(&self, port: Option<u16>) -> Option<&Arc<TokenBucket>> {
        self.by_port
            .iter()
            .find(|(p, _)| *p == port)
            .map(|(_, b)| b)
    }

    /// The bucket for `port`: its own, else the listener-wide one.
    pub fn for_port(&self, port: u16) -> Option<&Arc<TokenBucket>> {
        self.by_port
            .iter()
            .find(|(p, _)| *p == Some(port))
            .or_else(|| self.by_port.iter().find(|(p, _)| p.is_none()))
            .map(|(_, b)| b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_full_bucket_allows_a_burst_then_refills_per_interval() {
        let b = TokenBucket::new(3, 1, Duration::from_secs(1));
        assert!(b.take().is_ok() && b.take().is_ok() && b.take().is_ok());
        assert_eq!(b.take(), Err(Duration::from_secs(1)));
        tokio::time::advance(Duration::from_millis(400)).await;
        assert_eq!(b.take(), Err(Duration::from_millis(600)));
        tokio::time::advance(Duration::from_millis(600)).await;
        assert!(b.take().is_ok());
        assert!(b.take().is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn refills_never_exceed_the_maximum() {
        let b = TokenBucket::new(2, 5, Duration::from_millis(100));
        assert!(b.take().is_ok());
        tokio::time::advance(Duration::from_secs(10)).await;
        let ok = (0..10).filter(|_| b.take().is_ok()).count();
        assert_eq!(ok, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn partial_intervals_carry_over() {
        let b = TokenBucket::new(1, 1, Duration::from_millis(100));
        assert!(b.take().is_ok());
        tokio::time::advance(Duration::from_millis(150)).await;
        assert!(b.take().is_ok());
        // The next fill is at 200 ms from the start, not 250.
        assert_eq!(b.take(), Err(Duration::from_millis(50)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_port_uses_its_own_bucket_else_the_listener_wide_one() {
        let own = Arc::new(TokenBucket::new(1, 1, Duration::from_secs(1)));
        let wide = Arc::new(TokenBucket::new(5, 1, Duration::from_secs(1)));
        let l = PortLimits::new(vec![(None, wide.clone()), (Some(8080), own.clone())]);
        assert!(Arc::ptr_eq(l.for_port(8080).unwrap(), &own));
        assert!(Arc::ptr_eq(l.for_port(9090).unwrap(), &wide));
        let only_own = PortLimits::new(vec![(Some(8080), own)]);
        assert!(only_own.for_port(9090).is_none());
    }
}
