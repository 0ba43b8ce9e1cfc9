//! The `flowtel` binary; the agent lives in the library (`lib.rs`).
fn main() -> std::process::ExitCode {
    flowtel::main()
}
