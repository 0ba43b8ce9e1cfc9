//! Flow records and DNS lookups into OpenTelemetry metrics, each under the Resource of the workload
//! that did the work, and out through one exporter.
//!
//! One agent process, one exporter: each workload (process) gets an `SdkMeterProvider`
//! with its own Resource and a manual reader, and the export loop collects them one by
//! one. No thread or exporter per process. With cumulative temporality (the default) a
//! failed export loses nothing: the next one carries the totals.
mod agent;
mod dns_instruments;
mod flow_instruments;
mod reader;
mod sink;
mod workloads;

pub use agent::AgentTelemetry;
pub use sink::{MetricsSink, SinkKind};
pub use workloads::{TelemetrySettings, Workloads};

#[cfg(test)]
mod tests;
