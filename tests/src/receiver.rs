//! A real OTLP receiver for metrics and traces: the official protos, served over gRPC
//! (tonic) and over HTTP/protobuf (a small HTTP/1.1 server), keeping every request it
//! decoded.
use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use opentelemetry_proto::tonic::collector::{
    metrics::v1::{
        ExportMetricsServiceRequest, ExportMetricsServiceResponse,
        metrics_service_server::{MetricsService, MetricsServiceServer},
    },
    trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
};
use prost::Message as _;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpListener,
};

/// Every request of one signal, in arrival order.
pub struct Requests<T>(Arc<Mutex<Vec<T>>>);

impl<T> Clone for Requests<T> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<T> Default for Requests<T> {
    fn default() -> Self {
        Self(Arc::default())
    }
}

impl<T: Clone> Requests<T> {
    pub fn snapshot(&self) -> Vec<T> {
        self.0.lock().map(|v| v.clone()).unwrap_or_default()
    }
    fn push(&self, request: T) {
        if let Ok(mut v) = self.0.lock() {
            v.push(request);
        }
    }
}

pub type Received = Requests<ExportMetricsServiceRequest>;
pub type ReceivedTraces = Requests<ExportTraceServiceRequest>;

struct Service(Received);

#[tonic::async_trait]
impl MetricsService for Service {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        self.0.push(request.into_inner());
        Ok(tonic::Response::new(ExportMetricsServiceResponse { partial_success: None }))
    }
}

struct Traces(ReceivedTraces);

#[tonic::async_trait]
impl TraceService for Traces {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.push(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

/// A receiver running on its own runtime thread until dropped.
pub struct Receiver {
    pub addr: SocketAddr,
    pub received: Received,
    pub traces: ReceivedTraces,
    _runtime: tokio::runtime::Runtime,
}

impl Receiver {
    /// OTLP/gRPC on `addr` (port 0 picks a free port).
    pub fn grpc(addr: &str) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let received = Received::default();
        let listener = runtime.block_on(TcpListener::bind(addr)).expect("bind gRPC receiver");
        let local = listener.local_addr().unwrap();
        // Collectors (rotel among them) send gzip by default, as a real receiver accepts.
        let service = MetricsServiceServer::new(Service(received.clone()))
            .accept_compressed(tonic::codec::CompressionEncoding::Gzip);
        let traces = ReceivedTraces::default();
        let trace_service =
            TraceServiceServer::new(Traces(traces.clone())).accept_compressed(tonic::codec::CompressionEncoding::Gzip);
        runtime.spawn(async move {
            let incoming = tonic::transport::server::TcpIncoming::from(listener);
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .add_service(trace_service)
                .serve_with_incoming(incoming)
                .await;
        });
        Self { addr: local, received, traces, _runtime: runtime }
    }

    /// OTLP/HTTP with protobuf bodies (`POST /v1/metrics`).
    pub fn http(addr: &str) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let received = Received::default();
        let listener = runtime.block_on(TcpListener::bind(addr)).expect("bind HTTP receiver");
        let local = listener.local_addr().unwrap();
        let traces = ReceivedTraces::default();
        let sinks = (received.clone(), traces.clone());
        runtime.spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve_http(stream, sinks.clone()));
            }
        });
        Self { addr: local, received, traces, _runtime: runtime }
    }
}

/// HTTP/1.1 keep-alive loop: Content-Length bodies only, which is what OTLP clients send.
async fn serve_http(mut stream: tokio::net::TcpStream, (metrics, traces): (Received, ReceivedTraces)) {
    let mut buf = Vec::new();
    loop {
        let Some(head_end) = find(&buf, b"\r\n\r\n") else {
            let mut chunk = [0u8; 8192];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        let mut chunk = vec![0u8; 65536];
        while buf.len() < head_end + 4 + length {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body: Vec<u8> = buf.drain(..head_end + 4 + length).skip(head_end + 4).collect();
        let protobuf = head.contains("application/x-protobuf");
        let (status, reply) = if !protobuf {
            ("400 Bad Request", Vec::new())
        } else if head.starts_with("post /v1/metrics") {
            match ExportMetricsServiceRequest::decode(body.as_slice()) {
                Ok(request) => {
                    metrics.push(request);
                    ("200 OK", ExportMetricsServiceResponse { partial_success: None }.encode_to_vec())
                }
                Err(_) => ("400 Bad Request", Vec::new()),
            }
        } else if head.starts_with("post /v1/traces") {
            match ExportTraceServiceRequest::decode(body.as_slice()) {
                Ok(request) => {
                    traces.push(request);
                    ("200 OK", ExportTraceServiceResponse { partial_success: None }.encode_to_vec())
                }
                Err(_) => ("400 Bad Request", Vec::new()),
            }
        } else {
            ("404 Not Found", Vec::new())
        };
        let response = format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/x-protobuf\r\ncontent-length: {}\r\n\r\n",
            reply.len()
        );
        if stream.write_all(response.as_bytes()).await.is_err() || stream.write_all(&reply).await.is_err() {
            return;
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
