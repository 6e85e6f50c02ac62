//! gRPC through the mesh: a real tonic server behind the inbound proxy and a
//! real tonic client in front of the outbound proxy.
//!
//! There is no `protoc` here, so the service is written the way generated code
//! would be, by hand: prost messages, a small prost codec, per-method handlers
//! built on `tonic::server::Grpc`, and a routing `Service` with a
//! `NamedService` name. The client drives `tonic::client::Grpc` directly.

use std::convert::Infallible;
use std::future::Future;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::StreamExt;
use http::uri::PathAndQuery;
use outrigger_tests::{eventually, metric, scrape, Mesh};
use tokio::net::TcpListener;
use tokio::time::timeout;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder, Streaming};
use tonic::codegen::Service;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::server::{
    ClientStreamingService, Grpc, NamedService, ServerStreamingService, StreamingService,
    UnaryService,
};
use tonic::transport::{Channel, Endpoint, Server};
use tonic::{Code, Request, Response, Status};

const LIMIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------
// Messages (what `prost-build` would generate from a tiny .proto).
// ---------------------------------------------------------------------------

/// `message Ask { string name = 1; uint32 count = 2; uint32 payload_len = 3; }`
#[derive(Clone, PartialEq, prost::Message)]
pub struct Ask {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(uint32, tag = "2")]
    pub count: u32,
    #[prost(uint32, tag = "3")]
    pub payload_len: u32,
}

/// `message Answer { string text = 1; uint32 seq = 2; bytes payload = 3; }`
#[derive(Clone, PartialEq, prost::Message)]
pub struct Answer {
    #[prost(string, tag = "1")]
    pub text: String,
    #[prost(uint32, tag = "2")]
    pub seq: u32,
    #[prost(bytes = "vec", tag = "3")]
    pub payload: Vec<u8>,
}

fn ask(name: &str) -> Ask {
    Ask {
        name: name.to_string(),
        ..Ask::default()
    }
}

// ---------------------------------------------------------------------------
// A prost codec: tonic 0.14 moved its own into a separate crate, and this one
// is all a test needs.
// ---------------------------------------------------------------------------

/// Encodes `E`, decodes `D`.
struct Proto<E, D>(PhantomData<fn(E) -> D>);

impl<E, D> Default for Proto<E, D> {
    fn default() -> Self {
        Proto(PhantomData)
    }
}

struct ProtoEncoder<E>(PhantomData<fn(E)>);
struct ProtoDecoder<D>(PhantomData<fn() -> D>);

impl<E, D> Codec for Proto<E, D>
where
    E: prost::Message + Send + 'static,
    D: prost::Message + Default + Send + 'static,
{
    type Encode = E;
    type Decode = D;
    type Encoder = ProtoEncoder<E>;
    type Decoder = ProtoDecoder<D>;

    fn encoder(&mut self) -> Self::Encoder {
        ProtoEncoder(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProtoDecoder(PhantomData)
    }
}

impl<E: prost::Message> Encoder for ProtoEncoder<E> {
    type Item = E;
    type Error = Status;

    fn encode(&mut self, item: E, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(dst)
            .map_err(|e| Status::internal(format!("encode: {e}")))
    }
}

impl<D: prost::Message + Default> Decoder for ProtoDecoder<D> {
    type Item = D;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<D>, Status> {
        D::decode(src)
            .map(Some)
            .map_err(|e| Status::internal(format!("decode: {e}")))
    }
}

// ---------------------------------------------------------------------------
// Server: `service Desk { rpc Greet(Ask) returns (Answer);
//   rpc Count(Ask) returns (stream Answer); rpc Tally(stream Ask) returns (Answer);
//   rpc Chat(stream Ask) returns (stream Answer); }`
// ---------------------------------------------------------------------------

const SERVICE: &str = "outrigger.test.Desk";
const GREET: &str = "/outrigger.test.Desk/Greet";
const COUNT: &str = "/outrigger.test.Desk/Count";
const TALLY: &str = "/outrigger.test.Desk/Tally";
const CHAT: &str = "/outrigger.test.Desk/Chat";

type BoxFuture<T> = Pin<Box<dyn Future<Output = Result<T, Status>> + Send + 'static>>;
type AnswerStream = Pin<Box<dyn futures_util::Stream<Item = Result<Answer, Status>> + Send>>;

/// The message the server attaches (as binary details and as custom
/// metadata) to the NOT_FOUND it returns for the name `nobody`.
const DETAILS: &[u8] = b"\x00\x01details\xff";

/// Unary: greets by name; `nobody` is NOT_FOUND, `broken` is INTERNAL.
struct Greet;

impl UnaryService<Ask> for Greet {
    type Response = Answer;
    type Future = BoxFuture<Response<Answer>>;

    fn call(&mut self, req: Request<Ask>) -> Self::Future {
        Box::pin(async move {
            let tag = req.metadata().get("x-tag").cloned();
            let ask = req.into_inner();
            match ask.name.as_str() {
                "nobody" => {
                    let mut md = MetadataMap::new();
                    md.insert("x-why", MetadataValue::from_static("not in the directory"));
                    Err(Status::with_details_and_metadata(
                        Code::NotFound,
                        "no such person: nobody",
                        DETAILS.to_vec().into(),
                        md,
                    ))
                }
                "broken" => Err(Status::internal("the desk is on fire")),
                name => {
                    let mut resp = Response::new(Answer {
                        text: format!("hello {name}"),
                        seq: 0,
                        payload: vec![],
                    });
                    if let Some(tag) = tag {
                        resp.metadata_mut().insert("x-tag-seen", tag);
                    }
                    Ok(resp)
                }
            }
        })
    }
}

/// Server streaming: `count` answers numbered 0.., each with `payload_len`
/// bytes of a pattern that depends on the number.
struct Count;

fn pattern(seq: u32, len: u32) -> Vec<u8> {
    (0..len).map(|i| (i.wrapping_mul(31) ^ seq) as u8).collect()
}

impl ServerStreamingService<Ask> for Count {
    type Response = Answer;
    type ResponseStream = AnswerStream;
    type Future = BoxFuture<Response<AnswerStream>>;

    fn call(&mut self, req: Request<Ask>) -> Self::Future {
        Box::pin(async move {
            let ask = req.into_inner();
            let name = ask.name.clone();
            let stream = futures_util::stream::iter(0..ask.count).map(move |seq| {
                Ok(Answer {
                    text: format!("{name} #{seq}"),
                    seq,
                    payload: pattern(seq, ask.payload_len),
                })
            });
            Ok(Response::new(Box::pin(stream) as AnswerStream))
        })
    }
}

/// Client streaming: reads every message, answers with how many came and the
/// names joined in arrival order.
struct Tally;

impl ClientStreamingService<Ask> for Tally {
    type Response = Answer;
    type Future = BoxFuture<Response<Answer>>;

    fn call(&mut self, req: Request<Streaming<Ask>>) -> Self::Future {
        Box::pin(async move {
            let mut incoming = req.into_inner();
            let mut names = Vec::new();
            while let Some(ask) = incoming.message().await? {
                names.push(ask.name);
            }
            Ok(Response::new(Answer {
                text: names.join(","),
                seq: names.len() as u32,
                payload: vec![],
            }))
        })
    }
}

/// Bidirectional: answers each message as it arrives.
struct Chat;

impl StreamingService<Ask> for Chat {
    type Response = Answer;
    type ResponseStream = AnswerStream;
    type Future = BoxFuture<Response<AnswerStream>>;

    fn call(&mut self, req: Request<Streaming<Ask>>) -> Self::Future {
        Box::pin(async move {
            let incoming = req.into_inner();
            let out = incoming.enumerate().map(|(i, ask)| {
                ask.map(|ask| Answer {
                    text: format!("re: {}", ask.name),
                    seq: i as u32,
                    payload: vec![],
                })
            });
            Ok(Response::new(Box::pin(out) as AnswerStream))
        })
    }
}

/// Routes a request to its method, as generated server code does.
#[derive(Clone)]
struct DeskServer;

impl NamedService for DeskServer {
    const NAME: &'static str = SERVICE;
}

impl Service<http::Request<tonic::body::Body>> for DeskServer {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let codec = Proto::<Answer, Ask>::default;
        match req.uri().path() {
            GREET => Box::pin(async move { Ok(Grpc::new(codec()).unary(Greet, req).await) }),
            COUNT => {
                Box::pin(async move { Ok(Grpc::new(codec()).server_streaming(Count, req).await) })
            }
            TALLY => {
                Box::pin(async move { Ok(Grpc::new(codec()).client_streaming(Tally, req).await) })
            }
            CHAT => Box::pin(async move { Ok(Grpc::new(codec()).streaming(Chat, req).await) }),
            _ => Box::pin(async { Ok(Status::unimplemented("no such method").into_http()) }),
        }
    }
}

/// Serves the desk on a fresh loopback port; bound before this returns.
async fn desk() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        Server::builder()
            .add_service(DeskServer)
            .serve_with_incoming(TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    addr
}

// ---------------------------------------------------------------------------
// Client.
// ---------------------------------------------------------------------------

type Client = tonic::client::Grpc<Channel>;

/// A gRPC client whose channel goes to the outbound proxy, addressing the
/// service by its mesh name.
async fn client(mesh: &Mesh) -> Client {
    let channel = Endpoint::from_shared(format!("http://{}", mesh.outbound()))
        .unwrap()
        .origin("http://web.shop:80".parse().unwrap())
        .connect_timeout(LIMIT)
        .connect()
        .await
        .expect("channel to the outbound proxy");
    tonic::client::Grpc::new(channel)
}

async fn greet(c: &mut Client, req: Request<Ask>) -> Result<Response<Answer>, Status> {
    c.ready().await.unwrap();
    c.unary(
        req,
        PathAndQuery::from_static(GREET),
        Proto::<Ask, Answer>::default(),
    )
    .await
}

async fn count(c: &mut Client, name: &str, n: u32, payload_len: u32) -> Vec<Answer> {
    c.ready().await.unwrap();
    let resp = c
        .server_streaming(
            Request::new(Ask {
                name: name.to_string(),
                count: n,
                payload_len,
            }),
            PathAndQuery::from_static(COUNT),
            Proto::<Ask, Answer>::default(),
        )
        .await
        .expect("the stream starts");
    let mut stream = resp.into_inner();
    let mut got = Vec::new();
    while let Some(a) = stream.message().await.expect("every message arrives") {
        got.push(a);
    }
    // `message()` gives `Ok(None)` only once the trailers said OK: a stream
    // cut short, or ending with another status, is an error above.
    got
}

fn grpc_requests(text: &str, direction: &str, status: &str) -> f64 {
    metric(
        text,
        "outrigger_requests_total",
        &[("direction", direction), ("grpc_response_status", status)],
    )
}

// ---------------------------------------------------------------------------
// Tests.
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unary_call_crosses_both_proxies() {
    let mesh = Mesh::start(desk().await).await;
    timeout(LIMIT, async {
        let mut c = client(&mesh).await;
        let mut req = Request::new(ask("ada"));
        req.metadata_mut()
            .insert("x-tag", MetadataValue::from_static("t-42"));
        let resp = greet(&mut c, req).await.expect("the call succeeds");
        assert_eq!(
            resp.metadata().get("x-tag-seen").unwrap(),
            "t-42",
            "request metadata reached the server and response metadata came back"
        );
        assert_eq!(resp.into_inner().text, "hello ada");

        // The same channel (one HTTP/2 connection) carries several calls.
        for name in ["bob", "cy", "dee"] {
            let a = greet(&mut c, Request::new(ask(name))).await.unwrap();
            assert_eq!(a.into_inner().text, format!("hello {name}"));
        }
    })
    .await
    .expect("calls finish in time");

    let ok = eventually(LIMIT, || async {
        grpc_requests(&scrape(&mesh.client).await, "outbound", "0") == 4.0
    })
    .await;
    assert!(ok, "{}", scrape(&mesh.client).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_status_reaches_the_client_with_its_code_message_and_details() {
    let mesh = Mesh::start(desk().await).await;
    timeout(LIMIT, async {
        let mut c = client(&mesh).await;

        let status = greet(&mut c, Request::new(ask("nobody")))
            .await
            .expect_err("nobody is not found");
        assert_eq!(status.code(), Code::NotFound, "{status:?}");
        assert_eq!(status.message(), "no such person: nobody");
        assert_eq!(
            status.details(),
            DETAILS,
            "binary details (grpc-status-details-bin) intact"
        );
        assert_eq!(
            status.metadata().get("x-why").unwrap(),
            "not in the directory",
            "custom metadata on an error response"
        );

        let status = greet(&mut c, Request::new(ask("broken")))
            .await
            .expect_err("broken fails");
        assert_eq!(status.code(), Code::Internal, "{status:?}");
        assert_eq!(status.message(), "the desk is on fire");

        c.ready().await.unwrap();
        let unknown = c
            .unary(
                Request::new(ask("x")),
                PathAndQuery::from_static("/outrigger.test.Desk/Nope"),
                Proto::<Ask, Answer>::default(),
            )
            .await
            .expect_err("unknown method");
        assert_eq!(unknown.code(), Code::Unimplemented, "{unknown:?}");

        // The channel is still good after errors.
        let a = greet(&mut c, Request::new(ask("eve"))).await.unwrap();
        assert_eq!(a.into_inner().text, "hello eve");
    })
    .await
    .expect("calls finish in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_stream_arrives_complete_and_in_order() {
    let mesh = Mesh::start(desk().await).await;
    timeout(LIMIT, async {
        let mut c = client(&mesh).await;

        let got = count(&mut c, "small", 50, 0).await;
        assert_eq!(got.len(), 50);
        for (i, a) in got.iter().enumerate() {
            assert_eq!(a.seq, i as u32);
            assert_eq!(a.text, format!("small #{i}"));
        }

        // Large enough (50 × 64 KiB) to need HTTP/2 flow control on every hop.
        let got = count(&mut c, "big", 50, 64 * 1024).await;
        assert_eq!(got.len(), 50);
        for (i, a) in got.iter().enumerate() {
            assert_eq!(a.seq, i as u32);
            assert!(
                a.payload == pattern(i as u32, 64 * 1024),
                "payload {i} intact"
            );
        }

        // An empty stream is just an OK status.
        assert!(count(&mut c, "none", 0, 0).await.is_empty());
    })
    .await
    .expect("streams finish in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_stream_arrives_complete_and_in_order() {
    let mesh = Mesh::start(desk().await).await;
    timeout(LIMIT, async {
        let mut c = client(&mesh).await;
        let names: Vec<String> = (0..100).map(|i| format!("n{i}")).collect();
        let asks: Vec<Ask> = names.iter().map(|n| ask(n)).collect();
        c.ready().await.unwrap();
        let resp = c
            .client_streaming(
                Request::new(futures_util::stream::iter(asks)),
                PathAndQuery::from_static(TALLY),
                Proto::<Ask, Answer>::default(),
            )
            .await
            .expect("the tally succeeds")
            .into_inner();
        assert_eq!(resp.seq, 100);
        assert_eq!(resp.text, names.join(","));
    })
    .await
    .expect("the call finishes in time");
}

/// Each message is sent only after the answer to the previous one arrived:
/// this only works if every hop forwards stream frames as they come, in both
/// directions at once, rather than waiting for a body to end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bidirectional_stream_is_full_duplex_through_the_mesh() {
    let mesh = Mesh::start(desk().await).await;
    timeout(LIMIT, async {
        let mut c = client(&mesh).await;
        let (tx, rx) = tokio::sync::mpsc::channel::<Ask>(1);
        tx.send(ask("first")).await.unwrap();
        c.ready().await.unwrap();
        let resp = c
            .streaming(
                Request::new(ReceiverStream::new(rx)),
                PathAndQuery::from_static(CHAT),
                Proto::<Ask, Answer>::default(),
            )
            .await
            .expect("the chat starts");
        let mut answers = resp.into_inner();
        let a = answers.message().await.unwrap().expect("first answer");
        assert_eq!((a.seq, a.text.as_str()), (0, "re: first"));
        for i in 1..30u32 {
            tx.send(ask(&format!("m{i}"))).await.unwrap();
            let a = answers
                .message()
                .await
                .unwrap()
                .expect("an answer per message");
            assert_eq!(a.seq, i);
            assert_eq!(a.text, format!("re: m{i}"));
        }
        drop(tx);
        assert!(
            answers.message().await.expect("ends with OK").is_none(),
            "the server ends its stream after ours"
        );
    })
    .await
    .expect("the chat finishes in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_status_codes_are_counted_by_both_proxies() {
    let mesh = Mesh::start(desk().await).await;
    timeout(LIMIT, async {
        let mut c = client(&mesh).await;
        for name in ["a", "b", "c"] {
            greet(&mut c, Request::new(ask(name))).await.unwrap();
        }
        for _ in 0..2 {
            let s = greet(&mut c, Request::new(ask("nobody")))
                .await
                .unwrap_err();
            assert_eq!(s.code(), Code::NotFound);
        }
        let s = greet(&mut c, Request::new(ask("broken")))
            .await
            .unwrap_err();
        assert_eq!(s.code(), Code::Internal);
        // A stream's status comes only in its trailers.
        assert_eq!(count(&mut c, "s", 5, 10).await.len(), 5);
    })
    .await
    .expect("calls finish in time");

    let expect = [("0", 4.0), ("5", 2.0), ("13", 1.0)];
    for (proxy, direction) in [(&mesh.client, "outbound"), (&mesh.server, "inbound")] {
        let ok = eventually(LIMIT, || async {
            let text = scrape(proxy).await;
            expect
                .iter()
                .all(|(code, n)| grpc_requests(&text, direction, code) == *n)
        })
        .await;
        let text = scrape(proxy).await;
        let seen: Vec<(&str, f64)> = ["0", "5", "13", ""]
            .iter()
            .map(|code| (*code, grpc_requests(&text, direction, code)))
            .collect();
        assert!(
            ok,
            "{direction} proxy: want {expect:?}, have {seen:?}\n{text}"
        );
        // Every gRPC response was a 200 and none was flagged.
        assert_eq!(
            metric(
                &text,
                "outrigger_requests_total",
                &[
                    ("direction", direction),
                    ("response_code", "200"),
                    ("response_flags", "-")
                ]
            ),
            7.0,
            "{text}"
        );
    }
}
