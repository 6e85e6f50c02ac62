//! `outrigger demo`'s refusals before it starts anything, with the real
//! binary: a base port with no room for the layout, missing binaries, a
//! port already taken. (The whole demo, `--smoke`, is run by
//! tests/tests/cli_demo.rs, with the proxy and control-plane binaries.)

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_outrigger");

fn demo(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN).arg("demo").args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn help_shows_the_examples_and_how_to_build_the_binaries() {
    let (code, out, _) = demo(&["--help"]);
    assert_eq!(code, 0);
    assert!(out.contains("outrigger demo --smoke"), "{out}");
    assert!(
        out.contains("cargo build -p outrigger-cli -p outrigger-proxy"),
        "{out}"
    );
    assert!(out.contains("--base-port"), "{out}");
}

#[test]
fn a_base_port_too_high_is_refused_with_the_highest_that_fits() {
    let (code, _, err) = demo(&["--base-port", "65530"]);
    assert_eq!(code, 1);
    assert!(err.contains("choose at most 65502"), "{err}");
}

#[test]
fn missing_binaries_are_named_with_the_command_that_builds_them() {
    let empty = tempfile::tempdir().unwrap();
    let (code, _, err) = demo(&["--smoke", "--bin-dir", empty.path().to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("outrigger-proxy is not in"), "{err}");
    assert!(err.contains("cargo build -p outrigger-cli"), "{err}");
}

#[test]
fn a_port_in_use_is_named_with_what_would_bind_it() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    // The layout's fourth port is the client's inbound listener.
    let base = port - 11;
    let fake = tempfile::tempdir().unwrap();
    for name in ["outrigger-proxy", "outrigger-control-plane"] {
        std::fs::write(fake.path().join(name), "").unwrap();
    }
    let (code, _, err) = demo(&[
        "--smoke",
        "--base-port",
        &base.to_string(),
        "--bin-dir",
        fake.path().to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!(
            "port {port} (client's inbound listener) is already in use"
        )),
        "{err}"
    );
    assert!(err.contains("--base-port"), "{err}");
}
