//! HTTP: wrk against nginx over one test host's loopback, each round without and then
//! with the agent (spans on). Every request wrk completed must come back as one SERVER
//! span under nginx and one CLIENT span under wrk (spans per request: 1.0).
use std::{process::Stdio, time::Duration};

use flowtel_e2e::{
    agent::Agent,
    netns::Link,
    query::{points, spans, spans_matching, total},
    receiver::Receiver,
    servers::nginx,
};

use super::{BpfStats, cpu_ticks, env_or, median, peak_rss_kib, print_probe_table, program_stats};

const PORT: u16 = 8090;

/// (requests completed, requests per second, wrk's pid).
fn wrk(ns: &str, seconds: u64, connections: u32) -> (u64, f64, u32) {
    let child = Link::exec(ns, "wrk")
        .args(["-t", "1", "-c", &connections.to_string(), "-d", &format!("{seconds}s")])
        .arg(format!("http://127.0.0.1:{PORT}/ok"))
        .stdout(Stdio::piped())
        .spawn()
        .expect("wrk (apt install wrk)");
    let pid = child.id();
    let out = String::from_utf8_lossy(&child.wait_with_output().expect("wrk output").stdout).into_owned();
    let requests = out
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("wrk output: {out}"));
    let rps = out
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("wrk output: {out}"));
    (requests, rps, pid)
}

pub fn run() {
    let rounds = env_or("BENCH_ROUNDS", 3);
    let seconds = env_or("BENCH_SECONDS", 5);
    let connections = u32::try_from(env_or("BENCH_HTTP_CONNECTIONS", 16)).unwrap_or(16);
    let stats = BpfStats::enable();
    let link = Link::new("bhttp", 61);
    let dir = std::env::temp_dir().join("flowtel-bench-nginx");
    let block = format!("server {{ listen 127.0.0.1:{PORT}; location = /ok {{ return 200 'ok'; }} }}");
    let _nginx = nginx(&link.a, &block, &dir);
    let hz = 100.0; // USER_HZ
    println!("## flowtel HTTP benchmark (wrk -t1 -c{connections} -> nginx on loopback, {seconds} s per run)\n");
    println!(
        "| round | req/s without | req/s with | ratio | requests (wrk) | SERVER spans | CLIENT spans | spans/request | agent CPU (cores) | CPU per 10k req/s | peak RSS |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    let mut ratios = Vec::new();
    let mut probe_totals = std::collections::BTreeMap::new();
    for round in 1..=rounds {
        let (_, without, _) = wrk(&link.a, seconds, connections);
        let receiver = Receiver::grpc("127.0.0.1:0");
        let endpoint = format!("http://{}", receiver.addr);
        let agent = Agent::start(&[("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str())]);
        let before = program_stats();
        let cpu0 = cpu_ticks(agent.pid());
        let (requests, with, wrk_pid) = wrk(&link.a, seconds, connections);
        let cpu1 = cpu_ticks(agent.pid());
        let after = program_stats();
        std::thread::sleep(Duration::from_millis(2500)); // the last spans' export
        let rss = peak_rss_kib(agent.pid());
        let _ = agent.stop();
        for (name, (time, count)) in &after {
            let (t0, c0) = before.get(name).copied().unwrap_or((0, 0));
            let entry = probe_totals.entry(name.clone()).or_insert((0, 0));
            entry.0 += time - t0;
            entry.1 += count - c0;
        }
        let got = spans(&receiver.traces.snapshot());
        let port = PORT.to_string();
        let served = spans_matching(&got, &[("service.name", "nginx")], &[("server.port", &port)]).len();
        let sent = spans_matching(&got, &[("process.pid", &wrk_pid.to_string())], &[]).len();
        let cores = (cpu1 - cpu0) as f64 / hz / seconds as f64;
        ratios.push(with / without);
        println!(
            "| {round} | {without:.0} | {with:.0} | {:.3} | {requests} | {served} | {sent} | {:.4} | {cores:.3} | {:.3} | {:.1} MiB |",
            with / without,
            served as f64 / requests as f64,
            cores / (with / 10_000.0),
            rss as f64 / 1024.0
        );
        let lost = points(&receiver.received.snapshot(), "flowtel.agent.events.lost");
        for p in lost.iter().filter(|p| p.value > 0.0 && p.attrs["flowtel.probe"] == "httpflow") {
            println!("|  | lost: {} | {} |", p.attrs["flowtel.loss.cause"], p.value);
        }
        let _ = total(&lost, &[], &[]);
    }
    println!("\nmedian ratio: {:.3}", median(ratios));
    probe_totals.retain(|name, (_, count)| *count > 0 && (name.starts_with("http_") || name.starts_with("flow_")));
    print_probe_table(&probe_totals);
    drop(stats);
}
