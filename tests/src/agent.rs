//! The real agent binary as a child process.
use std::{
    io::{BufRead as _, BufReader},
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

/// `target/release/flowtel`, built by the README's test command before the tests run.
pub fn binary() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    let path = target.join("release/flowtel");
    assert!(path.exists(), "{} is missing: run `cargo build --release` first (scripts/test.sh does)", path.display());
    path
}

pub struct Agent {
    child: Child,
    log: Arc<Mutex<String>>,
}

/// Settings every test agent of this run gets (`VAR=VALUE ...`): the kernel matrix runs
/// some tests again with, say, the kprobe fallback forced (tests/kernels/plan).
pub const AGENT_ENV: &str = "FLOWTEL_E2E_AGENT_ENV";

/// The `AGENT_ENV` settings, as pairs.
pub fn run_settings() -> Vec<(String, String)> {
    let settings = std::env::var(AGENT_ENV).unwrap_or_default();
    let pairs = settings.split_whitespace().filter_map(|word| word.split_once('='));
    pairs.map(|(key, value)| (key.to_owned(), value.to_owned())).collect()
}

/// The environment every test agent starts from: fast export, no inherited OTEL_* noise,
/// then the run's own settings.
fn base_command() -> Command {
    let mut cmd = Command::new(binary());
    for (key, _) in std::env::vars() {
        if key.starts_with("OTEL_") || key.starts_with("FLOWTEL_") {
            cmd.env_remove(key);
        }
    }
    cmd.env("OTEL_METRIC_EXPORT_INTERVAL", "1000").env("RUST_LOG", "");
    cmd.envs(run_settings());
    cmd
}

impl Agent {
    /// Starts `flowtel run` with `env` and waits until it says it is observing.
    pub fn start(env: &[(&str, &str)]) -> Self {
        let mut cmd = base_command();
        cmd.arg("run").envs(env.iter().copied()).stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn flowtel");
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().expect("stderr");
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(mut l) = sink.lock() {
                    l.push_str(&line);
                    l.push('\n');
                }
            }
        });
        let mut agent = Self { child, log };
        // Half a second on the host; in an emulated matrix guest sharing the cores with
        // another, loading the probes has taken over 30 s.
        agent.wait_for_log("flowtel is observing", Duration::from_mins(2));
        agent
    }

    pub fn log(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) {
        let start = Instant::now();
        while !self.log().contains(needle) {
            if let Ok(Some(status)) = self.child.try_wait() {
                std::thread::sleep(Duration::from_millis(100)); // let the log reader finish
                panic!("agent exited ({status}) before logging {needle:?}; log:\n{}", self.log());
            }
            assert!(start.elapsed() < timeout, "agent did not log {needle:?} in {timeout:?}; log:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then wait: returns the exit status and the whole log.
    pub fn stop(mut self) -> (ExitStatus, String) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                std::thread::sleep(Duration::from_millis(50));
                return (status, self.log());
            }
            assert!(start.elapsed() < Duration::from_secs(20), "agent did not exit on SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the agent to completion with `args` and `env` (for start-up errors).
pub fn run_to_exit(args: &[&str], env: &[(&str, &str)]) -> (ExitStatus, String) {
    let out = base_command().args(args).envs(env.iter().copied()).output().expect("run flowtel");
    (out.status, String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout))
}

/// The usual arrangement: a gRPC receiver and an agent exporting to it every second.
pub fn with_grpc_receiver() -> (crate::receiver::Receiver, Agent) {
    with_grpc_receiver_and(&[])
}

/// [`with_grpc_receiver`], with `env` added to the agent's environment.
pub fn with_grpc_receiver_and(env: &[(&str, &str)]) -> (crate::receiver::Receiver, Agent) {
    let receiver = crate::receiver::Receiver::grpc("127.0.0.1:0");
    let endpoint = format!("http://{}", receiver.addr);
    let mut all = vec![("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str())];
    all.extend_from_slice(env);
    let agent = Agent::start(&all);
    (receiver, agent)
}
