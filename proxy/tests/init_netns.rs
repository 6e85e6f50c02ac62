//! `outrigger-proxy init` in a fresh network namespace, with real
//! iptables: which connections end up at the proxy's ports and which go
//! where they were sent. Needs root, `ip` and iptables (CI installs them
//! and sets OUTRIGGER_REQUIRE_NETNS=1 so that this cannot be skipped).
//!
//! ```text
//! root namespace: veth 10.124.0.1 + 10.124.0.3 (listeners :80 :5432)
//!      │
//! test namespace: veth 10.124.0.2, netcheck.py listening on 127.0.0.1:4140,
//!                 :4143, :4191 (admin), :8080 (the app)
//! ```

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_outrigger-proxy");

fn sh(args: &[&str]) -> std::process::Output {
    Command::new(args[0]).args(&args[1..]).output().unwrap()
}

fn ok(args: &[&str]) {
    let out = sh(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Whether this machine can run the test; when it cannot and CI asked for
/// it, that is a failure.
fn can_run() -> bool {
    let root = sh(&["id", "-u"]).stdout == b"0\n";
    let tools = ["ip", "iptables-save", "python3", "setpriv"]
        .iter()
        .all(|t| Command::new(t).arg("--version").output().is_ok());
    if root && tools {
        return true;
    }
    let why = format!("needs root, ip, iptables and python3 (root: {root}, tools: {tools})");
    if std::env::var_os("OUTRIGGER_REQUIRE_NETNS").is_some() {
        panic!("{why}, and OUTRIGGER_REQUIRE_NETNS is set");
    }
    eprintln!("skipped: {why}");
    false
}

/// The namespace and veth pair, removed on drop.
struct Netns {
    name: String,
    host_if: String,
}

impl Netns {
    fn create(tag: &str) -> Self {
        let id = std::process::id() % 100_000;
        let ns = Netns {
            name: format!("or-init-{tag}-{id}"),
            host_if: format!("orh{tag}{id}"),
        };
        let peer = format!("orp{tag}{id}");
        ok(&["ip", "netns", "add", &ns.name]);
        ok(&[
            "ip",
            "link",
            "add",
            &ns.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &peer,
        ]);
        ok(&["ip", "link", "set", &peer, "netns", &ns.name]);
        for a in ["10.124.0.1/24", "10.124.0.3/24"] {
            ok(&["ip", "addr", "add", a, "dev", &ns.host_if]);
        }
        ok(&["ip", "link", "set", &ns.host_if, "up"]);
        ns.exec(&["ip", "addr", "add", "10.124.0.2/24", "dev", &peer]);
        ns.exec(&["ip", "link", "set", &peer, "up"]);
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    fn exec(&self, args: &[&str]) {
        let mut all = vec!["ip", "netns", "exec", &self.name];
        all.extend_from_slice(args);
        ok(&all);
    }

    fn output(&self, args: &[&str]) -> String {
        let mut all = vec!["ip", "netns", "exec", &self.name];
        all.extend_from_slice(args);
        let out = sh(&all);
        assert!(out.status.success(), "{args:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = sh(&["ip", "link", "del", &self.host_if]);
        let _ = sh(&["ip", "netns", "del", &self.name]);
    }
}

struct Checker {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Checker {
    fn start(ns: &Netns) -> Self {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/netcheck.py");
        let mut child = Command::new("ip")
            .args(["netns", "exec", &ns.name, "python3", script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut c = Checker {
            child,
            stdin,
            stdout,
        };
        assert_eq!(c.read()["ready"], true);
        c
    }

    fn read(&mut self) -> Value {
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
    }

    fn ask(&mut self, command: &str) -> Value {
        writeln!(self.stdin, "{command}").unwrap();
        self.read()
    }

    /// (connected, [(listener, original destination)]).
    fn connect(&mut self, ip: &str, port: u16, uid: u32) -> (bool, Vec<(String, String)>) {
        let v = self.ask(&format!("connect {ip} {port} {uid}"));
        (v["connected"].as_bool().unwrap(), arrivals(&v))
    }
}

impl Drop for Checker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn arrivals(v: &Value) -> Vec<(String, String)> {
    v["arrived"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["listener"].as_str().unwrap().to_string(),
                a["original"].as_str().unwrap_or("-").to_string(),
            )
        })
        .collect()
}

/// A listener in the root namespace that counts what reaches it.
fn counting(addr: &str) -> Arc<AtomicUsize> {
    let l = TcpListener::bind(addr).unwrap();
    let n = Arc::new(AtomicUsize::new(0));
    let count = n.clone();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            count.fetch_add(1, Ordering::SeqCst);
            drop(s);
        }
    });
    n
}

fn pair(listener: &str, original: &str) -> Vec<(String, String)> {
    vec![(listener.to_string(), original.to_string())]
}

#[test]
fn the_redirect_sends_the_apps_traffic_to_the_proxy_and_spares_the_rest() {
    if !can_run() {
        return;
    }
    // One backend after the other: both use the same addresses (and other
    // ports, as the first run's listeners stay bound).
    for (tag, mode, save, other, web, db) in [
        (
            "n",
            "nft",
            "iptables-nft-save",
            "iptables-legacy-save",
            80,
            5432,
        ),
        (
            "l",
            "legacy",
            "iptables-legacy-save",
            "iptables-nft-save",
            81,
            5433,
        ),
    ] {
        check(tag, mode, save, other, web, db);
    }
}

fn check(tag: &str, mode: &str, save: &str, other: &str, web: u16, db: u16) {
    let ns = Netns::create(tag);
    let db_text = db.to_string();
    let init = [
        BIN,
        "init",
        "--iptables-mode",
        mode,
        "--skip-inbound-ports",
        "4191",
        "--skip-outbound-ports",
        &db_text,
        "--skip-subnets",
        "10.124.0.1/32",
    ];
    // Without the privilege, it says what it needs.
    let mut unprivileged = vec![
        "ip",
        "netns",
        "exec",
        &ns.name,
        "setpriv",
        "--reuid=2102",
        "--regid=2102",
        "--clear-groups",
    ];
    unprivileged.extend_from_slice(&init);
    let out = sh(&unprivileged);
    assert!(!out.status.success(), "{mode}: init ran without privilege");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Permission denied") && err.contains("needs root with NET_ADMIN and NET_RAW"),
        "{mode}: {err}"
    );
    ns.exec(&init);
    let first = ns.output(&[save, "-t", "nat"]);
    // Run again (a restarted pod's init step): the same rules, one jump each.
    ns.exec(&init);
    let again = ns.output(&[save, "-t", "nat"]);
    assert!(
        !ns.output(&[other, "-t", "nat"]).contains("OUTRIGGER"),
        "{mode}: rules written through the other backend too"
    );
    let rules = |s: &str| -> Vec<String> {
        s.lines()
            .filter(|l| l.starts_with("-A "))
            .map(String::from)
            .collect()
    };
    assert_eq!(
        rules(&first),
        rules(&again),
        "{mode}: a rerun changed the rules"
    );
    assert!(
        first.contains("REDIRECT --to-ports 4140"),
        "{mode}: {first}"
    );
    assert_eq!(
        again
            .lines()
            .filter(|l| l.contains("-j OUTRIGGER_INBOUND") || l.contains("-j OUTRIGGER_OUTPUT"))
            .count(),
        2,
        "{again}"
    );

    let web_hits = counting(&format!("10.124.0.3:{web}"));
    let db_hits = counting(&format!("10.124.0.3:{db}"));
    let skipped_subnet = counting(&format!("10.124.0.1:{web}"));
    let mut c = Checker::start(&ns);

    // The app's outbound TCP goes to the proxy's outbound port, with the
    // original destination readable there.
    assert_eq!(
        c.connect("10.124.0.3", web, 0),
        (true, pair("outbound", &format!("10.124.0.3:{web}")))
    );
    assert_eq!(
        c.connect("10.124.0.9", 443, 0),
        (true, pair("outbound", "10.124.0.9:443"))
    );
    assert_eq!(web_hits.load(Ordering::SeqCst), 0);
    // The proxy's own UID goes where it was sent.
    assert_eq!(c.connect("10.124.0.3", web, 2102), (true, vec![]));
    assert_eq!(web_hits.load(Ordering::SeqCst), 1);
    // A skipped port and a skipped subnet too.
    assert_eq!(c.connect("10.124.0.3", db, 0), (true, vec![]));
    assert_eq!(db_hits.load(Ordering::SeqCst), 1);
    assert_eq!(c.connect("10.124.0.1", web, 0), (true, vec![]));
    assert_eq!(skipped_subnet.load(Ordering::SeqCst), 1);
    // Traffic within the pod stays: localhost and the pod's own IP.
    assert_eq!(
        c.connect("127.0.0.1", 8080, 0),
        (true, pair("app", "127.0.0.1:8080"))
    );
    assert_eq!(
        c.connect("10.124.0.2", 8080, 0),
        (true, pair("app", "10.124.0.2:8080"))
    );

    // Inbound, from outside the pod: to the proxy's inbound port, except
    // the admin port.
    let to = |port: u16| {
        let addr: SocketAddr = format!("10.124.0.2:{port}").parse().unwrap();
        TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
    };
    assert!(to(8080));
    assert_eq!(
        arrivals(&c.ask("arrived")),
        pair("inbound", "10.124.0.2:8080")
    );
    assert!(to(4191));
    assert_eq!(
        arrivals(&c.ask("arrived")),
        pair("admin", "10.124.0.2:4191")
    );
}
