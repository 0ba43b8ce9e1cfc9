//! The Docker engine the container tests drive (the one `docker` reaches; scripts/test.sh
//! starts one when none answers): flowtel's image as `scripts/image.sh --prebuilt`
//! builds it, the tests' app image on the local Debian base, containers removed on drop.
use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::OnceLock,
};

/// flowtel's image, as the README's commands name it.
pub const FLOWTEL_IMAGE: &str = "flowtel:local";
/// nginx, curl and the image's own libssl (tests/images/app.Dockerfile).
pub const APP_IMAGE: &str = "flowtel-test-app:local";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs `docker args` and returns its stdout; panics with its stderr when it fails.
pub fn docker(args: &[&str]) -> String {
    let out = docker_output(args);
    assert!(
        out.status.success(),
        "docker {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

pub fn docker_output(args: &[&str]) -> Output {
    Command::new("docker").args(args).output().expect("docker (apt install docker.io)")
}

/// False (after saying so loudly) when no engine answers; under CI that fails instead.
pub fn engine_or_skip(test: &str) -> bool {
    if !crate::privileged_or_skip(test) {
        return false;
    }
    let answers = Command::new("docker").args(["info", "--format", "{{.ServerVersion}}"]).output();
    if answers.as_ref().is_ok_and(|out| out.status.success()) {
        return true;
    }
    let why = format!("{test} needs a Docker engine (scripts/test.sh starts one): {answers:?}");
    assert!(std::env::var("CI").is_err(), "under CI nothing skips: {why}");
    eprintln!("\n!!!!!!!! SKIPPED: {why} !!!!!!!!\n");
    false
}

/// Builds both images once per test process: flowtel's around the binary this build
/// made, and the app image on the local base.
pub fn images() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let status = Command::new("bash")
            .arg(repo().join("scripts/image.sh"))
            .arg("--prebuilt")
            .env("IMAGE", FLOWTEL_IMAGE)
            .status()
            .expect("scripts/image.sh");
        assert!(status.success(), "scripts/image.sh --prebuilt failed");
        let status =
            Command::new("bash").arg(repo().join("scripts/image.sh")).arg("--base").status().expect("image.sh");
        assert!(status.success(), "scripts/image.sh --base failed");
        let images = repo().join("tests/images");
        let dockerfile = images.join("app.Dockerfile");
        docker(&["build", "-q", "--network", "host", "-t", APP_IMAGE, "-f", &path(&dockerfile), &path(&images)]);
    });
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

/// A container started with `docker run -d`; removed (with its volumes) on drop.
pub struct Container {
    pub id: String,
}

impl Container {
    /// `docker run -d args...`.
    pub fn run(args: &[&str]) -> Self {
        let id = docker(&[&["run", "-d"], args].concat());
        Self { id }
    }

    /// The host pid of the container's first process.
    pub fn pid(&self) -> u32 {
        docker(&["inspect", "-f", "{{.State.Pid}}", &self.id]).parse().expect("a pid")
    }

    pub fn logs(&self) -> String {
        let out = docker_output(&["logs", &self.id]);
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = docker_output(&["rm", "-f", "-v", &self.id]);
    }
}
