//! What a user sees when something is wrong before the agent starts, and `status`.
#![allow(clippy::float_cmp, reason = "metric totals are integers carried as f64, compared exactly on purpose")]
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

#[test]
fn status_reports_attached_probes_and_verifies_the_kprobe_fallback() {
    if !privileged_or_skip("status_reports_attached_probes_and_verifies_the_kprobe_fallback") {
        return;
    }
    let (status, out) = run_to_exit(&["status"], &[]);
    assert!(status.success(), "{out}");
    let line = |program: &str| {
        out.lines().find(|l| l.trim_start().starts_with(&format!("{program} "))).unwrap_or_default().to_owned()
    };
    for program in ["flow_state", "flow_retransmit"] {
        assert!(line(program).ends_with("attached"), "{program}: {out}");
    }
    // Each of these is attached either as a raw tracepoint (where BTF shows the expected
    // prototype) or as the classic tracepoint; the other is verified and on standby.
    for program in ["flow_send", "flow_recv", "flow_rtt"] {
        let (classic, raw) = (line(program), line(&format!("{program}_raw")));
        let attached = [&classic, &raw].iter().filter(|l| l.ends_with("attached")).count();
        assert_eq!(attached, 1, "{program}: {out}");
        assert!(classic.contains("verified") || raw.contains("verified"), "{program}: {out}");
    }
    // The kprobe fallback went through the verifier even though it is not attached.
    for program in ["flow_send_tcp_kprobe", "flow_recv_tcp_kprobe", "flow_send_udp_kprobe", "flow_recv_udp_kprobe"] {
        assert!(line(program).contains("verified"), "{program}: {out}");
    }

    // Forcing the fallback: attaches where kprobes exist, a clear error where not.
    let kprobes = std::path::Path::new("/sys/kernel/tracing/kprobe_events").exists();
    let (status, out) = run_to_exit(&["status"], &[("FLOWTEL_PROBES_ATTACH_MODE", "kprobes")]);
    if kprobes {
        assert!(status.success(), "{out}");
    } else {
        assert!(!status.success() && out.contains("nor kprobes"), "{out}");
    }
}
