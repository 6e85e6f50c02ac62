//! The control plane's binary: start-up refusals that must happen before it
//! touches a cluster or a socket.

use std::process::Command;

fn control_plane() -> Command {
    Command::new(env!("CARGO_BIN_EXE_outrigger-control-plane"))
}

/// In a cluster, a CA generated into the container's home would be a new
/// root after every restart; the binary refuses to start that way and says
/// what to give instead. It fails before looking for a kubeconfig.
#[test]
fn kubernetes_mode_without_a_ca_is_refused_naming_the_flags() {
    let home = tempfile::tempdir().unwrap();
    let out = control_plane()
        .args(["run", "--kubernetes", "--listen", "127.0.0.1:0"])
        .env("HOME", home.path())
        .env_remove("XDG_STATE_HOME")
        .env("KUBECONFIG", home.path().join("no-such-kubeconfig"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert!(
        stderr.contains("--kubernetes needs the mesh CA")
            && stderr.contains("--ca-cert and --ca-key")
            && stderr.contains("--ca-dir"),
        "stderr: {stderr}"
    );
    // Nothing was generated where a restart would lose it.
    assert!(
        !home.path().join(".local/state/outrigger/ca").exists(),
        "a CA was generated in the container's home"
    );
}

/// Naming the folder on purpose is taken: the refusal is about the default
/// only. Here the start goes on to look for a cluster, and fails there.
#[test]
fn kubernetes_mode_with_a_named_ca_dir_gets_past_the_ca_check() {
    let home = tempfile::tempdir().unwrap();
    let out = control_plane()
        .args(["run", "--kubernetes", "--listen", "127.0.0.1:0", "--ca-dir"])
        .arg(home.path().join("ca"))
        .env("HOME", home.path())
        .env("KUBECONFIG", home.path().join("no-such-kubeconfig"))
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env("POD_NAME", "outrigger-control-plane-0")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert!(
        !stderr.contains("needs the mesh CA") && stderr.contains("no Kubernetes configuration"),
        "stderr: {stderr}"
    );
}

/// The Lease election's settings are checked before the cluster is looked
/// for: each refusal names its flag, and without an identity (the pod's
/// name, or the host's) the binary says where it comes from.
#[test]
fn leader_election_settings_are_refused_naming_the_flag() {
    let home = tempfile::tempdir().unwrap();
    let run = |extra: &[&str], env: &[(&str, &str)]| {
        let mut cmd = control_plane();
        cmd.args(["run", "--kubernetes", "--listen", "127.0.0.1:0", "--ca-dir"])
            .arg(home.path().join("ca"))
            .args(extra)
            .env_clear()
            .env("KUBECONFIG", home.path().join("no-such-kubeconfig"));
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let pod = [("POD_NAME", "outrigger-control-plane-0")];
    for (args, flag, why) in [
        (
            &["--leader-elect-renew-deadline=15s"][..],
            "--leader-elect-renew-deadline",
            "shorter than the lease duration",
        ),
        (
            &["--leader-elect-retry-period=10s"][..],
            "--leader-elect-retry-period",
            "shorter than the renew deadline",
        ),
        (
            &[
                "--leader-elect-lease-duration=2500ms",
                "--leader-elect-renew-deadline=1s",
                "--leader-elect-retry-period=200ms",
            ][..],
            "--leader-elect-lease-duration",
            "whole number of seconds",
        ),
    ] {
        let (code, stderr) = run(args, &pod);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(flag) && stderr.contains(why),
            "{args:?}: {stderr}"
        );
    }
    let (code, stderr) = run(&[], &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("--leader-elect-identity") && stderr.contains("POD_NAME"),
        "{stderr}"
    );
    // HOSTNAME will do; then the start goes on to look for the cluster.
    let (code, stderr) = run(&[], &[("HOSTNAME", "cp-host")]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("no Kubernetes configuration"), "{stderr}");
}

/// The kind end-to-end test's manifests (`tests/e2e/`) are ones the control
/// plane accepts: the workloads with each route the script applies in turn,
/// and the STRICT policy; every file parses and every mesh resource is
/// accepted.
#[test]
fn the_kind_tests_manifests_are_accepted() {
    let e2e = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/e2e");
    for route in ["to-v2.yaml", "canary.yaml"] {
        let folder = tempfile::tempdir().unwrap();
        for file in ["shop.yaml", "strict.yaml", route] {
            std::fs::copy(e2e.join(file), folder.path().join(file)).unwrap();
        }
        let out = control_plane()
            .args(["check", "--folder"])
            .arg(folder.path())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{route}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        for resource in [
            "DestinationRule shop/web: accepted",
            "VirtualService shop/web: accepted",
            "PeerAuthentication shop/default: accepted",
        ] {
            assert!(stdout.contains(resource), "{route}: {stdout}");
        }
    }
}

/// A file with a good DestinationRule and a VirtualService that uses a
/// field Outrigger does not support: the rule applies, the route is
/// reported by file, line and field, and neither command claims a last
/// good version that a one-shot read cannot have.
#[test]
fn check_and_config_apply_a_files_good_documents_and_report_the_bad_one() {
    let folder = tempfile::tempdir().unwrap();
    std::fs::write(
        folder.path().join("routes.yaml"),
        "apiVersion: v1
kind: Service
metadata: { name: web, namespace: shop }
spec: { clusterIP: 10.96.0.10, ports: [{ name: http, port: 80 }] }
---
apiVersion: outrigger.dev/v1alpha1
kind: DestinationRule
metadata: { name: web, namespace: shop }
spec: { host: web, subsets: [{ name: v1, labels: { version: v1 } }] }
---
apiVersion: outrigger.dev/v1alpha1
kind: VirtualService
metadata: { name: web, namespace: shop }
spec:
  hosts: [web]
  http:
    - mirror: { host: web }
      route: [{ destination: { host: web, subset: v1 } }]
",
    )
    .unwrap();
    let file = folder.path().join("routes.yaml").display().to_string();
    let reported =
        format!("{file}:17: VirtualService shop/web: unknown field `mirror`, expected one of ");
    let out = control_plane()
        .args(["check", "--folder"])
        .arg(folder.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains(&reported), "{stdout}");
    assert!(
        stdout.contains("(not applied: no earlier good version of it is in force)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("DestinationRule shop/web: accepted"),
        "{stdout}"
    );

    let out = control_plane()
        .args(["config", "--pod", "shop/client", "--folder"])
        .arg(folder.path())
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("warning: {reported}"))
            && stderr.contains("(not applied: no earlier good version of it is in force)")
            && !stderr.contains("last good content"),
        "{stderr}"
    );
    assert!(stdout.contains("name: v1"), "the rule's subset: {stdout}");

    // Over the size limit: refused by name.
    let out = control_plane()
        .args(["check", "--max-manifest-bytes", "100", "--folder"])
        .arg(folder.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains(&format!("{file}:0: "))
            && stdout.contains(
                "over the limit of 100 bytes for one manifest file (--max-manifest-bytes)"
            ),
        "{stdout}"
    );
}
