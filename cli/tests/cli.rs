//! The `outrigger` binary's own surface: its help names every command with
//! examples, and its errors name the flag to fix. (This file also makes
//! `cargo test --workspace` build the binary that `tests/tests/cli_*.rs` run.)

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_outrigger");

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .env_remove("KUBECONFIG")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn every_command_has_help_with_examples() {
    for (command, example) in [
        (
            "inject",
            "outrigger inject -f deploy.yaml | kubectl apply -f -",
        ),
        ("analyze", "outrigger analyze --cluster"),
        ("version", "outrigger version --proxies"),
    ] {
        let (status, out, _) = run(&[command, "--help"]);
        assert_eq!(status, 0);
        assert!(out.contains("Examples:"), "{out}");
        assert!(out.contains(example), "{out}");
    }
}

#[test]
fn analyze_needs_paths_or_the_cluster() {
    let (status, _, err) = run(&["analyze"]);
    assert_eq!(status, 2);
    assert!(err.contains("<PATHS>"), "{err}");
}

#[test]
fn inject_offline_without_trust_roots_names_the_flag() {
    let dir = std::env::temp_dir().join(format!("outrigger-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mesh = dir.join("mesh.yaml");
    std::fs::write(&mesh, "proxyImage: proxy:1\n").unwrap();
    let manifest = dir.join("pod.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: c, image: c}]}\n",
    )
    .unwrap();
    let (status, out, err) = run(&[
        "inject",
        "-f",
        manifest.to_str().unwrap(),
        "--mesh-config",
        mesh.to_str().unwrap(),
    ]);
    assert_eq!(status, 1);
    assert_eq!(out, "");
    assert!(
        err.contains("has no trustRoots: pass --trust-roots FILE"),
        "{err}"
    );
}
