//! The `/metrics` answer of all three binaries: a `prometheus-client`
//! registry encoded as OpenMetrics text, then served in the format the
//! scraper asked for ([`exposition`]). Each binary keeps its own registry
//! and families; only the encoding, the answer, and the families every
//! binary has ([`register_build_and_process`]: `outrigger_build_info` and
//! the `process_*` families of [`process`]) are shared.

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Response, StatusCode};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

pub mod exposition;
pub mod listener;
pub mod process;

pub use exposition::{ExpositionError, Format};

/// Every family of `registry`, as OpenMetrics text.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::with_capacity(16 * 1024);
    prometheus_client::encoding::text::encode(&mut out, registry)
        .expect("writing to a String cannot fail");
    out
}

/// The labels of `outrigger_build_info`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct BuildLabels {
    pub version: &'static str,
    pub git_sha: &'static str,
}

/// Registers what every binary exposes besides its own families:
/// `outrigger_build_info{version, git_sha}` (a gauge, always 1; see
/// [`crate::build`]) and the `process_*` families, read from `/proc` at
/// each scrape ([`process::ProcessCollector`]).
pub fn register_build_and_process(registry: &mut Registry) {
    let build = Family::<BuildLabels, Gauge>::default();
    build
        .get_or_create(&BuildLabels {
            version: crate::build::VERSION,
            git_sha: crate::build::GIT_SHA,
        })
        .set(1);
    registry.register(
        "outrigger_build_info",
        "The version and commit of this binary; always 1",
        build,
    );
    registry.register_collector(Box::new(process::ProcessCollector));
}

/// The answer to `GET /metrics` with these request headers: `openmetrics`
/// (from [`encode`]) in the format the `Accept` headers ask for
/// ([`Format::negotiate`]), with its content type; a 500 naming the line
/// when the text cannot be converted.
pub fn answer(request: &HeaderMap, openmetrics: String) -> Response<Bytes> {
    let format = Format::negotiate(
        request
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok()),
    );
    let (status, content_type, body) = match format.render(openmetrics) {
        Ok(body) => (StatusCode::OK, format.content_type(), body),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain; charset=utf-8",
            format!("{e}\n"),
        ),
    };
    let mut r = Response::new(Bytes::from(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;

    fn registry() -> Registry {
        let mut reg = Registry::default();
        let c = Counter::<u64>::default();
        c.inc();
        reg.register("outrigger_things", "Things", c);
        reg
    }

    #[test]
    fn prometheus_gets_openmetrics_and_others_the_classic_format() {
        let text = encode(&registry());
        let mut prometheus = HeaderMap::new();
        prometheus.insert(
            header::ACCEPT,
            HeaderValue::from_static(
                "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
            ),
        );
        let r = answer(&prometheus, text.clone());
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(
            r.headers()[header::CONTENT_TYPE],
            exposition::OPENMETRICS_CONTENT_TYPE
        );
        assert_eq!(r.body(), text.as_bytes());

        let r = answer(&HeaderMap::new(), text);
        assert_eq!(
            r.headers()[header::CONTENT_TYPE],
            exposition::CLASSIC_CONTENT_TYPE
        );
        let body = std::str::from_utf8(r.body()).unwrap();
        assert!(
            body.contains("# TYPE outrigger_things_total counter\n"),
            "{body}"
        );
        assert!(body.contains("outrigger_things_total 1\n"), "{body}");
        assert!(!body.contains("# EOF"), "{body}");
    }

    #[test]
    fn build_info_and_process_families_are_in_every_scrape() {
        let mut reg = registry();
        register_build_and_process(&mut reg);
        let text = encode(&reg);
        let want = format!(
            "# TYPE outrigger_build_info gauge\noutrigger_build_info{{version=\"{}\",git_sha=\"{}\"}} 1\n",
            crate::build::VERSION,
            crate::build::GIT_SHA
        );
        assert!(text.contains(&want), "{want} in\n{text}");
        assert!(text.contains("outrigger_things_total 1\n"), "{text}");
        assert!(text.contains("\nprocess_open_fds "), "{text}");
    }

    #[test]
    fn unreadable_text_is_a_500_that_names_the_line() {
        let r = answer(
            &HeaderMap::new(),
            "# TYPE x counter\nnot a sample at all {\n".into(),
        );
        assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            r.headers()[header::CONTENT_TYPE],
            "text/plain; charset=utf-8"
        );
        assert!(
            std::str::from_utf8(r.body()).unwrap().contains("line"),
            "{:?}",
            r.body()
        );
    }
}
