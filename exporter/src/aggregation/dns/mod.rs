//! DNS packets into lookups: each query paired with its answer by (client address and
//! port, transport, transaction id, question). Latency is the answer's kernel timestamp
//! minus the query's. A query still unanswered after the timeout becomes a `TIMEOUT`
//! lookup. A retransmitted query (same key) keeps the first one's time and is not
//! counted again.
//!
//! The server is not part of the key: an unconnected socket's query is seen after the
//! host's NAT (a Service IP rewritten to a DNS pod's) and its answer after the rewrite
//! is undone, so the two carry different server addresses. The lookup names the server
//! the answer came from, which is the one the process asked; a timed-out one names the
//! address its query was sent to. A query re-sent to another server from the same
//! socket with the same id is one lookup, answered by whichever replies first.
//!
//! Guarantees: every query seen ends as exactly one lookup (answered or timed out)
//! unless the pending table is full, which is counted; every packet that does not
//! decode as DNS is counted as a parse loss. Nothing here panics on input.
mod message;
mod stream;

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
};

pub use message::{DnsMessage, decode, rcode_name, type_name};
use stream::{Segment, TcpStream};

use super::Transport;
use crate::events::CapturedPacket;

/// What became of a lookup.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Outcome {
    Answered { rcode: u16, latency_s: f64 },
    TimedOut,
}

/// One DNS lookup a local process made.
#[derive(Clone, Debug, PartialEq)]
pub struct DnsLookup {
    /// The asking process; 0 when the query was not sent in process context.
    pub pid: u32,
    pub transport: Transport,
    pub server: IpAddr,
    pub question_name: String,
    pub question_type: u16,
    pub outcome: Outcome,
    /// Addresses the answer gave for the question (CNAMEs followed), with TTLs.
    pub addresses: Vec<(IpAddr, u32)>,
}

#[derive(Clone, Copy, Debug)]
pub struct TrackerSettings {
    pub timeout_ns: u64,
    /// Queries awaiting an answer at once; TCP streams being reassembled, likewise.
    pub max_pending: usize,
}

/// Losses found while pairing, by cause, since the last `take_losses`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrackerLosses {
    /// Payloads that are not DNS (or are cut where the probe's copy ended).
    pub parse: u64,
    /// Queries not tracked because the pending table was full.
    pub pending_full: u64,
    /// TCP segments missing from a stream: its framing was lost.
    pub stream_gap: u64,
    /// Queries still unanswered when the agent stopped: their outcome is unknown.
    pub at_exit: u64,
}

impl std::ops::AddAssign for TrackerLosses {
    fn add_assign(&mut self, other: Self) {
        self.parse += other.parse;
        self.pending_full += other.pending_full;
        self.stream_gap += other.stream_gap;
        self.at_exit += other.at_exit;
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct PendingKey {
    client: SocketAddr,
    tcp: bool,
    id: u16,
    question_name: String,
    question_type: u16,
}

impl PendingKey {
    fn new(client: SocketAddr, tcp: bool, message: DnsMessage) -> Self {
        Self { client, tcp, id: message.id, question_name: message.question_name, question_type: message.question_type }
    }

    fn into_lookup(self, server: IpAddr, pid: u32, outcome: Outcome, addresses: Vec<(IpAddr, u32)>) -> DnsLookup {
        DnsLookup {
            pid,
            transport: if self.tcp { Transport::Tcp } else { Transport::Udp },
            server,
            question_name: self.question_name,
            question_type: self.question_type,
            outcome,
            addresses,
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Pending {
    at_ns: u64,
    pid: u32,
    /// Where the query was sent, as the probe saw it.
    server: IpAddr,
}

pub struct DnsTracker {
    settings: TrackerSettings,
    pending: HashMap<PendingKey, Pending>,
    /// One per direction of each TCP connection, keyed by (source, destination), with
    /// the time it last carried data.
    streams: HashMap<(SocketAddr, SocketAddr), (TcpStream, u64)>,
    losses: TrackerLosses,
}

impl DnsTracker {
    pub fn new(settings: TrackerSettings) -> Self {
        Self { settings, pending: HashMap::new(), streams: HashMap::new(), losses: TrackerLosses::default() }
    }

    /// Takes one packet; answered lookups are appended to `out`.
    pub fn packet(&mut self, packet: &CapturedPacket, out: &mut Vec<DnsLookup>) {
        if !packet.tcp {
            let cut = packet.payload.len() < packet.wire_len as usize;
            self.message(packet, &packet.payload, cut, out);
            return;
        }
        let key = (packet.src, packet.dst);
        if !self.streams.contains_key(&key) && self.streams.len() >= self.settings.max_pending {
            self.losses.pending_full += 1;
            return;
        }
        let (stream, last_ns) = self.streams.entry(key).or_default();
        *last_ns = packet.at_ns;
        let mut seq = packet.tcp_seq;
        if packet.tcp_syn {
            // Its data starts one past the SYN (TCP Fast Open's too): an unseen first
            // data segment shows as a gap.
            stream.syn(seq);
            seq = seq.wrapping_add(1);
        }
        match stream.push(seq, &packet.payload, packet.wire_len) {
            Segment::Gap => self.losses.stream_gap += 1,
            Segment::Messages(messages) => {
                for message in messages {
                    self.message(packet, &message.bytes, message.cut, out);
                }
            }
        }
    }

    /// One message; a `cut` one is decoded as far as its captured bytes go.
    fn message(&mut self, packet: &CapturedPacket, bytes: &[u8], cut: bool, out: &mut Vec<DnsLookup>) {
        let Ok(message) = decode(bytes, cut) else {
            self.losses.parse += 1;
            return;
        };
        // The probe keeps only queries going out and answers coming in.
        match (packet.egress, message.is_response) {
            (true, false) => self.query(packet, message),
            (false, true) => self.answer(packet, message, out),
            _ => {}
        }
    }

    fn query(&mut self, packet: &CapturedPacket, message: DnsMessage) {
        if packet.dst.ip().is_multicast() {
            // mDNS (224.0.0.251, ff02::fb): any responder answers, to the group, so no
            // answer pairs with the query; it is not a lookup to time out.
            return;
        }
        let key = PendingKey::new(packet.src, packet.tcp, message);
        if self.pending.contains_key(&key) {
            return; // a retransmission: the first query's time stands
        }
        if self.pending.len() >= self.settings.max_pending {
            self.losses.pending_full += 1;
            return;
        }
        self.pending.insert(key, Pending { at_ns: packet.at_ns, pid: packet.pid, server: packet.dst.ip() });
    }

    fn answer(&mut self, packet: &CapturedPacket, mut message: DnsMessage, out: &mut Vec<DnsLookup>) {
        let (rcode, addresses) = (message.rcode, std::mem::take(&mut message.addresses));
        let key = PendingKey::new(packet.dst, packet.tcp, message);
        // An answer to a query we did not see (sent before flowtel started, or after
        // its timeout was reported) is not a lookup of ours.
        let Some(pending) = self.pending.remove(&key) else { return };
        let latency_s = packet.at_ns.saturating_sub(pending.at_ns) as f64 / 1e9;
        let outcome = Outcome::Answered { rcode, latency_s };
        out.push(key.into_lookup(packet.src.ip(), pending.pid, outcome, addresses));
    }

    /// Reports queries older than the timeout as `TIMEOUT` lookups and forgets TCP
    /// streams idle that long. `now_ns` is `CLOCK_MONOTONIC`, the probes' clock.
    pub fn expire(&mut self, now_ns: u64, out: &mut Vec<DnsLookup>) {
        let timeout = self.settings.timeout_ns;
        let expired: Vec<PendingKey> = self
            .pending
            .iter()
            .filter(|(_, p)| now_ns.saturating_sub(p.at_ns) >= timeout)
            .map(|(k, _)| k.clone())
            .collect();
        for key in expired {
            if let Some(pending) = self.pending.remove(&key) {
                out.push(key.into_lookup(pending.server, pending.pid, Outcome::TimedOut, Vec::new()));
            }
        }
        self.streams.retain(|_, (_, last_ns)| now_ns.saturating_sub(*last_ns) < timeout);
    }

    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// At shutdown: the queries still unanswered are counted (`at_exit`) and forgotten.
    pub fn abandon(&mut self) {
        self.losses.at_exit += self.pending.len() as u64;
        self.pending.clear();
        self.streams.clear();
    }

    pub fn take_losses(&mut self) -> TrackerLosses {
        std::mem::take(&mut self.losses)
    }
}

#[cfg(test)]
mod tests;
