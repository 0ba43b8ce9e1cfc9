//! `cargo run --release -p flowtel-e2e --bin bench [flows|dns|http|identity]`: flowtel's cost,
//! measured in one run, with and without the agent.
//!
//! `flows` (default): loopback iperf3, 1 KiB writes. `dns`: dnsperf against dnsmasq on a
//! test host. `http`: wrk against nginx on a test host's loopback, spans on. Both report per-probe nanoseconds per event from the kernel's own
//! accounting (`kernel.bpf_stats_enabled`: `run_time_ns` / `run_cnt`), agent CPU and
//! peak RSS from /proc, and what a real OTLP receiver got (counts, losses).
//! `http-cost`: CPU µs per request inside nginx, wrk and the agent, and uprobe traps
//! per request, with a bare trap's cost measured in the same run (`http_cost.rs`).
//! `http-latency`: p50/p99 at fixed offered rates with and without the agent (oha), and
//! the histograms' count against the requests made (`http_latency.rs`).
//! `identity`: the Kubernetes watchers at 10,000 pods and 1,000 local processes
//! (`BENCH_PROCESSES`, `BENCH_INTERVAL_S`, `BENCH_CARDINALITY_LIMIT`). `workloads`: peak
//! RSS with 400 long-lived and 40 short-lived processes a second, per `max_workloads`.
//! Environment: `BENCH_ROUNDS` (default 3), `BENCH_SECONDS` (default 5),
//! `BENCH_NO_STATS=1` (measure without the kernel's per-program accounting).
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "benchmark arithmetic on measured values far inside the target types' range"
)]
mod dns;
mod flows;
mod http;
mod http_cost;
mod http_latency;
mod identity;
mod workloads;

use std::collections::BTreeMap;

pub fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Per flowtel program: (`run_time_ns`, `run_cnt`), summed over attachments.
pub fn program_stats() -> BTreeMap<String, (u64, u64)> {
    let mut stats = BTreeMap::new();
    for info in aya::programs::loaded_programs().flatten() {
        let name = info.name_as_str().unwrap_or_default().to_owned();
        if ["flow_", "datagram_", "dns_", "http_", "tls_"].iter().any(|prefix| name.starts_with(prefix)) {
            let entry = stats.entry(name).or_insert((0, 0));
            entry.0 += info.run_time().as_nanos() as u64;
            entry.1 += info.run_count();
        }
    }
    stats
}

pub fn cpu_ticks(pid: u32) -> u64 {
    stat_field(pid, 11) + stat_field(pid, 12)
}

/// Page faults a process took that found no page: the kernel zeroed a fresh one for each
/// (`minflt`, all threads). Memory an allocator gives back and takes again costs these.
pub fn minor_faults(pid: u32) -> u64 {
    stat_field(pid, 7)
}

/// Field `index` of `/proc/<pid>/stat` counted from the state letter (0), as a number.
fn stat_field(pid: u32, index: usize) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or_default();
    after.split_whitespace().nth(index).and_then(|v| v.parse().ok()).unwrap_or(0)
}

pub use flowtel_e2e::procfs::{peak_rss_kib, rss_kib};

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Turns on the kernel's per-program run-time accounting (unless `BENCH_NO_STATS`) and
/// restores the previous setting on drop.
pub struct BpfStats {
    before: String,
}

const STATS_PATH: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl BpfStats {
    pub fn enable() -> Self {
        let before = std::fs::read_to_string(STATS_PATH).unwrap_or_else(|_| "0".into());
        let on = std::env::var_os("BENCH_NO_STATS").is_none();
        std::fs::write(STATS_PATH, if on { "1" } else { "0" }).expect("set kernel.bpf_stats_enabled");
        Self { before }
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write(STATS_PATH, self.before.trim());
    }
}

/// Per-probe rows: events and nanoseconds per event.
pub fn print_probe_table(totals: &BTreeMap<String, (u64, u64)>) {
    println!("\n| probe | events | ns/event |\n|---|---|---|");
    for (name, (time, count)) in totals {
        let per = if *count > 0 { *time as f64 / *count as f64 } else { 0.0 };
        println!("| {name} | {count} | {per:.1} |");
    }
}

fn main() {
    assert!(flowtel_e2e::privileged_or_skip("bench"), "the benchmark needs root");
    match std::env::args().nth(1).as_deref() {
        None | Some("flows") => flows::run(),
        Some("dns") => dns::run(),
        Some("http") => http::run(),
        Some("http-cost") => http_cost::run(),
        Some("http-latency") => http_latency::run(),
        Some("identity") => identity::run(),
        Some("workloads") => workloads::run(),
        Some(other) => {
            panic!("unknown benchmark {other:?}: flows, dns, http, http-cost, http-latency, identity or workloads")
        }
    }
}
