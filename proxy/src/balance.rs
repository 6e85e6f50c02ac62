//! Endpoint choice. Round robin for now; the traffic-policy work brings
//! power-of-two-choices over peak-EWMA latency.

use std::sync::atomic::{AtomicUsize, Ordering};

#[derive(Debug, Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl RoundRobin {
    pub fn pick<'a, T>(&self, items: &'a [T]) -> Option<&'a T> {
        if items.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        items.get(i % items.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cycles_through_every_item_in_order() {
        let rr = RoundRobin::default();
        let items = ["a", "b", "c"];
        let picked: Vec<_> = (0..7).map(|_| *rr.pick(&items).unwrap()).collect();
        assert_eq!(picked, ["a", "b", "c", "a", "b", "c", "a"]);
    }

    #[test]
    fn nothing_to_pick_from_is_none() {
        let rr = RoundRobin::default();
        assert_eq!(rr.pick::<u8>(&[]), None);
    }
}
