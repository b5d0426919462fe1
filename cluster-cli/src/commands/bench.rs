//! `cluster bench`: the workloads of BENCH.md — W1 ingest, W2 echo, W3 broadcast and W6
//! idle connections, each against our provider (`network-cluster`) and a plain
//! tokio-tungstenite server (`baseline`) in one run; and W4 RPC, W5 jobs and W7 pub/sub on
//! our typed layer (`cluster_rpc::Hub` and `Member`), which have no baseline.
//!
//! Servers and load generators run in separate OS processes: the bench starts this binary
//! again with a hidden `--child <json>` argument and talks to each child over stdin and
//! stdout lines ([`children`] on the parent's side, [`server`] and [`client`] on the
//! children's). Both systems get the same client code, so the ratio measures the server.

mod baseline;
mod children;
mod client;
mod consumer_client;
mod driver;
mod jobs;
mod ours;
mod pubsub;
mod report;
mod rpc;
mod server;
mod spec;
mod sys;
mod tally;

use anyhow::Context;
use spec::{ChildSpec, System, Workload};

/// Options of `cluster bench`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Workloads to run, comma separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "W1,W2,W3,W4,W5,W6,W7",
        ignore_case = true
    )]
    workloads: Vec<Workload>,
    /// Systems to run each case against, comma separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "network-cluster,baseline"
    )]
    systems: Vec<System>,
    /// Runs per case and system; the median is reported. Default: 3 (1 with --quick).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=50))]
    runs: Option<u32>,
    /// Small counts and one run: a smoke test of a few seconds.
    #[arg(long)]
    quick: bool,
    /// Print one JSON object per case and system on stdout (the table goes to stderr).
    #[arg(long)]
    json: bool,
    /// Internal: run as a child process of a bench, as the JSON spec says.
    #[arg(long, hide = true)]
    child: Option<String>,
}

/// Runs the bench, or one of its child processes.
pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    if let Some(spec) = &args.child {
        return child(spec);
    }
    sys::raise_nofile();
    let mut systems = args.systems;
    systems.dedup();
    let plan = driver::Plan {
        workloads: args.workloads,
        systems,
        runs: args.runs.unwrap_or(if args.quick { 1 } else { 3 }),
        quick: args.quick,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let rows = runtime.block_on(driver::run_all(&plan));
    let table = report::table(&rows);
    if args.json {
        for row in &rows {
            super::print_line(&row.json());
        }
        eprint!("{table}");
    } else {
        print!("{table}");
    }
    let failed = rows.iter().filter(|r| r.error.is_some()).count();
    anyhow::ensure!(failed == 0, "{failed} of {} rows failed", rows.len());
    Ok(())
}

/// A child process: a server or a group of clients.
fn child(spec: &str) -> anyhow::Result<()> {
    sys::die_with_parent();
    sys::raise_nofile();
    let spec: ChildSpec = serde_json::from_str(spec).context("bad --child spec")?;
    let result = match spec {
        ChildSpec::Server(spec) => server::main(spec),
        ChildSpec::Clients(spec) => client::main(spec),
    };
    if let Err(error) = result {
        sys::fail(&error);
    }
    Ok(())
}
