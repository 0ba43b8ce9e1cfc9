//! What `exporter/benches/` drives directly: not part of the agent's behaviour.
//!
//! `http_path`: the agent's user-space work per HTTP exchange, from a ring-buffer record
//! to the histograms and a span, as the stage and the export loop do it (decode with
//! reused buffers, parse and pair, route, record, write the span), without the kernel,
//! the channel between the two threads or the export. The records are those of
//! `bench http-cost` (wrk to nginx over loopback, 16 keep-alive connections, both ends
//! observed): the figure to hold against the 1.5 µs per exchange.
#![allow(
    clippy::cast_possible_truncation,
    reason = "record counts, ports and lengths of a benchmark's own making, far inside their types"
)]
use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use flowtel_probes_abi::{HttpChunk as RawChunk, family, http};
use opentelemetry_sdk::metrics::Temporality;

use crate::{
    aggregation::{HttpExchange, HttpSettings, HttpTracker, Routes},
    enrichment::HostInfo,
    events::{HttpChunk, decode_http_into, spare_payload},
    telemetry::{SpanBuilder, SpanBytes, SpanSampler, TelemetrySettings, Workloads},
};

/// Records the stage reads per wake-up under load, as `HttpChunkReader` does.
const PER_BATCH: usize = 2_048;
/// Keep-alive connections (wrk `-c16`).
const CONNECTIONS: u32 = 16;
const SERVER_PORT: u16 = 8091;
/// Spans held before they are taken, as a flush would (each export interval).
const SPANS_PER_FLUSH: usize = 65_536;

const REQUEST: &[u8] = b"GET /ok HTTP/1.1\r\nHost: 127.0.0.1:8091\r\n\r\n";
/// nginx's head for a 512-byte static file, then the body.
const RESPONSE_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Sat, 05 Dec 2026 12:00:00 GMT\r\n\
Content-Type: application/octet-stream\r\nContent-Length: 512\r\nLast-Modified: Sat, 05 Dec 2026 11:00:00 GMT\r\n\
Connection: keep-alive\r\nETag: \"6752a3c0-200\"\r\nAccept-Ranges: bytes\r\n\r\n";

pub struct HttpPathCost {
    pub exchanges: u64,
    pub spans: u64,
    pub elapsed: Duration,
}

/// `requests` requests, each seen at both ends (four records, two exchanges), as ring
/// buffer records made once; `run` times the path over them.
pub struct HttpPath {
    records: Vec<Vec<u8>>,
}

impl HttpPath {
    pub fn new(requests: u64) -> Self {
        let (client_pid, server_pid) = (std::process::id(), std::os::unix::process::parent_id());
        Self { records: records(requests, client_pid, server_pid) }
    }

    pub fn run(&self) -> HttpPathCost {
        let mut tracker =
            HttpTracker::new(HttpSettings { timeout_ns: 10_000_000_000, max_connections: 10_000, skip_pid: 0 });
        let mut workloads = Workloads::new(settings());
        let mut builder = SpanBuilder::new(false, SpanSampler::default());
        let routes = Routes::new(&[], true);
        let (mut chunks, mut exchanges, mut spare_payloads) = (Vec::new(), Vec::new(), Vec::new());
        let mut spare_spans: Vec<SpanBytes> = Vec::new();
        let (mut paired, mut spans, mut held) = (0, 0, 0);
        let started = Instant::now();
        for batch in self.records.chunks(PER_BATCH) {
            // The stage thread.
            chunks.extend(batch.iter().filter_map(|r| decode_http_into(r, spare_payload(&mut spare_payloads))));
            for chunk in chunks.drain(..) {
                tracker.chunk(&chunk, &mut exchanges);
                spare_payloads.push(recycled(chunk));
            }
            // The export loop.
            paired += exchanges.len() as u64;
            for exchange in exchanges.drain(..) {
                let written = record(&mut workloads, &mut builder, &routes, &exchange);
                held += usize::from(written);
                spans += u64::from(written);
            }
            if held >= SPANS_PER_FLUSH {
                let taken = workloads.take_spans(&mut spare_spans);
                spare_spans.extend(taken.into_iter().map(|(_, spans)| spans.emptied()));
                held = 0;
            }
        }
        HttpPathCost { exchanges: paired, spans, elapsed: started.elapsed() }
    }
}

fn record(workloads: &mut Workloads, builder: &mut SpanBuilder, routes: &Routes, exchange: &HttpExchange) -> bool {
    let route = routes.route(&exchange.request.path);
    workloads.record_http(exchange, route.as_deref(), None, Some((builder, 0)))
}

fn recycled(chunk: HttpChunk) -> Vec<u8> {
    let mut payload = chunk.payload;
    payload.clear();
    payload
}

fn settings() -> TelemetrySettings {
    TelemetrySettings {
        temporality: Temporality::Delta,
        cardinality_limit: 2_000,
        host: HostInfo { name: "bench".into(), id: None, arch: "amd64", os_version: None, k8s_node_name: None },
        idle_intervals: 2,
        dns_question_name: true,
        process_command_line: false,
        max_workloads: 1_000,
        span_sampler: SpanSampler::default(),
    }
}

/// The ring-buffer records of `requests` requests in the order the kernel reports
/// them: the client's send, the server's receive, its send, the client's receive.
fn records(requests: u64, client_pid: u32, server_pid: u32) -> Vec<Vec<u8>> {
    let mut response = RESPONSE_HEAD.to_vec();
    response.resize(RESPONSE_HEAD.len() + 512, b'x');
    let mut out = Vec::with_capacity(requests as usize * 4);
    for i in 0..requests {
        let connection = (i % u64::from(CONNECTIONS)) as u32;
        let client_port = 40_000 + connection as u16;
        let client = (client_pid, 0xffff_8880_0000_0000 + u64::from(connection) * 4096, client_port, SERVER_PORT);
        let server = (server_pid, 0xffff_8880_1000_0000 + u64::from(connection) * 4096, SERVER_PORT, client_port);
        let at = 1_000_000_000 + i * 20_000;
        for (step, ((pid, sk, local, peer), direction, payload)) in [
            (client, http::SEND, REQUEST),
            (server, http::RECV, REQUEST),
            (server, http::SEND, &response[..]),
            (client, http::RECV, &response[..]),
        ]
        .into_iter()
        .enumerate()
        {
            let header = RawChunk {
                timestamp_ns: at + step as u64 * 4_000,
                connection: sk,
                pid,
                len: payload.len() as u32,
                captured_len: payload.len() as u32,
                local_port: local,
                peer_port: peer,
                local_addr: loopback(),
                peer_addr: loopback(),
                family: family::IPV4,
                direction,
                ..RawChunk::default()
            };
            // SAFETY: a plain-old-data header (abi asserts its size); its bytes as the
            // probe writes them.
            let bytes = unsafe { std::slice::from_raw_parts((&raw const header).cast::<u8>(), size_of::<RawChunk>()) };
            out.push([bytes, payload].concat());
        }
    }
    out
}

fn loopback() -> [u8; 16] {
    let mut address = [0; 16];
    address[..4].copy_from_slice(&Ipv4Addr::LOCALHOST.octets());
    address
}
