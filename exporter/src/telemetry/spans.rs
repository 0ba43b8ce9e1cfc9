//! HTTP exchanges as `OTel` spans, and where spans go. One span exporter serves every
//! workload: the OTLP exporter carries one Resource at a time, so each workload's spans
//! are exported as their own request after `set_resource` (no exporter or thread per
//! process).
use std::{
    collections::HashMap,
    time::{Duration, SystemTime},
};

use flowtel_semconv::{attr, scope};
use opentelemetry::{
    InstrumentationScope, KeyValue,
    trace::{SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState},
};
use opentelemetry_otlp::{SpanExporter, WithExportConfig as _};
use opentelemetry_sdk::{
    Resource,
    error::OTelSdkError,
    trace::{IdGenerator as _, RandomIdGenerator, SpanData, SpanEvents, SpanExporter as _, SpanLinks},
};

use super::{
    http_instruments::{error_type, metric_attributes, server_end},
    sampler::SpanSampler,
    sink::SinkKind,
};
use crate::aggregation::{HttpExchange, Role};

/// Room a span's attributes get beyond the histograms': its usual ones (`url.path`,
/// both ends, user agent, truncation) fit without the vector moving; a query string and
/// the peer's Kubernetes identity may move it once.
const SPAN_ATTRIBUTES_USUALLY: usize = 11;

/// Client exchanges whose ids were given out before their own span was built (their
/// server side finished first), at most; past it, those links are dropped.
const MAX_EARLY_IDS: usize = 65_536;

/// What turns exchanges into spans: ids, the privacy settings, and the ids of client
/// spans whose server span (same host) was built first.
pub struct SpanBuilder {
    ids: RandomIdGenerator,
    sampler: SpanSampler,
    scope: InstrumentationScope,
    query_string: bool,
    early: HashMap<u64, (TraceId, SpanId)>,
}

impl SpanBuilder {
    pub fn new(query_string: bool, sampler: SpanSampler) -> Self {
        let scope = InstrumentationScope::builder(scope::HTTP).with_version(env!("CARGO_PKG_VERSION")).build();
        Self { ids: RandomIdGenerator::default(), sampler, scope, query_string, early: HashMap::new() }
    }

    /// The ids of client exchange `id`, shared by its span and its server side's span:
    /// made by whichever is built first (usually the server's: it answers before the
    /// client reads), taken by the second.
    fn client_ids(&mut self, id: u64, trace: Option<TraceId>) -> (TraceId, SpanId) {
        if let Some(ids) = self.early.remove(&id) {
            return ids;
        }
        if self.early.len() >= MAX_EARLY_IDS {
            self.early.clear();
        }
        let ids = (trace.unwrap_or_else(|| self.ids.new_trace_id()), self.ids.new_span_id());
        self.early.insert(id, ids);
        ids
    }

    /// `boot_wall_ns`: wall-clock time of `CLOCK_MONOTONIC` zero, to place the kernel's
    /// timestamps. A request served here that a process on this host sent becomes the
    /// child of that process's CLIENT span; otherwise a `traceparent` in the request
    /// parents the span; otherwise it starts a trace. `None`: the sampler leaves the
    /// trace out (both ends on this host get the same answer: it goes by trace id).
    pub fn span(&mut self, exchange: &HttpExchange, route: Option<&str>, boot_wall_ns: u64) -> Option<SpanData> {
        let request = &exchange.request;
        let parent = request.traceparent.as_deref().and_then(parse_traceparent);
        let remote_trace = parent.map(|(trace, _, _)| trace);
        let mut span_id = None;
        let (trace_id, parent_span_id, flags) = match (exchange.role, exchange.parent, parent) {
            (Role::Server, Some(client), _) => {
                let (trace, client_span) = self.client_ids(client, remote_trace);
                (trace, client_span, parent.map_or(TraceFlags::SAMPLED, |(_, _, flags)| flags))
            }
            (Role::Client, ..) if exchange.linked => {
                let (trace, own) = self.client_ids(exchange.id, remote_trace);
                span_id = Some(own);
                let (parent_span, flags) = parent.map_or((SpanId::INVALID, TraceFlags::SAMPLED), |(_, s, f)| (s, f));
                (trace, parent_span, flags)
            }
            (_, _, Some((trace, span, flags))) => (trace, span, flags),
            (_, _, None) => (self.ids.new_trace_id(), SpanId::INVALID, TraceFlags::SAMPLED),
        };
        if !self.sampler.sampled(trace_id, parent.map(|(_, _, flags)| flags)) {
            return None;
        }
        let flags = flags | TraceFlags::SAMPLED;
        let span_id = span_id.unwrap_or_else(|| self.ids.new_span_id());
        let parent_is_remote = parent_span_id != SpanId::INVALID && exchange.parent.is_none() && parent.is_some();
        let mut attributes = metric_attributes(exchange, route, SPAN_ATTRIBUTES_USUALLY);
        attributes.push(KeyValue::new(attr::URL_PATH, request.path.clone()));
        if self.query_string
            && let Some(query) = &request.query
        {
            attributes.push(KeyValue::new(attr::URL_QUERY, query.clone()));
        }
        let (client, server) = match exchange.role {
            Role::Server => (exchange.peer, exchange.local),
            Role::Client => (exchange.local, exchange.peer),
        };
        if let Some(client) = client {
            attributes.push(KeyValue::new(attr::CLIENT_ADDRESS, client.ip().to_string()));
            attributes.push(KeyValue::new(attr::CLIENT_PORT, i64::from(client.port())));
        }
        if exchange.role == Role::Server
            && let Some((address, port)) =
                server_end(exchange).or(server.map(|s| (s.ip().to_string(), i64::from(s.port()))))
        {
            attributes.push(KeyValue::new(attr::SERVER_ADDRESS, address));
            attributes.push(KeyValue::new(attr::SERVER_PORT, port));
        }
        if let Some(peer) = exchange.peer {
            attributes.push(KeyValue::new(attr::NETWORK_PEER_ADDRESS, peer.ip().to_string()));
            attributes.push(KeyValue::new(attr::NETWORK_PEER_PORT, i64::from(peer.port())));
        }
        if let Some(agent) = &request.user_agent {
            attributes.push(KeyValue::new(attr::USER_AGENT_ORIGINAL, agent.clone()));
        }
        attributes.push(KeyValue::new(attr::HTTP_TRUNCATED, request.truncated));
        let status = match error_type(exchange) {
            Some(error) => Status::Error { description: error.into() },
            None => Status::Unset,
        };
        let at = |ns: u64| SystemTime::UNIX_EPOCH + Duration::from_nanos(boot_wall_ns.saturating_add(ns));
        Some(SpanData {
            span_context: SpanContext::new(trace_id, span_id, flags, false, TraceState::default()),
            parent_span_id,
            parent_span_is_remote: parent_is_remote,
            span_kind: match exchange.role {
                Role::Server => SpanKind::Server,
                Role::Client => SpanKind::Client,
            },
            name: match route {
                Some(route) => format!("{} {route}", request.method).into(),
                None => request.method.clone().into(),
            },
            start_time: at(exchange.start_ns),
            end_time: at(exchange.end_ns),
            attributes,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status,
            instrumentation_scope: self.scope.clone(),
        })
    }
}

/// `00-<trace id>-<parent id>-<flags>` (W3C Trace Context); `None` when malformed or
/// all-zero, as the specification requires.
fn parse_traceparent(header: &str) -> Option<(TraceId, SpanId, TraceFlags)> {
    let mut parts = header.trim().split('-');
    let (version, trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version.len() != 2 || version == "ff" || trace.len() != 32 || span.len() != 16 || flags.len() != 2 {
        return None;
    }
    let trace = TraceId::from_hex(trace).ok().filter(|t| *t != TraceId::INVALID)?;
    let span = SpanId::from_hex(span).ok().filter(|s| *s != SpanId::INVALID)?;
    let flags = TraceFlags::new(u8::from_str_radix(flags, 16).ok()?);
    Some((trace, span, flags))
}

/// Spans per OTLP request, at most: well under the 4 MiB a gRPC receiver takes by
/// default (a span here is about 1 KiB).
const SPANS_PER_REQUEST: usize = 1_024;

fn print_spans(spans: &[SpanData]) {
    for span in spans {
        let took = span.end_time.duration_since(span.start_time).unwrap_or_default();
        println!("span {:?} {} {took:?}", span.span_kind, span.name);
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot build the OTLP span exporter: {0}")]
pub struct SpanSinkError(#[source] opentelemetry_otlp::ExporterBuildError);

pub struct SpanSink {
    otlp: Option<SpanExporter>,
    console: bool,
    in_outage: bool,
    /// Each request's deadline: without one a black-holed collector would hold a
    /// request until TCP gives up, minutes later.
    timeout: Duration,
}

impl SpanSink {
    pub fn new(kind: SinkKind, timeout: Duration) -> Result<Self, SpanSinkError> {
        let otlp = match kind {
            SinkKind::OtlpGrpc => Some(SpanExporter::builder().with_tonic().build().map_err(SpanSinkError)?),
            SinkKind::OtlpHttp => Some(
                SpanExporter::builder()
                    .with_http()
                    .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                    .build()
                    .map_err(SpanSinkError)?,
            ),
            SinkKind::Console | SinkKind::None => None,
        };
        Ok(Self { otlp, console: kind == SinkKind::Console, in_outage: false, timeout })
    }

    /// Exports each workload's spans; returns the failed export requests and how many
    /// spans could not be delivered (spans are not kept through an outage: the metrics
    /// carry the counts). After the first failure the rest of this interval's spans are
    /// counted lost without a try: a black-holed collector costs one timeout per
    /// interval, not one per workload.
    pub async fn export(&mut self, batches: Vec<(Resource, Vec<SpanData>)>) -> (u64, u64) {
        let mut failed_exports = 0;
        let mut lost_spans = 0;
        for (resource, spans) in batches {
            if failed_exports > 0 {
                lost_spans += spans.len() as u64;
                continue;
            }
            let Some(exporter) = &mut self.otlp else {
                if self.console {
                    print_spans(&spans);
                }
                continue;
            };
            exporter.set_resource(&resource);
            let mut spans = spans.into_iter();
            loop {
                // Moved, not cloned, into each request.
                let chunk: Vec<SpanData> = spans.by_ref().take(SPANS_PER_REQUEST).collect();
                if chunk.is_empty() {
                    break;
                }
                let n = chunk.len() as u64;
                if failed_exports > 0 {
                    lost_spans += n;
                    continue;
                }
                let sent = tokio::time::timeout(self.timeout, exporter.export(chunk)).await;
                match sent.unwrap_or(Err(OTelSdkError::Timeout(self.timeout))) {
                    Ok(()) if self.in_outage => {
                        tracing::info!("span export recovered");
                        self.in_outage = false;
                    }
                    Ok(()) => {}
                    Err(err) => {
                        if !self.in_outage {
                            tracing::warn!(error = %err, "span export failed; spans are dropped (and counted) until the collector is back");
                            self.in_outage = true;
                        }
                        failed_exports += 1;
                        lost_spans += n;
                    }
                }
            }
        }
        (failed_exports, lost_spans)
    }

    pub fn shutdown(&mut self) {
        if let Some(exporter) = &mut self.otlp {
            let _ = exporter.shutdown();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_traceparent;

    #[test]
    fn traceparent_is_parsed_strictly() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let (trace, span, flags) = parse_traceparent(good).unwrap();
        assert_eq!(trace.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(span.to_string(), "00f067aa0ba902b7");
        assert!(flags.is_sampled());
        assert!(parse_traceparent("00-00000000000000000000000000000000-00f067aa0ba902b7-01").is_none());
        assert!(parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7").is_none());
        assert!(parse_traceparent("garbage").is_none());
    }
}
