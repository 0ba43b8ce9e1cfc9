//! HTTP: wrk against nginx over one test host's loopback, each load without and then
//! with the agent (spans on): full load, then paced near 10k and 20k requests/s. Every
//! request wrk completed should come back as one CLIENT span under wrk and one SERVER
//! span under nginx (spans per request: 1.0); what could not is counted as lost.
use std::time::Duration;

use flowtel_e2e::{
    agent::Agent,
    netns::Link,
    query::{points, spans, spans_matching},
    receiver::Receiver,
    servers::{Background, nginx, self_signed},
    traffic::wrk,
};

use super::{BpfStats, cpu_ticks, env_or, median, peak_rss_kib, print_probe_table, program_stats};

const PORT: u16 = 8090;
const TLS_PORT: u16 = 8453;

pub fn run() {
    let rounds = env_or("BENCH_ROUNDS", 3);
    let seconds = env_or("BENCH_SECONDS", 5);
    let connections = u32::try_from(env_or("BENCH_HTTP_CONNECTIONS", 16)).unwrap_or(16);
    let stats = BpfStats::enable();
    let link = Link::new("bhttp", 61);
    let _nginx = nginx_ok(&link.a, "flowtel-bench-nginx", PORT, TLS_PORT);
    let http = format!("http://127.0.0.1:{PORT}/ok");
    let https = format!("https://127.0.0.1:{TLS_PORT}/ok");
    println!("## flowtel HTTP benchmark (wrk -> nginx on a test host's loopback, spans on, {seconds} s per run)\n");
    println!(
        "| load | req/s without | req/s with | ratio | requests (wrk) | SERVER spans | CLIENT spans | spans/request | agent CPU (cores) | CPU per 10k req/s | peak RSS | lost |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mut ratios = Vec::new();
    let mut probe_totals = std::collections::BTreeMap::new();
    // Full load (every connection back to back), then paced near 10k and 20k req/s
    // (each connection waits 1 ms after each response).
    // HTTPS the same way: both ends through OpenSSL (nginx and wrk), so the uprobes run.
    let mut loads: Vec<(String, u32, u64, &str)> =
        (1..=rounds).map(|r| (format!("full #{r}"), connections, 0, http.as_str())).collect();
    loads.push(("paced 14 x 1 ms".into(), 14, 1, &http));
    loads.push(("paced 28 x 1 ms".into(), 28, 1, &http));
    loads.push(("HTTPS full".into(), connections, 0, &https));
    loads.push(("HTTPS paced 14 x 1 ms".into(), 14, 1, &https));
    for (label, conns, delay, url) in loads {
        let without = wrk(&link.a, url, seconds, conns, delay).per_second;
        let receiver = Receiver::grpc("127.0.0.1:0");
        let endpoint = format!("http://{}", receiver.addr);
        let agent = Agent::start(&[("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str())]);
        let before = program_stats();
        let cpu0 = cpu_ticks(agent.pid());
        let run = wrk(&link.a, url, seconds, conns, delay);
        let (requests, with, wrk_pid) = (run.requests, run.per_second, run.pid);
        let cpu1 = cpu_ticks(agent.pid());
        let after = program_stats();
        std::thread::sleep(Duration::from_secs(3)); // the last spans' export
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
        let port = if url == http { port } else { TLS_PORT.to_string() };
        let served = spans_matching(&got, &[("service.name", "nginx")], &[("server.port", &port)]).len();
        let sent = spans_matching(&got, &[("process.pid", &wrk_pid.to_string())], &[]).len();
        let cores = (cpu1 - cpu0) as f64 / 100.0 / seconds as f64; // USER_HZ ticks
        let lost_points = points(&receiver.received.snapshot(), "flowtel.agent.events.lost");
        let lost: Vec<String> = lost_points
            .iter()
            .filter(|p| p.value > 0.0 && p.attrs["flowtel.probe"] == "httpflow")
            .map(|p| format!("{} {}", p.attrs["flowtel.loss.cause"], p.value))
            .collect();
        if delay == 0 && url == http {
            ratios.push(with / without);
        }
        println!(
            "| {label} | {without:.0} | {with:.0} | {:.3} | {requests} | {served} | {sent} | {:.4} | {cores:.3} | {:.3} | {:.1} MiB | {} |",
            with / without,
            sent as f64 / requests as f64,
            cores / (with / 10_000.0),
            rss as f64 / 1024.0,
            if lost.is_empty() { "0".into() } else { lost.join(", ") },
        );
    }
    println!("\nmedian full-load ratio: {:.3}", median(ratios));
    probe_totals.retain(|name, (_, count)| *count > 0 && (name.starts_with("flow_") || name.starts_with("tls_")));
    print_probe_table(&probe_totals);
    drop(stats);
}

/// nginx in `ns` answering `/ok` with 200 on loopback: clear text on `port`, TLS (a
/// throwaway certificate) on `tls_port`; its files under the temp dir's `dir_name`.
pub fn nginx_ok(ns: &str, dir_name: &str, port: u16, tls_port: u16) -> Background {
    let dir = std::env::temp_dir().join(dir_name);
    let (cert, key) = self_signed(&dir);
    let block = format!(
        "server {{ listen 127.0.0.1:{port}; location = /ok {{ return 200 'ok'; }} }}\n\
         server {{ listen 127.0.0.1:{tls_port} ssl; ssl_certificate {cert}; ssl_certificate_key {key};\n\
           location = /ok {{ return 200 'ok'; }} }}"
    );
    nginx(ns, &block, &dir)
}
