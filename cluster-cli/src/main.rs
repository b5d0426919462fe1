//! `cluster`: run a network-cluster provider or consumer from the shell, and benchmark it.

mod commands;

use clap::{Parser, Subcommand};

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
    Provider(commands::provider::Args),
    /// Join a provider: stdin lines are sent, received messages printed.
    Consumer(commands::consumer::Args),
    /// Publish one message on a subject through a running provider.
    Pub(commands::pubsub::PubArgs),
    /// Print every message published on subjects matching a pattern.
    Sub(commands::pubsub::SubArgs),
    /// Run the benchmark workloads of BENCH.md.
    Bench(commands::bench::Args),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Provider(args) => runtime()?.block_on(commands::provider::run(args)),
        Command::Consumer(args) => runtime()?.block_on(commands::consumer::run(args)),
        Command::Pub(args) => runtime()?.block_on(commands::pubsub::publish(args)),
        Command::Sub(args) => runtime()?.block_on(commands::pubsub::subscribe(args)),
        Command::Bench(args) => commands::bench::run(args),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}
