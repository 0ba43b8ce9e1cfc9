//! OpenSSL uprobes (the kernel side is probes/ebpf/src/tls.rs). A uprobe belongs to a
//! file, not a process: attached once to a libssl, it fires in every process that maps
//! that file, now or later. So the attacher looks for OpenSSL files: the system's own
//! at start, every library or executable that running processes map (containers' copies
//! through `/proc/<pid>/root`), and again for each process that execs.
use std::{
    collections::HashSet,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf,
    programs::{
        UProbe,
        uprobe::{UProbeAttachLocation, UProbeScope},
    },
};

use super::{
    Feature, ProbeReport, ProbeState,
    hooks::{refusal, with_sources},
    mapped_file::MappedFile,
    tls_points,
};

/// Entry programs, the functions they watch, and whether `tls_return` watches the
/// function's return too: reads only (a write's plaintext is its arguments; one trap
/// per call instead of two).
const ENTRIES: [(&str, &str, bool); 4] = [
    ("tls_write", "SSL_write", false),
    ("tls_write_ex", "SSL_write_ex", false),
    ("tls_read", "SSL_read", true),
    ("tls_read_ex", "SSL_read_ex", true),
];
const RETURN: &str = "tls_return";
/// A read's return as a plain uprobe before its `ret` (`tls_points.rs`).
const READ_DONE: &str = "tls_read_done";

/// Where distributions put the system OpenSSL, so that a process started after the
/// agent is covered from its first call.
const SYSTEM_LIBRARY_DIRS: [&str; 5] =
    ["/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib", "/lib64"];

/// Loads the six programs (the verifier checks them even when TLS is off); the
/// kernel's reason when one is refused.
pub fn load(ebpf: &mut Ebpf) -> Result<(), String> {
    for program in ENTRIES.iter().map(|(p, _, _)| *p).chain([RETURN, READ_DONE]) {
        program_of(ebpf, program)?.load().map_err(|err| format!("{program}: {}", refusal(&err)))?;
    }
    Ok(())
}

/// Finds OpenSSL files and attaches to each one once.
#[derive(Default)]
pub struct TlsAttacher {
    /// (device, inode) of every file looked at, with or without OpenSSL in it.
    examined: HashSet<(u64, u64)>,
    /// Files with the uprobes attached.
    pub attached: Vec<PathBuf>,
    /// Why the kernel refused the uprobe programs, if it did: then nothing is attached.
    pub refused: Option<String>,
    /// `http.tls_emulated_probes`.
    pub emulated_probes: bool,
}

impl TlsAttacher {
    pub fn new(emulated_probes: bool) -> Self {
        Self { emulated_probes, ..Self::default() }
    }

    /// The system libraries and every process running now.
    pub fn scan_all(&mut self, ebpf: &mut Ebpf) {
        if self.refused.is_some() {
            return;
        }
        for dir in SYSTEM_LIBRARY_DIRS {
            let Ok(entries) = std::fs::read_dir(dir) else { continue };
            for entry in entries.flatten() {
                if is_libssl(&entry.file_name().to_string_lossy()) {
                    self.examine(ebpf, &entry.path(), false);
                }
            }
        }
        let Ok(proc) = std::fs::read_dir("/proc") else { return };
        for pid in proc.flatten().filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok()) {
            self.scan_process(ebpf, pid);
        }
    }

    /// One process's libssl mappings (as its own mount namespace names them), and its
    /// executable when it maps no libssl (OpenSSL linked in statically).
    pub fn scan_process(&mut self, ebpf: &mut Ebpf, pid: u32) {
        if self.refused.is_some() {
            return;
        }
        let Ok(maps) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else { return };
        let root = PathBuf::from(format!("/proc/{pid}/root"));
        let libraries: HashSet<&str> = maps
            .lines()
            .filter_map(|line| line.split_whitespace().nth(5))
            .filter(|path| path.rsplit('/').next().is_some_and(is_libssl))
            .collect();
        for library in &libraries {
            self.examine(ebpf, &root.join(library.trim_start_matches('/')), false);
        }
        if libraries.is_empty() {
            self.examine(ebpf, Path::new(&format!("/proc/{pid}/exe")), true);
        }
    }

    fn examine(&mut self, ebpf: &mut Ebpf, path: &Path, executable: bool) {
        let Ok(meta) = std::fs::metadata(path) else { return };
        if !meta.is_file() || !self.examined.insert((meta.dev(), meta.ino())) {
            return;
        }
        // An executable without OpenSSL symbols is the common case: nothing to say.
        match attach_file(ebpf, path, self.emulated_probes) {
            Ok(placed) => {
                let shown = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
                tracing::info!(file = %shown.display(), at = %placed.join(" "), "OpenSSL uprobes attached");
                self.attached.push(shown);
            }
            // Through /proc/<pid>/root: a process that exited since its maps were read
            // takes its files with it (a short-lived curl); nothing was missed.
            Err(err) if !executable && !path.exists() => {
                tracing::debug!(file = %path.display(), error = %err, "OpenSSL user exited before the attach");
            }
            Err(err) if !executable => {
                tracing::warn!(file = %path.display(), error = %err, "OpenSSL found but not attached");
            }
            Err(_) => {}
        }
    }

    /// For the log, `flowtel status` and `flowtel.agent.probes.attached`.
    pub fn report(&self) -> ProbeReport {
        let state = match (&self.refused, self.attached.is_empty()) {
            (Some(why), _) => ProbeState::Failed(why.clone()),
            (None, true) => ProbeState::Failed("no OpenSSL library found".into()),
            (None, false) => ProbeState::Attached,
        };
        let files: Vec<String> = self.attached.iter().map(|p| p.display().to_string()).collect();
        ProbeReport {
            feature: Feature::Tls,
            variant: "uprobes",
            program: "tls",
            hook: format!("uprobe SSL_read/SSL_write in {}", files.join(", ")),
            state,
        }
    }
}

fn is_libssl(file_name: &str) -> bool {
    file_name.starts_with("libssl.so")
}

/// Attaches the entry probes, and the return probes to the reads, for every function
/// the file has, each at its cheapest place (`tls_points.rs`). `SSL_write` must be
/// there; the `_ex` forms are OpenSSL 1.1.1 and later. Returns where they went.
fn attach_file(ebpf: &mut Ebpf, path: &Path, emulated: bool) -> Result<Vec<String>, String> {
    let mut placed = Vec::new();
    // Mapped once for the four functions' code (read as touched, never copied whole).
    let file = if emulated { MappedFile::open(path).ok() } else { None };
    for (program, function, returns) in ENTRIES {
        let points = if emulated {
            tls_points::find(file.as_ref().map(MappedFile::bytes), function)
        } else {
            tls_points::CLASSIC
        };
        let entry: &mut UProbe = program_of(ebpf, program)?;
        match entry.attach(UProbeAttachLocation::SymbolOffset(function, points.entry), path, UProbeScope::AllProcesses)
        {
            Ok(_) => {}
            Err(err) if function == "SSL_write" => return Err(with_sources(&err)),
            Err(_) => continue,
        }
        if !returns {
            placed.push(format!("{function}+{:#x}", points.entry));
            continue;
        }
        let done = if let Some(offsets) = &points.returns {
            let done: &mut UProbe = program_of(ebpf, READ_DONE)?;
            for &offset in offsets {
                done.attach(UProbeAttachLocation::SymbolOffset(function, offset), path, UProbeScope::AllProcesses)
                    .map_err(|e| with_sources(&e))?;
            }
            offsets.iter().map(|o| format!("+{o:#x}")).collect::<Vec<_>>().join(",")
        } else {
            let exit: &mut UProbe = program_of(ebpf, RETURN)?;
            exit.attach(function, path, UProbeScope::AllProcesses).map_err(|e| with_sources(&e))?;
            "uretprobe".to_owned()
        };
        placed.push(format!("{function}+{:#x}/{done}", points.entry));
    }
    if placed.is_empty() { Err("no OpenSSL functions".into()) } else { Ok(placed) }
}

fn program_of<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut UProbe, String> {
    ebpf.program_mut(name)
        .ok_or_else(|| format!("no program {name}"))?
        .try_into()
        .map_err(|e: aya::programs::ProgramError| e.to_string())
}
