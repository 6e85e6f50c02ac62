//! Randomness for policy decisions (fault percentages, back-off jitter,
//! balancer choices): the thread's generator in production, a seeded one in
//! tests so that every decision is reproducible.

use std::sync::{Arc, Mutex};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

#[derive(Clone, Debug, Default)]
pub enum Chance {
    /// `rand::rng()`: per-thread, no locking.
    #[default]
    Thread,
    /// A shared generator with a fixed seed.
    Seeded(Arc<Mutex<SmallRng>>),
}

impl Chance {
    pub fn seeded(seed: u64) -> Self {
        Chance::Seeded(Arc::new(Mutex::new(SmallRng::seed_from_u64(seed))))
    }

    fn with<T>(&self, f: impl FnOnce(&mut dyn rand::RngCore) -> T) -> T {
        match self {
            Chance::Thread => f(&mut rand::rng()),
            Chance::Seeded(rng) => f(&mut *rng.lock().expect("rng lock")),
        }
    }

    /// A uniform value in `[0, 1)`.
    pub fn unit(&self) -> f64 {
        self.with(|r| r.random::<f64>())
    }

    /// A uniform index in `0..n` (`n > 0`).
    pub fn below(&self, n: usize) -> usize {
        self.with(|r| r.random_range(0..n))
    }

    /// Two distinct uniform indices in `0..n` (`n >= 2`).
    pub fn two_below(&self, n: usize) -> (usize, usize) {
        self.with(|r| {
            let a = r.random_range(0..n);
            let b = r.random_range(0..n - 1);
            (a, if b >= a { b + 1 } else { b })
        })
    }

    /// 64 uniform random bits (span ids).
    pub fn bits64(&self) -> u64 {
        self.with(|r| r.next_u64())
    }

    /// 128 uniform random bits (trace and span ids, request ids).
    pub fn bits(&self) -> u128 {
        self.with(|r| r.random::<u128>())
    }

    /// True with probability `percent` / 100.
    pub fn percent(&self, percent: f64) -> bool {
        percent >= 100.0 || (percent > 0.0 && self.unit() * 100.0 < percent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_chance_repeats_itself() {
        let a = Chance::seeded(7);
        let b = Chance::seeded(7);
        let xs: Vec<usize> = (0..20).map(|_| a.below(1000)).collect();
        let ys: Vec<usize> = (0..20).map(|_| b.below(1000)).collect();
        assert_eq!(xs, ys);
    }

    #[test]
    fn two_below_is_always_distinct_and_in_range() {
        let c = Chance::seeded(1);
        let mut seen = [0u32; 3];
        for _ in 0..3000 {
            let (x, y) = c.two_below(3);
            assert!(x != y && x < 3 && y < 3);
            seen[x] += 1;
            seen[y] += 1;
        }
        // Each index is in 2/3 of the pairs.
        for s in seen {
            assert!((1800..2200).contains(&s), "{seen:?}");
        }
    }

    #[test]
    fn percent_edges_are_exact() {
        let c = Chance::seeded(3);
        assert!((0..1000).all(|_| c.percent(100.0)));
        assert!((0..1000).all(|_| !c.percent(0.0)));
        let hits = (0..10_000).filter(|_| c.percent(10.0)).count();
        assert!((900..1100).contains(&hits), "{hits}");
    }
}
