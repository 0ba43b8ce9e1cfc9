//! Every name flowtel emits: metrics, attributes, units and scopes. This crate is the
//! authoritative copy of the telemetry contract (`docs/telemetry.md` documents it for
//! users); a name here changes only with a migration note in the CHANGELOG.
//!
//! OpenTelemetry semantic-convention names are used wherever one exists; everything
//! else lives under the `flowtel.` vendor prefix. Units are UCUM; durations are seconds.

/// One metric instrument of the contract.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetricName {
    pub name: &'static str,
    pub unit: &'static str,
    pub description: &'static str,
}

pub mod scope {
    pub const NETFLOW: &str = "flowtel.netflow";
    pub const DNS: &str = "flowtel.dns";
    pub const HTTP: &str = "flowtel.http";
    pub const AGENT: &str = "flowtel.agent";
}

pub mod metric {
    use super::MetricName;

    pub const NETWORK_IO: MetricName = MetricName {
        name: "flowtel.network.io",
        unit: "By",
        description: "Bytes sent (network.io.direction=transmit) and received (=receive) by the local process on the flow.",
    };
    pub const TCP_RETRANSMITS: MetricName = MetricName {
        name: "flowtel.tcp.retransmits",
        unit: "{segment}",
        description: "TCP segments retransmitted on the flow.",
    };
    pub const TCP_RTT: MetricName = MetricName {
        name: "flowtel.tcp.rtt",
        unit: "s",
        description: "Smoothed round-trip time, sampled throughout each connection's life.",
    };
    pub const TCP_RTTVAR: MetricName = MetricName {
        name: "flowtel.tcp.rttvar",
        unit: "s",
        description: "The kernel's smoothed RTT variation at the flow's last RTT sample.",
    };
    pub const TCP_CONNECTIONS_OPENED: MetricName = MetricName {
        name: "flowtel.tcp.connections.opened",
        unit: "{connection}",
        description: "TCP connections established.",
    };
    pub const TCP_CONNECTIONS_CLOSED: MetricName = MetricName {
        name: "flowtel.tcp.connections.closed",
        unit: "{connection}",
        description: "Established TCP connections closed.",
    };
    pub const TCP_CONNECTIONS_FAILED: MetricName = MetricName {
        name: "flowtel.tcp.connections.failed",
        unit: "{connection}",
        description: "TCP connections that failed before they were established, by error.type.",
    };
    pub const DNS_LOOKUP_DURATION: MetricName = MetricName {
        name: "dns.lookup.duration",
        unit: "s",
        description: "Time from a DNS query leaving the local process to its answer arriving (kernel timestamps).",
    };
    pub const DNS_LOOKUPS: MetricName = MetricName {
        name: "flowtel.dns.lookups",
        unit: "{lookup}",
        description: "DNS lookups by answer code (flowtel.dns.rcode), TIMEOUT for those without an answer.",
    };
    pub const HTTP_SERVER_REQUEST_DURATION: MetricName = MetricName {
        name: "http.server.request.duration",
        unit: "s",
        description: "Time from the first request byte received to the first response byte sent (time to first byte).",
    };
    pub const HTTP_CLIENT_REQUEST_DURATION: MetricName = MetricName {
        name: "http.client.request.duration",
        unit: "s",
        description: "Time from the first request byte sent to the first response byte received (time to first byte).",
    };
    pub const AGENT_HTTP_CONNECTIONS: MetricName = MetricName {
        name: "flowtel.agent.http.connections",
        unit: "{connection}",
        description: "Connections with HTTP requests in flight (awaiting their response) at the end of the interval.",
    };
    pub const AGENT_TLS_LIBRARIES: MetricName = MetricName {
        name: "flowtel.agent.tls.libraries",
        unit: "{file}",
        description: "OpenSSL libraries and executables with the TLS uprobes attached.",
    };
    pub const AGENT_DNS_NAMES: MetricName = MetricName {
        name: "flowtel.agent.dns.names",
        unit: "{address}",
        description: "Addresses in the DNS answer map that names flow peers (flowtel.peer.domain).",
    };
    pub const AGENT_DNS_NAMES_EVICTED: MetricName = MetricName {
        name: "flowtel.agent.dns.names.evicted",
        unit: "{address}",
        description: "Addresses dropped from the DNS answer map because it was full (least recently answered first).",
    };
    pub const AGENT_DNS_PENDING: MetricName = MetricName {
        name: "flowtel.agent.dns.pending",
        unit: "{query}",
        description: "DNS queries awaiting their answer at the end of the interval.",
    };
    pub const AGENT_K8S_OBJECTS: MetricName = MetricName {
        name: "flowtel.agent.k8s.objects",
        unit: "{object}",
        description: "Kubernetes objects held in the agent's cluster view, by resource.",
    };
    pub const AGENT_K8S_WATCH_ERRORS: MetricName = MetricName {
        name: "flowtel.agent.k8s.watch.errors",
        unit: "{error}",
        description: "Failed Kubernetes API requests of the watchers (each is retried with backoff), by resource.",
    };
    pub const AGENT_EVENTS_LOST: MetricName = MetricName {
        name: "flowtel.agent.events.lost",
        unit: "{event}",
        description: "Events the agent could not count, by probe and cause.",
    };
    pub const AGENT_FLOWS_ACTIVE: MetricName = MetricName {
        name: "flowtel.agent.flows.active",
        unit: "{flow}",
        description: "Flows read from the kernel in the last interval.",
    };
    pub const AGENT_PROBES_ATTACHED: MetricName = MetricName {
        name: "flowtel.agent.probes.attached",
        unit: "{probe}",
        description: "1 for each attached probe, 0 for one loaded but not attached.",
    };
    pub const AGENT_EXPORT_FAILURES: MetricName = MetricName {
        name: "flowtel.agent.export.failures",
        unit: "{export}",
        description: "Exports that failed, by signal.",
    };
    pub const AGENT_WORKLOADS: MetricName = MetricName {
        name: "flowtel.agent.workloads",
        unit: "{workload}",
        description: "Workload Resources held, by kind: a process's own, or processes folded past telemetry.max_workloads.",
    };
    pub const AGENT_WORKLOADS_FOLDED: MetricName = MetricName {
        name: "flowtel.agent.workloads.folded",
        unit: "{process}",
        description: "Processes folded into their container's or pod's and executable's workload past telemetry.max_workloads.",
    };

    /// Every metric flowtel can emit.
    pub const ALL: [MetricName; 24] = [
        NETWORK_IO,
        TCP_RETRANSMITS,
        TCP_RTT,
        TCP_RTTVAR,
        TCP_CONNECTIONS_OPENED,
        TCP_CONNECTIONS_CLOSED,
        TCP_CONNECTIONS_FAILED,
        DNS_LOOKUP_DURATION,
        DNS_LOOKUPS,
        HTTP_SERVER_REQUEST_DURATION,
        HTTP_CLIENT_REQUEST_DURATION,
        AGENT_HTTP_CONNECTIONS,
        AGENT_TLS_LIBRARIES,
        AGENT_DNS_NAMES,
        AGENT_DNS_NAMES_EVICTED,
        AGENT_DNS_PENDING,
        AGENT_K8S_OBJECTS,
        AGENT_K8S_WATCH_ERRORS,
        AGENT_EVENTS_LOST,
        AGENT_FLOWS_ACTIVE,
        AGENT_PROBES_ATTACHED,
        AGENT_EXPORT_FAILURES,
        AGENT_WORKLOADS,
        AGENT_WORKLOADS_FOLDED,
    ];
}

pub mod attr {
    pub const NETWORK_TRANSPORT: &str = "network.transport";
    pub const NETWORK_TYPE: &str = "network.type";
    pub const NETWORK_LOCAL_ADDRESS: &str = "network.local.address";
    pub const NETWORK_LOCAL_PORT: &str = "network.local.port";
    pub const NETWORK_PEER_ADDRESS: &str = "network.peer.address";
    pub const NETWORK_PEER_PORT: &str = "network.peer.port";
    pub const NETWORK_IO_DIRECTION: &str = "network.io.direction";
    pub const FLOW_DIRECTION: &str = "flowtel.flow.direction";
    pub const LOCAL_ADDRESS_CLASS: &str = "flowtel.local.address.class";
    pub const PEER_ADDRESS_CLASS: &str = "flowtel.peer.address.class";
    pub const ERROR_TYPE: &str = "error.type";
    pub const PEER_DOMAIN: &str = "flowtel.peer.domain";
    pub const PEER_K8S_NAMESPACE_NAME: &str = "flowtel.peer.k8s.namespace.name";
    pub const PEER_K8S_POD_NAME: &str = "flowtel.peer.k8s.pod.name";
    pub const PEER_K8S_DEPLOYMENT_NAME: &str = "flowtel.peer.k8s.deployment.name";
    pub const PEER_K8S_SERVICE_NAME: &str = "flowtel.peer.k8s.service.name";
    pub const GEO_COUNTRY_ISO_CODE: &str = "geo.country.iso_code";
    pub const GEO_REGION_ISO_CODE: &str = "geo.region.iso_code";
    pub const GEO_LOCALITY_NAME: &str = "geo.locality.name";
    pub const DNS_QUESTION_NAME: &str = "dns.question.name";
    pub const DNS_QUESTION_TYPE: &str = "dns.question.type";
    pub const DNS_RCODE: &str = "flowtel.dns.rcode";
    pub const HTTP_REQUEST_METHOD: &str = "http.request.method";
    pub const HTTP_RESPONSE_STATUS_CODE: &str = "http.response.status_code";
    pub const HTTP_ROUTE: &str = "http.route";
    pub const URL_SCHEME: &str = "url.scheme";
    pub const URL_PATH: &str = "url.path";
    pub const URL_QUERY: &str = "url.query";
    pub const NETWORK_PROTOCOL_NAME: &str = "network.protocol.name";
    pub const NETWORK_PROTOCOL_VERSION: &str = "network.protocol.version";
    pub const SERVER_ADDRESS: &str = "server.address";
    pub const SERVER_PORT: &str = "server.port";
    pub const CLIENT_ADDRESS: &str = "client.address";
    pub const CLIENT_PORT: &str = "client.port";
    pub const USER_AGENT_ORIGINAL: &str = "user_agent.original";
    /// True when the captured bytes cut the request line or headers.
    pub const HTTP_TRUNCATED: &str = "flowtel.http.truncated";
    /// `flowtel.agent.*`: which probe.
    pub const AGENT_PROBE: &str = "flowtel.probe";
    /// `flowtel.agent.events.lost`: why.
    pub const AGENT_LOSS_CAUSE: &str = "flowtel.loss.cause";
    /// `flowtel.agent.export.failures`: which signal (`metrics`, `traces`).
    pub const AGENT_SIGNAL: &str = "flowtel.signal";
    /// The Kubernetes resource of an agent metric: `pods`, `services`, `endpointslices`, `replicasets`.
    pub const AGENT_K8S_RESOURCE: &str = "flowtel.k8s.resource";
    /// `flowtel.agent.workloads`: `process` (one process's own) or `folded`.
    pub const AGENT_WORKLOAD_KIND: &str = "flowtel.workload.kind";
}

pub mod resource {
    pub const SERVICE_NAME: &str = "service.name";
    pub const SERVICE_VERSION: &str = "service.version";
    pub const SERVICE_INSTANCE_ID: &str = "service.instance.id";
    pub const PROCESS_PID: &str = "process.pid";
    pub const PROCESS_EXECUTABLE_NAME: &str = "process.executable.name";
    pub const PROCESS_COMMAND: &str = "process.command";
    pub const PROCESS_COMMAND_LINE: &str = "process.command_line";
    pub const PROCESS_CREATION_TIME: &str = "process.creation.time";
    pub const CONTAINER_ID: &str = "container.id";
    pub const K8S_POD_UID: &str = "k8s.pod.uid";
    pub const K8S_NODE_NAME: &str = "k8s.node.name";
    pub const K8S_NAMESPACE_NAME: &str = "k8s.namespace.name";
    pub const K8S_POD_NAME: &str = "k8s.pod.name";
    pub const K8S_CONTAINER_NAME: &str = "k8s.container.name";
    pub const K8S_DEPLOYMENT_NAME: &str = "k8s.deployment.name";
    pub const K8S_REPLICASET_NAME: &str = "k8s.replicaset.name";
    pub const K8S_STATEFULSET_NAME: &str = "k8s.statefulset.name";
    pub const K8S_DAEMONSET_NAME: &str = "k8s.daemonset.name";
    pub const K8S_JOB_NAME: &str = "k8s.job.name";
    pub const K8S_CRONJOB_NAME: &str = "k8s.cronjob.name";
    pub const SERVICE_NAMESPACE: &str = "service.namespace";
    pub const HOST_NAME: &str = "host.name";
    pub const HOST_ID: &str = "host.id";
    pub const HOST_ARCH: &str = "host.arch";
    pub const OS_TYPE: &str = "os.type";
    pub const OS_VERSION: &str = "os.version";
}

/// Attribute values with a closed set.
pub mod value {
    pub const TCP: &str = "tcp";
    pub const UDP: &str = "udp";
    pub const IPV4: &str = "ipv4";
    pub const IPV6: &str = "ipv6";
    pub const TRANSMIT: &str = "transmit";
    pub const RECEIVE: &str = "receive";
    pub const INCOMING: &str = "incoming";
    pub const OUTGOING: &str = "outgoing";
    pub const LOOPBACK: &str = "loopback";
    pub const PRIVATE: &str = "private";
    pub const LINK_LOCAL: &str = "link_local";
    pub const MULTICAST: &str = "multicast";
    pub const OTHER: &str = "other";
    pub const REFUSED: &str = "refused";
    pub const TIMEOUT: &str = "timeout";
    pub const RESET: &str = "reset";
    pub const HTTP: &str = "http";
    pub const HTTPS: &str = "https";
    pub const CONNECTION_RESET: &str = "connection_reset";
    /// `flowtel.dns.rcode` of a lookup that got no answer within the timeout.
    pub const DNS_TIMEOUT: &str = "TIMEOUT";
}
