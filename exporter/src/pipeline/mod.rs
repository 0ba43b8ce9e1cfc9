//! The agent's one loop: each export interval, drain the kernel's flow tables, turn
//! them into flow records, name their peers from DNS answers, record them under their
//! workloads, and export. Between ticks it takes DNS lookups from the DNS stage as they
//! finish. SIGTERM or SIGINT runs one last interval (flows and lookups up to the signal
//! are delivered), then returns so that dropping the probes detaches everything.
mod dns;

use std::time::{Duration, Instant};

use tokio::signal::unix::{SignalKind, signal};

use self::dns::{DnsBatch, DnsStage};
use crate::{
    aggregation::{self, Outcome, TrackerSettings},
    config::{Config, OtelSettings},
    enrichment::{DomainNames, GeoIp, HostInfo, Peers},
    events::{DnsPacketReader, FlowReader, KernelFlow, ProcessNames},
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
        dns_ports: config.dns.ports.clone(),
        dns_ring_bytes: config.dns.ring_buffer_kib * 1024,
    }
}

/// What the loop enriches and records into, between two exports.
struct Recorder {
    agent: AgentTelemetry,
    workloads: Workloads,
    peers: Peers,
    processes: ProcessNames,
    dns_evicted_reported: u64,
    dns_pending: usize,
}

impl Recorder {
    fn dns(&mut self, batch: &DnsBatch) {
        let now = Instant::now();
        for lookup in &batch.lookups {
            if let Outcome::Answered { .. } = lookup.outcome {
                self.peers.domains.learn(&lookup.question_name, &lookup.addresses, now);
            }
            let kernel = (lookup.pid != 0 && !self.workloads.knows(lookup.pid))
                .then(|| self.processes.get(lookup.pid))
                .flatten();
            self.workloads.record_dns(lookup, kernel.as_ref());
        }
        let losses = batch.losses;
        for (cause, n) in [
            ("parse", losses.tracker.parse),
            ("pending_full", losses.tracker.pending_full),
            ("stream_gap", losses.tracker.stream_gap),
            ("decode", losses.undecodable),
            ("channel_full", losses.channel_full),
        ] {
            if n > 0 {
                self.agent.record_user_space_loss("dnsflow", cause, n);
            }
        }
        self.dns_pending = batch.pending;
    }

    /// One interval's flows, with the agent's own state at its end.
    fn flows(&mut self, flows: &[KernelFlow], lost: [u64; LOST_CAUSES]) {
        // Before this interval's flows: they are mostly the new program's.
        for pid in self.processes.take_execed() {
            if self.workloads.knows(pid) {
                self.workloads.exec(pid, self.processes.get(pid).as_ref());
            }
        }
        // One map lookup per distinct process, not per flow.
        let pids: std::collections::BTreeSet<u32> = flows.iter().map(|f| f.key.pid).collect();
        let names = self.processes.get_all(pids);
        let records: Vec<_> = flows.iter().filter_map(aggregation::from_kernel).collect();
        let undecodable = (flows.len() - records.len()) as u64;
        if undecodable > 0 {
            self.agent.record_user_space_loss("netflow", "decode", undecodable);
        }
        self.agent.record_lost(&lost);
        self.agent.record_flows_active(flows.len());
        self.workloads.record(&records, &names, &mut self.peers);
        let domains = &mut self.peers.domains;
        domains.purge_expired(Instant::now());
        let evicted = domains.evicted();
        self.agent.record_dns_state(domains.len(), evicted - self.dns_evicted_reported, self.dns_pending);
        self.dns_evicted_reported = evicted;
    }
}

const LOST_CAUSES: usize = flowtel_probes_abi::lost::COUNT as usize;

pub async fn run(config: Config, otel: OtelSettings) -> anyhow::Result<()> {
    use anyhow::Context as _;

    let mut sink = MetricsSink::new(otel.sink, otel.temporality)?;
    let mut probes: Probes = probes::load_and_attach(&probe_settings(&config)).context("loading the probes")?;
    for line in status::render_reports(&probes.reports).lines() {
        tracing::info!("probe {}", line.trim());
    }
    let mut reader = FlowReader::new(&mut probes.ebpf)?;
    let mut dns_stage = if config.dns.ports.is_empty() {
        None
    } else {
        let settings =
            TrackerSettings { timeout_ns: config.dns.timeout_ms * 1_000_000, max_pending: config.dns.max_pending };
        Some(DnsStage::spawn(DnsPacketReader::new(&mut probes.ebpf)?, settings))
    };

    let settings = TelemetrySettings {
        temporality: otel.temporality,
        cardinality_limit: config.telemetry.cardinality_limit,
        host: HostInfo::detect(config.host.name.as_deref()),
        idle_intervals: config.telemetry.idle_intervals,
        dns_question_name: config.dns.question_name,
    };
    let agent = AgentTelemetry::new(&settings);
    agent.record_probes(&probes.reports);
    let mut recorder = Recorder {
        agent,
        workloads: Workloads::new(settings),
        peers: Peers {
            domains: DomainNames::new(config.dns.names_capacity, Duration::from_secs(config.dns.name_ttl_floor_s)),
            geo: config.geo.database.as_deref().map(GeoIp::open).transpose()?,
        },
        processes: ProcessNames::new(&mut probes.ebpf)?,
        dns_evicted_reported: 0,
        dns_pending: 0,
    };

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
            Some(batch) = next_dns_batch(dns_stage.as_mut()) => {
                recorder.dns(&batch);
                continue;
            }
        };
        for batch in dns_stage.as_mut().map(DnsStage::ready_batches).unwrap_or_default() {
            recorder.dns(&batch);
        }
        let (r, flows, lost) = tokio::task::spawn_blocking(move || {
            let flows = reader.drain();
            let lost = reader.lost_since_last();
            (reader, flows, lost)
        })
        .await?;
        reader = r;
        let flows = flows?;
        recorder.flows(&flows, lost?);
        let mut batch = recorder.workloads.collect();
        batch.extend(recorder.agent.collect());
        let outcome = sink.export(&batch).await;
        recorder.agent.record_export_failures(outcome.failed);
        if outcome.failed == 0 {
            recorder.workloads.retire_delivered();
        } else {
            let dropped = recorder.workloads.bound_backlog();
            if dropped > 0 {
                recorder.agent.record_user_space_loss("export", "backlog_full", dropped);
            }
        }
        tracing::debug!(flows = flows.len(), workloads = recorder.workloads.len(), ?outcome, "interval exported");
        if last {
            break;
        }
    }
    tracing::info!("shutting down: last interval exported, detaching probes");
    sink.shutdown();
    drop(dns_stage);
    drop(probes);
    tokio::time::sleep(Duration::from_millis(1)).await;
    Ok(())
}

/// The next batch of DNS lookups, or never when DNS observation is off.
async fn next_dns_batch(stage: Option<&mut DnsStage>) -> Option<DnsBatch> {
    match stage {
        Some(stage) => stage.batches.recv().await,
        None => std::future::pending().await,
    }
}
