//! `cluster provider`: a provider in the foreground, printing its events. It runs as a
//! hub of the typed layer too, so `cluster pub`/`cluster sub` and RPC members can join it;
//! their binary frames are the hub's business and are not printed or echoed.

use super::{hex, key_value, print_line, shutdown_signal};
use cluster_rpc::Hub;
use cluster_transport::{CloseInfo, Compressor, Connection, MessageRef, Provider, SslOptions};
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
    /// Largest incoming message, inclusive.
    #[arg(long, default_value_t = 32 * 1024)]
    max_payload_length: usize,
    /// Most bytes queued for one connection.
    #[arg(long, default_value_t = 1024 * 1024)]
    max_backpressure: usize,
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
    /// Send every text message back to its sender.
    #[arg(long)]
    echo: bool,
    /// Print one JSON object per line for each event.
    #[arg(long)]
    json: bool,
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

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<hidden>")
    }
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    let json = args.json;
    let echo = args.echo;
    let mut builder = Provider::builder()
        .host(args.host)
        .port(args.port)
        .path(args.path)
        .heartbeat_interval(Duration::from_millis(args.heartbeat_interval_ms))
        .max_strikes(args.max_strikes)
        .max_payload_length(args.max_payload_length)
        .max_backpressure(args.max_backpressure)
        .compressor(args.compressor)
        .on_open(move |conn| print_open(conn, json))
        .on_message(move |conn, message| {
            if message.is_binary() {
                return;
            }
            print_message(conn, message, json);
            if echo {
                if let Err(error) = conn.send(message) {
                    tracing::warn!(conn.id = %conn.id(), cause = %error, "echo failed");
                }
            }
        })
        .on_close(move |conn, info| print_close(conn, info, json));
    for (key, value) in args.auth {
        builder = builder.auth_parameter(key, value);
    }
    if let (Some(cert), Some(key)) = (args.tls_cert, args.tls_key) {
        let mut ssl = SslOptions::new(cert, key);
        ssl.passphrase = args.tls_passphrase.map(|p| p.0);
        builder = builder.tls(ssl);
    }
    let hub = Hub::builder(builder).start().await?;
    let provider = hub.provider();
    if json {
        print_line(
            &json!({
                "event": "listening",
                "port": provider.port(),
                "tls": provider.is_tls(),
                "compressor": provider.options().ws.compressor.name(),
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
    }
    provider.run_until(shutdown_signal()).await;
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
