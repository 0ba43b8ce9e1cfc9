//! The agent's one loop: each export interval, drain the kernel's flow tables, turn
//! them into flow records, record them under their workloads, and export. SIGTERM or
//! SIGINT runs one last interval (flows up to the signal are delivered), then returns
//! so that dropping the probes detaches everything.
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};

use crate::{
    aggregation,
    config::{Config, OtelSettings},
    enrichment::HostInfo,
    events::FlowReader,
    probes::{self, ProbeSettings, Probes},
    status,
    telemetry::{AgentTelemetry, MetricsSink, TelemetrySettings, Workloads},
};

pub fn probe_settings(config: &Config) -> ProbeSettings {
    ProbeSettings {
        flow_table_entries: config.probes.flow_table_entries,
        socket_table_entries: config.probes.socket_table_entries,
        rtt_sample_gap_ns: config.probes.rtt_sample_interval_us * 1_000,
        attach_mode: config.probes.attach_mode,
    }
}

pub async fn run(config: Config, otel: OtelSettings) -> anyhow::Result<()> {
    use anyhow::Context as _;

    let mut sink = MetricsSink::new(otel.sink, otel.temporality)?;
    let mut probes: Probes = probes::load_and_attach(&probe_settings(&config)).context("loading the probes")?;
    for line in status::render_reports(&probes.reports).lines() {
        tracing::info!("probe {}", line.trim());
    }
    let mut reader = FlowReader::new(&mut probes.ebpf)?;

    let settings = TelemetrySettings {
        temporality: otel.temporality,
        cardinality_limit: config.telemetry.cardinality_limit,
        host: HostInfo::detect(config.host.name.as_deref()),
        idle_intervals: config.telemetry.idle_intervals,
    };
    let agent = AgentTelemetry::new(&settings);
    agent.record_probes(&probes.reports);
    let mut workloads = Workloads::new(settings);

    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut ticker = tokio::time::interval(otel.export_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    tracing::info!(interval = ?otel.export_interval, sink = ?otel.sink, "flowtel is observing");

    loop {
        let last = tokio::select! {
            _ = ticker.tick() => false,
            _ = terminate.recv() => true,
            _ = interrupt.recv() => true,
        };
        let (r, flows, lost, names) = tokio::task::spawn_blocking(move || {
            let flows = reader.drain();
            let lost = reader.lost_since_last();
            // One map lookup per distinct process, not per flow.
            let pids: std::collections::BTreeSet<u32> = flows.iter().flatten().map(|f| f.key.pid).collect();
            let names = reader.processes_seen(pids);
            (reader, flows, lost, names)
        })
        .await?;
        reader = r;
        let flows = flows?;
        let records: Vec<_> = flows.iter().filter_map(aggregation::from_kernel).collect();
        let undecodable = (flows.len() - records.len()) as u64;
        if undecodable > 0 {
            agent.record_user_space_loss("netflow", "decode", undecodable);
        }
        agent.record_lost(&lost?);
        agent.record_flows_active(flows.len());
        workloads.record(&records, &names);

        let mut batch = workloads.collect();
        batch.extend(agent.collect());
        let outcome = sink.export(&batch).await;
        agent.record_export_failures(outcome.failed);
        if outcome.failed == 0 {
            workloads.retire_delivered();
        } else {
            let dropped = workloads.bound_backlog();
            if dropped > 0 {
                agent.record_user_space_loss("export", "backlog_full", dropped);
            }
        }
        tracing::debug!(flows = flows.len(), workloads = workloads.len(), ?outcome, "interval exported");
        if last {
            break;
        }
    }
    tracing::info!("shutting down: last interval exported, detaching probes");
    sink.shutdown();
    drop(probes);
    tokio::time::sleep(Duration::from_millis(1)).await;
    Ok(())
}
