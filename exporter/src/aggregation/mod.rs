//! Kernel flow entries into typed flow records: addresses as `IpAddr` (v4-mapped IPv6
//! folded to IPv4), enums for transport and direction, the address classes, and the
//! RTT histogram turned back into samples.
mod address;
mod flow;

pub use address::classify;
#[cfg(test)]
pub use flow::Failure;
pub use flow::{Direction, FlowRecord, Transport, from_kernel};
