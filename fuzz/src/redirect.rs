//! The redirect's port ranges and subnets, as `outrigger-proxy init` reads
//! them from the injector's annotations.

use outrigger_api::redirect::{parse_port_ranges, parse_subnets};

/// Never panics; every range read holds ports 1-65535, first <= last;
/// what is read, written back as iptables shows it, reads as the same;
/// likewise for subnets.
pub fn ranges(data: &[u8]) {
    let Some(v) = crate::text(data) else { return };
    match parse_port_ranges(v) {
        Ok(ranges) => {
            for r in &ranges {
                assert!(r.first >= 1 && r.first <= r.last, "{r:?} from {v:?}");
            }
            let written: Vec<String> = ranges.iter().map(ToString::to_string).collect();
            assert_eq!(parse_port_ranges(&written.join(",")), Ok(ranges), "{v:?}");
        }
        Err(e) => assert!(!e.is_empty()),
    }
    match parse_subnets(v) {
        Ok(subnets) => {
            let written: Vec<&str> = subnets.iter().map(|s| s.text.as_str()).collect();
            assert_eq!(parse_subnets(&written.join(",")), Ok(subnets), "{v:?}");
        }
        Err(e) => assert!(!e.is_empty()),
    }
}
