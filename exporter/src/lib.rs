//! flowtel: parse the command line and start the pipeline (`pipeline/`). A library so
//! that benchmarks can drive its parts directly: `kubernetes` is public (the
//! identity-cache benchmark builds a cluster view of 10,000 pods with it), and `bench`
//! runs the HTTP path in process.
mod aggregation;
mod allocator;
#[doc(hidden)]
pub mod bench;
mod cli;
mod config;
#[cfg(test)]
mod docs_sync;
mod enrichment;
mod events;
pub mod kubernetes;
mod mounts;
mod pipeline;
mod privileges;
mod probes;
mod status;
mod telemetry;

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser as _;

/// The `flowtel` command: parse the command line, then run the agent or `status`.
pub fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("flowtel: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: cli::Cli) -> anyhow::Result<()> {
    allocator::configure();
    let vars: Vec<(String, String)> = std::env::vars().collect();
    let config = config::Config::load(cli.config.as_deref(), &vars)?;
    let otel = config::otel_from_env(|name| std::env::var(name).ok())?;
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&config.log.level))
        .with_writer(std::io::stderr)
        // Colour codes only for a terminal: a journal or a file gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    privileges::check()?;
    if let Some(root) = &config.probes.cgroup_root {
        mounts::set_cgroup_root(root);
    }
    match cli.command.unwrap_or(cli::Command::Run) {
        cli::Command::Run => {
            let lanes = pipeline::Lanes::start().context("starting the stage and export threads")?;
            // The loop runs on this thread; the one worker serves the Kubernetes watchers.
            let result = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .context("starting the async runtime")?
                .block_on(pipeline::run(config, otel, &lanes));
            // Outside the loop's runtime: dropping a runtime waits for its thread.
            drop(lanes);
            result
        }
        cli::Command::Status => {
            // Load first: it mounts tracefs where needed, which the facts then reflect.
            // Every program, the variants standing by too: the verifier's word on each.
            let settings = probes::ProbeSettings { verify_standby: true, ..pipeline::probe_settings(&config) };
            let probes = probes::load_and_attach(&settings);
            let mut out = status::render_facts();
            // The table is printed even when the agent could not run, with the reasons.
            let reports = match &probes {
                Ok(probes) => &probes.reports[..],
                Err(probes::ProbeError::NoByteCounter { reports, .. }) => &reports[..],
                Err(_) => &[],
            };
            out.push_str(&status::render_reports(reports));
            // A closed pipe (`flowtel status | head`) is not worth a panic.
            let _ = std::io::Write::write_all(&mut std::io::stdout(), out.as_bytes());
            probes.map(drop).map_err(Into::into)
        }
    }
}
