//! Flow records, DNS lookups and HTTP exchanges into OpenTelemetry metrics (and HTTP
//! spans), each under the Resource of the workload that did the work, and out through
//! one exporter per signal.
//!
//! One agent process, one exporter: each workload (process) gets an `SdkMeterProvider`
//! with its own Resource and a manual reader, and the export loop collects them one by
//! one. No thread or exporter per process. With cumulative temporality (the default) a
//! failed export loses nothing: the next one carries the totals.
mod agent;
mod dns_instruments;
mod flow_instruments;
mod http_instruments;
mod instrument;
mod otlp;
mod reader;
mod resources;
mod sampler;
mod sink;
mod span_sink;
mod spans;
mod workloads;

pub use agent::AgentTelemetry;
pub use otlp::{SpanBytes, TracesTarget};
pub use sampler::SpanSampler;
pub use sink::{ExportOutcome, MetricsSink, SinkKind};
pub use span_sink::{SpanOutcome, SpanSink};
pub use spans::SpanBuilder;
pub use workloads::{TelemetrySettings, Workloads};

#[cfg(test)]
mod tests;
