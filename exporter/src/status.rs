//! `flowtel status`: what the kernel offers and what would attach, without running.
use crate::probes::{ProbeReport, ProbeState, kprobes_available};

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

pub fn render_reports(reports: &[ProbeReport]) -> String {
    use std::fmt::Write as _;
    reports.iter().fold(String::new(), |mut out, r| {
        let state = match &r.state {
            ProbeState::Attached => "attached".to_owned(),
            ProbeState::Standby => "verified, standby (fallback not needed)".to_owned(),
            ProbeState::Failed(why) => format!("not attached: {why}"),
        };
        let _ = writeln!(out, "  {:<22} {:<40} {state}", r.program, r.hook);
        out
    })
}
