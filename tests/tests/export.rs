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
    traffic::{eventually, tcp_exchange},
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
