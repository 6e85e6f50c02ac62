//! Captures the commit the binaries are built from, for
//! `outrigger_build_info{git_sha}` and `outrigger version`.
//!
//! `OUTRIGGER_GIT_SHA` wins when set (the Dockerfile's build argument: the
//! image build has no `.git`); otherwise `git rev-parse HEAD` in the
//! checkout; otherwise "unknown" (a source tarball, no git). The script
//! runs again only when that variable, `HEAD` or the branch it points to
//! changes: a commit rebuilds this crate and its dependents, an edit of a
//! file does not.

use std::path::PathBuf;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_string())
}

/// Makes the script run again when `path` (as git names it) changes. Only
/// files that exist: Cargo runs a script every time for a missing one.
fn watch(git_path: &str) {
    if let Some(p) = git(&["rev-parse", "--git-path", git_path]) {
        let p = PathBuf::from(p);
        if p.exists() {
            println!("cargo:rerun-if-changed={}", p.display());
        }
    }
}

fn main() {
    println!("cargo:rerun-if-env-changed=OUTRIGGER_GIT_SHA");
    println!("cargo:rerun-if-changed=build.rs");
    let given = std::env::var("OUTRIGGER_GIT_SHA")
        .ok()
        .filter(|s| !s.trim().is_empty());
    let sha = match given {
        Some(sha) => sha.trim().to_string(),
        None => {
            watch("HEAD");
            if let Some(head) = git(&["symbolic-ref", "-q", "HEAD"]) {
                watch(&head);
            }
            watch("packed-refs");
            git(&["rev-parse", "HEAD"]).unwrap_or_else(|| "unknown".into())
        }
    };
    println!("cargo:rustc-env=OUTRIGGER_BUILD_GIT_SHA={sha}");
}
