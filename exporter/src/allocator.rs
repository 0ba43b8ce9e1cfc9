//! How the C allocator places the agent's large allocations.
//!
//! The OpenTelemetry SDK gives every instrument a series map sized for the cardinality
//! limit when it is made (about 130 KiB at 2000) and most of it stays empty: a process
//! has a handful of series. glibc raises its mmap threshold each time such a block is
//! freed (a workload retiring), so the next ones come from the heap, where pages other
//! allocations touched before are resident: each empty map then costs its full size.
//! A fixed threshold keeps every large block in a mapping of its own, whose untouched
//! pages cost nothing and which goes back to the kernel when freed.

/// Blocks of this size and more get their own mapping.
const MMAP_THRESHOLD: libc::c_int = 64 * 1024;

/// Fixes the threshold (glibc; elsewhere nothing to do). Call before the agent
/// allocates in earnest.
pub fn keep_large_blocks_apart() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets an allocator parameter; no pointer is involved.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
    }
}
