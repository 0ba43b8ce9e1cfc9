//! Sends encoded trace export requests as they are: gRPC (`TraceService/Export`, with
//! a codec that passes the bytes through) or HTTP/protobuf (`POST .../v1/traces`). Where
//! they go comes from the standard `OTEL_EXPORTER_OTLP_*` variables (`TracesTarget`),
//! read and checked at start. One attempt per request: a failed one is counted by the
//! caller, and the next flush tries again.
use std::{io::Write as _, time::Duration};

use bytes::{Buf as _, BufMut as _, Bytes};
use http_body_util::{BodyExt as _, Full};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use tonic::{
    codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder},
    metadata::{MetadataKey, MetadataMap, MetadataValue},
    transport::{Channel, Endpoint},
};

const GRPC_EXPORT: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// Where spans go and how, from the environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TracesTarget {
    pub grpc: bool,
    /// The full URL: for HTTP with `/v1/traces` already on it.
    pub endpoint: String,
    pub headers: Vec<(String, String)>,
    pub gzip: bool,
}

impl TracesTarget {
    /// The specification's rules: the signal's own endpoint as it is, else the general
    /// one (HTTP: with `/v1/traces` added), else the local default; headers from the
    /// general variable, then the signal's (which win); compression likewise.
    pub fn from_env(grpc: bool, get: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let endpoint = match (get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"), get("OTEL_EXPORTER_OTLP_ENDPOINT")) {
            (Some(own), _) => own,
            (None, Some(general)) if grpc => general,
            (None, Some(general)) => format!("{}/v1/traces", general.trim_end_matches('/')),
            (None, None) if grpc => "http://localhost:4317".to_owned(),
            (None, None) => "http://localhost:4318/v1/traces".to_owned(),
        };
        let uri: http::Uri = endpoint.parse().map_err(|err| format!("endpoint {endpoint:?} is not a URL: {err}"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(format!(
                    "endpoint {endpoint:?}: TLS to the collector is not built in; use http:// (a collector beside the agent, or a local one that forwards)"
                ));
            }
            _ => return Err(format!("endpoint {endpoint:?} needs http://")),
        }
        let mut headers: Vec<(String, String)> = Vec::new();
        for var in ["OTEL_EXPORTER_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_TRACES_HEADERS"] {
            for (name, value) in
                parse_headers(get(var).as_deref().unwrap_or_default()).map_err(|e| format!("{var}: {e}"))?
            {
                headers.retain(|(n, _)| !n.eq_ignore_ascii_case(&name));
                headers.push((name, value));
            }
        }
        let compression =
            get("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION").or_else(|| get("OTEL_EXPORTER_OTLP_COMPRESSION"));
        let gzip = match compression.as_deref() {
            None | Some("none") => false,
            Some("gzip") => true,
            Some(other) => return Err(format!("compression {other:?} is not one of: gzip, none")),
        };
        Ok(Self { grpc, endpoint, headers, gzip })
    }
}

/// `key1=value1,key2=value2`, values percent-decoded (W3C Baggage's form, as the
/// specification asks).
fn parse_headers(text: &str) -> Result<Vec<(String, String)>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').ok_or_else(|| format!("{pair:?} is not key=value"))?;
            let value = percent_decode(value.trim()).ok_or_else(|| format!("{pair:?}: bad percent-encoding"))?;
            Ok((name.trim().to_ascii_lowercase(), value))
        })
        .collect()
}

fn percent_decode(text: &str) -> Option<String> {
    let mut out = Vec::with_capacity(text.len());
    let mut bytes = text.bytes();
    while let Some(byte) = bytes.next() {
        if byte == b'%' {
            let hex = [bytes.next()?, bytes.next()?];
            out.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
        } else {
            out.push(byte);
        }
    }
    String::from_utf8(out).ok()
}

#[derive(Debug, thiserror::Error)]
pub enum TracesClientError {
    #[error("the trace endpoint: {0}")]
    Endpoint(String),
    #[error("header {name:?} cannot be sent")]
    Header { name: String },
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("gRPC: {0}")]
    Grpc(#[source] tonic::Status),
    #[error("HTTP: {0}")]
    Http(String),
    #[error("HTTP status {0}")]
    HttpStatus(u16),
}

pub struct TracesClient {
    transport: Transport,
    gzip: bool,
}

enum Transport {
    Grpc(Box<GrpcTransport>),
    Http(Box<HttpTransport>),
}

struct GrpcTransport {
    grpc: tonic::client::Grpc<Channel>,
    metadata: MetadataMap,
}

struct HttpTransport {
    client: Client<HttpConnector, Full<Bytes>>,
    uri: http::Uri,
    headers: http::HeaderMap,
}

impl TracesClient {
    /// Made in the runtime it will send from (the gRPC channel's task starts there);
    /// connects on the first request.
    pub fn new(target: &TracesTarget, connect_timeout: Duration) -> Result<Self, TracesClientError> {
        let transport = if target.grpc {
            let endpoint = Endpoint::from_shared(target.endpoint.clone())
                .map_err(|err| TracesClientError::Endpoint(err.to_string()))?
                .connect_timeout(connect_timeout);
            let mut grpc = tonic::client::Grpc::new(endpoint.connect_lazy());
            if target.gzip {
                grpc = grpc.send_compressed(CompressionEncoding::Gzip).accept_compressed(CompressionEncoding::Gzip);
            }
            let mut metadata = MetadataMap::new();
            for (name, value) in &target.headers {
                let header = || TracesClientError::Header { name: name.clone() };
                let key = MetadataKey::from_bytes(name.as_bytes()).map_err(|_| header())?;
                metadata.insert(key, MetadataValue::try_from(value.as_str()).map_err(|_| header())?);
            }
            Transport::Grpc(Box::new(GrpcTransport { grpc, metadata }))
        } else {
            let uri = target
                .endpoint
                .parse()
                .map_err(|err: http::uri::InvalidUri| TracesClientError::Endpoint(err.to_string()))?;
            let mut headers = http::HeaderMap::new();
            for (name, value) in &target.headers {
                let header = || TracesClientError::Header { name: name.clone() };
                let key = http::HeaderName::from_bytes(name.as_bytes()).map_err(|_| header())?;
                headers.insert(key, http::HeaderValue::from_str(value).map_err(|_| header())?);
            }
            let mut connector = HttpConnector::new();
            connector.set_connect_timeout(Some(connect_timeout));
            let client = Client::builder(TokioExecutor::new()).build(connector);
            Transport::Http(Box::new(HttpTransport { client, uri, headers }))
        };
        Ok(Self { transport, gzip: target.gzip })
    }

    /// Sends one request; on success, how many of its spans the collector says it
    /// rejected (a partial success).
    pub async fn export(&mut self, body: Vec<u8>) -> Result<u64, ExportError> {
        let reply = match &mut self.transport {
            Transport::Grpc(transport) => {
                let GrpcTransport { grpc, metadata } = &mut **transport;
                grpc.ready().await.map_err(|err| ExportError::Grpc(tonic::Status::unavailable(err.to_string())))?;
                let mut request = tonic::Request::new(Bytes::from(body));
                *request.metadata_mut() = metadata.clone();
                let path = http::uri::PathAndQuery::from_static(GRPC_EXPORT);
                grpc.unary(request, path, PassThrough).await.map_err(ExportError::Grpc)?.into_inner()
            }
            Transport::Http(http) => {
                let HttpTransport { client, uri, headers } = &**http;
                let body = if self.gzip { gzip(&body) } else { body };
                let mut request = http::Request::post(uri.clone())
                    .header(http::header::CONTENT_TYPE, "application/x-protobuf")
                    .body(Full::new(Bytes::from(body)))
                    .map_err(|err| ExportError::Http(err.to_string()))?;
                request.headers_mut().extend(headers.clone());
                if self.gzip {
                    request
                        .headers_mut()
                        .insert(http::header::CONTENT_ENCODING, http::HeaderValue::from_static("gzip"));
                }
                let response = client.request(request).await.map_err(|err| ExportError::Http(err.to_string()))?;
                let status = response.status();
                let reply = response.into_body().collect().await.map_err(|err| ExportError::Http(err.to_string()))?;
                if !status.is_success() {
                    return Err(ExportError::HttpStatus(status.as_u16()));
                }
                reply.to_bytes()
            }
        };
        Ok(rejected_spans(&reply))
    }
}

fn gzip(body: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::with_capacity(body.len() / 4), flate2::Compression::fast());
    // Writing to memory does not fail.
    let _ = encoder.write_all(body);
    encoder.finish().unwrap_or_default()
}

/// `ExportTraceServiceResponse.partial_success` (1) `.rejected_spans` (1); 0 when the
/// reply is empty or not understood (the request itself was accepted).
fn rejected_spans(reply: &[u8]) -> u64 {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
    use prost::Message as _;
    ExportTraceServiceResponse::decode(reply)
        .ok()
        .and_then(|r| r.partial_success)
        .map_or(0, |partial| u64::try_from(partial.rejected_spans).unwrap_or(0))
}

/// A gRPC codec for bodies already encoded: the bytes go out as they are, and the
/// reply comes back as bytes.
#[derive(Clone, Copy, Default)]
struct PassThrough;

impl Codec for PassThrough {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = PassThrough;
    type Decoder = PassThrough;

    fn encoder(&mut self) -> Self::Encoder {
        PassThrough
    }

    fn decoder(&mut self) -> Self::Decoder {
        PassThrough
    }
}

impl Encoder for PassThrough {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for PassThrough {
    type Item = Bytes;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, tonic::Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::collector::trace::v1::{ExportTracePartialSuccess, ExportTraceServiceResponse};
    use prost::Message as _;

    use super::rejected_spans;

    #[test]
    fn a_partial_success_says_how_many_spans_were_rejected() {
        let partial = ExportTracePartialSuccess { rejected_spans: 3, error_message: "too old".into() };
        let reply = ExportTraceServiceResponse { partial_success: Some(partial) }.encode_to_vec();
        assert_eq!(rejected_spans(&reply), 3);
        assert_eq!(rejected_spans(&ExportTraceServiceResponse::default().encode_to_vec()), 0);
        assert_eq!(rejected_spans(&[]), 0);
        assert_eq!(rejected_spans(b"\xff\xff garbage"), 0, "an unreadable reply to an accepted request");
    }
}
