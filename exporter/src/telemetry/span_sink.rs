//! Where spans go: the collector over OTLP (`otlp::TracesClient`), the console, or
//! nowhere. A flush is framed into as few requests as fit (`otlp::requests`), one at
//! a time as they are sent; each request has a deadline, and once one fails the rest
//! of that flush is counted lost without a try: a black-holed collector costs one
//! timeout per flush, not one per request. Spans are not kept through an outage: the
//! metrics carry the counts.
use std::time::Duration;

use opentelemetry_sdk::Resource;

use super::{
    otlp::{SpanBytes, TraceRequest, TracesClient, TracesClientError, TracesTarget, requests},
    sink::SinkKind,
};

/// Bytes of spans per export request, at most: a quarter of the 4 MiB a gRPC receiver
/// takes by default (a span is about 300 to 500 bytes).
const REQUEST_BYTES: usize = 1 << 20;

/// What became of a flush.
#[derive(Debug, Default)]
pub struct SpanOutcome {
    /// Export requests that failed.
    pub failed: u64,
    /// Spans not delivered: failed, past the deadline, or rejected by the collector.
    pub lost: u64,
    /// The flush's span buffers, emptied, for the loop to write into again: pages kept
    /// in use are not faulted in again after memory is given back.
    pub emptied: Vec<SpanBytes>,
}

pub struct SpanSink {
    otlp: Option<TracesClient>,
    console: bool,
    in_outage: bool,
    /// Each request's deadline: without one a black-holed collector would hold a
    /// request until TCP gives up, minutes later.
    timeout: Duration,
}

impl SpanSink {
    /// Made in the runtime it will send from. `target` is where OTLP goes, when `kind`
    /// is OTLP.
    pub fn new(kind: SinkKind, target: Option<&TracesTarget>, timeout: Duration) -> Result<Self, TracesClientError> {
        let otlp = match (kind, target) {
            (SinkKind::OtlpGrpc | SinkKind::OtlpHttp, Some(target)) => Some(TracesClient::new(target, timeout)?),
            _ => None,
        };
        Ok(Self { otlp, console: kind == SinkKind::Console, in_outage: false, timeout })
    }

    pub async fn export(&mut self, batches: Vec<(Resource, SpanBytes)>) -> SpanOutcome {
        let (failed, lost) = self.send(&batches).await;
        let emptied = batches.into_iter().map(|(_, spans)| spans.emptied()).collect();
        SpanOutcome { failed, lost, emptied }
    }

    /// Frames and sends one request at a time: (requests failed, spans lost).
    async fn send(&mut self, batches: &[(Resource, SpanBytes)]) -> (u64, u64) {
        let requests = requests(batches, REQUEST_BYTES);
        let Some(client) = &mut self.otlp else {
            if self.console {
                requests.for_each(|request| print_spans(&request));
            }
            return (0, 0);
        };
        let (mut failed, mut lost) = (0, 0);
        for TraceRequest { body, spans } in requests {
            if failed > 0 {
                lost += spans;
                continue;
            }
            match tokio::time::timeout(self.timeout, client.export(body)).await {
                Ok(Ok(rejected)) => {
                    if rejected > 0 {
                        tracing::warn!(rejected, "the collector rejected spans of an export request; counted lost");
                    }
                    lost += rejected;
                    if self.in_outage {
                        tracing::info!("span export recovered");
                        self.in_outage = false;
                    }
                }
                failure => {
                    if !self.in_outage {
                        let error = failure.map_or_else(
                            |_| format!("no answer within {:?}", self.timeout),
                            |r| r.err().map(|e| e.to_string()).unwrap_or_default(),
                        );
                        tracing::warn!(%error, "span export failed; spans are dropped (and counted) until the collector is back");
                        self.in_outage = true;
                    }
                    failed += 1;
                    lost += spans;
                }
            }
        }
        (failed, lost)
    }

    pub fn shutdown(&mut self) {
        self.otlp = None;
    }
}

/// One line per span, for someone without a collector.
fn print_spans(request: &TraceRequest) {
    use opentelemetry_proto::tonic::{collector::trace::v1::ExportTraceServiceRequest, trace::v1::span::SpanKind};
    use prost::Message as _;
    let Ok(decoded) = ExportTraceServiceRequest::decode(request.body.as_slice()) else { return };
    for span in decoded.resource_spans.iter().flat_map(|r| &r.scope_spans).flat_map(|s| &s.spans) {
        let took = Duration::from_nanos(span.end_time_unix_nano.saturating_sub(span.start_time_unix_nano));
        let kind = SpanKind::try_from(span.kind).map_or("?", |k| k.as_str_name());
        println!("span {kind} {} {took:?}", span.name);
    }
}
