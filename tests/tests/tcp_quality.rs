//! Retransmits and RTT, compared with the kernel's own view: `nstat` (per namespace)
//! for retransmitted segments, the socket's own `TCP_INFO` (what `ss -ti` shows) for
//! the smoothed RTT.
#![allow(clippy::float_cmp, reason = "metric totals are integers carried as f64, compared exactly on purpose")]
use std::time::Duration;

use flowtel_e2e::{
    agent::with_grpc_receiver,
    netns::Link,
    privileged_or_skip,
    query::{matching, points, total},
    traffic::{Traffic, eventually, tcp_exchange},
};

fn in_ns(ns: &str, program: &str, args: &[&str]) -> String {
    let out = Link::exec(ns, program).args(args).output().expect("run in namespace");
    assert!(out.status.success(), "{program} {args:?} in {ns}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The namespace's `TcpRetransSegs` (absolute; a fresh namespace starts at 0).
fn retrans_segs(ns: &str) -> u64 {
    let text = in_ns(ns, "nstat", &["-asz", "TcpRetransSegs"]);
    text.lines()
        .find_map(|l| l.strip_prefix("TcpRetransSegs"))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no TcpRetransSegs in {text:?}"))
}

/// Waits until no TCP socket other than listeners and TIME-WAIT is left in `ns`, so
/// that no retransmission is still to come.
fn settle(ns: &str) {
    let quiet = eventually(Duration::from_secs(30), || {
        let text = in_ns(ns, "ss", &["-Htan"]);
        text.lines().all(|l| l.starts_with("LISTEN") || l.starts_with("TIME-WAIT"))
    });
    assert!(quiet, "sockets still busy in {ns}: {}", in_ns(ns, "ss", &["-tan"]));
}

#[test]
fn retransmits_under_real_loss_match_the_kernel_counter() {
    if !privileged_or_skip("retransmits_under_real_loss_match_the_kernel_counter") {
        return;
    }
    let (receiver, agent) = with_grpc_receiver();
    let link = Link::new("rtx", 13);
    // Drop 10% of what each host receives (veth packets are large GSO packets, so
    // this is far fewer than 10% of segments): both sides retransmit.
    for ns in [&link.a, &link.b] {
        in_ns(
            ns,
            "iptables",
            &["-A", "INPUT", "-m", "statistic", "--mode", "random", "--probability", "0.1", "-j", "DROP"],
        );
    }
    let (server_pid, client_pid) = tcp_exchange(&link, false, 9200, 4, 400_000, 300_000);
    settle(&link.a);
    settle(&link.b);
    let (kernel_server, kernel_client) = (retrans_segs(&link.a), retrans_segs(&link.b));
    assert!(kernel_server > 0 && kernel_client > 0, "no loss happened: {kernel_server} {kernel_client}");

    let rtx = |pid: &str| {
        total(&points(&receiver.received.snapshot(), "flowtel.tcp.retransmits"), &[("process.pid", pid)], &[])
    };
    let agreed = eventually(Duration::from_secs(20), || {
        rtx(&server_pid) == kernel_server as f64 && rtx(&client_pid) == kernel_client as f64
    });
    assert!(
        agreed,
        "agent saw server {} / client {} retransmits, nstat says {kernel_server} / {kernel_client}\nlog:\n{}",
        rtx(&server_pid),
        rtx(&client_pid),
        agent.log()
    );
    eprintln!("retransmitted segments: server {kernel_server}, client {kernel_client} (nstat and agent agree)");
    let got = points(&receiver.received.snapshot(), "flowtel.tcp.retransmits");
    for p in matching(&got, &[("process.pid", client_pid.as_str())], &[]) {
        assert_eq!(p.attrs["flowtel.flow.direction"], "outgoing");
        assert_eq!(p.attrs["network.peer.port"], "9200");
    }
}

#[test]
fn rtt_is_a_distribution_over_the_connection_consistent_with_tcp_info() {
    if !privileged_or_skip("rtt_is_a_distribution_over_the_connection_consistent_with_tcp_info") {
        return;
    }
    let (receiver, agent) = with_grpc_receiver();
    let link = Link::new("rtt", 14);
    // A slow link from the server: its queue makes the RTT grow to tens of ms.
    let veth = link.veth(true);
    in_ns(
        &link.a,
        "tc",
        &["qdisc", "add", "dev", &veth, "root", "tbf", "rate", "4mbit", "burst", "16kb", "latency", "300ms"],
    );
    let server_ip = link.addr_a.to_string();
    // The kernel's own view of the server's socket while it sends: the server reads its
    // `TCP_INFO` (what `ss -ti` shows) after every 64 KiB it hands over. Polling `ss`
    // from outside caught a 3 s transfer once at most on an emulated matrix guest.
    let mut server = Traffic::spawn(&link.a, &["tcp-rtt-server", "9300", "100", "1500000"]);
    server.wait_line("ready");
    let mut client = Traffic::spawn(&link.b, &["tcp-client", &server_ip, "9300", "1", "100", "1500000"]);
    let server_pid = server.pid().to_string();
    client.wait_line("done");
    client.finish();
    let mut kernel = Vec::new();
    while let Some(line) = server.next_line() {
        if line == "done" {
            break;
        }
        // `rtt <srtt µs> <rttvar µs>`
        if let Some(us) = line.split_whitespace().nth(1).and_then(|v| v.parse::<f64>().ok()) {
            kernel.push(us / 1e6);
        }
    }
    server.finish();
    assert!(kernel.len() >= 3, "TCP_INFO samples: {kernel:?}");
    let (k_min, k_max) = kernel.iter().fold((f64::MAX, 0f64), |(lo, hi), &v| (lo.min(v), hi.max(v)));

    let rtt = |pts: &[flowtel_e2e::query::Point]| {
        matching(pts, &[("process.pid", server_pid.as_str())], &[]).first().map(|p| (*p).clone())
    };
    let arrived = eventually(Duration::from_secs(20), || {
        rtt(&points(&receiver.received.snapshot(), "flowtel.tcp.rtt")).is_some()
    });
    assert!(arrived, "no RTT from the server; log:\n{}", agent.log());
    let p = rtt(&points(&receiver.received.snapshot(), "flowtel.tcp.rtt")).unwrap();
    let (min, max, mean) = (p.min.unwrap(), p.max.unwrap(), p.value / p.count as f64);
    eprintln!(
        "rtt: {} samples, agent [{min:.4}, {max:.4}] mean {mean:.4} s; TCP_INFO [{k_min:.4}, {k_max:.4}] s",
        p.count
    );
    // Many samples over the transfer (at most one per ms), not one at close.
    assert!(p.count >= 20, "only {} RTT samples", p.count);
    // The agent's samples are log2-bucketed (within ~√2) and the kernel's view is taken
    // per 64 KiB: the two ranges must overlap and the queueing delay must show in both.
    assert!(max > 0.010, "the slow link's queue should push RTT past 10 ms: max {max}");
    assert!(min <= k_max * 1.5 && max >= k_min / 1.5, "agent [{min}, {max}] vs TCP_INFO [{k_min}, {k_max}]");
    assert!(mean >= k_min / 2.0 && mean <= k_max * 2.0, "agent mean {mean} vs TCP_INFO [{k_min}, {k_max}]");
    let var = points(&receiver.received.snapshot(), "flowtel.tcp.rttvar");
    let var = matching(&var, &[("process.pid", server_pid.as_str())], &[]);
    assert!(!var.is_empty() && var[0].value > 0.0, "{var:?}");
}
