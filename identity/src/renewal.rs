//! When a workload certificate is renewed, and when one has gone
//! unrenewed long enough to be an operator's problem: one definition for
//! the proxy (which renews), `outrigger check` (which warns) and the
//! `OutriggerCertificateExpiringSoon` alert (which pages; its PromQL is the
//! same inequality over the proxy's two gauges, and a test keeps them so).

use std::time::{Duration, SystemTime};

/// Share of a certificate's lifetime after which it is renewed.
pub const RENEW_AT: f64 = 0.7;

/// A certificate this close to its end is always a problem (the default
/// 24 h certificate is renewed with 7.2 h left).
pub const EXPIRING_WITHIN: Duration = Duration::from_secs(6 * 3600);

/// Share of the renewal window (renewal time to expiry) that may be left
/// before an unrenewed certificate is a problem: after 15 % of the window
/// has passed without a new certificate, the retries (every few seconds)
/// have failed for a long time.
pub const WINDOW_LEFT: f64 = 0.85;

/// When a certificate valid from `now` until `not_after` is renewed.
pub fn renew_at(now: SystemTime, not_after: SystemTime) -> SystemTime {
    let life = not_after.duration_since(now).unwrap_or_default();
    now + life.mul_f64(RENEW_AT)
}

/// Whether a certificate expiring at `not_after`, due for renewal at
/// `renew_at`, is expiring soon at `now`: less than [`EXPIRING_WITHIN`]
/// left, or, for a short-lived certificate whose renewal window is shorter
/// than that, less than [`WINDOW_LEFT`] of its window left. The alert's
/// PromQL is `expiry - time() < clamp_max((expiry - renew_at) * 0.85, 6 * 3600)`.
pub fn expiring_soon(now: SystemTime, renew_at: SystemTime, not_after: SystemTime) -> bool {
    let window = not_after.duration_since(renew_at).unwrap_or_default();
    let threshold = window.mul_f64(WINDOW_LEFT).min(EXPIRING_WITHIN);
    match not_after.duration_since(now) {
        Ok(left) => left < threshold,
        Err(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: Duration = Duration::from_secs(3600);

    #[test]
    fn a_day_long_certificate_is_renewed_with_seven_hours_left() {
        let now = SystemTime::UNIX_EPOCH + 1000 * H;
        assert_eq!(renew_at(now, now + 24 * H), now + H.mul_f64(16.8));
    }

    #[test]
    fn a_day_long_certificate_expires_soon_within_six_hours() {
        let issued = SystemTime::UNIX_EPOCH + 1000 * H;
        let end = issued + 24 * H;
        let due = renew_at(issued, end);
        // Before renewal and just after it is due: fine.
        assert!(!expiring_soon(issued, due, end));
        assert!(!expiring_soon(due + H, due, end));
        assert!(!expiring_soon(
            end - 6 * H - Duration::from_secs(1),
            due,
            end
        ));
        assert!(expiring_soon(
            end - 6 * H + Duration::from_secs(1),
            due,
            end
        ));
        assert!(expiring_soon(end + H, due, end));
    }

    #[test]
    fn a_short_lived_certificate_is_judged_by_its_renewal_window() {
        // One hour: renewed with 18 minutes left, a problem with 15.3 left.
        let issued = SystemTime::UNIX_EPOCH + 1000 * H;
        let end = issued + H;
        let due = renew_at(issued, end);
        assert_eq!(
            end.duration_since(due).unwrap(),
            Duration::from_secs(18 * 60)
        );
        // A fixed 6 h threshold would call it expiring from the start.
        assert!(!expiring_soon(issued, due, end));
        assert!(!expiring_soon(due, due, end));
        assert!(!expiring_soon(end - Duration::from_secs(16 * 60), due, end));
        assert!(expiring_soon(end - Duration::from_secs(15 * 60), due, end));
    }
}
