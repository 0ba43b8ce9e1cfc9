//! Bursts of short-lived processes that made flows, past the tables and backlogs that
//! hold them: what does not fit is counted. A binary of its own (cargo runs binaries
//! one after another), its tests one at a time: every agent on the host sees every
//! process, so a burst of thousands would load the other tests' agents, and the two
//! bursts each other's counts.
#![allow(clippy::float_cmp, reason = "metric totals are integers carried as f64, compared exactly on purpose")]
use std::{
    collections::BTreeSet,
    sync::{Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use flowtel_e2e::{
    agent::{Agent, with_grpc_receiver_and},
    free_port, privileged_or_skip,
    query::{matching, points, total},
    receiver::Receiver,
    traffic::eventually,
};

static ONE_BURST_AT_A_TIME: Mutex<()> = Mutex::new(());

fn alone() -> MutexGuard<'static, ()> {
    ONE_BURST_AT_A_TIME.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `n` processes, each a subshell (a fork, no exec) that sends one datagram, which makes
/// it a process the agent tracks, and exits.
fn burst(n: u32) {
    let status = std::process::Command::new("bash")
        .args(["-c", &format!("for i in $(seq {n}); do (printf x >/dev/udp/127.0.0.1/9); done")])
        .status()
        .expect("bash");
    assert!(status.success());
}

/// More exits of processes that made flows between two reads than the exit table holds
/// (4,096): those beyond it are counted (`exit_table_full`); their workloads retire
/// later, when /proc shows them gone.
#[test]
fn an_exit_burst_beyond_the_exit_table_is_counted() {
    const EXITS: u32 = 10_000;
    const TABLE: u32 = 4_096;
    if !privileged_or_skip("an_exit_burst_beyond_the_exit_table_is_counted") {
        return;
    }
    let _alone = alone();
    let (receiver, agent) = with_grpc_receiver_and(&[("OTEL_METRIC_EXPORT_INTERVAL", "30000")]);
    burst(EXITS);
    let cause = [("flowtel.probe", "process"), ("flowtel.loss.cause", "exit_table_full")];
    let lost = || total(&points(&receiver.received.snapshot(), "flowtel.agent.events.lost"), &[], &cause);
    let counted = eventually(std::time::Duration::from_secs(45), || lost() > 0.0);
    // A read may fall inside the burst (then two tables' worth went in). No upper bound:
    // pids are reused (`pid_max` is 32,768 here), and the kernel knows a pid that once
    // made a flow until its entry ages out, so other processes' exits count too.
    let floor = f64::from(EXITS - 2 * TABLE);
    assert!(
        counted && lost() >= floor,
        "exit_table_full = {} (want at least {floor})\nagent log:\n{}",
        lost(),
        agent.log()
    );
}

/// An outage while more processes exit than the backlog holds (4,096 exited workloads,
/// reachable only when `telemetry.max_workloads` is raised above it): the oldest are
/// dropped and counted (`backlog_full`), which arrives once the collector is back with
/// the workloads that were kept. Every process of the burst is one or the other. How
/// many are dropped depends on how many had gone idle before the collector came back,
/// which a loaded machine stretches (709 of at least 904 once in CI), so the test
/// counts both sides instead of assuming the split.
#[test]
fn exited_workloads_past_the_outage_backlog_are_counted() {
    const PROCESSES: u32 = 5_000;
    if !privileged_or_skip("exited_workloads_past_the_outage_backlog_are_counted") {
        return;
    }
    let _alone = alone();
    let port = free_port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let agent = Agent::start(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
        ("FLOWTEL_TELEMETRY_MAX_WORKLOADS", "100000"),
        // DNS and HTTP off: only the processes' own flows make workloads.
        ("FLOWTEL_DNS_PORTS", ""),
        ("FLOWTEL_HTTP_CAPTURE_BYTES", "0"),
        ("FLOWTEL_HTTP_TLS", "false"),
    ]);
    // Nothing listens at the collector's port meanwhile.
    burst(PROCESSES);
    // Idle for `telemetry.idle_intervals` (2) past their last flows, failed exports then
    // trim the backlog.
    std::thread::sleep(Duration::from_secs(5));
    let receiver = Receiver::grpc(&format!("127.0.0.1:{port}"));
    let cause = [("flowtel.probe", "export"), ("flowtel.loss.cause", "backlog_full")];
    let dropped = || total(&points(&receiver.received.snapshot(), "flowtel.agent.events.lost"), &[], &cause);
    // The burst's processes delivered: each subshell's datagram to the discard port.
    let delivered = || {
        let sent = [("network.transport", "udp"), ("network.peer.port", "9")];
        let io = points(&receiver.received.snapshot(), "flowtel.network.io");
        let pids: BTreeSet<String> =
            matching(&io, &[], &sent).iter().filter_map(|p| p.resource.get("process.pid").cloned()).collect();
        pids.len() as f64
    };
    let accounted = eventually(Duration::from_mins(1), || dropped() + delivered() >= f64::from(PROCESSES));
    assert!(
        accounted && dropped() > 0.0,
        "backlog_full = {}, delivered = {} (want at least one dropped, {PROCESSES} in all)\nagent log:\n{}",
        dropped(),
        delivered(),
        agent.log()
    );
}
