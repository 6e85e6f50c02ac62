//! The `/metrics` answer of all three binaries: a `prometheus-client`
//! registry encoded as OpenMetrics text, then served in the format the
//! scraper asked for ([`exposition`]). Each binary keeps its own registry
//! and families; only the encoding and the answer are shared.

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Response, StatusCode};
use prometheus_client::registry::Registry;

pub mod exposition;

pub use exposition::{ExpositionError, Format};

/// Every family of `registry`, as OpenMetrics text.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::with_capacity(16 * 1024);
    prometheus_client::encoding::text::encode(&mut out, registry)
        .expect("writing to a String cannot fail");
    out
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
