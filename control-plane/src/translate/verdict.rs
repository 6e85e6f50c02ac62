//! Verdicts: whether the control plane applies a mesh resource, and if
//! not, why. A refusal carries a CamelCase reason (for the resource's
//! `Accepted` condition) and a message that names the field at fault.

/// What a refused resource's message says when its previous version stays.
pub const PREVIOUS_STAYS: &str = "the last accepted version stays in force";

/// Whether the control plane applies a mesh resource, and if not, why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Accepted,
    Refused {
        /// CamelCase, for the condition's `reason`.
        reason: &'static str,
        /// Names the field (`spec.http[0].route[1].destination.subset: ...`).
        message: String,
    },
}

impl Verdict {
    pub(super) fn refused(reason: &'static str, message: impl Into<String>) -> Self {
        Verdict::Refused {
            reason,
            message: message.into(),
        }
    }

    pub fn is_accepted(&self) -> bool {
        matches!(self, Verdict::Accepted)
    }

    /// The same refusal, saying that the last accepted version stays.
    pub(super) fn keeping_previous(self) -> Self {
        match self {
            Verdict::Refused { reason, message } => Verdict::Refused {
                reason,
                message: format!("{message} ({PREVIOUS_STAYS})"),
            },
            accepted => accepted,
        }
    }
}
