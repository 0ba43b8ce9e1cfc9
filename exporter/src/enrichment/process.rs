use std::{collections::HashMap, fs, path::Path};

use super::{
    cgroups::CgroupPaths,
    container::{ContainerInfo, from_cgroup_path, from_proc_cgroup},
};
use crate::events::KernelProcess;

/// `process.command` and `process.command_line` are cut here: command lines can be long.
const COMMAND_MAX: usize = 256;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessInfo {
    pub pid: u32,
    pub executable_name: String,
    /// `process.command`: the command alone (`argv[0]`); arguments often carry secrets.
    pub command: Option<String>,
    /// `process.command_line`: the whole command line, read only when a setting asks.
    pub command_line: Option<String>,
    pub container: ContainerInfo,
    /// `OTEL_SERVICE_NAME` from the process's own environment (else `service.name` from
    /// its `OTEL_RESOURCE_ATTRIBUTES`): an instrumented app's chosen name wins over its
    /// executable's, as OpenTelemetry users expect.
    pub otel_service_name: Option<String>,
    /// The rest of the process's own `OTEL_RESOURCE_ATTRIBUTES` (bounded).
    pub otel_resource_attributes: Vec<(String, String)>,
    /// `process.creation.time`, ISO 8601 UTC to the second; `None` once it has exited.
    pub creation_time: Option<String>,
}

/// Environments are read up to this size: the variable is near the start in practice,
/// and a huge environment must not cost the agent memory.
const ENVIRON_MAX: u64 = 64 * 1024;

/// At most this many of a process's own resource attributes are taken, each value cut
/// at `ATTRIBUTE_VALUE_MAX` bytes: an environment is not a place to trust for sizes.
const ATTRIBUTES_MAX: usize = 32;
const ATTRIBUTE_VALUE_MAX: usize = 256;

/// What an OpenTelemetry-instrumented process says about itself in its environment.
#[derive(Debug, Default, PartialEq, Eq)]
struct OtelEnvironment {
    service_name: Option<String>,
    resource_attributes: Vec<(String, String)>,
}

fn otel_environment(dir: &Path) -> OtelEnvironment {
    use std::io::Read as _;
    let mut raw = Vec::new();
    let Ok(file) = fs::File::open(dir.join("environ")) else { return OtelEnvironment::default() };
    if file.take(ENVIRON_MAX).read_to_end(&mut raw).is_err() {
        return OtelEnvironment::default();
    }
    let variable = |name: &[u8]| {
        raw.split(|&b| b == 0)
            .find_map(|entry| entry.strip_prefix(name))
            .map(|value| String::from_utf8_lossy(value).trim().to_owned())
            .filter(|value| !value.is_empty())
    };
    let mut resource_attributes =
        variable(b"OTEL_RESOURCE_ATTRIBUTES=").map(|v| parse_resource_attributes(&v)).unwrap_or_default();
    let from_attributes =
        resource_attributes.iter().position(|(k, _)| k == "service.name").map(|i| resource_attributes.remove(i).1);
    OtelEnvironment { service_name: variable(b"OTEL_SERVICE_NAME=").or(from_attributes), resource_attributes }
}

/// `key1=value1,key2=value2`, values percent-encoded (the OpenTelemetry SDK
/// environment specification); malformed pairs are skipped, as the SDKs do.
fn parse_resource_attributes(text: &str) -> Vec<(String, String)> {
    text.split(',')
        .filter_map(|pair| {
            let (key, value) = pair.split_once('=')?;
            let (key, value) = (key.trim(), percent_decode(value.trim()));
            let mut end = value.len().min(ATTRIBUTE_VALUE_MAX);
            while !value.is_char_boundary(end) {
                end -= 1;
            }
            (!key.is_empty() && !value.is_empty()).then(|| (key.to_owned(), value[..end].to_owned()))
        })
        .take(ATTRIBUTES_MAX)
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// When the process started, from `/proc/<pid>/stat` field 22 (clock ticks after boot)
/// and the boot time in `/proc/stat`.
fn creation_time(stat: &str) -> Option<String> {
    let after_name = stat.rsplit_once(')')?.1;
    let start_ticks: u64 = after_name.split_whitespace().nth(19)?.parse().ok()?;
    let boot: u64 =
        fs::read_to_string("/proc/stat").ok()?.lines().find_map(|l| l.strip_prefix("btime "))?.trim().parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks_per_second = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).ok().filter(|&t| t > 0)?;
    Some(iso8601_utc(boot + start_ticks / ticks_per_second))
}

/// Seconds since the Unix epoch as `YYYY-MM-DDThh:mm:ssZ` (civil-from-days, proleptic
/// Gregorian calendar).
fn iso8601_utc(unix_seconds: u64) -> String {
    let (days, seconds) = (unix_seconds / 86_400, unix_seconds % 86_400);
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era = (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 { month_index + 3 } else { month_index - 9 };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", seconds / 3_600, seconds % 3_600 / 60, seconds % 60)
}

/// Process identity by pid, read from /proc once per process and kept while it lives.
#[derive(Default)]
pub struct ProcessCache {
    entries: HashMap<u32, ProcessInfo>,
    /// Whether `process.command_line` is read (`telemetry.process_command_line`).
    command_line: bool,
}

impl ProcessCache {
    pub fn new(command_line: bool) -> Self {
        Self { entries: HashMap::new(), command_line }
    }

    /// The process's identity from /proc, or, when it has already exited, from what the
    /// probes recorded (its `comm`, and its container through its cgroup id).
    pub fn lookup(&mut self, pid: u32, kernel: Option<&KernelProcess>, cgroups: &mut CgroupPaths) -> &ProcessInfo {
        let command_line = self.command_line;
        self.entries.entry(pid).or_insert_with(|| {
            let mut info = read_proc(Path::new("/proc"), pid, kernel.map(|k| k.name.as_str()), command_line);
            if info.command.is_none()
                && info.container == ContainerInfo::default()
                && let Some(path) = kernel.and_then(|k| cgroups.path(k.cgroup_id))
            {
                info.container = from_cgroup_path(path);
            }
            info
        })
    }

    /// A process exec'd: reads it afresh and says whether it is now another program.
    /// Not when it was first read after the exec already (`ip netns exec dig` execs
    /// before dig's first packet). When it has exited since, the name the probe
    /// recorded at the exec (`kernel`) tells.
    pub fn refresh(&mut self, pid: u32, kernel: Option<&KernelProcess>) -> bool {
        let Some(cached) = self.entries.get_mut(&pid) else { return false };
        let fresh = read_proc(Path::new("/proc"), pid, kernel.map(|k| k.name.as_str()), self.command_line);
        let changed = if fresh.command.is_some() {
            fresh != *cached
        } else {
            // Gone: compare names as the kernel keeps them (`comm`, 15 bytes at most).
            let comm: String = cached.executable_name.chars().take(15).collect();
            kernel.is_some() && fresh.executable_name != comm
        };
        if changed {
            *cached = fresh;
        }
        changed
    }

    /// A process exited (the kernel said so): its pid may come back as another process.
    pub fn forget(&mut self, pid: u32) {
        self.entries.remove(&pid);
    }

    /// Forgets processes that /proc shows gone (those whose exit the kernel reported
    /// are forgotten already), so a reused pid is read afresh.
    pub fn forget_exited(&mut self) {
        self.entries.retain(|pid, _| Path::new("/proc").join(pid.to_string()).exists());
    }
}

fn read_proc(proc_root: &Path, pid: u32, kernel_name: Option<&str>, with_command_line: bool) -> ProcessInfo {
    let dir = proc_root.join(pid.to_string());
    let exe = fs::read_link(dir.join("exe"))
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().trim_end_matches(" (deleted)").to_owned()));
    let comm = fs::read_to_string(dir.join("comm")).ok().map(|s| s.trim_end().to_owned());
    let cmdline = fs::read(dir.join("cmdline")).ok().filter(|c| !c.is_empty());
    let bounded = |bytes: &[u8]| -> String {
        let mut text: String = String::from_utf8_lossy(bytes).chars().take(COMMAND_MAX).collect();
        text.shrink_to_fit();
        text
    };
    let command = cmdline.as_deref().map(|raw| bounded(raw.split(|&b| b == 0).next().unwrap_or_default()));
    let command_line = cmdline.as_deref().filter(|_| with_command_line).map(|raw| {
        let joined: Vec<u8> =
            raw.strip_suffix(b"\0").unwrap_or(raw).iter().map(|&b| if b == 0 { b' ' } else { b }).collect();
        bounded(&joined)
    });
    let container = fs::read_to_string(dir.join("cgroup")).map(|text| from_proc_cgroup(&text)).unwrap_or_default();
    let otel = otel_environment(&dir);
    let creation_time = fs::read_to_string(dir.join("stat")).ok().and_then(|stat| creation_time(&stat));
    ProcessInfo {
        creation_time,
        pid,
        container,
        otel_service_name: otel.service_name,
        otel_resource_attributes: otel.resource_attributes,
        executable_name: exe
            .or(comm)
            .or_else(|| kernel_name.map(str::to_owned))
            .unwrap_or_else(|| "unknown".to_owned()),
        command,
        command_line,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process() {
        let me = std::process::id();
        let info = read_proc(Path::new("/proc"), me, None, true);
        let exe = std::env::current_exe().unwrap();
        assert_eq!(info.executable_name, exe.file_name().unwrap().to_string_lossy());
        assert!(info.command.unwrap().len() <= COMMAND_MAX);
    }

    #[test]
    fn the_command_line_with_its_arguments_only_when_asked() {
        let root = std::env::temp_dir().join(format!("flowtel-cmdline-{}", std::process::id()));
        std::fs::create_dir_all(root.join("7")).unwrap();
        std::fs::write(root.join("7/cmdline"), b"/usr/bin/curl\0-H\0Authorization: Bearer s3cret\0").unwrap();
        let private = read_proc(&root, 7, None, false);
        assert_eq!((private.command.as_deref(), private.command_line), (Some("/usr/bin/curl"), None));
        let asked = read_proc(&root, 7, None, true);
        assert_eq!(asked.command_line.as_deref(), Some("/usr/bin/curl -H Authorization: Bearer s3cret"));
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn otel_service_name_and_resource_attributes_come_from_the_environment() {
        let dir = std::env::temp_dir().join(format!("flowtel-environ-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("environ"), b"PATH=/bin\0OTEL_SERVICE_NAME=checkout\0HOME=/\0").unwrap();
        assert_eq!(otel_environment(&dir).service_name.as_deref(), Some("checkout"));
        std::fs::write(dir.join("environ"), b"OTEL_SERVICE_NAME=\0").unwrap();
        assert_eq!(otel_environment(&dir), OtelEnvironment::default());
        let attrs = b"OTEL_RESOURCE_ATTRIBUTES=service.name=cart, service.version=1.2,team=a%2Cb,broken,=x\0";
        std::fs::write(dir.join("environ"), attrs).unwrap();
        let env = otel_environment(&dir);
        assert_eq!(env.service_name.as_deref(), Some("cart"));
        let expected = [("service.version", "1.2"), ("team", "a,b")].map(|(k, v)| (k.to_owned(), v.to_owned()));
        assert_eq!(env.resource_attributes, expected);
        std::fs::write(dir.join("environ"), [b"OTEL_SERVICE_NAME=wins\0".as_slice(), attrs].concat()).unwrap();
        assert_eq!(otel_environment(&dir).service_name.as_deref(), Some("wins"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn resource_attributes_are_bounded() {
        let many: Vec<String> = (0..100).map(|i| format!("k{i}={}", "v".repeat(1000))).collect();
        let parsed = parse_resource_attributes(&many.join(","));
        assert_eq!(parsed.len(), ATTRIBUTES_MAX);
        assert!(parsed.iter().all(|(_, v)| v.len() == ATTRIBUTE_VALUE_MAX));
    }

    #[test]
    fn creation_time_is_iso8601() {
        assert_eq!(iso8601_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso8601_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(iso8601_utc(1_795_617_045), "2026-11-25T14:30:45Z");
        let mine = read_proc(Path::new("/proc"), std::process::id(), None, false).creation_time.unwrap();
        assert!(mine.starts_with("20") && mine.ends_with('Z') && mine.len() == 20, "{mine}");
    }

    #[test]
    fn exited_process_falls_back_to_kernel_name() {
        let info = read_proc(Path::new("/nonexistent"), 4_000_000, Some("curl"), false);
        assert_eq!(info.executable_name, "curl");
        assert_eq!(info.command, None);
        let info = read_proc(Path::new("/nonexistent"), 4_000_000, None, false);
        assert_eq!(info.executable_name, "unknown");
    }
}
