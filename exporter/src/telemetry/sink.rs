//! Where metrics go: OTLP (gRPC or HTTP/protobuf, configured by the standard
//! `OTEL_EXPORTER_OTLP_*` variables, which the exporter reads itself), the console, or
//! nowhere. An outage is logged once when it starts and once when it ends, not per attempt.
use std::fmt::Write as _;

use opentelemetry::KeyValue;
use opentelemetry_otlp::{MetricExporter, WithExportConfig as _};
use opentelemetry_sdk::metrics::{
    Temporality,
    data::{AggregatedMetrics, MetricData, ResourceMetrics},
    exporter::PushMetricExporter as _,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SinkKind {
    /// OTLP over gRPC.
    OtlpGrpc,
    /// OTLP over HTTP/protobuf.
    OtlpHttp,
    Console,
    None,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot build the OTLP metric exporter: {0}")]
pub struct SinkError(#[source] opentelemetry_otlp::ExporterBuildError);

pub struct MetricsSink {
    kind: SinkKind,
    otlp: Option<MetricExporter>,
    in_outage: bool,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExportOutcome {
    pub exported: u64,
    pub failed: u64,
}

impl MetricsSink {
    pub fn new(kind: SinkKind, temporality: Temporality) -> Result<Self, SinkError> {
        let otlp = match kind {
            SinkKind::OtlpGrpc => {
                Some(MetricExporter::builder().with_tonic().with_temporality(temporality).build().map_err(SinkError)?)
            }
            SinkKind::OtlpHttp => Some(
                MetricExporter::builder()
                    .with_http()
                    .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                    .with_temporality(temporality)
                    .build()
                    .map_err(SinkError)?,
            ),
            SinkKind::Console | SinkKind::None => None,
        };
        Ok(Self { kind, otlp, in_outage: false })
    }

    /// Exports each Resource's metrics; returns how many exports failed.
    pub async fn export(&mut self, batch: &[ResourceMetrics]) -> ExportOutcome {
        let mut outcome = ExportOutcome::default();
        match (&self.otlp, self.kind) {
            (Some(exporter), _) => {
                for (sent, rm) in batch.iter().enumerate() {
                    match exporter.export(rm).await {
                        Ok(()) => outcome.exported += 1,
                        Err(err) => {
                            // The collector is unreachable: stop this interval rather than
                            // retry every workload in turn (each export retries with
                            // backoff). Cumulative totals carry the rest next time.
                            outcome.failed += (batch.len() - sent) as u64;
                            if !self.in_outage {
                                tracing::warn!(error = %err, "metric export failed; observing on, will deliver totals when the collector is back");
                                self.in_outage = true;
                            }
                            return outcome;
                        }
                    }
                }
                if self.in_outage && outcome.exported > 0 {
                    tracing::info!("metric export recovered");
                    self.in_outage = false;
                }
            }
            (None, SinkKind::Console) => {
                for rm in batch {
                    print!("{}", render(rm));
                    outcome.exported += 1;
                }
            }
            _ => {}
        }
        outcome
    }

    pub fn shutdown(&self) {
        if let Some(exporter) = &self.otlp {
            let _ = exporter.shutdown();
        }
    }
}

fn render_attrs<'a>(attrs: impl Iterator<Item = &'a KeyValue>) -> String {
    attrs.map(|kv| format!("{}={}", kv.key, kv.value)).collect::<Vec<_>>().join(" ")
}

/// A readable form for someone without a collector: one block per Resource, one line
/// per data point.
pub fn render(rm: &ResourceMetrics) -> String {
    let mut out = String::new();
    let resource = rm.resource();
    let key = |k: &'static str| resource.get(&opentelemetry::Key::from_static_str(k)).map(|v| v.to_string());
    let _ = writeln!(
        out,
        "== {} pid={}",
        key("service.name").unwrap_or_else(|| "host".into()),
        key("process.pid").unwrap_or_else(|| "-".into())
    );
    for scope in rm.scope_metrics() {
        for metric in scope.metrics() {
            let (name, unit) = (metric.name(), metric.unit());
            let mut line = |attrs: String, value: String| {
                let _ = writeln!(out, "  {name} {value} {unit}  {attrs}");
            };
            match metric.data() {
                AggregatedMetrics::U64(MetricData::Sum(sum)) => {
                    sum.data_points().for_each(|p| line(render_attrs(p.attributes()), p.value().to_string()));
                }
                AggregatedMetrics::U64(MetricData::Gauge(g)) => {
                    g.data_points().for_each(|p| line(render_attrs(p.attributes()), p.value().to_string()));
                }
                AggregatedMetrics::F64(MetricData::Gauge(g)) => {
                    g.data_points().for_each(|p| line(render_attrs(p.attributes()), format!("{:.6}", p.value())));
                }
                AggregatedMetrics::F64(MetricData::ExponentialHistogram(h)) => h.data_points().for_each(|p| {
                    let mean = if p.count() > 0 { p.sum() / p.count() as f64 } else { 0.0 };
                    line(render_attrs(p.attributes()), format!("count={} mean={mean:.6}", p.count()));
                }),
                AggregatedMetrics::F64(MetricData::Histogram(h)) => h.data_points().for_each(|p| {
                    let mean = if p.count() > 0 { p.sum() / p.count() as f64 } else { 0.0 };
                    let max = p.max().unwrap_or_default();
                    line(render_attrs(p.attributes()), format!("count={} mean={mean:.6} max={max:.6}", p.count()));
                }),
                _ => {}
            }
        }
    }
    out
}
