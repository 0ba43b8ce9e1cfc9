//! `bench -- http-cost`: what watching HTTP(S) costs per request, in CPU time rather
//! than throughput (which a noisy 2-core machine does not hold). nginx (one process) is
//! pinned alone on CPU 1; wrk, the agent and the receiver share CPU 0 (the benchmark
//! pins itself there and its children inherit it). For clear text and HTTPS (system
//! libssl at both ends; HTTPS once more with the uprobes at the classic places), without
//! and then with the agent: CPU µs per request inside
//! nginx and inside wrk from /proc, the agent's, the uprobe traps per request (the TLS
//! programs' run counts: an entry probe is one trap, a return probe one more) and the
//! programs' ns per request. A bare uprobe's and uretprobe's cost on this machine,
//! measured in the same run on an empty function, turns the trap count into time.
use std::{collections::BTreeMap, path::Path, process::Command, time::Instant};

use flowtel_e2e::{agent::Agent, netns::Link, receiver::Receiver, traffic::wrk};

use super::{BpfStats, cpu_ticks, env_or, http::nginx_ok, minor_faults, program_stats};

const PORT: u16 = 8091;
const TLS_PORT: u16 = 8454;
/// Load before a measured run with the agent, unmeasured (`BENCH_WARM_UP_SECONDS`).
const WARM_UP_SECONDS: u64 = 3;
/// `USER_HZ`: `/proc/<pid>/stat` counts CPU time in these.
const TICK_US: f64 = 10_000.0;

pub fn run() {
    let seconds = env_or("BENCH_SECONDS", 5);
    // The agent's default export interval: the tests' 1 s makes per-interval work (and
    // the memory given back after workloads retire) a per-second cost.
    let interval_ms = env_or("BENCH_EXPORT_INTERVAL_MS", 60_000).to_string();
    let stats = BpfStats::enable();
    pin(std::process::id(), 0);
    let (stepped_us, emulated_us) = bare_trap_cost();
    println!(
        "## flowtel HTTP(S) cost per request (nginx alone on CPU 1; wrk -t1 -c16, agent and receiver on CPU 0; {seconds} s per run; export interval {interval_ms} ms)\n"
    );
    println!(
        "bare uprobe on this machine (empty function, pinned): {stepped_us:.2} µs a call on a single-stepped instruction, {emulated_us:.2} µs on an emulated one\n"
    );
    println!(
        "| | nginx µs/req without → with | added in nginx | wrk µs/req without → with | added in wrk | agent µs/req | agent page faults/req | uprobe hits/req (both ends) | TLS program ns/req | flow program ns/req |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let link = Link::new("bcost", 62);
    let server = nginx_ok(&link.a, "flowtel-bench-cost-nginx", PORT, TLS_PORT);
    pin(server.0.id(), 1);
    let (http, https) = (format!("http://127.0.0.1:{PORT}/ok"), format!("https://127.0.0.1:{TLS_PORT}/ok"));
    // HTTPS twice: the uprobes on emulated instructions (the default), then at the
    // classic places (function entry, uretprobe) as other agents put them.
    for (label, url, emulated) in
        [("HTTP", &http, "true"), ("HTTPS", &https, "true"), ("HTTPS, entry + uretprobe", &https, "false")]
    {
        let without = measure(&link.a, url, seconds, server.0.id(), None);
        let receiver = Receiver::grpc("127.0.0.1:0");
        let endpoint = format!("http://{}", receiver.addr);
        let agent = Agent::start(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("FLOWTEL_HTTP_TLS_EMULATED_PROBES", emulated),
            ("OTEL_METRIC_EXPORT_INTERVAL", interval_ms.as_str()),
        ]);
        let with = measure(&link.a, url, seconds, server.0.id(), Some(agent.pid()));
        let _ = agent.stop();
        let (tls_runs, tls_ns, flow_ns) =
            with.programs.iter().fold((0, 0, 0), |(runs, tls, flow), (name, (ns, n))| match name {
                n_ if n_.starts_with("tls_") => (runs + n, tls + ns, flow),
                n_ if n_.starts_with("flow_") => (runs, tls, flow + ns),
                _ => (runs, tls, flow),
            });
        let per = |v: u64| v as f64 / with.requests as f64;
        println!(
            "| {label} | {:.1} → {:.1} | {:+.1} | {:.1} → {:.1} | {:+.1} | {:.1} | {:.2} | {:.2} | {:.0} | {:.0} |",
            without.server_us,
            with.server_us,
            with.server_us - without.server_us,
            without.client_us,
            with.client_us,
            with.client_us - without.client_us,
            with.agent_us,
            with.agent_faults,
            per(tls_runs),
            per(tls_ns),
            per(flow_ns),
        );
        println!("\n  {label} programs: {}\n", program_line(&with.programs, with.requests));
    }
    drop(stats);
}

struct Run {
    requests: u64,
    server_us: f64,
    client_us: f64,
    agent_us: f64,
    agent_faults: f64,
    /// (ns, runs) per program over the run.
    programs: BTreeMap<String, (u64, u64)>,
}

fn measure(ns: &str, url: &str, seconds: u64, server: u32, agent: Option<u32>) -> Run {
    if agent.is_some() {
        // Unmeasured: the agent grows to its working size (heap, tables, connections),
        // which a steady state does not pay again.
        let _ = wrk(ns, url, env_or("BENCH_WARM_UP_SECONDS", WARM_UP_SECONDS), 16, 0);
    }
    let ticks = |pid: Option<u32>| pid.map_or(0, cpu_ticks);
    let faults = |pid: Option<u32>| pid.map_or(0, minor_faults);
    let (server0, agent0, client0, before) = (cpu_ticks(server), ticks(agent), children_ticks(), program_stats());
    let faults0 = faults(agent);
    // wrk is this process's only child to exit meanwhile: its CPU time is the growth of
    // the children's total.
    let run = wrk(ns, url, seconds, 16, 0);
    let (server1, agent1, client1, after) = (cpu_ticks(server), ticks(agent), children_ticks(), program_stats());
    let faults1 = faults(agent);
    let per_request = |t: u64| t as f64 * TICK_US / run.requests as f64;
    let programs = after
        .into_iter()
        .map(|(name, (ns, n))| {
            let (ns0, n0) = before.get(&name).copied().unwrap_or((0, 0));
            (name, (ns - ns0, n - n0))
        })
        .filter(|(_, (_, n))| *n > 0)
        .collect();
    Run {
        requests: run.requests,
        server_us: per_request(server1 - server0),
        client_us: per_request(client1 - client0),
        agent_us: per_request(agent1 - agent0),
        agent_faults: (faults1 - faults0) as f64 / run.requests as f64,
        programs,
    }
}

/// CPU ticks of this process's waited-for children (cutime + cstime).
fn children_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<u64> =
        stat.rsplit(')').next().unwrap_or_default().split_whitespace().filter_map(|f| f.parse().ok()).collect();
    // After the state letter (not a number): utime is field 11, cutime 13, cstime 14.
    fields.get(12).copied().unwrap_or(0) + fields.get(13).copied().unwrap_or(0)
}

fn program_line(programs: &BTreeMap<String, (u64, u64)>, requests: u64) -> String {
    let parts: Vec<String> = programs
        .iter()
        .filter(|(name, _)| name.starts_with("tls_") || name.starts_with("flow_"))
        .map(|(name, (ns, n))| {
            format!("{name} {:.2}/req × {:.0} ns", *n as f64 / requests as f64, *ns as f64 / (*n).max(1) as f64)
        })
        .collect();
    parts.join(", ")
}

fn pin(pid: u32, cpu: u32) {
    let ok = Command::new("taskset").args(["-a", "-p", "-c", &cpu.to_string(), &pid.to_string()]).output();
    assert!(ok.is_ok_and(|o| o.status.success()), "taskset -p {pid} (util-linux)");
}

/// µs per call of a uprobe whose displaced instruction the kernel single-steps, and
/// of one on an instruction it emulates (a conditional jump), on a function that does
/// nothing (tracefs probes with no program: what the trap itself costs here).
fn bare_trap_cost() -> (f64, f64) {
    let dir = std::env::temp_dir().join("flowtel-bench-trap");
    std::fs::create_dir_all(&dir).expect("trap bench directory");
    let (source, binary) = (dir.join("empty.c"), dir.join("empty"));
    // +0: test (single-stepped), +2: js (emulated), +4: mov, +7: ret.
    std::fs::write(
        &source,
        "#include <stdlib.h>\n\
         __asm__(\".globl flowtel_empty\\n.type flowtel_empty,@function\\nflowtel_empty:\\n\
         test %edi,%edi\\njs 1f\\n1:\\nmov %rdi,%rax\\nret\\n.size flowtel_empty, .-flowtel_empty\\n\");\n\
         long flowtel_empty(long);\n\
         int main(int argc, char **argv) { long n = atol(argv[1]), s = 0; for (long i = 0; i < n; i++) s += flowtel_empty(i); return s == 1; }\n",
    )
    .expect("empty.c");
    let built = Command::new("gcc").args(["-O2", "-o"]).arg(&binary).arg(&source).status();
    assert!(built.is_ok_and(|s| s.success()), "gcc");
    let offset = file_offset(&binary, "flowtel_empty");
    let calls = 50_000u32;
    let time = |label: &str| {
        let start = Instant::now();
        let ok = Command::new("taskset").arg("-c").arg("1").arg(&binary).arg(calls.to_string()).status();
        assert!(ok.is_ok_and(|s| s.success()), "{label}: the empty loop");
        start.elapsed().as_secs_f64() * 1e6 / f64::from(calls)
    };
    let bare = time("no probe");
    let tracing = Path::new("/sys/kernel/tracing");
    let with_probe_at = |at: u64| {
        let events = tracing.join("uprobe_events");
        let enable = tracing.join("events/flowtel_bench/enable");
        std::fs::write(&events, format!("p:flowtel_bench/at {}:{:#x}\n", binary.display(), offset + at))
            .expect("uprobe_events (tracefs)");
        std::fs::write(&enable, "1").expect("enable the probe");
        let cost = time("uprobe") - bare;
        let _ = std::fs::write(&enable, "0");
        let _ = std::fs::write(&events, "");
        cost
    };
    (with_probe_at(0), with_probe_at(2))
}

/// The file offset of `symbol` (a uprobe's address): its address, moved from its
/// executable segment's addresses to that segment's place in the file.
fn file_offset(binary: &Path, symbol: &str) -> u64 {
    let out = |program: &str, args: &[&str]| {
        let o = Command::new(program).args(args).arg(binary).output().expect(program);
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).expect("hex");
    let address = out("nm", &[])
        .lines()
        .find(|l| l.ends_with(&format!(" {symbol}")))
        .map(|l| hex(l.split_whitespace().next().unwrap_or_default()))
        .expect("the symbol");
    for line in out("readelf", &["-lW"]).lines().filter(|l| l.trim_start().starts_with("LOAD")) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (offset, vaddr, size) = (hex(fields[1]), hex(fields[2]), hex(fields[5]));
        if (vaddr..vaddr + size).contains(&address) {
            return address - vaddr + offset;
        }
    }
    panic!("{symbol} in no LOAD segment of {}", binary.display());
}
