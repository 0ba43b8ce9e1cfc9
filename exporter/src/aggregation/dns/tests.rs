use std::net::{Ipv4Addr, Ipv6Addr};

use simple_dns::{
    CLASS, Name, Packet, PacketFlag, QCLASS, QTYPE, Question, RCODE, ResourceRecord, TYPE,
    rdata::{A, AAAA, CNAME, RData},
};

use flowtel_probes_abi::dns;

use super::*;

const CLIENT: &str = "10.0.0.2:40000";
const SERVER: &str = "10.0.0.1:53";
const MS: u64 = 1_000_000;

fn query(id: u16, name: &str, qtype: TYPE) -> Vec<u8> {
    let mut packet = Packet::new_query(id);
    packet.questions.push(Question::new(
        Name::new_unchecked(name),
        QTYPE::TYPE(qtype),
        QCLASS::CLASS(CLASS::IN),
        false,
    ));
    packet.build_bytes_vec().unwrap()
}

fn answer(id: u16, name: &str, rcode: RCODE, records: Vec<ResourceRecord<'static>>) -> Vec<u8> {
    let mut packet = Packet::new_reply(id);
    *packet.rcode_mut() = rcode;
    packet.set_flags(PacketFlag::RESPONSE);
    let name: &'static str = Box::leak(name.to_owned().into_boxed_str());
    packet.questions.push(Question::new(
        Name::new_unchecked(name),
        QTYPE::TYPE(TYPE::A),
        QCLASS::CLASS(CLASS::IN),
        false,
    ));
    packet.answers = records;
    packet.build_bytes_vec().unwrap()
}

fn a(name: &'static str, ip: Ipv4Addr, ttl: u32) -> ResourceRecord<'static> {
    ResourceRecord::new(Name::new_unchecked(name), CLASS::IN, ttl, RData::A(A { address: ip.into() }))
}

fn packet(at_ms: u64, egress: bool, tcp: bool, payload: Vec<u8>) -> CapturedPacket {
    let (src, dst) = if egress { (CLIENT, SERVER) } else { (SERVER, CLIENT) };
    CapturedPacket {
        at_ns: at_ms * MS,
        pid: if egress { 77 } else { 0 },
        tcp,
        egress,
        src: src.parse().unwrap(),
        dst: dst.parse().unwrap(),
        tcp_seq: 0,
        tcp_syn: false,
        wire_len: u32::try_from(payload.len()).unwrap(),
        payload,
    }
}

fn tracker() -> DnsTracker {
    DnsTracker::new(TrackerSettings { timeout_ns: 5_000 * MS, max_pending: 4 })
}

#[test]
fn answer_pairs_with_query_and_gives_latency_rcode_and_addresses() {
    let mut t = tracker();
    let mut out = Vec::new();
    t.packet(&packet(100, true, false, query(7, "Known.Test", TYPE::A)), &mut out);
    let records = vec![a("known.test", Ipv4Addr::new(10, 9, 8, 7), 300)];
    t.packet(&packet(103, false, false, answer(7, "known.test", RCODE::NoError, records)), &mut out);
    assert_eq!(out.len(), 1);
    let lookup = &out[0];
    assert_eq!((lookup.pid, lookup.transport, lookup.question_type), (77, Transport::Udp, 1));
    assert_eq!(lookup.question_name, "known.test");
    assert_eq!(lookup.server, "10.0.0.1".parse::<IpAddr>().unwrap());
    let Outcome::Answered { rcode, latency_s } = lookup.outcome else { panic!("{lookup:?}") };
    assert_eq!(rcode, 0);
    assert!((latency_s - 0.003).abs() < 1e-9, "{latency_s}");
    assert_eq!(lookup.addresses, vec![("10.9.8.7".parse().unwrap(), 300)]);
    assert_eq!(t.pending(), 0);
}

#[test]
fn retransmitted_query_counts_once_from_the_first_send() {
    let mut t = tracker();
    let mut out = Vec::new();
    t.packet(&packet(0, true, false, query(9, "nx.test", TYPE::A)), &mut out);
    t.packet(&packet(1_000, true, false, query(9, "nx.test", TYPE::A)), &mut out);
    t.packet(&packet(1_010, false, false, answer(9, "nx.test", RCODE::NameError, vec![])), &mut out);
    t.expire(60_000 * MS, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].outcome, Outcome::Answered { rcode: 3, latency_s: 1.01 });
}

#[test]
fn unanswered_query_times_out_once() {
    let mut t = tracker();
    let mut out = Vec::new();
    t.packet(&packet(0, true, false, query(1, "slow.test", TYPE::AAAA)), &mut out);
    t.expire(4_999 * MS, &mut out);
    assert!(out.is_empty());
    t.expire(5_000 * MS, &mut out);
    t.expire(9_000 * MS, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!((out[0].outcome, out[0].question_type), (Outcome::TimedOut, 28));
    // A late answer after the timeout is not a second lookup.
    t.packet(&packet(6_000, false, false, answer(1, "slow.test", RCODE::NoError, vec![])), &mut out);
    assert_eq!(out.len(), 1);
}

/// An unconnected socket's query is seen after the host's DNAT (a Service IP rewritten
/// to a DNS pod's), its answer after the rewrite is undone.
#[test]
fn an_answer_from_the_address_the_process_asked_pairs_with_its_rewritten_query() {
    let mut t = tracker();
    let mut out = Vec::new();
    let rewritten = CapturedPacket {
        dst: "10.244.1.7:53".parse().unwrap(),
        ..packet(0, true, false, query(3, "svc.test", TYPE::A))
    };
    t.packet(&rewritten, &mut out);
    let restored = CapturedPacket {
        src: "10.96.0.10:53".parse().unwrap(),
        ..packet(2, false, false, answer(3, "svc.test", RCODE::NoError, vec![]))
    };
    t.packet(&restored, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].server, "10.96.0.10".parse::<IpAddr>().unwrap(), "the server the process asked");
    // Unanswered, the lookup names where its query went.
    t.packet(&rewritten, &mut out);
    t.expire(10_000 * MS, &mut out);
    assert_eq!((out[1].outcome, out[1].server), (Outcome::TimedOut, "10.244.1.7".parse().unwrap()));
}

#[test]
fn a_multicast_query_is_not_a_lookup_to_time_out() {
    let mut t = tracker();
    let mut out = Vec::new();
    for group in ["224.0.0.251:5353", "[ff02::fb]:5353"] {
        let mdns = CapturedPacket {
            dst: group.parse().unwrap(),
            ..packet(0, true, false, query(0, "printer.local", TYPE::A))
        };
        t.packet(&mdns, &mut out);
    }
    t.expire(60_000 * MS, &mut out);
    assert!(out.is_empty(), "{out:?}");
    assert_eq!((t.pending(), t.take_losses()), (0, TrackerLosses::default()));
}

#[test]
fn answer_for_another_question_or_id_does_not_pair() {
    let mut t = tracker();
    let mut out = Vec::new();
    t.packet(&packet(0, true, false, query(1, "a.test", TYPE::A)), &mut out);
    t.packet(&packet(1, false, false, answer(2, "a.test", RCODE::NoError, vec![])), &mut out);
    t.packet(&packet(1, false, false, answer(1, "b.test", RCODE::NoError, vec![])), &mut out);
    assert!(out.is_empty());
    assert_eq!(t.pending(), 1);
}

#[test]
fn cname_chain_is_followed_and_unrelated_records_ignored() {
    let records = vec![
        ResourceRecord::new(
            Name::new_unchecked("www.test"),
            CLASS::IN,
            60,
            RData::CNAME(CNAME(Name::new_unchecked("edge.cdn.test"))),
        ),
        ResourceRecord::new(
            Name::new_unchecked("edge.cdn.test"),
            CLASS::IN,
            60,
            RData::CNAME(CNAME(Name::new_unchecked("www.test"))),
        ),
        a("edge.cdn.test", Ipv4Addr::new(192, 0, 2, 1), 30),
        ResourceRecord::new(
            Name::new_unchecked("edge.cdn.test"),
            CLASS::IN,
            20,
            RData::AAAA(AAAA { address: Ipv6Addr::LOCALHOST.into() }),
        ),
        a("other.test", Ipv4Addr::new(192, 0, 2, 99), 30),
    ];
    let message = decode(&answer(5, "www.test", RCODE::NoError, records), false).unwrap();
    assert!(message.is_response);
    assert_eq!(message.addresses, vec![("192.0.2.1".parse().unwrap(), 30), ("::1".parse().unwrap(), 20)],);
}

#[test]
fn garbage_is_counted_never_paired() {
    let mut t = tracker();
    let mut out = Vec::new();
    for payload in [vec![], vec![0xff; 3], vec![0; 12], b"GET / HTTP/1.1\r\n\r\n".to_vec()] {
        t.packet(&packet(0, true, false, payload), &mut out);
    }
    // A header that promises more records than the packet holds.
    let mut truncated = query(3, "cut.test", TYPE::A);
    truncated[7] = 9;
    t.packet(&packet(0, false, false, truncated), &mut out);
    assert!(out.is_empty());
    assert_eq!(t.take_losses().parse, 5);
}

/// 150 A records for `many.test`: an answer longer than the probe's copy.
fn large_answer() -> Vec<u8> {
    let records = (0..150).map(|i| a("many.test", Ipv4Addr::new(10, 77, 0, i), 60)).collect();
    answer(4, "many.test", RCODE::NoError, records)
}

#[test]
fn an_answer_cut_by_the_capture_pairs_and_names_the_addresses_it_holds() {
    let full = large_answer();
    // Header, then the question: the name's labels (one length byte each, and the root's), type, class.
    let header_and_question = 12 + "many.test".len() + 2 + 4;
    let record = (full.len() - header_and_question) / 150;
    assert_eq!(header_and_question + 150 * record, full.len());
    let captured = full[..dns::PAYLOAD_MAX].to_vec();
    let whole_records = (dns::PAYLOAD_MAX - header_and_question) / record;
    let mut t = tracker();
    let mut out = Vec::new();
    t.packet(&packet(0, true, false, query(4, "many.test", TYPE::A)), &mut out);
    let cut =
        CapturedPacket { wire_len: u32::try_from(full.len()).unwrap(), ..packet(2, false, false, captured.clone()) };
    t.packet(&cut, &mut out);
    assert_eq!(t.take_losses(), TrackerLosses::default());
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].outcome, Outcome::Answered { rcode: 0, latency_s: 0.002 });
    let expected: Vec<_> =
        (0..whole_records).map(|i| (IpAddr::from([10, 77, 0, u8::try_from(i).unwrap()]), 60)).collect();
    assert_eq!(out[0].addresses, expected);
    // The same bytes captured whole would be a malformed message: only a cut one is salvaged.
    assert!(decode(&captured, false).is_err());
}

#[test]
fn a_tcp_answer_cut_by_the_capture_still_pairs() {
    let full = large_answer();
    let mut framed = u16::try_from(full.len()).unwrap().to_be_bytes().to_vec();
    framed.extend(&full);
    let mut queries = u16::try_from(query(4, "many.test", TYPE::A).len()).unwrap().to_be_bytes().to_vec();
    queries.extend(query(4, "many.test", TYPE::A));
    let mut t = tracker();
    let mut out = Vec::new();
    t.packet(&CapturedPacket { tcp_seq: 1, ..packet(0, true, true, queries) }, &mut out);
    let segment = CapturedPacket {
        tcp_seq: 100,
        wire_len: u32::try_from(framed.len()).unwrap(),
        ..packet(3, false, true, framed[..dns::PAYLOAD_MAX].to_vec())
    };
    t.packet(&segment, &mut out);
    assert_eq!(out.len(), 1, "{:?}", t.take_losses());
    assert!(matches!(out[0].outcome, Outcome::Answered { rcode: 0, .. }));
    assert!(out[0].addresses.len() > 70);
}

#[test]
fn a_cut_message_without_its_whole_question_is_not_dns() {
    let query = query(4, "many.test", TYPE::A);
    assert!(decode(&query[..20], true).is_err());
    assert!(decode(&query[..5], true).is_err());
}

#[test]
fn a_header_claiming_more_records_than_bytes_is_refused_before_parsing() {
    let mut claims = vec![0u8; 40];
    claims[4..12].fill(0xff);
    assert_eq!(decode(&claims, false), Err(message::DecodeError::Malformed("more records than bytes".into())));
    assert!(decode(&claims, true).is_err());
}

#[test]
fn control_bytes_in_a_name_are_escaped_like_the_dot() {
    let mut wire = vec![0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    // One label `E<ESC>v<LF>l<NUL>.` then `com`, type A, class IN.
    wire.extend_from_slice(&[7, b'E', 0x1b, b'v', b'\n', b'l', 0, b'.', 3, b'c', b'o', b'm', 0, 0, 1, 0, 1]);
    let message = decode(&wire, false).unwrap();
    assert_eq!(message.question_name, "e\\027v\\010l\\000\\..com");
    assert!(!message.question_name.chars().any(char::is_control));
}

#[test]
fn pending_table_is_bounded_and_its_overflow_counted() {
    let mut t = tracker();
    let mut out = Vec::new();
    for id in 0..6 {
        t.packet(&packet(0, true, false, query(id, "many.test", TYPE::A)), &mut out);
    }
    assert_eq!(t.pending(), 4);
    assert_eq!(t.take_losses().pending_full, 2);
}

/// A DNS message as TCP carries it: behind its two-byte length.
fn frame(bytes: Vec<u8>) -> Vec<u8> {
    let mut framed = u16::try_from(bytes.len()).unwrap().to_be_bytes().to_vec();
    framed.extend(bytes);
    framed
}

#[test]
fn tcp_messages_are_reassembled_and_paired() {
    let mut t = tracker();
    let mut out = Vec::new();
    // Two queries pipelined in one segment, answers split across two segments.
    let mut queries = frame(query(1, "one.test", TYPE::A));
    queries.extend(frame(query(2, "two.test", TYPE::A)));
    t.packet(&CapturedPacket { tcp_seq: 500, ..packet(0, true, true, queries) }, &mut out);
    let mut answers = frame(answer(2, "two.test", RCODE::Refused, vec![]));
    answers.extend(frame(answer(1, "one.test", RCODE::ServerFailure, vec![])));
    let (first, second) = answers.split_at(20);
    t.packet(&CapturedPacket { tcp_seq: 9_000, ..packet(2, false, true, first.to_vec()) }, &mut out);
    t.packet(&CapturedPacket { tcp_seq: 9_020, ..packet(4, false, true, second.to_vec()) }, &mut out);
    let rcodes: Vec<_> = out.iter().map(|l| (l.question_name.as_str(), l.transport, l.outcome)).collect();
    assert_eq!(
        rcodes,
        vec![
            ("two.test", Transport::Tcp, Outcome::Answered { rcode: 5, latency_s: 0.004 }),
            ("one.test", Transport::Tcp, Outcome::Answered { rcode: 2, latency_s: 0.004 }),
        ]
    );
}

/// The answer stream's SYN says where its data starts: when the first data segment is
/// never seen, the next one is a gap (counted), not a message start read from the middle
/// of a message; the stream starts over at the segment after.
#[test]
fn an_unseen_first_segment_after_the_syn_is_a_gap() {
    let mut t = tracker();
    let mut out = Vec::new();
    t.packet(
        &CapturedPacket { tcp_seq: 500, ..packet(0, true, true, frame(query(1, "lost.test", TYPE::A))) },
        &mut out,
    );
    t.packet(&CapturedPacket { tcp_seq: 8_999, tcp_syn: true, ..packet(1, false, true, vec![]) }, &mut out);
    let lost = frame(answer(1, "lost.test", RCODE::NoError, vec![]));
    // The first 8 bytes (9_000..9_008) never seen; the rest arrives.
    t.packet(&CapturedPacket { tcp_seq: 9_008, ..packet(2, false, true, lost[8..].to_vec()) }, &mut out);
    assert_eq!((out.len(), t.take_losses().stream_gap), (0, 1));
    // The query after, on the same connection, pairs with its answer.
    let next = 500 + u32::try_from(frame(query(1, "lost.test", TYPE::A)).len()).unwrap();
    t.packet(
        &CapturedPacket { tcp_seq: next, ..packet(3, true, true, frame(query(2, "next.test", TYPE::A))) },
        &mut out,
    );
    let answer_at = 9_000 + u32::try_from(lost.len()).unwrap();
    let next_answer = frame(answer(2, "next.test", RCODE::NoError, vec![]));
    t.packet(&CapturedPacket { tcp_seq: answer_at, ..packet(4, false, true, next_answer) }, &mut out);
    let names: Vec<_> = out.iter().map(|l| l.question_name.as_str()).collect();
    assert_eq!(names, ["next.test"]);
}

#[test]
fn names_of_types_and_rcodes() {
    assert_eq!(
        (type_name(1), type_name(28), type_name(65), type_name(4242)),
        ("A".into(), "AAAA".into(), "HTTPS".into(), "TYPE4242".into())
    );
    assert_eq!(
        (rcode_name(0), rcode_name(3), rcode_name(2), rcode_name(5)),
        ("NOERROR".into(), "NXDOMAIN".into(), "SERVFAIL".into(), "REFUSED".into())
    );
    assert_eq!(rcode_name(12), "RCODE12");
}

/// The fuzz corpus (`fuzz/corpus/dns_decode`) is also a regression suite: what is DNS
/// decodes, what is not is an error, and none of it, whole or cut anywhere, panics.
#[test]
fn fuzz_corpus_decodes_or_fails_cleanly() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/dns_decode");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let decoded = decode(&bytes, false);
        match name.split('_').next() {
            Some("query" | "answer") => assert!(decoded.is_ok(), "{name}: {decoded:?}"),
            Some("garbage" | "pointer" | "tcp") => assert!(decoded.is_err(), "{name}: {decoded:?}"),
            // The probe's 2048-byte copy of a longer answer: whole records only.
            Some("cut") => {
                assert!(decoded.is_err(), "{name}: {decoded:?}");
                let salvaged = decode(&bytes, true).unwrap_or_else(|err| panic!("{name}: {err}"));
                assert_eq!(salvaged.addresses.len(), (bytes.len() - 27) / 16, "{name}");
            }
            other => panic!("corpus file {name} has no known prefix ({other:?})"),
        }
        for cut in 0..bytes.len() {
            let _ = decode(&bytes[..cut], false);
            let _ = decode(&bytes[..cut], true);
        }
        let mut t = tracker();
        let mut out = Vec::new();
        t.packet(&packet(0, true, false, bytes.clone()), &mut out);
        t.packet(&CapturedPacket { tcp_seq: 7, ..packet(0, false, true, bytes) }, &mut out);
        seen += 1;
    }
    assert!(seen >= 10, "corpus too small: {seen}");
    let chain = decode(&std::fs::read(dir.join("answer_cname_chain")).unwrap(), false).unwrap();
    assert_eq!(chain.addresses.len(), 2);
}

#[test]
fn queries_unanswered_at_shutdown_are_counted() {
    let mut t = tracker();
    let mut out = Vec::new();
    t.packet(&packet(0, true, false, query(1, "answered.test", TYPE::A)), &mut out);
    t.packet(&packet(1, false, false, answer(1, "answered.test", RCODE::NoError, vec![])), &mut out);
    t.packet(&packet(2, true, false, query(2, "one.test", TYPE::A)), &mut out);
    t.packet(&packet(3, true, false, query(3, "two.test", TYPE::A)), &mut out);
    t.abandon();
    assert_eq!((out.len(), t.take_losses().at_exit, t.pending()), (1, 2, 0));
}
