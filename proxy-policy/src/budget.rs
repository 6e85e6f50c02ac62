//! The retry budget: retries may add at most `ratio` of the recent requests,
//! plus `min_per_sec` per second, over a sliding window (Finagle's and
//! Linkerd's budget). It stops a failing upstream from turning every request
//! into `1 + attempts` requests.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// 20 % of requests, at least 3 per second, over 10 s.
pub const RATIO: f64 = 0.2;
pub const MIN_PER_SEC: u32 = 3;
const WINDOW_SECS: usize = 10;

#[derive(Debug)]
pub struct RetryBudget {
    ratio: f64,
    min_per_sec: u32,
    state: Mutex<Window>,
}

/// Counts per one-second slot; slot `i` covers second `epoch + i (mod N)`.
#[derive(Debug)]
struct Window {
    start: Instant,
    /// Seconds since `start` of the newest slot.
    head: u64,
    requests: [u32; WINDOW_SECS],
    retries: [u32; WINDOW_SECS],
}

impl Default for RetryBudget {
    fn default() -> Self {
        Self::new(RATIO, MIN_PER_SEC)
    }
}

impl RetryBudget {
    pub fn new(ratio: f64, min_per_sec: u32) -> Self {
        Self {
            ratio,
            min_per_sec,
            state: Mutex::new(Window {
                start: Instant::now(),
                head: 0,
                requests: [0; WINDOW_SECS],
                retries: [0; WINDOW_SECS],
            }),
        }
    }

    /// Counts one original request.
    pub fn deposit(&self) {
        let mut w = self.state.lock().expect("budget lock");
        let slot = w.advance(Instant::now());
        w.requests[slot] = w.requests[slot].saturating_add(1);
    }

    /// Takes one retry from the budget; false when it is spent.
    pub fn withdraw(&self) -> bool {
        let mut w = self.state.lock().expect("budget lock");
        let slot = w.advance(Instant::now());
        let requests: u64 = w.requests.iter().map(|n| u64::from(*n)).sum();
        let retries: u64 = w.retries.iter().map(|n| u64::from(*n)).sum();
        let allowed = (requests as f64 * self.ratio).floor() as u64
            + u64::from(self.min_per_sec) * WINDOW_SECS as u64;
        if retries < allowed {
            w.retries[slot] += 1;
            true
        } else {
            false
        }
    }
}

impl Window {
    /// Moves the window to `now`, clearing the seconds it skipped; returns
    /// the current slot.
    fn advance(&mut self, now: Instant) -> usize {
        let sec = now.saturating_duration_since(self.start).as_secs();
        let gap = sec.saturating_sub(self.head).min(WINDOW_SECS as u64);
        for i in 1..=gap {
            let slot = ((self.head + i) % WINDOW_SECS as u64) as usize;
            self.requests[slot] = 0;
            self.retries[slot] = 0;
        }
        self.head = self.head.max(sec);
        (self.head % WINDOW_SECS as u64) as usize
    }
}

/// How long the window remembers (for documentation and tests).
pub const WINDOW: Duration = Duration::from_secs(WINDOW_SECS as u64);

#[cfg(test)]
mod tests {
    use super::*;

    fn withdraw_all(b: &RetryBudget) -> u32 {
        let mut n = 0;
        while b.withdraw() {
            n += 1;
        }
        n
    }

    #[tokio::test(start_paused = true)]
    async fn with_no_traffic_only_the_minimum_is_allowed() {
        let b = RetryBudget::default();
        assert_eq!(withdraw_all(&b), 30);
    }

    #[tokio::test(start_paused = true)]
    async fn twenty_percent_of_requests_on_top_of_the_minimum() {
        let b = RetryBudget::default();
        for _ in 0..1000 {
            b.deposit();
        }
        assert_eq!(withdraw_all(&b), 200 + 30);
    }

    #[tokio::test(start_paused = true)]
    async fn old_traffic_and_retries_leave_the_window() {
        let b = RetryBudget::default();
        for _ in 0..1000 {
            b.deposit();
        }
        assert_eq!(withdraw_all(&b), 230);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(!b.withdraw(), "retries made 5 s ago still count");
        tokio::time::advance(WINDOW).await;
        // Both the requests and the retries are forgotten.
        assert_eq!(withdraw_all(&b), 30);
    }

    #[tokio::test(start_paused = true)]
    async fn the_window_slides_one_second_at_a_time() {
        let b = RetryBudget::new(0.5, 0);
        for _ in 0..10 {
            b.deposit();
        }
        tokio::time::advance(Duration::from_secs(9)).await;
        for _ in 0..10 {
            b.deposit();
        }
        assert_eq!(withdraw_all(&b), 10);
        tokio::time::advance(Duration::from_secs(1)).await;
        // The first ten requests left; the retries (made at second 9) did not.
        assert_eq!(withdraw_all(&b), 0);
    }
}
