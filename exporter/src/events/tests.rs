//! Records the agent cannot read are refused, for the ring reader and the flow drain to
//! count as `decode` losses (`flowtel.agent.events.lost`), never taken half-read.
use flowtel_probes_abi::{DnsPacket, FlowKey, FlowStats, HttpChunk as RawChunk, dns, family, http, protocol};

use super::{KernelFlow, dns::decode as decode_dns, http::decode as decode_http};
use crate::aggregation;

fn bytes_of<T: Copy>(header: &T, payload: &[u8]) -> Vec<u8> {
    // SAFETY: the probes' headers are plain old data, read here as the bytes they are.
    let header = unsafe { std::slice::from_raw_parts(std::ptr::from_ref(header).cast::<u8>(), size_of::<T>()) };
    [header, payload].concat()
}

fn dns_packet() -> DnsPacket {
    DnsPacket {
        family: family::IPV4,
        protocol: protocol::UDP,
        direction: dns::EGRESS,
        captured_len: 3,
        wire_len: 3,
        ..DnsPacket::default()
    }
}

#[test]
fn a_dns_record_that_does_not_add_up_is_refused() {
    assert!(decode_dns(&bytes_of(&dns_packet(), b"abc")).is_some());
    let cut = bytes_of(&dns_packet(), b"ab");
    let unknown_protocol = bytes_of(&DnsPacket { protocol: 1, ..dns_packet() }, b"abc");
    let unknown_direction = bytes_of(&DnsPacket { direction: 9, ..dns_packet() }, b"abc");
    let unknown_family = bytes_of(&DnsPacket { family: 7, ..dns_packet() }, b"abc");
    for (what, record) in [("cut", cut), ("protocol", unknown_protocol), ("direction", unknown_direction)]
        .into_iter()
        .chain([("family", unknown_family)])
    {
        assert_eq!(decode_dns(&record), None, "{what}");
    }
    assert_eq!(decode_dns(&[0; 10]), None, "shorter than its header");
}

#[test]
fn an_http_record_that_does_not_add_up_is_refused() {
    let chunk =
        RawChunk { direction: http::SEND, captured_len: 2, len: 2, family: family::IPV4, ..RawChunk::default() };
    assert!(decode_http(&bytes_of(&chunk, b"GE")).is_some());
    assert!(decode_http(&bytes_of(&chunk, b"G")).is_none(), "cut");
    assert!(decode_http(&bytes_of(&RawChunk { direction: 0, ..chunk }, b"GE")).is_none(), "direction");
    assert!(decode_http(&[0; 10]).is_none(), "shorter than its header");
}

#[test]
fn a_kernel_flow_of_an_unknown_family_or_protocol_is_refused() {
    let key = FlowKey { family: family::IPV4, protocol: protocol::TCP, direction: 1, ..FlowKey::default() };
    let flow = |key: FlowKey| KernelFlow { key, stats: FlowStats::default() };
    assert!(aggregation::from_kernel(&flow(key)).is_some());
    assert!(aggregation::from_kernel(&flow(FlowKey { family: 7, ..key })).is_none());
    assert!(aggregation::from_kernel(&flow(FlowKey { protocol: 1, ..key })).is_none());
}
