//! Questions over what the receiver decoded. Metrics are cumulative (the default), so
//! the newest point of each series is its total.
use std::collections::{BTreeMap, HashMap};

use opentelemetry_proto::tonic::{
    collector::metrics::v1::ExportMetricsServiceRequest,
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
