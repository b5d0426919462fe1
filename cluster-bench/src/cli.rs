//! The command line of `cluster-bench`: one subcommand per tool, as `cluster` forwards them
//! (`cluster bench ARGS` runs `cluster-bench bench ARGS`, `cluster soak ARGS` runs
//! `cluster-bench soak ARGS`), and the hidden ones it starts itself as.

use crate::spec::Allocator;
use crate::{bench, child, soak, stores};
use clap::{Parser, Subcommand};
use std::ffi::OsString;
use std::io::IsTerminal;
use std::path::PathBuf;

/// Benchmarks and the soak for network-cluster (run as `cluster bench` and `cluster soak`).
#[derive(Debug, Parser)]
#[command(name = "cluster-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the benchmark workloads of BENCH.md.
    Bench(bench::Args),
    /// Measure the durable job store on the local disk (and, with `--features redb`, the
    /// candidate it was chosen over): jobs/s, fsyncs, bytes per job, restart time, growth.
    Stores(stores::Args),
    /// Run the soak: a real `cluster provider` under hostile and heavy load, phase by
    /// phase.
    Soak(soak::Args),
    /// Internal: one child process of a bench, as the JSON spec says.
    #[command(hide = true)]
    Child {
        /// The child's spec, JSON.
        spec: String,
    },
    /// Internal: become PROGRAM ARGS, killed when the process that started this dies.
    #[command(hide = true)]
    ExecChild {
        /// What to run.
        program: PathBuf,
        /// Its arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
}

/// Parses the command line and runs what it asks for; `allocator` is the one the calling
/// executable was built with (a child checks that it is the one its setup asks for).
///
/// # Errors
///
/// The command's failure: a failed benchmark row or soak phase, a child that could not
/// start. Bad arguments are reported by clap before.
pub fn main(allocator: Allocator) -> anyhow::Result<()> {
    let cli = Cli::parse();
    // The soak's own consumers are dropped on purpose (slow readers): only errors.
    let default_level = match cli.command {
        Command::Soak(_) => "error",
        _ => "warn",
    };
    init_tracing(default_level)?;
    match cli.command {
        Command::Bench(args) => bench::run(args),
        Command::Stores(args) => stores::run(args),
        Command::Soak(args) => soak::run(args),
        Command::Child { spec } => child::run(&spec, allocator),
        Command::ExecChild { program, args } => soak::exec_child(&program, &args),
    }
}

/// Logs to stderr at `default_level` unless `RUST_LOG` says otherwise; in colour only on
/// a terminal.
fn init_tracing(default_level: &str) -> anyhow::Result<()> {
    // An empty RUST_LOG means "not set", not "everything".
    let filter = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .and_then(|v| tracing_subscriber::EnvFilter::try_new(v).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new(default_level))
        // tungstenite logs its whole client request, auth values included, at trace:
        // never let that through (see cluster-transport's security review).
        .add_directive("tungstenite::handshake::client=warn".parse()?);
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    Ok(())
}
