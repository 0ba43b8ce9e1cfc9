//! Flows: loopback iperf3 with 1 KiB writes (the worst case for per-send hooks),
//! alternating rounds without and with the agent; events lost and bytes counted, from
//! what a real OTLP receiver got.
use std::{collections::BTreeMap, process::Command, time::Duration};

use flowtel_e2e::{
    agent::Agent,
    query::{points, total},
    receiver::Receiver,
};

use super::{BpfStats, cpu_ticks, env_or, median, peak_rss_kib, print_probe_table, program_stats};

/// (bytes sent, bits per second) of one iperf3 run, and the client's pid.
fn iperf(seconds: u64, port: u16) -> (u64, f64, u32) {
    let mut server = Command::new("iperf3")
        .args(["-s", "-1", "-p", &port.to_string()])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("iperf3 (apt install iperf3)");
    std::thread::sleep(Duration::from_millis(300));
    let client = Command::new("iperf3")
        .args(["-c", "127.0.0.1", "-p", &port.to_string(), "-l", "1K", "-t", &seconds.to_string(), "-J"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("iperf3 client");
    let pid = client.id();
    let out = client.wait_with_output().expect("iperf3 output");
    let _ = server.wait();
    let json = String::from_utf8_lossy(&out.stdout);
    let sent = &json[json.find("\"sum_sent\"").expect("iperf3 JSON has sum_sent")..];
    let number = |key: &str| -> f64 {
        let at = sent.find(key).expect("key in sum_sent") + key.len();
        sent[at..].trim_start_matches([':', ' ']).split([',', '\n', '}']).next().unwrap().trim().parse().unwrap()
    };
    (number("\"bytes\"") as u64, number("\"bits_per_second\""), pid)
}

pub fn run() {
    let (rounds, seconds) = (env_or("BENCH_ROUNDS", 3), env_or("BENCH_SECONDS", 5));
    let stats = BpfStats::enable();

    let receiver = Receiver::grpc("127.0.0.1:0");
    let endpoint = format!("http://{}", receiver.addr);
    let (mut without, mut with) = (Vec::new(), Vec::new());
    let mut probe_totals: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let (mut cpu_share, mut rss_kib, mut sends_per_s) = (Vec::new(), 0, Vec::new());
    let mut accuracy = Vec::new();
    let hz = 100.0; // USER_HZ
    for round in 0..rounds {
        let port = 5300 + round as u16 * 2;
        without.push(iperf(seconds, port).1);
        let agent = Agent::start(&[("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)]);
        let before = program_stats();
        let cpu0 = cpu_ticks(agent.pid());
        let (bytes, bps, client_pid) = iperf(seconds, port + 1);
        let cpu1 = cpu_ticks(agent.pid());
        let after = program_stats();
        rss_kib = rss_kib.max(peak_rss_kib(agent.pid()));
        std::thread::sleep(Duration::from_millis(2500)); // one more export interval
        let (_, _) = agent.stop();
        with.push(bps);
        cpu_share.push((cpu1 - cpu0) as f64 / hz / seconds as f64);
        sends_per_s.push(bytes as f64 / 1024.0 / seconds as f64);
        for (name, (time, count)) in &after {
            let (t0, c0) = before.get(name).copied().unwrap_or((0, 0));
            let entry = probe_totals.entry(name.clone()).or_insert((0, 0));
            entry.0 += time - t0;
            entry.1 += count - c0;
        }
        let io = points(&receiver.received.snapshot(), "flowtel.network.io");
        let counted = total(&io, &[("process.pid", &client_pid.to_string())], &[("network.io.direction", "transmit")]);
        accuracy.push((bytes, counted as u64));
    }
    drop(stats);

    let lost = total(&points(&receiver.received.snapshot(), "flowtel.agent.events.lost"), &[], &[]);
    let (base, observed) = (median(without), median(with));
    println!(
        "## flowtel benchmark ({rounds} rounds x {seconds} s, iperf3 -l 1K on loopback, {} cores)\n",
        std::thread::available_parallelism().map_or(0, std::num::NonZero::get)
    );
    println!("| measure | value |\n|---|---|");
    println!("| throughput without flowtel (median) | {:.2} Gbit/s |", base / 1e9);
    println!("| throughput with flowtel (median) | {:.2} Gbit/s |", observed / 1e9);
    println!("| ratio with/without | {:.3} |", observed / base);
    println!("| sends per second (1 KiB writes, median) | {:.0} |", median(sends_per_s));
    println!("| agent CPU (median, share of one core) | {:.3} |", median(cpu_share));
    println!("| agent peak RSS | {:.1} MiB |", rss_kib as f64 / 1024.0);
    println!("| events lost (flowtel.agent.events.lost) | {lost} |");
    for (round, (bytes, counted)) in accuracy.iter().enumerate() {
        println!(
            "| round {round}: iperf3 data bytes / agent-counted bytes (incl. control connection) | {bytes} / {counted} |"
        );
    }
    print_probe_table(&probe_totals);
}
