//! `flowtel status`: what the kernel offers and what would attach, without running.
use crate::probes::{Feature, ProbeReport, ProbeState, kprobes_available, state_text};

pub fn render_facts() -> String {
    use std::fmt::Write as _;
    kernel_facts().into_iter().fold(String::new(), |mut out, (fact, value)| {
        let _ = writeln!(out, "{fact:<32} {value}");
        out
    })
}

fn kernel_facts() -> Vec<(&'static str, String)> {
    let yes_no = |b: bool| if b { "yes".to_owned() } else { "no".to_owned() };
    let exists = |p: &str| std::path::Path::new(p).exists();
    vec![
        ("kernel", std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_owned()),
        ("BTF (/sys/kernel/btf/vmlinux)", yes_no(exists("/sys/kernel/btf/vmlinux"))),
        ("tracefs", yes_no(exists("/sys/kernel/tracing/events"))),
        ("sock:sock_send_length (6.3+)", yes_no(exists("/sys/kernel/tracing/events/sock/sock_send_length"))),
        ("tcp:tcp_retransmit_skb", yes_no(exists("/sys/kernel/tracing/events/tcp/tcp_retransmit_skb"))),
        ("kprobes", yes_no(kprobes_available())),
    ]
}

/// One line per feature (attached, or failed with the first reason), then one per
/// program with its hook and state.
pub fn render_reports(reports: &[ProbeReport]) -> String {
    use std::fmt::Write as _;
    let mut out = String::from("features:\n");
    for feature in Feature::ALL {
        let mine: Vec<&ProbeReport> = reports.iter().filter(|r| r.feature == feature).collect();
        let attached: Vec<&&ProbeReport> = mine.iter().filter(|r| r.state == ProbeState::Attached).collect();
        let summary = if let Some(first) = attached.first() {
            let hooks: Vec<&str> = attached.iter().map(|r| r.hook.as_str()).collect();
            format!("attached: {} ({})", first.variant, hooks.join(", "))
        } else if let Some(ProbeState::Failed(why)) =
            mine.iter().map(|r| &r.state).find(|s| matches!(s, ProbeState::Failed(_)))
        {
            format!("failed: {why}")
        } else {
            "failed: not tried".to_owned()
        };
        let _ = writeln!(out, "  {:<14} {summary}", feature.name());
    }
    out.push_str("probes:\n");
    for r in reports {
        let _ = writeln!(out, "  {:<22} {:<40} {}", r.program, r.hook, state_text(&r.state));
    }
    out
}
