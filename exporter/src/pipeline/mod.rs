//! The agent's one loop: each export interval, drain the kernel's flow tables, turn
//! them into flow records, name their peers from DNS answers, record them under their
//! workloads, and hand them to the export courier (on the export thread: the loop never
//! waits for the network). Between ticks it takes DNS lookups and HTTP exchanges from
//! their stages (on the stage thread) as they finish, and the couriers' outcomes.
//! SIGTERM or SIGINT runs one last interval (flows, and what the stages' rings hold, up
//! to the signal are delivered), then returns so that dropping the probes detaches
//! everything.
mod courier;
mod dns;
mod http;
mod lanes;
mod recorder;
mod stage;

use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};

pub use self::lanes::Lanes;
use self::{
    courier::Courier,
    recorder::Recorder,
    stage::{Batch, Pairing, Stage},
};
use crate::{
    aggregation::{DnsTracker, HttpSettings, HttpTracker, TrackerSettings},
    config::{Config, OtelSettings},
    enrichment::HostInfo,
    events::{DnsPacketReader, FlowReader, HttpChunkReader},
    kubernetes,
    probes::{self, ProbeSettings, Probes},
    status,
    telemetry::{ExportOutcome, MetricsSink, SpanSink, TelemetrySettings},
};

pub fn probe_settings(config: &Config) -> ProbeSettings {
    ProbeSettings {
        flow_table_entries: config.probes.flow_table_entries,
        socket_table_entries: config.probes.socket_table_entries,
        rtt_sample_gap_ns: config.probes.rtt_sample_interval_us * 1_000,
        attach_mode: config.probes.attach_mode,
        dns_ports: config.dns.ports.clone(),
        dns_ring_bytes: config.dns.ring_buffer_kib * 1024,
        http_capture_bytes: config.http.capture_bytes,
        tls: config.http.tls,
        tls_emulated_probes: config.http.tls_emulated_probes,
        http_ring_bytes: config.http.ring_buffer_kib * 1024,
        verify_standby: false,
    }
}

pub async fn run(config: Config, otel: OtelSettings, lanes: &Lanes) -> anyhow::Result<()> {
    use anyhow::Context as _;

    let (sink, span_sink) = {
        // Made on the export thread: the exporters' connections start their tasks there.
        let _export = lanes.export().enter();
        (
            MetricsSink::new(otel.sink, otel.temporality)?,
            SpanSink::new(otel.traces_sink, otel.traces_target.as_ref(), otel.span_export_timeout)?,
        )
    };
    let mut probes: Probes = probes::load_and_attach(&probe_settings(&config)).context("loading the probes")?;
    log_reports(&probes.reports);
    let mut reader = FlowReader::new(&mut probes.ebpf)?;
    let (mut dns_stage, mut http_stage) = {
        // The ring buffers are watched by the stage thread's reactor, so made there.
        let _stages = lanes.stages().enter();
        spawn_stages(&config, &mut probes)?
    };

    let kubernetes = kubernetes::start(config.kubernetes.mode, config.kubernetes.max_objects).await?;
    let mut host = HostInfo::detect(config.host.name.as_deref());
    if kubernetes.is_some() && host.k8s_node_name.is_none() {
        // Without the downward API's K8S_NODE_NAME, a node is named as its host.
        host.k8s_node_name = Some(host.name.clone());
    }
    let mut recorder = Recorder::new(&config, telemetry_settings(&config, &otel, host), &mut probes, kubernetes)?;
    let mut recently_execed: Vec<u32> = Vec::new();

    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut ticker = tokio::time::interval(otel.export_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    // Spans leave every second (or sooner when many wait), not each metric interval:
    // holding a minute of spans would cost memory for nothing.
    let mut span_ticker = tokio::time::interval(SPAN_FLUSH);
    span_ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tracing::info!(interval = ?otel.export_interval, sink = ?otel.sink, "flowtel is observing");
    let mut metrics_courier = Courier::spawn(sink, lanes.export());
    let mut span_courier = Courier::spawn(span_sink, lanes.export());

    loop {
        let last = tokio::select! {
            _ = ticker.tick() => false,
            _ = terminate.recv() => true,
            _ = interrupt.recv() => true,
            Some(batch) = next_batch(dns_stage.as_mut()) => {
                recorder.dns(&batch);
                continue;
            }
            Some(batch) = next_batch(http_stage.as_mut()) => {
                recorder.http(&batch);
                if recorder.spans_held >= SPANS_PER_FLUSH {
                    send_spans(&mut recorder, &mut span_courier);
                }
                continue;
            }
            _ = span_ticker.tick() => {
                send_spans(&mut recorder, &mut span_courier);
                continue;
            }
            outcome = metrics_courier.outcome() => {
                settle_metrics(&mut recorder, outcome);
                continue;
            }
            outcome = span_courier.outcome() => {
                recorder.span_outcome(outcome);
                continue;
            }
        };
        for batch in stage_batches(dns_stage.as_mut(), last).await {
            recorder.dns(&batch);
        }
        for batch in stage_batches(http_stage.as_mut(), last).await {
            recorder.http(&batch);
        }
        let flows;
        (reader, flows, recently_execed) = record_flows(reader, &mut recorder, &mut probes, &recently_execed).await?;
        if last {
            settle_before_the_last(&mut recorder, &mut metrics_courier, &mut span_courier).await;
        }
        send_spans(&mut recorder, &mut span_courier);
        if metrics_courier.is_idle() {
            send_metrics(&mut recorder, &mut metrics_courier);
            tracing::debug!(flows, workloads = recorder.workloads.len(), "interval handed to export");
        } else {
            // The SDK keeps the totals: the next interval's export carries them.
            tracing::debug!("the last interval's export is still on its way: this one goes with the next");
        }
        if last {
            if let Some(outcome) = metrics_courier.settle(LAST_EXPORT_GRACE).await {
                settle_metrics(&mut recorder, outcome);
            }
            break;
        }
    }
    tracing::info!("shutting down: last interval exported, detaching probes");
    metrics_courier.close(LAST_EXPORT_GRACE).await;
    span_courier.close(LAST_EXPORT_GRACE).await;
    drop(dns_stage);
    drop(http_stage);
    drop(probes);
    tokio::time::sleep(Duration::from_millis(1)).await;
    Ok(())
}

fn telemetry_settings(config: &Config, otel: &OtelSettings, host: HostInfo) -> TelemetrySettings {
    TelemetrySettings {
        temporality: otel.temporality,
        cardinality_limit: config.telemetry.cardinality_limit,
        host,
        idle_intervals: config.telemetry.idle_intervals,
        dns_question_name: config.dns.question_name,
        process_command_line: config.telemetry.process_command_line,
        max_workloads: config.telemetry.max_workloads,
        span_sampler: otel.span_sampler,
    }
}

type DnsStage = Stage<DnsTracker>;
type HttpStage = Stage<HttpTracker>;

/// The DNS and HTTP stages, for what the configuration turned on and the probes attached.
fn spawn_stages(config: &Config, probes: &mut Probes) -> anyhow::Result<(Option<DnsStage>, Option<HttpStage>)> {
    let dns = if config.dns.ports.is_empty() {
        None
    } else {
        let settings =
            TrackerSettings { timeout_ns: config.dns.timeout_ms * 1_000_000, max_pending: config.dns.max_pending };
        Some(Stage::spawn(DnsPacketReader::new(&mut probes.ebpf)?, DnsTracker::new(settings)))
    };
    let http_attached = probes
        .reports
        .iter()
        .any(|r| (r.program == "http" || r.program == "tls") && r.state == probes::ProbeState::Attached);
    let http = if http_attached {
        let settings = HttpSettings {
            timeout_ns: config.http.timeout_ms * 1_000_000,
            max_connections: config.http.max_connections,
            skip_pid: std::process::id(),
        };
        Some(Stage::spawn(HttpChunkReader::new(&mut probes.ebpf)?, HttpTracker::new(settings)))
    } else {
        None
    };
    Ok((dns, http))
}

/// What attached, fell back and failed, in the start-up log.
fn log_reports(reports: &[probes::ProbeReport]) {
    let table = status::render_reports(reports);
    let (features, programs) = table.split_once("probes:\n").unwrap_or((&table, ""));
    for line in features.lines().skip(1).map(str::trim) {
        // A feature the kernel refused is worth a warning: the agent runs without it.
        // (A program of a variant not chosen failing is only information.)
        if line.contains(" failed: ") {
            tracing::warn!("feature {line}");
        } else {
            tracing::info!("feature {line}");
        }
    }
    for line in programs.lines().map(str::trim) {
        tracing::info!("probe {line}");
    }
}

/// Drains the kernel's flow tables and records them; returns the reader, how many flows
/// and the processes that exec'd.
async fn record_flows(
    mut reader: FlowReader,
    recorder: &mut Recorder,
    probes: &mut Probes,
    recently_execed: &[u32],
) -> anyhow::Result<(FlowReader, usize, Vec<u32>)> {
    let exited = recorder.exited_processes();
    let (reader, flows, lost) = tokio::task::spawn_blocking(move || {
        let flows = reader.drain();
        let lost = reader.lost_since_last();
        (reader, flows, lost)
    })
    .await?;
    let flows = flows?;
    let lost = lost?;
    // /proc reads (new workloads' identities) and uprobe attaches block the loop's own
    // thread only: the stages and export have theirs (`lanes.rs`).
    let execed = tokio::task::block_in_place(|| {
        let execed = recorder.flows(&flows, lost, &exited);
        if let Some(tls) = probes.tls.as_mut() {
            // A process that just exec'd may not have mapped its libraries yet: look
            // at it now and again next interval.
            for &pid in recently_execed.iter().chain(&execed) {
                tls.scan_process(&mut probes.ebpf, pid);
            }
            recorder.agent.record_tls_libraries(tls.attached.len());
        }
        execed
    });
    Ok((reader, flows.len(), execed))
}

/// One interval's metrics, every workload's and the agent's own, to the courier.
fn send_metrics(recorder: &mut Recorder, courier: &mut Courier<MetricsSink>) {
    let mut batch = recorder.workloads.collect();
    batch.extend(recorder.agent.collect());
    // Not taken, nothing is lost: the SDK keeps the totals for the next interval.
    let _ = courier.send(batch);
}

/// What an interval's export came to: delivered, the exited processes' workloads retire;
/// not, they stay (bounded) for the totals to go out when the collector is back.
fn settle_metrics(recorder: &mut Recorder, outcome: ExportOutcome) {
    tracing::debug!(?outcome, "interval exported");
    recorder.agent.record_export_failures(outcome.failed);
    if outcome.failed == 0 {
        let retired = recorder.workloads.retire_delivered();
        tracing::debug!(retired, "workloads retired");
        // Their instruments' memory, and the interval's freed buffers, back to the kernel.
        crate::allocator::give_back(retired > 0);
    } else {
        let dropped = recorder.workloads.bound_backlog();
        if dropped > 0 {
            recorder.agent.record_user_space_loss("export", "backlog_full", dropped);
        }
    }
}

/// The last interval goes out whatever is on its way: waits for that first, and for the
/// last spans, so that their losses are in the last metrics.
async fn settle_before_the_last(
    recorder: &mut Recorder,
    metrics_courier: &mut Courier<MetricsSink>,
    span_courier: &mut Courier<SpanSink>,
) {
    if let Some(outcome) = span_courier.settle(LAST_EXPORT_GRACE).await {
        recorder.span_outcome(outcome);
    }
    send_spans(recorder, span_courier);
    if let Some(outcome) = span_courier.settle(LAST_EXPORT_GRACE).await {
        recorder.span_outcome(outcome);
    }
    if let Some(outcome) = metrics_courier.settle(LAST_EXPORT_GRACE).await {
        settle_metrics(recorder, outcome);
    }
}

/// At shutdown, how long an export on its way and the last one may take each.
const LAST_EXPORT_GRACE: Duration = Duration::from_secs(12);
/// How often held spans are exported, and how many make an export happen sooner.
const SPAN_FLUSH: Duration = Duration::from_secs(1);
const SPANS_PER_FLUSH: usize = 8_192;

/// Held spans to the courier, unless a flush is still on its way (they stay held,
/// bounded by `http.max_spans`).
fn send_spans(recorder: &mut Recorder, courier: &mut Courier<SpanSink>) {
    if recorder.spans_held == 0 || !courier.is_idle() {
        return;
    }
    if let Err(spans) = courier.send(recorder.workloads.take_spans(&mut recorder.spare_spans)) {
        let lost = spans.iter().map(|(_, spans)| spans.len() as u64).sum();
        recorder.agent.record_span_export(1, lost);
    }
    recorder.spans_held = 0;
}

/// What a stage has finished by now; at the last interval, all it holds (it ends).
async fn stage_batches<P: Pairing>(stage: Option<&mut Stage<P>>, last: bool) -> Vec<Batch<P::Item, P::Losses>> {
    match stage {
        Some(stage) if last => stage.finish(STAGE_FINISH_GRACE).await,
        Some(stage) => stage.ready_batches(),
        None => Vec::new(),
    }
}

/// At shutdown, how long a stage may take to hand over what its ring holds.
const STAGE_FINISH_GRACE: Duration = Duration::from_secs(2);

/// The next batch from a stage, or never when that observation is off.
async fn next_batch<P: Pairing>(stage: Option<&mut Stage<P>>) -> Option<Batch<P::Item, P::Losses>> {
    match stage {
        Some(stage) => stage.batches.recv().await,
        None => std::future::pending().await,
    }
}
