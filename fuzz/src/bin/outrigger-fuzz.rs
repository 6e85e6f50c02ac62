//! `outrigger-fuzz <target> [FILE...]`: runs one fuzz target on each FILE
//! (a crash AFL++ found, a corpus entry) and says which failed; with no
//! FILE, and built with the `afl` feature by `cargo afl build`, it is the
//! target's AFL++ persistent loop (`cargo afl fuzz -i … -o … -- <binary>
//! <target>`).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::process::ExitCode;

use anyhow::{bail, Context};
use outrigger_fuzz::{target, Target, TARGETS};

fn main() -> anyhow::Result<ExitCode> {
    let mut args = std::env::args().skip(1);
    let Some(name) = args.next() else {
        let names: Vec<&str> = TARGETS.iter().map(|t| t.name).collect();
        bail!(
            "usage: outrigger-fuzz <target> [FILE...]; targets: {}",
            names.join(", ")
        );
    };
    let t = target(&name).with_context(|| format!("no fuzz target {name:?}"))?;
    let files: Vec<String> = args.collect();
    if files.is_empty() {
        return fuzz(t);
    }
    let mut failed = 0;
    for file in &files {
        let data = std::fs::read(file).with_context(|| format!("reading {file}"))?;
        match catch_unwind(AssertUnwindSafe(|| (t.run)(&data))) {
            Ok(()) => println!("ok     {file}"),
            Err(_) => {
                println!("FAILED {file}");
                failed += 1;
            }
        }
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

#[cfg(feature = "afl")]
fn fuzz(t: &'static Target) -> anyhow::Result<ExitCode> {
    afl::fuzz!(|data: &[u8]| (t.run)(data));
    Ok(ExitCode::SUCCESS)
}

#[cfg(not(feature = "afl"))]
fn fuzz(t: &'static Target) -> anyhow::Result<ExitCode> {
    bail!(
        "{}: no FILE given, and this build has no AFL++ loop (cargo afl build --features afl)",
        t.name
    )
}
