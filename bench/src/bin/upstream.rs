//! A small, fast HTTP/1.1 + HTTP/2 (prior knowledge) upstream for the demo and
//! the benchmark.
//!
//! - `GET /` (any other path too): a fixed short body naming this server
//! - `/echo`: the request body streamed back
//! - `/bytes/N`: N bytes of `x`

use std::convert::Infallible;
use std::net::SocketAddr;

use anyhow::Context;
use bytes::Bytes;
use clap::Parser;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;

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
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn respond(req: Request<Incoming>, hello: Bytes) -> Response<Body> {
    let path = req.uri().path();
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
