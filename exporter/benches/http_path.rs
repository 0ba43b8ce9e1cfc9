//! The agent's user-space work per HTTP exchange (`flowtel::bench::http_path`): decode,
//! parse and pair, route, histogram record and span, in process, no kernel and no root.
//! Reports nanoseconds and heap allocations per exchange, best of `BENCH_ROUNDS` (5).
//!
//! `cargo bench -p flowtel --bench http_path`
#![allow(clippy::cast_precision_loss, reason = "counts far below 2^52")]
use std::{
    alloc::{GlobalAlloc, Layout, System},
    sync::atomic::{AtomicU64, Ordering},
};

/// Allocations made through the system allocator.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is passed to the system allocator unchanged; only a counter changes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract is passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract is passed on.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract is passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const REQUESTS: u64 = 200_000;

fn main() {
    let rounds: usize = std::env::var("BENCH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(5);
    println!("## HTTP exchange in user space ({REQUESTS} requests, both ends: {} exchanges a round)\n", REQUESTS * 2);
    println!("| round | ns per exchange | allocations per exchange | spans per exchange |");
    println!("|---|---|---|---|");
    let mut best = f64::MAX;
    let path = flowtel::bench::HttpPath::new(REQUESTS);
    for round in 1..=rounds {
        let before = ALLOCATIONS.load(Ordering::Relaxed);
        let cost = path.run();
        let allocations = ALLOCATIONS.load(Ordering::Relaxed) - before;
        assert_eq!(cost.exchanges, REQUESTS * 2, "every request paired at both ends");
        let exchanges = cost.exchanges as f64;
        let ns = cost.elapsed.as_nanos() as f64 / exchanges;
        best = best.min(ns);
        println!(
            "| {round} | {ns:.0} | {:.2} | {:.2} |",
            allocations as f64 / exchanges,
            cost.spans as f64 / exchanges
        );
    }
    println!("\nbest: {best:.0} ns per exchange");
}
