//! Servers the tests and benchmarks start (dnsmasq, nginx, rotel, ...): each stopped on drop.
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

/// nginx from Debian in namespace `ns` with one `server { ... }` block, its files in
/// `dir`. One process (no master): killing it on drop leaves no orphaned worker.
pub fn nginx(ns: &str, server_block: &str, dir: &std::path::Path) -> Background {
    std::fs::create_dir_all(dir.join("html")).expect("nginx directory");
    let conf = format!(
        "master_process off;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
         events {{ worker_connections 1024; }}\n\
         http {{\n  access_log off;\n  root {d}/html;\n  keepalive_requests 1000000;\n\
         client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d}; uwsgi_temp_path {d}; scgi_temp_path {d};\n\
         {server_block}\n}}\n",
        d = dir.display()
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).expect("nginx.conf");
    let child = Link::exec(ns, "nginx")
        .arg("-c")
        .arg(&path)
        .args(["-g", "daemon off;"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nginx (apt install nginx)");
    // It binds within milliseconds; a request before that would be refused.
    std::thread::sleep(std::time::Duration::from_millis(500));
    Background(child)
}

/// A throwaway certificate and key in `dir` for a TLS test server, made with the
/// openssl command; returns their paths.
pub fn self_signed(dir: &std::path::Path) -> (String, String) {
    std::fs::create_dir_all(dir).expect("certificate directory");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let made = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=flowtel.test"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(Stdio::null())
        .status()
        .expect("openssl (apt install openssl)");
    assert!(made.success(), "openssl req failed");
    (cert.display().to_string(), key.display().to_string())
}
