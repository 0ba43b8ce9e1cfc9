//! The Kubernetes identity caches at the scale: 10,000 pods, 5,000 Services
//! (with their `EndpointSlices`) and their `ReplicaSets`. Measures what each step costs and
//! holds (heap bytes, counted by a wrapping allocator), and the export loop's lookups:
//! nanoseconds each and allocations (there must be none).
//!
//! `cargo bench -p flowtel --bench identity` (no root needed).
#![allow(
    clippy::cast_possible_wrap,
    clippy::cast_possible_truncation,
    reason = "allocation sizes and test indexes are far below the wrap points"
)]
use std::{
    alloc::{GlobalAlloc, Layout, System},
    hint::black_box,
    net::{IpAddr, Ipv4Addr},
    sync::atomic::{AtomicI64, AtomicU64, Ordering},
    time::Instant,
};

use flowtel::kubernetes::{Change, EndpointSliceRecord, PodRecord, ReplicaSetRecord, ServiceRecord, Store, Update};
use k8s_openapi::api::{
    apps::v1::ReplicaSet,
    core::v1::{Pod, Service},
    discovery::v1::EndpointSlice,
};
use serde_json::json;

/// Heap bytes in use and allocations made, through the system allocator.
struct Counting;

static HELD: AtomicI64 = AtomicI64::new(0);
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is passed to the system allocator unchanged; only counters change.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        HELD.fetch_add(layout.size() as i64, Ordering::Relaxed);
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract is passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        HELD.fetch_sub(layout.size() as i64, Ordering::Relaxed);
        // SAFETY: the caller's contract is passed on.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        HELD.fetch_add(new_size as i64 - layout.size() as i64, Ordering::Relaxed);
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract is passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const PODS: u32 = 10_000;
const SERVICES: u32 = 5_000;
const PODS_PER_REPLICASET: u32 = 4;
const LOOKUPS: u32 = 1_000_000;

fn pod_address(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(0x0a00_0000 + 0x1_0000 + i)
}

fn service_address(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(0x0a60_0000 + i)
}

/// A pod as the API server sends it, with the fields a real one has that flowtel drops.
fn pod(i: u32) -> Pod {
    let rs = i / PODS_PER_REPLICASET;
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": format!("app-{rs}-5d8f7c9b4-{i:05}"), "namespace": format!("team-{}", i % 50),
            "uid": format!("00000000-0000-4000-8000-{i:012}"),
            "labels": {"app": format!("app-{rs}"), "pod-template-hash": "5d8f7c9b4"},
            "annotations": {"resource.opentelemetry.io/team": "payments", "kubectl.kubernetes.io/restartedAt": "now"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": format!("app-{rs}-5d8f7c9b4"),
                                 "uid": "u", "controller": true}]
        },
        "spec": {"nodeName": format!("node-{}", i % 100), "containers": [
            {"name": "app", "image": "registry.example/app:1.2.3", "ports": [{"containerPort": 8080}],
             "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]},
            {"name": "sidecar", "image": "registry.example/proxy:1.0"}
        ]},
        "status": {"phase": "Running", "podIP": pod_address(i).to_string(), "podIPs": [{"ip": pod_address(i).to_string()}],
                   "containerStatuses": [
                       {"name": "app", "containerID": format!("containerd://{i:064x}"), "image": "i", "imageID": "",
                        "ready": true, "restartCount": 0},
                       {"name": "sidecar", "containerID": format!("containerd://{:064x}", i + 1_000_000), "image": "i",
                        "imageID": "", "ready": true, "restartCount": 0}]}
    }))
    .expect("a pod")
}

fn service(i: u32) -> Service {
    serde_json::from_value(json!({
        "metadata": {"name": format!("svc-{i}"), "namespace": format!("team-{}", i % 50)},
        "spec": {"clusterIP": service_address(i).to_string(), "clusterIPs": [service_address(i).to_string()],
                 "ports": [{"port": 80, "targetPort": 8080}], "selector": {"app": format!("app-{i}")}}
    }))
    .expect("a service")
}

/// Each Service's slice lists two pods.
fn slice(i: u32) -> EndpointSlice {
    let addresses = [pod_address(2 * i), pod_address(2 * i + 1)];
    serde_json::from_value(json!({
        "metadata": {"name": format!("svc-{i}-x1"), "namespace": format!("team-{}", i % 50),
                     "labels": {"kubernetes.io/service-name": format!("svc-{i}")}},
        "addressType": "IPv4",
        "endpoints": addresses.iter().map(|a| json!({"addresses": [a.to_string()], "conditions": {"ready": true}}))
            .collect::<Vec<_>>(),
        "ports": [{"port": 8080}]
    }))
    .expect("a slice")
}

fn replicaset(rs: u32) -> ReplicaSet {
    serde_json::from_value(json!({
        "metadata": {"name": format!("app-{rs}-5d8f7c9b4"), "namespace": format!("team-{}", (rs * PODS_PER_REPLICASET) % 50),
                     "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": format!("app-{rs}"),
                                          "uid": "d", "controller": true}]},
        "spec": {"selector": {}}
    }))
    .expect("a replicaset")
}

fn mib(bytes: i64) -> f64 {
    bytes as f64 / 1_048_576.0
}

/// Runs `step`, printing its time per item and the heap it leaves held.
fn measure<T>(what: &str, items: u32, step: impl FnOnce() -> T) -> T {
    let (held, start) = (HELD.load(Ordering::Relaxed), Instant::now());
    let out = step();
    let elapsed = start.elapsed();
    let kept = HELD.load(Ordering::Relaxed) - held;
    println!(
        "{what:<44} {:>9.1} ms  {:>7.0} ns/item  holds {:>6.2} MiB ({:.0} B/item)",
        elapsed.as_secs_f64() * 1e3,
        elapsed.as_nanos() as f64 / f64::from(items),
        mib(kept),
        kept as f64 / f64::from(items)
    );
    out
}

fn main() {
    let pods: Vec<Pod> = (0..PODS).map(pod).collect();
    let services: Vec<Service> = (0..SERVICES).map(service).collect();
    let slices: Vec<EndpointSlice> = (0..SERVICES).map(slice).collect();
    let replicasets: Vec<ReplicaSet> = (0..PODS / PODS_PER_REPLICASET).map(replicaset).collect();
    let api_objects = HELD.load(Ordering::Relaxed);
    println!("API objects as deserialized (dropped as they arrive in the agent): {:.1} MiB", mib(api_objects));

    let mut store = Store::new(200_000);
    measure("pods: API object -> record -> store", PODS, || {
        let records = pods.iter().map(PodRecord::from).collect();
        store.apply(Update::Pod(Change::Relisted(records)));
    });
    measure("services: API object -> record -> store", SERVICES, || {
        store.apply(Update::Service(Change::Relisted(services.iter().map(ServiceRecord::from).collect())));
    });
    measure("endpointslices: API object -> record -> store", SERVICES, || {
        store.apply(Update::EndpointSlice(Change::Relisted(slices.iter().map(EndpointSliceRecord::from).collect())));
    });
    measure("replicasets: API object -> record -> store", PODS / PODS_PER_REPLICASET, || {
        store.apply(Update::ReplicaSet(Change::Relisted(replicasets.iter().map(ReplicaSetRecord::from).collect())));
    });
    drop((pods, services, slices, replicasets));
    let view = measure("view rebuild (whole cluster, per pod)", PODS, || store.view());

    // The export loop: one peer lookup per flow, one pod lookup per new workload.
    let peers: Vec<IpAddr> = (0..1_024u32)
        .map(|i| if i % 4 == 3 { IpAddr::from(Ipv4Addr::new(192, 0, 2, i as u8)) } else { pod_address(i * 9).into() })
        .collect();
    let uids: Vec<String> = (0..1_024u32).map(|i| format!("00000000-0000-4000-8000-{:012}", i * 9)).collect();
    let allocations = ALLOCATIONS.load(Ordering::Relaxed);
    let start = Instant::now();
    let mut named = 0u32;
    for i in 0..LOOKUPS {
        let peer = view.peer(peers[(i % 1_024) as usize]).cloned();
        named += u32::from(black_box(peer).is_some());
    }
    let peer_ns = start.elapsed().as_nanos() as f64 / f64::from(LOOKUPS);
    let start = Instant::now();
    for i in 0..LOOKUPS {
        let pod = view.pod(&uids[(i % 1_024) as usize]).cloned();
        named += u32::from(black_box(pod).is_some());
    }
    let pod_ns = start.elapsed().as_nanos() as f64 / f64::from(LOOKUPS);
    let lookup_allocations = ALLOCATIONS.load(Ordering::Relaxed) - allocations;
    println!("peer lookup (address -> pod, Deployment, Service; 3/4 hits): {peer_ns:.1} ns");
    println!("pod lookup (uid -> pod identity, all hits): {pod_ns:.1} ns");
    println!("allocations during {} lookups: {lookup_allocations} ({named} named)", 2 * LOOKUPS);
    println!("heap held by the store and the view together: {:.2} MiB", mib(HELD.load(Ordering::Relaxed)));
    assert_eq!(lookup_allocations, 0, "the export loop's lookups must not allocate");
}
