//! A process's life as user space must follow it:
//! - `sched:sched_process_exec`: a process that execs keeps its pid but becomes another
//!   program, so user space must read its identity afresh. The probe records the pid
//!   (and the new `comm`, for a program that exits before the next read).
//! - `sched:sched_process_exit`: a process that made flows has exited, so its workload
//!   can be retired once its last data is out, and a new process that reuses the pid
//!   is read afresh rather than taken for the old one.
//!
//! Both are rare next to socket calls, so the classic tracepoints' cost does not matter.
//! <https://elixir.bootlin.com/linux/v6.12/source/include/trace/events/sched.h#L423> (>= 3.4)
use aya_ebpf::{helpers::bpf_get_current_pid_tgid, macros::tracepoint, programs::TracePointContext};
use flowtel_probes_abi::lost;

use crate::maps::{EXECED, EXITED, PROCESSES_SEEN, count_lost, remember_process_name};

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

#[tracepoint]
pub fn process_exit(_ctx: TracePointContext) -> u32 {
    // The exiting task is current. Only the thread group leader's exit ends the process
    // as user space knows it (worker threads come and go).
    let pid_tgid = bpf_get_current_pid_tgid();
    let (pid, thread) = ((pid_tgid >> 32) as u32, pid_tgid as u32);
    // SAFETY: a lookup; the value is not kept. Processes that never made a flow are
    // of no interest, which keeps the table small on a host that forks a lot.
    if pid != thread || unsafe { PROCESSES_SEEN.get(&pid) }.is_none() {
        return 0;
    }
    if EXITED.insert(pid, 0u8, 0).is_err() {
        count_lost(lost::EXIT_TABLE_FULL);
    }
    0
}
