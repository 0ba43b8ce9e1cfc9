//! The HTTP instruments of one workload (scope `flowtel.http`), and the attributes an
//! exchange gives its metric point (low-cardinality only: `url.path` is for spans).
use flowtel_semconv::{attr, metric, value};
use opentelemetry::{
    KeyValue,
    metrics::{Histogram, Meter},
};

use crate::aggregation::{HttpError, HttpExchange, Role};

/// The semantic conventions' advice for `http.*.request.duration`, in seconds.
pub const DURATION_BUCKETS: [f64; 14] =
    [0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0];

pub struct HttpInstruments {
    server: Histogram<f64>,
    client: Histogram<f64>,
}

impl HttpInstruments {
    pub fn new(meter: &Meter) -> Self {
        let histogram = |m: flowtel_semconv::MetricName| {
            meter
                .f64_histogram(m.name)
                .with_unit(m.unit)
                .with_description(m.description)
                .with_boundaries(DURATION_BUCKETS.to_vec())
                .build()
        };
        Self {
            server: histogram(metric::HTTP_SERVER_REQUEST_DURATION),
            client: histogram(metric::HTTP_CLIENT_REQUEST_DURATION),
        }
    }

    /// Every exchange is recorded, those without a response too (their duration is
    /// how long they waited), so that the histogram's count is the request count.
    pub fn record(&self, exchange: &HttpExchange, route: Option<&str>) {
        let attrs = metric_attributes(exchange, route);
        let seconds = exchange.end_ns.saturating_sub(exchange.start_ns) as f64 / 1e9;
        match exchange.role {
            Role::Server => self.server.record(seconds, &attrs),
            Role::Client => self.client.record(seconds, &attrs),
        }
    }
}

/// `server.address` for a client: the Host header's name, else the peer address.
pub fn server_end(exchange: &HttpExchange) -> Option<(String, i64)> {
    let socket = match exchange.role {
        Role::Server => exchange.local,
        Role::Client => exchange.peer,
    };
    let port = socket.map_or(0, |s| i64::from(s.port()));
    let host = exchange.request.host.as_deref().map(|h| h.rsplit_once(':').map_or(h, |(name, _)| name));
    match (exchange.role, host) {
        (Role::Client, Some(host)) if !host.is_empty() => Some((host.to_owned(), port)),
        _ => socket.map(|s| (s.ip().to_string(), port)),
    }
}

pub fn error_type(exchange: &HttpExchange) -> Option<String> {
    match (exchange.error, exchange.response) {
        (Some(HttpError::Timeout), _) => Some(value::TIMEOUT.into()),
        (Some(HttpError::ConnectionReset), _) => Some(value::CONNECTION_RESET.into()),
        (None, Some(r)) if r.status >= 500 => Some(r.status.to_string()),
        (None, Some(r)) if r.status >= 400 && exchange.role == Role::Client => Some(r.status.to_string()),
        _ => None,
    }
}

/// Attributes of an exchange on the histograms, at most.
const METRIC_ATTRIBUTES_AT_MOST: usize = 9;

/// The histograms' attributes of `exchange`. A span carries the same ones, written as
/// protobuf by `SpanBuilder::attributes` (spans.rs): the two are kept in step.
fn metric_attributes(exchange: &HttpExchange, route: Option<&str>) -> Vec<KeyValue> {
    let mut attrs = Vec::with_capacity(METRIC_ATTRIBUTES_AT_MOST);
    attrs.push(KeyValue::new(attr::HTTP_REQUEST_METHOD, exchange.request.method.clone()));
    if let Some(response) = exchange.response {
        attrs.push(KeyValue::new(attr::HTTP_RESPONSE_STATUS_CODE, i64::from(response.status)));
    }
    attrs.push(KeyValue::new(attr::URL_SCHEME, if exchange.tls { value::HTTPS } else { value::HTTP }));
    attrs.push(KeyValue::new(attr::NETWORK_PROTOCOL_NAME, "http"));
    attrs.push(KeyValue::new(attr::NETWORK_PROTOCOL_VERSION, exchange.request.version));
    if let Some(route) = route {
        attrs.push(KeyValue::new(attr::HTTP_ROUTE, route.to_owned()));
    }
    if exchange.role == Role::Client
        && let Some((address, port)) = server_end(exchange)
    {
        attrs.push(KeyValue::new(attr::SERVER_ADDRESS, address));
        attrs.push(KeyValue::new(attr::SERVER_PORT, port));
    }
    if let Some(error) = error_type(exchange) {
        attrs.push(KeyValue::new(attr::ERROR_TYPE, error));
    }
    attrs
}
