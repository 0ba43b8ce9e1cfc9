//! Real programs driving known traffic: `scripts/traffic.py` (exact byte counts) run
//! inside a test host's namespace.
use std::{
    io::{BufRead as _, BufReader},
    path::PathBuf,
    process::{Child, ChildStdout, Stdio},
    time::{Duration, Instant},
};

use crate::netns::Link;

pub fn script_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/traffic.py")
}

fn scripts_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts")
}

/// A running traffic program whose stdout lines we can wait for.
pub struct Traffic {
    pub child: Child,
    lines: std::io::Lines<BufReader<ChildStdout>>,
}

impl Traffic {
    pub fn spawn(ns: &str, args: &[&str]) -> Self {
        Self::spawn_script(ns, "traffic.py", args)
    }

    /// Another Python program from `tests/scripts` (a test DNS server, say).
    pub fn spawn_script(ns: &str, script: &str, args: &[&str]) -> Self {
        Self::spawn_script_with_env(ns, script, &[], args)
    }

    /// Like `spawn_script`, with `env` added to the program's environment.
    pub fn spawn_script_with_env(ns: &str, script: &str, env: &[(&str, &str)], args: &[&str]) -> Self {
        let mut cmd = Link::exec(ns, "python3");
        cmd.arg(scripts_dir().join(script)).args(args).envs(env.iter().copied());
        Self::start(cmd)
    }

    /// A program from `tests/scripts` in the host's own namespace.
    pub fn spawn_host_script(script: &str, args: &[&str]) -> Self {
        let mut cmd = std::process::Command::new("python3");
        cmd.arg(scripts_dir().join(script)).args(args);
        Self::start(cmd)
    }

    /// Any command whose stdout lines the test waits for.
    pub fn start(mut cmd: std::process::Command) -> Self {
        let mut child = cmd.stdout(Stdio::piped()).spawn().expect("spawn traffic.py");
        let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        Self { child, lines }
    }

    /// Like `spawn`, but the program first moves itself into cgroup `cgroup_dir`
    /// (`sh` writes its pid there, then execs, so the pid stays the program's), with
    /// `env` added to its environment.
    pub fn spawn_in_cgroup(ns: &str, cgroup_dir: &std::path::Path, env: &[(&str, &str)], args: &[&str]) -> Self {
        let script =
            format!("echo $$ > '{}/cgroup.procs' && exec ip netns exec \"$0\" python3 \"$@\"", cgroup_dir.display());
        let mut cmd = std::process::Command::new("sh");
        cmd.args(["-c", &script, ns]).arg(script_path()).args(args).envs(env.iter().copied());
        Self::start(cmd)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn wait_line(&mut self, expected: &str) {
        match self.lines.next() {
            Some(Ok(line)) if line == expected => {}
            other => panic!("traffic.py: expected {expected:?}, got {other:?}"),
        }
    }

    /// The program's next line; `None` at its end.
    pub fn next_line(&mut self) -> Option<String> {
        self.lines.next().and_then(Result::ok)
    }

    /// Waits for the program to finish successfully.
    pub fn finish(mut self) {
        let status = self.child.wait().expect("wait traffic.py");
        assert!(status.success(), "traffic.py failed: {status}");
    }
}

impl Drop for Traffic {
    /// A server that never finishes by itself (a test DNS server) goes with its test.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Polls `check` until it returns true or `timeout` passes; returns whether it did.
pub fn eventually(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    check()
}

/// `conns` TCP connections from host `b` to a server on host `a` (over IPv6 when `v6`),
/// each sending `up` bytes and getting `down` back. Returns (server pid, client pid).
pub fn tcp_exchange(link: &Link, v6: bool, port: u16, conns: u64, up: u64, down: u64) -> (String, String) {
    tcp_exchange_served_by("tcp-server", link, v6, port, conns, up, down)
}

/// [`tcp_exchange`] with the server answering through sendfile(2).
pub fn tcp_sendfile_exchange(link: &Link, port: u16, conns: u64, up: u64, down: u64) -> (String, String) {
    tcp_exchange_served_by("tcp-sendfile-server", link, false, port, conns, up, down)
}

fn tcp_exchange_served_by(
    server_command: &str,
    link: &Link,
    v6: bool,
    port: u16,
    conns: u64,
    up: u64,
    down: u64,
) -> (String, String) {
    let server_ip = if v6 { link.addr6_a.to_string() } else { link.addr_a.to_string() };
    let (port, conns, up, down) = (port.to_string(), conns.to_string(), up.to_string(), down.to_string());
    let mut server = Traffic::spawn(&link.a, &[server_command, &port, &conns, &up, &down]);
    server.wait_line("ready");
    let mut client = Traffic::spawn(&link.b, &["tcp-client", &server_ip, &port, &conns, &up, &down]);
    let pids = (server.pid().to_string(), client.pid().to_string());
    client.wait_line("done");
    client.finish();
    server.wait_line("done");
    server.finish();
    pids
}

/// What one wrk run reported.
pub struct WrkRun {
    /// Responses wrk read completely.
    pub requests: u64,
    pub per_second: f64,
    pub pid: u32,
}

/// wrk (Debian) in namespace `ns` against `url`, one thread. With `delay_ms` > 0 each
/// connection waits that long after each response (a wrk script: wrk has no rate
/// option, and wrk2 is not in Debian), so `connections` sets the rate.
pub fn wrk(ns: &str, url: &str, seconds: u64, connections: u32, delay_ms: u64) -> WrkRun {
    let mut cmd = Link::exec(ns, "wrk");
    if delay_ms > 0 {
        let script = std::env::temp_dir().join(format!("flowtel-wrk-delay-{delay_ms}-{}.lua", std::process::id()));
        std::fs::write(&script, format!("function delay()\n  return {delay_ms}\nend\n")).expect("wrk script");
        cmd.arg("-s").arg(script);
    }
    let child = cmd
        .args(["-t", "1", "-c", &connections.to_string(), "-d", &format!("{seconds}s"), url])
        .stdout(Stdio::piped())
        .spawn()
        .expect("wrk (apt install wrk)");
    let pid = child.id();
    let out = String::from_utf8_lossy(&child.wait_with_output().expect("wrk output").stdout).into_owned();
    let requests = out
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("wrk said: {out}"));
    let per_second = out
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("wrk said: {out}"));
    WrkRun { requests, per_second, pid }
}
