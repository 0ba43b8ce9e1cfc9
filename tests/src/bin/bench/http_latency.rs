//! `bench -- http-latency`: what flowtel adds to request latency at fixed offered
//! rates, and whether every exchange still reaches the histograms. oha (`cargo install
//! oha --locked`; `BENCH_OHA` names another binary) offers `BENCH_HTTP_RATES` (default
//! 5000, 20000, 50000) requests a second to nginx on a test host's loopback for
//! `BENCH_SECONDS` (default 10), over 32 keep-alive connections, with its latency
//! correction (a request late because an earlier one was slow counts from when it
//! should have gone: no coordinated omission). Nothing is pinned: nginx, oha, the agent
//! and the receiver share the two cores, as on a busy node. Each rate without the agent,
//! then with it (spans on, both ends observed); p50/p99/p99.9 from oha, and the
//! requests oha made against the observations in `http.server.request.duration`
//! (nginx) and `http.client.request.duration` (oha), and the losses by cause.
use std::{process::Stdio, time::Duration};

use flowtel_e2e::{
    agent::Agent,
    netns::Link,
    query::{matching, points},
    receiver::Receiver,
    traffic::eventually,
};

use super::{env_or, http::nginx_ok};

const PORT: u16 = 8092;
const TLS_PORT: u16 = 8455;
const CONNECTIONS: u32 = 32;

/// What oha reports for one run.
struct Run {
    pid: u32,
    /// Requests that got an answer (any status) and those that failed.
    answered: u64,
    failed: u64,
    per_second: f64,
    /// p50, p99, p99.9 in µs.
    latency_us: [f64; 3],
}

pub fn run() {
    let seconds = env_or("BENCH_SECONDS", 10);
    let rates: Vec<u64> = std::env::var("BENCH_HTTP_RATES")
        .unwrap_or_else(|_| "5000,20000,50000".into())
        .split(',')
        .filter_map(|r| r.trim().parse().ok())
        .collect();
    let oha = std::env::var("BENCH_OHA").unwrap_or_else(|_| "oha".into());
    let link = Link::new("blat", 72);
    let server = nginx_ok(&link.a, "flowtel-bench-latency-nginx", PORT, TLS_PORT);
    let nginx_pid = server.0.id().to_string();
    let url = format!("http://127.0.0.1:{PORT}/ok");
    println!(
        "## flowtel HTTP latency at fixed rates (oha -c {CONNECTIONS} --latency-correction -> nginx, nothing pinned, {seconds} s per run)\n"
    );
    println!(
        "| offered req/s | achieved without → with | p50 µs without → with | p99 µs without → with | p99.9 µs without → with | p99 added µs | requests (with) | server histogram | client histogram | losses |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for rate in rates {
        let without = oha_run(&oha, &link.a, &url, rate, seconds);
        let receiver = Receiver::grpc("127.0.0.1:0");
        let endpoint = format!("http://{}", receiver.addr);
        let agent = Agent::start(&[("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str())]);
        let with = oha_run(&oha, &link.a, &url, rate, seconds);
        let requests = with.answered + with.failed;
        let observed = |metric: &str, pid: &str| {
            matching(&points(&receiver.received.snapshot(), metric), &[("process.pid", pid)], &[])
                .iter()
                .map(|p| p.count)
                .sum::<u64>()
        };
        let client_pid = with.pid.to_string();
        // Until both histograms hold every request, or stop growing for good.
        eventually(Duration::from_secs(20), || {
            observed("http.server.request.duration", &nginx_pid) >= requests
                && observed("http.client.request.duration", &client_pid) >= requests
        });
        let (served, sent) = (
            observed("http.server.request.duration", &nginx_pid),
            observed("http.client.request.duration", &client_pid),
        );
        let losses = flowtel_e2e::query::losses(&receiver.received.snapshot());
        let _ = agent.stop();
        let losses: Vec<String> =
            losses.iter().filter(|((probe, _), _)| probe == "httpflow").map(|((_, c), n)| format!("{c} {n}")).collect();
        let [p50, p99, p999] = [0, 1, 2].map(|i| format!("{:.0} → {:.0}", without.latency_us[i], with.latency_us[i]));
        println!(
            "| {rate} | {:.0} → {:.0} | {p50} | {p99} | {p999} | {:+.0} | {requests} ({} failed) | {served} | {sent} | {} |",
            without.per_second,
            with.per_second,
            with.latency_us[1] - without.latency_us[1],
            with.failed,
            if losses.is_empty() { "0".into() } else { losses.join(", ") },
        );
    }
}

fn oha_run(oha: &str, ns: &str, url: &str, rate: u64, seconds: u64) -> Run {
    let child = Link::exec(ns, oha)
        .args(["-z", &format!("{seconds}s"), "-q", &rate.to_string(), "-c", &CONNECTIONS.to_string()])
        .args(["--latency-correction", "--no-tui", "--output-format", "json", url])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|err| panic!("{oha}: {err} (cargo install oha --locked, or BENCH_OHA=<path>)"));
    let pid = child.id();
    let out = child.wait_with_output().expect("oha output");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|err| panic!("oha said ({err}): {}", String::from_utf8_lossy(&out.stdout)));
    let count = |key: &str| {
        report[key].as_object().map_or(0, |m| m.values().filter_map(serde_json::Value::as_u64).sum::<u64>())
    };
    let percentile = |p: &str| report["latencyPercentiles"][p].as_f64().unwrap_or(f64::NAN) * 1e6;
    Run {
        pid,
        answered: count("statusCodeDistribution"),
        failed: count("errorDistribution"),
        per_second: report["summary"]["requestsPerSec"].as_f64().unwrap_or(0.0),
        latency_us: [percentile("p50"), percentile("p99"), percentile("p99.9")],
    }
}
