//! Retries: which failures are worth another try ([`RetryPolicy`]), and
//! how long to wait before one ([`backoff`]).
//!
//! A non-idempotent request (POST, PATCH, ...) is sent again only when it
//! provably never reached the upstream (connect failure, `REFUSED_STREAM`),
//! unless its route sets `retryNonIdempotent`.

use std::net::SocketAddr;
use std::time::Duration;

use http::Method;
use outrigger_api::policy::{RetryOn, DEFAULT_RETRY_ATTEMPTS, DEFAULT_RETRY_ON};

use crate::chance::Chance;
use crate::error::ErrorKind;

pub const BACKOFF_BASE: Duration = Duration::from_millis(25);
pub const BACKOFF_CAP: Duration = Duration::from_millis(250);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first try.
    pub attempts: u32,
    pub per_try_timeout: Option<Duration>,
    on: Vec<RetryOn>,
    pub non_idempotent: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: DEFAULT_RETRY_ATTEMPTS,
            per_try_timeout: None,
            on: RetryOn::parse_list(DEFAULT_RETRY_ON).expect("the default parses"),
            non_idempotent: false,
        }
    }
}

impl From<&outrigger_api::policy::Retries> for RetryPolicy {
    fn from(r: &outrigger_api::policy::Retries) -> Self {
        Self {
            attempts: r.attempts,
            per_try_timeout: r.per_try_timeout.map(|t| t.get()),
            on: RetryOn::parse_list(r.retry_on.as_deref().unwrap_or(DEFAULT_RETRY_ON))
                .expect("validated retryOn"),
            non_idempotent: r.retry_non_idempotent,
        }
    }
}

/// How one try ended, as far as retrying is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TryOutcome {
    Response { status: u16, grpc: Option<u8> },
    Error(ErrorKind),
}

impl TryOutcome {
    /// The request never reached the upstream application.
    fn never_sent(self) -> bool {
        matches!(self, TryOutcome::Error(k) if k.never_sent())
    }
}

/// RFC 9110 §9.2.2: methods whose repetition has the effect of one request.
pub fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

impl RetryPolicy {
    /// Whether `outcome` is one of the failures this policy retries.
    pub fn retryable(&self, outcome: TryOutcome) -> bool {
        self.on.iter().any(|c| match (c, outcome) {
            (RetryOn::Http5xx, TryOutcome::Response { status, .. }) => status >= 500,
            (RetryOn::GatewayError, TryOutcome::Response { status, .. }) => {
                (502..=504).contains(&status)
            }
            (RetryOn::Retriable4xx, TryOutcome::Response { status, .. }) => status == 409,
            (RetryOn::Status(s), TryOutcome::Response { status, .. }) => *s == status,
            (RetryOn::Grpc(code), TryOutcome::Response { grpc: Some(g), .. }) => *code as u8 == g,
            (RetryOn::Grpc(_), TryOutcome::Response { grpc: None, .. }) => false,
            (_, TryOutcome::Response { .. }) => false,
            (c, TryOutcome::Error(kind)) => match kind {
                ErrorKind::ConnectFailure => matches!(
                    c,
                    RetryOn::ConnectFailure | RetryOn::Http5xx | RetryOn::GatewayError
                ),
                ErrorKind::RefusedStream => {
                    matches!(c, RetryOn::RefusedStream | RetryOn::Http5xx)
                }
                ErrorKind::Reset | ErrorKind::ProtocolError | ErrorKind::Timeout => {
                    matches!(c, RetryOn::Reset | RetryOn::Http5xx | RetryOn::GatewayError)
                }
                _ => false,
            },
        })
    }

    /// Whether `method` may be sent again after `outcome`.
    pub fn may_repeat(&self, method: &Method, outcome: TryOutcome) -> bool {
        self.non_idempotent || is_idempotent(method) || outcome.never_sent()
    }
}

/// Fully jittered exponential back-off before retry `n` (1-based): uniform
/// in `[0, min(cap, base × 2^(n-1))]`.
pub fn backoff(n: u32, chance: &Chance) -> Duration {
    crate::backoff::ceiling(BACKOFF_BASE, BACKOFF_CAP, n.saturating_sub(1)).mul_f64(chance.unit())
}

/// The endpoints earlier tries of this request went to (request extension,
/// read by the balancer).
#[derive(Clone, Debug, Default)]
pub struct TriedEndpoints(pub Vec<SocketAddr>);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::retry_policy as policy;

    fn resp(status: u16) -> TryOutcome {
        TryOutcome::Response { status, grpc: None }
    }

    fn grpc(code: u8) -> TryOutcome {
        TryOutcome::Response {
            status: 200,
            grpc: Some(code),
        }
    }

    fn err(kind: ErrorKind) -> TryOutcome {
        TryOutcome::Error(kind)
    }

    #[test]
    fn each_condition_retries_exactly_its_failures() {
        use ErrorKind::*;
        let table: &[(&str, &[TryOutcome], &[TryOutcome])] = &[
            (
                "5xx",
                &[
                    resp(500),
                    resp(503),
                    resp(599),
                    err(ConnectFailure),
                    err(Reset),
                    err(RefusedStream),
                    err(Timeout),
                ],
                &[
                    resp(200),
                    resp(409),
                    resp(499),
                    err(Overflow),
                    err(NoHealthyUpstream),
                ],
            ),
            (
                "gateway-error",
                &[
                    resp(502),
                    resp(503),
                    resp(504),
                    err(ConnectFailure),
                    err(Reset),
                    err(Timeout),
                ],
                &[resp(500), resp(501), err(RefusedStream)],
            ),
            (
                "reset",
                &[err(Reset), err(ProtocolError), err(Timeout)],
                &[err(ConnectFailure), resp(503)],
            ),
            (
                "connect-failure",
                &[err(ConnectFailure)],
                &[err(Reset), resp(503)],
            ),
            (
                "refused-stream",
                &[err(RefusedStream)],
                &[err(Reset), resp(503)],
            ),
            ("retriable-4xx", &[resp(409)], &[resp(404), resp(500)]),
            ("503,429", &[resp(503), resp(429)], &[resp(502), resp(500)]),
            ("cancelled", &[grpc(1)], &[grpc(0), grpc(14), resp(500)]),
            ("deadline-exceeded", &[grpc(4)], &[grpc(1)]),
            ("internal", &[grpc(13)], &[grpc(14)]),
            ("resource-exhausted", &[grpc(8)], &[grpc(13)]),
            ("unavailable", &[grpc(14)], &[grpc(13), resp(503)]),
        ];
        for (on, yes, no) in table {
            let p = policy(on, 1);
            for o in *yes {
                assert!(p.retryable(*o), "{on} should retry {o:?}");
            }
            for o in *no {
                assert!(!p.retryable(*o), "{on} should not retry {o:?}");
            }
        }
    }

    #[test]
    fn the_default_policy_is_the_documented_one() {
        let p = RetryPolicy::default();
        assert_eq!(p.attempts, 2);
        assert!(p.retryable(err(ErrorKind::ConnectFailure)));
        assert!(p.retryable(err(ErrorKind::RefusedStream)));
        assert!(p.retryable(grpc(14)) && p.retryable(grpc(1)));
        assert!(!p.retryable(resp(503)));
        assert!(!p.retryable(err(ErrorKind::Reset)));
    }

    #[test]
    fn non_idempotent_requests_repeat_only_when_never_sent_or_opted_in() {
        let p = policy("5xx", 2);
        assert!(p.may_repeat(&Method::GET, resp(503)));
        assert!(p.may_repeat(&Method::PUT, err(ErrorKind::Reset)));
        assert!(!p.may_repeat(&Method::POST, resp(503)));
        assert!(!p.may_repeat(&Method::PATCH, err(ErrorKind::Reset)));
        assert!(!p.may_repeat(&Method::POST, err(ErrorKind::Timeout)));
        assert!(p.may_repeat(&Method::POST, err(ErrorKind::ConnectFailure)));
        assert!(p.may_repeat(&Method::POST, err(ErrorKind::RefusedStream)));
        let opted = RetryPolicy {
            non_idempotent: true,
            ..p
        };
        assert!(opted.may_repeat(&Method::POST, resp(503)));
    }

    #[test]
    fn backoff_is_fully_jittered_under_a_doubling_ceiling() {
        let c = Chance::seeded(5);
        for (n, ceiling) in [(1, 25), (2, 50), (3, 100), (4, 200), (5, 250), (30, 250)] {
            let samples: Vec<Duration> = (0..2000).map(|_| backoff(n, &c)).collect();
            let max = samples.iter().max().unwrap();
            let min = samples.iter().min().unwrap();
            let ceiling = Duration::from_millis(ceiling);
            assert!(*max <= ceiling, "retry {n}: {max:?} > {ceiling:?}");
            assert!(
                *max > ceiling.mul_f64(0.95),
                "retry {n}: jitter reaches the ceiling"
            );
            assert!(
                *min < ceiling.mul_f64(0.05),
                "retry {n}: jitter reaches zero"
            );
        }
    }
}
