//! The command line. A bare `flowtel` runs the agent.
use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "flowtel", version, about = "OpenTelemetry-native eBPF network observability agent")]
pub struct Cli {
    /// YAML configuration file; FLOWTEL_* variables override its keys.
    #[arg(long, short, env = "FLOWTEL_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent (the default).
    Run,
    /// Show what this kernel offers, then load and attach every probe once and report
    /// which attached and which fell back.
    Status,
}
