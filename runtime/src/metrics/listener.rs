//! A plaintext listener that serves `GET /metrics` and nothing else, for a
//! binary whose main port a verifying Prometheus cannot scrape (the
//! control plane's is TLS with a URI-only certificate), as istiod serves
//! its metrics on a port of their own.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::drain::Watch;
use crate::serve;

/// The answer to `req`: [`super::answer`] for `GET /metrics` (with the
/// text `encode` gives at that moment), 404 for other paths, 405 for
/// other methods on `/metrics`.
pub fn route<B>(req: &Request<B>, encode: &dyn Fn() -> String) -> Response<Bytes> {
    let plain = |status: StatusCode, text: String| {
        let mut r = Response::new(Bytes::from(text));
        *r.status_mut() = status;
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        r
    };
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => super::answer(req.headers(), encode()),
        (_, "/metrics") => plain(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{} /metrics: only GET is served here\n", req.method()),
        ),
        (_, path) => plain(
            StatusCode::NOT_FOUND,
            format!("no such endpoint: {path} (this port serves /metrics only)\n"),
        ),
    }
}

/// Serves `GET /metrics` over plain HTTP/1.1 on `listener` until `stop`
/// fires; `encode` gives the text at each scrape.
pub async fn serve_metrics<F>(listener: TcpListener, stop: Watch, encode: F)
where
    F: Fn() -> String + Send + Sync + 'static,
{
    let encode = Arc::new(encode);
    let connections = stop.clone();
    serve::accept(listener, stop, "metrics listener", move |tcp, peer| {
        let encode = encode.clone();
        let stop = connections.clone();
        async move {
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let r = route(&req, &*encode).map(Full::new);
                async move { Ok::<_, Infallible>(r) }
            });
            let conn = serve::http1().serve_connection(TokioIo::new(tcp), svc);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(%peer, error = %e, "metrics connection ended");
                    }
                }
                _ = stop.signaled() => {}
            }
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(method: Method, path: &str) -> Response<Bytes> {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .body(())
            .unwrap();
        route(&req, &|| "# TYPE up gauge\nup 1\n# EOF\n".to_string())
    }

    #[test]
    fn only_get_metrics_is_served() {
        let r = get(Method::GET, "/metrics");
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.body(), "# TYPE up gauge\nup 1\n".as_bytes());
        let r = get(Method::POST, "/metrics");
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
        let r = get(Method::GET, "/v1/config");
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        assert_eq!(
            r.body(),
            "no such endpoint: /v1/config (this port serves /metrics only)\n".as_bytes()
        );
    }

    #[tokio::test]
    async fn a_scrape_over_plain_http() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (signal, watch) = crate::drain::channel();
        let server = tokio::spawn(serve_metrics(listener, watch, || {
            "# TYPE up gauge\nup 1\n# EOF\n".into()
        }));
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tcp.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        tcp.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(
            answer.ends_with("\r\n\r\n# TYPE up gauge\nup 1\n"),
            "{answer}"
        );
        signal.stop();
        server.await.unwrap();
    }
}
