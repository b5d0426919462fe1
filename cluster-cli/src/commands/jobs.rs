//! `cluster jobs stats`: the job queue of a running provider.

use super::print_line;
use super::pubsub::Target;

/// Options of `cluster jobs`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(subcommand)]
    command: JobsCommand,
}

#[derive(Debug, clap::Subcommand)]
enum JobsCommand {
    /// Counts (waiting, delayed, active, completed, failed, dead) and per-worker load.
    Stats {
        #[command(flatten)]
        target: Target,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    let JobsCommand::Stats { target, json } = args.command;
    let member = target.member().await?;
    let stats = member.jobs().stats().await?;
    member.shutdown().await;
    if json {
        print_line(&serde_json::to_string(&stats)?);
        return Ok(());
    }
    print_line(&format!(
        "waiting {}  delayed {}  active {}  completed {}  failed {}  dead {}",
        stats.waiting, stats.delayed, stats.active, stats.completed, stats.failed, stats.dead
    ));
    print_line(&format!(
        "{:<38} {:<16} {:>7} {:>7} {:>10} {:>10}",
        "worker", "name", "credits", "active", "completed", "jobs/s"
    ));
    for w in &stats.workers {
        print_line(&format!(
            "{:<38} {:<16} {:>7} {:>7} {:>10} {:>10.1}",
            w.id.to_string(),
            w.name.as_deref().unwrap_or("-"),
            w.credits,
            w.active,
            w.completed,
            w.per_second
        ));
    }
    Ok(())
}
