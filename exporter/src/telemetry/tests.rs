//! Names, units, attributes and Resources as the SDK produces them: flow records go in,
//! the manual reader's output is checked against the telemetry contract.
#![allow(clippy::float_cmp, reason = "metric values are integers carried as f64, compared exactly on purpose")]
use std::{
    collections::HashMap,
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use flowtel_semconv::{attr, metric, resource, scope};
use opentelemetry::{Key, KeyValue, Value};
use opentelemetry_sdk::metrics::{
    Temporality,
    data::{AggregatedMetrics, MetricData, ResourceMetrics},
};

use super::{SpanBuilder, SpanSampler, TelemetrySettings, Workloads};
use crate::{
    aggregation::{
        Direction, DnsLookup, Failure, FlowRecord, HttpError, HttpExchange, Outcome, RequestHead, Role, Transport,
    },
    enrichment::{DomainNames, HostInfo, Peers},
    events::KernelProcess,
    kubernetes::{Change, PodRecord, ServiceRecord, Store, Update},
};

fn settings(limit: usize) -> TelemetrySettings {
    TelemetrySettings {
        temporality: Temporality::Cumulative,
        cardinality_limit: limit,
        host: HostInfo {
            name: "node-1".into(),
            id: Some("abc".into()),
            arch: "amd64",
            os_version: Some("6.18".into()),
            k8s_node_name: Some("node-1".into()),
        },
        idle_intervals: 2,
        dns_question_name: true,
        process_command_line: false,
        max_workloads: 1_000,
        span_sampler: SpanSampler::default(),
    }
}

fn no_peers() -> Peers {
    Peers { domains: DomainNames::new(10, Duration::from_mins(1)), geo: None, cluster: Arc::default() }
}

fn flow(pid: u32, peer: &str) -> FlowRecord {
    FlowRecord {
        pid,
        transport: Transport::Tcp,
        direction: Direction::Outgoing,
        local: "10.0.0.1".parse().unwrap(),
        local_port: None,
        peer: Some(peer.parse::<IpAddr>().unwrap()),
        peer_port: Some(443),
        bytes_sent: 100,
        bytes_received: 2000,
        retransmits: 3,
        opened: 1,
        closed: 1,
        failed: vec![(Failure::Refused, 2)],
        rtt_samples: vec![(0.001, 4), (0.004, 1)],
        rttvar: Some(0.0005),
    }
}

fn resource_value(rm: &ResourceMetrics, key: &'static str) -> Option<Value> {
    rm.resource().get(&Key::from_static_str(key))
}

/// (metric name, unit, attributes, value or count) of every data point.
fn data_points(rm: &ResourceMetrics) -> Vec<(String, String, Vec<KeyValue>, f64)> {
    let mut out = Vec::new();
    for sm in rm.scope_metrics() {
        assert!([scope::NETFLOW, scope::DNS, scope::HTTP].contains(&sm.scope().name()), "{:?}", sm.scope());
        for m in sm.metrics() {
            let (name, unit) = (m.name().to_owned(), m.unit().to_owned());
            let mut push = |attrs: Vec<KeyValue>, v: f64| out.push((name.clone(), unit.clone(), attrs, v));
            match m.data() {
                AggregatedMetrics::U64(MetricData::Sum(s)) => {
                    s.data_points().for_each(|p| push(p.attributes().cloned().collect(), p.value() as f64));
                }
                AggregatedMetrics::F64(MetricData::Gauge(g)) => {
                    g.data_points().for_each(|p| push(p.attributes().cloned().collect(), p.value()));
                }
                AggregatedMetrics::F64(MetricData::Histogram(h)) => {
                    h.data_points().for_each(|p| push(p.attributes().cloned().collect(), p.count() as f64));
                }
                AggregatedMetrics::F64(MetricData::ExponentialHistogram(h)) => {
                    h.data_points().for_each(|p| push(p.attributes().cloned().collect(), p.count() as f64));
                }
                other => panic!("unexpected aggregation for {name}: {other:?}"),
            }
        }
    }
    out
}

fn has(attrs: &[KeyValue], key: &str, value: &str) -> bool {
    attrs.iter().any(|kv| kv.key.as_str() == key && kv.value.as_str() == value)
}

#[test]
fn a_flow_becomes_the_contracts_metrics_under_its_process() {
    let me = std::process::id();
    let mut workloads = Workloads::new(settings(100));
    workloads.record(&[flow(me, "192.0.2.7")], &HashMap::new(), &mut no_peers());
    let batch = workloads.collect();
    assert_eq!(batch.len(), 1);
    let rm = &batch[0];
    assert_eq!(resource_value(rm, resource::PROCESS_PID), Some(Value::I64(i64::from(me))));
    assert_eq!(resource_value(rm, resource::SERVICE_NAME), resource_value(rm, resource::PROCESS_EXECUTABLE_NAME));
    assert_eq!(resource_value(rm, resource::HOST_NAME), Some(Value::from("node-1")));
    assert_eq!(resource_value(rm, resource::K8S_NODE_NAME), Some(Value::from("node-1")));
    assert_eq!(resource_value(rm, resource::SERVICE_INSTANCE_ID), Some(Value::from(format!("node-1/{me}"))));

    let points = data_points(rm);
    let find = |name: &str, extra: &[(&str, &str)]| {
        points
            .iter()
            .filter(|(n, _, a, _)| n == name && extra.iter().all(|(k, v)| has(a, k, v)))
            .map(|(_, u, a, v)| (u.clone(), a.clone(), *v))
            .collect::<Vec<_>>()
    };
    let tx = find(metric::NETWORK_IO.name, &[(attr::NETWORK_IO_DIRECTION, "transmit")]);
    assert_eq!(tx.len(), 1);
    let (unit, attrs, value) = &tx[0];
    assert_eq!((unit.as_str(), *value), ("By", 100.0));
    for (k, v) in [
        (attr::NETWORK_TRANSPORT, "tcp"),
        (attr::NETWORK_TYPE, "ipv4"),
        (attr::FLOW_DIRECTION, "outgoing"),
        (attr::NETWORK_PEER_ADDRESS, "192.0.2.7"),
        (attr::PEER_ADDRESS_CLASS, "other"),
        (attr::LOCAL_ADDRESS_CLASS, "private"),
    ] {
        assert!(has(attrs, k, v), "{k}={v} missing from {attrs:?}");
    }
    assert!(attrs.iter().any(|kv| kv.key.as_str() == attr::NETWORK_PEER_PORT && kv.value == Value::I64(443)));
    assert!(!attrs.iter().any(|kv| kv.key.as_str() == attr::NETWORK_LOCAL_PORT), "ephemeral port on a metric");
    assert_eq!(find(metric::NETWORK_IO.name, &[(attr::NETWORK_IO_DIRECTION, "receive")])[0].2, 2000.0);
    assert_eq!(find(metric::TCP_RETRANSMITS.name, &[])[0].2, 3.0);
    assert_eq!(find(metric::TCP_CONNECTIONS_FAILED.name, &[(attr::ERROR_TYPE, "refused")])[0].2, 2.0);
    let (unit, _, count) = &find(metric::TCP_RTT.name, &[])[0];
    assert_eq!((unit.as_str(), *count), ("s", 5.0));
    assert_eq!(find(metric::TCP_RTTVAR.name, &[])[0].2, 0.0005);
}

#[test]
fn flows_without_a_process_go_under_the_host_resource() {
    let mut workloads = Workloads::new(settings(100));
    workloads.record(&[flow(0, "192.0.2.7")], &HashMap::new(), &mut no_peers());
    let batch = workloads.collect();
    assert_eq!(resource_value(&batch[0], resource::PROCESS_PID), None);
    assert_eq!(resource_value(&batch[0], resource::HOST_NAME), Some(Value::from("node-1")));
}

#[test]
fn past_the_cardinality_limit_the_sdk_overflow_series_keeps_the_total() {
    let mut workloads = Workloads::new(settings(5));
    let peers: Vec<FlowRecord> = (1..=20).map(|i| flow(0, &format!("192.0.2.{i}"))).collect();
    workloads.record(&peers, &HashMap::new(), &mut no_peers());
    let points = data_points(&workloads.collect()[0]);
    let io: Vec<_> = points.iter().filter(|(n, _, _, _)| n == metric::NETWORK_IO.name).collect();
    assert!(io.len() <= 6, "limit 5 (+1 overflow) exceeded: {}", io.len());
    // The overflow series carries only `otel.metric.overflow=true`: both directions.
    assert!(io.iter().any(|(_, _, a, _)| a.iter().any(|kv| kv.key.as_str() == "otel.metric.overflow")), "{io:?}");
    let total: f64 = io.iter().map(|(_, _, _, v)| v).sum();
    assert_eq!(total, 20.0 * (100.0 + 2000.0), "no bytes lost to the limit");
}

/// The attributes of each `connections.opened` series after one flow to each peer.
fn opened_series(peers: &mut Peers, addresses: [&str; 2]) -> Vec<Vec<KeyValue>> {
    let mut workloads = Workloads::new(settings(100));
    workloads.record(&addresses.map(|a| flow(0, a)), &HashMap::new(), peers);
    let points = data_points(&workloads.collect()[0]);
    let opened: Vec<_> = points
        .into_iter()
        .filter(|(n, ..)| n == metric::TCP_CONNECTIONS_OPENED.name)
        .map(|(_, _, attrs, _)| attrs)
        .collect();
    assert_eq!(opened.len(), 2);
    opened
}

#[test]
fn a_peer_named_by_a_dns_answer_carries_its_domain() {
    let mut peers = no_peers();
    peers.domains.learn("known.test", &[("192.0.2.7".parse().unwrap(), 300)], Instant::now());
    for attrs in &opened_series(&mut peers, ["192.0.2.7", "192.0.2.8"]) {
        let named = has(attrs, attr::NETWORK_PEER_ADDRESS, "192.0.2.7");
        assert_eq!(has(attrs, attr::PEER_DOMAIN, "known.test"), named, "{attrs:?}");
    }
}

#[test]
fn a_peer_in_the_cluster_carries_its_pod_deployment_and_service() {
    let mut store = Store::new(10);
    store.apply(Update::Pod(Change::Applied(PodRecord::test_pod("web-1", "uid-1", "10.9.0.5", "web"))));
    let mut peers = no_peers();
    peers.cluster = Arc::new(store.view());
    for attrs in &opened_series(&mut peers, ["10.9.0.5", "10.9.0.6"]) {
        let in_cluster = has(attrs, attr::NETWORK_PEER_ADDRESS, "10.9.0.5");
        assert_eq!(has(attrs, attr::PEER_K8S_POD_NAME, "web-1"), in_cluster, "{attrs:?}");
        assert_eq!(has(attrs, attr::PEER_K8S_NAMESPACE_NAME, "shop"), in_cluster, "{attrs:?}");
        assert_eq!(has(attrs, attr::PEER_K8S_DEPLOYMENT_NAME, "web"), in_cluster, "{attrs:?}");
    }
}

fn lookup(name: &str, outcome: Outcome) -> DnsLookup {
    DnsLookup {
        pid: 0,
        transport: Transport::Udp,
        server: "10.0.0.1".parse().unwrap(),
        question_name: name.into(),
        question_type: 28,
        outcome,
        addresses: Vec::new(),
    }
}

#[test]
fn dns_lookups_by_rcode_with_durations_and_timeouts_counted_only() {
    let mut workloads = Workloads::new(settings(100));
    for outcome in [
        Outcome::Answered { rcode: 0, latency_s: 0.002 },
        Outcome::Answered { rcode: 0, latency_s: 0.004 },
        Outcome::Answered { rcode: 3, latency_s: 0.001 },
        Outcome::TimedOut,
    ] {
        workloads.record_dns(&lookup("a.test", outcome), None);
    }
    let points = data_points(&workloads.collect()[0]);
    let count = |name: &str, rcode: &str| {
        points
            .iter()
            .filter(|(n, _, a, _)| n == name && has(a, attr::DNS_RCODE, rcode))
            .inspect(|(_, _, a, _)| {
                assert!(has(a, attr::DNS_QUESTION_NAME, "a.test") && has(a, attr::DNS_QUESTION_TYPE, "AAAA"));
                assert!(has(a, attr::NETWORK_PEER_ADDRESS, "10.0.0.1") && has(a, attr::NETWORK_TRANSPORT, "udp"));
                let error = a.iter().find(|kv| kv.key.as_str() == attr::ERROR_TYPE).map(|kv| kv.value.as_str());
                let expected = match rcode {
                    "NOERROR" => None,
                    "TIMEOUT" => Some("timeout".into()),
                    other => Some(other.to_owned().into()),
                };
                assert_eq!(error, expected);
            })
            .map(|(_, _, _, v)| *v)
            .sum::<f64>()
    };
    assert_eq!(count(metric::DNS_LOOKUPS.name, "NOERROR"), 2.0);
    assert_eq!(count(metric::DNS_LOOKUPS.name, "NXDOMAIN"), 1.0);
    assert_eq!(count(metric::DNS_LOOKUPS.name, "TIMEOUT"), 1.0);
    assert_eq!(count(metric::DNS_LOOKUP_DURATION.name, "NOERROR"), 2.0);
    assert_eq!(count(metric::DNS_LOOKUP_DURATION.name, "TIMEOUT"), 0.0);
}

#[test]
fn dns_question_name_can_be_left_out() {
    let mut workloads = Workloads::new(TelemetrySettings { dns_question_name: false, ..settings(100) });
    workloads.record_dns(&lookup("secret.test", Outcome::TimedOut), None);
    let points = data_points(&workloads.collect()[0]);
    assert!(points.iter().all(|(_, _, a, _)| a.iter().all(|kv| kv.key.as_str() != attr::DNS_QUESTION_NAME)));
}

#[test]
fn a_dns_server_in_the_cluster_is_named_by_its_service() {
    let mut store = Store::new(10);
    store.apply(Update::Service(Change::Applied(ServiceRecord {
        key: (Arc::from("kube-system"), Arc::from("kube-dns")),
        cluster_ips: vec!["10.0.0.1".parse().unwrap()],
    })));
    let mut workloads = Workloads::new(settings(100));
    workloads.set_cluster(Arc::new(store.view()));
    workloads.record_dns(&lookup("web.shop.svc.cluster.local", Outcome::TimedOut), None);
    let points = data_points(&workloads.collect()[0]);
    assert!(!points.is_empty());
    for (_, _, attrs, _) in &points {
        assert!(has(attrs, attr::PEER_K8S_SERVICE_NAME, "kube-dns"), "{attrs:?}");
        assert!(has(attrs, attr::PEER_K8S_NAMESPACE_NAME, "kube-system"), "{attrs:?}");
    }
}

#[test]
fn an_http_span_names_the_other_end_in_the_cluster() {
    let mut store = Store::new(10);
    store.apply(Update::Pod(Change::Applied(PodRecord::test_pod("client-1", "u1", "10.9.0.7", "web"))));
    let mut workloads = Workloads::new(settings(100));
    workloads.set_cluster(Arc::new(store.view()));
    let exchange = unanswered_exchange(0);
    let mut builder = SpanBuilder::new(false, SpanSampler::default());
    assert!(workloads.record_http(&exchange, None, None, Some((&mut builder, 0))), "sampled");
    let spans = decoded_spans(&workloads.take_spans(&mut Vec::new()));
    let attrs = span_attributes(&spans[0]);
    assert!(attrs.contains(&(attr::PEER_K8S_POD_NAME.to_owned(), "client-1".to_owned())), "{attrs:?}");
    assert!(attrs.contains(&(attr::PEER_K8S_DEPLOYMENT_NAME.to_owned(), "web".to_owned())), "{attrs:?}");
    // Not on the histogram: a client pod's name would multiply its series.
    let points = data_points(&workloads.collect()[0]);
    assert!(!points.is_empty());
    assert!(points.iter().all(|(_, _, a, _)| a.iter().all(|kv| !kv.key.as_str().starts_with("flowtel.peer.k8s"))));
}

/// An exec reported after the workload was already read as the new program (the
/// common `ip netns exec prog` case) changes nothing: one series, no counter reset.
/// (A process that really became another program: tests/tests/identity.rs.)
#[test]
fn an_exec_that_did_not_change_the_program_keeps_its_workload() {
    let me = std::process::id();
    let mut workloads = Workloads::new(settings(100));
    workloads.record(&[flow(me, "192.0.2.7")], &HashMap::new(), &mut no_peers());
    assert_eq!(workloads.collect().len(), 1);
    workloads.retire_delivered();
    workloads.exec(me, None);
    workloads.record(&[flow(me, "192.0.2.8")], &HashMap::new(), &mut no_peers());
    assert_eq!(workloads.collect().len(), 1);
    workloads.exec(4_000_000, None); // never seen: nothing to do
    assert_eq!(workloads.len(), 1);
}

#[test]
fn past_the_workload_cap_processes_fold_by_executable_and_keep_their_bytes() {
    let me = std::process::id();
    let mut workloads = Workloads::new(TelemetrySettings { max_workloads: 1, ..settings(100) });
    // Gone processes, named by the comm the probes recorded.
    let curl = KernelProcess { name: "curl".into(), cgroup_id: 0 };
    let gone: Vec<u32> = (4_000_001..4_000_006).collect();
    let kernel: HashMap<u32, KernelProcess> = gone.iter().map(|&pid| (pid, curl.clone())).collect();
    let mut flows = vec![flow(me, "192.0.2.7"), flow(0, "192.0.2.8")];
    flows.extend(gone.iter().map(|&pid| flow(pid, "192.0.2.9")));
    workloads.record(&flows, &kernel, &mut no_peers());
    // Mine, the host's, and one for every curl.
    assert_eq!(workloads.counts(), (2, 1));
    assert_eq!(workloads.take_folds(), 5);
    let batch = workloads.collect();
    let folded = batch
        .iter()
        .find(|rm| resource_value(rm, resource::PROCESS_EXECUTABLE_NAME) == Some(Value::from("curl")))
        .expect("the folded curl workload");
    assert_eq!(resource_value(folded, resource::PROCESS_PID), None);
    assert_eq!(resource_value(folded, resource::SERVICE_INSTANCE_ID), Some(Value::from("node-1/folded/host/curl")));
    let sent: f64 = data_points(folded)
        .iter()
        .filter(|(name, _, attrs, _)| name == metric::NETWORK_IO.name && has(attrs, "network.io.direction", "transmit"))
        .map(|(.., v)| v)
        .sum();
    assert_eq!(sent, 500.0);
    // Idle past `idle_intervals`, the folded workload goes; a new fold makes it again.
    for _ in 0..3 {
        workloads.collect();
    }
    workloads.retire_delivered();
    assert_eq!(workloads.counts().1, 0);
}

/// A server exchange of process `pid` that timed out.
fn unanswered_exchange(pid: u32) -> HttpExchange {
    let request = RequestHead {
        method: "GET".into(),
        path: "/".into(),
        query: None,
        version: "1.1",
        host: None,
        user_agent: None,
        traceparent: None,
        truncated: false,
    };
    HttpExchange {
        id: 1,
        parent: None,
        linked: false,
        pid,
        role: Role::Server,
        tls: false,
        request,
        response: None,
        error: Some(HttpError::Timeout),
        start_ns: 1,
        end_ns: 2,
        local: Some("10.9.0.1:80".parse().unwrap()),
        peer: Some("10.9.0.7:40000".parse().unwrap()),
    }
}

/// A process that exits while its spans wait (a flush still on its way): when its
/// workload retires after its last metrics were delivered, its spans stay for the next
/// flush instead of going with it.
#[test]
fn a_retired_workload_leaves_its_spans_for_the_next_flush() {
    let gone = 4_000_001;
    let mut workloads = Workloads::new(settings(100));
    let exchange = unanswered_exchange(gone);
    let mut builder = SpanBuilder::new(false, SpanSampler::default());
    let gone_process = KernelProcess { name: "gone".into(), cgroup_id: 0 };
    assert!(workloads.record_http(&exchange, None, Some(&gone_process), Some((&mut builder, 0))), "sampled");
    workloads.mark_exited(&[gone]);
    for _ in 0..3 {
        workloads.collect();
    }
    workloads.retire_delivered();
    assert_eq!(workloads.len(), 0, "the exited, idle workload retired");
    let spans = workloads.take_spans(&mut Vec::new());
    assert_eq!(decoded_spans(&spans).len(), 1, "{spans:?}");
    assert!(workloads.take_spans(&mut Vec::new()).is_empty());
}

/// Held spans as a receiver decodes them (the official protos).
fn decoded_spans(
    batches: &[(opentelemetry_sdk::Resource, super::SpanBytes)],
) -> Vec<opentelemetry_proto::tonic::trace::v1::Span> {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use prost::Message as _;
    super::otlp::requests(batches, 1 << 20)
        .flat_map(|request| ExportTraceServiceRequest::decode(request.body.as_slice()).expect("decodes").resource_spans)
        .flat_map(|r| r.scope_spans)
        .flat_map(|s| s.spans)
        .collect()
}

/// A decoded span's attributes, values as text.
fn span_attributes(span: &opentelemetry_proto::tonic::trace::v1::Span) -> Vec<(String, String)> {
    use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
    span.attributes
        .iter()
        .map(|kv| {
            let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(Any::StringValue(s)) => s.clone(),
                Some(Any::IntValue(i)) => i.to_string(),
                Some(Any::BoolValue(b)) => b.to_string(),
                other => format!("{other:?}"),
            };
            (kv.key.clone(), value)
        })
        .collect()
}
