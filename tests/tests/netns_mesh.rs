//! The mesh end to end on real network namespaces: "pods" joined by veth
//! pairs on a bridge, each meshed one set up exactly as the injector's
//! patch says (its init step's arguments, its proxy's environment, the
//! proxy run as UID 2102), with a control plane in folder mode as their CA
//! and config source. Unmodified clients and servers (curl, and a small
//! Python HTTP server, `netns/hello.py`) run inside.
//!
//! It shows: the client calls the Service's virtual IP and gets an answer
//! without knowing about the mesh; the bytes between the pods are TLS; the
//! server's proxy sees the client's SPIFFE identity; a canary split and a
//! retry work across real hops; a pod without a proxy reaches a meshed
//! server under PERMISSIVE and not under STRICT.
//!
//! Needs root, `ip`, iptables, `setpriv`, curl and python3; CI sets
//! OUTRIGGER_REQUIRE_NETNS=1 so that it cannot be skipped.
//!
//! ```text
//!            bridge 10.126.0.1 (the control plane listens here)
//!    ┌──────────────┬──────────────┬──────────────┬──────────────┐
//!  client .10     web-v1 .11     web-v2 .12     plain .20 (no proxy)
//!  curl, proxy    hello,proxy    hello,proxy    curl
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::{Container, Pod};
use outrigger_control_plane::authn::TokenFiles;
use outrigger_control_plane::certify::Certifier;
use outrigger_identity::Ca;
use outrigger_injector::config::MeshConfig;
use outrigger_injector::inject::{inject, Namespace, Outcome};
use outrigger_tests::control_plane::{ControlPlane, Dir};
use outrigger_tests::eventually;
use serde_json::Value;

const TD: &str = "cluster.local";
const BRIDGE_IP: &str = "10.126.0.1";
const SERVICE_IP: &str = "10.96.0.10";

fn sh(args: &[&str]) -> std::process::Output {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

fn ok(args: &[&str]) {
    let out = sh(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn can_run() -> Option<PathBuf> {
    let root = sh(&["id", "-u"]).stdout == b"0\n";
    let tools = ["ip", "iptables-save", "setpriv", "curl", "python3"]
        .iter()
        .all(|t| Command::new(t).arg("--version").output().is_ok());
    let proxy = outrigger_tests::workspace_bin("outrigger-proxy");
    if root && tools && proxy.is_some() {
        return proxy;
    }
    let why = format!(
        "needs root, ip, iptables, setpriv, curl, python3 and the outrigger-proxy binary \
         (cargo test --workspace builds it) (root: {root}, tools: {tools}, binary: {})",
        proxy.is_some()
    );
    if std::env::var_os("OUTRIGGER_REQUIRE_NETNS").is_some() {
        panic!("{why}, and OUTRIGGER_REQUIRE_NETNS is set");
    }
    eprintln!("skipped: {why}");
    None
}

/// The bridge and the pods' namespaces, removed on drop.
struct Cluster {
    id: u32,
    bridge: String,
    pods: Vec<String>,
    children: Vec<Child>,
}

impl Cluster {
    fn create() -> Self {
        let id = std::process::id() % 10_000;
        let bridge = format!("orbr{id}");
        ok(&["ip", "link", "add", &bridge, "type", "bridge"]);
        ok(&[
            "ip",
            "addr",
            "add",
            &format!("{BRIDGE_IP}/24"),
            "dev",
            &bridge,
        ]);
        ok(&["ip", "link", "set", &bridge, "up"]);
        Cluster {
            id,
            bridge,
            pods: Vec::new(),
            children: Vec::new(),
        }
    }

    /// A pod's network namespace at `ip` (10.126.0.x), with its default
    /// route through the bridge.
    fn pod(&mut self, name: &str, ip: &str) -> PodNet {
        let n = self.pods.len();
        let ns = format!("or-{}-{name}", self.id);
        let host_if = format!("orv{}{n}", self.id);
        let peer = format!("orq{}{n}", self.id);
        ok(&["ip", "netns", "add", &ns]);
        self.pods.push(ns.clone());
        ok(&[
            "ip", "link", "add", &host_if, "type", "veth", "peer", "name", &peer,
        ]);
        ok(&["ip", "link", "set", &host_if, "master", &self.bridge]);
        ok(&["ip", "link", "set", &host_if, "up"]);
        ok(&["ip", "link", "set", &peer, "netns", &ns]);
        let pod = PodNet {
            ns,
            ip: ip.to_string(),
            host_if,
        };
        pod.exec(&["ip", "link", "set", &peer, "name", "eth0"]);
        pod.exec(&["ip", "addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
        pod.exec(&["ip", "link", "set", "eth0", "up"]);
        pod.exec(&["ip", "link", "set", "lo", "up"]);
        pod.exec(&["ip", "route", "add", "default", "via", BRIDGE_IP]);
        pod
    }

    fn spawn(&mut self, mut cmd: Command) -> usize {
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        self.children.push(child);
        self.children.len() - 1
    }

    fn kill(&mut self, i: usize) {
        let _ = self.children[i].kill();
        let _ = self.children[i].wait();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in &self.pods {
            let _ = sh(&["ip", "netns", "del", ns]);
        }
        let _ = sh(&["ip", "link", "del", &self.bridge]);
    }
}

struct PodNet {
    ns: String,
    ip: String,
    host_if: String,
}

impl PodNet {
    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns]).args(args);
        c
    }

    fn exec(&self, args: &[&str]) {
        let out = self.command(args).output().unwrap();
        assert!(
            out.status.success(),
            "{} {args:?}: {}",
            self.ns,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `curl` from inside the pod: (HTTP status, body); status 0 when the
    /// connection failed.
    async fn curl(&self, url: &str) -> (u16, String) {
        let mut cmd = tokio::process::Command::new("ip");
        cmd.args(["netns", "exec", &self.ns]).args([
            "curl",
            "-s",
            "-m",
            "3",
            "-w",
            "\n%{http_code}",
            url,
        ]);
        let out = cmd.output().await.unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), body.to_string())
    }
}

/// The pod as the API server would hold it after injection, and the
/// commands the injected containers run.
struct Injected {
    pod: Value,
    init_args: Vec<String>,
    proxy_env: BTreeMap<String, String>,
}

fn injected(manifest: &str, ip: &str, cfg: &MeshConfig, token_file: &Path) -> Injected {
    let original: Value = serde_saphyr::from_str(manifest).unwrap();
    let ns = Namespace {
        name: "shop".into(),
        annotations: BTreeMap::from([("outrigger.dev/inject".into(), "enabled".into())]),
    };
    let Outcome::Inject { patch, .. } = inject(&original, &ns, cfg) else {
        panic!("not injected");
    };
    let mut doc = original.clone();
    json_patch::patch(&mut doc, &patch).unwrap();
    let pod: Pod = serde_json::from_value(doc.clone()).unwrap();
    let spec = pod.spec.as_ref().unwrap();
    let all: Vec<&Container> = spec
        .init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .collect();
    let init = all.iter().find(|c| c.name == "outrigger-init").unwrap();
    let proxy = all.iter().find(|c| c.name == "outrigger-proxy").unwrap();
    assert_eq!(proxy.args.as_deref(), Some(&["run".to_string()][..]));
    // The downward API, as kubelet resolves it for this pod.
    let field = |path: &str| match path {
        "metadata.name" => pod.metadata.name.clone().unwrap(),
        "metadata.namespace" => "shop".to_string(),
        "spec.serviceAccountName" => spec.service_account_name.clone().unwrap(),
        "status.podIP" => ip.to_string(),
        other => panic!("unexpected fieldRef {other}"),
    };
    let mut env: BTreeMap<String, String> = proxy
        .env
        .iter()
        .flatten()
        .map(|e| {
            let v = match (&e.value, &e.value_from) {
                (Some(v), _) => v.clone(),
                (None, Some(src)) => field(&src.field_ref.as_ref().unwrap().field_path),
                _ => String::new(),
            };
            (e.name.clone(), v)
        })
        .collect();
    // The projected token volume is a bootstrap token file here.
    env.insert(
        "OUTRIGGER_TOKEN_FILE".into(),
        token_file.display().to_string(),
    );
    Injected {
        pod: doc,
        init_args: init.args.clone().unwrap(),
        proxy_env: env,
    }
}

fn pod_manifest(name: &str, sa: &str, labels: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{ name: {name}, namespace: shop, labels: {{ {labels} }} }}\n\
         spec: {{ serviceAccountName: {sa}, containers: [{{ name: app, image: app:1, \
         ports: [{{ name: http, containerPort: 8080 }}], \
         readinessProbe: {{ httpGet: {{ path: /, port: http }} }} }}] }}\n"
    )
}

const SERVICES: &str = r#"
apiVersion: v1
kind: Service
metadata: { name: web, namespace: shop }
spec: { clusterIP: 10.96.0.10, ports: [{ name: http, port: 80, targetPort: 8080 }] }
---
apiVersion: v1
kind: Endpoints
metadata: { name: web, namespace: shop }
subsets:
  - addresses:
      - { ip: 10.126.0.11, targetRef: { kind: Pod, name: web-v1 } }
      - { ip: 10.126.0.12, targetRef: { kind: Pod, name: web-v2 } }
    ports: [{ name: http, port: 8080 }]
---
apiVersion: outrigger.dev/v1alpha1
kind: DestinationRule
metadata: { name: web, namespace: shop }
spec:
  host: web
  subsets: [{ name: v1, labels: { version: v1 } }, { name: v2, labels: { version: v2 } }]
  # Round robin, so that the retry phase surely sends requests to v2 (with
  # two endpoints, P2C always picks the one that looks better).
  trafficPolicy: { loadBalancer: { simple: ROUND_ROBIN } }
"#;

const CANARY: &str = r#"apiVersion: outrigger.dev/v1alpha1
kind: VirtualService
metadata: { name: web, namespace: shop }
spec:
  hosts: [web]
  http:
    - route:
        - { destination: { host: web, subset: v1 }, weight: 50 }
        - { destination: { host: web, subset: v2 }, weight: 50 }
"#;

const RETRYING: &str = r#"apiVersion: outrigger.dev/v1alpha1
kind: VirtualService
metadata: { name: web, namespace: shop }
spec:
  hosts: [web]
  http:
    - route: [{ destination: { host: web } }]
      retries: { attempts: 2, retryOn: "5xx,connect-failure" }
"#;

/// GET over plain TCP from this (the root) namespace: the whole response.
async fn http_get(addr: &str, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr: SocketAddr = addr.parse().unwrap();
    let mut s = tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr))
        .await
        .ok()?
        .ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut out))
        .await
        .ok()?
        .ok()?;
    Some(String::from_utf8_lossy(&out).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn meshed_pods_on_network_namespaces() {
    let Some(proxy_bin) = can_run() else {
        return;
    };
    let mut cluster = Cluster::create();
    let client = cluster.pod("client", "10.126.0.10");
    let v1 = cluster.pod("web-v1", "10.126.0.11");
    let v2 = cluster.pod("web-v2", "10.126.0.12");
    let plain = cluster.pod("plain", "10.126.0.20");

    // The control plane on the bridge: the mesh's CA (bootstrap tokens
    // readable by the proxies' UID) and their config.
    let tokens = Dir::new("netns-tokens");
    for sa in ["client", "web"] {
        std::fs::create_dir_all(tokens.path().join("shop")).unwrap();
        std::fs::write(tokens.path().join("shop").join(sa), format!("token-{sa}")).unwrap();
    }
    ok(&["chmod", "-R", "a+rX", tokens.path().to_str().unwrap()]);
    let ca = Arc::new(Ca::generate(TD, SystemTime::now()).unwrap());
    let certifier = Arc::new(Certifier::new(
        ca.clone(),
        TD,
        Duration::from_secs(3600),
        Arc::new(TokenFiles::new(tokens.path())),
    ));
    let listener = tokio::net::TcpListener::bind(format!("{BRIDGE_IP}:0"))
        .await
        .unwrap();
    let cp_addr = listener.local_addr().unwrap();
    let mut cfg = MeshConfig::with_image("outrigger-proxy:test");
    cfg.control_plane_address = cp_addr.to_string();
    cfg.trust_roots = ca.roots_pem();

    // Inject each meshed pod; the folder holds the pods as injected.
    let folder = Dir::new("netns-mesh");
    let meshed = [
        (&client, "client-0", "client", "app: client"),
        (&v1, "web-v1", "web", "app: web, version: v1"),
        (&v2, "web-v2", "web", "app: web, version: v2"),
    ];
    let mut pods = Vec::new();
    for (net, name, sa, labels) in meshed {
        let token = tokens.path().join("shop").join(sa);
        let inj = injected(&pod_manifest(name, sa, labels), &net.ip, &cfg, &token);
        folder.write(
            &format!("pod-{name}.yaml"),
            &serde_json::to_string(&inj.pod).unwrap(),
        );
        pods.push((net, name, inj));
    }
    folder.write("services.yaml", SERVICES);
    folder.write("web-vs.yaml", CANARY);
    let cp = ControlPlane::start_with(folder.path(), listener, Some(certifier)).await;

    // In each pod: the init step with the injector's arguments, then the
    // proxy as UID 2102 with the injector's environment, then the app.
    let mut apps = BTreeMap::new();
    for (net, name, inj) in &pods {
        let mut args: Vec<&str> = vec![proxy_bin.to_str().unwrap()];
        args.extend(inj.init_args.iter().map(String::as_str));
        net.exec(&args);
        let mut cmd = net.command(&[
            "setpriv",
            "--reuid=2102",
            "--regid=2102",
            "--clear-groups",
            proxy_bin.to_str().unwrap(),
            "run",
        ]);
        cmd.env_clear().envs(&inj.proxy_env);
        cluster.spawn(cmd);
        if name.starts_with("web") {
            let cmd = net.command(&[
                "python3",
                concat!(env!("CARGO_MANIFEST_DIR"), "/tests/netns/hello.py"),
                "0.0.0.0",
                "8080",
                name,
            ]);
            apps.insert(*name, cluster.spawn(cmd));
        }
    }
    for (net, name, _) in &pods {
        let admin = format!("{}:4191", net.ip);
        assert!(
            eventually(Duration::from_secs(20), || async {
                http_get(&admin, "/ready")
                    .await
                    .is_some_and(|r| r.starts_with("HTTP/1.1 200"))
            })
            .await,
            "the proxy of {name} never became ready"
        );
        if name.starts_with("web") {
            // The app, from inside its pod (loopback is not redirected).
            assert!(
                eventually(Duration::from_secs(20), || async {
                    net.curl("http://127.0.0.1:8080/").await.0 == 200
                })
                .await,
                "the app of {name} never answered"
            );
        }
    }

    // 1. The client calls the Service's virtual IP, knowing nothing of the
    //    mesh, and the canary split sends it to both versions; meanwhile,
    //    the bytes leaving the client pod are captured.
    let mut capture = Command::new("python3")
        .args([
            concat!(env!("CARGO_MANIFEST_DIR"), "/tests/netns/capture.py"),
            &client.host_if,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut capture_out = std::io::BufReader::new(capture.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut capture_out, &mut line).unwrap();
    assert!(line.contains("ready"), "{line}");
    let url = format!("http://{SERVICE_IP}/");
    let mut seen = BTreeMap::new();
    for _ in 0..60 {
        let (status, body) = client.curl(&url).await;
        assert_eq!(status, 200, "{body}");
        *seen.entry(body.trim().to_string()).or_insert(0) += 1;
    }
    drop(capture.stdin.take());
    let mut packets = Vec::new();
    for l in std::io::BufRead::lines(capture_out) {
        packets.push(serde_json::from_str::<Value>(&l.unwrap()).unwrap());
    }
    let _ = capture.wait();
    let v1_hits = seen.get("hello from web-v1").copied().unwrap_or(0);
    let v2_hits = seen.get("hello from web-v2").copied().unwrap_or(0);
    assert_eq!(v1_hits + v2_hits, 60, "{seen:?}");
    assert!(
        v1_hits >= 10 && v2_hits >= 10,
        "a 50/50 split gave {seen:?}"
    );

    // 2. What crossed the wire between the pods was TLS: every payload from
    //    the client pod to a server pod's port 8080 is a TLS record, and no
    //    HTTP is in the clear.
    let to_servers: Vec<&Value> = packets
        .iter()
        .filter(|p| {
            let dst = p["dst"].as_str().unwrap();
            dst == "10.126.0.11:8080" || dst == "10.126.0.12:8080"
        })
        .collect();
    assert!(!to_servers.is_empty(), "nothing captured: {packets:?}");
    for p in &to_servers {
        let head = p["head"].as_str().unwrap();
        assert!(
            head.starts_with("1603") || head.starts_with("1703") || head.starts_with("1403"),
            "not a TLS record: {p}"
        );
    }
    let clear = |needle: &str| {
        let hex: String = needle.bytes().map(|b| format!("{b:02x}")).collect();
        packets
            .iter()
            .any(|p| p["head"].as_str().unwrap().contains(&hex))
    };
    assert!(!clear("GET /") && !clear("hello from"), "HTTP in the clear");

    // 3. The server's proxy knows who called: the client's SPIFFE identity.
    let text = http_get(&format!("{}:4191", v1.ip), "/metrics")
        .await
        .unwrap();
    assert!(
        outrigger_tests::metric(
            &text,
            "outrigger_requests_total",
            &[
                ("direction", "inbound"),
                (
                    "source_principal",
                    "spiffe://cluster.local/ns/shop/sa/client"
                ),
                ("connection_security_policy", "mutual_tls"),
            ]
        ) >= 10.0,
        "{text}"
    );

    // 4. A retry across real hops: one route to both endpoints, retried on
    //    5xx; v2's app goes away, and every request still succeeds.
    folder.write("web-vs.yaml", RETRYING);
    let client_admin = format!("{}:4191", client.ip);
    // `/config` answers loopback peers only (kubectl port-forward), so it
    // is read from inside the pod; from outside it is refused.
    let in_pod_config = "http://127.0.0.1:4191/config";
    assert!(
        eventually(Duration::from_secs(10), || async {
            let (status, c) = client.curl(in_pod_config).await;
            status == 200 && c.contains("connect-failure") && !c.contains("\"subset\":\"v2\"")
        })
        .await,
        "the retrying route never reached the client's proxy"
    );
    assert!(http_get(&client_admin, "/config")
        .await
        .is_some_and(|r| r.starts_with("HTTP/1.1 403")));
    cluster.kill(apps["web-v2"]);
    for _ in 0..20 {
        let (status, body) = client.curl(&url).await;
        assert_eq!((status, body.trim()), (200, "hello from web-v1"));
    }
    let text = http_get(&client_admin, "/metrics").await.unwrap();
    assert!(
        outrigger_tests::metric(&text, "outrigger_retries_total", &[]) >= 1.0,
        "no retry counted: {text}"
    );

    // 5. A pod without a proxy reaches a meshed server in PERMISSIVE...
    let direct = format!("http://{}:8080/", v1.ip);
    assert_eq!(plain.curl(&direct).await.0, 200);
    // ...and not in STRICT, while meshed traffic goes on.
    folder.write(
        "strict.yaml",
        "apiVersion: outrigger.dev/v1alpha1\nkind: PeerAuthentication\n\
         metadata: { name: default, namespace: shop }\nspec: { mtls: { mode: STRICT } }\n",
    );
    let v1_admin = format!("{}:4191", v1.ip);
    assert!(
        eventually(Duration::from_secs(10), || async {
            let (status, c) = v1.curl(in_pod_config).await;
            status == 200 && c.contains("STRICT")
        })
        .await,
        "STRICT never reached web-v1's proxy"
    );
    assert_eq!(
        plain.curl(&direct).await.0,
        0,
        "plaintext got through STRICT"
    );
    let (status, body) = client.curl(&url).await;
    assert_eq!((status, body.trim()), (200, "hello from web-v1"));
    // The admin port stays reachable for kubelet and Prometheus.
    assert!(http_get(&v1_admin, "/ready")
        .await
        .is_some_and(|r| r.starts_with("HTTP/1.1 200")));
    cp.stop().await;
}
