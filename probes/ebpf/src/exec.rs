//! `sched:sched_process_exec`: a process that execs keeps its pid but becomes another
//! program, so user space must read its identity afresh. The probe records the pid (and
//! the new `comm`, for a program that exits before the next read); exec is rare, so the
//! classic tracepoint's cost does not matter.
//! <https://elixir.bootlin.com/linux/v6.12/source/include/trace/events/sched.h#L423> (>= 3.4)
use aya_ebpf::{helpers::bpf_get_current_pid_tgid, macros::tracepoint, programs::TracePointContext};
use flowtel_probes_abi::lost;

use crate::maps::{EXECED, count_lost, remember_process_name};

#[tracepoint]
pub fn process_exec(_ctx: TracePointContext) -> u32 {
    // The exec'ing task is current, and its pid is the tgid (exec makes it the leader).
    let pid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if EXECED.insert(pid, 0u8, 0).is_err() {
        count_lost(lost::EXEC_TABLE_FULL);
    }
    remember_process_name(pid);
    0
}
