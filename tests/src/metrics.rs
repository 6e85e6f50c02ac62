//! Reading Prometheus text: a proxy's `/metrics` ([`scrape`]), one
//! summed sample out of any exposition ([`metric`]), what is left of a
//! proxy's certificate ([`cert_left`]), and whether docs/metrics.md, the
//! metrics reference, has a row for every family of an exposition
//! ([`assert_documented`]).

use outrigger_proxy::Proxy;

use crate::clients::get;

/// The Prometheus text from a proxy's admin port.
pub async fn scrape(proxy: &Proxy) -> String {
    get(proxy.admin_addr, "/metrics").await.1
}

/// Seconds from now to the end of `proxy`'s certificate, as its own
/// `outrigger_identity_cert_expiry_timestamp_seconds` says (negative once
/// past), or None while it has none.
pub async fn cert_left(proxy: &Proxy) -> Option<f64> {
    let at = metric(
        &scrape(proxy).await,
        "outrigger_identity_cert_expiry_timestamp_seconds",
        &[],
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs_f64();
    (at > 0.0).then_some(at - now)
}

/// The value of the sample `name{...}` whose labels include every pair in
/// `labels`, summed over all such samples; 0 when there is none.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = series.split_once('{').unwrap_or((series, "}"));
            if n != name {
                return None;
            }
            let rest = rest.strip_suffix('}')?;
            // Whole `key="value"` pairs only: `,` before each key, so that
            // `workload` never matches inside `source_workload`.
            let rest = format!(",{rest}");
            labels
                .iter()
                .all(|(k, v)| rest.contains(&format!(",{k}=\"{v}\"")))
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

/// Family name (as queried: counters with `_total`) → type, from the
/// `# TYPE` lines of an exposition in either text format. Families with no
/// series yet are not listed (prometheus-client writes none).
pub fn families(text: &str) -> std::collections::BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| {
            let (name, kind) = l.split_once(' ').expect("# TYPE name type");
            let name = match kind {
                "counter" if !name.ends_with("_total") => format!("{name}_total"),
                _ => name.to_string(),
            };
            (name, kind.to_string())
        })
        .collect()
}

/// The rows of docs/metrics.md's tables: family → type column.
pub fn documented() -> std::collections::BTreeMap<String, String> {
    let doc = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/metrics.md"),
    )
    .expect("docs/metrics.md");
    doc.lines()
        .filter_map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            let name = cells.get(1)?.strip_prefix('`')?.strip_suffix('`')?;
            Some((name.to_string(), cells.get(2)?.to_string()))
        })
        .collect()
}

/// Panics unless every family `who` exposes in `text` has a row in
/// docs/metrics.md with its type; returns how many families it checked.
pub fn assert_documented(who: &str, text: &str) -> usize {
    let docs = documented();
    let found = families(text);
    for (name, kind) in &found {
        match docs.get(name) {
            Some(t) => assert_eq!(
                t, kind,
                "docs/metrics.md gives {name} ({who}) the wrong type"
            ),
            None => panic!("{who}'s family {name} ({kind}) has no row in docs/metrics.md"),
        }
    }
    found.len()
}

#[cfg(test)]
mod tests {
    use super::metric;

    #[test]
    fn metric_sums_matching_samples() {
        let text = "# HELP x y\nx_total{a=\"1\",b=\"2\"} 3\nx_total{a=\"1\",b=\"3\"} 4\ny_total{a=\"1\"} 9\n";
        assert_eq!(metric(text, "x_total", &[("a", "1")]), 7.0);
        assert_eq!(metric(text, "x_total", &[("b", "3")]), 4.0);
        assert_eq!(metric(text, "x_total", &[("b", "9")]), 0.0);
        assert_eq!(metric(text, "z_total", &[]), 0.0);
        let text = "w_total{source_workload=\"a\",destination_workload=\"b\"} 1\n";
        assert_eq!(metric(text, "w_total", &[("workload", "a")]), 0.0);
        assert_eq!(
            metric(text, "w_total", &[("destination_workload", "b")]),
            1.0
        );
    }
}
