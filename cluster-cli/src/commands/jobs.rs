//! `cluster jobs`: the job queue of a running hub: counts, lists by state, dead letters,
//! one job's history, requeueing, deleting and cancelling. All but `stats` are operator calls: they
//! need the hub's jobs admin token (`cluster provider --jobs-admin-token`).

use super::print_line;
use super::provider::Secret;
use super::pubsub::Target;
use cluster_rpc::jobs::store::Attempt;
use cluster_rpc::jobs::JOBS_ADMIN_PARAMETER;
use cluster_rpc::{JobId, JobInfo, JobState, Member};
use uuid::Uuid;

/// Options of `cluster jobs`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(subcommand)]
    command: JobsCommand,
}

/// Where the hub is, the admin token, and the output format.
#[derive(Debug, clap::Args)]
struct Common {
    #[command(flatten)]
    target: Target,
    /// The hub's jobs admin token (all but `stats` need it). Prefer the environment
    /// variable, which keeps it out of the process list.
    #[arg(
        long,
        value_name = "T",
        env = "CLUSTER_JOBS_TOKEN",
        hide_env_values = true
    )]
    token: Option<Secret>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

impl Common {
    /// Joins the hub (as its jobs admin with `--token`), makes `call`, and leaves before
    /// its answer is looked at; with whether `--json` was asked.
    async fn call<T, E>(
        self,
        call: impl AsyncFnOnce(&Member) -> Result<T, E>,
    ) -> anyhow::Result<(T, bool)>
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        let mut target = self.target;
        if let Some(token) = self.token {
            target.push_param(JOBS_ADMIN_PARAMETER, token.expose());
        }
        let member = target.member().await?;
        let answer = call(&member).await;
        member.shutdown().await;
        Ok((answer?, self.json))
    }
}

#[derive(Debug, clap::Subcommand)]
enum JobsCommand {
    /// Counts (waiting, delayed, active, completed, failed, dead) and per-worker load.
    Stats {
        #[command(flatten)]
        common: Common,
    },
    /// Jobs in one state, with their attempts.
    List {
        /// waiting, delayed, running, dead or completed.
        #[arg(long, default_value = "waiting")]
        state: StateArg,
        /// Most jobs listed (at most 10,000).
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[command(flatten)]
        common: Common,
    },
    /// The dead letters, oldest first, with their last error.
    Dead {
        /// Most jobs listed (at most 10,000).
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[command(flatten)]
        common: Common,
    },
    /// One job: where it is, and its history (attempts, workers, times, errors).
    Show {
        /// The job's id (a UUID).
        id: Uuid,
        #[command(flatten)]
        common: Common,
    },
    /// Puts a dead job back in the queue with fresh attempts.
    Requeue {
        /// The job's id (a UUID).
        id: Uuid,
        #[command(flatten)]
        common: Common,
    },
    /// Forgets a dead job.
    Delete {
        /// The job's id (a UUID).
        id: Uuid,
        #[command(flatten)]
        common: Common,
    },
    /// Cancels a waiting, delayed or running job.
    Cancel {
        /// The job's id (a UUID).
        id: Uuid,
        #[command(flatten)]
        common: Common,
    },
}

/// `--state`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum StateArg {
    Waiting,
    Delayed,
    Running,
    Dead,
    Completed,
}

impl From<StateArg> for JobState {
    fn from(state: StateArg) -> Self {
        match state {
            StateArg::Waiting => JobState::Waiting,
            StateArg::Delayed => JobState::Delayed,
            StateArg::Running => JobState::Running,
            StateArg::Dead => JobState::Dead,
            StateArg::Completed => JobState::Completed,
        }
    }
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        JobsCommand::Stats { common } => stats(common).await,
        JobsCommand::List {
            state,
            limit,
            common,
        } => list(common, state.into(), limit).await,
        JobsCommand::Dead { limit, common } => list(common, JobState::Dead, limit).await,
        JobsCommand::Show { id, common } => show(common, id.as_u128()).await,
        JobsCommand::Requeue { id, common } => {
            common
                .call(async |m| m.jobs().requeue_dead(id.as_u128()).await)
                .await?;
            print_line(&format!("requeued {id}"));
            Ok(())
        }
        JobsCommand::Delete { id, common } => {
            let (deleted, _) = common
                .call(async |m| m.jobs().delete_dead(id.as_u128()).await)
                .await?;
            anyhow::ensure!(deleted, "no dead job {id}");
            print_line(&format!("deleted {id}"));
            Ok(())
        }
        JobsCommand::Cancel { id, common } => {
            let (cancelled, _) = common
                .call(async |m| m.jobs().cancel(id.as_u128()).await)
                .await?;
            anyhow::ensure!(cancelled, "no waiting, delayed or running job {id}");
            print_line(&format!("cancelled {id}"));
            Ok(())
        }
    }
}

async fn stats(common: Common) -> anyhow::Result<()> {
    let (stats, json) = common.call(async |m| m.jobs().stats().await).await?;
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

async fn list(common: Common, state: JobState, limit: usize) -> anyhow::Result<()> {
    let (jobs, json) = common
        .call(async |m| m.jobs().list(state, limit).await)
        .await?;
    if json {
        for job in &jobs {
            print_line(&serde_json::to_string(&job_json(job))?);
        }
        return Ok(());
    }
    print_line(&format!(
        "{:<38} {:<16} {:<10} {:>8}  last error",
        "id", "name", "state", "attempts"
    ));
    for job in &jobs {
        print_line(&format!(
            "{:<38} {:<16} {:<10} {:>8}  {}",
            Uuid::from_u128(job.id).to_string(),
            job.name,
            state_name(job.state),
            job.attempts,
            job.last_error.as_deref().unwrap_or("-")
        ));
    }
    Ok(())
}

async fn show(common: Common, id: JobId) -> anyhow::Result<()> {
    let (job, json) = common.call(async |m| m.jobs().job(id).await).await?;
    let job = job.ok_or_else(|| anyhow::anyhow!("no job {} on the hub", Uuid::from_u128(id)))?;
    if json {
        print_line(&serde_json::to_string(&job_json(&job))?);
        return Ok(());
    }
    print_line(&format!("job        {}", Uuid::from_u128(job.id)));
    print_line(&format!("name       {}", job.name));
    print_line(&format!("state      {}", state_name(job.state)));
    print_line(&format!("attempts   {}", job.attempts));
    print_line(&format!("submitted  {}", time(job.submitted_at)));
    if let Some(at) = job.completed_at {
        print_line(&format!("completed  {}", time(at)));
    }
    if let Some(worker) = job.worker {
        print_line(&format!("running on {worker}"));
    }
    print_line("history:");
    for a in &job.history {
        print_line(&format!("  {}", attempt_line(a)));
    }
    Ok(())
}

fn attempt_line(a: &Attempt) -> String {
    let ended = a.ended_at.map_or_else(|| "running".to_owned(), time);
    let took = a
        .ended_at
        .map(|end| format!(" ({} ms)", end.saturating_sub(a.started_at)))
        .unwrap_or_default();
    format!(
        "attempt {} on {} from {} to {}{took}: {}",
        a.number,
        a.worker,
        time(a.started_at),
        ended,
        a.error.as_deref().unwrap_or("ok")
    )
}

/// A job as one JSON object, its id as a UUID (JSON has no 128-bit integers).
fn job_json(job: &JobInfo) -> serde_json::Value {
    serde_json::json!({
        "id": Uuid::from_u128(job.id).to_string(),
        "name": job.name,
        "state": state_name(job.state),
        "attempts": job.attempts,
        "worker": job.worker.map(|w| w.to_string()),
        "progress": job.progress,
        "last_error": job.last_error,
        "submitted_at": job.submitted_at,
        "completed_at": job.completed_at,
        "history": job.history,
    })
}

fn state_name(state: JobState) -> &'static str {
    match state {
        JobState::Waiting => "waiting",
        JobState::Delayed => "delayed",
        JobState::Running => "running",
        JobState::Dead => "dead",
        JobState::Completed => "completed",
        _ => "other",
    }
}

/// Unix milliseconds as `seconds.millis` since the epoch (UTC), or `-` for unknown.
fn time(at: u64) -> String {
    if at == 0 {
        return "-".to_owned();
    }
    format!("{}.{:03}", at / 1000, at % 1000)
}
