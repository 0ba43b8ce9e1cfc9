//! What the export loop enriches and records into between two exports: flows, DNS
//! lookups and HTTP exchanges go under their workloads, with peers named and the agent's
//! own state and losses alongside.
use std::{
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use super::stage::Batch;
use crate::{
    aggregation::{self, DnsLookup, HttpExchange, HttpLosses, Outcome, Routes, TrackerLosses},
    config::Config,
    enrichment::{DomainNames, GeoIp, Peers},
    events::{KernelFlow, ProcessNames, monotonic_now_ns},
    kubernetes::Kubernetes,
    probes::Probes,
    telemetry::{AgentTelemetry, SpanBuilder, SpanBytes, SpanOutcome, TelemetrySettings, Workloads},
};

const LOST_CAUSES: usize = flowtel_probes_abi::lost::COUNT as usize;

/// Room in span buffers kept for reuse, at most: a few flushes' worth at 20,000 spans a
/// second.
const SPARE_SPAN_BYTES: usize = 16 << 20;

/// What the loop enriches and records into, between two exports.
pub struct Recorder {
    pub agent: AgentTelemetry,
    pub workloads: Workloads,
    peers: Peers,
    processes: ProcessNames,
    dns_evicted_reported: u64,
    dns_pending: usize,
    routes: Routes,
    /// `None` when spans are off.
    spans: Option<SpanBuilder>,
    /// Spans held for the next export, and the most allowed.
    pub spans_held: usize,
    max_spans: usize,
    /// Span buffers flushes emptied, to be written into again (`span_outcome`).
    pub spare_spans: Vec<SpanBytes>,
    http_connections: usize,
    kubernetes: Option<Kubernetes>,
    k8s_errors_reported: [u64; 4],
    k8s_refused_reported: u64,
}

impl Recorder {
    pub fn new(
        config: &Config,
        settings: TelemetrySettings,
        probes: &mut Probes,
        kubernetes: Option<Kubernetes>,
    ) -> anyhow::Result<Self> {
        let agent = AgentTelemetry::new(&settings);
        agent.record_probes(&probes.reports);
        let sampler = settings.span_sampler;
        Ok(Self {
            agent,
            workloads: Workloads::new(settings),
            peers: Peers {
                domains: DomainNames::new(config.dns.names_capacity, Duration::from_secs(config.dns.name_ttl_floor_s)),
                geo: config.geo.database.as_deref().map(GeoIp::open).transpose()?,
                cluster: Arc::default(),
            },
            processes: ProcessNames::new(&mut probes.ebpf)?,
            dns_evicted_reported: 0,
            dns_pending: 0,
            routes: Routes::new(&config.http.routes, config.http.route_heuristic),
            spans: config.http.spans.then(|| SpanBuilder::new(config.http.query_string, sampler)),
            spans_held: 0,
            max_spans: config.http.max_spans,
            spare_spans: Vec::new(),
            http_connections: 0,
            kubernetes,
            k8s_errors_reported: [0; 4],
            k8s_refused_reported: 0,
        })
    }

    pub fn http(&mut self, batch: &Batch<HttpExchange, HttpLosses>) {
        let boot_wall_ns = wall_clock_ns().saturating_sub(monotonic_now_ns());
        let mut spans_dropped = 0;
        for exchange in &batch.items {
            let route = self.routes.route(&exchange.request.path);
            let kernel = (exchange.pid != 0 && !self.workloads.knows(exchange.pid))
                .then(|| self.processes.get(exchange.pid))
                .flatten();
            let spans = match &mut self.spans {
                Some(_) if self.spans_held >= self.max_spans => {
                    spans_dropped += 1;
                    None
                }
                Some(builder) => Some((builder, boot_wall_ns)),
                None => None,
            };
            let written = self.workloads.record_http(exchange, route.as_deref(), kernel.as_ref(), spans);
            self.spans_held += usize::from(written);
        }
        let losses = batch.losses;
        for (cause, n) in [
            ("parse", losses.pairing.parse),
            ("pending_full", losses.pairing.pending_full),
            ("unpaired", losses.pairing.unpaired),
            ("at_exit", losses.pairing.at_exit),
            ("decode", losses.undecodable),
            ("channel_full", losses.channel_full),
            ("spans_full", spans_dropped),
        ] {
            if n > 0 {
                self.agent.record_user_space_loss("httpflow", cause, n);
            }
        }
        self.http_connections = batch.held;
    }

    /// What a span flush came to: its losses counted, its emptied buffers kept for
    /// reuse up to `SPARE_SPAN_BYTES` of room in all (a flush after a long hold can
    /// leave a buffer of many MiB: not kept).
    pub fn span_outcome(&mut self, outcome: SpanOutcome) {
        self.agent.record_span_export(outcome.failed, outcome.lost);
        let mut room: usize = self.spare_spans.iter().map(SpanBytes::capacity).sum();
        for spans in outcome.emptied {
            if room + spans.capacity() <= SPARE_SPAN_BYTES {
                room += spans.capacity();
                self.spare_spans.push(spans);
            }
        }
    }

    pub fn dns(&mut self, batch: &Batch<DnsLookup, TrackerLosses>) {
        let now = Instant::now();
        for lookup in &batch.items {
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
            ("parse", losses.pairing.parse),
            ("pending_full", losses.pairing.pending_full),
            ("stream_gap", losses.pairing.stream_gap),
            ("at_exit", losses.pairing.at_exit),
            ("decode", losses.undecodable),
            ("channel_full", losses.channel_full),
        ] {
            if n > 0 {
                self.agent.record_user_space_loss("dnsflow", cause, n);
            }
        }
        self.dns_pending = batch.held;
    }

    /// Processes (that made flows) which exited since the last call. Taken before the
    /// flow tables are drained, so the drain holds each one's last flows.
    pub fn exited_processes(&mut self) -> Vec<u32> {
        self.processes.take_exited()
    }

    /// One interval's flows, with the agent's own state at its end; `exited` processes
    /// are marked so (their pids may be reused). Returns the pids that exec'd since the last
    /// interval.
    pub fn flows(&mut self, flows: &[KernelFlow], lost: [u64; LOST_CAUSES], exited: &[u32]) -> Vec<u32> {
        // Before this interval's flows: they are mostly the new program's.
        let execed = self.processes.take_execed();
        for &pid in &execed {
            self.workloads.exec(pid, self.processes.get(pid).as_ref());
        }
        self.take_cluster_view();
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
        self.workloads.retire_reused(exited);
        self.workloads.record(&records, &names, &mut self.peers);
        self.workloads.mark_exited(exited);
        self.agent.record_workloads(self.workloads.counts(), self.workloads.take_folds());
        let domains = &mut self.peers.domains;
        domains.purge_expired(Instant::now());
        let evicted = domains.evicted();
        self.agent.record_dns_state(domains.len(), evicted - self.dns_evicted_reported, self.dns_pending);
        self.dns_evicted_reported = evicted;
        self.agent.record_http_connections(self.http_connections);
        execed
    }

    /// The watchers' latest view of the cluster, when it changed, for naming workloads
    /// and peers; and the watchers' health for the agent's own metrics.
    fn take_cluster_view(&mut self) {
        let Some(kubernetes) = &mut self.kubernetes else { return };
        let errors: [u64; 4] = std::array::from_fn(|i| kubernetes.errors[i].load(Ordering::Relaxed));
        let new_errors: [u64; 4] = std::array::from_fn(|i| errors[i] - self.k8s_errors_reported[i]);
        self.k8s_errors_reported = errors;
        let snapshot = Arc::clone(&kubernetes.snapshots.borrow_and_update());
        let counts = snapshot.counts;
        let objects = [counts.pods, counts.services, counts.endpointslices, counts.replicasets];
        self.agent.record_kubernetes(objects, new_errors);
        if counts.refused > self.k8s_refused_reported {
            self.agent.record_user_space_loss("kubernetes", "store_full", counts.refused - self.k8s_refused_reported);
            self.k8s_refused_reported = counts.refused;
        }
        if !Arc::ptr_eq(&snapshot.view, &self.peers.cluster) {
            self.peers.cluster = Arc::clone(&snapshot.view);
            self.workloads.set_cluster(Arc::clone(&snapshot.view));
        }
    }
}

/// Wall-clock nanoseconds since the Unix epoch.
fn wall_clock_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}
