//! DNS: dnsperf (Debian) on one test host against dnsmasq on the other, at fixed query
//! rates, each rate run without and then with the agent. Every lookup dnsperf sent must
//! come back from the receiver as one `flowtel.dns.lookups` under dnsperf's pid. Then
//! the memory of the pending-query table and the name map, both driven to their caps.
use std::{io::Write as _, process::Stdio, time::Duration};

use flowtel_e2e::{
    agent::Agent,
    netns::Link,
    query::{points, total},
    receiver::Receiver,
    servers::dnsmasq,
};

use super::{BpfStats, cpu_ticks, env_or, peak_rss_kib, print_probe_table, program_stats};

/// Distinct names (and, in the hosts file, distinct addresses): the default caps.
const NAMES: u32 = 65_536;
/// A second address of the server host whose packets its firewall drops: queries there
/// are never answered and draw no ICMP error.
const SILENT_SERVER: &str = "10.201.60.3";

/// What dnsperf reported: (queries sent, queries completed, queries per second), and its pid.
struct Perf {
    sent: u64,
    completed: u64,
    qps: f64,
    pid: u32,
}

fn dnsperf(link: &Link, server: &str, rate: u64, seconds: u64, queries: &str) -> Perf {
    let child = Link::exec(&link.a, "dnsperf")
        .args(["-s", server, "-d", queries, "-c", "4", "-t", "1"])
        .args(["-l", &seconds.to_string(), "-Q", &rate.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("dnsperf (apt install dnsperf)");
    let pid = child.id();
    let out = String::from_utf8_lossy(&child.wait_with_output().expect("dnsperf output").stdout).into_owned();
    let field = |label: &str| -> f64 {
        let line = out.lines().find(|l| l.trim_start().starts_with(label)).unwrap_or_else(|| panic!("{label}: {out}"));
        line[line.find(':').unwrap() + 1..].split_whitespace().next().unwrap().parse().unwrap()
    };
    Perf {
        sent: field("Queries sent") as u64,
        completed: field("Queries completed") as u64,
        qps: field("Queries per second"),
        pid,
    }
}

fn write_inputs() -> (String, String) {
    let (queries, hosts) = ("/tmp/flowtel-bench-queries.txt", "/tmp/flowtel-bench-hosts");
    let mut q = std::fs::File::create(queries).expect("queries file");
    let mut h = std::fs::File::create(hosts).expect("hosts file");
    for i in 0..NAMES {
        writeln!(q, "q{i}.bench.test A").unwrap();
        writeln!(h, "10.{}.{}.{} q{i}.bench.test", 100 + i / 65_536, (i / 256) % 256, i % 256).unwrap();
    }
    (queries.into(), hosts.into())
}

/// `count` distinct queries to the silent server as fast as Python sends them (dnsperf
/// stops at its outstanding-query limit), so the pending table reaches its cap.
fn flood_silent_server(link: &Link, count: u32) -> u32 {
    let script = format!(
        "import socket, struct\n\
         socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(4)]\n\
         for i in range({count}):\n\
         \x20   name = b''.join(bytes([len(l)]) + l for l in [b'q%d' % i, b'silent', b'test']) + b'\\0'\n\
         \x20   socks[i % 4].sendto(struct.pack('>HHHHHH', i % 65536, 0x0100, 1, 0, 0, 0) + name + b'\\0\\1\\0\\1', ('{SILENT_SERVER}', 53))\n"
    );
    let status = Link::exec(&link.a, "python3").args(["-c", &script]).status().expect("python3");
    assert!(status.success(), "flooding the silent server failed");
    count
}

/// What the DNS egress probe costs a UDP datagram that is not DNS, from an unconnected
/// socket (the probe also looks up the sending thread's `sendto` stash) and from a
/// connected one (it reads the socket's peer port): 200,000 datagrams of each, to a
/// bound socket that never reads (a full buffer drops them; no ICMP error muddies the
/// count).
fn non_dns_udp_cost(link: &Link, env: &[(&str, &str)]) {
    const DATAGRAMS: u32 = 200_000;
    let agent = Agent::start(env);
    std::thread::sleep(Duration::from_secs(2));
    println!(
        "\n| non-DNS UDP datagram (loopback, 64 B) | dns_egress ns/event | sendmsg hook ns/event |\n|---|---|---|"
    );
    for (socket, connect, send) in [
        ("unconnected (sendto)", "", "s.sendto(b'x' * 64, ('127.0.0.1', 9999))"),
        ("connected (send)", "s.connect(('127.0.0.1', 9999))", "s.send(b'x' * 64)"),
    ] {
        let script = format!(
            "import socket\nsink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
             sink.bind(('127.0.0.1', 9999))\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n{connect}\n\
             for _ in range({DATAGRAMS}):\n\x20   {send}\n"
        );
        let before = program_stats();
        let status = Link::exec(&link.a, "python3").args(["-c", &script]).status().expect("python3");
        assert!(status.success(), "sending datagrams failed");
        let after = program_stats();
        // The kernel keeps 15 characters of a program's name.
        let cost = |name: &str| {
            let (t0, c0) = before.get(name).copied().unwrap_or_default();
            let (t1, c1) = after.get(name).copied().unwrap_or_default();
            format!("{:.1} ({} events)", (t1 - t0) as f64 / (c1 - c0).max(1) as f64, c1 - c0)
        };
        println!("| {socket} | {} | {} |", cost("dns_egress"), cost("datagram_sendms"));
    }
    let _ = agent.stop();
}

pub fn run() {
    let seconds = env_or("BENCH_SECONDS", 5);
    let rates: Vec<u64> = std::env::var("BENCH_DNS_RATES")
        .ok()
        .map_or_else(|| vec![10_000, 25_000, 50_000], |v| v.split(',').filter_map(|r| r.parse().ok()).collect());
    let stats = BpfStats::enable();
    let (queries, hosts) = write_inputs();
    let link = Link::new("bdns", 60);
    let _server = dnsmasq(&link.b, &[&link.addr_b.to_string()], 53, &[format!("--addn-hosts={hosts}")]);
    let ok = |cmd: &mut std::process::Command| assert!(cmd.status().is_ok_and(|s| s.success()), "{cmd:?}");
    ok(Link::exec(&link.b, "ip").args(["addr", "add", &format!("{SILENT_SERVER}/24"), "dev", &link.veth(false)]));
    ok(Link::exec(&link.b, "iptables").args(["-A", "INPUT", "-d", SILENT_SERVER, "-j", "DROP"]));

    let receiver = Receiver::grpc("127.0.0.1:0");
    let endpoint = format!("http://{}", receiver.addr);
    let env = [("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str())];
    let server = link.addr_b.to_string();
    let hz = 100.0; // USER_HZ
    println!("## flowtel DNS benchmark (dnsperf -> dnsmasq across a veth pair, {seconds} s per run)\n");
    println!(
        "| target rate | qps without | qps with | ratio | sent | counted by flowtel | lost (agent) | agent CPU (cores) | CPU per 10k lookups/s |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut probe_totals = std::collections::BTreeMap::new();
    for &rate in &rates {
        let without = dnsperf(&link, &server, rate, seconds, &queries);
        let agent = Agent::start(&env);
        let before = program_stats();
        let cpu0 = cpu_ticks(agent.pid());
        let with = dnsperf(&link, &server, rate, seconds, &queries);
        let cpu1 = cpu_ticks(agent.pid());
        let after = program_stats();
        std::thread::sleep(Duration::from_millis(2500)); // the last lookups' export
        let _ = agent.stop();
        for (name, (time, count)) in &after {
            let (t0, c0) = before.get(name).copied().unwrap_or((0, 0));
            if name.starts_with("dns_") {
                let entry = probe_totals.entry(format!("{name} @ {rate}/s")).or_insert((0, 0));
                entry.0 += time - t0;
                entry.1 += count - c0;
            }
        }
        let got = receiver.received.snapshot();
        let counted = total(&points(&got, "flowtel.dns.lookups"), &[("process.pid", &with.pid.to_string())], &[]);
        let lost = total(&points(&got, "flowtel.agent.events.lost"), &[], &[]);
        let cores = (cpu1 - cpu0) as f64 / hz / seconds as f64;
        println!(
            "| {rate} | {:.0} | {:.0} | {:.3} | {} (completed {}) | {counted} | {lost} | {cores:.3} | {:.3} |",
            without.qps,
            with.qps,
            with.qps / without.qps,
            with.sent,
            with.completed,
            cores / (with.qps / 10_000.0),
        );
    }
    print_probe_table(&probe_totals);
    println!("\n| loss cause | events |\n|---|---|");
    for p in points(&receiver.received.snapshot(), "flowtel.agent.events.lost").iter().filter(|p| p.value > 0.0) {
        println!("| {} / {} | {} |", p.attrs["flowtel.probe"], p.attrs["flowtel.loss.cause"], p.value);
    }

    non_dns_udp_cost(&link, &env);

    // Caps: every name answered with its own address fills the name map; queries to a
    // silent port fill the pending table (the excess is counted as lost, by design).
    let agent = Agent::start(&env);
    std::thread::sleep(Duration::from_secs(2));
    let idle_kib = peak_rss_kib(agent.pid());
    let answered = dnsperf(&link, &server, 40_000, 3, &queries);
    std::thread::sleep(Duration::from_millis(2500));
    let names_kib = peak_rss_kib(agent.pid());
    let unanswered = flood_silent_server(&link, 70_000);
    std::thread::sleep(Duration::from_millis(2500));
    let full_kib = peak_rss_kib(agent.pid());
    let _ = agent.stop();
    let got = receiver.received.snapshot();
    let names = points(&got, "flowtel.agent.dns.names").iter().map(|p| p.value).fold(0.0, f64::max);
    let pending = points(&got, "flowtel.agent.dns.pending").iter().map(|p| p.value).fold(0.0, f64::max);
    println!("\n| memory | value |\n|---|---|");
    println!("| agent peak RSS, idle | {:.1} MiB |", idle_kib as f64 / 1024.0);
    let mib = |kib: u64| kib as f64 / 1024.0;
    println!(
        "| after {} answered lookups (the name map full, and their series) | {:.1} MiB (+{:.1}) |",
        answered.completed,
        mib(names_kib),
        mib(names_kib) - mib(idle_kib)
    );
    println!(
        "| then {unanswered} unanswered queries (the pending table full) | {:.1} MiB (+{:.1}) |",
        mib(full_kib),
        mib(full_kib) - mib(names_kib)
    );
    println!("| name map size reached (cap {NAMES}) | {names} |");
    println!("| pending table size reached (cap 65536) | {pending} |");
    drop(stats);
}
