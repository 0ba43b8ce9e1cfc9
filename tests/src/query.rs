//! Questions over what the receiver decoded. Metrics are cumulative (the default), so
//! the newest point of each series is its total.
use std::collections::{BTreeMap, HashMap};

use opentelemetry_proto::tonic::{
    collector::{metrics::v1::ExportMetricsServiceRequest, trace::v1::ExportTraceServiceRequest},
    common::v1::{AnyValue, KeyValue, any_value::Value},
    metrics::v1::metric::Data,
};

pub type Attrs = BTreeMap<String, String>;

fn text(value: Option<&AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        _ => String::new(),
    }
}

fn attrs(kvs: &[KeyValue]) -> Attrs {
    kvs.iter().map(|kv| (kv.key.clone(), text(kv.value.as_ref()))).collect()
}

/// The newest point of one series.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Point {
    pub resource: Attrs,
    pub attrs: Attrs,
    /// Sum or gauge value; histogram sum for histograms.
    pub value: f64,
    /// Histogram count (0 for sums and gauges).
    pub count: u64,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub scope: String,
}

/// The newest point of every series of `metric`, across all requests in order.
pub fn points(requests: &[ExportMetricsServiceRequest], metric: &str) -> Vec<Point> {
    let mut latest: HashMap<(Attrs, Attrs), (u64, Point)> = HashMap::new();
    for request in requests {
        for rm in &request.resource_metrics {
            let resource = rm.resource.as_ref().map(|r| attrs(&r.attributes)).unwrap_or_default();
            for sm in &rm.scope_metrics {
                let scope = sm.scope.as_ref().map(|s| s.name.clone()).unwrap_or_default();
                for m in sm.metrics.iter().filter(|m| m.name == metric) {
                    let mut found: Vec<(u64, Point)> = Vec::new();
                    let base = Point { resource: resource.clone(), scope: scope.clone(), ..Point::default() };
                    match &m.data {
                        Some(Data::Sum(sum)) => {
                            for dp in &sum.data_points {
                                let value = match dp.value {
                                    Some(opentelemetry_proto::tonic::metrics::v1::number_data_point::Value::AsInt(
                                        i,
                                    )) => i as f64,
                                    Some(
                                        opentelemetry_proto::tonic::metrics::v1::number_data_point::Value::AsDouble(d),
                                    ) => d,
                                    None => 0.0,
                                };
                                found.push((
                                    dp.time_unix_nano,
                                    Point { attrs: attrs(&dp.attributes), value, ..base.clone() },
                                ));
                            }
                        }
                        Some(Data::Gauge(g)) => {
                            for dp in &g.data_points {
                                let value = match dp.value {
                                    Some(opentelemetry_proto::tonic::metrics::v1::number_data_point::Value::AsInt(
                                        i,
                                    )) => i as f64,
                                    Some(
                                        opentelemetry_proto::tonic::metrics::v1::number_data_point::Value::AsDouble(d),
                                    ) => d,
                                    None => 0.0,
                                };
                                found.push((
                                    dp.time_unix_nano,
                                    Point { attrs: attrs(&dp.attributes), value, ..base.clone() },
                                ));
                            }
                        }
                        Some(Data::ExponentialHistogram(h)) => {
                            for dp in &h.data_points {
                                found.push((
                                    dp.time_unix_nano,
                                    Point {
                                        attrs: attrs(&dp.attributes),
                                        value: dp.sum.unwrap_or_default(),
                                        count: dp.count,
                                        min: dp.min,
                                        max: dp.max,
                                        ..base.clone()
                                    },
                                ));
                            }
                        }
                        Some(Data::Histogram(h)) => {
                            for dp in &h.data_points {
                                found.push((
                                    dp.time_unix_nano,
                                    Point {
                                        attrs: attrs(&dp.attributes),
                                        value: dp.sum.unwrap_or_default(),
                                        count: dp.count,
                                        min: dp.min,
                                        max: dp.max,
                                        ..base.clone()
                                    },
                                ));
                            }
                        }
                        _ => {}
                    }
                    for (time, point) in found {
                        let key = (point.resource.clone(), point.attrs.clone());
                        match latest.get(&key) {
                            Some((t, _)) if *t > time => {}
                            _ => {
                                latest.insert(key, (time, point));
                            }
                        }
                    }
                }
            }
        }
    }
    latest.into_values().map(|(_, p)| p).collect()
}

/// Points whose resource and attributes contain every given pair.
pub fn matching<'a>(points: &'a [Point], resource: &[(&str, &str)], attributes: &[(&str, &str)]) -> Vec<&'a Point> {
    let has =
        |map: &Attrs, pairs: &[(&str, &str)]| pairs.iter().all(|(k, v)| map.get(*k).map(String::as_str) == Some(*v));
    points.iter().filter(|p| has(&p.resource, resource) && has(&p.attrs, attributes)).collect()
}

/// Sum of the matching series' values.
pub fn total(points: &[Point], resource: &[(&str, &str)], attributes: &[(&str, &str)]) -> f64 {
    matching(points, resource, attributes).iter().map(|p| p.value).sum()
}

/// One span as the receiver decoded it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SpanRow {
    pub resource: Attrs,
    pub attrs: Attrs,
    pub name: String,
    /// `SERVER` or `CLIENT` (and the other kinds by their proto names).
    pub kind: String,
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    pub start_ns: u64,
    pub end_ns: u64,
    /// `OK`, `ERROR` or `UNSET`.
    pub status: String,
    pub scope: String,
}

impl SpanRow {
    pub fn duration_s(&self) -> f64 {
        self.end_ns.saturating_sub(self.start_ns) as f64 / 1e9
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

/// Every span received, in order.
/// The agent's `flowtel.agent.events.lost` series that are not 0, summed by (probe,
/// cause): what a failure message needs to say where missing data went.
pub fn losses(requests: &[ExportMetricsServiceRequest]) -> BTreeMap<(String, String), f64> {
    let mut out = BTreeMap::new();
    for point in points(requests, "flowtel.agent.events.lost").into_iter().filter(|p| p.value > 0.0) {
        let key = (point.attrs["flowtel.probe"].clone(), point.attrs["flowtel.loss.cause"].clone());
        *out.entry(key).or_default() += point.value;
    }
    out
}

pub fn spans(requests: &[ExportTraceServiceRequest]) -> Vec<SpanRow> {
    let mut out = Vec::new();
    for request in requests {
        for rs in &request.resource_spans {
            let resource = rs.resource.as_ref().map(|r| attrs(&r.attributes)).unwrap_or_default();
            for ss in &rs.scope_spans {
                let scope = ss.scope.as_ref().map(|s| s.name.clone()).unwrap_or_default();
                for span in &ss.spans {
                    let kind = opentelemetry_proto::tonic::trace::v1::span::SpanKind::try_from(span.kind)
                        .map(|k| k.as_str_name().trim_start_matches("SPAN_KIND_").to_owned())
                        .unwrap_or_default();
                    let status = span
                        .status
                        .as_ref()
                        .and_then(|s| opentelemetry_proto::tonic::trace::v1::status::StatusCode::try_from(s.code).ok())
                        .map_or("UNSET".to_owned(), |c| c.as_str_name().trim_start_matches("STATUS_CODE_").to_owned());
                    out.push(SpanRow {
                        resource: resource.clone(),
                        attrs: attrs(&span.attributes),
                        name: span.name.clone(),
                        kind,
                        trace_id: hex(&span.trace_id),
                        span_id: hex(&span.span_id),
                        parent_span_id: hex(&span.parent_span_id),
                        start_ns: span.start_time_unix_nano,
                        end_ns: span.end_time_unix_nano,
                        status,
                        scope: scope.clone(),
                    });
                }
            }
        }
    }
    out
}

/// Spans whose Resource and attributes contain every pair given.
pub fn spans_matching<'a>(
    spans: &'a [SpanRow],
    resource: &[(&str, &str)],
    attributes: &[(&str, &str)],
) -> Vec<&'a SpanRow> {
    let has = |map: &Attrs, pairs: &[(&str, &str)]| pairs.iter().all(|(k, v)| map.get(*k).is_some_and(|x| x == v));
    spans.iter().filter(|s| has(&s.resource, resource) && has(&s.attrs, attributes)).collect()
}
