//! `cluster bench` (`cluster-bench bench`): the workloads of BENCH.md — W1 ingest, W2
//! echo, W3 broadcast, W6 idle connections and W6s the same in the steady state (after
//! three heartbeat cycles), each against our provider (`network-cluster`) and a plain
//! tokio-tungstenite server (`baseline`) in one run; and W4 RPC, W5 jobs and W7 pub/sub on
//! our typed layer (`cluster_rpc::Hub` and `Member`), in two setups (tuned, and a library
//! user's default); W5 against a bare credit dispatcher over tokio-tungstenite too; and W8,
//! three hubs in a cluster on a NATS server the bench starts (`nats-server` from
//! `$NATS_SERVER` or `PATH`), beside bare async-nats clients doing the same work.
//!
//! Servers and load generators run in separate OS processes: the bench starts this binary
//! again with the hidden `child <json>` subcommand and talks to each child over stdin and
//! stdout lines ([`children`](crate::children) on the parent's side,
//! [`server`](crate::server) and [`client`](crate::client) on the children's). Both systems get the same client code, so the ratio measures the server.

use crate::common::print_line;
use crate::spec::{Setup, System, Workload};
use crate::{cases, driver, report, sys};
use std::time::Duration;

/// Options of `cluster bench`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Workloads to run, comma separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "W1,W2,W3,W4,W5,W6,W6s,W7,W8",
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
    /// Setups the typed workloads (W4, W5, W7, W8) run in, comma separated: `tuned`
    /// (current-thread children, jemalloc) and `default` (a library user's: tokio's
    /// multi-thread runtime, the system allocator).
    #[arg(long, value_delimiter = ',', default_value = "tuned,default")]
    setups: Vec<Setup>,
    /// Only the cases whose name contains one of these (comma separated, case
    /// insensitive), e.g. `--cases "W8 jobs"`. Default: every case of the workloads.
    #[arg(long, value_delimiter = ',')]
    cases: Vec<String>,
    /// W6s: the heartbeat interval of both servers, ms. Default: 4000 (1000 with --quick).
    #[arg(long, value_name = "MS", value_parser = clap::value_parser!(u64).range(100..=60_000))]
    heartbeat_ms: Option<u64>,
}

/// Runs the bench: every case in child processes, then the table (and JSON lines).
pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    sys::raise_nofile();
    let mut systems = args.systems;
    systems.dedup();
    let mut setups = args.setups;
    setups.dedup();
    let plan = cases::Plan {
        workloads: args.workloads,
        systems,
        runs: args.runs.unwrap_or(if args.quick { 1 } else { 3 }),
        quick: args.quick,
        heartbeat: Duration::from_millis(args.heartbeat_ms.unwrap_or(if args.quick {
            1000
        } else {
            4000
        })),
        setups,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let rows = runtime.block_on(driver::run_all(&plan, &args.cases));
    let table = report::table(&rows);
    if args.json {
        for row in &rows {
            print_line(&row.json());
        }
        eprint!("{table}");
    } else {
        print!("{table}");
    }
    let failed = rows.iter().filter(|r| r.error.is_some()).count();
    anyhow::ensure!(failed == 0, "{failed} of {} rows failed", rows.len());
    Ok(())
}
