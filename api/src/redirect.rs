//! The settings of the transparent redirect, as the injector writes them
//! (from a pod's annotations) and `outrigger-proxy init` reads them: port
//! ranges and subnets that the redirect leaves alone. One parser, so the
//! two sides cannot disagree on what a value means.

use std::net::IpAddr;

/// A port or an inclusive range; written `8080` or `9000-9010` (or
/// `9000:9010`), and shown as iptables writes it (`9000:9010`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl std::fmt::Display for PortRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}:{}", self.first, self.last)
        }
    }
}

impl PortRange {
    /// How many ports it holds.
    pub fn len(&self) -> usize {
        usize::from(self.last - self.first) + 1
    }

    pub fn is_empty(&self) -> bool {
        false
    }
}

/// `8080,9000-9010` (spaces allowed); empty: none.
pub fn parse_port_ranges(v: &str) -> Result<Vec<PortRange>, String> {
    let mut out = Vec::new();
    for item in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let port = |s: &str| {
            s.trim()
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("{s:?} is not a port number (1-65535)"))
        };
        let (first, last) = match item.split_once(['-', ':']) {
            Some((a, b)) => (port(a)?, port(b)?),
            None => (port(item)?, port(item)?),
        };
        if first > last {
            return Err(format!("{item:?}: the range runs backwards"));
        }
        out.push(PortRange { first, last });
    }
    Ok(out)
}

/// A CIDR: its address (for the family) and its text as written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subnet {
    pub ip: IpAddr,
    pub text: String,
}

/// `10.0.0.0/8,fd00::/8`; empty: none.
pub fn parse_subnets(v: &str) -> Result<Vec<Subnet>, String> {
    let mut out = Vec::new();
    for item in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (ip, len) = item
            .split_once('/')
            .ok_or_else(|| format!("{item:?} is not a CIDR (address/length)"))?;
        let ip: IpAddr = ip
            .parse()
            .map_err(|_| format!("{item:?}: {ip:?} is not an IP address"))?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        if !len.parse::<u8>().is_ok_and(|l| l <= max) {
            return Err(format!("{item:?}: the prefix length must be 0-{max}"));
        }
        out.push(Subnet {
            ip,
            text: item.to_string(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_and_ranges_are_read_in_either_spelling() {
        let r = parse_port_ranges("80, 9000-9002,7000:7001").unwrap();
        assert_eq!(
            r,
            [
                PortRange {
                    first: 80,
                    last: 80
                },
                PortRange {
                    first: 9000,
                    last: 9002
                },
                PortRange {
                    first: 7000,
                    last: 7001
                }
            ]
        );
        assert_eq!(r[0].to_string(), "80");
        assert_eq!(r[1].to_string(), "9000:9002");
        assert_eq!(r[1].len(), 3);
        assert!(parse_port_ranges("").unwrap().is_empty());
        for (bad, why) in [
            ("0", "\"0\" is not a port number"),
            ("http", "\"http\" is not a port number"),
            ("70000", "is not a port number"),
            ("9010-9000", "runs backwards"),
        ] {
            let e = parse_port_ranges(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn subnets_are_checked_by_family() {
        let s = parse_subnets("169.254.169.254/32, fd00::/8").unwrap();
        assert_eq!(s[0].text, "169.254.169.254/32");
        assert!(s[0].ip.is_ipv4() && s[1].ip.is_ipv6());
        for (bad, why) in [
            ("10.0.0.0", "is not a CIDR"),
            ("10.0.0.0/33", "prefix length must be 0-32"),
            ("fd00::/129", "prefix length must be 0-128"),
            ("ten/8", "is not an IP address"),
        ] {
            let e = parse_subnets(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
