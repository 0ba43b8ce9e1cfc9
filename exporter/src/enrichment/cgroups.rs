//! cgroup v2 ids (what `bpf_get_current_cgroup_id` returns: the cgroup directory's inode
//! number) back to paths, for processes that exited before /proc could be read.
use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

/// How deep the walk goes: kubepods paths are 4-5 levels; this bounds a pathological tree.
const MAX_DEPTH: usize = 8;
/// At most one walk of the hierarchy per this period, however many misses.
const REWALK_AFTER: Duration = Duration::from_secs(5);

#[derive(Default)]
pub struct CgroupPaths {
    root: Option<PathBuf>,
    by_id: HashMap<u64, String>,
    walked_at: Option<Instant>,
}

impl CgroupPaths {
    pub fn new() -> Self {
        Self { root: crate::mounts::cgroup2_root(), ..Self::default() }
    }

    /// The cgroup's path relative to the hierarchy root, as /proc/<pid>/cgroup shows it.
    pub fn path(&mut self, id: u64) -> Option<&str> {
        let stale = self.walked_at.is_none_or(|at| at.elapsed() >= REWALK_AFTER);
        if !self.by_id.contains_key(&id) && stale {
            self.walk();
        }
        self.by_id.get(&id).map(String::as_str)
    }

    fn walk(&mut self) {
        self.walked_at = Some(Instant::now());
        let Some(root) = self.root.clone() else { return };
        self.by_id.clear();
        let mut stack = vec![(root.clone(), 0)];
        while let Some((dir, depth)) = stack.pop() {
            if let Ok(meta) = std::fs::metadata(&dir) {
                let relative = dir.strip_prefix(&root).unwrap_or(Path::new(""));
                self.by_id.insert(meta.ino(), format!("/{}", relative.display()));
            }
            if depth >= MAX_DEPTH {
                continue;
            }
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push((entry.path(), depth + 1));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_cgroup_id_maps_back_to_its_path() {
        let mut paths = CgroupPaths::new();
        let Some(root) = paths.root.clone() else {
            assert!(std::env::var_os("CI").is_none(), "CI machines have cgroup v2");
            eprintln!("SKIPPED: no cgroup v2 hierarchy here");
            return;
        };
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        let relative = own.lines().find_map(|l| l.strip_prefix("0::")).expect("a v2 line").to_owned();
        let dir = root.join(relative.trim_start_matches('/'));
        let id = std::fs::metadata(&dir).unwrap().ino();
        assert_eq!(paths.path(id), Some(relative.as_str()));
        assert_eq!(paths.path(u64::MAX), None);
    }
}
