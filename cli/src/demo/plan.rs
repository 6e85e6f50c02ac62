//! What the demo sets up, as pure functions of its ports and folder: the
//! ports, the manifests the control plane reads, each proxy's bootstrap and
//! command line, the VirtualService the user edits, and what is printed.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The demo's namespace.
pub const NAMESPACE: &str = "demo";
/// The mesh's trust domain (the control plane's and the proxies' default).
pub const TRUST_DOMAIN: &str = "cluster.local";
/// The default `--base-port`: clear of the old static demo's ports
/// (8080, 4140, 4143, 4191, 4192) and of the proxy's defaults.
pub const DEFAULT_BASE_PORT: u16 = 4300;
/// The file, in the manifests folder, that holds the VirtualService.
pub const VS_FILE: &str = "web-virtualservice.yaml";
/// The file, in the manifests folder, that holds everything else.
pub const PLATFORM_FILE: &str = "platform.yaml";

/// One workload of the demo: an app and its proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Workload {
    /// The pod's name, and what its app answers (`hello from <pod>`).
    pub pod: &'static str,
    pub service_account: &'static str,
    /// The `version` label (subsets select on it), if any.
    pub version: Option<&'static str>,
    /// Its place in the port layout (ports `base + 10 * (slot + 1) + 0..4`).
    slot: u16,
}

/// The client, and the two versions of `web`.
pub const WORKLOADS: [Workload; 3] = [
    Workload {
        pod: "client",
        service_account: "client",
        version: None,
        slot: 0,
    },
    Workload {
        pod: "web-v1",
        service_account: "web",
        version: Some("v1"),
        slot: 1,
    },
    Workload {
        pod: "web-v2",
        service_account: "web",
        version: Some("v2"),
        slot: 2,
    },
];

/// The client workload (where the traffic comes from).
pub const CLIENT: Workload = WORKLOADS[0];

/// A workload's four ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkloadPorts {
    /// The proxy's outbound listener, bound to `web.demo:80`.
    pub outbound: u16,
    /// The proxy's inbound listener (mutual TLS from peers), to the app.
    pub inbound: u16,
    /// The proxy's admin port (`/metrics`, `/config`, `/ready`).
    pub admin: u16,
    /// The app (plaintext, loopback).
    pub app: u16,
}

/// The port layout from `--base-port`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ports {
    pub base: u16,
}

/// The base port leaves no room for the layout.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("--base-port {0}: the demo uses {0} to {0}+{span}, past 65535; choose at most {max}", span = Ports::SPAN, max = u16::MAX - Ports::SPAN)]
pub struct BasePortTooHigh(pub u16);

impl Ports {
    /// How far past the base the layout reaches.
    pub const SPAN: u16 = 33;

    pub fn new(base: u16) -> Result<Self, BasePortTooHigh> {
        if base == 0 || base > u16::MAX - Self::SPAN {
            return Err(BasePortTooHigh(base));
        }
        Ok(Self { base })
    }

    /// The control plane: config stream, certify, `/metrics` (TLS).
    pub fn control_plane(&self) -> u16 {
        self.base
    }

    pub fn of(&self, w: &Workload) -> WorkloadPorts {
        let first = self.base + 10 * (w.slot + 1);
        WorkloadPorts {
            outbound: first,
            inbound: first + 1,
            admin: first + 2,
            app: first + 3,
        }
    }

    /// Every port the demo binds, with what binds it.
    pub fn all(&self) -> Vec<(u16, String)> {
        let mut all = vec![(self.control_plane(), "the control plane".to_string())];
        for w in &WORKLOADS {
            let p = self.of(w);
            all.push((p.outbound, format!("{}'s outbound listener", w.pod)));
            all.push((p.inbound, format!("{}'s inbound listener", w.pod)));
            all.push((p.admin, format!("{}'s admin port", w.pod)));
            all.push((p.app, format!("the {} app", w.pod)));
        }
        all
    }
}

/// Where the demo keeps its files, under one folder.
#[derive(Clone, Debug)]
pub struct Layout {
    pub root: PathBuf,
}

impl Layout {
    /// The folder the control plane reads (and the user edits).
    pub fn manifests(&self) -> PathBuf {
        self.root.join("manifests")
    }
    pub fn virtual_service(&self) -> PathBuf {
        self.manifests().join(VS_FILE)
    }
    /// The mesh CA, generated on start (`ca.pem`, `ca.key`, `roots.pem`).
    pub fn ca(&self) -> PathBuf {
        self.root.join("ca")
    }
    pub fn roots(&self) -> PathBuf {
        self.ca().join("roots.pem")
    }
    /// Bootstrap tokens, `<namespace>/<service-account>`.
    pub fn tokens(&self) -> PathBuf {
        self.root.join("tokens")
    }
    pub fn token(&self, w: &Workload) -> PathBuf {
        self.tokens().join(NAMESPACE).join(w.service_account)
    }
    pub fn bootstrap(&self, w: &Workload) -> PathBuf {
        self.root.join("proxies").join(format!("{}.yaml", w.pod))
    }
    pub fn logs(&self) -> PathBuf {
        self.root.join("logs")
    }
    pub fn log(&self, name: &str) -> PathBuf {
        self.logs().join(format!("{name}.log"))
    }
}

/// Everything the control plane reads besides the VirtualService: the
/// Service `web` with its two pods' proxies as endpoints, the three pods
/// (meshed: each has an `outrigger-proxy` container), the subsets, and
/// STRICT mutual TLS for the namespace.
pub fn platform(ports: &Ports) -> String {
    let mut out = String::from(
        "# The demo's platform: what a cluster would hold. The control plane reads this\n\
         # folder; edit web-virtualservice.yaml to move the split.\n",
    );
    let _ = write!(
        out,
        r#"apiVersion: v1
kind: Service
metadata: {{ name: web, namespace: {NAMESPACE} }}
spec: {{ clusterIP: 10.96.0.80, ports: [{{ name: http, port: 80 }}] }}
---
# No iptables here: each endpoint is its pod's inbound proxy on loopback.
apiVersion: v1
kind: Endpoints
metadata: {{ name: web, namespace: {NAMESPACE} }}
subsets:
"#
    );
    for w in WORKLOADS.iter().filter(|w| w.version.is_some()) {
        let _ = write!(
            out,
            "  - addresses: [{{ ip: 127.0.0.1, targetRef: {{ kind: Pod, name: {} }} }}]\n    ports: [{{ name: http, port: {} }}]\n",
            w.pod,
            ports.of(w).inbound
        );
    }
    for w in &WORKLOADS {
        let app = w.pod.split('-').next().unwrap_or(w.pod);
        let labels = match w.version {
            Some(v) => format!("app: {app}, version: {v}"),
            None => format!("app: {app}"),
        };
        let _ = write!(
            out,
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{ name: {pod}, namespace: {NAMESPACE}, labels: {{ {labels} }} }}\nspec: {{ serviceAccountName: {sa}, containers: [{{ name: {app} }}, {{ name: outrigger-proxy }}] }}\n",
            pod = w.pod,
            sa = w.service_account,
        );
    }
    let _ = write!(
        out,
        r#"---
apiVersion: outrigger.dev/v1alpha1
kind: DestinationRule
metadata: {{ name: web, namespace: {NAMESPACE} }}
spec:
  host: web
  subsets:
    - {{ name: v1, labels: {{ version: v1 }} }}
    - {{ name: v2, labels: {{ version: v2 }} }}
---
apiVersion: outrigger.dev/v1alpha1
kind: PeerAuthentication
metadata: {{ name: default, namespace: {NAMESPACE} }}
spec: {{ mtls: {{ mode: STRICT }} }}
"#
    );
    out
}

/// The VirtualService sending `v1`% of `web` to subset v1 and `v2`% to v2.
pub fn virtual_service(v1: u32, v2: u32) -> String {
    virtual_service_to(("v1", v1), ("v2", v2))
}

/// The VirtualService with two weighted subsets, named.
pub fn virtual_service_to(a: (&str, u32), b: (&str, u32)) -> String {
    format!(
        r#"# Edit the weights and save: the split moves within a second.
apiVersion: outrigger.dev/v1alpha1
kind: VirtualService
metadata: {{ name: web, namespace: {NAMESPACE} }}
spec:
  hosts: [web]
  http:
    - route:
        - destination: {{ host: web, subset: {} }}
          weight: {}
        - destination: {{ host: web, subset: {} }}
          weight: {}
"#,
        a.0, a.1, b.0, b.1
    )
}

/// A workload's proxy bootstrap: its outbound listener bound to
/// `web.demo:80` (no iptables to find the destination), its inbound
/// listener in front of its app, its admin port; services and security come
/// from the control plane.
pub fn bootstrap(ports: &Ports, w: &Workload) -> String {
    let p = ports.of(w);
    format!(
        r#"version: "bootstrap"
proxy: {{ workload: {pod}, namespace: {NAMESPACE} }}
admin: {{ bind: "127.0.0.1:{admin}" }}
limits: {{ connect_timeout: 1s }}
listeners:
  - {{ name: outbound, direction: outbound, bind: "127.0.0.1:{outbound}", target: {{ name: web, namespace: {NAMESPACE}, port: 80 }} }}
  - {{ name: inbound, direction: inbound, bind: "127.0.0.1:{inbound}", app: "127.0.0.1:{app}" }}
services:
  - {{ name: web, namespace: {NAMESPACE}, ports: [80] }}
"#,
        pod = w.pod,
        admin = p.admin,
        outbound = p.outbound,
        inbound = p.inbound,
        app = p.app,
    )
}

/// `outrigger-control-plane run …`: folder mode, the CA generated into the
/// demo's folder, bootstrap tokens, a short poll.
pub fn control_plane_args(ports: &Ports, layout: &Layout) -> Vec<String> {
    let path = |p: &Path| p.display().to_string();
    vec![
        "run".into(),
        "--folder".into(),
        path(&layout.manifests()),
        "--namespace".into(),
        NAMESPACE.into(),
        "--listen".into(),
        format!("127.0.0.1:{}", ports.control_plane()),
        "--poll".into(),
        "200ms".into(),
        "--ca-dir".into(),
        path(&layout.ca()),
        "--bootstrap-tokens".into(),
        path(&layout.tokens()),
    ]
}

/// `outrigger-proxy run …` for one workload: following the control plane
/// over mutual TLS with its bootstrap token, one data-plane thread.
pub fn proxy_args(ports: &Ports, layout: &Layout, w: &Workload) -> Vec<String> {
    let path = |p: &Path| p.display().to_string();
    vec![
        "run".into(),
        "--config".into(),
        path(&layout.bootstrap(w)),
        "--control-plane".into(),
        format!("127.0.0.1:{}", ports.control_plane()),
        "--pod-name".into(),
        w.pod.into(),
        "--pod-namespace".into(),
        NAMESPACE.into(),
        "--service-account".into(),
        w.service_account.into(),
        "--trust-roots".into(),
        path(&layout.roots()),
        "--token-file".into(),
        path(&layout.token(w)),
        "--threads".into(),
        "1".into(),
        "--access-log".into(),
    ]
}

/// What the demo prints once the mesh is up: where everything is, and what
/// to try.
pub fn banner(ports: &Ports, layout: &Layout) -> String {
    let mut rows = vec![vec![
        "control-plane".to_string(),
        format!("127.0.0.1:{} (TLS)", ports.control_plane()),
        "-".into(),
        "-".into(),
        "-".into(),
    ]];
    for w in &WORKLOADS {
        let p = ports.of(w);
        rows.push(vec![
            w.pod.to_string(),
            format!("127.0.0.1:{}", p.admin),
            format!("127.0.0.1:{}", p.outbound),
            format!("127.0.0.1:{}", p.inbound),
            format!("127.0.0.1:{}", p.app),
        ]);
    }
    let table = crate::output::table(&["WORKLOAD", "ADMIN", "OUTBOUND", "INBOUND", "APP"], &rows);
    let client = ports.of(&CLIENT);
    let v1 = ports.of(&WORKLOADS[1]);
    let tries = [
        (
            format!("curl -s http://127.0.0.1:{}/", client.outbound),
            "through the client's proxy, to web",
        ),
        (
            format!("curl -s http://127.0.0.1:{}/", v1.inbound),
            "plaintext to web-v1's inbound port: refused (STRICT)",
        ),
        (
            format!(
                "curl -s http://127.0.0.1:{}/metrics | grep ^outrigger_requests_total",
                v1.admin
            ),
            "web-v1's proxy: who called, over mutual_tls",
        ),
        (
            format!("curl -s http://127.0.0.1:{}/config", client.admin),
            "the client proxy's configuration in force",
        ),
    ];
    let width = tries.iter().map(|t| t.0.len()).max().unwrap_or(0);
    let try_lines: String = tries
        .iter()
        .map(|(cmd, what)| format!("  {cmd:<width$}  # {what}\n"))
        .collect();
    format!(
        "\
The mesh is up: a control plane (CA and config source), three apps, their proxies
over mutual TLS (STRICT), and a client sending a request every 100 ms to web.

{table}
The VirtualService (edit its weights and save; a tally of who answered
follows every 2 s):
  {vs}
Files: {root} (logs in {logs})

Try:
{try_lines}
Ctrl-C stops everything.
",
        vs = layout.virtual_service().display(),
        root = layout.root.display(),
        logs = layout.logs().display(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layout_starts_at_the_base_and_never_reaches_past_its_span() {
        let ports = Ports::new(4300).unwrap();
        let all = ports.all();
        assert_eq!(all.len(), 13);
        assert_eq!(all.iter().map(|p| p.0).min(), Some(4300));
        assert_eq!(all.iter().map(|p| p.0).max(), Some(4300 + Ports::SPAN));
        let mut unique: Vec<u16> = all.iter().map(|p| p.0).collect();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), 13, "no port used twice");
        for old in [8080, 4140, 4143, 4191, 4192] {
            assert!(!unique.contains(&old), "{old} is the old demo's");
        }
        assert_eq!(
            ports.of(&WORKLOADS[1]),
            WorkloadPorts {
                outbound: 4320,
                inbound: 4321,
                admin: 4322,
                app: 4323
            }
        );
        assert!(Ports::new(u16::MAX - Ports::SPAN).is_ok());
        let err = Ports::new(u16::MAX - Ports::SPAN + 1).unwrap_err();
        assert!(err.to_string().contains("choose at most 65502"), "{err}");
    }

    #[test]
    fn the_platform_names_each_versions_inbound_proxy_as_its_endpoint() {
        let text = platform(&Ports::new(5000).unwrap());
        assert!(text.contains("name: web-v1 }"), "{text}");
        assert!(text.contains("port: 5021 }"), "{text}");
        assert!(text.contains("port: 5031 }"), "{text}");
        assert!(text.contains("mode: STRICT"));
        assert!(text.contains("labels: { app: web, version: v2 }"), "{text}");
        assert!(text.contains("serviceAccountName: client"));
    }

    #[test]
    fn the_virtual_service_carries_both_weights() {
        let vs = virtual_service(20, 80);
        assert!(vs.contains("subset: v1 }\n          weight: 20\n"), "{vs}");
        assert!(vs.contains("subset: v2 }\n          weight: 80\n"), "{vs}");
    }

    #[test]
    fn a_proxy_follows_the_control_plane_with_its_own_token() {
        let ports = Ports::new(4300).unwrap();
        let layout = Layout {
            root: PathBuf::from("/d"),
        };
        let args = proxy_args(&ports, &layout, &WORKLOADS[2]).join(" ");
        assert!(
            args.contains("--control-plane 127.0.0.1:4300 --pod-name web-v2 --pod-namespace demo --service-account web --trust-roots /d/ca/roots.pem --token-file /d/tokens/demo/web"),
            "{args}"
        );
        let boot = bootstrap(&ports, &WORKLOADS[2]);
        assert!(
            boot.contains("bind: \"127.0.0.1:4331\", app: \"127.0.0.1:4333\""),
            "{boot}"
        );
        let cp = control_plane_args(&ports, &layout).join(" ");
        assert!(cp.contains("--folder /d/manifests"), "{cp}");
        assert!(cp.contains("--bootstrap-tokens /d/tokens"), "{cp}");
    }

    #[test]
    fn the_banner_names_every_admin_port_the_file_to_edit_and_what_to_try() {
        let ports = Ports::new(4300).unwrap();
        let layout = Layout {
            root: PathBuf::from("/d"),
        };
        let text = banner(&ports, &layout);
        assert!(
            text.contains("web-v2         127.0.0.1:4332        127.0.0.1:4330  127.0.0.1:4331  127.0.0.1:4333\n"),
            "{text}"
        );
        assert!(
            text.contains("  /d/manifests/web-virtualservice.yaml\n"),
            "{text}"
        );
        assert!(text.contains("curl -s http://127.0.0.1:4310/ "), "{text}");
        assert!(text.contains("refused (STRICT)"), "{text}");
        assert!(text.ends_with("Ctrl-C stops everything.\n"), "{text}");
    }
}
