//! `cluster consumer`: stdin lines become messages, messages become stdout lines.

use super::{hex, key_value, print_line, shutdown_signal};
use anyhow::Context;
use cluster_transport::{Backoff, Consumer, ConsumerEvent, Message};
use serde_json::json;
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};

/// Options of `cluster consumer`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The provider: HOST, HOST:PORT, [V6] or [V6]:PORT. Repeat it to fail over between
    /// several providers (hubs): they are tried in the order given, and after a drop the
    /// consumer moves on to the next one.
    #[arg(long, required = true, value_name = "HOST[:PORT]")]
    host: Vec<String>,
    /// Port of every --host that names none.
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Path of the provider's websocket route.
    #[arg(long, default_value = "/connect")]
    path: String,
    /// A URL parameter to send (repeatable): auth values and metadata.
    #[arg(long = "param", value_name = "KEY=VALUE", value_parser = key_value)]
    params: Vec<(String, String)>,
    /// Wait before each reconnect attempt (with --backoff exponential: the first ceiling).
    #[arg(long, default_value_t = 1000)]
    reconnect_interval_ms: u64,
    /// How the wait grows from attempt to attempt: `fixed` (the seed's, every attempt
    /// waits --reconnect-interval-ms) or `exponential` (full jitter: attempt n waits a
    /// random time up to interval x 2^(n-1), at most --max-reconnect-interval-ms), which
    /// spreads many consumers out when their provider restarts.
    #[arg(long, value_enum, default_value_t = BackoffArg::Fixed)]
    backoff: BackoffArg,
    /// The longest wait between attempts with --backoff exponential.
    #[arg(long, default_value_t = 30_000)]
    max_reconnect_interval_ms: u64,
    /// Failed attempts in a row before giving up (with several --host: failed rounds,
    /// each trying every host once).
    #[arg(long, default_value_t = 10)]
    max_attempts: u32,
    /// Keep up to this many lines read while reconnecting and send them first, in order,
    /// on the next connection (0: wait for the connection before reading more).
    #[arg(long, default_value_t = 0, requires = "buffer_bytes")]
    buffer_messages: usize,
    /// Most bytes kept while reconnecting (each line counts its length plus 14).
    #[arg(long, default_value_t = 0, requires = "buffer_messages")]
    buffer_bytes: usize,
    /// Connect with TLS (wss://), verifying the provider's certificate against the
    /// system's root certificates (or --ca).
    #[arg(long)]
    ssl: bool,
    /// Trust the CA certificates in this PEM file instead of the system's roots (a private
    /// CA, or a self-signed provider certificate). Implies --ssl.
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// Do not offer permessage-deflate (offered by default, as the original's consumer).
    #[arg(long)]
    no_compression: bool,
    /// Print one JSON object per line for each event.
    #[arg(long)]
    json: bool,
}

/// `--backoff`: the reconnect policy's names on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum BackoffArg {
    Fixed,
    Exponential,
}

impl From<BackoffArg> for Backoff {
    fn from(arg: BackoffArg) -> Self {
        match arg {
            BackoffArg::Fixed => Backoff::Fixed,
            BackoffArg::Exponential => Backoff::Exponential,
        }
    }
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    let mut builder = Consumer::builder()
        .hosts(args.host)
        .port(args.port)
        .path(args.path)
        .reconnect_interval(Duration::from_millis(args.reconnect_interval_ms))
        .reconnect_backoff(args.backoff.into())
        .max_reconnect_interval(Duration::from_millis(args.max_reconnect_interval_ms))
        .max_attempts(args.max_attempts)
        .reconnect_buffer(args.buffer_messages, args.buffer_bytes)
        .ssl(args.ssl)
        .compression(!args.no_compression);
    if let Some(ca) = args.ca {
        builder = builder.ca_file(ca);
    }
    for (key, value) in args.params {
        builder = builder.parameter(key, value);
    }
    let consumer = builder.build();
    let json = args.json;
    let mut events = consumer.events();
    let watched = consumer.clone();
    let printer = tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            print_event(&event, watched.connected_host().as_deref(), json);
            if event == ConsumerEvent::Close {
                break;
            }
        }
    });
    consumer
        .connect()
        .await
        .context("cannot connect to the provider")?;
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    loop {
        tokio::select! {
            line = lines.next_line() => match line? {
                Some(line) => send(&consumer, line).await,
                None => break,
            },
            _ = shutdown_signal() => break,
        }
    }
    consumer.shutdown().await;
    let _ = printer.await;
    Ok(())
}

/// Sends one line (kept for the next connection while reconnecting, when
/// --buffer-messages allows), waiting out reconnects instead of dropping it.
async fn send(consumer: &Consumer, line: String) {
    use cluster_transport::SendErrorKind::{BufferFull, NotConnected};
    loop {
        match consumer.send(line.as_str()) {
            Ok(()) => return,
            Err(e) if matches!(e.kind(), NotConnected | BufferFull) => {
                if consumer.ready().await.is_err() {
                    return;
                }
            }
            Err(e) => {
                tracing::error!(cause = %e, "message not sent");
                return;
            }
        }
    }
}

/// Prints one event; `host` is the provider connected to now, for `open`.
fn print_event(event: &ConsumerEvent, host: Option<&str>, json: bool) {
    let line = match (json, event) {
        (true, ConsumerEvent::Open) => json!({"event": "open", "host": host}).to_string(),
        (true, ConsumerEvent::Message(Message::Text(t))) => {
            json!({"event": "message", "message": t}).to_string()
        }
        (true, ConsumerEvent::Message(Message::Binary(b))) => {
            json!({"event": "message", "binary": hex(b)}).to_string()
        }
        (true, ConsumerEvent::Disconnect(info)) => {
            json!({"event": "disconnect", "code": info.code, "reason": info.reason}).to_string()
        }
        (true, ConsumerEvent::Close) => json!({"event": "close"}).to_string(),
        (false, ConsumerEvent::Message(Message::Text(t))) => t.clone(),
        (false, ConsumerEvent::Message(Message::Binary(b))) => hex(b),
        (false, other) => {
            tracing::info!(event = %other, server = host.unwrap_or("-"), "consumer event");
            return;
        }
        (_, _) => return,
    };
    print_line(&line);
}
