//! Who, from the Kubernetes API: a server in real pod-shaped cgroups is named with its
//! pod, namespace, Deployment (through its `ReplicaSet`), container and annotations; a
//! client's flows name the pod and Service behind a pod IP or a cluster IP. The API
//! server is a stand-in speaking list/watch (`scripts/k8s_api.py`): pods are added,
//! changed and deleted while the agent runs, watches expire (410, relist), the API
//! server goes away and comes back, is slow to answer, or is not there at all.
use std::time::Duration;

use flowtel_e2e::{
    agent::Agent,
    cgroups::PodCgroup,
    kube_api::{KubeApi, endpoint_slice, kubeconfig_text, pod, replicaset, service},
    netns::Link,
    privileged_or_skip,
    query::{Point, matching, points},
    receiver::Receiver,
    traffic::{Traffic, eventually},
};
use serde_json::{Value, json};

const POD_UID: &str = "0b7e4a1c-9d2f-4e6b-8a3c-5f1d2e3c4b5a";
const CONTAINER_ID: &str = "f00dfeed00112233445566778899aabbccddeeff00112233445566778899aabb";
const SERVER_POD: &str = "web-5d8f7c9b4-x2x9z";
const CLUSTER_IP: &str = "10.201.33.100";
const PORT: &str = "9810";

fn server_pod(team: &str) -> Value {
    let mut pod = pod("shop", SERVER_POD, POD_UID, "10.201.33.1", Some(("ReplicaSet", "web-5d8f7c9b4")));
    pod["metadata"]["annotations"] = json!({"resource.opentelemetry.io/team": team});
    pod["status"]["containerStatuses"] = json!([{
        "name": "server", "containerID": format!("containerd://{CONTAINER_ID}"), "image": "example",
        "imageID": "", "ready": true, "restartCount": 0
    }]);
    pod
}

fn cluster() -> Vec<Value> {
    vec![
        server_pod("payments"),
        replicaset("shop", "web-5d8f7c9b4", "web"),
        service("shop", "web-svc", CLUSTER_IP),
        endpoint_slice("shop", "web-svc", &["10.201.33.1"]),
    ]
}

struct Scene {
    link: Link,
    receiver: Receiver,
    agent: Agent,
    server_pid: String,
}

impl Scene {
    fn io(&self) -> Vec<Point> {
        points(&self.receiver.received.snapshot(), "flowtel.network.io")
    }

    /// Objects of `resource` in the agent's cluster view, as it last reported.
    fn objects(&self, resource: &str) -> Option<u64> {
        let held = points(&self.receiver.received.snapshot(), "flowtel.agent.k8s.objects");
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "a small count carried as f64")]
        matching(&held, &[], &[("flowtel.k8s.resource", resource)]).first().map(|p| p.value as u64)
    }

    fn watch_errors(&self) -> f64 {
        let errors = points(&self.receiver.received.snapshot(), "flowtel.agent.k8s.watch.errors");
        errors.iter().map(|p| p.value).sum()
    }

    fn connect(&self, address: &str) {
        let mut client = Traffic::spawn(&self.link.b, &["tcp-client", address, PORT, "1", "10", "20"]);
        client.wait_line("done");
        client.finish();
    }

    /// Connects to `address` about every second until the receiver shows `check`: a
    /// change at the API server reaches the agent's view after a watch event (or a
    /// relist) and a rebuild, then the next export.
    fn connect_until(&self, address: &str, what: &str, check: impl Fn(&[Point]) -> bool) {
        let mut last_connect: Option<std::time::Instant> = None;
        let seen = eventually(Duration::from_secs(30), || {
            if last_connect.is_none_or(|at| at.elapsed() > Duration::from_secs(1)) {
                self.connect(address);
                last_connect = Some(std::time::Instant::now());
            }
            check(&self.io())
        });
        assert!(seen, "{what}; agent log:\n{}", self.agent.log());
    }

    fn server_flows<'a>(&self, io: &'a [Point], attributes: &[(&str, &str)]) -> Vec<&'a Point> {
        matching(io, &[("process.pid", self.server_pid.as_str())], attributes)
    }
}

#[test]
fn pods_services_and_owners_name_workloads_and_peers_as_the_cluster_changes() {
    if !privileged_or_skip("pods_services_and_owners_name_workloads_and_peers_as_the_cluster_changes") {
        return;
    }
    let api = KubeApi::start("names", 0, &cluster(), 1_000);
    let receiver = Receiver::grpc("127.0.0.1:0");
    let kubeconfig = api.kubeconfig().display().to_string();
    let agent = Agent::start(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &format!("http://{}", receiver.addr)),
        ("KUBECONFIG", &kubeconfig),
        ("FLOWTEL_KUBERNETES_MODE", "on"),
    ]);
    let link = Link::new("k8s", 33);
    // The Service's cluster IP answers on the server's host: no kube-proxy here, so
    // the address is simply the server's too.
    let added = Link::exec(&link.a, "ip")
        .args(["addr", "add", &format!("{CLUSTER_IP}/32"), "dev", &link.veth(true)])
        .status()
        .unwrap();
    assert!(added.success());
    let cgroup = PodCgroup::create(POD_UID, CONTAINER_ID);
    let mut server = Traffic::spawn_in_cgroup(&link.a, &cgroup.leaf(), &[], &["tcp-server", PORT, "1000", "10", "20"]);
    server.wait_line("ready");
    let scene = Scene { server_pid: server.pid().to_string(), link, receiver, agent };
    let synced = eventually(Duration::from_secs(20), || {
        ["pods", "services", "endpointslices", "replicasets"].iter().all(|r| scene.objects(r) == Some(1))
    });
    assert!(synced, "the cluster view never held the 4 objects; agent log:\n{}", scene.agent.log());

    // A pod IP names the pod, its Deployment and its Service; a cluster IP the Service.
    scene.connect_until("10.201.33.1", "no flow to the pod IP named its pod", |io| {
        let named = [
            ("network.peer.address", "10.201.33.1"),
            ("flowtel.peer.k8s.namespace.name", "shop"),
            ("flowtel.peer.k8s.pod.name", SERVER_POD),
            ("flowtel.peer.k8s.deployment.name", "web"),
            ("flowtel.peer.k8s.service.name", "web-svc"),
        ];
        !matching(io, &[], &named).is_empty()
    });
    scene.connect_until(CLUSTER_IP, "no flow to the cluster IP named its Service", |io| {
        let named = [("network.peer.address", CLUSTER_IP), ("flowtel.peer.k8s.service.name", "web-svc")];
        let flows = matching(io, &[], &named);
        !flows.is_empty() && flows.iter().all(|p| !p.attrs.contains_key("flowtel.peer.k8s.pod.name"))
    });
    let io = scene.io();
    let resource = &scene.server_flows(&io, &[])[0].resource;
    for (key, value) in [
        ("k8s.pod.uid", POD_UID),
        ("k8s.pod.name", SERVER_POD),
        ("k8s.namespace.name", "shop"),
        ("k8s.deployment.name", "web"),
        ("k8s.replicaset.name", "web-5d8f7c9b4"),
        ("k8s.container.name", "server"),
        ("k8s.node.name", "node-1"),
        ("container.id", CONTAINER_ID),
        ("service.name", "web"),
        ("service.namespace", "shop"),
        ("team", "payments"),
    ] {
        assert_eq!(resource.get(key).map(String::as_str), Some(value), "{key} in {resource:?}");
    }

    // A pod added while running: the client's address now names it on the server's flows.
    api.apply(&pod("shop", "client-1", "c1-uid", "10.201.33.2", None));
    scene.connect_until("10.201.33.1", "the added client pod never named the server's peer", |io| {
        let peer = [("network.peer.address", "10.201.33.2"), ("flowtel.peer.k8s.pod.name", "client-1")];
        !scene.server_flows(io, &peer).is_empty()
    });

    // A watch that expires (410 Gone) relists; a changed annotation gives the server a
    // fresh Resource.
    api.expire();
    api.apply(&server_pod("checkout"));
    scene.connect_until("10.201.33.1", "the changed annotation never reached the server's Resource", |io| {
        scene.server_flows(io, &[]).iter().any(|p| p.resource.get("team").map(String::as_str) == Some("checkout"))
    });

    // A deleted pod no longer names its address.
    api.delete("Pod", "shop", "client-1");
    scene.connect_until("10.201.33.1", "the deleted client pod still named the server's peer", |io| {
        let current = scene.server_flows(io, &[("network.peer.address", "10.201.33.2")]);
        current.iter().any(|p| {
            p.resource.get("team").map(String::as_str) == Some("checkout")
                && !p.attrs.contains_key("flowtel.peer.k8s.pod.name")
        })
    });

    // The API server goes away: flows keep coming, with the names already known.
    let port = api.port;
    drop(api);
    let failing = eventually(Duration::from_secs(20), || scene.watch_errors() > 0.0);
    assert!(failing, "no watch errors counted with the API server gone; log:\n{}", scene.agent.log());
    let before = scene.server_flows(&scene.io(), &[]).iter().map(|p| p.value).sum::<f64>();
    scene.connect_until("10.201.33.1", "no flows while the API server was away", |io| {
        scene.server_flows(io, &[]).iter().map(|p| p.value).sum::<f64>() > before
    });
    assert!(
        scene.server_flows(&scene.io(), &[]).iter().all(|p| p.resource.contains_key("k8s.pod.name")),
        "the server lost its pod name while the API server was away"
    );

    // It comes back with newer state and no history: the watchers relist (410) and the
    // new client pod names the peer.
    let mut objects = cluster();
    objects[0] = server_pod("checkout");
    objects.push(pod("shop", "client-2", "c2-uid", "10.201.33.2", None));
    let _api = KubeApi::start("names-again", port, &objects, 5_000);
    scene.connect_until("10.201.33.1", "after the API server came back, the new pod never named the peer", |io| {
        let peer = [("network.peer.address", "10.201.33.2"), ("flowtel.peer.k8s.pod.name", "client-2")];
        !scene.server_flows(io, &peer).is_empty()
    });
    drop(server);
}

#[test]
fn without_an_api_server_the_agent_observes_and_counts_the_failures() {
    if !privileged_or_skip("without_an_api_server_the_agent_observes_and_counts_the_failures") {
        return;
    }
    // Forced on with no configuration at all: a clear start-up error.
    let (status, log) = flowtel_e2e::agent::run_to_exit(
        &["run"],
        &[("FLOWTEL_KUBERNETES_MODE", "on"), ("KUBECONFIG", "/nonexistent/kubeconfig"), ("HOME", "/nonexistent")],
    );
    assert!(!status.success() && log.contains("kubernetes.mode is on"), "{status}: {log}");

    // Configured, but nothing answers: flows go out without Kubernetes names.
    // A port that was just free: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let kubeconfig = std::env::temp_dir().join(format!("flowtel-kubeconfig-absent-{}", std::process::id()));
    std::fs::write(&kubeconfig, kubeconfig_text(port)).unwrap();
    let kubeconfig = kubeconfig.display().to_string();
    let receiver = Receiver::grpc("127.0.0.1:0");
    let agent = Agent::start(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &format!("http://{}", receiver.addr)),
        ("KUBECONFIG", &kubeconfig),
    ]);
    let link = Link::new("k8sabsent", 34);
    let mut server = Traffic::spawn(&link.a, &["tcp-server", PORT, "1", "10", "20"]);
    server.wait_line("ready");
    let mut client = Traffic::spawn(&link.b, &["tcp-client", "10.201.34.1", PORT, "1", "10", "20"]);
    client.wait_line("done");
    client.finish();
    server.wait_line("done");
    server.finish();
    let seen = eventually(Duration::from_secs(20), || {
        let snapshot = receiver.received.snapshot();
        let io = points(&snapshot, "flowtel.network.io");
        let flows = matching(&io, &[], &[("network.peer.address", "10.201.34.1")]);
        let errors: f64 = points(&snapshot, "flowtel.agent.k8s.watch.errors").iter().map(|p| p.value).sum();
        !flows.is_empty() && errors > 0.0
    });
    assert!(seen, "no flows, or no watch errors counted; log:\n{}", agent.log());
    assert!(agent.log().contains("Kubernetes watch failed"), "the outage was not logged:\n{}", agent.log());
}

#[test]
fn a_slow_api_server_delays_the_names_not_the_flows() {
    if !privileged_or_skip("a_slow_api_server_delays_the_names_not_the_flows") {
        return;
    }
    let api = KubeApi::start("slow", 0, &[pod("shop", "slow-server", "slow-uid", "10.201.37.1", None)], 1);
    api.slow(12.0);
    let receiver = Receiver::grpc("127.0.0.1:0");
    let kubeconfig = api.kubeconfig().display().to_string();
    let agent = Agent::start(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &format!("http://{}", receiver.addr)),
        ("KUBECONFIG", &kubeconfig),
    ]);
    let started = std::time::Instant::now();
    let link = Link::new("k8sslow", 37);
    let mut server = Traffic::spawn(&link.a, &["tcp-server", PORT, "1000", "10", "20"]);
    server.wait_line("ready");
    let scene = Scene { server_pid: server.pid().to_string(), link, receiver, agent };
    let to_server = |io: &[Point], named: bool| {
        matching(io, &[], &[("network.peer.address", "10.201.37.1")])
            .iter()
            .any(|p| p.attrs.contains_key("flowtel.peer.k8s.pod.name") == named)
    };
    // Flows go out while the lists are still pending, without names.
    scene.connect_until("10.201.37.1", "no flows while the API server was slow", |io| to_server(io, false));
    assert!(started.elapsed() < Duration::from_secs(12), "flows waited for the API server");
    // Once the lists answer, the names come.
    scene.connect_until("10.201.37.1", "the names never came after the slow lists", |io| to_server(io, true));
    drop(server);
}

/// A cluster bigger than `kubernetes.max_objects`: the view holds the bound, the pods it
/// could not keep are counted as `store_full`.
#[test]
fn a_cluster_past_max_objects_is_held_to_the_bound_and_the_rest_counted() {
    const PODS: u64 = 24;
    const MAX: u64 = 16;
    if !privileged_or_skip("a_cluster_past_max_objects_is_held_to_the_bound_and_the_rest_counted") {
        return;
    }
    let pods: Vec<Value> = (0..PODS)
        .map(|i| {
            let uid = format!("0b7e4a1c-9d2f-4e6b-8a3c-{i:012x}");
            pod("big", &format!("pod-{i}"), &uid, &format!("10.201.39.{}", i + 10), None)
        })
        .collect();
    let api = KubeApi::start("big", 0, &pods, 1_000);
    let receiver = Receiver::grpc("127.0.0.1:0");
    let kubeconfig = api.kubeconfig().display().to_string();
    let max = MAX.to_string();
    let agent = Agent::start(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &format!("http://{}", receiver.addr)),
        ("KUBECONFIG", &kubeconfig),
        ("FLOWTEL_KUBERNETES_MODE", "on"),
        ("FLOWTEL_KUBERNETES_MAX_OBJECTS", &max),
    ]);
    let state = || {
        let snapshot = receiver.received.snapshot();
        let held = matching(&points(&snapshot, "flowtel.agent.k8s.objects"), &[], &[("flowtel.k8s.resource", "pods")])
            .first()
            .map(|p| p.value);
        let lost = points(&snapshot, "flowtel.agent.events.lost");
        let store_full: f64 =
            matching(&lost, &[], &[("flowtel.probe", "kubernetes"), ("flowtel.loss.cause", "store_full")])
                .iter()
                .map(|p| p.value)
                .sum();
        (held, store_full)
    };
    // A relist refuses the same pods again: at least once each, counted.
    let counted = eventually(Duration::from_secs(20), || {
        let (held, store_full) = state();
        held == Some(MAX as f64) && store_full >= (PODS - MAX) as f64
    });
    assert!(counted, "{PODS} pods past a bound of {MAX}: (held, store_full) {:?}\n{}", state(), agent.log());
}
