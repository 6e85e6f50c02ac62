//! `outrigger-proxy init`: the transparent redirect, installed with
//! iptables' NAT table in the pod's network namespace before the app and
//! the proxy start.
//!
//! ```text
//! PREROUTING ─▶ OUTRIGGER_INBOUND: skipped ports RETURN; TCP ─▶ REDIRECT :4143
//! OUTPUT     ─▶ OUTRIGGER_OUTPUT:  the proxy's UID RETURN; out of lo RETURN;
//!                                  skipped ports, skipped subnets RETURN;
//!                                  TCP ─▶ REDIRECT :4140
//! ```
//!
//! [`Plan::restore_input`] is pure: the `iptables-restore --noflush` input
//! that (re)writes Outrigger's chains, given what `iptables-save` shows, so
//! a rerun replaces the chains' rules and adds each jump only once.
//! [`run`] is the edge: it picks the backend (nft or legacy), reads the
//! table, writes it. IPv4 only: a pod with a global IPv6 address is refused
//! (its IPv6 traffic would bypass the proxy), see [`global_ipv6`].

use std::fmt::Write as _;
use std::io::Write as _;
use std::process::{Command, Stdio};

pub const INBOUND_CHAIN: &str = "OUTRIGGER_INBOUND";
pub const OUTPUT_CHAIN: &str = "OUTRIGGER_OUTPUT";

pub use outrigger_api::redirect::{parse_port_ranges, parse_subnets, PortRange, Subnet};

/// What to install.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub proxy_uid: u32,
    pub inbound_port: u16,
    pub outbound_port: u16,
    pub skip_inbound: Vec<PortRange>,
    pub skip_outbound: Vec<PortRange>,
    pub skip_subnets: Vec<Subnet>,
}

impl Plan {
    /// The `iptables-restore --noflush` input (IPv4: IPv6 subnets are left
    /// out, as IPv6 is not redirected). Declaring the
    /// chains empties them, so their rules are replaced; a jump from
    /// PREROUTING or OUTPUT is added only when `saved` (the output of
    /// `iptables-save -t nat`) does not show it already.
    pub fn restore_input(&self, saved: &str) -> String {
        let mut out = String::from("*nat\n");
        for chain in [INBOUND_CHAIN, OUTPUT_CHAIN] {
            let _ = writeln!(out, ":{chain} - [0:0]");
        }
        let inbound = format!("-A {INBOUND_CHAIN}");
        for p in &self.skip_inbound {
            let _ = writeln!(out, "{inbound} -p tcp --dport {p} -j RETURN");
        }
        let _ = writeln!(
            out,
            "{inbound} -p tcp -j REDIRECT --to-ports {}",
            self.inbound_port
        );
        let output = format!("-A {OUTPUT_CHAIN}");
        // The proxy's own connections (to the app, to peers, to the control
        // plane) go where they were sent.
        let _ = writeln!(
            out,
            "{output} -m owner --uid-owner {} -j RETURN",
            self.proxy_uid
        );
        // Traffic within the pod (localhost, or the pod's own IP) stays.
        let _ = writeln!(out, "{output} -o lo -j RETURN");
        for p in &self.skip_outbound {
            let _ = writeln!(out, "{output} -p tcp --dport {p} -j RETURN");
        }
        for s in &self.skip_subnets {
            if s.ip.is_ipv4() {
                let _ = writeln!(out, "{output} -d {} -j RETURN", s.text);
            }
        }
        let _ = writeln!(
            out,
            "{output} -p tcp -j REDIRECT --to-ports {}",
            self.outbound_port
        );
        for (hook, chain) in [("PREROUTING", INBOUND_CHAIN), ("OUTPUT", OUTPUT_CHAIN)] {
            let jump = format!("-A {hook} -p tcp -j {chain}");
            if !saved.lines().any(|l| l.trim() == jump) {
                let _ = writeln!(out, "{jump}");
            }
        }
        out.push_str("COMMIT\n");
        out
    }
}

/// Which iptables the kernel's rules go through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// nft if its tools are there and work, else legacy; a backend that
    /// already holds rules in this namespace wins.
    Auto,
    Nft,
    Legacy,
}

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("{tool} not found: install iptables (the nft or legacy variant) in the init image")]
    Missing { tool: String },
    #[error("{tool} failed ({status}): {stderr}{hint}")]
    Failed {
        tool: String,
        status: String,
        stderr: String,
        hint: &'static str,
    },
    #[error("cannot run {tool}: {source}")]
    Spawn {
        tool: String,
        source: std::io::Error,
    },
    #[error(
        "this pod has the IPv6 address {address} on {interface}: dual-stack pods are not \
         supported yet (their IPv6 traffic would bypass the proxy)"
    )]
    DualStack { address: String, interface: String },
}

/// The first global IPv6 address in `/proc/net/if_inet6` (address, scope,
/// interface), if any. Pure.
pub fn global_ipv6(if_inet6: &str) -> Option<(String, String)> {
    for line in if_inet6.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        // address ifindex prefix-length scope flags name; scope 00: global.
        let [hex, _, _, scope, _, name] = f.as_slice() else {
            continue;
        };
        if *scope != "00" || hex.len() != 32 {
            continue;
        }
        let Ok(bits) = u128::from_str_radix(hex, 16) else {
            continue;
        };
        return Some((std::net::Ipv6Addr::from(bits).to_string(), name.to_string()));
    }
    None
}

const CAPABILITY_HINT: &str =
    " (the init step needs root with NET_ADMIN and NET_RAW in the pod's network namespace)";

/// Runs `tool args`, feeding `input`; returns its stdout.
fn exec(tool: &str, args: &[&str], input: Option<&str>) -> Result<String, InitError> {
    let mut child = Command::new(tool)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => InitError::Missing { tool: tool.into() },
            _ => InitError::Spawn {
                tool: tool.into(),
                source,
            },
        })?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(text.as_bytes())
            .map_err(|source| InitError::Spawn {
                tool: tool.into(),
                source,
            })?;
    }
    let out = child
        .wait_with_output()
        .map_err(|source| InitError::Spawn {
            tool: tool.into(),
            source,
        })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        let denied = stderr.contains("Permission denied") || stderr.contains("must be root");
        return Err(InitError::Failed {
            tool: tool.into(),
            status: out.status.to_string(),
            stderr,
            hint: if denied { CAPABILITY_HINT } else { "" },
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn tools(mode: Mode) -> (String, String) {
    let base = "iptables";
    match mode {
        Mode::Nft => (format!("{base}-nft-save"), format!("{base}-nft-restore")),
        Mode::Legacy => (
            format!("{base}-legacy-save"),
            format!("{base}-legacy-restore"),
        ),
        Mode::Auto => (format!("{base}-save"), format!("{base}-restore")),
    }
}

/// The backend to use: asked for, or (auto) the one that holds rules
/// already, else nft where it works, else legacy.
pub fn pick(mode: Mode) -> Mode {
    if mode != Mode::Auto {
        return mode;
    }
    let rules = |m| {
        let (save, _) = tools(m);
        exec(&save, &[], None)
            .ok()
            .map(|s| s.lines().filter(|l| l.starts_with("-A ")).count())
    };
    match (rules(Mode::Nft), rules(Mode::Legacy)) {
        (Some(_), Some(legacy)) if legacy > 0 => Mode::Legacy,
        (Some(_), _) => Mode::Nft,
        (None, Some(_)) => Mode::Legacy,
        // Neither variant by name: the plain tools decide.
        (None, None) => Mode::Auto,
    }
}

/// Installs `plan`; with `dry_run`, prints what it would write instead.
pub fn run(plan: &Plan, mode: Mode, dry_run: bool) -> Result<String, InitError> {
    if dry_run {
        return Ok(format!(
            "# iptables-restore --noflush\n{}",
            plan.restore_input("")
        ));
    }
    if let Some((address, interface)) =
        global_ipv6(&std::fs::read_to_string("/proc/net/if_inet6").unwrap_or_default())
    {
        return Err(InitError::DualStack { address, interface });
    }
    let mode = pick(mode);
    let (save, restore) = tools(mode);
    let saved = exec(&save, &["-t", "nat"], None)?;
    let input = plan.restore_input(&saved);
    exec(&restore, &["--noflush"], Some(&input))?;
    Ok(format!("# {restore} --noflush\n{input}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> Plan {
        Plan {
            proxy_uid: 2102,
            inbound_port: 4143,
            outbound_port: 4140,
            skip_inbound: parse_port_ranges("4191,9000-9002").unwrap(),
            skip_outbound: parse_port_ranges("5432").unwrap(),
            skip_subnets: parse_subnets("169.254.169.254/32,fd00::/8").unwrap(),
        }
    }

    #[test]
    fn the_rules_redirect_inbound_and_outbound_with_their_exceptions() {
        assert_eq!(
            plan().restore_input(""),
            "*nat
:OUTRIGGER_INBOUND - [0:0]
:OUTRIGGER_OUTPUT - [0:0]
-A OUTRIGGER_INBOUND -p tcp --dport 4191 -j RETURN
-A OUTRIGGER_INBOUND -p tcp --dport 9000:9002 -j RETURN
-A OUTRIGGER_INBOUND -p tcp -j REDIRECT --to-ports 4143
-A OUTRIGGER_OUTPUT -m owner --uid-owner 2102 -j RETURN
-A OUTRIGGER_OUTPUT -o lo -j RETURN
-A OUTRIGGER_OUTPUT -p tcp --dport 5432 -j RETURN
-A OUTRIGGER_OUTPUT -d 169.254.169.254/32 -j RETURN
-A OUTRIGGER_OUTPUT -p tcp -j REDIRECT --to-ports 4140
-A PREROUTING -p tcp -j OUTRIGGER_INBOUND
-A OUTPUT -p tcp -j OUTRIGGER_OUTPUT
COMMIT
"
        );
        // The plan's IPv6 subnet (fd00::/8) has no rule: IPv6 is not redirected.
        assert!(!plan().restore_input("").contains("fd00"));
    }

    #[test]
    fn a_rerun_adds_no_second_jump() {
        let saved = "# Generated by iptables-save\n*nat\n:PREROUTING ACCEPT [0:0]\n\
                     :OUTRIGGER_INBOUND - [0:0]\n-A PREROUTING -p tcp -j OUTRIGGER_INBOUND\n\
                     -A OUTPUT -p tcp -j OUTRIGGER_OUTPUT\n-A OUTRIGGER_INBOUND -p tcp -j REDIRECT --to-ports 4143\nCOMMIT\n";
        let again = plan().restore_input(saved);
        assert!(!again.contains("-A PREROUTING"), "{again}");
        assert!(!again.contains("-A OUTPUT "), "{again}");
        assert!(
            again.contains(":OUTRIGGER_INBOUND - [0:0]"),
            "the chains are emptied and written again"
        );
    }

    #[test]
    fn a_dry_run_prints_the_rules_and_touches_nothing() {
        let out = run(&plan(), Mode::Nft, true).unwrap();
        assert!(
            out.starts_with("# iptables-restore --noflush\n*nat\n"),
            "{out}"
        );
        assert_eq!(out.matches("COMMIT").count(), 1);
    }

    #[test]
    fn only_a_global_ipv6_address_makes_a_pod_dual_stack() {
        let loopback_and_link_local = "00000000000000000000000000000001 01 80 10 80       lo\n\
             fe800000000000000c5e2ffffe3a4b1c 02 40 20 80     eth0\n";
        assert_eq!(global_ipv6(loopback_and_link_local), None);
        let global = format!(
            "{loopback_and_link_local}fd000000000000000000000000000012 02 40 00 80     eth0\n"
        );
        assert_eq!(
            global_ipv6(&global),
            Some(("fd00::12".to_string(), "eth0".to_string()))
        );
        assert_eq!(global_ipv6(""), None);
        let e = InitError::DualStack {
            address: "fd00::12".into(),
            interface: "eth0".into(),
        };
        assert!(e
            .to_string()
            .contains("dual-stack pods are not supported yet"));
    }

    #[test]
    fn a_missing_tool_is_named() {
        let e = exec("outrigger-no-such-iptables", &[], None).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("outrigger-no-such-iptables not found: install iptables"),
            "{e}"
        );
    }
}
