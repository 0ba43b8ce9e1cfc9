//! Who: a server placed in real cgroups shaped like a containerd container of a
//! Kubernetes pod gets `container.id` and `k8s.pod.uid` on its flows' Resource; a
//! process that execs becomes the new program.
#![allow(clippy::float_cmp, reason = "byte totals are integers carried as f64, compared exactly on purpose")]
use flowtel_e2e::{
    agent::{with_grpc_receiver, with_grpc_receiver_and},
    cgroups::PodCgroup,
    netns::Link,
    privileged_or_skip,
    query::{matching, points, total},
    traffic::{Traffic, eventually},
};

const CONTAINER_ID: &str = "7d1e5c3b2a4f6e8d9c0b1a2f3e4d5c6b7a8f9e0d1c2b3a4f5e6d7c8b9a0f1e2d";
/// A second container of the same pod, whose client lives only milliseconds.
const SIDECAR_ID: &str = "c0ffee00112233445566778899aabbccddeeff00112233445566778899aabbcc";
const POD_UID: &str = "5a1e2f3d-4c5b-4a69-8b7c-1d2e3f4a5b6c";

#[test]
fn a_containerized_server_carries_container_and_pod_identity() {
    if !privileged_or_skip("a_containerized_server_carries_container_and_pod_identity") {
        return;
    }
    let (receiver, agent) = with_grpc_receiver();
    let link = Link::new("pod", 31);
    let pod = PodCgroup::create(POD_UID, CONTAINER_ID);
    let sidecar = PodCgroup::create(POD_UID, SIDECAR_ID);
    // Two connections: the server stays alive (and readable in /proc) after the first,
    // until the agent has exported its flow; the second lets it finish.
    let mut server = Traffic::spawn_in_cgroup(
        &link.a,
        &pod.leaf(),
        &[
            ("OTEL_SERVICE_NAME", "checkout"),
            ("OTEL_RESOURCE_ATTRIBUTES", "service.name=ignored,service.namespace=shop,host.name=liar,team=a%2Cb"),
        ],
        &["tcp-server", "9800", "2", "10", "20"],
    );
    server.wait_line("ready");
    let server_pid = server.pid().to_string();
    let connect = || {
        let mut client = Traffic::spawn(&link.b, &["tcp-client", &link.addr_a.to_string(), "9800", "1", "10", "20"]);
        client.wait_line("done");
        client.finish();
    };
    connect();
    let res = [("process.pid", server_pid.as_str())];
    let found = eventually(std::time::Duration::from_secs(20), || {
        !matching(&points(&receiver.received.snapshot(), "flowtel.network.io"), &res, &[]).is_empty()
    });
    // The second connection comes from a short-lived client in the sidecar container: it
    // has exited before the agent exports, so its container comes from the cgroup id the
    // probes recorded, not from /proc.
    let mut sidecar_client = Traffic::spawn_in_cgroup(
        &link.b,
        &sidecar.leaf(),
        &[],
        &["tcp-client", &link.addr_a.to_string(), "9800", "1", "10", "20"],
    );
    let sidecar_pid = sidecar_client.pid().to_string();
    sidecar_client.wait_line("done");
    sidecar_client.finish();
    server.wait_line("done");
    server.finish();
    let sidecar_res = [("process.pid", sidecar_pid.as_str())];
    let sidecar_seen = eventually(std::time::Duration::from_secs(20), || {
        !matching(&points(&receiver.received.snapshot(), "flowtel.network.io"), &sidecar_res, &[]).is_empty()
    });
    assert!(sidecar_seen, "no flows from the short-lived sidecar client; log:\n{}", agent.log());
    assert!(found, "no flows from the containerized server; log:\n{}", agent.log());
    let io = points(&receiver.received.snapshot(), "flowtel.network.io");
    let resource = &matching(&io, &res, &[])[0].resource;
    assert_eq!(resource.get("container.id").map(String::as_str), Some(CONTAINER_ID), "{resource:?}");
    assert_eq!(resource.get("k8s.pod.uid").map(String::as_str), Some(POD_UID), "{resource:?}");
    // The app's own OTEL_SERVICE_NAME names its workload.
    assert_eq!(resource.get("service.name").map(String::as_str), Some("checkout"), "{resource:?}");
    // It started moments ago (today, UTC).
    let today = std::process::Command::new("date").args(["-u", "+%Y-%m-%dT"]).output().unwrap();
    let today = String::from_utf8_lossy(&today.stdout).trim().to_owned();
    let created = resource.get("process.creation.time").cloned().unwrap_or_default();
    assert!(created.starts_with(&today) && created.ends_with('Z'), "process.creation.time {created:?}");
    // Its OTEL_RESOURCE_ATTRIBUTES add to the Resource, but cannot override what flowtel measures.
    assert_eq!(resource.get("service.namespace").map(String::as_str), Some("shop"), "{resource:?}");
    assert_eq!(resource.get("team").map(String::as_str), Some("a,b"), "{resource:?}");
    assert_ne!(resource.get("host.name").map(String::as_str), Some("liar"), "{resource:?}");
    let io = points(&receiver.received.snapshot(), "flowtel.network.io");
    let sidecar = &matching(&io, &sidecar_res, &[])[0].resource;
    assert_eq!(sidecar.get("container.id").map(String::as_str), Some(SIDECAR_ID), "{sidecar:?}");
    assert_eq!(sidecar.get("k8s.pod.uid").map(String::as_str), Some(POD_UID), "{sidecar:?}");
    assert_eq!(sidecar.get("process.executable.name").map(String::as_str), Some("python3"), "named from comm");
    // The host process that made the first connection has neither.
    let host_client = matching(&io, &[], &[("network.peer.port", "9800")]);
    let host_client: Vec<_> =
        host_client.iter().filter(|p| p.resource.get("process.pid") != Some(&sidecar_pid)).collect();
    assert!(
        !host_client.is_empty() && host_client.iter().all(|p| !p.resource.contains_key("container.id")),
        "{host_client:?}"
    );
}

/// Bytes process `pid` sent to `port` while its executable's name started with `exe`
/// (a live python3 is named by its binary, `python3.11`; one gone by its `comm`).
fn transmitted(receiver: &flowtel_e2e::receiver::Receiver, pid: &str, exe: &str, port: &str) -> f64 {
    let io = points(&receiver.received.snapshot(), "flowtel.network.io");
    matching(&io, &[("process.pid", pid)], &[("network.peer.port", port), ("network.io.direction", "transmit")])
        .iter()
        .filter(|p| p.resource.get("process.executable.name").is_some_and(|name| name.starts_with(exe)))
        .map(|p| p.value)
        .sum()
}

#[test]
fn a_process_that_execs_is_named_as_its_new_program() {
    if !privileged_or_skip("a_process_that_execs_is_named_as_its_new_program") {
        return;
    }
    let (receiver, agent) = with_grpc_receiver();
    let link = Link::new("exec", 32);
    let server = link.addr_a.to_string();
    let mut first = Traffic::spawn(&link.a, &["tcp-server", "9900", "1", "5", "7"]);
    first.wait_line("ready");
    let mut second = Traffic::spawn(&link.a, &["tcp-server", "9901", "1", "10", "20"]);
    second.wait_line("ready");
    // bash talks over /dev/tcp, waits past an export interval, then execs python3 in
    // the same process (same pid).
    let script = format!(
        "exec 3<>/dev/tcp/{server}/9900; printf hello >&3; head -c 7 <&3 >/dev/null; exec 3>&-; sleep 2.5; \
         exec python3 {} tcp-client {server} 9901 1 10 20",
        flowtel_e2e::traffic::script_path().display()
    );
    let mut process =
        Link::exec(&link.b, "bash").args(["-c", &script]).stdout(std::process::Stdio::null()).spawn().unwrap();
    let pid = process.id().to_string();
    assert!(process.wait().unwrap().success());
    first.wait_line("done");
    first.finish();
    second.wait_line("done");
    second.finish();

    let transmit = |exe: &str, port: &str| transmitted(&receiver, &pid, exe, port);
    let both = eventually(std::time::Duration::from_secs(20), || {
        transmit("bash", "9900") == 5.0 && transmit("python3", "9901") == 10.0
    });
    assert!(
        both,
        "bash sent {} to 9900, python3 sent {} to 9901 (want 5, 10); all of pid {pid}: {:#?}\nagent log:\n{}",
        transmit("bash", "9900"),
        transmit("python3", "9901"),
        matching(&points(&receiver.received.snapshot(), "flowtel.network.io"), &[("process.pid", &pid)], &[]),
        agent.log()
    );
    assert_eq!(transmit("bash", "9901"), 0.0, "the new program's bytes went under the old name");
}

/// Spawns `bash -c script` in namespace `ns` as pid `pid`: the kernel hands out the pid
/// after `ns_last_pid`, so this retries when another process took it first. The script
/// starts only after its pid is checked (it waits for a line on stdin).
fn spawn_bash_as_pid(ns: &str, pid: u32, script: &str) -> Option<std::process::Child> {
    use std::io::Write as _;
    for _ in 0..20 {
        std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string()).expect("write ns_last_pid");
        let mut child = Link::exec(ns, "bash")
            .args(["-c", &format!("read go; {script}")])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        if child.id() == pid {
            writeln!(child.stdin.take().unwrap(), "go").unwrap();
            return Some(child);
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    None
}

#[test]
fn a_new_process_that_reuses_an_exited_processs_pid_is_named_as_itself() {
    if !privileged_or_skip("a_new_process_that_reuses_an_exited_processs_pid_is_named_as_itself") {
        return;
    }
    let receiver = flowtel_e2e::receiver::Receiver::grpc("127.0.0.1:0");
    // Exited workloads would be kept for 30 intervals by idleness alone: only the
    // kernel's exit event retires the first process in time.
    let agent = flowtel_e2e::agent::Agent::start(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &format!("http://{}", receiver.addr)),
        ("FLOWTEL_TELEMETRY_IDLE_INTERVALS", "30"),
    ]);
    let link = Link::new("reuse", 35);
    let server = link.addr_a.to_string();
    let mut first_server = Traffic::spawn(&link.a, &["tcp-server", "9950", "1", "10", "20"]);
    first_server.wait_line("ready");
    let mut second_server = Traffic::spawn(&link.a, &["tcp-server", "9951", "1", "5", "7"]);
    second_server.wait_line("ready");
    let mut first = Traffic::spawn(&link.b, &["tcp-client", &server, "9950", "1", "10", "20"]);
    let pid = first.pid();
    first.wait_line("done");
    first.finish();
    first_server.wait_line("done");
    first_server.finish();

    let transmit = |exe: &str, port: &str| transmitted(&receiver, &pid.to_string(), exe, port);
    let seen = eventually(std::time::Duration::from_secs(20), || transmit("python3", "9950") == 10.0);
    assert!(seen, "the first process's flow never arrived; log:\n{}", agent.log());
    // Two more intervals: its exit has been taken by then.
    std::thread::sleep(std::time::Duration::from_millis(2_500));

    let script = format!("exec 3<>/dev/tcp/{server}/9951; printf 12345 >&3; head -c 7 <&3 >/dev/null");
    let mut second = spawn_bash_as_pid(&link.b, pid, &script).expect("pid reused");
    assert!(second.wait().unwrap().success());
    second_server.wait_line("done");
    second_server.finish();
    let named = eventually(std::time::Duration::from_secs(20), || transmit("bash", "9951") == 5.0);
    assert!(
        named,
        "bash (pid {pid}) sent {} as bash and {} as python3 (want 5, 0); log:\n{}",
        transmit("bash", "9951"),
        transmit("python3", "9951"),
        agent.log()
    );
    assert_eq!(transmit("python3", "9951"), 0.0, "the new process's bytes went under the old one's name");
}

/// More execs between two reads than the exec table holds (4,096): those beyond it are
/// counted as lost (`exec_table_full`), not silently pushed out.
#[test]
fn an_exec_burst_beyond_the_exec_table_is_counted() {
    const EXECS: u32 = 10_000;
    const TABLE: u32 = 4_096;
    if !privileged_or_skip("an_exec_burst_beyond_the_exec_table_is_counted") {
        return;
    }
    // One read every 30 s: the burst below falls between two.
    let (receiver, agent) = with_grpc_receiver_and(&[("OTEL_METRIC_EXPORT_INTERVAL", "30000")]);
    let burst = std::process::Command::new("bash")
        .args(["-c", &format!("for i in $(seq {EXECS}); do /bin/true; done")])
        .status()
        .expect("bash");
    assert!(burst.success());
    let cause = [("flowtel.probe", "process"), ("flowtel.loss.cause", "exec_table_full")];
    let lost = || total(&points(&receiver.received.snapshot(), "flowtel.agent.events.lost"), &[], &cause);
    let counted = eventually(std::time::Duration::from_secs(45), || lost() > 0.0);
    // A read may fall inside the burst (then two tables' worth went in); other
    // processes on the host exec too.
    let floor = f64::from(EXECS - 2 * TABLE);
    assert!(
        counted && lost() >= floor,
        "exec_table_full = {} (want at least {floor})\nagent log:\n{}",
        lost(),
        agent.log()
    );
    assert!(lost() <= f64::from(EXECS), "exec_table_full = {} > {EXECS} execs", lost());
}

/// Past `telemetry.max_workloads`, a new process folds into its executable's workload
/// (no `process.pid`): its bytes are still counted exactly, under who did it.
#[test]
fn processes_past_the_workload_cap_fold_and_keep_their_bytes() {
    const CLIENTS: usize = 6;
    const SEND: usize = 100;
    if !privileged_or_skip("processes_past_the_workload_cap_fold_and_keep_their_bytes") {
        return;
    }
    let (receiver, agent) = with_grpc_receiver_and(&[("FLOWTEL_TELEMETRY_MAX_WORKLOADS", "2")]);
    let link = Link::new("fold", 36);
    let server = link.addr_a.to_string();
    let mut listener = Traffic::spawn(&link.a, &["tcp-server", "9910", &CLIENTS.to_string(), &SEND.to_string(), "7"]);
    listener.wait_line("ready");
    for _ in 0..CLIENTS {
        let mut client = Traffic::spawn(&link.b, &["tcp-client", &server, "9910", "1", &SEND.to_string(), "7"]);
        client.wait_line("done");
        client.finish();
    }
    listener.wait_line("done");
    listener.finish();

    let to_server = [("network.peer.port", "9910"), ("network.io.direction", "transmit")];
    // python3.11 while alive, its `comm` python3 once gone.
    let clients = |got: &[flowtel_e2e::query::Point]| -> Vec<flowtel_e2e::query::Point> {
        matching(got, &[], &to_server)
            .into_iter()
            .filter(|p| p.resource.get("process.executable.name").is_some_and(|name| name.starts_with("python3")))
            .cloned()
            .collect()
    };
    let sent = |got: &[flowtel_e2e::query::Point]| clients(got).iter().map(|p| p.value).sum::<f64>();
    let folded = |got: &[flowtel_e2e::query::Point]| -> f64 {
        clients(got).iter().filter(|p| !p.resource.contains_key("process.pid")).map(|p| p.value).sum()
    };
    let delivered = eventually(std::time::Duration::from_secs(20), || {
        let got = points(&receiver.received.snapshot(), "flowtel.network.io");
        sent(&got) == (CLIENTS * SEND) as f64 && folded(&got) > 0.0
    });
    let got = points(&receiver.received.snapshot(), "flowtel.network.io");
    assert!(
        delivered,
        "clients sent {} in all, {} folded (want {} in all, some folded): {:#?}\nagent log:\n{}",
        sent(&got),
        folded(&got),
        CLIENTS * SEND,
        clients(&got),
        agent.log()
    );
    for point in clients(&got).into_iter().filter(|p| !p.resource.contains_key("process.pid")) {
        assert!(point.resource["service.instance.id"].contains("/folded/host/python3"), "{point:?}");
        assert!(!point.resource.contains_key("process.command"), "{point:?}");
    }
    let agent_points = receiver.received.snapshot();
    let folds = total(&points(&agent_points, "flowtel.agent.workloads.folded"), &[], &[]);
    assert!(folds >= 1.0, "flowtel.agent.workloads.folded = {folds}");
}

/// The busy node of `bench -- workloads` in small: a burst of short-lived processes
/// past the workload cap holds no more workloads than the cap, their bytes stay exact,
/// and the agent's peak RSS grows with the cap, not with the processes: 12 MiB here
/// with the cap (alone or beside this binary's other tests), 26 MiB without it (164
/// workloads at once).
#[test]
fn process_churn_past_the_cap_keeps_memory_bounded_and_bytes_exact() {
    const CHURN: usize = 300;
    const BYTES: usize = 16;
    if !privileged_or_skip("process_churn_past_the_cap_keeps_memory_bounded_and_bytes_exact") {
        return;
    }
    // DNS and HTTP off: every agent sees the whole host, and the other tests' HTTP would
    // fill its span buffers and ring buffer pages, which are not what this measures.
    let settings = [
        ("FLOWTEL_TELEMETRY_MAX_WORKLOADS", "16"),
        ("FLOWTEL_HTTP_CAPTURE_BYTES", "0"),
        ("FLOWTEL_HTTP_TLS", "false"),
        ("FLOWTEL_DNS_PORTS", ""),
    ];
    let (receiver, agent) = with_grpc_receiver_and(&settings);
    let link = Link::new("churn", 38);
    let server = link.addr_a.to_string();
    let mut sink = Traffic::spawn(&link.a, &["tcp-server", "9920", &CHURN.to_string(), &BYTES.to_string(), "0"]);
    sink.wait_line("ready");
    let before_kib = flowtel_e2e::procfs::rss_kib(agent.pid());
    // Each a forked shell that sends 16 bytes over /dev/tcp and exits.
    let script = format!(
        "for i in $(seq {CHURN}); do ( exec 3<>/dev/tcp/{server}/9920; printf 0123456789abcdef >&3 ) & sleep 0.01; done; wait"
    );
    let churned = Link::exec(&link.b, "bash").args(["-c", &script]).status();
    assert!(churned.is_ok_and(|s| s.success()), "the churn script failed");
    sink.wait_line("done");
    sink.finish();

    let to_sink = [("network.peer.port", "9920"), ("network.io.direction", "transmit")];
    let sent = || {
        let got = points(&receiver.received.snapshot(), "flowtel.network.io");
        total(&got, &[("process.executable.name", "bash")], &to_sink)
    };
    let want = (CHURN * BYTES) as f64;
    let exact = eventually(std::time::Duration::from_secs(30), || sent() == want);
    let io = points(&receiver.received.snapshot(), "flowtel.network.io");
    let seen = matching(&io, &[], &to_sink);
    assert!(
        exact,
        "the short-lived processes sent {want} bytes, flowtel counted {}: {seen:#?}\n{}",
        sent(),
        agent.log()
    );
    let got = receiver.received.snapshot();
    let own = points(&got, "flowtel.agent.workloads")
        .iter()
        .filter(|p| p.attrs.get("flowtel.workload.kind").map(String::as_str) == Some("process"))
        .map(|p| p.value)
        .fold(0.0, f64::max);
    let grown_mib = (flowtel_e2e::procfs::peak_rss_kib(agent.pid()) as f64 - before_kib as f64) / 1024.0;
    eprintln!("agent peak RSS grew by {grown_mib:.1} MiB over {CHURN} short-lived processes, {own} workloads at most");
    assert!(own <= 17.0, "{own} workloads of their own at once past a cap of 16");
    assert!(grown_mib < 20.0, "the agent's peak RSS grew by {grown_mib:.1} MiB");
}
