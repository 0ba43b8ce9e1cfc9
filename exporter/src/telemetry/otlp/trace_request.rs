//! Held spans into `ExportTraceServiceRequest` bodies: each workload's spans under its
//! Resource and the `flowtel.http` scope, several workloads to a request, each request
//! at most `max_bytes` (a receiver takes 4 MiB by default).
use flowtel_semconv::scope;
use opentelemetry_sdk::Resource;

use super::wire;

/// `ScopeSpans.spans`: each held span is this field, tag and length included, so a
/// run of them is already the spans part of a `ScopeSpans` message.
const SCOPE_SPANS_SPANS: u32 = 2;

/// One workload's spans, encoded, since the last flush.
#[derive(Debug, Default)]
pub struct SpanBytes {
    encoded: Vec<u8>,
    count: usize,
}

impl SpanBytes {
    /// The same buffer without its spans, its room kept.
    pub fn emptied(mut self) -> Self {
        self.encoded.clear();
        self.count = 0;
        self
    }

    /// Bytes of room.
    pub fn capacity(&self) -> usize {
        self.encoded.capacity()
    }

    /// Adds one span; `body` writes its `Span` fields.
    pub fn push(&mut self, body: impl FnOnce(&mut Vec<u8>)) {
        wire::message(&mut self.encoded, SCOPE_SPANS_SPANS, body);
        self.count += 1;
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn byte_len(&self) -> usize {
        self.encoded.len()
    }

    /// Each span's bytes (its whole field), in order.
    fn spans(&self) -> impl Iterator<Item = &[u8]> {
        let mut rest = self.encoded.as_slice();
        std::iter::from_fn(move || {
            // A tag byte, the length varint, the body: written by `push` alone.
            let (length, varint_len) = read_varint(rest.get(1..)?)?;
            let end = (1 + varint_len).checked_add(usize::try_from(length).ok()?)?;
            let (span, after) = rest.split_at_checked(end)?;
            rest = after;
            Some(span)
        })
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
/// that goes alone).
pub fn requests(batches: &[(Resource, SpanBytes)], max_bytes: usize) -> Vec<TraceRequest> {
    let scope = scope_bytes();
    let mut requests = Vec::new();
    // Sized once for what is held, up to a request: no regrowing while framing.
    let mut left: usize = batches.iter().map(|(_, spans)| spans.byte_len() + 1024).sum();
    let fresh = |left: &mut usize| {
        let size = (*left).min(max_bytes + 1024);
        *left = left.saturating_sub(size);
        TraceRequest { body: Vec::with_capacity(size), spans: 0 }
    };
    let mut current = fresh(&mut left);
    for (resource, spans) in batches.iter().filter(|(_, spans)| !spans.is_empty()) {
        let resource = resource_bytes(resource);
        let overhead = resource.len() + scope.len() + 32;
        let mut pending = spans.spans().peekable();
        let mut framed = 0;
        while pending.peek().is_some() {
            let room = max_bytes.saturating_sub(current.body.len() + overhead);
            let (mut chunk_bytes, mut chunk) = (0, Vec::new());
            while let Some(span) =
                pending.next_if(|span| chunk.is_empty() && current.spans == 0 || chunk_bytes + span.len() <= room)
            {
                chunk_bytes += span.len();
                chunk.push(span);
            }
            if chunk.is_empty() {
                requests.push(std::mem::replace(&mut current, fresh(&mut left)));
                continue;
            }
            current.spans += chunk.len() as u64;
            framed += chunk.len();
            // `ExportTraceServiceRequest.resource_spans` (1): `ResourceSpans` with its
            // resource (1), one `ScopeSpans` (2) and the resource's schema (3).
            wire::message(&mut current.body, 1, |resource_spans| {
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
        }
        // Written by `push` alone, the bytes always walk back into every span.
        debug_assert_eq!(framed, spans.len(), "spans lost in framing");
    }
    if current.spans > 0 {
        requests.push(current);
    }
    requests
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
        let framed = requests(&batches, 4096);
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
    fn a_span_larger_than_a_request_goes_alone() {
        let framed = requests(&[(resource("a"), spans("a", 3, 5000))], 4096);
        assert_eq!(framed.iter().map(|r| r.spans).collect::<Vec<_>>(), [1, 1, 1]);
        assert!(requests(&[(resource("a"), SpanBytes::default())], 4096).is_empty());
    }
}
