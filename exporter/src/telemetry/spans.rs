//! HTTP exchanges as `OTel` spans, written straight into OTLP protobuf bytes on the
//! loop thread (`otlp::wire`): no `SpanData`, no per-span allocations; each workload
//! holds its spans' bytes until the span sink frames them into export requests.
use std::{fmt::Write as _, net::IpAddr};

use flowtel_semconv::{attr, value};
use opentelemetry::trace::{SpanId, TraceFlags, TraceId};
use opentelemetry_sdk::trace::{IdGenerator as _, RandomIdGenerator};

use super::{
    http_instruments::{ServerEnd, error_type, server_end},
    otlp::{SpanBytes, wire, wire::attribute},
    sampler::SpanSampler,
};
use crate::{
    aggregation::{HttpExchange, KernelKeyMap, Role},
    kubernetes::PeerIdentity,
};

/// Client exchanges whose ids were given out before their own span was built (their
/// server side finished first), at most; past it, those links are dropped.
const MAX_EARLY_IDS: usize = 65_536;

/// What turns exchanges into spans: ids, the privacy settings, and the ids of client
/// spans whose server span (same host) was built first.
pub struct SpanBuilder {
    ids: RandomIdGenerator,
    sampler: SpanSampler,
    query_string: bool,
    early: KernelKeyMap<u64, (TraceId, SpanId)>,
    /// Reused for the text a span needs formatted (its name, addresses).
    text: String,
}

impl SpanBuilder {
    pub fn new(query_string: bool, sampler: SpanSampler) -> Self {
        Self {
            ids: RandomIdGenerator::default(),
            sampler,
            query_string,
            early: KernelKeyMap::default(),
            text: String::new(),
        }
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

    /// Writes `exchange`'s span into `out` and says whether it did. `boot_wall_ns`:
    /// wall-clock time of `CLOCK_MONOTONIC` zero, to place the kernel's timestamps;
    /// `peer`: the other end's identity in the cluster (on the span only: on the
    /// histograms it would multiply series by client pods). A request served here that
    /// a process on this host sent becomes the child of that process's CLIENT span;
    /// otherwise a `traceparent` in the request parents the span; otherwise it starts a
    /// trace. Nothing is written when the sampler leaves the trace out (both ends on this
    /// host get the same answer: it goes by trace id).
    pub fn write(
        &mut self,
        exchange: &HttpExchange,
        route: Option<&str>,
        boot_wall_ns: u64,
        peer: Option<&PeerIdentity>,
        out: &mut SpanBytes,
    ) -> bool {
        let parent = exchange.request.traceparent.as_deref().and_then(parse_traceparent);
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
            return false;
        }
        let ids = SpanIds {
            trace: trace_id,
            span: span_id.unwrap_or_else(|| self.ids.new_span_id()),
            parent: parent_span_id,
            parent_is_remote: parent_span_id != SpanId::INVALID && exchange.parent.is_none() && parent.is_some(),
            flags: flags | TraceFlags::SAMPLED,
        };
        out.push(|span| self.encode(span, exchange, route, boot_wall_ns, peer, &ids));
        true
    }

    /// The fields of one `Span` message (`trace.proto`), attributes in the order the
    /// histograms have them, then the span's own.
    fn encode(
        &mut self,
        span: &mut Vec<u8>,
        exchange: &HttpExchange,
        route: Option<&str>,
        boot_wall_ns: u64,
        peer: Option<&PeerIdentity>,
        ids: &SpanIds,
    ) {
        let request = &exchange.request;
        wire::bytes(span, 1, &ids.trace.to_bytes());
        wire::bytes(span, 2, &ids.span.to_bytes());
        if ids.parent != SpanId::INVALID {
            wire::bytes(span, 4, &ids.parent.to_bytes());
        }
        let remote = if ids.parent_is_remote { SPAN_FLAGS_IS_REMOTE } else { 0 };
        wire::fixed32(span, 16, u32::from(ids.flags.to_u8()) | SPAN_FLAGS_HAS_IS_REMOTE | remote);
        match route {
            Some(route) => {
                self.text.clear();
                let _ = write!(self.text, "{} {route}", request.method);
                wire::string(span, 5, &self.text);
            }
            None => wire::string(span, 5, &request.method),
        }
        wire::uint(
            span,
            6,
            match exchange.role {
                Role::Server => SPAN_KIND_SERVER,
                Role::Client => SPAN_KIND_CLIENT,
            },
        );
        wire::fixed64(span, 7, boot_wall_ns.saturating_add(exchange.start_ns));
        wire::fixed64(span, 8, boot_wall_ns.saturating_add(exchange.end_ns));
        let error = error_type(exchange);
        self.attributes(span, exchange, route, error.as_deref());
        if let Some(peer) = peer {
            attribute::str(span, ATTRIBUTES, attr::PEER_K8S_NAMESPACE_NAME, &peer.namespace);
            for (key, value) in [
                (attr::PEER_K8S_POD_NAME, &peer.pod),
                (attr::PEER_K8S_DEPLOYMENT_NAME, &peer.deployment),
                (attr::PEER_K8S_SERVICE_NAME, &peer.service),
            ] {
                if let Some(value) = value {
                    attribute::str(span, ATTRIBUTES, key, value);
                }
            }
        }
        if let Some(error) = error {
            // `Status`: message 2, code 3 (ERROR).
            wire::message(span, 15, |status| {
                wire::string(status, 2, &error);
                wire::uint(status, 3, STATUS_CODE_ERROR);
            });
        }
    }

    /// The histograms' attributes (`metric_attributes` in `http_instruments.rs`, kept in
    /// step), then the span's own.
    fn attributes(&mut self, span: &mut Vec<u8>, exchange: &HttpExchange, route: Option<&str>, error: Option<&str>) {
        let request = &exchange.request;
        attribute::str(span, ATTRIBUTES, attr::HTTP_REQUEST_METHOD, &request.method);
        if let Some(response) = exchange.response {
            attribute::int(span, ATTRIBUTES, attr::HTTP_RESPONSE_STATUS_CODE, i64::from(response.status));
        }
        attribute::str(span, ATTRIBUTES, attr::URL_SCHEME, if exchange.tls { value::HTTPS } else { value::HTTP });
        attribute::str(span, ATTRIBUTES, attr::NETWORK_PROTOCOL_NAME, "http");
        attribute::str(span, ATTRIBUTES, attr::NETWORK_PROTOCOL_VERSION, request.version);
        if let Some(route) = route {
            attribute::str(span, ATTRIBUTES, attr::HTTP_ROUTE, route);
        }
        // `server.*`: on a client span as on its histogram (the Host header's name, else
        // the peer); on a server span, the local address.
        if let Some((server, port)) = server_end(exchange) {
            match server {
                ServerEnd::Name(name) => attribute::str(span, ATTRIBUTES, attr::SERVER_ADDRESS, name),
                ServerEnd::Address(ip) => {
                    self.ip(ip);
                    attribute::str(span, ATTRIBUTES, attr::SERVER_ADDRESS, &self.text);
                }
            }
            attribute::int(span, ATTRIBUTES, attr::SERVER_PORT, port);
        }
        if let Some(error) = error {
            attribute::str(span, ATTRIBUTES, attr::ERROR_TYPE, error);
        }
        attribute::str(span, ATTRIBUTES, attr::URL_PATH, &request.path);
        if self.query_string
            && let Some(query) = &request.query
        {
            attribute::str(span, ATTRIBUTES, attr::URL_QUERY, query);
        }
        let client = match exchange.role {
            Role::Server => exchange.peer,
            Role::Client => exchange.local,
        };
        if let Some(client) = client {
            self.ip(client.ip());
            attribute::str(span, ATTRIBUTES, attr::CLIENT_ADDRESS, &self.text);
            attribute::int(span, ATTRIBUTES, attr::CLIENT_PORT, i64::from(client.port()));
        }
        if let Some(peer) = exchange.peer {
            self.ip(peer.ip());
            attribute::str(span, ATTRIBUTES, attr::NETWORK_PEER_ADDRESS, &self.text);
            attribute::int(span, ATTRIBUTES, attr::NETWORK_PEER_PORT, i64::from(peer.port()));
        }
        if let Some(agent) = &request.user_agent {
            attribute::str(span, ATTRIBUTES, attr::USER_AGENT_ORIGINAL, agent);
        }
        attribute::boolean(span, ATTRIBUTES, attr::HTTP_TRUNCATED, request.truncated);
    }

    /// `ip` as text in the reused buffer.
    fn ip(&mut self, ip: IpAddr) {
        self.text.clear();
        let _ = write!(self.text, "{ip}");
    }
}

/// A span's ids, as `write` settled them.
struct SpanIds {
    trace: TraceId,
    span: SpanId,
    parent: SpanId,
    parent_is_remote: bool,
    flags: TraceFlags,
}

/// `Span` fields and values (`trace.proto`).
const ATTRIBUTES: u32 = 9;
const SPAN_KIND_SERVER: u64 = 2;
const SPAN_KIND_CLIENT: u64 = 3;
const STATUS_CODE_ERROR: u64 = 2;
const SPAN_FLAGS_HAS_IS_REMOTE: u32 = 0x100;
const SPAN_FLAGS_IS_REMOTE: u32 = 0x200;

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
