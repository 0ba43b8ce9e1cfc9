//! The HTTP instruments of one workload (scope `flowtel.http`), and the attributes an
//! exchange gives its metric point (low-cardinality only: `url.path` is for spans).
use std::{borrow::Cow, collections::HashSet, fmt::Write as _, net::IpAddr, sync::Arc};

use flowtel_semconv::{attr, metric, value};
use opentelemetry::{
    KeyValue, StringValue,
    metrics::{Histogram, Meter},
};

use crate::aggregation::{HttpError, HttpExchange, Role};

/// The semantic conventions' advice for `http.*.request.duration`, in seconds.
pub const DURATION_BUCKETS: [f64; 14] =
    [0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0];

pub struct HttpInstruments {
    server: Histogram<f64>,
    client: Histogram<f64>,
    /// Reused for each exchange's attributes.
    attrs: Vec<KeyValue>,
    /// Text values seen before (routes, server names and addresses), shared with the
    /// SDK's series instead of copied for every exchange.
    texts: Texts,
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
            attrs: Vec::with_capacity(METRIC_ATTRIBUTES_AT_MOST),
            texts: Texts::default(),
        }
    }

    /// Every exchange is recorded, those without a response too (their duration is
    /// how long they waited), so that the histogram's count is the request count.
    pub fn record(&mut self, exchange: &HttpExchange, route: Option<&str>) {
        self.attrs.clear();
        metric_attributes(exchange, route, &mut self.texts, &mut self.attrs);
        let seconds = exchange.end_ns.saturating_sub(exchange.start_ns) as f64 / 1e9;
        match exchange.role {
            Role::Server => self.server.record(seconds, &self.attrs),
            Role::Client => self.client.record(seconds, &self.attrs),
        }
    }
}

/// Where `server.address` comes from.
pub enum ServerEnd<'a> {
    /// The Host header's name (a client's request).
    Name(&'a str),
    Address(IpAddr),
}

/// `server.address` and `server.port` for a client: the Host header's name, else the
/// peer address; for a server, its own address.
pub fn server_end(exchange: &HttpExchange) -> Option<(ServerEnd<'_>, i64)> {
    let socket = match exchange.role {
        Role::Server => exchange.local,
        Role::Client => exchange.peer,
    };
    let port = socket.map_or(0, |s| i64::from(s.port()));
    let host = exchange.request.host.as_deref().map(|h| h.rsplit_once(':').map_or(h, |(name, _)| name));
    match (exchange.role, host) {
        (Role::Client, Some(host)) if !host.is_empty() => Some((ServerEnd::Name(host), port)),
        _ => socket.map(|s| (ServerEnd::Address(s.ip()), port)),
    }
}

pub fn error_type(exchange: &HttpExchange) -> Option<Cow<'static, str>> {
    match (exchange.error, exchange.response) {
        (Some(HttpError::Timeout), _) => Some(value::TIMEOUT.into()),
        (Some(HttpError::ConnectionReset), _) => Some(value::CONNECTION_RESET.into()),
        (None, Some(r)) if r.status >= 500 => Some(r.status.to_string().into()),
        (None, Some(r)) if r.status >= 400 && exchange.role == Role::Client => Some(r.status.to_string().into()),
        _ => None,
    }
}

/// Attributes of an exchange on the histograms, at most.
const METRIC_ATTRIBUTES_AT_MOST: usize = 9;

/// The histograms' attributes of `exchange`, into `attrs`. A span carries the same ones,
/// written as protobuf by `SpanBuilder::attributes` (spans.rs): the two are kept in step.
fn metric_attributes(exchange: &HttpExchange, route: Option<&str>, texts: &mut Texts, attrs: &mut Vec<KeyValue>) {
    attrs.push(KeyValue::new(attr::HTTP_REQUEST_METHOD, exchange.request.method.clone()));
    if let Some(response) = exchange.response {
        attrs.push(KeyValue::new(attr::HTTP_RESPONSE_STATUS_CODE, i64::from(response.status)));
    }
    attrs.push(KeyValue::new(attr::URL_SCHEME, if exchange.tls { value::HTTPS } else { value::HTTP }));
    attrs.push(KeyValue::new(attr::NETWORK_PROTOCOL_NAME, "http"));
    attrs.push(KeyValue::new(attr::NETWORK_PROTOCOL_VERSION, exchange.request.version));
    if let Some(route) = route {
        attrs.push(KeyValue::new(attr::HTTP_ROUTE, texts.get(route)));
    }
    if exchange.role == Role::Client
        && let Some((server, port)) = server_end(exchange)
    {
        let address = match server {
            ServerEnd::Name(name) => texts.get(name),
            ServerEnd::Address(ip) => texts.ip(ip),
        };
        attrs.push(KeyValue::new(attr::SERVER_ADDRESS, address));
        attrs.push(KeyValue::new(attr::SERVER_PORT, port));
    }
    if let Some(error) = error_type(exchange) {
        attrs.push(KeyValue::new(attr::ERROR_TYPE, error));
    }
}

/// Texts interned per workload, at most: the histograms' dimensions are few in a
/// workload (its routes, the servers it calls), but a route heuristic fed varied paths
/// could grow the set without end, so a full set starts over (it refills with what
/// recurs). About 100 KiB at most per workload.
const TEXTS_AT_MOST: usize = 1_024;

#[derive(Default)]
struct Texts {
    known: HashSet<Arc<str>, foldhash::fast::RandomState>,
    /// An address formatted for lookup.
    scratch: String,
}

impl Texts {
    fn get(&mut self, text: &str) -> StringValue {
        if let Some(shared) = self.known.get(text) {
            return StringValue::from(Arc::clone(shared));
        }
        if self.known.len() >= TEXTS_AT_MOST {
            self.known.clear();
        }
        let shared: Arc<str> = Arc::from(text);
        self.known.insert(Arc::clone(&shared));
        StringValue::from(shared)
    }

    fn ip(&mut self, ip: IpAddr) -> StringValue {
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        let _ = write!(scratch, "{ip}");
        let value = self.get(&scratch);
        self.scratch = scratch;
        value
    }
}

#[cfg(test)]
mod tests {
    use super::{TEXTS_AT_MOST, Texts};

    #[test]
    fn interned_texts_are_the_texts_and_a_full_set_starts_over() {
        let mut texts = Texts::default();
        assert_eq!(texts.get("/users/{id}").as_str(), "/users/{id}");
        assert_eq!(texts.ip("192.0.2.7".parse().unwrap()).as_str(), "192.0.2.7");
        assert_eq!(texts.known.len(), 2);
        for i in 0..TEXTS_AT_MOST * 3 {
            let route = format!("/r/{i}");
            assert_eq!(texts.get(&route).as_str(), route);
            assert!(texts.known.len() <= TEXTS_AT_MOST);
        }
        // A text seen again is the one kept, not a copy.
        let again = |t: &mut Texts| t.known.get("/r/3071").cloned().unwrap();
        let kept = again(&mut texts);
        let _ = texts.get("/r/3071");
        assert!(std::sync::Arc::ptr_eq(&kept, &again(&mut texts)));
    }
}
