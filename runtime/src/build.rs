//! What this build is: the version every Outrigger crate shares and the
//! commit it was built from (captured by `runtime/build.rs`: the
//! `OUTRIGGER_GIT_SHA` variable, else `git rev-parse HEAD`, else
//! "unknown"). Read by `outrigger_build_info` in all three binaries and by
//! `outrigger version` for the client.

/// The workspace version (every crate carries the same).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The full commit hash, or [`UNKNOWN_SHA`] when the build had none.
pub const GIT_SHA: &str = env!("OUTRIGGER_BUILD_GIT_SHA");

/// The `git_sha` of a build made outside a git checkout.
pub const UNKNOWN_SHA: &str = "unknown";

/// The commit, when the build knew it.
pub fn git_sha() -> Option<&'static str> {
    (GIT_SHA != UNKNOWN_SHA).then_some(GIT_SHA)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_commit_is_a_hash_or_unknown() {
        assert!(!VERSION.is_empty());
        match git_sha() {
            Some(sha) => assert!(
                sha.len() >= 7 && sha.chars().all(|c| c.is_ascii_hexdigit()),
                "{sha}"
            ),
            None => assert_eq!(GIT_SHA, UNKNOWN_SHA),
        }
    }
}
