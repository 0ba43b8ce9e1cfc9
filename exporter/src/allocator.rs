//! How the C allocator holds the agent's memory: reused while the agent works, given
//! back after an interval in which workloads retired, else when much lies free.
//!
//! Two costs pull apart. Every batch of exchanges and every span flush allocates and
//! frees blocks of a hundred KiB to a few MiB; were those blocks mappings of their own
//! (as a low mmap threshold makes them), or were the heap's top given back on a free,
//! each would come back as fresh pages that the kernel zeroes on first touch: about one
//! page fault per HTTP exchange, measured (`bench http-cost`, agent page faults per
//! request), and on a virtual machine whose first touch of a page goes through the
//! hypervisor, half of the agent's CPU. So large blocks come from the heap, and a free
//! does not give memory back.
//!
//! But the OpenTelemetry SDK gives every instrument a series map sized for the
//! cardinality limit (about 130 KiB at 2000) of which a process fills a few entries: a
//! map carved from heap pages touched before costs its full size, untouched parts and
//! all. So after a delivered interval in which workloads retired, [`give_back`] returns
//! every free page of every arena to the kernel: a map made later faults in only what
//! it touches (with 40 short-lived processes a second, giving back every other 5 s
//! interval instead of each cost 42 MiB of peak RSS, `bench workloads`). With no
//! workload retired, at most every [`GIVE_BACK_GAP`] and only when more than
//! [`KEEP_FREE`] lies free: giving back every interval at the tests' 1 s interval made
//! the span and batch buffers fresh pages every second, half of the agent's CPU on this
//! VM (`bench http-cost`, 0.19 faults per request), and so did a plain 10 s floor under
//! a steady HTTP load, whose buffers keep 40 to 90 MiB of the heap cycling between
//! used and free (0.05 to 0.13 faults per request).

/// Blocks of this size and more get a mapping of their own: rare ones, far larger than
/// any batch or flush.
const MMAP_THRESHOLD: libc::c_int = 32 << 20;
/// Free memory at the top of an arena past this much is given back on a free; this
/// high, in practice only [`give_back`] does.
const TRIM_THRESHOLD: libc::c_int = 1 << 30;

/// Sets the thresholds (glibc; elsewhere nothing to do). Call before the agent
/// allocates in earnest. Fixing them also stops glibc from moving them as blocks come
/// and go.
pub fn configure() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets allocator parameters; no pointer is involved.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
    }
}

/// The least time between two [`give_back`]s when no workload retired.
pub const GIVE_BACK_GAP: std::time::Duration = std::time::Duration::from_secs(10);
/// Free heap kept for reuse when no workload retired: a steady load's working set of
/// buffers, which would otherwise come back as fresh pages after each give-back.
pub const KEEP_FREE: usize = 64 << 20;

/// Returns the free pages of every arena to the kernel (glibc's `malloc_trim`): now when
/// `retired` (workloads' memory was freed), else when more than [`KEEP_FREE`] lies free
/// and it did not within [`GIVE_BACK_GAP`].
pub fn give_back(retired: bool) {
    use std::{sync::Mutex, time::Instant};
    static LAST: Mutex<Option<Instant>> = Mutex::new(None);
    let mut last = LAST.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if !retired && (last.is_some_and(|at| at.elapsed() < GIVE_BACK_GAP) || free_heap() <= KEEP_FREE) {
        return;
    }
    *last = Some(Instant::now());
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases memory the allocator holds free.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Bytes the allocator holds free (every arena; glibc), or none known elsewhere.
fn free_heap() -> usize {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallinfo2 only reads the allocator's statistics.
    return unsafe { libc::mallinfo2() }.fordblks;
    #[cfg(not(target_env = "gnu"))]
    usize::MAX
}
