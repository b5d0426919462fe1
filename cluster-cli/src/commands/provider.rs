//! `cluster provider`: a provider in the foreground, printing its events. It runs as a
//! hub of the typed layer too, so `cluster pub`/`cluster sub` and RPC members can join it;
//! a member's binary frames are the hub's business and are not printed or echoed, while a
//! plain consumer's binary messages are, like its text.

mod limits;

use super::{hex, key_value, print_line, shutdown_signal};
use cluster_rpc::cluster::ClusterOptions;
use cluster_rpc::jobs::store::JetStreamOptions;
use cluster_rpc::jobs::{FsyncPolicy, LogOptions};
use cluster_rpc::{AdminOptions, Hub, QueueOptions};
use cluster_transport::{
    CloseInfo, Compressor, Connection, MessageRef, MetricsEndpoint, ProviderBuilder,
    ProviderOptions, SslOptions,
};
use limits::Limits;
use serde_json::json;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// Options of `cluster provider`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on (0: any free port; the `listening` event tells which).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Path consumers connect to.
    #[arg(long, default_value = "/connect")]
    path: String,
    /// A URL parameter every consumer must present (repeatable).
    #[arg(long = "auth", value_name = "KEY=VALUE", value_parser = key_value)]
    auth: Vec<(String, String)>,
    /// Time between heartbeat cycles.
    #[arg(long, default_value_t = 30_000)]
    heartbeat_interval_ms: u64,
    /// Cycles a consumer may miss before it is closed.
    #[arg(long, default_value_t = 2)]
    max_strikes: u32,
    /// Serve TLS (wss://) with this PEM certificate (chain) file; needs --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert: plain, or encrypted PKCS#8 with --tls-passphrase.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Passphrase of an encrypted --tls-key. Prefer the environment variable, which keeps
    /// it out of the process list.
    #[arg(
        long,
        value_name = "P",
        requires = "tls_key",
        env = "CLUSTER_TLS_PASSPHRASE",
        hide_env_values = true
    )]
    tls_passphrase: Option<Secret>,
    /// permessage-deflate for consumers that offer it: disabled, shared, dedicated-3kb,
    /// dedicated-4kb, dedicated-8kb, … dedicated-256kb (the seed's ws.compressor presets).
    #[arg(long, value_name = "PRESET", default_value = "disabled")]
    compressor: Compressor,
    /// Serve `GET /metrics` (Prometheus text format) on the same port.
    #[arg(long)]
    metrics: bool,
    /// Require `Authorization: Bearer <token>` on /metrics. Prefer the environment
    /// variable, which keeps it out of the process list.
    #[arg(
        long,
        value_name = "T",
        requires = "metrics",
        env = "CLUSTER_METRICS_TOKEN",
        hide_env_values = true
    )]
    metrics_token: Option<Secret>,
    /// Serve the admin page at /admin for this token (it may act: disconnect, requeue,
    /// delete, cancel). Prefer the environment variable.
    #[arg(
        long,
        value_name = "T",
        env = "CLUSTER_ADMIN_TOKEN",
        hide_env_values = true
    )]
    admin_token: Option<Secret>,
    /// A second admin page token that may only look.
    #[arg(
        long,
        value_name = "T",
        requires = "admin_token",
        env = "CLUSTER_ADMIN_READ_ONLY_TOKEN",
        hide_env_values = true
    )]
    admin_read_only_token: Option<Secret>,
    /// Send every text message back to its sender.
    #[arg(long)]
    echo: bool,
    /// Print one JSON object per line for each event.
    #[arg(long)]
    json: bool,
    /// Print only the `listening` line: no line per connection or message (a busy hub).
    #[arg(long)]
    quiet: bool,
    /// What one client or a crowd may cost (listed under "Limits").
    #[command(flatten)]
    limits: Limits,
    /// Keep the job queue in this directory (created if missing): accepted jobs, their
    /// attempts, dead letters and kept results survive a restart or a crash. Without it,
    /// jobs live in memory only.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// When the job journal fsyncs (with --data-dir): batch (group commit: several
    /// submissions share one fsync), each (one per submission), never (survives a crash of
    /// the process, not of the machine).
    #[arg(
        long,
        value_name = "POLICY",
        default_value = "batch",
        requires = "data_dir"
    )]
    fsync: Fsync,
    /// How long completed jobs' results are kept for submitters that reconnect, in ms.
    #[arg(long, value_name = "MS", default_value_t = 300_000)]
    result_retention_ms: u64,
    /// Allow operator calls on the job queue (`cluster jobs list|dead|show|requeue|cancel`)
    /// from members presenting this token. Prefer the environment variable.
    #[arg(
        long,
        value_name = "T",
        env = "CLUSTER_JOBS_ADMIN_TOKEN",
        hide_env_values = true
    )]
    jobs_admin_token: Option<Secret>,
    /// Join a cluster of hubs on the NATS server at this URL (repeat for several servers
    /// of one NATS cluster): pub/sub, calls and broadcasts reach the members of every hub
    /// with the same --nats-prefix.
    #[arg(long = "nats", value_name = "URL")]
    nats: Vec<String>,
    /// The first token(s) of the cluster's NATS subjects (with --nats).
    #[arg(long, value_name = "PREFIX", default_value = cluster_rpc::cluster::DEFAULT_PREFIX, requires = "nats")]
    nats_prefix: String,
    /// This hub's name in the cluster (with --nats; default: a new id).
    #[arg(long, value_name = "NAME", requires = "nats")]
    hub_name: Option<String>,
    /// With --nats, jobs are on NATS JetStream, shared by every hub: how long JetStream
    /// waits for a running job's ack before it runs the job again on another hub (how
    /// soon a killed hub's jobs come back; running jobs are kept alive by in-progress acks
    /// every third of it), in ms.
    #[arg(long, value_name = "MS", default_value_t = 30_000, requires = "nats")]
    jobs_ack_wait_ms: u64,
    /// Replicas of the job, dead-letter and results streams (a clustered NATS), with --nats.
    #[arg(long, value_name = "N", default_value_t = 1, requires = "nats")]
    jobs_replicas: usize,
    /// With --nats, keep this hub's jobs to itself (its own store and workers) instead of
    /// on JetStream (for a NATS server without JetStream).
    #[arg(long, requires = "nats", conflicts_with_all = ["jobs_ack_wait_ms", "jobs_replicas"])]
    local_jobs: bool,
}

/// `--fsync`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Fsync {
    Batch,
    Each,
    Never,
}

impl From<Fsync> for FsyncPolicy {
    fn from(fsync: Fsync) -> Self {
        match fsync {
            Fsync::Batch => FsyncPolicy::Batch,
            Fsync::Each => FsyncPolicy::Each,
            Fsync::Never => FsyncPolicy::Never,
        }
    }
}

/// A secret from the command line: usable, never shown by `Debug`.
#[derive(Clone)]
pub(crate) struct Secret(String);

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

impl Secret {
    /// The secret itself, for the one place that uses it.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<hidden>")
    }
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    let json = args.json;
    let echo = args.echo;
    let print = !args.quiet;
    let mut options = ProviderOptions::default();
    args.limits.apply(&mut options);
    let mut builder = ProviderBuilder::from_options(options)
        .host(args.host)
        .port(args.port)
        .path(args.path)
        .heartbeat_interval(Duration::from_millis(args.heartbeat_interval_ms))
        .max_strikes(args.max_strikes)
        .compressor(args.compressor)
        .on_open(move |conn| {
            if print {
                print_open(conn, json);
            }
        })
        .on_message(move |conn, message| {
            if message.is_binary() && Hub::is_member(conn) {
                return;
            }
            if print {
                print_message(conn, message, json);
            }
            if echo {
                if let Err(error) = conn.send(message) {
                    tracing::warn!(conn.id = %conn.id(), cause = %error, "echo failed");
                }
            }
        })
        .on_close(move |conn, info| {
            if print {
                print_close(conn, info, json);
            }
        });
    for (key, value) in args.auth {
        builder = builder.auth_parameter(key, value);
    }
    if let (Some(cert), Some(key)) = (args.tls_cert, args.tls_key) {
        let mut ssl = SslOptions::new(cert, key);
        ssl.passphrase = args.tls_passphrase.map(|p| p.0);
        builder = builder.tls(ssl);
    }
    if args.metrics {
        let mut endpoint = MetricsEndpoint::install()?;
        if let Some(token) = args.metrics_token {
            endpoint = endpoint.bearer_token(token.0);
        }
        builder = builder.metrics(endpoint);
    }
    let queue =
        QueueOptions::default().result_retention(Duration::from_millis(args.result_retention_ms));
    let mut hub = Hub::builder(builder).job_queue(queue);
    let admin = args.admin_token.is_some();
    if let Some(token) = args.admin_token {
        let mut options = AdminOptions::new(token.0);
        if let Some(read_only) = args.admin_read_only_token {
            options = options.read_only_token(read_only.0);
        }
        hub = hub.admin(options);
    }
    if let Some(token) = args.jobs_admin_token {
        hub = hub.jobs_admin_token(token.0);
    }
    let local_store = args.data_dir.is_some();
    if let Some(dir) = args.data_dir {
        hub = hub.jobs_storage_with(dir, LogOptions::default().fsync(args.fsync.into()));
    }
    if let Some((first, more)) = args.nats.split_first() {
        let mut cluster = ClusterOptions::new(first).prefix(args.nats_prefix);
        for url in more {
            cluster = cluster.server(url);
        }
        if let Some(name) = args.hub_name {
            cluster = cluster.hub_name(name);
        }
        cluster = if args.local_jobs {
            cluster.local_jobs()
        } else if local_store {
            anyhow::bail!("--data-dir keeps the jobs on this hub: with --nats, add --local-jobs");
        } else {
            cluster.jobs(
                JetStreamOptions::default()
                    .ack_wait(Duration::from_millis(args.jobs_ack_wait_ms))
                    .replicas(args.jobs_replicas),
            )
        };
        hub = hub.cluster(cluster);
    }
    let hub = hub.start().await?;
    let provider = hub.provider();
    let cluster = hub.cluster().map(|c| {
        let jobs = c.jobs_store().map_or("local", |_| "jetstream");
        (
            c.hub_name().to_owned(),
            c.options().servers().join(","),
            jobs,
        )
    });
    if json {
        print_line(
            &json!({
                "event": "listening",
                "port": provider.port(),
                "tls": provider.is_tls(),
                "compressor": provider.options().ws.compressor.name(),
                "metrics": args.metrics,
                "admin": admin,
                "hub": cluster.as_ref().map(|(name, _, _)| name),
                "nats": cluster.as_ref().map(|(_, servers, _)| servers),
                "jobs": cluster.as_ref().map(|(_, _, jobs)| jobs),
            })
            .to_string(),
        );
    } else {
        print_line(&format!(
            "listening on {}://{}{}",
            if provider.is_tls() { "wss" } else { "ws" },
            provider.local_addr(),
            provider.path()
        ));
        let http = if provider.is_tls() { "https" } else { "http" };
        if args.metrics {
            print_line(&format!(
                "metrics on {http}://{}/metrics",
                provider.local_addr()
            ));
        }
        if admin {
            print_line(&format!(
                "admin page on {http}://{}/admin?token=…",
                provider.local_addr()
            ));
        }
        if let Some((name, servers, jobs)) = &cluster {
            print_line(&format!(
                "hub {name} in the cluster on NATS {servers} (jobs: {jobs})"
            ));
        }
    }
    provider.run_until(shutdown_signal()).await;
    // The provider stopped: the job store writes what it buffered and lets go of its
    // directory.
    hub.shutdown().await;
    Ok(())
}

fn print_open(conn: &Connection, json: bool) {
    if json {
        print_line(
            &json!({
                "event": "open",
                "id": conn.id().to_string(),
                "ip": conn.ip().to_string(),
                "parameters": conn.parameters(),
                "compressed": conn.is_compressed(),
            })
            .to_string(),
        );
    } else {
        let compressed = if conn.is_compressed() {
            " (permessage-deflate)"
        } else {
            ""
        };
        print_line(&format!(
            "open {} from {}{compressed}",
            conn.id(),
            conn.ip()
        ));
    }
}

fn print_message(conn: &Connection, message: MessageRef<'_>, json: bool) {
    let id = conn.id().to_string();
    match (json, message) {
        (true, MessageRef::Text(t)) => {
            print_line(&json!({"event": "message", "id": id, "message": t}).to_string());
        }
        (true, MessageRef::Binary(b)) => {
            print_line(&json!({"event": "message", "id": id, "binary": hex(b)}).to_string());
        }
        (false, MessageRef::Text(t)) => print_line(&format!("{id}: {t}")),
        (false, MessageRef::Binary(b)) => print_line(&format!("{id}: <{} bytes>", b.len())),
    }
}

fn print_close(conn: &Connection, info: &CloseInfo, json: bool) {
    if json {
        print_line(
            &json!({
                "event": "close",
                "id": conn.id().to_string(),
                "code": info.code,
                "reason": info.reason,
            })
            .to_string(),
        );
    } else {
        print_line(&format!(
            "close {} {} {}",
            conn.id(),
            info.code,
            info.reason
        ));
    }
}
