//! The pause before trying again after a failure: exponential back-off
//! with full jitter (uniformly random under a ceiling that doubles with
//! each failure in a row, up to a cap), as AWS's "Exponential Backoff and
//! Jitter" describes it. Pure: the caller draws the randomness (a seeded
//! generator in tests) and does the sleeping.

use std::time::Duration;

/// The ceiling of the pause after `failures` failures in a row (0: the
/// first try failed): `min(cap, base × 2^failures)`.
pub fn ceiling(base: Duration, cap: Duration, failures: u32) -> Duration {
    base.saturating_mul(1u32.checked_shl(failures).unwrap_or(u32::MAX))
        .min(cap)
}

/// Reconnect pauses: uniformly random in `[0, min(cap, base × 2^n))` after
/// the n-th failure in a row (full jitter); back to the start on
/// [`Backoff::reset`], once something has worked.
#[derive(Clone, Debug)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    failures: u32,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self {
            base,
            cap,
            failures: 0,
        }
    }

    /// The pause before the next attempt, counting one more failure.
    /// `unit`: a uniform random value in `[0, 1)`.
    pub fn next_pause(&mut self, unit: f64) -> Duration {
        let ceiling = ceiling(self.base, self.cap, self.failures);
        self.failures = self.failures.saturating_add(1);
        ceiling.mul_f64(unit)
    }

    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};

    #[test]
    fn backoff_is_fully_jittered_under_a_growing_ceiling() {
        let mut rng = SmallRng::seed_from_u64(7);
        let mut b = Backoff::new(Duration::from_millis(250), Duration::from_secs(10));
        let ceilings = [250, 500, 1000, 2000, 4000, 8000, 10_000, 10_000];
        for c in ceilings {
            let p = b.next_pause(rng.random());
            assert!(p < Duration::from_millis(c), "{p:?} not under {c} ms");
        }
        b.reset();
        for _ in 0..20 {
            let mut fresh = b.clone();
            assert!(fresh.next_pause(rng.random()) < Duration::from_millis(250));
        }
    }

    #[test]
    fn the_ceiling_doubles_up_to_the_cap_and_never_overflows() {
        let (base, cap) = (Duration::from_millis(25), Duration::from_millis(250));
        let ceilings: Vec<u64> = [0, 1, 2, 3, 4, 40, u32::MAX]
            .map(|n| ceiling(base, cap, n).as_millis() as u64)
            .into();
        assert_eq!(ceilings, [25, 50, 100, 200, 250, 250, 250]);
    }
}
