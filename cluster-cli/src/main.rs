//! `cluster`: run a network-cluster provider or consumer from the shell, and benchmark it.

mod allocator;
mod commands;

use clap::{Parser, Subcommand};
use commands::external;
use std::io::IsTerminal;

/// Processes on many machines talking through a hub.
#[derive(Debug, Parser)]
#[command(name = "cluster", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a provider until Ctrl-C / SIGTERM, then shut down gracefully.
    Provider(Box<commands::provider::Args>),
    /// Join a provider: stdin lines are sent, received messages printed.
    Consumer(commands::consumer::Args),
    /// Publish one message on a subject through a running provider.
    Pub(commands::pubsub::PubArgs),
    /// Print every message published on subjects matching a pattern.
    Sub(commands::pubsub::SubArgs),
    /// Inspect the job queue of a running provider.
    Jobs(commands::jobs::Args),
    /// Watch a running hub in the terminal: connections, rates, the job queue (its admin
    /// feed; the hub needs --admin-token).
    Top(commands::top::Args),
    /// Run the benchmark workloads of BENCH.md (runs `cluster-bench bench`; see
    /// `cluster bench --help`).
    Bench(external::Args),
    /// Run the soak: a real provider under slowloris, floods, garbage, slow readers and
    /// crowds, phase by phase (runs `cluster-bench soak`; see `cluster soak --help`).
    Soak(external::Args),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // An empty RUST_LOG means "not set", not "everything".
    let filter = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .and_then(|v| tracing_subscriber::EnvFilter::try_new(v).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new("warn"))
        // tungstenite logs its whole client request, auth values included, at trace:
        // never let that through (see cluster-transport's security review).
        .add_directive("tungstenite::handshake::client=warn".parse()?);
    // Colour only on a terminal: a log file or a pipe gets plain text.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour escapes only where someone reads them: not in a file or a pipe.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match cli.command {
        Command::Provider(args) => runtime()?.block_on(commands::provider::run(*args)),
        Command::Consumer(args) => runtime()?.block_on(commands::consumer::run(args)),
        Command::Pub(args) => runtime()?.block_on(commands::pubsub::publish(args)),
        Command::Sub(args) => runtime()?.block_on(commands::pubsub::subscribe(args)),
        Command::Jobs(args) => runtime()?.block_on(commands::jobs::run(args)),
        Command::Top(args) => runtime()?.block_on(commands::top::run(args)),
        Command::Bench(args) => external::run(external::BENCH_EXE, "bench", args),
        Command::Soak(args) => external::run(external::BENCH_EXE, "soak", args),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}
