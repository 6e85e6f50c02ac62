//! A small, fast HTTP/1.1 + HTTP/2 (prior knowledge) upstream for the demo and
//! the benchmark.
//!
//! - `GET /` (any other path too): a fixed short body naming this server
//! - `/echo`: the request body streamed back
//! - `/bytes/N`: N bytes of `x`
//! - `/ws` with `Upgrade: websocket`: a WebSocket that echoes every message
//! - `content-type: application/grpc` (any path): every request message (gRPC's
//!   5-byte length-prefixed framing) echoed back as it arrives, then the
//!   trailers `grpc-status: 0`: a bidirectional echo stream without codegen
//! - `--tcp-echo ADDR`: a second listener echoing raw bytes (opaque TCP)

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use anyhow::Context as _;
use bytes::Bytes;
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Message, Role};
use tokio_tungstenite::WebSocketStream;

#[derive(Parser)]
#[command(about = "Demo and benchmark upstream: HTTP/1.1 and HTTP/2 on one port")]
struct Args {
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Named in every default response (`hello from NAME`).
    #[arg(long, default_value = "upstream")]
    name: String,
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Also listen here for raw TCP and echo every byte back.
    #[arg(long)]
    tcp_echo: Option<SocketAddr>,
}

type Body = UnsyncBoxBody<Bytes, hyper::Error>;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()?
        .block_on(serve(args))
}

async fn serve(args: Args) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    eprintln!(
        "upstream {:?} listening on {}",
        args.name,
        listener.local_addr()?
    );
    if let Some(addr) = args.tcp_echo {
        let echo = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the TCP echo listener {addr}"))?;
        eprintln!("upstream TCP echo listening on {}", echo.local_addr()?);
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = echo.accept().await {
                tokio::spawn(async move {
                    let _ = stream.set_nodelay(true);
                    let (mut r, mut w) = stream.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
    }
    let hello = Bytes::from(format!("hello from {}\n", args.name));
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let hello = hello.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let hello = hello.clone();
                async move { Ok::<_, Infallible>(respond(req, hello)) }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn respond(req: Request<Incoming>, hello: Bytes) -> Response<Body> {
    let path = req.uri().path();
    if path == "/ws" {
        return websocket(req);
    }
    if req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
    {
        let mut response = Response::new(
            GrpcEcho {
                body: req.into_body(),
                trailers_sent: false,
            }
            .boxed_unsync(),
        );
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/grpc"),
        );
        return response;
    }
    if path == "/echo" {
        return Response::new(req.into_body().boxed_unsync());
    }
    if let Some(n) = path
        .strip_prefix("/bytes/")
        .and_then(|n| n.parse::<usize>().ok())
    {
        let body = Bytes::from(vec![b'x'; n.min(64 << 20)]);
        return Response::new(
            Full::new(body)
                .map_err(|never| match never {})
                .boxed_unsync(),
        );
    }
    Response::new(
        Full::new(hello)
            .map_err(|never| match never {})
            .boxed_unsync(),
    )
}

fn empty(status: http::StatusCode) -> Response<Body> {
    let mut response = Response::new(
        Full::new(Bytes::new())
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *response.status_mut() = status;
    response
}

/// Answers a WebSocket upgrade with 101 and echoes every message on the
/// upgraded connection until the client closes it.
fn websocket(mut req: Request<Incoming>) -> Response<Body> {
    let Some(key) = req.headers().get(http::header::SEC_WEBSOCKET_KEY) else {
        return empty(http::StatusCode::BAD_REQUEST);
    };
    let accept = derive_accept_key(key.as_bytes());
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let mut ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        // Pings are answered by tungstenite itself; a close ends the loop
        // once tungstenite has answered it.
        while let Some(Ok(msg)) = ws.next().await {
            let echo = matches!(msg, Message::Text(_) | Message::Binary(_));
            if echo && ws.send(msg).await.is_err() {
                return;
            }
        }
    });
    let mut response = empty(http::StatusCode::SWITCHING_PROTOCOLS);
    let h = response.headers_mut();
    h.insert(
        http::header::UPGRADE,
        http::HeaderValue::from_static("websocket"),
    );
    h.insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("upgrade"),
    );
    if let Ok(v) = http::HeaderValue::from_str(&accept) {
        h.insert(http::header::SEC_WEBSOCKET_ACCEPT, v);
    }
    response
}

/// The request body's data frames passed back unchanged (gRPC messages are
/// length-prefixed, so each one comes back whole and in order), then the
/// trailers `grpc-status: 0`.
struct GrpcEcho {
    body: Incoming,
    trailers_sent: bool,
}

impl hyper::body::Body for GrpcEcho {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        if self.trailers_sent {
            return Poll::Ready(None);
        }
        loop {
            return match Pin::new(&mut self.body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => Poll::Ready(Some(Ok(Frame::data(data)))),
                    // The request's own trailers are not echoed.
                    Err(_) => continue,
                },
                Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => {
                    self.trailers_sent = true;
                    let mut trailers = http::HeaderMap::new();
                    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                    Poll::Ready(Some(Ok(Frame::trailers(trailers))))
                }
                Poll::Pending => Poll::Pending,
            };
        }
    }
}
