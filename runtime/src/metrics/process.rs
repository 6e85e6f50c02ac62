//! The standard `process_*` families, as the Prometheus Go client's process
//! collector exposes them on Linux, read from `/proc/self` when scraped
//! (nothing is kept or updated between scrapes, so the request path pays
//! nothing): [`Process::read`] is the edge, the parsers are pure.
//!
//! | family | type | unit | from |
//! |---|---|---|---|
//! | `process_cpu_seconds_total` | counter | seconds | `stat` utime + stime, in clock ticks of 1/100 s |
//! | `process_resident_memory_bytes` | gauge | bytes | `status` `VmRSS` |
//! | `process_virtual_memory_bytes` | gauge | bytes | `stat` vsize |
//! | `process_open_fds` | gauge | | entries of `fd/` |
//! | `process_max_fds` | gauge | | `limits` "Max open files", soft limit |
//! | `process_start_time_seconds` | gauge | seconds since the Unix epoch | `stat` starttime + `/proc/stat` btime |
//!
//! The clock tick is Linux's `USER_HZ`, 100 on every architecture the
//! images are built for (the Go client assumes the same).

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Unit;

/// Clock ticks per second in `/proc` (`USER_HZ`).
pub const USER_HZ: f64 = 100.0;

/// One reading of the process's resources.
#[derive(Clone, Debug, PartialEq)]
pub struct Process {
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    pub virtual_bytes: u64,
    pub open_fds: u64,
    /// `None`: unlimited.
    pub max_fds: Option<u64>,
    pub start_time_seconds: f64,
}

/// A `/proc` file that could not be read or understood.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: &'static str,
        source: std::io::Error,
    },
    #[error("{path}: {what}")]
    Parse { path: &'static str, what: String },
}

/// The fields of `/proc/<pid>/stat` this module uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stat {
    /// utime + stime, in clock ticks.
    pub cpu_ticks: u64,
    /// Clock ticks after boot.
    pub start_ticks: u64,
    pub vsize: u64,
}

/// `/proc/<pid>/stat`: the fields after the command name, which is in
/// parentheses and may hold spaces and parentheses itself (so the split is
/// at the last `)`). utime, stime, starttime and vsize are fields 14, 15,
/// 22 and 23 (proc(5), counting from 1).
pub fn parse_stat(text: &str) -> Result<Stat, ProcError> {
    let err = |what: String| ProcError::Parse {
        path: "/proc/self/stat",
        what,
    };
    let (_, rest) = text
        .rsplit_once(')')
        .ok_or_else(|| err("no \")\" after the command name".into()))?;
    // rest's first field is field 3 (state).
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize, name: &str| -> Result<u64, ProcError> {
        let v = fields
            .get(n - 3)
            .ok_or_else(|| err(format!("no field {n} ({name})")))?;
        v.parse()
            .map_err(|_| err(format!("field {n} ({name}) {v:?} is not a number")))
    };
    Ok(Stat {
        cpu_ticks: field(14, "utime")? + field(15, "stime")?,
        start_ticks: field(22, "starttime")?,
        vsize: field(23, "vsize")?,
    })
}

/// `VmRSS` of `/proc/<pid>/status`, in bytes (the file says kB, which is KiB).
pub fn parse_status_rss(text: &str) -> Result<u64, ProcError> {
    let err = |what: String| ProcError::Parse {
        path: "/proc/self/status",
        what,
    };
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .ok_or_else(|| err("no VmRSS line".into()))?;
    let mut words = line.split_whitespace();
    let kib: u64 = words
        .next()
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| err(format!("VmRSS {:?} is not a number", line.trim())))?;
    match words.next() {
        Some("kB") => Ok(kib * 1024),
        other => Err(err(format!("VmRSS in {other:?}, not kB"))),
    }
}

/// The soft limit of "Max open files" in `/proc/<pid>/limits`; `None` when
/// unlimited.
pub fn parse_max_fds(text: &str) -> Result<Option<u64>, ProcError> {
    let err = |what: String| ProcError::Parse {
        path: "/proc/self/limits",
        what,
    };
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .ok_or_else(|| err("no \"Max open files\" line".into()))?;
    match line.split_whitespace().next() {
        Some("unlimited") => Ok(None),
        Some(n) => n
            .parse()
            .map(Some)
            .map_err(|_| err(format!("Max open files {n:?} is not a number"))),
        None => Err(err("Max open files has no soft limit".into())),
    }
}

/// `btime` of `/proc/stat`: boot time, in seconds since the Unix epoch.
pub fn parse_boot_time(text: &str) -> Result<u64, ProcError> {
    let err = |what: String| ProcError::Parse {
        path: "/proc/stat",
        what,
    };
    let v = text
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .ok_or_else(|| err("no btime line".into()))?;
    v.trim()
        .parse()
        .map_err(|_| err(format!("btime {v:?} is not a number")))
}

impl Process {
    /// A reading from the texts of the `/proc` files and the number of
    /// open descriptors.
    pub fn from_texts(
        stat: &str,
        status: &str,
        limits: &str,
        proc_stat: &str,
        open_fds: u64,
    ) -> Result<Self, ProcError> {
        let s = parse_stat(stat)?;
        Ok(Process {
            cpu_seconds: s.cpu_ticks as f64 / USER_HZ,
            resident_bytes: parse_status_rss(status)?,
            virtual_bytes: s.vsize,
            open_fds,
            max_fds: parse_max_fds(limits)?,
            start_time_seconds: parse_boot_time(proc_stat)? as f64 + s.start_ticks as f64 / USER_HZ,
        })
    }

    /// This process, now.
    pub fn read() -> Result<Self, ProcError> {
        fn read(path: &'static str) -> Result<String, ProcError> {
            std::fs::read_to_string(path).map_err(|source| ProcError::Read { path, source })
        }
        let fds = std::fs::read_dir("/proc/self/fd")
            .map_err(|source| ProcError::Read {
                path: "/proc/self/fd",
                source,
            })?
            .count() as u64;
        Process::from_texts(
            &read("/proc/self/stat")?,
            &read("/proc/self/status")?,
            &read("/proc/self/limits")?,
            &read("/proc/stat")?,
            fds,
        )
    }
}

/// The `process_*` families, read at each scrape.
#[derive(Debug, Default)]
pub struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let p = match Process::read() {
            Ok(p) => p,
            Err(e) => {
                // Not on Linux, or /proc not mounted: the families are
                // absent, the rest of the scrape stands.
                tracing::debug!(error = %e, "process metrics not read");
                return Ok(());
            }
        };
        let cpu = ConstCounter::new(p.cpu_seconds);
        cpu.encode(encoder.encode_descriptor(
            "process_cpu",
            "Total user and system CPU time spent in seconds.",
            Some(&Unit::Seconds),
            cpu.metric_type(),
        )?)?;
        let gauges: [(&str, &str, Option<Unit>, f64); 5] = [
            (
                "process_resident_memory",
                "Resident memory size in bytes.",
                Some(Unit::Bytes),
                p.resident_bytes as f64,
            ),
            (
                "process_virtual_memory",
                "Virtual memory size in bytes.",
                Some(Unit::Bytes),
                p.virtual_bytes as f64,
            ),
            (
                "process_open_fds",
                "Number of open file descriptors.",
                None,
                p.open_fds as f64,
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors.",
                None,
                // Unlimited: +Inf, as the Go client reports it.
                p.max_fds.map_or(f64::INFINITY, |n| n as f64),
            ),
            (
                "process_start_time",
                "Start time of the process since unix epoch in seconds.",
                Some(Unit::Seconds),
                p.start_time_seconds,
            ),
        ];
        for (name, help, unit, value) in gauges {
            let g = ConstGauge::new(value);
            g.encode(encoder.encode_descriptor(name, help, unit.as_ref(), g.metric_type())?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "26160 (python3 (x) y) R 26152 26152 16725 0 -1 4194304 2841 6562 0 0 \
        412 37 5 2 20 0 1 0 1916389 16961536 3351 18446744073709551615 94313871314944 \
        94313871315285 140735089978272 0 0 0 0 16781312 2 0 0 0 17 0 0 0 0 0 0\n";
    const STATUS: &str =
        "Name:\tpython3\nVmPeak:\t   16564 kB\nVmSize:\t   16564 kB\nVmRSS:\t   13404 kB\nThreads:\t1\n";
    const LIMITS: &str =
        "Limit                     Soft Limit           Hard Limit           Units     \n\
        Max cpu time              unlimited            unlimited            seconds   \n\
        Max open files            20000                1048576              files     \n";
    const PROC_STAT: &str = "cpu  1 2 3 4\nintr 5\nctxt 6\nbtime 1796641238\nprocesses 7\n";

    #[test]
    fn a_reading_from_sample_proc_files() {
        let p = Process::from_texts(STAT, STATUS, LIMITS, PROC_STAT, 9).unwrap();
        assert_eq!(
            p,
            Process {
                cpu_seconds: 4.49,
                resident_bytes: 13404 * 1024,
                virtual_bytes: 16961536,
                open_fds: 9,
                max_fds: Some(20000),
                start_time_seconds: 1796641238.0 + 19163.89,
            }
        );
    }

    #[test]
    fn unlimited_descriptors_and_unreadable_files() {
        assert_eq!(
            parse_max_fds(
                "Max open files            unlimited            unlimited            files\n"
            )
            .unwrap(),
            None
        );
        for (got, want) in [
            (
                parse_stat("1 (a) R 2 3").unwrap_err().to_string(),
                "/proc/self/stat: no field 14 (utime)",
            ),
            (
                parse_stat("no parenthesis").unwrap_err().to_string(),
                "/proc/self/stat: no \")\" after the command name",
            ),
            (
                parse_stat(&STAT.replace(" 412 ", " x "))
                    .unwrap_err()
                    .to_string(),
                "/proc/self/stat: field 14 (utime) \"x\" is not a number",
            ),
            (
                parse_status_rss("Name:\tx\n").unwrap_err().to_string(),
                "/proc/self/status: no VmRSS line",
            ),
            (
                parse_status_rss("VmRSS:\t12 MB\n").unwrap_err().to_string(),
                "/proc/self/status: VmRSS in Some(\"MB\"), not kB",
            ),
            (
                parse_max_fds("Max cpu time unlimited\n")
                    .unwrap_err()
                    .to_string(),
                "/proc/self/limits: no \"Max open files\" line",
            ),
            (
                parse_boot_time("btime soon\n").unwrap_err().to_string(),
                "/proc/stat: btime \"soon\" is not a number",
            ),
        ] {
            assert_eq!(got, want);
        }
    }

    #[test]
    fn this_process_as_the_go_client_names_it() {
        let mut reg = prometheus_client::registry::Registry::default();
        reg.register_collector(Box::new(ProcessCollector));
        let text = super::super::encode(&reg);
        for line in [
            "# TYPE process_cpu_seconds counter",
            "# UNIT process_cpu_seconds seconds",
            "# TYPE process_resident_memory_bytes gauge",
            "# TYPE process_virtual_memory_bytes gauge",
            "# TYPE process_open_fds gauge",
            "# TYPE process_max_fds gauge",
            "# TYPE process_start_time_seconds gauge",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
        let classic = super::super::exposition::to_classic(&text).unwrap();
        assert!(
            classic.contains("# TYPE process_cpu_seconds_total counter\n"),
            "{classic}"
        );
        let p = Process::read().unwrap();
        assert!(p.resident_bytes > 1 << 20, "{p:?}");
        assert!(p.open_fds >= 3, "{p:?}");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(
            p.start_time_seconds <= now + 1.0 && p.start_time_seconds > now - 3600.0,
            "{p:?} at {now}"
        );
    }
}
