//! `bench -- workloads`: the agent's memory on a busy node, with `telemetry.max_workloads`
//! at its default and effectively unbounded, in one run: `BENCH_PROCESSES` (400)
//! long-lived processes with one TCP connection each, plus `BENCH_CHURN` (40) short-lived
//! processes a second (each a forked shell that opens a connection, sends 16 bytes and
//! exits) for `BENCH_SECONDS` (75), exporting every 5 s; `BENCH_MAX_WORKLOADS` the caps
//! to run (`512,1048576`). Reports the agent's peak RSS,
//! the workloads it held, the folds, and whether the short-lived bytes arrived exactly.
use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use flowtel_e2e::{
    agent::Agent,
    query::{points, total},
    receiver::Receiver,
    traffic::{eventually, script_path},
};

use super::{env_or, peak_rss_kib};

const PORT: &str = "9880";
const CHURN_BYTES: u64 = 16;

struct Measured {
    peak_rss_mib: f64,
    own: f64,
    folded: f64,
    folds: f64,
    churned: u64,
    churn_bytes: f64,
}

fn measure(max_workloads: &str, live: u64, churn_per_s: u64, seconds: u64) -> Measured {
    let receiver = Receiver::grpc("127.0.0.1:0");
    let agent = Agent::start(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &format!("http://{}", receiver.addr)),
        ("OTEL_METRIC_EXPORT_INTERVAL", "5000"),
        ("FLOWTEL_TELEMETRY_MAX_WORKLOADS", max_workloads),
    ]);
    let mut sink = Command::new("python3")
        .arg(script_path())
        .args(["sink-server", PORT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn the sink server");
    let mut lines = BufReader::new(sink.stdout.take().expect("stdout")).lines();
    assert_eq!(lines.next().and_then(Result::ok).as_deref(), Some("ready"));
    let mut holders = super::identity::hold_clients(PORT, u32::try_from(live).expect("a process count"), &[]);

    // Each short-lived process: a forked bash that sends 16 bytes over /dev/tcp.
    let gap = 1.0 / churn_per_s as f64;
    let churned = churn_per_s * seconds;
    let script = format!(
        "for i in $(seq {churned}); do ( exec 3<>/dev/tcp/127.0.0.1/{PORT}; printf 0123456789abcdef >&3 ) & sleep {gap}; done; wait"
    );
    let started = Instant::now();
    let status = Command::new("bash").args(["-c", &script]).status().expect("bash");
    assert!(status.success());
    let churn_s = started.elapsed().as_secs_f64();
    let sent = |got: &[flowtel_e2e::query::Point]| {
        total(
            got,
            &[("process.executable.name", "bash")],
            &[("network.peer.port", PORT), ("network.io.direction", "transmit")],
        )
    };
    let want = (churned * CHURN_BYTES) as f64;
    eventually(Duration::from_secs(30), || sent(&points(&receiver.received.snapshot(), "flowtel.network.io")) >= want);
    let got = receiver.received.snapshot();
    let kind = |k: &str| {
        points(&got, "flowtel.agent.workloads")
            .iter()
            .filter(|p| p.attrs.get("flowtel.workload.kind").map(String::as_str) == Some(k))
            .map(|p| p.value)
            .fold(0.0, f64::max)
    };
    let measured = Measured {
        peak_rss_mib: peak_rss_kib(agent.pid()) as f64 / 1024.0,
        own: kind("process"),
        folded: kind("folded"),
        folds: total(&points(&got, "flowtel.agent.workloads.folded"), &[], &[]),
        churned,
        churn_bytes: sent(&points(&got, "flowtel.network.io")),
    };
    eprintln!("churn of {churned} processes took {churn_s:.0} s");
    drop(holders.stdin.take());
    let _ = holders.wait();
    drop(sink.stdin.take());
    let _ = sink.wait();
    drop(agent);
    measured
}

pub fn run() {
    let live = env_or("BENCH_PROCESSES", 400);
    let churn = env_or("BENCH_CHURN", 40);
    let seconds = env_or("BENCH_SECONDS", 75);
    println!(
        "\n{live} long-lived processes with a connection each, {churn} short-lived processes a second for {seconds} s, export every 5 s\n"
    );
    println!(
        "| telemetry.max_workloads | agent peak RSS | own workloads (max) | folded workloads (max) | folds | short-lived bytes (want) |"
    );
    println!("|---|---|---|---|---|---|");
    let caps = std::env::var("BENCH_MAX_WORKLOADS").unwrap_or_else(|_| "512,1048576".to_owned());
    for max in caps.split(',') {
        let m = measure(max, live, churn, seconds);
        println!(
            "| {max} | {:.1} MiB | {} | {} | {} | {} ({}) |",
            m.peak_rss_mib,
            m.own,
            m.folded,
            m.folds,
            m.churn_bytes,
            m.churned * CHURN_BYTES
        );
    }
}
