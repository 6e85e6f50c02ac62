//! `outrigger demo --smoke` with the real binaries (`outrigger`,
//! `outrigger-proxy`, `outrigger-control-plane`, next to this test; see
//! [`workspace_bin`]): the control plane in folder mode as the CA, three
//! proxies over mutual TLS (plaintext refused), a VirtualService edit followed, a bad one
//! refused with the split kept; and a demo whose control plane dies is
//! stopped, naming it, with nothing left running.
//!
//! `cargo test --workspace` builds all three binaries first (each package
//! has integration tests); `cargo test -p outrigger-tests --test cli_demo`
//! alone may find stale ones: `cargo build -p outrigger-cli -p
//! outrigger-proxy -p outrigger-control-plane` first.

use std::path::PathBuf;
use std::process::{Command, Output};

use outrigger_tests::workspace_bin;

fn bin(name: &str) -> PathBuf {
    workspace_bin(name).unwrap_or_else(|| {
        panic!("no {name} binary next to this test: cargo build -p outrigger-cli -p outrigger-proxy -p outrigger-control-plane")
    })
}

/// A base port of its own for each test, below the ephemeral range and
/// away from the demo's default (4300), so a demo running on this machine
/// does not clash.
fn demo(base_port: u16, extra: &[&str]) -> Output {
    Command::new(bin("outrigger"))
        .args(["demo", "--smoke", "--base-port", &base_port.to_string()])
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn the_smoke_run_passes_every_check_over_mutual_tls() {
    let proxy = bin("outrigger-proxy");
    let out = demo(
        24300,
        &["--bin-dir", proxy.parent().unwrap().to_str().unwrap()],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    for line in [
        "✔ requests through the client's proxy reach both versions (50/50)",
        "✔ web-v1's proxy took them over mutual TLS: ",
        "✔ web-v2's proxy took them over mutual TLS: ",
        "requests from spiffe://cluster.local/ns/demo/sa/client over mutual_tls",
        "✔ plaintext to web-v1's inbound port is refused (STRICT): closed unanswered; outrigger_tcp_plaintext_refused_total 1",
        "✔ a VirtualService edit sending 100% to v2 is followed: 30 answers in a row from web-v2",
        "✔ a bad VirtualService edit (subset v3) is refused: VirtualService demo/web: not accepted (UnknownSubset)",
        "(the last accepted version stays in force)",
        "✔ the previous split stays in force: web-v1   0 (  0%)   web-v2  50 (100%)   errors 0",
        "smoke test passed",
    ] {
        assert!(stdout.contains(line), "no {line:?} in\n{stdout}");
    }
    // Everything it started is gone: its ports are free again.
    for port in [24300, 24310, 24321, 24332] {
        assert!(
            std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(),
            "port {port} still taken"
        );
    }
}

#[test]
fn a_control_plane_that_dies_stops_the_demo_naming_it_and_its_log() {
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(bin("outrigger-proxy"), dir.path().join("outrigger-proxy")).unwrap();
    let cp = dir.path().join("outrigger-control-plane");
    std::fs::write(&cp, "#!/bin/sh\necho 'cannot bind: simulated'\nexit 3\n").unwrap();
    std::fs::set_permissions(&cp, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let files = tempfile::tempdir().unwrap();
    let out = demo(
        24400,
        &[
            "--bin-dir",
            dir.path().to_str().unwrap(),
            "--dir",
            files.path().to_str().unwrap(),
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("control-plane exited"), "{stderr}");
    assert!(stderr.contains("exit status: 3"), "{stderr}");
    assert!(stderr.contains("cannot bind: simulated"), "{stderr}");
    let log = files.path().join("logs/control-plane.log");
    assert!(
        stderr.contains(&log.display().to_string()),
        "names its log: {stderr}"
    );
    assert!(std::fs::read_to_string(&log)
        .unwrap()
        .contains("cannot bind: simulated"));
    // The proxies it had started are stopped with it.
    for port in [24412, 24422, 24432] {
        assert!(
            std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(),
            "port {port} still taken"
        );
    }
}

#[test]
fn the_smoke_run_as_json_lists_every_check_passed() {
    let proxy = bin("outrigger-proxy");
    let out = demo(
        24500,
        &[
            "--bin-dir",
            proxy.parent().unwrap().to_str().unwrap(),
            "-o",
            "json",
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["passed"], true, "{report}");
    assert_eq!(report["admin"]["web-v1"], "127.0.0.1:24522");
    let checks = report["checks"].as_array().unwrap();
    assert_eq!(checks.len(), 7, "{report}");
    assert!(checks.iter().all(|c| c["passed"] == true), "{report}");
}

/// A control plane that never reads the folder again (its poll stretched
/// to an hour): the mesh comes up, the edit is never followed, and the
/// smoke run fails naming that check, with the traffic it saw.
#[test]
fn a_smoke_check_that_fails_is_named_and_the_run_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(bin("outrigger-proxy"), dir.path().join("outrigger-proxy")).unwrap();
    let cp = dir.path().join("outrigger-control-plane");
    std::fs::write(
        &cp,
        format!(
            "#!/usr/bin/env bash\nargs=(\"$@\")\nfor i in \"${{!args[@]}}\"; do [[ ${{args[$i]}} == 200ms ]] && args[$i]=1h; done\nexec {} \"${{args[@]}}\"\n",
            bin("outrigger-control-plane").display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&cp, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let files = tempfile::tempdir().unwrap();
    let out = demo(
        24600,
        &[
            "--bin-dir",
            dir.path().to_str().unwrap(),
            "--dir",
            files.path().to_str().unwrap(),
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("✔ web-v2's proxy took them over mutual TLS"),
        "the checks before it passed: {stdout}"
    );
    assert!(
        stdout
            .contains("× a VirtualService edit sending 100% to v2 is followed: after 20 s: web-v1"),
        "{stdout}"
    );
    assert!(!stdout.contains("smoke test passed"), "{stdout}");
    assert!(
        stderr.contains(
            "smoke check failed: a VirtualService edit sending 100% to v2 is followed: after 20 s"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains(&files.path().join("logs").display().to_string()),
        "{stderr}"
    );
}

/// A closed terminal (SIGHUP) stops the demo and everything it started:
/// its children are in their own process group, so the hang-up reaches
/// the demo alone, which must stop them as it does on Ctrl-C.
#[test]
fn a_hang_up_stops_the_demo_and_its_children() {
    use std::io::BufRead as _;
    let proxy = bin("outrigger-proxy");
    let mut child = Command::new(bin("outrigger"))
        .args(["demo", "--base-port", "24700", "--bin-dir"])
        .arg(proxy.parent().unwrap())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // The first tally line: the mesh is up and answering.
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let up = lines
        .by_ref()
        .map_while(Result::ok)
        .any(|l| l.starts_with('['));
    assert!(up, "the demo printed no tally line");
    let hup = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    let status = child.wait().unwrap();
    drop(lines);
    let taken: Vec<u16> = [24700, 24712, 24722, 24732]
        .into_iter()
        .filter(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_err())
        .collect();
    assert!(
        taken.is_empty(),
        "after SIGHUP ({status}) ports {taken:?} are still taken"
    );
}
