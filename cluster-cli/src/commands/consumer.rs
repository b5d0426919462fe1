//! `cluster consumer`: stdin lines become messages, messages become stdout lines.

use super::{hex, key_value, print_line, shutdown_signal};
use anyhow::Context;
use cluster_transport::{Consumer, ConsumerEvent, Message};
use serde_json::json;
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};

/// Options of `cluster consumer`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Host or IP of the provider.
    #[arg(long)]
    host: String,
    /// Port of the provider.
    #[arg(long)]
    port: u16,
    /// Path of the provider's websocket route.
    #[arg(long, default_value = "/connect")]
    path: String,
    /// A URL parameter to send (repeatable): auth values and metadata.
    #[arg(long = "param", value_name = "KEY=VALUE", value_parser = key_value)]
    params: Vec<(String, String)>,
    /// Wait before each reconnect attempt.
    #[arg(long, default_value_t = 1000)]
    reconnect_interval_ms: u64,
    /// Failed attempts in a row before giving up.
    #[arg(long, default_value_t = 10)]
    max_attempts: u32,
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

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    let mut builder = Consumer::builder()
        .host(args.host)
        .port(args.port)
        .path(args.path)
        .reconnect_interval(Duration::from_millis(args.reconnect_interval_ms))
        .max_attempts(args.max_attempts)
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
    let printer = tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            print_event(&event, json);
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

/// Sends one line, waiting out reconnects instead of dropping it.
async fn send(consumer: &Consumer, line: String) {
    loop {
        match consumer.send(line.as_str()) {
            Ok(()) => return,
            Err(e) if e.kind() == cluster_transport::SendErrorKind::NotConnected => {
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

fn print_event(event: &ConsumerEvent, json: bool) {
    let line = match (json, event) {
        (true, ConsumerEvent::Open) => json!({"event": "open"}).to_string(),
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
            tracing::info!(event = %other, "consumer event");
            return;
        }
        (_, _) => return,
    };
    print_line(&line);
}
