//! One DNS message decoded by `simple-dns` into what flowtel keeps of it: the id, whether
//! it is a response, the rcode, the first question, and the addresses the answers give
//! for that question (CNAME chains followed). No record parsing of our own.
//!
//! This file depends on nothing else in the agent, so the fuzz target (`fuzz/`) compiles
//! it as is.
use std::{fmt::Write as _, net::IpAddr};

use simple_dns::{Packet, PacketFlag, QTYPE, rdata::RData};

/// The most CNAME links followed from the question to an address: a loop or an absurd
/// chain in a hostile answer stops here.
const MAX_CNAME_LINKS: usize = 16;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsMessage {
    pub id: u16,
    pub is_response: bool,
    /// The 4-bit header rcode (extended rcodes from OPT are folded in by the library).
    pub rcode: u16,
    /// The question name, lower-case, without the trailing dot; empty for the root.
    pub question_name: String,
    pub question_type: u16,
    /// Addresses the answer section gives for the question, with their TTLs.
    pub addresses: Vec<(IpAddr, u32)>,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("not a DNS message: {0}")]
    Malformed(String),
    #[error("a DNS message without a question")]
    NoQuestion,
}

/// Bytes of the fixed header; the section counts sit at 4..12.
const HEADER_LEN: usize = 12;
/// The fewest bytes a question (root name, type, class) and a resource record (root
/// name, type, class, TTL, data length) can take: no more of them fit than this allows.
const QUESTION_MIN: usize = 5;
const RECORD_MIN: usize = 11;

/// Decodes one message (a UDP payload, or one TCP message without its length prefix).
/// `cut` says the capture ended before the message did (the probe copies at most
/// `dns::PAYLOAD_MAX` bytes): its header, question and the answer records wholly
/// inside the captured part are then decoded, so a large answer still pairs with its
/// query and names the addresses it had room for.
pub fn decode(bytes: &[u8], cut: bool) -> Result<DnsMessage, DecodeError> {
    if cut {
        return decode_captured_part(bytes);
    }
    if !counts_fit(bytes) {
        return Err(DecodeError::Malformed("more records than bytes".into()));
    }
    let packet = Packet::parse(bytes).map_err(|err| DecodeError::Malformed(err.to_string()))?;
    message_of(&packet)
}

fn message_of(packet: &Packet<'_>) -> Result<DnsMessage, DecodeError> {
    let question = packet.questions.first().ok_or(DecodeError::NoQuestion)?;
    let question_name = normalize(&question.qname.to_string());
    let question_type = match question.qtype {
        QTYPE::TYPE(t) => u16::from(t),
        other => u16::from(other),
    };
    let is_response = packet.has_flags(PacketFlag::RESPONSE);
    let addresses = if is_response { answer_addresses(packet, &question_name) } else { Vec::new() };
    Ok(DnsMessage {
        id: packet.id(),
        is_response,
        rcode: packet.rcode() as u16,
        question_name,
        question_type,
        addresses,
    })
}

/// The section counts of a message are checked against its length before the library
/// sizes its vectors from them: garbage claiming 65,535 records costs nothing.
fn counts_fit(bytes: &[u8]) -> bool {
    let Some(counts) = bytes.get(4..HEADER_LEN) else { return false };
    let count = |i: usize| usize::from(u16::from_be_bytes([counts[i], counts[i + 1]]));
    let least = count(0) * QUESTION_MIN + (count(2) + count(4) + count(6)) * RECORD_MIN;
    least <= bytes.len() - HEADER_LEN
}

/// A message cut short by the capture: the library parses a copy whose section counts
/// say only what the captured part can hold. Authority and additional records come
/// after the answers, so they go; of the answers, the longest run that parses is kept,
/// found by bisection (a run parses when a longer one does).
fn decode_captured_part(bytes: &[u8]) -> Result<DnsMessage, DecodeError> {
    let cut_short = || DecodeError::Malformed("cut before its question ended".into());
    if bytes.len() < HEADER_LEN {
        return Err(cut_short());
    }
    let mut copy = bytes.to_vec();
    copy[8..HEADER_LEN].fill(0);
    let claimed = u16::from_be_bytes([copy[6], copy[7]]);
    let room = u16::try_from((bytes.len() - HEADER_LEN) / RECORD_MIN).unwrap_or(u16::MAX);
    let set_answers = |copy: &mut Vec<u8>, n: u16| copy[6..8].copy_from_slice(&n.to_be_bytes());
    let (mut parses, mut fails) = (0, claimed.min(room) + 1);
    set_answers(&mut copy, 0);
    if !counts_fit(&copy) || Packet::parse(&copy).is_err() {
        return Err(cut_short());
    }
    while fails - parses > 1 {
        let mid = parses + (fails - parses) / 2;
        set_answers(&mut copy, mid);
        if Packet::parse(&copy).is_ok() {
            parses = mid;
        } else {
            fails = mid;
        }
    }
    set_answers(&mut copy, parses);
    let packet = Packet::parse(&copy).map_err(|_| cut_short())?;
    message_of(&packet)
}

/// A, AAAA records owned by the question name or by a name it reaches through CNAMEs.
fn answer_addresses(packet: &Packet<'_>, question: &str) -> Vec<(IpAddr, u32)> {
    let mut names = vec![question.to_owned()];
    for _ in 0..MAX_CNAME_LINKS {
        let next = packet.answers.iter().find_map(|rr| match &rr.rdata {
            RData::CNAME(target) if names.contains(&normalize(&rr.name.to_string())) => {
                Some(normalize(&target.0.to_string())).filter(|t| !names.contains(t))
            }
            _ => None,
        });
        match next {
            Some(target) => names.push(target),
            None => break,
        }
    }
    packet
        .answers
        .iter()
        .filter(|rr| names.contains(&normalize(&rr.name.to_string())))
        .filter_map(|rr| match &rr.rdata {
            RData::A(a) => Some((IpAddr::from(a.address.to_be_bytes()), rr.ttl)),
            RData::AAAA(aaaa) => Some((IpAddr::from(aaaa.address.to_be_bytes()), rr.ttl)),
            _ => None,
        })
        .collect()
}

/// Lower case, no trailing dot, and control bytes written as master-file escapes
/// (`\027`, RFC 1035 §5.1), the way the library already writes a dot inside a label
/// (`\.`): a name from the wire must not split a log line or reach a backend raw.
fn normalize(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.trim_end_matches('.').chars() {
        if c.is_control() {
            let _ = write!(out, "\\{:03}", u32::from(c));
        } else {
            out.push(c.to_ascii_lowercase());
        }
    }
    out
}

/// `dns.question.type`: the mnemonic of common types, `TYPE<n>` (RFC 3597) otherwise.
pub fn type_name(code: u16) -> std::borrow::Cow<'static, str> {
    let name = match code {
        1 => "A",
        2 => "NS",
        5 => "CNAME",
        6 => "SOA",
        12 => "PTR",
        15 => "MX",
        16 => "TXT",
        28 => "AAAA",
        33 => "SRV",
        35 => "NAPTR",
        43 => "DS",
        48 => "DNSKEY",
        64 => "SVCB",
        65 => "HTTPS",
        99 => "SPF",
        252 => "AXFR",
        255 => "ANY",
        257 => "CAA",
        _ => return format!("TYPE{code}").into(),
    };
    name.into()
}

/// `flowtel.dns.rcode`: the IANA mnemonic (RFC 6895), `RCODE<n>` otherwise.
pub fn rcode_name(code: u16) -> std::borrow::Cow<'static, str> {
    let name = match code {
        0 => "NOERROR",
        1 => "FORMERR",
        2 => "SERVFAIL",
        3 => "NXDOMAIN",
        4 => "NOTIMP",
        5 => "REFUSED",
        6 => "YXDOMAIN",
        7 => "YXRRSET",
        8 => "NXRRSET",
        9 => "NOTAUTH",
        10 => "NOTZONE",
        16 => "BADVERS",
        _ => return format!("RCODE{code}").into(),
    };
    name.into()
}
