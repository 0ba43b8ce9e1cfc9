//! rotel (from `PyPI`), a third-party OpenTelemetry collector written in Rust, as a real OTLP
//! hop between the agent and the test receiver.
use std::{process::Command, time::Duration};

use crate::{free_port, servers::Background, traffic::eventually};

/// The rotel-agent binary pip installed (glibc only: it also runs on the local bookworm base).
pub fn rotel_binary() -> String {
    let out = Command::new("python3")
        .args(["-c", "import os, rotel; print(os.path.join(os.path.dirname(rotel.__file__), 'rotel-agent'))"])
        .output()
        .expect("python3");
    let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(std::path::Path::new(&path).exists(), "rotel is not installed (pip install rotel; scripts/setup.sh does)");
    path
}

/// A running rotel that forwards OTLP to `forward_to` (an `http://host:port` gRPC
/// endpoint); stopped on drop.
pub struct Rotel {
    _child: Background,
    /// Its OTLP/gRPC listening port on 127.0.0.1.
    pub grpc_port: u16,
}

impl Rotel {
    pub fn start(forward_to: &str) -> Self {
        let (grpc, http) = (free_port(), free_port());
        let child = Command::new(rotel_binary())
            .args(["start", "--otlp-grpc-endpoint", &format!("127.0.0.1:{grpc}")])
            .args(["--otlp-http-endpoint", &format!("127.0.0.1:{http}")])
            .args(["--exporter", "otlp", "--otlp-exporter-endpoint", forward_to])
            .args(["--batch-timeout", "200ms"])
            // rotel logs to stdout; keep it for a failing run.
            .stdout(std::fs::File::create(std::env::temp_dir().join(format!("flowtel-e2e-rotel-{grpc}.log"))).unwrap())
            .spawn()
            .expect("start rotel-agent");
        let rotel = Self { _child: Background(child), grpc_port: grpc };
        let up = eventually(Duration::from_secs(10), || std::net::TcpStream::connect(("127.0.0.1", grpc)).is_ok());
        assert!(up, "rotel did not listen on {grpc}");
        rotel
    }
}
