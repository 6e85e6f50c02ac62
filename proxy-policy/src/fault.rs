//! Fault injection (Istio `fault`): delay a share of requests, abort a share
//! with a chosen HTTP or gRPC status, for chaos testing a service through
//! the mesh. Drawn once per request by [`FaultPolicy::decide`].

use std::time::Duration;

use crate::chance::Chance;

#[derive(Clone, Debug, PartialEq)]
pub struct FaultPolicy {
    pub delay: Option<(Duration, f64)>,
    pub abort: Option<(Abort, f64)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Abort {
    Http(u16),
    /// A trailers-only gRPC response with this code.
    Grpc(u8),
}

impl From<&outrigger_api::policy::Fault> for FaultPolicy {
    fn from(f: &outrigger_api::policy::Fault) -> Self {
        Self {
            delay: f.delay.as_ref().map(|d| (d.fixed_delay.get(), d.share())),
            abort: f.abort.as_ref().map(|a| {
                let abort = match (&a.http_status, &a.grpc_status) {
                    (Some(code), _) => Abort::Http(*code),
                    (None, Some(name)) => Abort::Grpc(
                        outrigger_api::policy::GRPC_CODE_NAMES
                            .iter()
                            .position(|n| n == name)
                            .expect("validated gRPC code name") as u8,
                    ),
                    (None, None) => unreachable!("validated: one of httpStatus, grpcStatus"),
                };
                (abort, a.share())
            }),
        }
    }
}

/// What to do to one request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Decision {
    pub delay: Option<Duration>,
    pub abort: Option<Abort>,
}

impl FaultPolicy {
    /// Draws the faults for one request (delay and abort independently).
    pub fn decide(&self, chance: &Chance) -> Decision {
        Decision {
            delay: self
                .delay
                .filter(|(_, pct)| chance.percent(*pct))
                .map(|(d, _)| d),
            abort: self
                .abort
                .filter(|(_, pct)| chance.percent(*pct))
                .map(|(a, _)| a),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::fault_policy as policy;

    #[test]
    fn percentages_are_drawn_independently() {
        let c = Chance::seeded(11);
        let p = policy(Some((10, 20.0)), Some((Abort::Http(503), 50.0)));
        let (mut delays, mut aborts) = (0, 0);
        for _ in 0..10_000 {
            let d = p.decide(&c);
            delays += usize::from(d.delay.is_some());
            aborts += usize::from(d.abort.is_some());
        }
        assert!((1_900..2_100).contains(&delays), "{delays}");
        assert!((4_850..5_150).contains(&aborts), "{aborts}");
    }

    fn from_json(json: &str) -> FaultPolicy {
        FaultPolicy::from(&serde_json::from_str::<outrigger_api::policy::Fault>(json).unwrap())
    }

    #[test]
    fn shares_follow_istio_percentage_then_percent_then_none() {
        // Istio's request-timeouts task writes the deprecated integer form.
        let p = from_json(r#"{ "delay": { "percent": 100, "fixedDelay": "2s" } }"#);
        assert_eq!(p.delay, Some((Duration::from_secs(2), 100.0)));
        let p = from_json(
            r#"{ "delay": { "percent": 100, "percentage": { "value": 10 }, "fixedDelay": "2s" } }"#,
        );
        assert_eq!(p.delay, Some((Duration::from_secs(2), 10.0)));
        // Without a share Istio injects nothing, and neither does the proxy.
        let p = from_json(r#"{ "delay": { "fixedDelay": "2s" }, "abort": { "httpStatus": 503 } }"#);
        assert_eq!(
            (p.delay, p.abort),
            (
                Some((Duration::from_secs(2), 0.0)),
                Some((Abort::Http(503), 0.0))
            )
        );
        let c = Chance::seeded(3);
        assert!((0..1000).all(|_| p.decide(&c) == Decision::default()));
    }
}
