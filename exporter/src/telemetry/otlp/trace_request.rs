//! Held spans into `ExportTraceServiceRequest` bodies: each workload's spans under its
//! Resource and the `flowtel.http` scope, several workloads to a request, each request
//! at most `max_bytes` (a receiver takes 4 MiB by default).
use flowtel_semconv::scope;
use opentelemetry_sdk::Resource;

use super::wire;

/// `ScopeSpans.spans`: each held span is this field, tag and length included, so a
/// run of them is already the spans part of a `ScopeSpans` message.
const SCOPE_SPANS_SPANS: u32 = 2;

/// Room each block of held spans is made with. Blocks are written in place and not
/// regrown (a span starts the next block when less than [`SPAN_ROOM`] is left), so a
/// workload's held spans grow in these steps instead of by doubling and copying, whose
/// freed halves left the heap too fragmented to reuse: fresh pages, faulted in, for
/// every larger buffer (`bench http-cost`, agent page faults per request).
const BLOCK_BYTES: usize = 64 << 10;
/// Left in a block, a span starts the next one (a larger span still fits, regrowing
/// its block once).
const SPAN_ROOM: usize = 4 << 10;

/// One workload's spans, encoded, since the last flush.
#[derive(Debug, Default)]
#[cfg_attr(test, derive(Clone))]
pub struct SpanBytes {
    /// Written in order; those past `active` are empty room kept from an earlier use.
    blocks: Vec<Vec<u8>>,
    active: usize,
    count: usize,
}

impl SpanBytes {
    /// The same buffer without its spans, its room kept.
    pub fn emptied(mut self) -> Self {
        self.blocks.iter_mut().for_each(Vec::clear);
        self.active = 0;
        self.count = 0;
        self
    }

    /// Bytes of room.
    pub fn capacity(&self) -> usize {
        self.blocks.iter().map(Vec::capacity).sum()
    }

    /// Adds one span; `body` writes its `Span` fields.
    pub fn push(&mut self, body: impl FnOnce(&mut Vec<u8>)) {
        let full = self.blocks.get(self.active).is_none_or(|b| !b.is_empty() && b.capacity() - b.len() < SPAN_ROOM);
        if full {
            self.active += usize::from(!self.blocks.is_empty());
            if self.active == self.blocks.len() {
                self.blocks.push(Vec::with_capacity(BLOCK_BYTES));
            }
        }
        wire::message(&mut self.blocks[self.active], SCOPE_SPANS_SPANS, body);
        self.count += 1;
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn byte_len(&self) -> usize {
        self.blocks.iter().map(Vec::len).sum()
    }

    /// Each span's bytes (its whole field), in order.
    fn spans(&self) -> EachSpan<'_> {
        EachSpan { blocks: self.blocks.iter(), rest: &[] }
    }
}

/// The spans of a [`SpanBytes`], each its bytes.
struct EachSpan<'a> {
    blocks: std::slice::Iter<'a, Vec<u8>>,
    rest: &'a [u8],
}

impl<'a> Iterator for EachSpan<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        while self.rest.is_empty() {
            self.rest = self.blocks.next()?.as_slice();
        }
        // A tag byte, the length varint, the body: written by `push` alone.
        let (length, varint_len) = read_varint(self.rest.get(1..)?)?;
        let end = (1 + varint_len).checked_add(usize::try_from(length).ok()?)?;
        let (span, after) = self.rest.split_at_checked(end)?;
        self.rest = after;
        Some(span)
    }
}

fn read_varint(bytes: &[u8]) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for (i, byte) in bytes.iter().take(10).enumerate() {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

/// One export request's body and how many spans it carries.
#[derive(Debug)]
pub struct TraceRequest {
    pub body: Vec<u8>,
    pub spans: u64,
}

/// Frames held spans into requests of at most about `max_bytes` (a span larger than
/// that goes alone), one request at a time as the iterator is advanced: a flush being
/// sent holds one request's copy of its spans, not a copy of all of them.
pub fn requests(batches: &[(Resource, SpanBytes)], max_bytes: usize) -> Framer<'_> {
    Framer {
        batches,
        next_batch: 0,
        current: None,
        scope: scope_bytes(),
        max_bytes,
        // Sized for what is held, up to a request: no regrowing while framing.
        left: batches.iter().map(|(_, spans)| spans.byte_len() + 1024).sum(),
        framed: 0,
    }
}

/// The requests of one flush, framed as they are taken.
pub struct Framer<'a> {
    batches: &'a [(Resource, SpanBytes)],
    next_batch: usize,
    /// The workload being framed: its Resource, encoded, and its spans not yet framed.
    current: Option<(EncodedResource, Spans<'a>)>,
    scope: Vec<u8>,
    max_bytes: usize,
    /// Held bytes not yet given a request body (sizes the next one).
    left: usize,
    /// Spans of the current workload framed so far.
    framed: usize,
}

type Spans<'a> = std::iter::Peekable<EachSpan<'a>>;

impl<'a> Framer<'a> {
    /// The workload whose spans come next, moving past those with none left.
    fn current(&mut self) -> Option<&mut (EncodedResource, Spans<'a>)> {
        while self.current.as_mut().is_none_or(|(_, spans)| spans.peek().is_none()) {
            if self.current.take().is_some() {
                // Written by `push` alone, the bytes always walk back into every span.
                debug_assert_eq!(self.framed, self.batches[self.next_batch - 1].1.len(), "spans lost in framing");
            }
            self.framed = 0;
            let (resource, spans) = self.batches.get(self.next_batch)?;
            self.next_batch += 1;
            self.current = Some((resource_bytes(resource), spans.spans().peekable()));
        }
        self.current.as_mut()
    }
}

impl Iterator for Framer<'_> {
    type Item = TraceRequest;

    fn next(&mut self) -> Option<TraceRequest> {
        let size = self.left.min(self.max_bytes + 1024);
        self.left = self.left.saturating_sub(size);
        let mut request = TraceRequest { body: Vec::with_capacity(size), spans: 0 };
        // Held apart while `current` borrows the framer, and put back below.
        let (scope, max_bytes) = (std::mem::take(&mut self.scope), self.max_bytes);
        while let Some((resource, pending)) = self.current() {
            let overhead = resource.len() + scope.len() + 32;
            let room = max_bytes.saturating_sub(request.body.len() + overhead);
            let (mut chunk_bytes, mut chunk) = (0, Vec::new());
            while let Some(span) =
                pending.next_if(|span| chunk.is_empty() && request.spans == 0 || chunk_bytes + span.len() <= room)
            {
                chunk_bytes += span.len();
                chunk.push(span);
            }
            if chunk.is_empty() {
                // This request is full.
                break;
            }
            request.spans += chunk.len() as u64;
            // `ExportTraceServiceRequest.resource_spans` (1): `ResourceSpans` with its
            // resource (1), one `ScopeSpans` (2) and the resource's schema (3).
            wire::message(&mut request.body, 1, |resource_spans| {
                resource_spans.extend_from_slice(&resource.encoded);
                wire::message(resource_spans, 2, |scope_spans| {
                    scope_spans.extend_from_slice(&scope);
                    for span in &chunk {
                        scope_spans.extend_from_slice(span);
                    }
                });
                if let Some(schema) = &resource.schema_url {
                    wire::string(resource_spans, 3, schema);
                }
            });
            self.framed += chunk.len();
        }
        self.scope = scope;
        (request.spans > 0).then_some(request)
    }
}

/// `ScopeSpans.scope` (1): `InstrumentationScope` name (1) and version (2).
fn scope_bytes() -> Vec<u8> {
    let mut out = Vec::new();
    wire::message(&mut out, 1, |scope| {
        wire::string(scope, 1, scope::HTTP);
        wire::string(scope, 2, env!("CARGO_PKG_VERSION"));
    });
    out
}

struct EncodedResource {
    /// `ResourceSpans.resource` (1): `Resource` with its attributes (1).
    encoded: Vec<u8>,
    schema_url: Option<String>,
}

impl EncodedResource {
    fn len(&self) -> usize {
        self.encoded.len() + self.schema_url.as_ref().map_or(0, |s| s.len() + 4)
    }
}

fn resource_bytes(resource: &Resource) -> EncodedResource {
    let mut encoded = Vec::new();
    wire::message(&mut encoded, 1, |out| {
        for (key, value) in resource {
            wire::attribute::value(out, 1, key.as_str(), value);
        }
    });
    EncodedResource { encoded, schema_url: resource.schema_url().map(str::to_owned) }
}

#[cfg(test)]
mod tests {
    use opentelemetry::KeyValue;
    use opentelemetry_proto::tonic::{
        collector::trace::v1::ExportTraceServiceRequest, common::v1::any_value::Value as Any,
    };
    use opentelemetry_sdk::Resource;
    use prost::Message as _;

    use super::{SpanBytes, requests, wire};

    /// `n` spans named `prefix-<i>`, each about `pad` bytes.
    fn spans(prefix: &str, n: usize, pad: usize) -> SpanBytes {
        let mut spans = SpanBytes::default();
        for i in 0..n {
            spans.push(|span| {
                wire::bytes(span, 1, &[7; 16]);
                wire::string(span, 5, &format!("{prefix}-{i}"));
                wire::attribute::str(span, 9, "pad", &"x".repeat(pad));
            });
        }
        spans
    }

    fn resource(name: &str) -> Resource {
        Resource::builder_empty()
            .with_attributes([
                KeyValue::new("service.name", name.to_owned()),
                KeyValue::new(
                    "process.command_args",
                    opentelemetry::Value::Array(opentelemetry::Array::String(vec!["a".into(), "b c".into()])),
                ),
                KeyValue::new("process.pid", 42),
            ])
            .build()
    }

    #[test]
    fn workloads_share_requests_and_a_full_request_starts_another() {
        let batches = [(resource("a"), spans("a", 30, 100)), (resource("b"), spans("b", 30, 100))];
        let framed: Vec<_> = requests(&batches, 4096).collect();
        assert!(framed.len() > 1, "{} requests", framed.len());
        assert_eq!(framed.iter().map(|r| r.spans).sum::<u64>(), 60);
        let mut names = Vec::new();
        for request in &framed {
            assert!(request.body.len() <= 4096, "{} bytes", request.body.len());
            let decoded = ExportTraceServiceRequest::decode(request.body.as_slice()).expect("decodes");
            let in_request: usize =
                decoded.resource_spans.iter().flat_map(|r| &r.scope_spans).map(|s| s.spans.len()).sum();
            assert_eq!(in_request as u64, request.spans);
            for resource_spans in decoded.resource_spans {
                let attributes = resource_spans.resource.expect("resource").attributes;
                let args =
                    attributes.iter().find(|kv| kv.key == "process.command_args").and_then(|kv| kv.value.clone());
                let Some(Any::ArrayValue(args)) = args.and_then(|v| v.value) else { panic!("{attributes:?}") };
                assert_eq!(args.values.len(), 2);
                let service = attributes.iter().find(|kv| kv.key == "service.name").and_then(|kv| kv.value.clone());
                let Some(Any::StringValue(service)) = service.and_then(|v| v.value) else { panic!("{attributes:?}") };
                for scope_spans in resource_spans.scope_spans {
                    assert_eq!(scope_spans.scope.expect("scope").name, flowtel_semconv::scope::HTTP);
                    for span in scope_spans.spans {
                        assert!(span.name.starts_with(&service), "{} under {service}", span.name);
                        names.push(span.name);
                    }
                }
            }
        }
        let want: Vec<String> = ["a", "b"].iter().flat_map(|p| (0..30).map(move |i| format!("{p}-{i}"))).collect();
        assert_eq!(names, want, "every span once, in order");
    }

    #[test]
    fn spans_fill_blocks_in_order_and_an_emptied_buffer_refills_without_growing() {
        let names = |held: &SpanBytes| -> Vec<String> {
            let batches = [(resource("a"), held.clone())];
            requests(&batches, 1 << 20)
                .flat_map(|r| ExportTraceServiceRequest::decode(r.body.as_slice()).expect("decodes").resource_spans)
                .flat_map(|r| r.scope_spans)
                .flat_map(|s| s.spans)
                .map(|s| s.name)
                .collect()
        };
        // About 300 KiB: five blocks and more; one span larger than a block among them.
        let mut held = spans("a", 1000, 300);
        held.push(|span| wire::string(span, 5, &"big".repeat(30_000)));
        assert!(held.blocks.len() > 4, "{} blocks", held.blocks.len());
        let got = names(&held);
        assert_eq!(got.len(), 1001);
        assert!(got[..1000].iter().enumerate().all(|(i, name)| *name == format!("a-{i}")), "in order");
        let room = held.capacity();
        let mut again = held.emptied();
        assert!(again.is_empty() && again.byte_len() == 0);
        for i in 0..1000 {
            again.push(|span| wire::string(span, 5, &format!("b-{i}")));
        }
        assert_eq!(again.capacity(), room, "written into the room it kept");
        assert_eq!(names(&again).len(), 1000);
    }

    #[test]
    fn a_span_larger_than_a_request_goes_alone() {
        let framed: Vec<_> = requests(&[(resource("a"), spans("a", 3, 5000))], 4096).collect();
        assert_eq!(framed.iter().map(|r| r.spans).collect::<Vec<_>>(), [1, 1, 1]);
        assert!(requests(&[(resource("a"), SpanBytes::default())], 4096).next().is_none());
    }
}
