//! The weighted split: each request picks one of its route's destinations
//! (service and subset) in proportion to their weights, as a canary or
//! blue/green rollout sets them.

use crate::route::Backend;

/// Picks a backend in proportion to the weights, given a uniform `u` in
/// `[0, 1)`; zero-weight backends are never picked.
pub fn pick(backends: &[(u32, Backend)], u: f64) -> Option<&Backend> {
    let total: u64 = backends.iter().map(|(w, _)| u64::from(*w)).sum();
    if total == 0 {
        return None;
    }
    let mut x = (u * total as f64) as u64;
    for (w, b) in backends {
        let w = u64::from(*w);
        if x < w {
            return Some(b);
        }
        x -= w;
    }
    backends.iter().rev().find(|(w, _)| *w > 0).map(|(_, b)| b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::backend_named;

    fn names(backends: &[(u32, Backend)], us: &[f64]) -> Vec<String> {
        us.iter()
            .map(|u| pick(backends, *u).unwrap().service.label.to_string())
            .collect()
    }

    #[test]
    fn picks_follow_the_cumulative_weights() {
        let b = vec![(90, backend_named("stable")), (10, backend_named("canary"))];
        assert_eq!(
            names(&b, &[0.0, 0.5, 0.899, 0.9, 0.999]),
            [
                "stable.shop",
                "stable.shop",
                "stable.shop",
                "canary.shop",
                "canary.shop"
            ]
        );
    }

    #[test]
    fn zero_weights_are_never_picked() {
        let b = vec![
            (0, backend_named("blue")),
            (100, backend_named("green")),
            (0, backend_named("gray")),
        ];
        assert_eq!(names(&b, &[0.0, 0.3, 0.9999]), ["green.shop"; 3]);
        assert!(pick(&[(0, backend_named("x"))], 0.5).is_none());
    }
}
