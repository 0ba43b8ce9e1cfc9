//! What a user sees when something is wrong before the agent starts, and `status`.
#![allow(clippy::float_cmp, reason = "metric totals are integers carried as f64, compared exactly on purpose")]
use std::os::unix::fs::PermissionsExt as _;

use flowtel_e2e::{agent::run_to_exit, privileged_or_skip};

fn temp_config(name: &str, text: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("flowtel-{name}-{}.yaml", std::process::id()));
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn bad_configuration_stops_before_anything_loads() {
    if !privileged_or_skip("bad_configuration_stops_before_anything_loads") {
        return;
    }
    let bad_key = temp_config("badkey", "probes:\n  flow_tables: 10\n");
    let (status, out) = run_to_exit(&["--config", bad_key.to_str().unwrap(), "run"], &[]);
    assert!(!status.success());
    assert!(out.contains("unknown field `flow_tables`") && out.contains("flow_table_entries"), "{out}");
    assert!(!out.contains("probe flow_state"), "nothing may load with a bad config: {out}");

    let bad_value = temp_config("badvalue", "probes:\n  attach_mode: sometimes\n");
    let (status, out) = run_to_exit(&["run"], &[("FLOWTEL_CONFIG", bad_value.to_str().unwrap())]);
    assert!(!status.success() && out.contains("sometimes"), "{out}");

    let (status, out) = run_to_exit(&["--config", "/nonexistent/flowtel.yaml"], &[]);
    assert!(!status.success() && out.contains("cannot read config file /nonexistent/flowtel.yaml"), "{out}");

    let (status, out) = run_to_exit(&["run"], &[("OTEL_EXPORTER_OTLP_PROTOCOL", "carrier-pigeon")]);
    assert!(!status.success() && out.contains("OTEL_EXPORTER_OTLP_PROTOCOL") && out.contains("http/protobuf"), "{out}");

    let (status, out) = run_to_exit(&["run"], &[("FLOWTEL_PROBES_FLOW_TABLE_ENTRIES", "-5")]);
    assert!(!status.success() && out.contains("FLOWTEL_PROBES_FLOW_TABLE_ENTRIES"), "{out}");
    for path in [bad_key, bad_value] {
        let _ = std::fs::remove_file(path);
    }
}

#[test]
fn without_privileges_it_names_the_missing_capabilities() {
    if !privileged_or_skip("without_privileges_it_names_the_missing_capabilities") {
        return;
    }
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all"])
        .arg(flowtel_e2e::agent::binary())
        .arg("run")
        .output()
        .expect("setpriv (util-linux)");
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(text.contains("CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN (or CAP_SYS_ADMIN)"), "{text}");
    assert!(text.contains("CAP_DAC_READ_SEARCH (when not root)"), "{text}");
}

/// The capability set the Kubernetes and compose examples grant, and nothing else, as
/// an unprivileged user: every probe loads and attaches.
#[test]
fn the_documented_capabilities_are_enough_without_root() {
    if !privileged_or_skip("the_documented_capabilities_are_enough_without_root") {
        return;
    }
    let caps: Vec<String> =
        flowtel_e2e::DOCUMENTED_CAPABILITIES.iter().map(|c| format!("+{}", c.to_lowercase())).collect();
    let caps = caps.join(",");
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .args([format!("--inh-caps=-all,{caps}"), format!("--ambient-caps=-all,{caps}")])
        .arg(flowtel_e2e::agent::binary())
        .arg("status")
        .output()
        .expect("setpriv (util-linux)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    for program in ["flow_state", "flow_retransmit", "datagram_sendmsg4", "dns_egress", "dns_ingress"] {
        let line = text.lines().find(|l| l.trim_start().starts_with(&format!("{program} "))).unwrap_or_default();
        assert!(line.ends_with("attached"), "{program} not attached without root: {text}");
    }
}

/// The feature lines of `flowtel status`: name -> summary.
fn features(out: &str) -> Vec<(String, String)> {
    let block = out.split("features:\n").nth(1).unwrap_or_default().split("probes:\n").next().unwrap_or_default();
    block
        .lines()
        .filter_map(|line| line.trim().split_once(' ').map(|(name, rest)| (name.to_owned(), rest.trim().to_owned())))
        .collect()
}

#[test]
fn status_reports_attached_probes_and_verifies_the_kprobe_fallback() {
    if !privileged_or_skip("status_reports_attached_probes_and_verifies_the_kprobe_fallback") {
        return;
    }
    let (status, out) = run_to_exit(&["status"], &[]);
    assert!(status.success(), "{out}");
    let features = features(&out);
    let names: Vec<&str> = features.iter().map(|(name, _)| name.as_str()).collect();
    let expected = ["bytes", "connections", "udp_peers", "rtt", "retransmits", "processes", "dns", "http", "tls"];
    assert_eq!(names, expected, "{out}");
    // Every feature is attached or says why not: nothing is left untried.
    for (name, summary) in &features {
        let explained = summary.starts_with("attached: ") || (summary.starts_with("failed: ") && summary.len() > 12);
        assert!(explained && !summary.contains("not tried"), "{name}: {summary}\n{out}");
    }
    let summary = |name: &str| features.iter().find(|(n, _)| n == name).map(|(_, s)| s.clone()).unwrap_or_default();
    for essential in ["bytes", "connections"] {
        assert!(summary(essential).starts_with("attached"), "{essential}: {out}");
    }
    // Every program line ends in a state; a refused one carries the kernel's reason.
    let probes = out.split("probes:\n").nth(1).unwrap_or_default();
    for line in probes.lines() {
        let stated = line.ends_with(" attached") || line.contains("verified, standby") || line.contains(" failed: ");
        assert!(stated, "{line}\n{out}");
    }
    let line = |program: &str| {
        probes.lines().find(|l| l.trim_start().starts_with(&format!("{program} "))).unwrap_or_default().to_owned()
    };
    // The best byte counter the kernel has is the one attached.
    let tracepoints = std::path::Path::new("/sys/kernel/tracing/events/sock/sock_send_length").exists();
    let bytes = summary("bytes");
    if tracepoints {
        assert!(
            bytes.contains("tracepoint sock_send_length") || bytes.contains("tracepoint sock:sock_send_length"),
            "{out}"
        );
        // The fallback went through the verifier even though it is not attached.
        for program in ["flow_send_tcp_kprobe", "flow_send_tcp_return", "flow_recv_tcp_kprobe", "flow_send_udp_return"]
        {
            assert!(line(program).contains("verified") || line(program).contains("failed: "), "{program}: {out}");
        }
    } else {
        assert!(bytes.contains("fexit tcp_sendmsg") || bytes.contains("kretprobe tcp_sendmsg"), "{out}");
    }

    // Forcing each fallback: it alone attaches where the kernel offers it, a clear error
    // naming its programs where not.
    for (mode, hook, program) in [
        ("fentry", "fexit tcp_sendmsg", "flow_send_tcp_fexit"),
        ("kprobes", "kretprobe tcp_sendmsg", "flow_send_tcp_kprobe"),
    ] {
        let (status, forced) = run_to_exit(&["status"], &[("FLOWTEL_PROBES_ATTACH_MODE", mode)]);
        let bytes = self::features(&forced).into_iter().find(|(n, _)| n == "bytes").map(|(_, s)| s).unwrap_or_default();
        if bytes.starts_with("attached") {
            assert!(status.success(), "{mode}: {forced}");
            assert!(bytes.contains(hook) && !bytes.contains("sock_send_length"), "{mode}: {forced}");
        } else {
            assert!(!status.success() && forced.contains("no way to count bytes"), "{mode}: {forced}");
            assert!(forced.contains(program) && forced.contains("failed: "), "{mode}: {forced}");
        }
    }
}

/// `flowtel run` loads only the variants it attaches: the others are listed as standing
/// by, not loaded, so the agent spends no verifier time or kernel memory on them
/// (`flowtel status` verifies them, above).
#[test]
fn run_loads_only_the_variants_it_attaches() {
    if !privileged_or_skip("run_loads_only_the_variants_it_attaches") {
        return;
    }
    let (_receiver, agent) = flowtel_e2e::agent::with_grpc_receiver();
    let log = agent.log();
    let probe =
        |program: &str| log.lines().find(|l| l.contains(&format!(" probe {program} "))).unwrap_or_default().to_owned();
    assert!(probe("flow_state").ends_with("attached"), "{log}");
    let spare = log.lines().filter(|l| l.contains(" probe ") && l.contains("standby, not loaded")).count();
    assert!(spare > 0, "no variant stood by unloaded:\n{log}");
    assert!(!log.contains("verified, standby"), "run verified a variant it does not attach:\n{log}");
}

/// The TLS probes look at every running executable for an OpenSSL linked in: a large
/// one is read through a mapping, page by page as the ELF parser touches it, not copied
/// whole into the agent (whole copies once raised the start-up peak by the size of the
/// largest executable running).
#[test]
fn a_large_running_executable_costs_the_agent_no_copy_of_itself() {
    const PADDING: u64 = 256 << 20;
    if !privileged_or_skip("a_large_running_executable_costs_the_agent_no_copy_of_itself") {
        return;
    }
    let big = std::env::temp_dir().join(format!("flowtel-big-sleep-{}", std::process::id()));
    std::fs::copy("/bin/sleep", &big).expect("copy sleep");
    // Sparse zeros after the ELF: the loader ignores them, a whole read does not.
    let file = std::fs::OpenOptions::new().write(true).open(&big).expect("open");
    file.set_len(file.metadata().unwrap().len() + PADDING).expect("grow");
    drop(file);
    std::fs::set_permissions(&big, std::fs::Permissions::from_mode(0o755)).unwrap();
    // Another test's fork may briefly hold a copy of the write descriptor (ETXTBSY).
    let mut sleeper = (0..50)
        .find_map(|_| match std::process::Command::new(&big).arg("60").spawn() {
            Err(err) if err.kind() == std::io::ErrorKind::ExecutableFileBusy => {
                std::thread::sleep(std::time::Duration::from_millis(100));
                None
            }
            spawned => Some(spawned.expect("run the large executable")),
        })
        .expect("the large executable stayed busy for 5 s");
    let agent = flowtel_e2e::agent::Agent::start(&[]);
    let peak_kib = flowtel_e2e::procfs::peak_rss_kib(agent.pid());
    let _ = agent.stop();
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    let _ = std::fs::remove_file(&big);
    assert!(
        peak_kib * 1024 < PADDING,
        "agent peak RSS {} MiB with a {} MiB executable running",
        peak_kib / 1024,
        PADDING >> 20
    );
}
