//! Counting who answered, the tally line, and reading the proxies' and the
//! control plane's metrics: pure functions of the answers and the text.

use std::collections::BTreeMap;

/// What one request through the client's proxy got.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Answer {
    /// 200 with `hello from <workload>`: that workload.
    From(String),
    /// Another status: the status and the proxy's error header, if any.
    Status(u16, String),
    /// No answer at all (connect or protocol error).
    Failed(String),
}

impl Answer {
    /// Classifies a response: status and body.
    pub fn of(status: u16, body: &str) -> Self {
        let body = body.trim();
        match (status, body.strip_prefix("hello from ")) {
            (200, Some(who)) => Answer::From(who.to_string()),
            _ => Answer::Status(status, body.chars().take(80).collect()),
        }
    }

    /// The workload that answered, if one did.
    pub fn workload(&self) -> Option<&str> {
        match self {
            Answer::From(w) => Some(w),
            _ => None,
        }
    }
}

/// The answers over a window.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    by_workload: BTreeMap<String, u64>,
    errors: u64,
    last_error: Option<String>,
}

impl Tally {
    pub fn add(&mut self, answer: &Answer) {
        match answer {
            Answer::From(w) => *self.by_workload.entry(w.clone()).or_default() += 1,
            Answer::Status(code, body) => {
                self.errors += 1;
                self.last_error = Some(format!("HTTP {code} {body}").trim_end().to_string());
            }
            Answer::Failed(e) => {
                self.errors += 1;
                self.last_error = Some(e.clone());
            }
        }
    }

    pub fn total(&self) -> u64 {
        self.by_workload.values().sum::<u64>() + self.errors
    }

    pub fn count(&self, workload: &str) -> u64 {
        self.by_workload.get(workload).copied().unwrap_or(0)
    }

    pub fn errors(&self) -> u64 {
        self.errors
    }

    /// One line: each of `workloads` with its count and share, then the
    /// errors (with the last one, if any).
    /// `web-v1  12 ( 60%)   web-v2   8 ( 40%)   errors 0`
    pub fn line(&self, workloads: &[&str]) -> String {
        let total = self.total();
        let share = |n: u64| (n * 100 + total / 2).checked_div(total).unwrap_or(0);
        let mut parts: Vec<String> = workloads
            .iter()
            .map(|w| {
                let n = self.count(w);
                format!("{w} {n:>3} ({:>3}%)", share(n))
            })
            .collect();
        let others: u64 = self
            .by_workload
            .iter()
            .filter(|(w, _)| !workloads.contains(&w.as_str()))
            .map(|(_, n)| n)
            .sum();
        if others > 0 {
            parts.push(format!("others {others}"));
        }
        let mut errors = format!("errors {}", self.errors);
        if let Some(e) = &self.last_error {
            errors.push_str(&format!(" (last: {e})"));
        }
        parts.push(errors);
        parts.join("   ")
    }
}

/// The sum of a metric's samples whose labels include every one of
/// `labels`, in Prometheus text (`name{a="b",...} value`).
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    crate::prom::parse(text)
        .iter()
        .filter(|s| s.name == name && labels.iter().all(|(k, v)| s.label(k) == *v))
        .map(|s| s.value)
        .sum()
}

/// Requests a server proxy took from `principal` over mutual TLS.
pub fn mtls_requests_from(text: &str, principal: &str) -> f64 {
    metric_sum(
        text,
        "outrigger_requests_total",
        &[
            ("direction", "inbound"),
            ("source_principal", principal),
            ("connection_security_policy", "mutual_tls"),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_told_apart_by_body_and_status() {
        assert_eq!(
            Answer::of(200, "hello from web-v2\n"),
            Answer::From("web-v2".into())
        );
        assert_eq!(
            Answer::of(503, "no healthy upstream"),
            Answer::Status(503, "no healthy upstream".into())
        );
        assert_eq!(Answer::of(200, "hi").workload(), None);
    }

    #[test]
    fn the_line_gives_each_version_its_share_and_the_last_error() {
        let mut t = Tally::default();
        for _ in 0..3 {
            t.add(&Answer::From("web-v1".into()));
        }
        t.add(&Answer::From("web-v2".into()));
        assert_eq!(
            t.line(&["web-v1", "web-v2"]),
            "web-v1   3 ( 75%)   web-v2   1 ( 25%)   errors 0"
        );
        t.add(&Answer::Status(503, "".into()));
        assert_eq!(
            t.line(&["web-v1", "web-v2"]),
            "web-v1   3 ( 60%)   web-v2   1 ( 20%)   errors 1 (last: HTTP 503)"
        );
        assert_eq!(
            Tally::default().line(&["web-v1"]),
            "web-v1   0 (  0%)   errors 0"
        );
    }

    #[test]
    fn metric_sums_match_labels_exactly_and_skip_other_names() {
        let text = "\
# HELP outrigger_requests_total Requests.
outrigger_requests_total{direction=\"inbound\",source_principal=\"spiffe://cluster.local/ns/demo/sa/client\",connection_security_policy=\"mutual_tls\",response_code=\"200\"} 7
outrigger_requests_total{direction=\"inbound\",source_principal=\"spiffe://cluster.local/ns/demo/sa/client\",connection_security_policy=\"mutual_tls\",response_code=\"503\"} 2
outrigger_requests_total{direction=\"inbound\",source_principal=\"unknown\",connection_security_policy=\"none\",response_code=\"200\"} 5
outrigger_requests_total_created{direction=\"inbound\"} 1
outrigger_cp_rejected_resources{kind=\"VirtualService\"} 1
outrigger_cp_manifest_errors 0
";
        assert_eq!(
            mtls_requests_from(text, "spiffe://cluster.local/ns/demo/sa/client"),
            9.0
        );
        assert_eq!(
            metric_sum(
                text,
                "outrigger_cp_rejected_resources",
                &[("kind", "VirtualService")]
            ),
            1.0
        );
        assert_eq!(metric_sum(text, "outrigger_cp_manifest_errors", &[]), 0.0);
        assert_eq!(metric_sum(text, "outrigger_requests_total", &[]), 14.0);
    }
}
