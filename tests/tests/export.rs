//! Delivery: both OTLP protocols, a flush on SIGTERM, a collector outage, and a
//! third-party collector (rotel) in the path.
#![allow(clippy::float_cmp, reason = "metric totals are integers carried as f64, compared exactly on purpose")]
use std::{net::TcpListener, time::Duration};

use flowtel_e2e::{
    agent::Agent,
    collector::Rotel,
    netns::Link,
    privileged_or_skip,
    query::{points, total},
    receiver::{Received, Receiver},
    traffic::{Traffic, eventually, tcp_exchange},
};

/// One known TCP exchange between two fresh hosts; returns the client's pid.
fn exchange(link: &Link, port: u16, up: u64, down: u64) -> String {
    tcp_exchange(link, false, port, 1, up, down).1
}

fn client_sent(received: &Received, pid: &str) -> f64 {
    let io = points(&received.snapshot(), "flowtel.network.io");
    total(&io, &[("process.pid", pid)], &[("network.io.direction", "transmit")])
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn http_protobuf_export_and_sigterm_flushes_the_last_interval() {
    if !privileged_or_skip("http_protobuf_export_and_sigterm_flushes_the_last_interval") {
        return;
    }
    let receiver = Receiver::http("127.0.0.1:0");
    let endpoint = format!("http://{}", receiver.addr);
    // An interval far longer than the test: only the flush on SIGTERM can deliver.
    let agent = Agent::start(&[
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
        ("OTEL_METRIC_EXPORT_INTERVAL", "600000"),
    ]);
    let link = Link::new("http", 21);
    let client = exchange(&link, 9400, 4321, 8765);
    assert!(receiver.received.snapshot().is_empty(), "nothing should be exported before the interval");
    let (status, log) = agent.stop();
    assert!(status.success(), "exit {status}; log:\n{log}");
    assert!(log.contains("detaching probes"), "{log}");
    assert_eq!(client_sent(&receiver.received, &client), 4321.0, "log:\n{log}");
}

#[test]
fn collector_outage_is_logged_once_and_totals_arrive_when_it_returns() {
    if !privileged_or_skip("collector_outage_is_logged_once_and_totals_arrive_when_it_returns") {
        return;
    }
    let port = free_port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let mut agent = Agent::start(&[("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)]);
    let link = Link::new("outage", 22);
    let client = exchange(&link, 9500, 2222, 3333);
    // Several intervals fail while nothing listens.
    std::thread::sleep(Duration::from_secs(4));
    let log = agent.log();
    assert_eq!(log.matches("metric export failed").count(), 1, "one log line per outage, not per attempt:\n{log}");

    let receiver = Receiver::grpc(&format!("127.0.0.1:{port}"));
    let delivered = eventually(Duration::from_secs(30), || client_sent(&receiver.received, &client) == 2222.0);
    assert!(delivered, "totals never arrived after the outage; log:\n{}", agent.log());
    agent.wait_for_log("metric export recovered", Duration::from_secs(10));
    let failures = points(&receiver.received.snapshot(), "flowtel.agent.export.failures");
    assert!(total(&failures, &[("service.name", "flowtel")], &[]) >= 3.0, "{failures:#?}");
}

#[test]
fn through_a_third_party_collector() {
    if !privileged_or_skip("through_a_third_party_collector") {
        return;
    }
    let receiver = Receiver::grpc("127.0.0.1:0");
    let rotel = Rotel::start(&format!("http://{}", receiver.addr));
    let agent = Agent::start(&[("OTEL_EXPORTER_OTLP_ENDPOINT", &format!("http://127.0.0.1:{}", rotel.grpc_port))]);
    let link = Link::new("rotel", 23);
    let client = exchange(&link, 9600, 1357, 2468);
    let delivered = eventually(Duration::from_secs(30), || client_sent(&receiver.received, &client) == 1357.0);
    let got = receiver.received.snapshot();
    assert!(
        delivered,
        "agent -> rotel -> receiver did not deliver: {} requests, io points {:#?}; log:\n{}",
        got.len(),
        points(&got, "flowtel.network.io")
            .iter()
            .filter(|p| p.resource.get("process.pid") == Some(&client))
            .collect::<Vec<_>>(),
        agent.log()
    );
}

/// Drops every packet to and from the collector's port on loopback while it lives: a
/// collector that neither answers nor refuses (a dead node, a black-holing firewall).
struct BlackHole(u16);

impl BlackHole {
    fn new(port: u16) -> Self {
        for rule in Self::rules(port) {
            let ok = std::process::Command::new("iptables").arg("-I").args(&rule).status().is_ok_and(|s| s.success());
            assert!(ok, "iptables -I {rule:?}");
        }
        Self(port)
    }

    fn rules(port: u16) -> [Vec<String>; 2] {
        let rule = |side: &str| {
            ["OUTPUT", "-o", "lo", "-p", "tcp", side, &port.to_string(), "-j", "DROP"].map(String::from).to_vec()
        };
        [rule("--dport"), rule("--sport")]
    }
}

impl Drop for BlackHole {
    fn drop(&mut self) {
        for rule in Self::rules(self.0) {
            let _ = std::process::Command::new("iptables").arg("-D").args(&rule).status();
        }
    }
}

/// The collector black-holed for 30 s on an established connection while a host serves
/// HTTP, answers DNS and moves TCP bytes: afterwards every byte, lookup and exchange is
/// delivered; spans may be dropped, never silently.
#[test]
fn a_black_holed_collector_costs_at_most_counted_spans() {
    const REQUESTS: u64 = 200;
    const LOOKUPS: u64 = 5;
    if !privileged_or_skip("a_black_holed_collector_costs_at_most_counted_spans") {
        return;
    }
    let receiver = Receiver::grpc("127.0.0.1:0");
    let endpoint = format!("http://{}", receiver.addr);
    let agent = Agent::start(&[("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)]);
    let agent_up = eventually(Duration::from_secs(20), || {
        !points(&receiver.received.snapshot(), "flowtel.agent.probes.attached").is_empty()
    });
    assert!(agent_up, "no first export; log:\n{}", agent.log());

    let hole = BlackHole::new(receiver.addr.port());
    let started = std::time::Instant::now();
    let (metrics_before, traces_before) = (receiver.received.snapshot().len(), receiver.traces.snapshot().len());
    let link = Link::new("blackhole", 65);
    let client = exchange(&link, 9510, 4321, 1234);
    let server_ip = link.addr_b.to_string();
    let _dns = flowtel_e2e::servers::dnsmasq(&link.b, &[&server_ip], 53, &["--address=/known.test/10.0.0.1".into()]);
    for _ in 0..LOOKUPS {
        let ok =
            Link::exec(&link.a, "dig").args(["+tries=1", "+time=3", &format!("@{server_ip}"), "known.test"]).output();
        assert!(ok.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("status: NOERROR")), "dig");
    }
    let mut http = Traffic::spawn_script(&link.b, "http_server.py", &[&server_ip, "8086"]);
    http.wait_line("ready");
    let http_pid = http.pid().to_string();
    let mut requests = Traffic::spawn(&link.a, &["http-fresh-client", &server_ip, "8086", &REQUESTS.to_string(), "0"]);
    requests.wait_line("done");
    std::thread::sleep(Duration::from_secs(30).saturating_sub(started.elapsed()));
    let through_the_hole =
        (receiver.received.snapshot().len() - metrics_before, receiver.traces.snapshot().len() - traces_before);
    assert_eq!(through_the_hole, (0, 0), "exports arrived while the collector was black-holed");
    drop(hole);
    let reopened = std::time::Instant::now();

    let counted = |metric: &str| {
        let got = receiver.received.snapshot();
        flowtel_e2e::query::matching(&points(&got, metric), &[("process.pid", http_pid.as_str())], &[])
            .iter()
            .map(|p| p.count)
            .sum::<u64>()
    };
    let lookups = || {
        let got = receiver.received.snapshot();
        total(&points(&got, "flowtel.dns.lookups"), &[], &[("network.peer.address", server_ip.as_str())])
    };
    let delivered = eventually(Duration::from_secs(90), || {
        client_sent(&receiver.received, &client) == 4321.0
            && lookups() == LOOKUPS as f64
            && counted("http.server.request.duration") == REQUESTS
    });
    assert!(
        delivered,
        "after the outage: {} of 4321 bytes, {} of {LOOKUPS} lookups, {} of {REQUESTS} exchanges; log:\n{}",
        client_sent(&receiver.received, &client),
        lookups(),
        counted("http.server.request.duration"),
        agent.log()
    );
    // Spans: each of the server's exchanges arrives as a span or is counted as lost. A
    // span request caught in the hole waits out its timeout (and the connection its TCP
    // backoff) first, so this may take longer than the metrics did.
    let accounted = || {
        let spans = flowtel_e2e::query::spans(&receiver.traces.snapshot());
        let served = flowtel_e2e::query::spans_matching(&spans, &[("process.pid", http_pid.as_str())], &[]).len();
        let got = receiver.received.snapshot();
        let lost: f64 = ["span_export", "spans_full"]
            .iter()
            .map(|cause| {
                let cause = [("flowtel.probe", "httpflow"), ("flowtel.loss.cause", *cause)];
                total(&points(&got, "flowtel.agent.events.lost"), &[], &cause)
            })
            .sum();
        (served as f64, lost)
    };
    let all = eventually(Duration::from_secs(90), || {
        let (served, lost) = accounted();
        served + lost >= REQUESTS as f64
    });
    let (served, lost) = accounted();
    eprintln!(
        "server spans delivered {served}, spans counted lost {lost} (both ends); all in {:?} after the outage",
        reopened.elapsed()
    );
    assert!(all, "{served} server spans arrived and {lost} were counted lost of {REQUESTS}\n{}", agent.log());
}
