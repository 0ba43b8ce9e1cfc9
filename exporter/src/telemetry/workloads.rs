//! One `MeterProvider` per workload Resource; the host's own flows under the host Resource.
//!
//! Memory is bounded by configuration, not by how many processes a node runs: at most
//! `telemetry.max_workloads` processes get a Resource of their own. Past that, a new
//! process folds into the workload of its container (or pod) and executable, a
//! Resource without `process.pid`, so its data is still counted under who did it; at
//! most as many folded workloads again, then one for the rest of the host. Every fold
//! is counted (`flowtel.agent.workloads.folded`).
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

use super::{
    dns_instruments::DnsInstruments,
    flow_instruments::FlowInstruments,
    http_instruments::HttpInstruments,
    otlp::SpanBytes,
    reader::SharedReader,
    resources::{folded_resource, workload_resource},
    spans::SpanBuilder,
};
use crate::{
    aggregation::{DnsLookup, FlowRecord, HttpExchange, KernelKeyMap},
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
    /// Processes with a workload of their own at once; past it, new ones fold.
    pub max_workloads: usize,
    /// Which HTTP exchanges become spans (`OTEL_TRACES_SAMPLER`).
    pub span_sampler: super::SpanSampler,
}

/// The processes one folded workload stands for: same container or pod, same
/// executable. All `None`/empty: the host's overflow, past the folded workloads' cap.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
struct FoldKey {
    container_id: Option<String>,
    pod_uid: Option<String>,
    executable: String,
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
    spans: SpanBytes,
    /// The pod uid of the process (from its cgroup) and the identity the Resource was
    /// built with: when the cluster view says otherwise, the workload is replaced.
    pod_uid: Option<String>,
    pod: Option<Arc<PodIdentity>>,
    /// The kernel reported the process's exit.
    exited: bool,
    idle_intervals: u32,
}

impl Workload {
    fn new(
        settings: &TelemetrySettings,
        resource: Resource,
        pod_uid: Option<String>,
        pod: Option<Arc<PodIdentity>>,
    ) -> Self {
        let (provider, reader) = provider(settings, resource.clone());
        let flows = FlowInstruments::new(provider.meter_with_scope(netflow_scope()));
        Self {
            resource,
            provider,
            reader,
            flows,
            dns: None,
            http: None,
            spans: SpanBytes::default(),
            pod_uid,
            pod,
            exited: false,
            idle_intervals: 0,
        }
    }
}

/// Workloads of exited processes kept, undelivered, through a collector outage.
const MAX_RETAINED_EXITED: usize = 4_096;

fn process_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

pub struct Workloads {
    settings: TelemetrySettings,
    by_pid: KernelKeyMap<u32, Workload>,
    /// Processes past `max_workloads`, folded by container or pod and executable.
    folded: HashMap<FoldKey, Workload>,
    /// Which folded workload each folded pid's data goes to.
    folded_pids: HashMap<u32, FoldKey>,
    /// Processes folded since the last `take_folds`.
    folds: u64,
    /// Workloads of processes that exec'd: exported once more, then dropped.
    replaced: Vec<Workload>,
    /// How many of `replaced` (the oldest) the last `collect` took: only those have had
    /// their last export once it is delivered.
    replaced_collected: usize,
    /// Spans of workloads dropped before their spans were taken (a span flush still on
    /// its way when their last metrics were delivered): they go with the next flush.
    retired_spans: Vec<(Resource, SpanBytes)>,
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
            by_pid: KernelKeyMap::default(),
            folded: HashMap::new(),
            folded_pids: HashMap::new(),
            folds: 0,
            replaced: Vec::new(),
            replaced_collected: 0,
            retired_spans: Vec::new(),
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

    /// Records one HTTP exchange under the serving or sending process's workload, and
    /// its span when `spans` is given (the builder and the wall-clock time of boot);
    /// returns whether a span was written.
    pub fn record_http(
        &mut self,
        exchange: &HttpExchange,
        route: Option<&str>,
        kernel: Option<&KernelProcess>,
        spans: Option<(&mut SpanBuilder, u64)>,
    ) -> bool {
        let cluster = Arc::clone(&self.cluster);
        let workload = self.workload(exchange.pid, kernel);
        let meter = || workload.provider.meter_with_scope(http_scope());
        workload.http.get_or_insert_with(|| HttpInstruments::new(&meter())).record(exchange, route);
        let Some((builder, boot_wall_ns)) = spans else { return false };
        let peer = exchange.peer.and_then(|peer| cluster.peer(peer.ip()));
        builder.write(exchange, route, boot_wall_ns, peer.map(AsRef::as_ref), &mut workload.spans)
    }

    /// Every workload's spans since the last call, with its Resource; each workload
    /// goes on writing into a `spare` buffer (one a flush emptied) when there is one.
    pub fn take_spans(&mut self, spare: &mut Vec<SpanBytes>) -> Vec<(Resource, SpanBytes)> {
        let mut taken = std::mem::take(&mut self.retired_spans);
        taken.extend(
            self.by_pid
                .values_mut()
                .chain(self.folded.values_mut())
                .chain(&mut self.replaced)
                .filter(|w| !w.spans.is_empty())
                .map(|w| (w.resource.clone(), std::mem::replace(&mut w.spans, spare.pop().unwrap_or_default()))),
        );
        taken
    }

    fn workload(&mut self, pid: u32, kernel: Option<&KernelProcess>) -> &mut Workload {
        if self.folded_pids.contains_key(&pid) || (pid != 0 && !self.by_pid.contains_key(&pid) && self.at_capacity()) {
            return self.folded_workload(pid, kernel);
        }
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
            Workload::new(&self.settings, resource, pod_uid, pod)
        });
        workload.idle_intervals = 0;
        workload
    }

    /// Whether processes with workloads of their own (the host's aside) fill the cap.
    fn at_capacity(&self) -> bool {
        self.by_pid.len() - usize::from(self.by_pid.contains_key(&0)) >= self.settings.max_workloads
    }

    /// The folded workload of a process past the cap: its container's or pod's and
    /// executable's, made on first use; past as many folded workloads, the host's rest.
    fn folded_workload(&mut self, pid: u32, kernel: Option<&KernelProcess>) -> &mut Workload {
        let key = if let Some(key) = self.folded_pids.get(&pid) { key.clone() } else { self.fold(pid, kernel) };
        let workload = self.folded.get_mut(&key).expect("made by fold or kept with its pids");
        workload.idle_intervals = 0;
        workload
    }

    /// Folds a process not seen before: notes its key and makes the workload if needed.
    fn fold(&mut self, pid: u32, kernel: Option<&KernelProcess>) -> FoldKey {
        let process = self.processes.lookup(pid, kernel, &mut self.cgroups).clone();
        let mut key = FoldKey {
            container_id: process.container.container_id.clone(),
            pod_uid: process.container.pod_uid.clone(),
            executable: process.executable_name.clone(),
        };
        if !self.folded.contains_key(&key) && self.folded.len() >= self.settings.max_workloads {
            key = FoldKey::default();
        }
        self.folds += 1;
        self.folded_pids.insert(pid, key.clone());
        if !self.folded.contains_key(&key) {
            let pod = key.pod_uid.as_deref().and_then(|uid| self.cluster.pod(uid)).cloned();
            let known = (key != FoldKey::default()).then_some(&process);
            let resource = folded_resource(&self.settings.host, known, pod.as_deref());
            let workload = Workload::new(&self.settings, resource, key.pod_uid.clone(), pod);
            self.folded.insert(key.clone(), workload);
        }
        key
    }

    /// Processes folded since the last call.
    pub fn take_folds(&mut self) -> u64 {
        std::mem::take(&mut self.folds)
    }

    /// Workloads of single processes (the host's included) and folded ones.
    pub fn counts(&self) -> (usize, usize) {
        (self.by_pid.len(), self.folded.len())
    }

    /// A process exec'd. If it is another program now, its next data goes under a fresh
    /// Resource and what it did before stays under the old one, exported once more.
    pub fn exec(&mut self, pid: u32, kernel: Option<&KernelProcess>) {
        if self.folded_pids.remove(&pid).is_some() {
            // Folded as the old program: its next data folds as the new one.
            self.processes.forget(pid);
            return;
        }
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
            // The pid may come back as another program: its data is folded afresh.
            self.folded_pids.remove(&pid);
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
        let stale: Vec<FoldKey> = self
            .folded
            .iter()
            .filter(|(_, w)| w.pod_uid.as_deref().and_then(|uid| cluster.pod(uid)) != w.pod.as_ref())
            .map(|(key, _)| key.clone())
            .collect();
        for key in stale {
            if let Some(old) = self.folded.remove(&key) {
                self.replaced.push(old);
            }
            self.folded_pids.retain(|_, k| *k != key);
        }
    }

    /// Whether this pid already has its workload (so its identity need not be looked up).
    pub fn knows(&self, pid: u32) -> bool {
        self.by_pid.contains_key(&pid) || self.folded_pids.contains_key(&pid)
    }

    /// Collects every workload's metrics for export.
    pub fn collect(&mut self) -> Vec<ResourceMetrics> {
        let mut batch = Vec::with_capacity(self.by_pid.len() + self.folded.len() + self.replaced.len());
        for workload in self.by_pid.values_mut().chain(self.folded.values_mut()).chain(&mut self.replaced) {
            let mut rm = ResourceMetrics::default();
            if workload.reader.0.collect(&mut rm).is_ok() && rm.scope_metrics().next().is_some() {
                batch.push(rm);
            }
            workload.idle_intervals += 1;
        }
        self.replaced_collected = self.replaced.len();
        batch
    }

    /// After a successful export: drops workloads of processes that have exited and
    /// stayed idle, since their last interval has now been delivered. Not called after
    /// a failed export, so an outage never loses an exited process's totals (see
    /// `bound_backlog` for the memory bound).
    /// Returns how many retired.
    pub fn retire_delivered(&mut self) -> usize {
        let collected = std::mem::take(&mut self.replaced_collected).min(self.replaced.len());
        let mut gone: Vec<Workload> = self.replaced.drain(..collected).collect();
        let limit = self.settings.idle_intervals;
        // An exited process's pid may be alive again as another process.
        gone.extend(
            self.by_pid
                .extract_if(|&pid, w| !(pid == 0 || w.idle_intervals <= limit || (!w.exited && process_alive(pid))))
                .map(|(_, w)| w),
        );
        // A folded workload stands for processes that come and go: it goes once idle.
        gone.extend(self.folded.extract_if(|_, w| w.idle_intervals > limit).map(|(_, w)| w));
        let retired = gone.len();
        for workload in gone {
            self.retire(workload);
        }
        let folded = &self.folded;
        self.folded_pids.retain(|&pid, key| folded.contains_key(key) && process_alive(pid));
        self.processes.forget_exited();
        retired
    }

    /// During an outage: bounds memory by dropping the exited workloads idle longest
    /// beyond `MAX_RETAINED_EXITED`. Returns how many were dropped (their totals lost).
    pub fn bound_backlog(&mut self) -> u64 {
        // Replaced workloads (exec'd processes) first, oldest first.
        let replaced_excess = self.replaced.len().saturating_sub(MAX_RETAINED_EXITED);
        for old in self.replaced.drain(..replaced_excess).collect::<Vec<_>>() {
            self.retire(old);
        }
        self.replaced_collected = self.replaced_collected.saturating_sub(replaced_excess);
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
                self.retire(w);
            }
        }
        (excess + replaced_excess) as u64
    }

    /// Ends a workload's metrics; its spans not yet taken go with the next flush (they
    /// are held, and counted, like every other span).
    fn retire(&mut self, workload: Workload) {
        let _ = workload.provider.shutdown();
        if !workload.spans.is_empty() {
            self.retired_spans.push((workload.resource, workload.spans));
        }
    }

    pub fn len(&self) -> usize {
        self.by_pid.len() + self.folded.len()
    }
}
