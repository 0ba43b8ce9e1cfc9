//! `bench -- identity`: the agent's memory and CPU with the Kubernetes watchers holding
//! a cluster of 10,000 pods, 5,000 Services (each with an `EndpointSlice`) and 2,500
//! `ReplicaSets` from the stand-in API server, and 1,000 live local processes (in 100 of
//! those pods' cgroups) with one flow each; against the same agent and processes with
//! Kubernetes off, in one run.
use std::{
    io::{BufRead as _, BufReader},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use flowtel_e2e::{
    agent::Agent,
    cgroups::PodCgroup,
    kube_api::{KubeApi, endpoint_slice, pod, replicaset, service},
    query::points,
    receiver::Receiver,
    traffic::{eventually, script_path},
};
use serde_json::{Value, json};

use super::{cpu_ticks, env_or, rss_kib};

const PODS: u32 = 10_000;
const SERVICES: u32 = 5_000;
const PODS_PER_REPLICASET: u32 = 4;
/// Local processes, spread over this many pods.
const LOCAL_PODS: u32 = 100;

fn pod_address(i: u32) -> String {
    std::net::Ipv4Addr::from(0x0a00_0000 + 0x1_0000 + i).to_string()
}

fn uid(i: u32) -> String {
    format!("00000000-0000-4000-8000-{i:012}")
}

fn container(i: u32) -> String {
    format!("{i:064x}")
}

fn cluster() -> Vec<Value> {
    let mut objects = Vec::new();
    for i in 0..PODS {
        let rs = format!("app-{}-5d8f7c9b4", i / PODS_PER_REPLICASET);
        let mut p = pod(&format!("team-{}", i % 50), &format!("{rs}-{i:05}"), &uid(i), &pod_address(i), None);
        p["metadata"]["ownerReferences"] =
            json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": rs, "uid": "u", "controller": true}]);
        p["status"]["containerStatuses"] = json!([{"name": "app", "containerID": format!("containerd://{}",
            container(i)), "image": "i", "imageID": "", "ready": true, "restartCount": 0}]);
        objects.push(p);
    }
    for rs in 0..PODS / PODS_PER_REPLICASET {
        let namespace = format!("team-{}", (rs * PODS_PER_REPLICASET) % 50);
        objects.push(replicaset(&namespace, &format!("app-{rs}-5d8f7c9b4"), &format!("app-{rs}")));
    }
    for i in 0..SERVICES {
        let namespace = format!("team-{}", i % 50);
        let cluster_ip = std::net::Ipv4Addr::from(0x0a60_0000 + i).to_string();
        objects.push(service(&namespace, &format!("svc-{i}"), &cluster_ip));
        let endpoints = [pod_address(2 * i), pod_address(2 * i + 1)];
        objects.push(endpoint_slice(&namespace, &format!("svc-{i}"), &[&endpoints[0], &endpoints[1]]));
    }
    objects
}

struct Measured {
    sync_s: Option<f64>,
    sync_cpu_s: f64,
    workloads: usize,
    rss_mib: f64,
    cpu_per_interval_s: f64,
}

/// `count` live processes, each with one connection to `127.0.0.1:port`, in `cgroups`.
/// On the host's loopback: `ip netns exec` would hide the cgroup tree (it remounts /sys).
pub fn hold_clients(port: &str, count: u32, cgroups: &[String]) -> Child {
    let mut child = Command::new("python3")
        .arg(script_path())
        .args(["hold-clients", "127.0.0.1", port, &count.to_string()])
        .args(cgroups)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn hold-clients");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("read");
    assert_eq!(line.trim(), "done", "hold-clients");
    child
}

fn measure(kubernetes: bool, kubeconfig: &str, cgroups: &[String], interval_s: u64) -> Measured {
    let receiver = Receiver::grpc("127.0.0.1:0");
    let interval_ms = (interval_s * 1_000).to_string();
    let limit = env_or("BENCH_CARDINALITY_LIMIT", 2_000).to_string();
    let agent = Agent::start(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &format!("http://{}", receiver.addr)),
        ("OTEL_METRIC_EXPORT_INTERVAL", &interval_ms),
        ("KUBECONFIG", kubeconfig),
        ("FLOWTEL_KUBERNETES_MODE", if kubernetes { "on" } else { "off" }),
        ("FLOWTEL_TELEMETRY_CARDINALITY_LIMIT", &limit),
    ]);
    let start = (Instant::now(), cpu_ticks(agent.pid()));
    let pods_held = || {
        let held = points(&receiver.received.snapshot(), "flowtel.agent.k8s.objects");
        held.iter().filter(|p| p.attrs.get("flowtel.k8s.resource").map(String::as_str) == Some("pods")).any(|p| {
            #[allow(clippy::float_cmp, reason = "a count carried as f64")]
            let all = p.value == f64::from(PODS);
            all
        })
    };
    let sync_s = (kubernetes && eventually(Duration::from_mins(3), pods_held)).then(|| start.0.elapsed().as_secs_f64());
    let sync_cpu_s = (cpu_ticks(agent.pid()) - start.1) as f64 / 100.0;

    let count = env_or("BENCH_PROCESSES", 1_000) as u32;
    let mut server = Command::new("python3")
        .arg(script_path())
        .args(["tcp-server", "9870", &count.to_string(), "1", "1"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn the server");
    let mut lines = BufReader::new(server.stdout.take().expect("stdout")).lines();
    assert_eq!(lines.next().and_then(Result::ok).as_deref(), Some("ready"));
    let mut clients = hold_clients("9870", count, cgroups);
    assert_eq!(lines.next().and_then(Result::ok).as_deref(), Some("done"));
    let _ = server.wait();
    let workloads = || {
        let io = points(&receiver.received.snapshot(), "flowtel.network.io");
        let pids: std::collections::BTreeSet<&String> = io
            .iter()
            .filter(|p| p.attrs.get("network.peer.port").map(String::as_str) == Some("9870"))
            .filter_map(|p| p.resource.get("process.pid"))
            .collect();
        pids.len()
    };
    eventually(Duration::from_mins(1), || workloads() >= count as usize);
    // Steady state: the workloads and the view are held; measure a few intervals.
    let intervals = 3;
    let before = cpu_ticks(agent.pid());
    std::thread::sleep(Duration::from_secs(intervals * interval_s));
    let cpu_per_interval_s = (cpu_ticks(agent.pid()) - before) as f64 / 100.0 / intervals as f64;
    let measured = Measured {
        sync_s,
        sync_cpu_s,
        workloads: workloads(),
        rss_mib: rss_kib(agent.pid()) as f64 / 1024.0,
        cpu_per_interval_s,
    };
    drop(clients.stdin.take());
    let _ = clients.wait();
    drop(agent);
    measured
}

pub fn run() {
    let interval_s = env_or("BENCH_INTERVAL_S", 10);
    let api = KubeApi::start("bench", 0, &cluster(), 1);
    let kubeconfig = api.kubeconfig().display().to_string();
    let pods: Vec<PodCgroup> = (0..LOCAL_PODS).map(|i| PodCgroup::create(&uid(i), &container(i))).collect();
    let cgroups: Vec<String> = pods.iter().map(|p| p.leaf().display().to_string()).collect();
    println!("cluster: {PODS} pods, {SERVICES} services and slices, {} replicasets", PODS / PODS_PER_REPLICASET);
    println!(
        "\n| kubernetes | sync | CPU to sync | workloads | RSS | CPU per {interval_s} s interval |\n|---|---|---|---|---|---|"
    );
    for kubernetes in [false, true] {
        let m = measure(kubernetes, &kubeconfig, &cgroups, interval_s);
        let sync = m.sync_s.map_or("-".to_owned(), |s| format!("{s:.1} s"));
        println!(
            "| {} | {sync} | {:.2} s | {} | {:.1} MiB | {:.3} s |",
            if kubernetes { "on" } else { "off" },
            m.sync_cpu_s,
            m.workloads,
            m.rss_mib,
            m.cpu_per_interval_s
        );
    }
}
