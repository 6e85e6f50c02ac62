//! Which text format a scraper asked for, and the classic Prometheus text
//! format (0.0.4) made from OpenMetrics text.
//!
//! `prometheus-client` encodes OpenMetrics text only. Prometheus asks for
//! OpenMetrics and gets it unchanged; every other scraper (`curl`,
//! `promtool check metrics`, older agents) gets the classic format, as the
//! Prometheus client libraries answer ([`Format::negotiate`]). The
//! conversion works on text, so it needs no metrics library.
//!
//! From OpenMetrics to classic, as the Python client library does it:
//! a counter family `x` becomes `x_total` (its samples are already named
//! so), an info family `x` becomes the gauge `x_info`, `unknown` becomes
//! `untyped`, a stateset a gauge, a gauge histogram a histogram; the
//! `_created`, `_gsum` and `_gcount` samples move into gauges of their own
//! after their family; `# UNIT` lines and `# EOF` go; exemplars go;
//! sample timestamps turn from seconds into milliseconds; in `# HELP`
//! text only `\\` and `\n` stay escaped.

use std::fmt::Write as _;

/// The classic text format's content type.
pub const CLASSIC_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// What `prometheus-client` writes.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A text exposition format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// The Prometheus text format, version 0.0.4.
    Classic,
    /// OpenMetrics text, version 1.0.0.
    OpenMetrics,
}

impl Format {
    /// The format for a request's `Accept` header values (all of them, in
    /// order), as the Go client library chooses (`expfmt`'s
    /// `NegotiateIncludingOpenMetrics`): media ranges by quality, highest
    /// first (ties in the order given); the first that is
    /// `application/openmetrics-text` (version `1.0.0`, `0.0.1` or none)
    /// or `text/plain` (version `0.0.4` or none) decides; wildcards and
    /// other types are passed over; with none of those, classic. A range
    /// with `q=0` is refused by the client, so it never decides.
    pub fn negotiate<'a>(accept: impl IntoIterator<Item = &'a str>) -> Format {
        let mut ranges: Vec<(f64, Option<Format>)> = accept
            .into_iter()
            .flat_map(|v| v.split(','))
            .filter_map(media_range)
            .filter(|(q, _)| *q > 0.0)
            .collect();
        // Stable: equal qualities keep the client's order.
        ranges.sort_by(|a, b| b.0.total_cmp(&a.0));
        ranges
            .into_iter()
            .find_map(|(_, f)| f)
            .unwrap_or(Format::Classic)
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Classic => CLASSIC_CONTENT_TYPE,
            Format::OpenMetrics => OPENMETRICS_CONTENT_TYPE,
        }
    }

    /// `openmetrics` (what `prometheus-client` encoded) in this format.
    pub fn render(self, openmetrics: String) -> Result<String, ExpositionError> {
        match self {
            Format::OpenMetrics => Ok(openmetrics),
            Format::Classic => to_classic(&openmetrics),
        }
    }
}

/// One media range of an `Accept` header: its quality, and the format it
/// names (`None`: one this module does not serve, or a wildcard).
fn media_range(range: &str) -> Option<(f64, Option<Format>)> {
    let mut parts = range.split(';');
    let media = parts.next()?.trim().to_ascii_lowercase();
    if media.is_empty() {
        return None;
    }
    let mut q = 1.0;
    let mut version = None;
    for p in parts {
        let Some((k, v)) = p.split_once('=') else {
            continue;
        };
        let v = v.trim().trim_matches('"');
        match k.trim().to_ascii_lowercase().as_str() {
            // An unreadable quality: the range is taken as refused.
            "q" => q = v.parse::<f64>().ok().filter(|q| (0.0..=1.0).contains(q))?,
            "version" => version = Some(v.to_string()),
            _ => {}
        }
    }
    let version = version.as_deref();
    let format = match media.as_str() {
        "application/openmetrics-text" if matches!(version, None | Some("1.0.0" | "0.0.1")) => {
            Some(Format::OpenMetrics)
        }
        "text/plain" if matches!(version, None | Some("0.0.4")) => Some(Format::Classic),
        _ => None,
    };
    Some((q, format))
}

/// OpenMetrics text that cannot be read, by line (1-based).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("OpenMetrics text, line {line}: {message}")]
pub struct ExpositionError {
    pub line: usize,
    pub message: String,
}

/// One metric family as read from OpenMetrics text.
struct Family {
    name: String,
    kind: String,
    /// Unescaped.
    help: Option<String>,
    samples: Vec<String>,
    /// `_created`, `_gsum`, `_gcount` samples: gauges of their own.
    moved: [Vec<String>; 3],
}

const MOVED: [&str; 3] = ["_created", "_gsum", "_gcount"];

impl Family {
    fn new(name: &str, kind: &str) -> Self {
        Family {
            name: name.to_string(),
            kind: kind.to_string(),
            help: None,
            samples: Vec::new(),
            moved: Default::default(),
        }
    }

    /// The suffixes a sample of this family may add to its name.
    fn suffixes(&self) -> &'static [&'static str] {
        match self.kind.as_str() {
            "counter" => &["_total", "_created"],
            "histogram" => &["_bucket", "_count", "_sum", "_created"],
            "gaugehistogram" => &["_bucket", "_gcount", "_gsum"],
            "summary" => &["", "_count", "_sum", "_created"],
            "info" => &["_info"],
            _ => &[""],
        }
    }

    fn owns(&self, sample: &str) -> bool {
        sample
            .strip_prefix(self.name.as_str())
            .is_some_and(|suffix| self.suffixes().contains(&suffix))
    }

    fn write_classic(&self, out: &mut String) {
        let (name, kind) = match self.kind.as_str() {
            "counter" => (format!("{}_total", self.name), "counter"),
            "info" => (format!("{}_info", self.name), "gauge"),
            "stateset" => (self.name.clone(), "gauge"),
            "gaugehistogram" => (self.name.clone(), "histogram"),
            "unknown" => (self.name.clone(), "untyped"),
            other => (self.name.clone(), other),
        };
        let header = |out: &mut String, name: &str, kind: &str| {
            if let Some(help) = &self.help {
                let help = help.replace('\\', "\\\\").replace('\n', "\\n");
                let _ = writeln!(out, "# HELP {name} {help}");
            }
            let _ = writeln!(out, "# TYPE {name} {kind}");
        };
        header(out, &name, kind);
        for s in &self.samples {
            out.push_str(s);
            out.push('\n');
        }
        for (suffix, samples) in MOVED.iter().zip(&self.moved) {
            if samples.is_empty() {
                continue;
            }
            header(out, &format!("{}{suffix}", self.name), "gauge");
            for s in samples {
                out.push_str(s);
                out.push('\n');
            }
        }
    }
}

/// OpenMetrics text in the classic Prometheus text format (0.0.4).
pub fn to_classic(openmetrics: &str) -> Result<String, ExpositionError> {
    let mut families: Vec<Family> = Vec::new();
    for (i, line) in openmetrics.lines().enumerate() {
        let err = |message: String| ExpositionError {
            line: i + 1,
            message,
        };
        if line == "# EOF" {
            break;
        }
        if line.is_empty() {
            continue;
        }
        if let Some(meta) = line.strip_prefix("# ") {
            let (keyword, rest) = meta.split_once(' ').unwrap_or((meta, ""));
            let (name, value) = rest.split_once(' ').unwrap_or((rest, ""));
            if name.is_empty() {
                return Err(err(format!("{keyword} line without a metric name")));
            }
            let current = match families.last_mut() {
                Some(f) if f.name == name => f,
                _ => {
                    families.push(Family::new(name, "unknown"));
                    families.last_mut().expect("pushed")
                }
            };
            match keyword {
                "TYPE" => current.kind = value.to_string(),
                "HELP" => current.help = Some(unescape_help(value).map_err(err)?),
                "UNIT" => {}
                other => return Err(err(format!("unknown metadata line \"# {other}\""))),
            }
            continue;
        }
        let sample = Sample::parse(line).map_err(err)?;
        let family = match families.last_mut() {
            Some(f) if f.owns(sample.name) => f,
            // A sample with no metadata before it: a family of its own,
            // of unknown type.
            _ => {
                families.push(Family::new(sample.name, "unknown"));
                families.last_mut().expect("pushed")
            }
        };
        let converted = sample.classic().map_err(err)?;
        let suffix = &sample.name[family.name.len()..];
        match MOVED.iter().position(|m| *m == suffix) {
            Some(k) => family.moved[k].push(converted),
            None => family.samples.push(converted),
        }
    }
    let mut out = String::with_capacity(openmetrics.len());
    for f in &families {
        f.write_classic(&mut out);
    }
    Ok(out)
}

/// OpenMetrics `# HELP` text: `\\`, `\n` and `\"` are escaped.
fn unescape_help(text: &str) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('\\') => out.push('\\'),
            Some('n') => out.push('\n'),
            Some('"') => out.push('"'),
            other => {
                return Err(format!(
                    "HELP text has an unknown escape \\{}",
                    other.map(String::from).unwrap_or_default()
                ))
            }
        }
    }
    Ok(out)
}

/// One sample line: `name{labels} value [timestamp] [# exemplar]`.
struct Sample<'a> {
    name: &'a str,
    /// `{...}` as written (label values escape alike in both formats), or "".
    labels: &'a str,
    value: &'a str,
    /// Seconds, as OpenMetrics writes them.
    timestamp: Option<&'a str>,
}

impl<'a> Sample<'a> {
    fn parse(line: &'a str) -> Result<Self, String> {
        let name_end = line
            .find(['{', ' '])
            .ok_or_else(|| format!("sample {line:?} has no value"))?;
        let name = &line[..name_end];
        if name.is_empty() {
            return Err(format!("sample {line:?} has no metric name"));
        }
        let (labels, rest) = if line[name_end..].starts_with('{') {
            let len = labels_len(&line[name_end..])
                .ok_or_else(|| format!("sample {name}: unterminated label set"))?;
            line[name_end..].split_at(len)
        } else {
            ("", &line[name_end..])
        };
        let rest = rest
            .strip_prefix(' ')
            .ok_or_else(|| format!("sample {name}: no space before its value"))?;
        // What follows ` # ` is an exemplar; it has no place in the
        // classic format.
        let (rest, _exemplar) = rest.split_once(" # ").unwrap_or((rest, ""));
        let mut tokens = rest.split(' ');
        let value = tokens.next().unwrap_or("");
        let timestamp = tokens.next();
        if let Some(extra) = tokens.next() {
            return Err(format!(
                "sample {name}: unexpected {extra:?} after the timestamp"
            ));
        }
        Ok(Sample {
            name,
            labels,
            value,
            timestamp,
        })
    }

    fn classic(&self) -> Result<String, String> {
        if self.value.parse::<f64>().is_err() {
            return Err(format!(
                "sample {}: {:?} is not a number",
                self.name, self.value
            ));
        }
        let mut out = format!("{}{} {}", self.name, self.labels, self.value);
        if let Some(ts) = self.timestamp {
            let seconds: f64 = ts
                .parse()
                .ok()
                .filter(|s: &f64| s.is_finite())
                .ok_or_else(|| format!("sample {}: timestamp {ts:?} is not a number", self.name))?;
            let _ = write!(out, " {}", (seconds * 1000.0).round() as i64);
        }
        Ok(out)
    }
}

/// The length of the `{...}` label set `s` starts with, quotes and their
/// escapes taken into account; `None` when it does not end.
fn labels_len(s: &str) -> Option<usize> {
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match (quoted, escaped, c) {
            (true, true, _) => escaped = false,
            (true, false, '\\') => escaped = true,
            (true, false, '"') => quoted = false,
            (false, _, '"') => quoted = true,
            (false, _, '}') => return Some(i + 1),
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_follows_the_client_libraries() {
        use Format::*;
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        for (accept, want) in [
            // What Prometheus 2.x sends: OpenMetrics first.
            (vec![prometheus], OpenMetrics),
            (vec![], Classic),
            (vec![""], Classic),
            (vec!["*/*"], Classic),
            (vec!["text/plain"], Classic),
            (vec!["text/plain; version=0.0.4"], Classic),
            (vec!["application/openmetrics-text"], OpenMetrics),
            (
                vec!["Application/OpenMetrics-Text; version=\"0.0.1\""],
                OpenMetrics,
            ),
            // A version this module does not write is passed over.
            (vec!["application/openmetrics-text; version=2.0.0"], Classic),
            (
                vec!["text/plain; version=1.0.0, application/openmetrics-text"],
                OpenMetrics,
            ),
            // By quality, whatever the order.
            (
                vec!["text/plain;q=0.5, application/openmetrics-text;q=0.9"],
                OpenMetrics,
            ),
            (
                vec!["application/openmetrics-text;q=0.5, text/plain"],
                Classic,
            ),
            // Equal quality: the client's order.
            (vec!["text/plain, application/openmetrics-text"], Classic),
            (
                vec!["application/openmetrics-text, text/plain"],
                OpenMetrics,
            ),
            // Wildcards do not decide (as in the Go library).
            (vec!["*/*, application/openmetrics-text;q=0.2"], OpenMetrics),
            // q=0 refuses.
            (vec!["application/openmetrics-text;q=0"], Classic),
            (vec!["application/openmetrics-text;q=bad"], Classic),
            (vec!["application/json"], Classic),
            // Several Accept header lines count as one list.
            (
                vec!["text/html;q=0.9", "application/openmetrics-text"],
                OpenMetrics,
            ),
        ] {
            assert_eq!(
                Format::negotiate(accept.iter().copied()),
                want,
                "{accept:?}"
            );
        }
        assert_eq!(
            Classic.content_type(),
            "text/plain; version=0.0.4; charset=utf-8"
        );
        assert!(OpenMetrics
            .content_type()
            .starts_with("application/openmetrics-text; version=1.0.0"));
    }

    #[test]
    fn every_family_type_converts_as_the_client_libraries_do() {
        let om = concat!(
            "# HELP requests Requests \\\"served\\\", \\\\ and\\nmore.\n",
            "# TYPE requests counter\n",
            "requests_total{code=\"200\",path=\"a\\\"} b{c=\\\"1\\\\\\n\"} 3\n",
            "requests_created{code=\"200\",path=\"x\"} 1700000000.5\n",
            "# HELP size_bytes Bytes.\n",
            "# TYPE size_bytes counter\n",
            "# UNIT size_bytes bytes\n",
            "size_bytes_total 1.5e3 # {trace_id=\"ab # c\"} 1.0 1700000000.25\n",
            "# HELP up Whether up.\n",
            "# TYPE up gauge\n",
            "up -1 1700000000.123\n",
            "# HELP build Build.\n",
            "# TYPE build info\n",
            "build_info{version=\"0.1.0\"} 1\n",
            "# HELP latency_seconds Latency.\n",
            "# TYPE latency_seconds histogram\n",
            "latency_seconds_sum 0.75\n",
            "latency_seconds_count 2\n",
            "latency_seconds_bucket{le=\"0.5\"} 1 # {id=\"x\"} 0.25\n",
            "latency_seconds_bucket{le=\"+Inf\"} 2\n",
            "# TYPE queue gaugehistogram\n",
            "queue_bucket{le=\"+Inf\"} 4\n",
            "queue_gcount 4\n",
            "queue_gsum 9\n",
            "# TYPE state stateset\n",
            "state{state=\"a\"} 1\n",
            "# TYPE rpc summary\n",
            "rpc{quantile=\"0.5\"} NaN\n",
            "rpc_sum +Inf\n",
            "rpc_count 0\n",
            "# TYPE mystery unknown\n",
            "mystery 7\n",
            "stray_metric 2\n",
            "# EOF\n",
        );
        let want = concat!(
            "# HELP requests_total Requests \"served\", \\\\ and\\nmore.\n",
            "# TYPE requests_total counter\n",
            "requests_total{code=\"200\",path=\"a\\\"} b{c=\\\"1\\\\\\n\"} 3\n",
            "# HELP requests_created Requests \"served\", \\\\ and\\nmore.\n",
            "# TYPE requests_created gauge\n",
            "requests_created{code=\"200\",path=\"x\"} 1700000000.5\n",
            "# HELP size_bytes_total Bytes.\n",
            "# TYPE size_bytes_total counter\n",
            "size_bytes_total 1.5e3\n",
            "# HELP up Whether up.\n",
            "# TYPE up gauge\n",
            "up -1 1700000000123\n",
            "# HELP build_info Build.\n",
            "# TYPE build_info gauge\n",
            "build_info{version=\"0.1.0\"} 1\n",
            "# HELP latency_seconds Latency.\n",
            "# TYPE latency_seconds histogram\n",
            "latency_seconds_sum 0.75\n",
            "latency_seconds_count 2\n",
            "latency_seconds_bucket{le=\"0.5\"} 1\n",
            "latency_seconds_bucket{le=\"+Inf\"} 2\n",
            "# TYPE queue histogram\n",
            "queue_bucket{le=\"+Inf\"} 4\n",
            "# TYPE queue_gsum gauge\n",
            "queue_gsum 9\n",
            "# TYPE queue_gcount gauge\n",
            "queue_gcount 4\n",
            "# TYPE state gauge\n",
            "state{state=\"a\"} 1\n",
            "# TYPE rpc summary\n",
            "rpc{quantile=\"0.5\"} NaN\n",
            "rpc_sum +Inf\n",
            "rpc_count 0\n",
            "# TYPE mystery untyped\n",
            "mystery 7\n",
            "# TYPE stray_metric untyped\n",
            "stray_metric 2\n",
        );
        let got = to_classic(om).unwrap();
        assert_eq!(got, want, "got:\n{got}");
        assert!(!got.contains("# EOF") && !got.contains("# UNIT"));
        assert_eq!(Format::OpenMetrics.render(om.into()).unwrap(), om);
        assert_eq!(Format::Classic.render(om.into()).unwrap(), want);
    }

    #[test]
    fn unreadable_text_is_an_error_naming_the_line() {
        for (om, line, want) in [
            ("# TYPE a counter\na_total\n", 2, "has no value"),
            ("# TYPE a gauge\na{x=\"1} 2\n", 2, "unterminated label set"),
            ("a{x=\"1\"}2\n", 1, "no space before its value"),
            ("a one\n", 1, "\"one\" is not a number"),
            ("a 1 2 3\n", 1, "unexpected \"3\""),
            ("a 1 soon\n", 1, "timestamp \"soon\""),
            ("# HELP a x\\ty\n", 1, "unknown escape \\t"),
            ("# NOTE a b\n", 1, "unknown metadata line"),
            ("# TYPE\n", 1, "without a metric name"),
        ] {
            let e = to_classic(om).unwrap_err();
            assert_eq!(e.line, line, "{om:?}: {e}");
            assert!(e.to_string().contains(want), "{om:?}: {e}");
        }
    }
}
