//! Captures the commit the binaries are built from, for
//! `outrigger_build_info{git_sha}` and `outrigger version`: the
//! `OUTRIGGER_GIT_SHA` environment variable of the build (the Dockerfile's
//! build argument, and what `.ci/run` exports), else "unknown".
//!
//! Not `git rev-parse HEAD` by itself: the script would then run again at
//! every commit and rebuild this crate and everything above it (every
//! binary and test), minutes each time on a small machine. A release or CI
//! build names its commit; a development build says it does not know.

fn main() {
    println!("cargo:rerun-if-env-changed=OUTRIGGER_GIT_SHA");
    println!("cargo:rerun-if-changed=build.rs");
    let sha = std::env::var("OUTRIGGER_GIT_SHA")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=OUTRIGGER_BUILD_GIT_SHA={sha}");
}
