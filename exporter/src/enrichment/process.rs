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
    fn exited_process_falls_back_to_kernel_name() {
        let info = read_proc(Path::new("/nonexistent"), 4_000_000, Some("curl"));
        assert_eq!(info.executable_name, "curl");
        assert_eq!(info.command, None);
        let info = read_proc(Path::new("/nonexistent"), 4_000_000, None);
        assert_eq!(info.executable_name, "unknown");
    }
}
