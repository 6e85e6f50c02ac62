//! An OpenTelemetry collector stand-in: an OTLP/HTTP receiver on loopback
//! (`POST /v1/traces`, `application/x-protobuf`) that decodes each
//! `ExportTraceServiceRequest` with the official protobuf definitions
//! (`opentelemetry-proto`) and keeps the spans, each with its resource.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
pub use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, Span};
use prost::Message;

use crate::body::full;
use crate::servers::serve_http;

/// One span as received, with its resource's attributes.
#[derive(Clone, Debug)]
pub struct Received {
    pub span: Span,
    pub resource: Vec<KeyValue>,
}

impl Received {
    pub fn trace_id(&self) -> String {
        hex(&self.span.trace_id)
    }

    pub fn span_id(&self) -> String {
        hex(&self.span.span_id)
    }

    /// Empty for a root span.
    pub fn parent_id(&self) -> String {
        hex(&self.span.parent_span_id)
    }

    pub fn kind(&self) -> SpanKind {
        SpanKind::try_from(self.span.kind).unwrap_or(SpanKind::Unspecified)
    }

    /// A span attribute as text (strings as they are, integers in decimal).
    pub fn attr(&self, key: &str) -> Option<String> {
        text(&self.span.attributes, key)
    }

    /// A resource attribute as text.
    pub fn resource_attr(&self, key: &str) -> Option<String> {
        text(&self.resource, key)
    }
}

fn text(attrs: &[KeyValue], key: &str) -> Option<String> {
    let v = attrs.iter().find(|kv| kv.key == key)?.value.as_ref()?;
    match v.value.as_ref()? {
        any_value::Value::StringValue(s) => Some(s.clone()),
        any_value::Value::IntValue(i) => Some(i.to_string()),
        any_value::Value::BoolValue(b) => Some(b.to_string()),
        any_value::Value::DoubleValue(d) => Some(d.to_string()),
        other => Some(format!("{other:?}")),
    }
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The receiver: its address and what it got so far.
#[derive(Clone)]
pub struct OtlpReceiver {
    pub addr: SocketAddr,
    spans: Arc<Mutex<Vec<Received>>>,
    /// Requests that were not a decodable OTLP export (path, type, body).
    pub refused: Arc<Mutex<Vec<String>>>,
}

impl OtlpReceiver {
    pub async fn start() -> Self {
        let spans: Arc<Mutex<Vec<Received>>> = Default::default();
        let refused: Arc<Mutex<Vec<String>>> = Default::default();
        let (s, r) = (spans.clone(), refused.clone());
        let addr = serve_http(move |req: Request<Incoming>| {
            let (spans, refused) = (s.clone(), r.clone());
            async move {
                let path = req.uri().path().to_string();
                let ctype = req
                    .headers()
                    .get("content-type")
                    .map(|v| v.to_str().unwrap_or("?").to_string());
                let method = req.method().clone();
                let body = req.into_body().collect().await.unwrap().to_bytes();
                let decoded = ExportTraceServiceRequest::decode(body);
                let ok = method == http::Method::POST
                    && path == "/v1/traces"
                    && ctype.as_deref() == Some("application/x-protobuf");
                match decoded {
                    Ok(export) if ok => {
                        let mut got = spans.lock().unwrap();
                        for rs in export.resource_spans {
                            let resource = rs.resource.map(|r| r.attributes).unwrap_or_default();
                            for ss in rs.scope_spans {
                                for span in ss.spans {
                                    got.push(Received {
                                        span,
                                        resource: resource.clone(),
                                    });
                                }
                            }
                        }
                        let answer = ExportTraceServiceResponse::default().encode_to_vec();
                        Response::builder()
                            .header("content-type", "application/x-protobuf")
                            .body(full(answer))
                            .unwrap()
                    }
                    other => {
                        refused
                            .lock()
                            .unwrap()
                            .push(format!("{method} {path} {ctype:?}: {other:?}"));
                        Response::builder().status(400).body(full("")).unwrap()
                    }
                }
            }
        })
        .await;
        Self {
            addr,
            spans,
            refused,
        }
    }

    /// The spans received so far.
    pub fn spans(&self) -> Vec<Received> {
        self.spans.lock().unwrap().clone()
    }

    /// The collector URL to give a proxy.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}
