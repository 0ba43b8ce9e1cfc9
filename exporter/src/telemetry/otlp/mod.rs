//! OTLP for spans without the SDK's span pipeline: spans are encoded once, on the loop
//! thread, into protobuf bytes (`wire`); the span sink frames them into export
//! requests (`trace_request`) and sends those as they are over gRPC or HTTP/protobuf
//! (`traces_client`). Metrics still go through the SDK's exporter.
mod trace_request;
mod traces_client;
pub mod wire;

pub use trace_request::{SpanBytes, TraceRequest, requests};
pub use traces_client::{TracesClient, TracesClientError, TracesTarget};
