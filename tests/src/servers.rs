//! Servers the tests and benchmarks start (dnsmasq, rotel, ...): each stopped on drop.
use std::process::{Child, Stdio};

use crate::netns::Link;

/// A child process killed and reaped when dropped.
pub struct Background(pub Child);

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// dnsmasq in namespace `ns`, answering on `listen` addresses and `port` from what
/// `answers` configures (`--address=...`, `--addn-hosts=...`), with no upstream: any
/// other name is REFUSED.
pub fn dnsmasq(ns: &str, listen: &[&str], port: u16, answers: &[String]) -> Background {
    let mut cmd = Link::exec(ns, "dnsmasq");
    cmd.args(["--no-daemon", "--no-resolv", "--no-hosts", "--bind-interfaces", "--pid-file=", "--user=root"]);
    cmd.arg(format!("--port={port}"));
    cmd.args(listen.iter().map(|address| format!("--listen-address={address}")));
    cmd.args(answers);
    let child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("dnsmasq (apt install dnsmasq-base)");
    let server = Background(child);
    // It reads its configuration and binds within milliseconds; queries before that would be refused.
    std::thread::sleep(std::time::Duration::from_millis(300));
    server
}
