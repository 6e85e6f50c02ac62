//! Who is at either end of a hop, as the metrics and the access log name
//! them: names from the snapshot, shared cheaply.

use std::sync::Arc;

/// A shared label value, cheap to clone (names from the snapshot).
pub type Name = Arc<str>;

static UNKNOWN: std::sync::LazyLock<Name> = std::sync::LazyLock::new(|| Arc::from("unknown"));

/// The label value for what the proxy cannot know (shared, not allocated).
pub fn unknown() -> Name {
    UNKNOWN.clone()
}

/// One end of a hop, as the metrics name it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workload {
    pub workload: Name,
    pub namespace: Name,
    pub principal: Name,
}

impl Workload {
    /// A peer the proxy cannot identify (yet: without mTLS, every inbound client).
    pub fn unknown() -> Self {
        Self {
            workload: unknown(),
            namespace: unknown(),
            principal: unknown(),
        }
    }
}
