//! The standard OpenTelemetry variables flowtel acts on, checked up front so a typo
//! stops the agent with a clear message instead of silently exporting nowhere.
//! For metrics, endpoint, headers, timeout and compression are read by the SDK's OTLP
//! exporter itself; for spans, which flowtel sends itself, here (`TracesTarget`).
use std::time::Duration;

use opentelemetry_sdk::metrics::Temporality;

use super::ConfigError;
use crate::telemetry::{SinkKind, SpanSampler, TracesTarget};

#[derive(Clone, Debug, PartialEq)]
pub struct OtelSettings {
    pub sink: SinkKind,
    /// Where HTTP spans go (`OTEL_TRACES_EXPORTER`).
    pub traces_sink: SinkKind,
    pub temporality: Temporality,
    pub export_interval: Duration,
    /// `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG`: which exchanges get spans.
    pub span_sampler: SpanSampler,
    /// How long one span export request may take before its spans are counted lost.
    pub span_export_timeout: Duration,
    /// Where spans go over OTLP; `None` unless `traces_sink` is OTLP.
    pub traces_target: Option<TracesTarget>,
}

fn invalid(var: &str, value: &str, accepted: &str) -> ConfigError {
    ConfigError::Env { var: var.into(), reason: format!("{value:?} is not one of: {accepted}") }
}

/// Where one signal (`METRICS`, `TRACES`) goes: `OTEL_<SIGNAL>_EXPORTER`, and for OTLP
/// the signal's own protocol variable, else the general one.
fn signal_sink(get: &impl Fn(&str) -> Option<String>, signal: &str) -> Result<SinkKind, ConfigError> {
    let own = format!("OTEL_EXPORTER_OTLP_{signal}_PROTOCOL");
    let protocol_var = if get(&own).is_some() { own.as_str() } else { "OTEL_EXPORTER_OTLP_PROTOCOL" };
    let otlp = match get(protocol_var).as_deref() {
        None | Some("grpc") => SinkKind::OtlpGrpc,
        Some("http/protobuf") => SinkKind::OtlpHttp,
        Some(other) => return Err(invalid(protocol_var, other, "grpc, http/protobuf")),
    };
    let exporter_var = format!("OTEL_{signal}_EXPORTER");
    match get(&exporter_var).as_deref() {
        None | Some("otlp") => Ok(otlp),
        Some("console") => Ok(SinkKind::Console),
        Some("none") => Ok(SinkKind::None),
        Some(other) => Err(invalid(&exporter_var, other, "otlp, console, none")),
    }
}

/// `get` reads one variable (the process environment in production).
pub fn otel_from_env(get: impl Fn(&str) -> Option<String>) -> Result<OtelSettings, ConfigError> {
    let get = |name: &str| get(name).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());

    let disabled = match get("OTEL_SDK_DISABLED").as_deref().map(str::to_ascii_lowercase).as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => return Err(invalid("OTEL_SDK_DISABLED", other, "true, false")),
    };

    let sink = if disabled { SinkKind::None } else { signal_sink(&get, "METRICS")? };
    let traces_sink = if disabled { SinkKind::None } else { signal_sink(&get, "TRACES")? };

    let var = "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE";
    let temporality = match get(var).map(|v| v.to_ascii_lowercase()).as_deref() {
        None | Some("cumulative") => Temporality::Cumulative,
        Some("delta") => Temporality::Delta,
        Some("lowmemory") => Temporality::LowMemory,
        Some(other) => return Err(invalid(var, other, "cumulative, delta, lowmemory")),
    };

    let export_interval = match get("OTEL_METRIC_EXPORT_INTERVAL") {
        None => Duration::from_mins(1),
        Some(ms) => match ms.parse::<u64>() {
            Ok(ms) if ms > 0 => Duration::from_millis(ms),
            _ => {
                return Err(ConfigError::Env {
                    var: "OTEL_METRIC_EXPORT_INTERVAL".into(),
                    reason: format!("{ms:?} is not a positive number of milliseconds"),
                });
            }
        },
    };

    for var in ["OTEL_EXPORTER_OTLP_TIMEOUT", "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT", "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT"]
    {
        if let Some(ms) = get(var).filter(|v| v.parse::<u64>().is_err()) {
            return Err(ConfigError::Env {
                var: var.into(),
                reason: format!("{ms:?} is not a number of milliseconds"),
            });
        }
    }
    // The span exporter is given its deadline here (the metrics exporter applies the
    // variables itself): the signal's own, else the general one, else the spec's 10 s.
    let span_export_timeout = ["OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT"]
        .iter()
        .find_map(|var| get(var)?.parse().ok())
        .map_or(Duration::from_secs(10), Duration::from_millis);
    for var in [
        "OTEL_EXPORTER_OTLP_COMPRESSION",
        "OTEL_EXPORTER_OTLP_METRICS_COMPRESSION",
        "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
    ] {
        if let Some(other) = get(var).filter(|v| v != "gzip" && v != "none") {
            return Err(invalid(var, &other, "gzip, none"));
        }
    }
    let span_sampler =
        SpanSampler::parse(get("OTEL_TRACES_SAMPLER").as_deref(), get("OTEL_TRACES_SAMPLER_ARG").as_deref())
            .map_err(|reason| ConfigError::Env { var: "OTEL_TRACES_SAMPLER".into(), reason })?;
    let traces_target = match traces_sink {
        SinkKind::OtlpGrpc | SinkKind::OtlpHttp => Some(
            TracesTarget::from_env(traces_sink == SinkKind::OtlpGrpc, get)
                .map_err(|reason| ConfigError::Env { var: "OTEL_EXPORTER_OTLP_TRACES_*".into(), reason })?,
        ),
        SinkKind::Console | SinkKind::None => None,
    };
    Ok(OtelSettings {
        sink,
        traces_sink,
        temporality,
        export_interval,
        span_sampler,
        span_export_timeout,
        traces_target,
    })
}
