//! The DNS decode path as the agent runs it on whatever reaches a DNS port: the message
//! decoder on the bytes as one UDP payload, whole and as the captured part of a longer one, and the TCP stream reassembler fed the same
//! bytes as segments (with a cut and a retransmission) whose messages are decoded.
//! Run: `cargo +nightly fuzz run dns_decode fuzz/corpus/dns_decode` (from the repository root).
#![no_main]

#[path = "../../exporter/src/aggregation/dns/message.rs"]
mod message;
#[path = "../../exporter/src/aggregation/dns/stream.rs"]
mod stream;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = message::decode(data, false);
    let _ = message::decode(data, true);
    let Some((&split, rest)) = data.split_first() else { return };
    let mut tcp = stream::TcpStream::default();
    let cut = usize::from(split) % (rest.len() + 1);
    let (first, second) = rest.split_at(cut);
    let wire = |bytes: &[u8]| u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    for (seq, bytes, wire_len) in [
        (1000u32, first, wire(first)),
        (1000, first, wire(first)), // a retransmission
        (1000 + wire(first), &second[..second.len() / 2], wire(second)), // cut by the probe
    ] {
        if let stream::Segment::Messages(messages) = tcp.push(seq, bytes, wire_len) {
            for m in messages {
                let _ = message::decode(&m.bytes, m.cut);
            }
        }
    }
});
