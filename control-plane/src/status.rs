//! The `Accepted` condition a verdict becomes, and whether it needs writing.
//! Pure: the Kubernetes source writes what [`needs_write`] says, so a status
//! write (which the watch sees as a change) never loops.

use crate::crd::{Condition, Status};
use crate::translate::Verdict;

/// The condition type every mesh resource carries.
pub const ACCEPTED: &str = "Accepted";

/// The `Accepted` condition for `verdict` on `generation`, keeping the
/// transition time of `previous` when the status did not flip.
pub fn accepted_condition(
    verdict: &Verdict,
    generation: Option<i64>,
    previous: Option<&Status>,
    now: &str,
) -> Condition {
    let (status, reason, message) = match verdict {
        Verdict::Accepted => ("True", "Accepted", String::new()),
        Verdict::Refused { reason, message } => ("False", *reason, message.clone()),
    };
    let before = previous.and_then(|s| s.conditions.iter().find(|c| c.type_ == ACCEPTED));
    let last_transition_time = match before {
        Some(c) if c.status == status => c.last_transition_time.clone(),
        _ => Some(now.to_string()),
    };
    Condition {
        type_: ACCEPTED.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time,
    }
}

/// The status to write, or None when the object already says the same
/// (ignoring the transition time).
pub fn needs_write(
    verdict: &Verdict,
    generation: Option<i64>,
    previous: Option<&Status>,
    now: &str,
) -> Option<Status> {
    let want = accepted_condition(verdict, generation, previous, now);
    let same = previous
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == ACCEPTED))
        .is_some_and(|c| {
            c.status == want.status
                && c.reason == want.reason
                && c.message == want.message
                && c.observed_generation == want.observed_generation
        });
    if same {
        return None;
    }
    let mut status = previous.cloned().unwrap_or_default();
    status.conditions.retain(|c| c.type_ != ACCEPTED);
    status.conditions.push(want);
    Some(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: &str = "2026-11-22T10:00:00Z";
    const T1: &str = "2026-11-22T11:00:00Z";

    fn refused(msg: &str) -> Verdict {
        Verdict::Refused {
            reason: "UnknownSubset",
            message: msg.into(),
        }
    }

    #[test]
    fn a_first_verdict_is_written_with_its_generation() {
        let s = needs_write(&Verdict::Accepted, Some(3), None, T0).unwrap();
        let c = &s.conditions[0];
        assert_eq!(
            (c.type_.as_str(), c.status.as_str(), c.reason.as_str()),
            ("Accepted", "True", "Accepted")
        );
        assert_eq!(c.observed_generation, Some(3));
        assert_eq!(c.last_transition_time.as_deref(), Some(T0));
    }

    #[test]
    fn the_same_verdict_is_not_written_again() {
        let s = needs_write(&refused("spec.x: bad"), Some(1), None, T0).unwrap();
        assert_eq!(
            needs_write(&refused("spec.x: bad"), Some(1), Some(&s), T1),
            None
        );
    }

    #[test]
    fn a_new_message_or_generation_is_written_keeping_the_transition_time() {
        let s = needs_write(&refused("spec.x: bad"), Some(1), None, T0).unwrap();
        let s2 = needs_write(&refused("spec.y: worse"), Some(2), Some(&s), T1).unwrap();
        let c = &s2.conditions[0];
        assert_eq!(c.message, "spec.y: worse");
        assert_eq!(c.observed_generation, Some(2));
        assert_eq!(
            c.last_transition_time.as_deref(),
            Some(T0),
            "still False: no transition"
        );
        let s3 = needs_write(&Verdict::Accepted, Some(3), Some(&s2), T1).unwrap();
        assert_eq!(s3.conditions.len(), 1);
        assert_eq!(
            s3.conditions[0].last_transition_time.as_deref(),
            Some(T1),
            "flipped to True"
        );
    }

    #[test]
    fn other_conditions_are_kept() {
        let mut s = needs_write(&Verdict::Accepted, Some(1), None, T0).unwrap();
        s.conditions.push(Condition {
            type_: "Reconciled".into(),
            status: "True".into(),
            reason: "Other".into(),
            ..Condition::default()
        });
        let s2 = needs_write(&refused("m"), Some(1), Some(&s), T1).unwrap();
        assert!(s2.conditions.iter().any(|c| c.type_ == "Reconciled"));
        assert_eq!(
            s2.conditions.iter().filter(|c| c.type_ == ACCEPTED).count(),
            1
        );
    }
}
