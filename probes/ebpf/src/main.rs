//! flowtel's kernel programs. Each hook family lives in its own file; every program is a
//! thin entry that calls a `try_` function returning `Result`, so a failed kernel read
//! is counted (see `maps::count_lost`) instead of silently ignored.
#![no_std]
#![no_main]
// BPF atomic add: core::sync::atomic has no read-modify-write on this target.
#![allow(internal_features, reason = "atomic_xadd is the only way to emit a BPF atomic add")]
#![feature(core_intrinsics)]

mod config;
mod datagram;
mod dns;
mod dns_asked;
mod exec;
mod fallback;
mod flow_table;
mod http;
mod maps;
mod retransmit;
mod rtt;
mod socket;
mod state;
mod support;
mod tls;
mod traffic;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that could reach this, so it is never run.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
