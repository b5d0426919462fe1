//! `cluster pub` and `cluster sub`: pub/sub from the shell against a running provider.

use super::{key_value, print_line, shutdown_signal};
use anyhow::Context;
use cluster_rpc::{Member, Subscription};
use cluster_transport::Consumer;
use serde_json::{json, Value};

/// Where the provider is (shared by `pub` and `sub`).
#[derive(Debug, clap::Args)]
pub(crate) struct Target {
    /// Host or IP of the provider.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port of the provider.
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Path of the provider's websocket route.
    #[arg(long, default_value = "/connect")]
    path: String,
    /// A URL parameter to send (repeatable): auth values and metadata.
    #[arg(long = "param", value_name = "KEY=VALUE", value_parser = key_value)]
    params: Vec<(String, String)>,
}

impl Target {
    /// Sends one more URL parameter.
    pub(crate) fn push_param(&mut self, key: &str, value: &str) {
        self.params.push((key.to_owned(), value.to_owned()));
    }

    pub(crate) async fn member(self) -> anyhow::Result<Member> {
        let mut consumer = Consumer::builder()
            .host(self.host)
            .port(self.port)
            .path(self.path)
            .max_attempts(3);
        for (key, value) in self.params {
            consumer = consumer.parameter(key, value);
        }
        Member::builder(consumer)
            .connect()
            .await
            .context("cannot connect to the provider")
    }
}

/// Options of `cluster pub`.
#[derive(Debug, clap::Args)]
pub(crate) struct PubArgs {
    #[command(flatten)]
    target: Target,
    /// The subject to publish on (no wildcards).
    subject: String,
    /// The message: sent as a JSON value if it parses as one, else as a string.
    message: String,
}

/// Options of `cluster sub`.
#[derive(Debug, clap::Args)]
pub(crate) struct SubArgs {
    #[command(flatten)]
    target: Target,
    /// The pattern to subscribe to (`*` one token, `>` the rest).
    subject: String,
    /// Print one JSON object per line: {"subject":…,"message":…}.
    #[arg(long)]
    json: bool,
}

pub(crate) async fn publish(args: PubArgs) -> anyhow::Result<()> {
    let member = args.target.member().await?;
    let value = serde_json::from_str::<Value>(&args.message).unwrap_or(Value::String(args.message));
    member.publish(&args.subject, &value)?;
    // The close handshake flushes the publication before we exit.
    member.shutdown().await;
    Ok(())
}

pub(crate) async fn subscribe(args: SubArgs) -> anyhow::Result<()> {
    let member = args.target.member().await?;
    let mut subscription: Subscription<Value> = member.subscribe(&args.subject).await?;
    if args.json {
        print_line(&json!({"event": "subscribed", "subject": args.subject}).to_string());
    }
    loop {
        tokio::select! {
            next = subscription.recv() => match next {
                Some(Ok(published)) => {
                    let text = match &published.value {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    if args.json {
                        print_line(&json!({"subject": published.subject, "message": published.value}).to_string());
                    } else {
                        print_line(&format!("{} {text}", published.subject));
                    }
                }
                Some(Err(error)) => tracing::warn!(cause = %error, "undecodable publication"),
                None => break,
            },
            _ = shutdown_signal() => break,
        }
    }
    member.shutdown().await;
    Ok(())
}
