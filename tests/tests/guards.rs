//! The kernel side's guard counters, which real traffic cannot make fire on demand: a
//! kernel read that faults, a packet cut short before its transport header, a per-CPU
//! scratch slot caught in the middle of another program's copy. The test puts the
//! agent's own programs and maps into those states through bpf(2)
//! (`tests/scripts/bpf_poke.py`: the kernel's test run of a loaded program, a map
//! update) and reads each loss from the real receiver under its probe and cause.
#![allow(clippy::float_cmp, reason = "counter totals are integers carried as f64, compared exactly on purpose")]
use std::{process::Stdio, time::Duration};

use flowtel_e2e::{
    agent::{Agent, with_grpc_receiver, with_grpc_receiver_and},
    netns::Link,
    privileged_or_skip,
    query::{losses, spans, spans_matching},
    traffic::{Traffic, eventually},
};

/// Runs `bpf_poke.py` against the agent and waits for it to succeed.
fn poke(agent: &Agent, args: &[&str]) {
    let pid = agent.pid().to_string();
    let mut full = vec![args[0], &pid];
    full.extend_from_slice(&args[1..]);
    let mut poke = Traffic::spawn_host_script("bpf_poke.py", &full);
    poke.wait_line("ok");
    poke.finish();
}

/// An Ethernet frame whose IPv4 packet ends right after the TCP ports (24 bytes of the
/// 40 a TCP packet needs), from port 53: DNS by its port, too short to read its header.
const CUT_TCP_FROM_PORT_53: &str = concat!(
    "000000000000",
    "000000000000",
    "0800", // Ethernet: addresses, IPv4
    "4500",
    "0018",
    "00000000",
    "4006",
    "0000",
    "0a000001",
    "0a000002", // IPv4: 24 bytes, TCP
    "0035",
    "3039", // TCP source port 53, destination 12345: nothing more
);

#[test]
fn faulting_reads_cut_packets_and_busy_scratch_slots_are_counted_under_their_causes() {
    if !privileged_or_skip("faulting_reads_cut_packets_and_busy_scratch_slots_are_counted_under_their_causes") {
        return;
    }
    let (receiver, agent) = with_grpc_receiver();

    // The byte counter handed a socket pointer that faults (the first page): it cannot
    // read the socket's protocol and counts the read, three times.
    for _ in 0..3 {
        poke(&agent, &["raw-tp", "flow_send_raw", "1", "100", "0"]);
    }
    // The DNS program handed a packet cut before its TCP header, twice.
    for _ in 0..2 {
        poke(&agent, &["skb", "dns_ingress", CUT_TCP_FROM_PORT_53]);
    }

    // The DNS scratch slot left busy, as a packet interrupted mid-copy would leave it:
    // four queries out to port 53 are each counted, not copied over it.
    poke(&agent, &["busy", "DNS_SCRATCH", "1"]);
    let sent = std::process::Command::new("python3")
        .args([
            "-c",
            "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
             for i in range(4): s.sendto(b'\\x12\\x34\\x01\\x00\\x00\\x01' + bytes(6), ('127.0.0.1', 53))",
        ])
        .status()
        .expect("python3");
    assert!(sent.success());
    poke(&agent, &["busy", "DNS_SCRATCH", "0"]);

    // Likewise the HTTP slots (both): a request and its response while they are busy,
    // then one after.
    let link = Link::new("guard", 67);
    let server_ip = link.addr_b.to_string();
    let mut server = Traffic::spawn_script(&link.b, "http_server.py", &[&server_ip, "8080"]);
    server.wait_line("ready");
    let get = |path: &str| {
        let ok = Link::exec(&link.a, "curl")
            .args(["-s", "--max-time", "10", &format!("http://{server_ip}:8080{path}")])
            .stdout(Stdio::null())
            .status()
            .expect("curl");
        assert!(ok.success(), "curl {path}");
    };
    poke(&agent, &["busy", "HTTP_SCRATCH", "1"]);
    get("/ok?while=busy");
    poke(&agent, &["busy", "HTTP_SCRATCH", "0"]);
    get("/ok?after=busy");
    // One slot busy (a program preempted mid-copy): the other carries the payloads.
    poke(&agent, &["busy", "HTTP_SCRATCH", "1", "0"]);
    get("/ok?one=busy");
    poke(&agent, &["busy", "HTTP_SCRATCH", "0", "0"]);

    let lost = |probe: &str, cause: &str| {
        losses(&receiver.received.snapshot()).get(&(probe.to_owned(), cause.to_owned())).copied().unwrap_or(0.0)
    };
    let after_spans = || spans_matching(&spans(&receiver.traces.snapshot()), &[], &[("url.path", "/ok")]).len();
    let counted = eventually(Duration::from_secs(20), || {
        lost("netflow", "kernel_read") == 3.0
            && lost("dnsflow", "kernel_read") == 2.0
            && lost("dnsflow", "scratch_busy") >= 4.0
            && lost("httpflow", "scratch_busy") >= 4.0
            && after_spans() >= 4
    });
    // Exact where nothing else can move the counter (no real read faults); at least the
    // pokes where other traffic on the host may also have met the busy slot.
    assert!(
        counted,
        "netflow kernel_read {} of 3, dnsflow kernel_read {} of 2, dnsflow scratch_busy {} of >= 4, \
         httpflow scratch_busy {} of >= 4 (request and response at both ends), spans with a slot \
         free {} of 4 (two requests, both ends)\nall losses: {:?}\n{}",
        lost("netflow", "kernel_read"),
        lost("dnsflow", "kernel_read"),
        lost("dnsflow", "scratch_busy"),
        lost("httpflow", "scratch_busy"),
        after_spans(),
        losses(&receiver.received.snapshot()),
        agent.log()
    );
}

/// The thread of the agent named `name` (`/proc/<pid>/task/*/comm`).
fn thread_named(agent: &Agent, name: &str) -> String {
    let tasks = std::fs::read_dir(format!("/proc/{}/task", agent.pid())).expect("the agent's threads");
    tasks
        .filter_map(Result::ok)
        .find(|task| std::fs::read_to_string(task.path().join("comm")).is_ok_and(|comm| comm.trim() == name))
        .map_or_else(|| panic!("no thread {name} in the agent"), |task| task.file_name().to_string_lossy().into_owned())
}

/// With the stage thread held still (ptrace) and the smallest ring buffers (4 KiB), DNS
/// packets and HTTP payloads past what a ring holds are counted `ring_buffer_full`.
#[test]
fn records_past_a_full_ring_buffer_are_counted() {
    if !privileged_or_skip("records_past_a_full_ring_buffer_are_counted") {
        return;
    }
    let (receiver, agent) =
        with_grpc_receiver_and(&[("FLOWTEL_DNS_RING_BUFFER_KIB", "4"), ("FLOWTEL_HTTP_RING_BUFFER_KIB", "4")]);
    let link = Link::new("guardring", 69);
    let server_ip = link.addr_b.to_string();
    let mut server = Traffic::spawn_script(&link.b, "http_server.py", &[&server_ip, "8080"]);
    server.wait_line("ready");

    let mut hold = Traffic::spawn_host_script("hold_thread.py", &[&thread_named(&agent, "flowtel-stages"), "6"]);
    hold.wait_line("held");
    // 300 queries of about 100 bytes each as the probe records them, and 60 requests
    // with their responses (240 payloads, both ends): several times what 4 KiB holds.
    let flood = format!(
        "import socket, urllib.request\n\
         s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         for i in range(300): s.sendto(bytes([0, i % 256, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 4]) + b'ring' + bytes([4]) + b'test' + bytes([0, 0, 1, 0, 1]), ('127.0.0.1', 53))\n\
         for i in range(60): urllib.request.urlopen('http://{server_ip}:8080/ok').read()\n"
    );
    let flooded = Link::exec(&link.a, "python3").args(["-c", &flood]).status().expect("python3");
    assert!(flooded.success());
    hold.wait_line("released");

    let lost = |probe: &str, cause: &str| {
        losses(&receiver.received.snapshot()).get(&(probe.to_owned(), cause.to_owned())).copied().unwrap_or(0.0)
    };
    let counted = eventually(Duration::from_secs(20), || {
        lost("dnsflow", "ring_buffer_full") >= 100.0 && lost("httpflow", "ring_buffer_full") >= 60.0
    });
    assert!(
        counted,
        "dnsflow ring_buffer_full {} (want >= 100 of 300), httpflow ring_buffer_full {} (want >= 60 of 240 \
         ends)\nall losses: {:?}\n{}",
        lost("dnsflow", "ring_buffer_full"),
        lost("httpflow", "ring_buffer_full"),
        losses(&receiver.received.snapshot()),
        agent.log()
    );
}

/// A test host pair whose second host serves HTTPS on port 8443 (the HTTP tests'
/// server, a self-signed certificate).
fn https_server(tag: &str, subnet: u8) -> (Link, Traffic) {
    let dir = std::env::temp_dir().join(format!("flowtel-{tag}-{}", std::process::id()));
    let (cert, key) = flowtel_e2e::servers::self_signed(&dir);
    let link = Link::new(tag, subnet);
    let mut server = Traffic::spawn_script(&link.b, "http_server.py", &[&link.addr_b.to_string(), "8443", &cert, &key]);
    server.wait_line("ready");
    // Read at start: no longer needed.
    let _ = std::fs::remove_dir_all(&dir);
    (link, server)
}

/// An HTTPS request written from a page the client never touched (a fresh mapping of a
/// file): the kernel would fault it in on OpenSSL's first read, but the probe at
/// `SSL_write`'s entry, which may not fault, cannot read it and counts `user_read`.
#[test]
fn a_write_from_an_untouched_page_is_counted_as_unreadable() {
    if !privileged_or_skip("a_write_from_an_untouched_page_is_counted_as_unreadable") {
        return;
    }
    let (receiver, agent) = with_grpc_receiver();
    let (link, _server) = https_server("guardread", 70);
    let server_ip = link.addr_b.to_string();
    let client = format!(
        "import mmap, socket, ssl, tempfile\n\
         f = tempfile.TemporaryFile(); f.write(b'GET /unread HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n'.ljust(4096, b' ')); f.flush()\n\
         m = mmap.mmap(f.fileno(), 4096, prot=mmap.PROT_READ)\n\
         context = ssl.create_default_context(); context.check_hostname = False; context.verify_mode = ssl.CERT_NONE\n\
         s = context.wrap_socket(socket.create_connection(('{server_ip}', 8443)))\n\
         s.sendall(memoryview(m)[:60]); print(s.recv(4096)[:12])\n"
    );
    let sent = Link::exec(&link.a, "python3").args(["-c", &client]).status().expect("python3");
    assert!(sent.success());
    let unread = || losses(&receiver.received.snapshot()).get(&("httpflow".into(), "user_read".into())).copied();
    let counted = eventually(Duration::from_secs(20), || unread().unwrap_or(0.0) >= 1.0);
    assert!(counted, "httpflow user_read {:?} (want >= 1)\n{}", unread(), agent.log());
}

/// An OpenSSL read whose in-flight entry is gone when it returns (as when more threads
/// are inside OpenSSL calls at once than the table holds, and the least recent is
/// pushed out): counted `tls_table_full`. The entries are deleted while an HTTPS server
/// waits in a read for a kept-alive client's next request, which never comes.
#[test]
fn a_read_whose_in_flight_entry_was_pushed_out_is_counted() {
    if !privileged_or_skip("a_read_whose_in_flight_entry_was_pushed_out_is_counted") {
        return;
    }
    let (receiver, agent) = with_grpc_receiver();
    let (link, _server) = https_server("guardtls", 71);
    let server_ip = link.addr_b.to_string();
    let client = format!(
        "import socket, ssl, sys\n\
         context = ssl.create_default_context(); context.check_hostname = False; context.verify_mode = ssl.CERT_NONE\n\
         s = context.wrap_socket(socket.create_connection(('{server_ip}', 8443)))\n\
         s.sendall(b'GET /ok HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n'); s.recv(4096)\n\
         print('answered', flush=True); sys.stdin.readline(); s.close()\n"
    );
    let mut waiting = Traffic::start({
        let mut cmd = Link::exec(&link.a, "python3");
        cmd.args(["-c", &client]).stdin(Stdio::piped());
        cmd
    });
    waiting.wait_line("answered");
    std::thread::sleep(Duration::from_millis(200)); // the server back in its read
    poke(&agent, &["clear", "TLS_CALLS"]);
    drop(waiting.child.stdin.take()); // the client closes: the server's read returns
    waiting.finish();
    let pushed_out =
        || losses(&receiver.received.snapshot()).get(&("httpflow".into(), "tls_table_full".into())).copied();
    let counted = eventually(Duration::from_secs(20), || pushed_out().unwrap_or(0.0) >= 1.0);
    assert!(counted, "httpflow tls_table_full {:?} (want >= 1)\n{}", pushed_out(), agent.log());
}
