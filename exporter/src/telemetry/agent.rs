//! flowtel's own health under the agent Resource (scope `flowtel.agent`): nothing is
//! lost silently.
use flowtel_probes_abi::lost;
use flowtel_semconv::{attr, metric, resource, scope};
use opentelemetry::{
    InstrumentationScope, KeyValue,
    metrics::{Counter, Gauge, MeterProvider as _},
};
use opentelemetry_sdk::metrics::{SdkMeterProvider, data::ResourceMetrics, reader::MetricReader as _};

use super::{
    instrument::{counter, gauge},
    reader::SharedReader,
    resources::resource_with,
    workloads::{TelemetrySettings, provider},
};
use crate::probes::{ProbeReport, ProbeState};

pub struct AgentTelemetry {
    _provider: SdkMeterProvider,
    reader: SharedReader,
    events_lost: Counter<u64>,
    flows_active: Gauge<u64>,
    dns_names: Gauge<u64>,
    dns_names_evicted: Counter<u64>,
    dns_pending: Gauge<u64>,
    probes_attached: Gauge<u64>,
    export_failures: Counter<u64>,
    http_connections: Gauge<u64>,
    tls_libraries: Gauge<u64>,
    k8s_objects: Gauge<u64>,
    k8s_watch_errors: Counter<u64>,
    workloads: Gauge<u64>,
    workloads_folded: Counter<u64>,
}

/// (probe, cause) of each kernel loss counter.
const LOSS_LABELS: [(u32, &str, &str); lost::COUNT as usize] = [
    (lost::FLOW_TABLE_FULL, "netflow", "map_full"),
    (lost::SOCKET_TABLE_FULL, "netflow", "socket_table_full"),
    (lost::KERNEL_READ, "netflow", "kernel_read"),
    (lost::PEER_UNKNOWN, "netflow", "peer_unknown"),
    (lost::DNS_RING_FULL, "dnsflow", "ring_buffer_full"),
    (lost::DNS_PACKET_READ, "dnsflow", "kernel_read"),
    (lost::EXEC_TABLE_FULL, "process", "exec_table_full"),
    (lost::HTTP_RING_FULL, "httpflow", "ring_buffer_full"),
    (lost::HTTP_READ, "httpflow", "user_read"),
    (lost::TLS_TABLE_FULL, "httpflow", "tls_table_full"),
    (lost::EXIT_TABLE_FULL, "process", "exit_table_full"),
    (lost::SOCKET_BYTES_TABLE_FULL, "netflow", "socket_bytes_table_full"),
    (lost::DNS_SCRATCH_BUSY, "dnsflow", "scratch_busy"),
    (lost::HTTP_SCRATCH_BUSY, "httpflow", "scratch_busy"),
];

/// Causes of loss found in user space, exported at 0 from the start like the rest.
const USER_SPACE_LOSSES: [(&str, &str); 16] = [
    ("dnsflow", "parse"),
    ("dnsflow", "pending_full"),
    ("dnsflow", "stream_gap"),
    ("dnsflow", "channel_full"),
    ("dnsflow", "decode"),
    ("dnsflow", "at_exit"),
    ("httpflow", "parse"),
    ("httpflow", "pending_full"),
    ("httpflow", "unpaired"),
    ("httpflow", "channel_full"),
    ("httpflow", "decode"),
    ("httpflow", "at_exit"),
    ("httpflow", "spans_full"),
    ("httpflow", "span_export"),
    ("kubernetes", "store_full"),
    ("export", "backlog_full"),
];

impl AgentTelemetry {
    pub fn new(settings: &TelemetrySettings) -> Self {
        let service = std::env::var("OTEL_SERVICE_NAME").ok().filter(|s| !s.is_empty());
        let mut attrs = settings.host.attributes();
        attrs.push(KeyValue::new(resource::SERVICE_NAME, service.unwrap_or_else(|| "flowtel".into())));
        attrs.push(KeyValue::new(resource::SERVICE_VERSION, env!("CARGO_PKG_VERSION")));
        attrs.push(KeyValue::new(resource::SERVICE_INSTANCE_ID, format!("{}/flowtel", settings.host.name)));
        let (provider, reader) = provider(settings, resource_with(attrs));
        let meter = provider.meter_with_scope(
            InstrumentationScope::builder(scope::AGENT).with_version(env!("CARGO_PKG_VERSION")).build(),
        );
        let events_lost = counter(&meter, metric::AGENT_EVENTS_LOST);
        let flows_active = gauge(&meter, metric::AGENT_FLOWS_ACTIVE);
        let dns_names = gauge(&meter, metric::AGENT_DNS_NAMES);
        let dns_names_evicted = counter(&meter, metric::AGENT_DNS_NAMES_EVICTED);
        dns_names_evicted.add(0, &[]);
        let dns_pending = gauge(&meter, metric::AGENT_DNS_PENDING);
        let probes_attached = gauge(&meter, metric::AGENT_PROBES_ATTACHED);
        let export_failures = counter(&meter, metric::AGENT_EXPORT_FAILURES);
        // Zero-valued series from the start, so "no loss" is visible as 0, not as absence.
        for (_, probe, cause) in LOSS_LABELS {
            events_lost
                .add(0, &[KeyValue::new(attr::AGENT_PROBE, probe), KeyValue::new(attr::AGENT_LOSS_CAUSE, cause)]);
        }
        for (probe, cause) in USER_SPACE_LOSSES {
            events_lost
                .add(0, &[KeyValue::new(attr::AGENT_PROBE, probe), KeyValue::new(attr::AGENT_LOSS_CAUSE, cause)]);
        }
        export_failures.add(0, &[KeyValue::new(attr::AGENT_SIGNAL, "metrics")]);
        export_failures.add(0, &[KeyValue::new(attr::AGENT_SIGNAL, "traces")]);
        let http_connections = gauge(&meter, metric::AGENT_HTTP_CONNECTIONS);
        let tls_libraries = gauge(&meter, metric::AGENT_TLS_LIBRARIES);
        let k8s_objects = gauge(&meter, metric::AGENT_K8S_OBJECTS);
        let k8s_watch_errors = counter(&meter, metric::AGENT_K8S_WATCH_ERRORS);
        let workloads = gauge(&meter, metric::AGENT_WORKLOADS);
        let workloads_folded = counter(&meter, metric::AGENT_WORKLOADS_FOLDED);
        workloads_folded.add(0, &[]);
        Self {
            _provider: provider,
            reader,
            events_lost,
            flows_active,
            dns_names,
            dns_names_evicted,
            dns_pending,
            probes_attached,
            export_failures,
            http_connections,
            tls_libraries,
            k8s_objects,
            k8s_watch_errors,
            workloads,
            workloads_folded,
        }
    }

    /// Workload Resources held now (own, folded) and processes folded since the last call.
    pub fn record_workloads(&self, (own, folded): (usize, usize), newly_folded: u64) {
        self.workloads.record(own as u64, &[KeyValue::new(attr::AGENT_WORKLOAD_KIND, "process")]);
        self.workloads.record(folded as u64, &[KeyValue::new(attr::AGENT_WORKLOAD_KIND, "folded")]);
        self.workloads_folded.add(newly_folded, &[]);
    }

    /// The cluster view's size by resource (`RESOURCES` order) and the watchers' failed
    /// requests since the last call.
    pub fn record_kubernetes(&self, objects: [usize; 4], new_errors: [u64; 4]) {
        for ((resource, n), errors) in crate::kubernetes::RESOURCES.iter().zip(objects).zip(new_errors) {
            let attrs = [KeyValue::new(attr::AGENT_K8S_RESOURCE, *resource)];
            self.k8s_objects.record(n as u64, &attrs);
            self.k8s_watch_errors.add(errors, &attrs);
        }
    }

    pub fn record_http_connections(&self, n: usize) {
        self.http_connections.record(n as u64, &[]);
    }

    pub fn record_tls_libraries(&self, n: usize) {
        self.tls_libraries.record(n as u64, &[]);
    }

    /// Span exports that failed, and the spans they carried (dropped).
    pub fn record_span_export(&self, failures: u64, spans_lost: u64) {
        if failures > 0 {
            self.export_failures.add(failures, &[KeyValue::new(attr::AGENT_SIGNAL, "traces")]);
        }
        if spans_lost > 0 {
            self.record_user_space_loss("httpflow", "span_export", spans_lost);
        }
    }

    pub fn record_lost(&self, lost: &[u64; lost::COUNT as usize]) {
        for (index, probe, cause) in LOSS_LABELS {
            let n = lost[index as usize];
            if n > 0 {
                self.events_lost
                    .add(n, &[KeyValue::new(attr::AGENT_PROBE, probe), KeyValue::new(attr::AGENT_LOSS_CAUSE, cause)]);
            }
        }
    }

    /// Loss found in user space (a record the agent could not decode, say).
    pub fn record_user_space_loss(&self, probe: &'static str, cause: &'static str, n: u64) {
        self.events_lost
            .add(n, &[KeyValue::new(attr::AGENT_PROBE, probe), KeyValue::new(attr::AGENT_LOSS_CAUSE, cause)]);
    }

    pub fn record_flows_active(&self, n: usize) {
        self.flows_active.record(n as u64, &[]);
    }

    /// The DNS answer map's size now, evictions since the last call, and the queries
    /// awaiting an answer.
    pub fn record_dns_state(&self, names: usize, newly_evicted: u64, pending: usize) {
        self.dns_names.record(names as u64, &[]);
        if newly_evicted > 0 {
            self.dns_names_evicted.add(newly_evicted, &[]);
        }
        self.dns_pending.record(pending as u64, &[]);
    }

    pub fn record_probes(&self, reports: &[ProbeReport]) {
        for report in reports {
            let attached = u64::from(report.state == ProbeState::Attached);
            self.probes_attached.record(attached, &[KeyValue::new(attr::AGENT_PROBE, report.program)]);
        }
    }

    pub fn record_export_failures(&self, n: u64) {
        if n > 0 {
            self.export_failures.add(n, &[KeyValue::new(attr::AGENT_SIGNAL, "metrics")]);
        }
    }

    pub fn collect(&self) -> Option<ResourceMetrics> {
        let mut rm = ResourceMetrics::default();
        self.reader.0.collect(&mut rm).ok()?;
        Some(rm)
    }
}
