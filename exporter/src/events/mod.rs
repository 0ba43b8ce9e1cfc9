//! Reading what the probes aggregated: the flow tables (drained each interval, table
//! swap so nothing is lost between reads), the loss counters and the process names.
//!
//! Guarantee: every count the kernel added to a table is read exactly once. The probes
//! write into the active table; `drain` makes the other one active, waits for programs
//! still running on the old one to finish, then reads and empties it.
mod flows;

pub use flows::{FlowReader, KernelFlow, KernelProcess};
