//! One `MeterProvider` per workload Resource; the host's own flows under the host Resource.
use std::{collections::HashMap, sync::Arc};

use flowtel_semconv::{metric, scope};
use opentelemetry::{InstrumentationScope, metrics::MeterProvider as _};
use opentelemetry_sdk::{
    Resource,
    metrics::{
        Aggregation, Instrument, ManualReader, SdkMeterProvider, Stream, Temporality, data::ResourceMetrics,
        reader::MetricReader as _,
    },
};

use opentelemetry_sdk::trace::SpanData;

use super::{
    dns_instruments::DnsInstruments, flow_instruments::FlowInstruments, http_instruments::HttpInstruments,
    reader::SharedReader, resources::workload_resource,
};
use crate::{
    aggregation::{DnsLookup, FlowRecord, HttpExchange},
    enrichment::{CgroupPaths, HostInfo, Peers, ProcessCache},
    events::KernelProcess,
    kubernetes::{ClusterView, PodIdentity},
};

#[derive(Clone, Debug)]
pub struct TelemetrySettings {
    pub temporality: Temporality,
    pub cardinality_limit: usize,
    pub host: HostInfo,
    /// Intervals without data after which an exited process's workload is dropped.
    pub idle_intervals: u32,
    /// Whether DNS metrics carry `dns.question.name`.
    pub dns_question_name: bool,
    /// Whether workloads carry `process.command_line` (arguments may hold secrets).
    pub process_command_line: bool,
}

struct Workload {
    resource: Resource,
    provider: SdkMeterProvider,
    reader: SharedReader,
    flows: FlowInstruments,
    /// Made on first use: the SDK sizes each instrument's series map for the
    /// cardinality limit up front, and most processes never look up or serve anything.
    dns: Option<DnsInstruments>,
    http: Option<HttpInstruments>,
    /// Spans since the last export.
    spans: Vec<SpanData>,
    /// The pod uid of the process (from its cgroup) and the identity the Resource was
    /// built with: when the cluster view says otherwise, the workload is replaced.
    pod_uid: Option<String>,
    pod: Option<Arc<PodIdentity>>,
    /// The kernel reported the process's exit.
    exited: bool,
    idle_intervals: u32,
}

/// Workloads of exited processes kept, undelivered, through a collector outage.
const MAX_RETAINED_EXITED: usize = 4_096;

fn process_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

pub struct Workloads {
    settings: TelemetrySettings,
    by_pid: HashMap<u32, Workload>,
    /// Workloads of processes that exec'd: exported once more, then dropped.
    replaced: Vec<Workload>,
    processes: ProcessCache,
    cgroups: CgroupPaths,
    /// Empty unless the Kubernetes watchers run.
    cluster: Arc<ClusterView>,
}

pub fn netflow_scope() -> InstrumentationScope {
    InstrumentationScope::builder(scope::NETFLOW).with_version(env!("CARGO_PKG_VERSION")).build()
}

fn dns_scope() -> InstrumentationScope {
    InstrumentationScope::builder(scope::DNS).with_version(env!("CARGO_PKG_VERSION")).build()
}

fn http_scope() -> InstrumentationScope {
    InstrumentationScope::builder(scope::HTTP).with_version(env!("CARGO_PKG_VERSION")).build()
}

/// A provider with flowtel's views: every instrument capped at the configured
/// cardinality (the SDK adds its overflow series past it), RTT as a base-2 exponential
/// histogram.
pub fn provider(settings: &TelemetrySettings, resource: Resource) -> (SdkMeterProvider, SharedReader) {
    let reader = SharedReader(Arc::new(ManualReader::builder().with_temporality(settings.temporality).build()));
    let limit = settings.cardinality_limit;
    let provider = SdkMeterProvider::builder()
        .with_resource(resource)
        .with_reader(reader.clone())
        .with_view(move |instrument: &Instrument| {
            let stream = Stream::builder().with_cardinality_limit(limit);
            let stream = if instrument.name() == metric::TCP_RTT.name {
                stream.with_aggregation(Aggregation::Base2ExponentialHistogram {
                    max_size: 160,
                    max_scale: 20,
                    record_min_max: true,
                })
            } else {
                stream
            };
            stream.build().ok()
        })
        .build();
    (provider, reader)
}

impl Workloads {
    pub fn new(settings: TelemetrySettings) -> Self {
        Self {
            processes: ProcessCache::new(settings.process_command_line),
            settings,
            by_pid: HashMap::new(),
            replaced: Vec::new(),
            cgroups: CgroupPaths::new(),
            cluster: Arc::default(),
        }
    }

    /// Records one interval of flows, each under its process's workload (pid 0: the
    /// host), with what is known of the peer (DNS name, location).
    pub fn record(&mut self, flows: &[FlowRecord], kernel: &HashMap<u32, KernelProcess>, peers: &mut Peers) {
        let now = std::time::Instant::now();
        for flow in flows {
            let peer = flow.peer.map(|address| peers.describe(address, now)).unwrap_or_default();
            self.workload(flow.pid, kernel.get(&flow.pid)).flows.record(flow, &peer);
        }
    }

    /// Records one DNS lookup under the asking process's workload (pid 0: the host),
    /// with the server named from the cluster view.
    pub fn record_dns(&mut self, lookup: &DnsLookup, kernel: Option<&KernelProcess>) {
        let server = self.cluster.peer(lookup.server).cloned();
        let question_name = self.settings.dns_question_name;
        let workload = self.workload(lookup.pid, kernel);
        let meter = || workload.provider.meter_with_scope(dns_scope());
        workload
            .dns
            .get_or_insert_with(|| DnsInstruments::new(&meter(), question_name))
            .record(lookup, server.as_deref());
    }

    /// Records one HTTP exchange under the serving or sending process's workload, with
    /// its span when spans are on.
    pub fn record_http(
        &mut self,
        exchange: &HttpExchange,
        route: Option<&str>,
        kernel: Option<&KernelProcess>,
        span: Option<SpanData>,
    ) {
        let peer = exchange.peer.and_then(|peer| self.cluster.peer(peer.ip())).cloned();
        let workload = self.workload(exchange.pid, kernel);
        let meter = || workload.provider.meter_with_scope(http_scope());
        workload.http.get_or_insert_with(|| HttpInstruments::new(&meter())).record(exchange, route);
        workload.spans.extend(span.map(|mut span| {
            // The other end's identity on the span only: on the histograms it would
            // multiply series by client pods.
            if let Some(peer) = &peer {
                super::flow_instruments::push_peer_k8s(&mut span.attributes, peer);
            }
            span
        }));
    }

    /// Every workload's spans since the last call, with its Resource.
    pub fn take_spans(&mut self) -> Vec<(Resource, Vec<SpanData>)> {
        self.by_pid
            .values_mut()
            .chain(&mut self.replaced)
            .filter(|w| !w.spans.is_empty())
            .map(|w| (w.resource.clone(), std::mem::take(&mut w.spans)))
            .collect()
    }

    fn workload(&mut self, pid: u32, kernel: Option<&KernelProcess>) -> &mut Workload {
        if self.by_pid.get(&pid).is_some_and(|w| w.exited && process_alive(pid))
            && let Some(old) = self.by_pid.remove(&pid)
        {
            self.replaced.push(old);
        }
        let workload = self.by_pid.entry(pid).or_insert_with(|| {
            let process = (pid != 0).then(|| self.processes.lookup(pid, kernel, &mut self.cgroups).clone());
            let pod_uid = process.as_ref().and_then(|p| p.container.pod_uid.clone());
            let pod = pod_uid.as_deref().and_then(|uid| self.cluster.pod(uid)).cloned();
            let resource = workload_resource(&self.settings.host, process.as_ref(), pod.as_deref());
            let (provider, reader) = provider(&self.settings, resource.clone());
            let flows = FlowInstruments::new(&provider.meter_with_scope(netflow_scope()));
            Workload {
                resource,
                provider,
                reader,
                flows,
                dns: None,
                http: None,
                spans: Vec::new(),
                pod_uid,
                pod,
                exited: false,
                idle_intervals: 0,
            }
        });
        workload.idle_intervals = 0;
        workload
    }

    /// A process exec'd. If it is another program now, its next data goes under a fresh
    /// Resource and what it did before stays under the old one, exported once more.
    pub fn exec(&mut self, pid: u32, kernel: Option<&KernelProcess>) {
        if !self.by_pid.contains_key(&pid) {
            // No workload for it (yet, or no longer: a shim's exec chain, pyenv's bash
            // then python, replaced it at the first exec): its next lookup reads the
            // process afresh instead of a name cached before this exec.
            self.processes.forget(pid);
            return;
        }
        if self.processes.refresh(pid, kernel)
            && let Some(old) = self.by_pid.remove(&pid)
        {
            self.replaced.push(old);
        }
    }

    /// Before an interval's data: a pid whose workload was already marked exited has
    /// exited again, so another process had it meanwhile. The old workload is exported
    /// once more and dropped; this interval's data goes to a fresh one.
    pub fn retire_reused(&mut self, exited: &[u32]) {
        for pid in exited {
            if self.by_pid.get(pid).is_some_and(|w| w.exited)
                && let Some(old) = self.by_pid.remove(pid)
            {
                self.replaced.push(old);
            }
        }
    }

    /// After an interval's data: these processes exited. Their sockets can still count
    /// (retransmits, the close after the process is gone), and that data joins the same
    /// workload until it has been idle `idle_intervals`. Data for the pid while a live
    /// process has it again is that process's: see `workload`.
    pub fn mark_exited(&mut self, pids: &[u32]) {
        for &pid in pids.iter().filter(|&&pid| pid != 0) {
            if let Some(workload) = self.by_pid.get_mut(&pid) {
                workload.exited = true;
            }
            self.processes.forget(pid);
        }
    }

    /// A new view of the cluster. A workload whose pod the view names differently now
    /// (the view arrived after the process was first seen, or the pod changed) goes
    /// under a fresh Resource from its next data on; the old one is exported once more.
    pub fn set_cluster(&mut self, cluster: Arc<ClusterView>) {
        self.cluster = cluster;
        let cluster = &self.cluster;
        let stale: Vec<u32> = self
            .by_pid
            .iter()
            .filter(|(_, w)| w.pod_uid.as_deref().and_then(|uid| cluster.pod(uid)) != w.pod.as_ref())
            .map(|(&pid, _)| pid)
            .collect();
        for pid in stale {
            if let Some(old) = self.by_pid.remove(&pid) {
                self.replaced.push(old);
            }
        }
    }

    /// Whether this pid already has its workload (so its identity need not be looked up).
    pub fn knows(&self, pid: u32) -> bool {
        self.by_pid.contains_key(&pid)
    }

    /// Collects every workload's metrics for export.
    pub fn collect(&mut self) -> Vec<ResourceMetrics> {
        let mut batch = Vec::with_capacity(self.by_pid.len() + self.replaced.len());
        for workload in self.by_pid.values_mut().chain(&mut self.replaced) {
            let mut rm = ResourceMetrics::default();
            if workload.reader.0.collect(&mut rm).is_ok() && rm.scope_metrics().next().is_some() {
                batch.push(rm);
            }
            workload.idle_intervals += 1;
        }
        batch
    }

    /// After a successful export: drops workloads of processes that have exited and
    /// stayed idle, since their last interval has now been delivered. Not called after
    /// a failed export, so an outage never loses an exited process's totals (see
    /// `bound_backlog` for the memory bound).
    pub fn retire_delivered(&mut self) {
        for replaced in self.replaced.drain(..) {
            let _ = replaced.provider.shutdown();
        }
        let limit = self.settings.idle_intervals;
        self.by_pid.retain(|&pid, w| {
            // An exited process's pid may be alive again as another process.
            let keep = pid == 0 || w.idle_intervals <= limit || (!w.exited && process_alive(pid));
            if !keep {
                let _ = w.provider.shutdown();
            }
            keep
        });
        self.processes.forget_exited();
    }

    /// During an outage: bounds memory by dropping the exited workloads idle longest
    /// beyond `MAX_RETAINED_EXITED`. Returns how many were dropped (their totals lost).
    pub fn bound_backlog(&mut self) -> u64 {
        // Replaced workloads (exec'd processes) first, oldest first.
        let replaced_excess = self.replaced.len().saturating_sub(MAX_RETAINED_EXITED);
        for old in self.replaced.drain(..replaced_excess) {
            let _ = old.provider.shutdown();
        }
        let mut exited: Vec<(u32, u32)> = self
            .by_pid
            .iter()
            .filter(|&(&pid, w)| {
                pid != 0 && w.idle_intervals > self.settings.idle_intervals && (w.exited || !process_alive(pid))
            })
            .map(|(&pid, w)| (w.idle_intervals, pid))
            .collect();
        if exited.len() <= MAX_RETAINED_EXITED {
            return replaced_excess as u64;
        }
        exited.sort_unstable_by(|a, b| b.cmp(a));
        let excess = exited.len() - MAX_RETAINED_EXITED;
        for &(_, pid) in &exited[..excess] {
            if let Some(w) = self.by_pid.remove(&pid) {
                let _ = w.provider.shutdown();
            }
        }
        (excess + replaced_excess) as u64
    }

    pub fn len(&self) -> usize {
        self.by_pid.len()
    }
}
