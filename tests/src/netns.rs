//! Test hosts: two network namespaces joined by a veth pair, removed on drop.
use std::{
    net::{Ipv4Addr, Ipv6Addr},
    process::{Command, Stdio},
};

fn ip(args: &[&str]) {
    let status = Command::new("ip").args(args).stderr(Stdio::null()).status().expect("run ip");
    assert!(status.success(), "ip {} failed", args.join(" "));
}

/// Hosts `a` (10.201.N.1, `fd00:201:N::1`) and `b` (10.201.N.2, `fd00:201:N::2`). `subnet`
/// must be unique per test so tests can run in parallel and filter on their addresses.
pub struct Link {
    pub a: String,
    pub b: String,
    pub addr_a: Ipv4Addr,
    pub addr_b: Ipv4Addr,
    pub addr6_a: Ipv6Addr,
    pub addr6_b: Ipv6Addr,
}

impl Link {
    pub fn new(tag: &str, subnet: u8) -> Self {
        let (a, b) = (format!("ft-{tag}-a"), format!("ft-{tag}-b"));
        for ns in [&a, &b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).stderr(Stdio::null()).status();
            ip(&["netns", "add", ns]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        let (va, vb) = (format!("ft{subnet}a"), format!("ft{subnet}b"));
        ip(&["link", "add", &va, "netns", &a, "type", "veth", "peer", "name", &vb, "netns", &b]);
        let (addr_a, addr_b) = (Ipv4Addr::new(10, 201, subnet, 1), Ipv4Addr::new(10, 201, subnet, 2));
        ip(&["-n", &a, "addr", "add", &format!("{addr_a}/24"), "dev", &va]);
        ip(&["-n", &b, "addr", "add", &format!("{addr_b}/24"), "dev", &vb]);
        let (addr6_a, addr6_b) = (
            Ipv6Addr::new(0xfd00, 0x201, subnet.into(), 0, 0, 0, 0, 1),
            Ipv6Addr::new(0xfd00, 0x201, subnet.into(), 0, 0, 0, 0, 2),
        );
        ip(&["-n", &a, "addr", "add", &format!("{addr6_a}/64"), "dev", &va, "nodad"]);
        ip(&["-n", &b, "addr", "add", &format!("{addr6_b}/64"), "dev", &vb, "nodad"]);
        ip(&["-n", &a, "link", "set", &va, "up"]);
        ip(&["-n", &b, "link", "set", &vb, "up"]);
        Self { a, b, addr_a, addr_b, addr6_a, addr6_b }
    }

    /// A command run inside namespace `ns` (`ip netns exec` execs it, so the child's
    /// pid is the program's pid).
    pub fn exec(ns: &str, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns, program]);
        cmd
    }

    pub fn veth(&self, side_a: bool) -> String {
        let n = self.addr_a.octets()[2];
        format!("ft{n}{}", if side_a { "a" } else { "b" })
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}
