//! Waiting until no BPF program that began before now is still running.
//!
//! The table swap needs it: a program that read the old active index just before the
//! swap may still be adding to the retiring table. Every non-sleepable BPF program
//! (tracepoints, raw tracepoints, fentry/kprobes, uprobes, cgroup and socket programs)
//! runs inside an RCU read-side section, and the kernel ends an update of a
//! map-of-maps slot from user space with `synchronize_rcu()` (`maybe_wait_bpf_programs`,
//! Linux 5.0+), so that "user space, when we return to it, knows that all programs
//! that could be running use the new map value". Updating a private one-slot
//! `ARRAY_OF_MAPS` is therefore a barrier: when it returns, every program that could
//! have seen the old index has finished, and every later one sees the new index.
//! The kernel's own selftests use the same update to force a grace period.
//! <https://elixir.bootlin.com/linux/v6.12/source/kernel/bpf/syscall.c#L154>
use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

// include/uapi/linux/bpf.h
const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_MAP_TYPE_ARRAY_OF_MAPS: u32 = 12;

/// The leading fields of `union bpf_attr` for `BPF_MAP_CREATE`; the kernel reads the
/// rest as zero.
#[repr(C)]
#[derive(Default)]
struct MapCreate {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
}

/// `union bpf_attr` for `BPF_MAP_UPDATE_ELEM`.
#[repr(C)]
struct MapUpdate {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// A one-slot map of maps and the map it holds; see the module comment.
pub struct ProgramBarrier {
    outer: OwnedFd,
    inner: OwnedFd,
}

impl ProgramBarrier {
    pub fn new() -> io::Result<Self> {
        let array = MapCreate {
            map_type: BPF_MAP_TYPE_ARRAY,
            key_size: 4,
            value_size: 4,
            max_entries: 1,
            ..MapCreate::default()
        };
        let inner = create(&array)?;
        let of_maps = MapCreate {
            map_type: BPF_MAP_TYPE_ARRAY_OF_MAPS,
            key_size: 4,
            value_size: 4,
            max_entries: 1,
            inner_map_fd: fd_u32(&inner),
            ..MapCreate::default()
        };
        let outer = create(&of_maps)?;
        Ok(Self { outer, inner })
    }

    /// Returns once every BPF program running when it was called has finished.
    pub fn wait(&self) -> io::Result<()> {
        let (key, value) = (0u32, fd_u32(&self.inner));
        let update = MapUpdate {
            map_fd: fd_u32(&self.outer),
            _pad: 0,
            key: std::ptr::addr_of!(key) as u64,
            value: std::ptr::addr_of!(value) as u64,
            flags: 0,
        };
        bpf(BPF_MAP_UPDATE_ELEM, &update).map(drop)
    }
}

fn fd_u32(fd: &OwnedFd) -> u32 {
    u32::try_from(fd.as_raw_fd()).expect("an open descriptor is not negative")
}

fn create(attr: &MapCreate) -> io::Result<OwnedFd> {
    let fd = bpf(BPF_MAP_CREATE, attr)?;
    let fd = i32::try_from(fd).map_err(|_| io::Error::other("bpf(BPF_MAP_CREATE) returned no descriptor"))?;
    // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn bpf<T>(command: libc::c_long, attr: &T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a live `#[repr(C)]` prefix of `union bpf_attr` of the given
    // size; the kernel reads it and nothing else. Pointers inside it point to live locals.
    let ret = unsafe { libc::syscall(libc::SYS_bpf, command, std::ptr::from_ref(attr), size_of::<T>()) };
    if ret < 0 { Err(io::Error::last_os_error()) } else { Ok(ret) }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    /// The barrier is made and waits, as root (the agent's own privileges).
    #[test]
    fn the_barrier_is_made_and_waits_for_a_grace_period() {
        // SAFETY: no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            assert!(std::env::var_os("CI").is_none(), "CI runs as root");
            eprintln!("SKIPPED the_barrier_is_made_and_waits_for_a_grace_period: needs root");
            return;
        }
        let barrier = ProgramBarrier::new().expect("map of maps");
        let started = Instant::now();
        for _ in 0..3 {
            barrier.wait().expect("the slot update");
        }
        eprintln!("three grace periods in {:?}", started.elapsed());
    }
}
