//! DNS end to end: real servers (dnsmasq, a dnslib server) on one test host, real `dig`
//! on the other, the real agent, exact lookup counts read back from a real OTLP receiver.
#![allow(clippy::float_cmp, reason = "lookup counts are integers carried as f64, compared exactly on purpose")]
use std::{process::Stdio, time::Duration};

use flowtel_e2e::{
    agent::{Agent, with_grpc_receiver},
    netns::Link,
    privileged_or_skip,
    query::{matching, points, total},
    receiver::Receiver,
    servers::{self, Background},
    traffic::{Traffic, eventually},
};

const LOOKUPS: &str = "flowtel.dns.lookups";

/// Every agent sees every test's packets. Tests that make DNS losses on purpose (garbage,
/// an unseen segment) share this lock; a test that asserts no DNS loss at all holds it
/// alone.
static LOSS_MAKERS: std::sync::RwLock<()> = std::sync::RwLock::new(());

fn making_losses() -> std::sync::RwLockReadGuard<'static, ()> {
    LOSS_MAKERS.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn asserting_no_loss() -> std::sync::RwLockWriteGuard<'static, ()> {
    LOSS_MAKERS.write().unwrap_or_else(std::sync::PoisonError::into_inner)
}
const DURATION: &str = "dns.lookup.duration";

/// dnsmasq on `ns`, port `port`: names from `answers` (name, address), `nx.test`
/// NXDOMAIN, and no upstream, so any other name is REFUSED.
fn dnsmasq(ns: &str, listen: &[&str], port: u16, answers: &[(&str, &str)]) -> Background {
    let mut args: Vec<String> = answers.iter().map(|(name, address)| format!("--address=/{name}/{address}")).collect();
    args.push("--address=/nx.test/".into());
    servers::dnsmasq(ns, listen, port, &args)
}

/// Runs `cmd` to completion; returns its pid, exit status and standard output.
fn run(cmd: &mut std::process::Command) -> (String, std::process::ExitStatus, String) {
    let child = cmd.stdout(Stdio::piped()).spawn().unwrap_or_else(|err| panic!("spawn {cmd:?}: {err}"));
    let pid = child.id().to_string();
    let out = child.wait_with_output().unwrap_or_else(|err| panic!("wait {cmd:?}: {err}"));
    (pid, out.status, String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `dig` in `ns` to completion (a lookup that fails is the test's to judge);
/// returns its pid and output.
fn dig(ns: &str, args: &[&str]) -> (String, String) {
    let (pid, _, out) = run(Link::exec(ns, "dig").args(["+tries=1", "+time=3"]).args(args));
    (pid, out)
}

/// Runs a Python program (`-c`) in `ns` to success; returns its pid and output.
fn python(ns: &str, script: &str) -> (String, String) {
    let (pid, status, out) = run(Link::exec(ns, "python3").args(["-c", script]));
    assert!(status.success(), "python3 failed: {status}\n{script}");
    (pid, out)
}

/// dig's own "Query time: N msec".
fn dig_query_ms(output: &str) -> f64 {
    let line =
        output.lines().find(|l| l.contains("Query time:")).unwrap_or_else(|| panic!("no query time in {output}"));
    line.split_whitespace().nth(3).and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("bad line {line}"))
}

fn agent_with(receiver: &Receiver, env: &[(&str, &str)]) -> Agent {
    let endpoint = format!("http://{}", receiver.addr);
    let mut all = vec![("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str())];
    all.extend_from_slice(env);
    Agent::start(&all)
}

#[test]
fn lookups_are_counted_by_rcode_and_transport_under_the_asking_process() {
    if !privileged_or_skip("lookups_are_counted_by_rcode_and_transport_under_the_asking_process") {
        return;
    }
    let receiver = Receiver::grpc("127.0.0.1:0");
    let agent = agent_with(&receiver, &[("FLOWTEL_DNS_PORTS", "53,5300")]);
    let link = Link::new("dns", 41);
    let (server, server6) = (link.addr_b.to_string(), link.addr6_b.to_string());
    let answers = [("known.test", server.as_str()), ("known.test", server6.as_str())];
    let listen = [server.as_str(), server6.as_str(), "127.0.0.1"];
    let _dnsmasq = dnsmasq(&link.b, &listen, 53, &answers);
    let _dnsmasq_5300 = dnsmasq(&link.b, &[&server], 5300, &answers);

    let at = format!("@{server}");
    let (first_pid, first) = dig(&link.a, &[&at, "known.test"]);
    assert!(first.contains("status: NOERROR"), "{first}");
    let mut dig_ms = vec![dig_query_ms(&first)];
    for _ in 0..2 {
        dig_ms.push(dig_query_ms(&dig(&link.a, &[&at, "known.test"]).1));
    }
    for _ in 0..2 {
        assert!(dig(&link.a, &[&at, "nx.test"]).1.contains("status: NXDOMAIN"));
    }
    assert!(dig(&link.a, &[&at, "elsewhere.example"]).1.contains("status: REFUSED"));
    for _ in 0..2 {
        assert!(dig(&link.a, &["+tcp", &at, "known.test"]).1.contains("status: NOERROR"));
    }
    // Two queries over one TCP connection (RFC 7766 keep-open): two lookups.
    let (keepopen_pid, keepopen) = dig(&link.a, &["+tcp", "+keepopen", &at, "known.test", &at, "nx.test"]);
    assert!(keepopen.contains("status: NOERROR") && keepopen.contains("status: NXDOMAIN"), "{keepopen}");
    // The fourth NOERROR-over-UDP lookup to `server`: its time bounds the agent's too.
    let (_, on_5300) = dig(&link.a, &["-p", "5300", &at, "known.test"]);
    assert!(on_5300.contains("status: NOERROR"), "{on_5300}");
    dig_ms.push(dig_query_ms(&on_5300));
    assert!(dig(&link.a, &[&format!("@{server6}"), "known.test", "AAAA"]).1.contains("status: NOERROR"));
    // A resolver on the same host, over loopback (as with a stub resolver on 127.0.0.53).
    assert!(dig(&link.b, &["@127.0.0.1", "known.test"]).1.contains("status: NOERROR"));

    let by = |rcode: &'static str, transport: &'static str, server: &str| {
        let got = receiver.received.snapshot();
        let attrs = [("network.peer.address", server), ("flowtel.dns.rcode", rcode), ("network.transport", transport)];
        total(&points(&got, LOOKUPS), &[], &attrs)
    };
    let delivered = eventually(Duration::from_secs(20), || {
        by("NOERROR", "udp", &server) == 4.0
            && by("NOERROR", "tcp", &server) == 3.0
            && by("NXDOMAIN", "tcp", &server) == 1.0
            && by("NXDOMAIN", "udp", &server) == 2.0
            && by("REFUSED", "udp", &server) == 1.0
            && by("NOERROR", "udp", &server6) == 1.0
            && by("NOERROR", "udp", "127.0.0.1") == 1.0
    });
    let got = receiver.received.snapshot();
    let lookups = points(&got, LOOKUPS);
    assert!(delivered, "lookups never matched; got {:#?}\nagent log:\n{}", matching(&lookups, &[], &[]), agent.log());
    // Exactly the client's view: the local dnsmasq's side of each exchange adds nothing.
    let to_server = [("network.peer.address", server.as_str())];
    assert_eq!(total(&lookups, &[], &to_server), 11.0);
    let keepopen_res = [("process.pid", keepopen_pid.as_str())];
    assert_eq!(total(&lookups, &keepopen_res, &[("network.transport", "tcp")]), 2.0);
    let opened = points(&got, "flowtel.tcp.connections.opened");
    assert_eq!(total(&opened, &keepopen_res, &[("network.peer.port", "53")]), 1.0, "both over one connection");
    assert_eq!(total(&lookups, &[], &[("network.peer.address", &server6), ("dns.question.type", "AAAA")]), 1.0);

    // Each lookup sits under the dig that asked.
    let first_res = [("process.pid", first_pid.as_str())];
    let mine = matching(&lookups, &first_res, &[]);
    assert_eq!(mine.len(), 1, "{mine:#?}");
    assert_eq!(mine[0].resource["service.name"], "dig");
    assert_eq!(mine[0].attrs["dns.question.name"], "known.test");
    assert_eq!(mine[0].attrs["dns.question.type"], "A");
    assert!(!mine[0].attrs.contains_key("error.type"));
    assert_eq!(mine[0].scope, "flowtel.dns");
    let nx = matching(&lookups, &[], &[to_server[0], ("flowtel.dns.rcode", "NXDOMAIN")]);
    assert!(nx.iter().all(|p| p.attrs["error.type"] == "NXDOMAIN" && p.attrs["dns.question.name"] == "nx.test"));

    // Latency from kernel timestamps, in line with dig's own millisecond figure: within
    // it, give or take dig's coarse clock (10 ms, as for the slow lookup below; 2.5 ms
    // over was seen in the newest kernel's guest with the host busy).
    let durations = points(&got, DURATION);
    let noerror_udp = [to_server[0], ("flowtel.dns.rcode", "NOERROR"), ("network.transport", "udp")];
    let ours = matching(&durations, &[], &noerror_udp);
    assert_eq!(ours.iter().map(|p| p.count).sum::<u64>(), 4);
    let max_seen = ours.iter().filter_map(|p| p.max).fold(0.0, f64::max);
    let dig_max = dig_ms.iter().copied().fold(0.0, f64::max) / 1e3;
    assert!(max_seen > 0.0 && max_seen <= dig_max + 0.010, "agent max {max_seen} s, dig max {dig_max} s");
}

#[test]
fn slow_failed_and_unanswered_lookups() {
    if !privileged_or_skip("slow_failed_and_unanswered_lookups") {
        return;
    }
    let receiver = Receiver::grpc("127.0.0.1:0");
    let agent = agent_with(&receiver, &[("FLOWTEL_DNS_TIMEOUT_MS", "1000")]);
    let link = Link::new("dnsslow", 42);
    let server = link.addr_b.to_string();
    let mut dns_server = Traffic::spawn_script(&link.b, "dns_server.py", &[&server, "300"]);
    dns_server.wait_line("ready");

    let at = format!("@{server}");
    let (_, slow) = dig(&link.a, &[&at, "slow.test"]);
    let slow_ms = dig_query_ms(&slow);
    assert!(dig(&link.a, &[&at, "fail.test"]).1.contains("status: SERVFAIL"));
    let (drop_pid, _) = dig(&link.a, &["+time=2", &at, "drop.test"]);

    let to_server = ("network.peer.address", server.as_str());
    let delivered = eventually(Duration::from_secs(20), || {
        let lookups = points(&receiver.received.snapshot(), LOOKUPS);
        total(&lookups, &[], &[to_server, ("flowtel.dns.rcode", "NOERROR")]) == 1.0
            && total(&lookups, &[], &[to_server, ("flowtel.dns.rcode", "SERVFAIL")]) == 1.0
            && total(&lookups, &[], &[to_server, ("flowtel.dns.rcode", "TIMEOUT")]) == 1.0
    });
    let got = receiver.received.snapshot();
    let lookups = points(&got, LOOKUPS);
    assert!(
        delivered,
        "lookups never matched: {:#?}\nagent log:\n{}",
        matching(&lookups, &[], &[to_server]),
        agent.log()
    );
    let timeout = matching(&lookups, &[], &[to_server, ("flowtel.dns.rcode", "TIMEOUT")]);
    assert_eq!(timeout[0].attrs["error.type"], "timeout");
    assert_eq!(timeout[0].attrs["dns.question.name"], "drop.test");
    assert_eq!(timeout[0].resource["process.pid"], drop_pid);
    assert_eq!(
        matching(&lookups, &[], &[to_server, ("flowtel.dns.rcode", "SERVFAIL")])[0].attrs["error.type"],
        "SERVFAIL"
    );

    // The injected 300 ms delay, measured between the query leaving and the answer
    // arriving: at least the delay, and within dig's own measurement, which also holds
    // dig's send and receive calls, give or take dig's clock, which is coarse (the agent
    // was 2.5 ms above dig on the host; 10 ms allows a 100 Hz tick). How far below dig
    // depends on scheduling: 56 ms in an emulated guest with the host busy.
    let slow_point =
        matching(&points(&got, DURATION), &[], &[to_server, ("dns.question.name", "slow.test")])[0].clone();
    assert_eq!(slow_point.count, 1);
    assert!(slow_point.value >= 0.3, "slow.test took {} s", slow_point.value);
    assert!(slow_point.value * 1e3 <= slow_ms + 10.0, "agent {} s vs dig {slow_ms} ms", slow_point.value);
    // No duration for a lookup that never got an answer.
    assert!(matching(&points(&got, DURATION), &[], &[to_server, ("flowtel.dns.rcode", "TIMEOUT")]).is_empty());
}

#[test]
fn a_flow_to_a_looked_up_address_carries_the_domain() {
    if !privileged_or_skip("a_flow_to_a_looked_up_address_carries_the_domain") {
        return;
    }
    let (receiver, agent) = with_grpc_receiver();
    let link = Link::new("dnsflow", 43);
    let server = link.addr_b.to_string();
    // The name asked is an alias: the flow carries it, not the CNAME target.
    let records = [format!("--host-record=web.test,{server}"), "--cname=alias.test,web.test".into()];
    let _dnsmasq = servers::dnsmasq(&link.b, &[&server], 53, &records);
    let answer = dig(&link.a, &[&format!("@{server}"), "alias.test"]).1;
    assert!(answer.contains("CNAME") && answer.contains(&server), "{answer}");

    let mut tcp_server = Traffic::spawn(&link.b, &["tcp-server", "9100", "1", "100", "200"]);
    tcp_server.wait_line("ready");
    let mut client = Traffic::spawn(&link.a, &["tcp-client", &server, "9100", "1", "100", "200"]);
    let client_pid = client.pid().to_string();
    client.wait_line("done");
    client.finish();
    tcp_server.wait_line("done");
    tcp_server.finish();

    let client_res = [("process.pid", client_pid.as_str())];
    let named = [("network.peer.address", server.as_str()), ("flowtel.peer.domain", "alias.test")];
    // Each Resource travels in its own export request, so the agent's own metrics (host Resource)
    // may land a moment after the workload's flows: wait for both.
    let delivered = eventually(Duration::from_secs(20), || {
        let got = receiver.received.snapshot();
        total(&points(&got, "flowtel.tcp.connections.opened"), &client_res, &named) == 1.0
            && points(&got, "flowtel.agent.dns.names").iter().any(|p| p.value >= 1.0)
    });
    let got = receiver.received.snapshot();
    let io = points(&got, "flowtel.network.io");
    let names = points(&got, "flowtel.agent.dns.names");
    assert!(
        delivered,
        "no named flow: {:#?}\nnames: {names:?}\nagent log:\n{}",
        matching(&io, &client_res, &[]),
        agent.log()
    );
    assert_eq!(total(&io, &client_res, &[named[1], ("network.io.direction", "transmit")]), 100.0);
}

#[test]
fn garbage_on_a_dns_port_is_counted_and_harmless() {
    if !privileged_or_skip("garbage_on_a_dns_port_is_counted_and_harmless") {
        return;
    }
    let _losses = making_losses();
    let receiver = Receiver::grpc("127.0.0.1:0");
    let agent = agent_with(&receiver, &[("FLOWTEL_DNS_TIMEOUT_MS", "1000")]);
    let link = Link::new("dnsjunk", 44);
    // Nothing listens there, so no reply muddies the count: 300 malformed datagrams.
    let datagrams = 300;
    let script = format!(
        "import os, socket\n\
         s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         for i in range({datagrams}):\n\
         \x20   if i % 3 == 0: data = os.urandom(i % 12)\n\
         \x20   elif i % 3 == 1: data = os.urandom(4) + bytes([0, 0, 0, 5, 0, 0, 0, 0]) + b'\\xff' * (i % 1400)\n\
         \x20   else: data = os.urandom(2) + bytes([1, 0, 0, 1, 0, 0, 0, 0, 0, 0]) + bytes([63]) + b'a' * 40\n\
         \x20   s.sendto(data, ('{}', 53))\n",
        link.addr_b
    );
    python(&link.a, &script);
    // 50 length-prefixed messages of garbage on one TCP connection to a listener that
    // reads and discards; one segment each (no Nagle, a pause), as a client would send.
    let messages = 50;
    let listener = format!(
        "import socket\n\
         l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         l.bind(('{}', 53)); l.listen(); print('ready', flush=True)\n\
         c, _ = l.accept()\n\
         while c.recv(65536): pass\n",
        link.addr_b
    );
    let sink = Link::exec(&link.b, "python3").args(["-c", &listener]).stdout(Stdio::piped()).spawn();
    let mut sink = Background(sink.expect("spawn listener"));
    let mut ready = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(sink.0.stdout.take().expect("stdout")), &mut ready)
        .expect("listener ready");
    let script = format!(
        "import socket, time\n\
         s = socket.create_connection(('{}', 53)); s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)\n\
         for i in range({messages}):\n\
         \x20   s.sendall(bytes([0, 20]) + b'\\xff' * 20); time.sleep(0.005)\n\
         s.close()\n",
        link.addr_b
    );
    python(&link.a, &script);
    drop(sink);
    // 2,000 well-formed queries nobody answers: each ends as one TIMEOUT lookup, and the
    // pending table is empty again once they have.
    let unanswered = 2_000;
    let script = format!(
        "import socket\n\
         from dnslib import DNSRecord\n\
         s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         for i in range({unanswered}):\n\
         \x20   q = DNSRecord.question('flood.test'); q.header.id = i; s.sendto(q.pack(), ('{}', 53))\n",
        link.addr_b
    );
    python(&link.a, &script);

    let state = || {
        let got = receiver.received.snapshot();
        let dns_loss = [("flowtel.probe", "dnsflow"), ("flowtel.loss.cause", "parse")];
        let parse = total(&points(&got, "flowtel.agent.events.lost"), &[], &dns_loss);
        let timeouts = total(&points(&got, LOOKUPS), &[], &[("dns.question.name", "flood.test")]);
        let pending = total(&points(&got, "flowtel.agent.dns.pending"), &[], &[]);
        (parse, timeouts, pending)
    };
    let expected = (f64::from(datagrams + messages), f64::from(unanswered), 0.0);
    let settled = eventually(Duration::from_secs(20), || state() == expected);
    assert!(settled, "(parse, timeouts, pending) {:?}, expected {expected:?}\nagent log:\n{}", state(), agent.log());
    let got = receiver.received.snapshot();
    let lookups = points(&got, LOOKUPS);
    let flood = matching(&lookups, &[], &[("dns.question.name", "flood.test")]);
    assert!(flood.iter().all(|p| p.attrs["flowtel.dns.rcode"] == "TIMEOUT"), "{flood:#?}");
    // Still observing: a real lookup after the garbage is counted.
    let server = link.addr_b.to_string();
    let _dnsmasq = dnsmasq(&link.b, &[&server], 53, &[("after.test", &server)]);
    dig(&link.a, &[&format!("@{server}"), "after.test"]);
    let after = eventually(Duration::from_secs(20), || {
        let lookups = points(&receiver.received.snapshot(), LOOKUPS);
        total(&lookups, &[], &[("dns.question.name", "after.test"), ("flowtel.dns.rcode", "NOERROR")]) == 1.0
    });
    assert!(after, "agent log:\n{}", agent.log());
    let (status, log) = agent.stop();
    assert!(status.success(), "agent did not exit cleanly after garbage: {status}\n{log}");
}

/// The probe copies at most 2048 bytes of a packet: 150 addresses for one name make a
/// longer answer. Over UDP (fragmented on the veth, whole at the socket) and TCP over
/// loopback (one segment) the answer is cut; over TCP on the veth it spans segments.
/// Each still pairs with its query, and the addresses it had room for name peers.
#[test]
fn an_answer_longer_than_the_capture_still_pairs_and_names_its_addresses() {
    if !privileged_or_skip("an_answer_longer_than_the_capture_still_pairs_and_names_its_addresses") {
        return;
    }
    let _alone = asserting_no_loss();
    let (receiver, agent) = with_grpc_receiver();
    let link = Link::new("dnsbig", 45);
    let server = link.addr_b.to_string();
    let hosts = std::env::temp_dir().join(format!("flowtel-dnsbig-{}.hosts", std::process::id()));
    let lines: Vec<String> = (1..=150).map(|i| format!("10.77.{}.{} many.test", i / 100, i % 100 + 1)).collect();
    std::fs::write(&hosts, lines.join("\n")).expect("hosts file");
    let records = [format!("--addn-hosts={}", hosts.display()), "--edns-packet-max=4096".into()];
    let _dnsmasq = servers::dnsmasq(&link.b, &[&server, "127.0.0.1"], 53, &records);

    let at = format!("@{server}");
    for (ns, args) in [
        (&link.a, vec!["+bufsize=4096", "+ignore", at.as_str(), "many.test"]),
        (&link.a, vec!["+tcp", at.as_str(), "many.test"]),
        (&link.b, vec!["+tcp", "@127.0.0.1", "many.test"]),
    ] {
        let (_, out) = dig(ns, &args);
        assert!(out.contains("status: NOERROR") && out.contains("ANSWER: 150"), "dig {args:?}: {out}");
    }
    let _ = std::fs::remove_file(&hosts);

    let many = [("dns.question.name", "many.test"), ("flowtel.dns.rcode", "NOERROR")];
    let counted = |got: &[_]| {
        let lookups = points(got, LOOKUPS);
        (
            total(&lookups, &[], &[many[0], many[1], ("network.transport", "udp")]),
            total(&lookups, &[], &[many[0], many[1], ("network.transport", "tcp")]),
        )
    };
    let delivered = eventually(Duration::from_secs(20), || {
        let got = receiver.received.snapshot();
        counted(&got) == (1.0, 2.0) && points(&got, "flowtel.agent.dns.names").iter().any(|p| p.value >= 126.0)
    });
    let got = receiver.received.snapshot();
    assert!(
        delivered,
        "counted (udp, tcp) {:?}, names {:?}\nagent log:\n{}",
        counted(&got),
        points(&got, "flowtel.agent.dns.names"),
        agent.log()
    );
    let lost = points(&got, "flowtel.agent.events.lost");
    assert_eq!(total(&lost, &[], &[("flowtel.probe", "dnsflow")]), 0.0, "{lost:#?}");
    assert_eq!(total(&points(&got, LOOKUPS), &[], &[("flowtel.dns.rcode", "TIMEOUT")]), 0.0);
}

/// One socket sends the same query twice, 100 ms apart, to a server that answers each
/// after 300 ms: one lookup, timed from the first send to the first answer.
#[test]
fn a_retransmitted_query_counts_once_from_its_first_send() {
    if !privileged_or_skip("a_retransmitted_query_counts_once_from_its_first_send") {
        return;
    }
    let (receiver, agent) = with_grpc_receiver();
    let link = Link::new("dnsretry", 46);
    let server = link.addr_b.to_string();
    let mut dns_server = Traffic::spawn_script(&link.b, "dns_server.py", &[&server, "300"]);
    dns_server.wait_line("ready");
    let script = format!(
        "import socket, time\n\
         from dnslib import DNSRecord\n\
         query = DNSRecord.question('slow.test').pack()\n\
         s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         s.sendto(query, ('{server}', 53))\n\
         time.sleep(0.1)\n\
         s.sendto(query, ('{server}', 53))\n\
         for _ in range(2): s.recvfrom(4096)\n"
    );
    python(&link.a, &script);

    let slow = [("network.peer.address", server.as_str()), ("dns.question.name", "slow.test")];
    let delivered = eventually(Duration::from_secs(20), || {
        total(&points(&receiver.received.snapshot(), LOOKUPS), &[], &slow) == 1.0
    });
    let got = receiver.received.snapshot();
    assert!(delivered, "{:#?}\nagent log:\n{}", matching(&points(&got, LOOKUPS), &[], &slow), agent.log());
    let timed = matching(&points(&got, DURATION), &[], &slow)[0].clone();
    assert_eq!(timed.count, 1);
    // From the second send it would be about 0.2 s; the second answer would give 0.4 s.
    assert!(timed.value >= 0.3 && timed.value < 0.38, "slow.test took {} s", timed.value);
    // Still one lookup after the pairing window has passed.
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(total(&points(&receiver.received.snapshot(), LOOKUPS), &[], &slow), 1.0);
}

/// A local stub resolver (dnsmasq on 127.0.0.53, as systemd-resolved would be) that
/// forwards to another host: two lookups, the application's under `dig` and the
/// resolver's upstream one under the resolver.
#[test]
fn a_stub_resolver_shows_both_hops_under_their_own_processes() {
    if !privileged_or_skip("a_stub_resolver_shows_both_hops_under_their_own_processes") {
        return;
    }
    let (receiver, agent) = with_grpc_receiver();
    let link = Link::new("dnsstub", 47);
    let upstream = link.addr_b.to_string();
    let _upstream = dnsmasq(&link.b, &[&upstream], 53, &[("up.test", &upstream)]);
    let stub = servers::dnsmasq(&link.a, &["127.0.0.53"], 53, &[format!("--server={upstream}")]);
    let stub_pid = stub.0.id().to_string();
    let (dig_pid, out) = dig(&link.a, &["@127.0.0.53", "up.test"]);
    assert!(out.contains("status: NOERROR") && out.contains(&upstream), "{out}");

    let hop = |pid: &str, server: &str| {
        let lookups = points(&receiver.received.snapshot(), LOOKUPS);
        let attrs =
            [("network.peer.address", server), ("dns.question.name", "up.test"), ("flowtel.dns.rcode", "NOERROR")];
        total(&lookups, &[("process.pid", pid)], &attrs)
    };
    let delivered =
        eventually(Duration::from_secs(20), || hop(&dig_pid, "127.0.0.53") == 1.0 && hop(&stub_pid, &upstream) == 1.0);
    let got = receiver.received.snapshot();
    assert!(
        delivered,
        "{:#?}\nagent log:\n{}",
        matching(&points(&got, LOOKUPS), &[], &[("dns.question.name", "up.test")]),
        agent.log()
    );
    let upstream_hop = matching(&points(&got, LOOKUPS), &[("process.pid", &stub_pid)], &[])[0].clone();
    assert_eq!(upstream_hop.resource["service.name"], "dnsmasq");
    assert_eq!(total(&points(&got, LOOKUPS), &[], &[("dns.question.name", "up.test")]), 2.0);
}

/// A host-network process asks a Service's cluster IP, and kube-proxy's DNAT in the
/// host's OUTPUT chain sends the query to a DNS pod: the probe sees the query after the
/// rewrite and the answer after it is undone. Docker's embedded DNS does the same with a
/// port change (127.0.0.11:53 to another port of 127.0.0.11). Each lookup still pairs,
/// and names the address the process asked: dig's connected sockets through the
/// socket's own ends, an unconnected Python socket (as musl's resolver sends) through
/// the address it passed to sendto.
#[test]
fn queries_rewritten_by_nat_pair_with_their_answers() {
    if !privileged_or_skip("queries_rewritten_by_nat_pair_with_their_answers") {
        return;
    }
    let receiver = Receiver::grpc("127.0.0.1:0");
    let agent = agent_with(&receiver, &[("FLOWTEL_DNS_TIMEOUT_MS", "1000")]);
    let link = Link::new("dnsnat", 48);
    let server = link.addr_b.to_string();
    let _dnsmasq = dnsmasq(&link.b, &[&server], 53, &[("known.test", &server)]);
    let (service_ip, embedded) = ("10.96.48.10", "127.0.0.11");
    let _embedded = dnsmasq(&link.a, &[embedded], 5301, &[("known.test", &server)]);
    let routed = std::process::Command::new("ip")
        .args(["-n", &link.a, "route", "add", "10.96.48.0/24", "dev", &link.veth(true)])
        .status()
        .expect("ip route");
    assert!(routed.success());
    for (asked, to, transport) in [
        (service_ip, format!("{server}:53"), "udp"),
        (service_ip, format!("{server}:53"), "tcp"),
        (embedded, format!("{embedded}:5301"), "udp"),
    ] {
        let rule = ["-t", "nat", "-A", "OUTPUT", "-p", transport, "-d", asked, "--dport", "53", "-j", "DNAT"];
        let status = Link::exec(&link.a, "iptables")
            .args(rule)
            .args(["--to-destination", &to])
            .status()
            .expect("iptables (apt install iptables)");
        assert!(status.success(), "iptables DNAT rule");
    }
    let at = format!("@{service_ip}");
    let (dig_pid, out) = dig(&link.a, &[&at, "known.test"]);
    assert!(out.contains("status: NOERROR"), "{out}");
    assert!(dig(&link.a, &["+tcp", &at, "known.test"]).1.contains("status: NOERROR"));
    assert!(dig(&link.a, &[&format!("@{embedded}"), "known.test"]).1.contains("status: NOERROR"));
    let unconnected = |address: &str| {
        format!(
            "import socket\n\
             from dnslib import DNSRecord\n\
             s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(3)\n\
             s.sendto(DNSRecord.question('known.test').pack(), ('{address}', 53))\n\
             print(DNSRecord.parse(s.recvfrom(4096)[0]).header.rcode)\n"
        )
    };
    let (python_pid, rcode) = python(&link.a, &unconnected(service_ip));
    assert_eq!(rcode.trim(), "0", "python's lookup through kube-proxy's DNAT");
    let (embedded_python_pid, rcode) = python(&link.a, &unconnected(embedded));
    assert_eq!(rcode.trim(), "0", "python's lookup through Docker's DNAT");

    let asked = |address: &'static str| [("network.peer.address", address), ("flowtel.dns.rcode", "NOERROR")];
    let counted = || {
        let lookups = points(&receiver.received.snapshot(), LOOKUPS);
        (total(&lookups, &[], &asked(service_ip)), total(&lookups, &[], &asked(embedded)))
    };
    let delivered = eventually(Duration::from_secs(20), || counted() == (3.0, 2.0));
    let got = receiver.received.snapshot();
    let lookups = points(&got, LOOKUPS);
    let all = matching(&lookups, &[], &[("dns.question.name", "known.test")]);
    assert!(delivered, "{:?}: {all:#?}\nagent log:\n{}", counted(), agent.log());
    assert_eq!(total(&lookups, &[], &[("dns.question.name", "known.test")]), 5.0, "no TIMEOUT: {all:#?}");
    assert_eq!(total(&lookups, &[("process.pid", dig_pid.as_str())], &asked(service_ip)), 1.0);
    assert_eq!(total(&lookups, &[("process.pid", python_pid.as_str())], &asked(service_ip)), 1.0);
    assert_eq!(total(&lookups, &[("process.pid", embedded_python_pid.as_str())], &asked(embedded)), 1.0);
}

/// More unanswered queries at once than `dns.max_pending` holds: the ones past it are
/// counted lost as `pending_full` (a counter that must move), the held ones end as
/// TIMEOUT lookups, and none is silently gone.
#[test]
fn unanswered_queries_past_the_pending_cap_are_counted() {
    const QUERIES: u64 = 40;
    const CAP: u64 = 16;
    if !privileged_or_skip("unanswered_queries_past_the_pending_cap_are_counted") {
        return;
    }
    let receiver = Receiver::grpc("127.0.0.1:0");
    let cap = CAP.to_string();
    let agent = agent_with(&receiver, &[("FLOWTEL_DNS_MAX_PENDING", &cap), ("FLOWTEL_DNS_TIMEOUT_MS", "1000")]);
    let link = Link::new("dnsfull", 49);
    let server = link.addr_b.to_string();
    let mut dns_server = Traffic::spawn_script(&link.b, "dns_server.py", &[&server, "0"]);
    dns_server.wait_line("ready");
    // Forty queries for drop.test from one socket, each its own id: none is answered.
    let script = format!(
        "import socket, struct\n\
         s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         for i in range({QUERIES}):\n    \
             s.sendto(struct.pack('>6H', i + 1, 0x0100, 1, 0, 0, 0) + b'\\x04drop\\x04test\\x00' + struct.pack('>2H', 1, 1), ('{server}', 53))\n"
    );
    python(&link.a, &script);

    let pending_full = || {
        let lost = points(&receiver.received.snapshot(), "flowtel.agent.events.lost");
        total(&lost, &[], &[("flowtel.probe", "dnsflow"), ("flowtel.loss.cause", "pending_full")])
    };
    let timed_out = || {
        let lookups = points(&receiver.received.snapshot(), LOOKUPS);
        total(&lookups, &[], &[("network.peer.address", server.as_str()), ("flowtel.dns.rcode", "TIMEOUT")])
    };
    // Other tests' queries may hold slots of this agent's table too: then fewer of
    // these time out and more are counted, never fewer in all.
    let accounted = eventually(Duration::from_secs(20), || {
        pending_full() >= (QUERIES - CAP) as f64 && timed_out() + pending_full() >= QUERIES as f64
    });
    assert!(
        accounted && timed_out() <= CAP as f64,
        "{QUERIES} unanswered queries past a table of {CAP}: {} timed out, {} counted pending_full\n{}",
        timed_out(),
        pending_full(),
        agent.log()
    );
}

/// A segment of a TCP answer that the agent never sees (the client's firewall drops it
/// once on the way in, before the agent's ingress program; TCP delivers it again after
/// the segment behind it): the message's framing is lost, which is counted as
/// `stream_gap`, and the stream starts over at the next message on the same connection.
#[test]
fn a_segment_never_seen_is_counted_as_a_stream_gap_and_the_stream_starts_over() {
    if !privileged_or_skip("a_segment_never_seen_is_counted_as_a_stream_gap_and_the_stream_starts_over") {
        return;
    }
    let _losses = making_losses();
    let (receiver, agent) = with_grpc_receiver();
    let link = Link::new("dnsgap", 68);
    let server = link.addr_b.to_string();
    let mut dns_server = Traffic::spawn_script(&link.b, "dns_server.py", &[&server, "0"]);
    dns_server.wait_line("ready");
    // The first packet from port 53 carrying answer id 0xfeed: dropped once.
    let dropped = Link::exec(&link.a, "iptables")
        .args(["-A", "INPUT", "-p", "tcp", "--sport", "53", "-m", "string", "--algo", "bm"])
        .args(["--hex-string", "|feed|", "-m", "statistic", "--mode", "nth", "--every", "1000000"])
        .args(["--packet", "0", "-j", "DROP"])
        .status()
        .expect("iptables");
    assert!(dropped.success());
    // split.test (answered in two sends, the id in the first), then known.test on the
    // same connection, each answer read before going on.
    let script = format!(
        "import socket, struct\n\
         from dnslib import DNSRecord\n\
         s = socket.create_connection(('{server}', 53))\n\
         for name, qid in (('split.test', 0xfeed), ('known.test', 0x0a0a)):\n    \
             q = DNSRecord.question(name); q.header.id = qid; b = q.pack()\n    \
             s.sendall(struct.pack('>H', len(b)) + b)\n    \
             n = struct.unpack('>H', s.recv(2, socket.MSG_WAITALL))[0]\n    \
             print(DNSRecord.parse(s.recv(n, socket.MSG_WAITALL)).a.rdata)\n"
    );
    let (pid, out) = python(&link.a, &script);
    assert_eq!(out.lines().collect::<Vec<_>>(), ["10.0.0.9", "10.0.0.9"], "the server answered both");
    let drops = Link::exec(&link.a, "iptables").args(["-L", "INPUT", "-v", "-n", "-x"]).output().expect("iptables");
    let drops = String::from_utf8_lossy(&drops.stdout).into_owned();

    let lookups = |name: &str| {
        let got = points(&receiver.received.snapshot(), LOOKUPS);
        total(&got, &[("process.pid", pid.as_str())], &[("dns.question.name", name)])
    };
    let gaps = || {
        let lost = points(&receiver.received.snapshot(), "flowtel.agent.events.lost");
        total(&lost, &[], &[("flowtel.probe", "dnsflow"), ("flowtel.loss.cause", "stream_gap")])
    };
    // split.test's answer was never seen whole: its query ends as a timeout (5 s).
    let counted = eventually(Duration::from_secs(20), || {
        gaps() == 1.0 && lookups("known.test") == 1.0 && lookups("split.test") == 1.0
    });
    let got = points(&receiver.received.snapshot(), LOOKUPS);
    assert!(
        counted,
        "stream_gap {} of 1, known.test lookups {} of 1, split.test {} of 1\n{:#?}\n{drops}\n{}",
        gaps(),
        lookups("known.test"),
        lookups("split.test"),
        matching(&got, &[("process.pid", pid.as_str())], &[]),
        agent.log()
    );
    let rcode = |name: &str, rcode: &str| {
        total(&got, &[("process.pid", pid.as_str())], &[("dns.question.name", name), ("flowtel.dns.rcode", rcode)])
    };
    assert_eq!((rcode("known.test", "NOERROR"), rcode("split.test", "TIMEOUT")), (1.0, 1.0));
}
