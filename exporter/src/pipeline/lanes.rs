//! Threads of their own for the work that must never wait behind other work.
//!
//! The DNS and HTTP stages read their ring buffers on one: a kernel buffer fills in
//! milliseconds under load, and a connection's end is swept after a grace that holds
//! only if its stage keeps reading. Export converts, encodes and sends on another: a
//! large interval or a black-holed collector costs that thread, never the loop that
//! drains the kernel tables nor the stages. (On the runtime's shared workers a task
//! woken by a worker busy encoding waits for it: tokio does not hand that task over.)
use tokio::runtime::{Builder, Handle, Runtime};

pub struct Lanes {
    stages: Runtime,
    export: Runtime,
}

impl Lanes {
    pub fn start() -> std::io::Result<Self> {
        Ok(Self { stages: one_thread("flowtel-stages")?, export: one_thread("flowtel-export")? })
    }

    /// Where the stages' tasks and ring buffer watches live.
    pub fn stages(&self) -> &Handle {
        self.stages.handle()
    }

    /// Where the couriers and the exporters' connections live.
    pub fn export(&self) -> &Handle {
        self.export.handle()
    }
}

fn one_thread(name: &str) -> std::io::Result<Runtime> {
    Builder::new_multi_thread().worker_threads(1).thread_name(name).enable_all().build()
}
