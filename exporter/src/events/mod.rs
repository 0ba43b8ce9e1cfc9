//! Reading what the probes produced: the flow tables (drained each interval, table
//! swap so nothing is lost between reads), the loss counters, the process names, and
//! the DNS packets (a ring buffer read as it fills).
//!
//! Guarantee: every count the kernel added to a table is read exactly once. The probes
//! write into the active table; `drain` makes the other one active, waits for programs
//! still running on the old one to finish, then reads and empties it.
mod dns;
mod flows;
mod processes;

pub use dns::{CapturedPacket, DnsPacketReader};
pub use flows::{FlowReader, KernelFlow};
pub use processes::{KernelProcess, ProcessNames};
