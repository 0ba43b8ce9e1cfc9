use std::{collections::HashMap, fs, path::Path};

use super::{
    cgroups::CgroupPaths,
    container::{ContainerInfo, from_cgroup_path, from_proc_cgroup},
};
use crate::events::KernelProcess;

/// `process.command` is cut here: command lines can be long and may carry secrets
/// past the first arguments.
const COMMAND_MAX: usize = 256;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessInfo {
    pub pid: u32,
    pub executable_name: String,
    pub command: Option<String>,
    pub container: ContainerInfo,
    /// `OTEL_SERVICE_NAME` from the process's own environment: an instrumented app's
    /// chosen name wins over its executable's, as OpenTelemetry users expect.
    pub otel_service_name: Option<String>,
}

/// Environments are read up to this size: the variable is near the start in practice,
/// and a huge environment must not cost the agent memory.
const ENVIRON_MAX: u64 = 64 * 1024;

fn otel_service_name(dir: &Path) -> Option<String> {
    use std::io::Read as _;
    let mut raw = Vec::new();
    fs::File::open(dir.join("environ")).ok()?.take(ENVIRON_MAX).read_to_end(&mut raw).ok()?;
    raw.split(|&b| b == 0)
        .find_map(|entry| entry.strip_prefix(b"OTEL_SERVICE_NAME="))
        .map(|value| String::from_utf8_lossy(value).trim().to_owned())
        .filter(|name| !name.is_empty())
}

/// Process identity by pid, read from /proc once per process and kept while it lives.
#[derive(Default)]
pub struct ProcessCache {
    entries: HashMap<u32, ProcessInfo>,
}

impl ProcessCache {
    /// The process's identity from /proc, or, when it has already exited, from what the
    /// probes recorded (its `comm`, and its container through its cgroup id).
    pub fn lookup(&mut self, pid: u32, kernel: Option<&KernelProcess>, cgroups: &mut CgroupPaths) -> &ProcessInfo {
        self.entries.entry(pid).or_insert_with(|| {
            let mut info = read_proc(Path::new("/proc"), pid, kernel.map(|k| k.name.as_str()));
            if info.command.is_none()
                && info.container == ContainerInfo::default()
                && let Some(path) = kernel.and_then(|k| cgroups.path(k.cgroup_id))
            {
                info.container = from_cgroup_path(path);
            }
            info
        })
    }

    /// Forgets processes that have exited, so a reused pid is read afresh.
    pub fn forget_exited(&mut self) {
        self.entries.retain(|pid, _| Path::new("/proc").join(pid.to_string()).exists());
    }
}

fn read_proc(proc_root: &Path, pid: u32, kernel_name: Option<&str>) -> ProcessInfo {
    let dir = proc_root.join(pid.to_string());
    let exe = fs::read_link(dir.join("exe"))
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().trim_end_matches(" (deleted)").to_owned()));
    let comm = fs::read_to_string(dir.join("comm")).ok().map(|s| s.trim_end().to_owned());
    let command = fs::read(dir.join("cmdline")).ok().filter(|c| !c.is_empty()).map(|raw| {
        let mut text: String =
            String::from_utf8_lossy(&raw).trim_end_matches('\0').replace('\0', " ").chars().take(COMMAND_MAX).collect();
        text.shrink_to_fit();
        text
    });
    let container = fs::read_to_string(dir.join("cgroup")).map(|text| from_proc_cgroup(&text)).unwrap_or_default();
    ProcessInfo {
        pid,
        container,
        otel_service_name: otel_service_name(&dir),
        executable_name: exe
            .or(comm)
            .or_else(|| kernel_name.map(str::to_owned))
            .unwrap_or_else(|| "unknown".to_owned()),
        command,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process() {
        let me = std::process::id();
        let info = read_proc(Path::new("/proc"), me, None);
        let exe = std::env::current_exe().unwrap();
        assert_eq!(info.executable_name, exe.file_name().unwrap().to_string_lossy());
        assert!(info.command.unwrap().len() <= COMMAND_MAX);
    }

    #[test]
    fn otel_service_name_comes_from_the_environment() {
        let dir = std::env::temp_dir().join(format!("flowtel-environ-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("environ"), b"PATH=/bin\0OTEL_SERVICE_NAME=checkout\0HOME=/\0").unwrap();
        assert_eq!(otel_service_name(&dir).as_deref(), Some("checkout"));
        std::fs::write(dir.join("environ"), b"OTEL_SERVICE_NAME=\0").unwrap();
        assert_eq!(otel_service_name(&dir), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn exited_process_falls_back_to_kernel_name() {
        let info = read_proc(Path::new("/nonexistent"), 4_000_000, Some("curl"));
        assert_eq!(info.executable_name, "curl");
        assert_eq!(info.command, None);
        let info = read_proc(Path::new("/nonexistent"), 4_000_000, None);
        assert_eq!(info.executable_name, "unknown");
    }
}
