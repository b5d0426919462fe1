//! Plain option structs, loadable from a config file (serde), with the seed's names and
//! defaults. Behaviour (callbacks, the auth handler) lives on the builders instead.
//!
//! Durations are given in milliseconds in config files and as [`Duration`] in Rust.

use crate::compressor::Compressor;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// The seed's default port.
pub const DEFAULT_PORT: u16 = 8080;
/// The seed's default websocket path.
pub const DEFAULT_PATH: &str = "/connect";
/// The seed's default `max_payload_length`: 32 KiB.
pub const DEFAULT_MAX_PAYLOAD_LENGTH: usize = 32 * 1024;
/// The seed's default `max_backpressure`: 1 MiB.
pub const DEFAULT_MAX_BACKPRESSURE: usize = 1024 * 1024;
/// The original's heartbeat interval on the wire: `PROVIDER_HEARTBEAT|30000`.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_millis(30_000);
/// The seed's default `max_strikes`.
pub const DEFAULT_MAX_STRIKES: u32 = 2;
/// The original's default reconnect interval.
pub const DEFAULT_RECONNECT_INTERVAL: Duration = Duration::from_millis(1000);
/// The original's default number of reconnect attempts.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 10;
/// The longest wait between reconnect attempts with [`Backoff::Exponential`].
pub const DEFAULT_MAX_RECONNECT_INTERVAL: Duration = Duration::from_secs(30);

/// Everything a [`Provider`](crate::Provider) can be configured with from a file.
///
/// ```
/// use cluster_transport::ProviderOptions;
/// let opts: ProviderOptions = serde_json::from_str(r#"{
///     "port": 9000,
///     "auth": { "parameters": { "key": "SECRET" } },
///     "heartbeat": { "interval": 5000 }
/// }"#).unwrap();
/// assert_eq!(opts.port, 9000);
/// assert_eq!(opts.path, "/connect");
/// assert_eq!(opts.heartbeat.interval.as_millis(), 5000);
/// assert_eq!(opts.heartbeat.max_strikes, 2);
/// ```
#[derive(Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct ProviderOptions {
    /// Address to listen on. Default: `0.0.0.0` (all interfaces, as the original).
    pub host: String,
    /// Port to listen on; 0 picks a free one. Default: 8080.
    pub port: u16,
    /// Path consumers connect to. Default: `/connect`.
    pub path: String,
    /// Websocket limits.
    pub ws: WsOptions,
    /// Parameters every consumer must present.
    pub auth: AuthOptions,
    /// The PING/PONG cycle.
    pub heartbeat: HeartbeatOptions,
    /// Limits on the HTTP upgrade, before a connection exists.
    pub handshake: HandshakeOptions,
    /// Most connections open at once; more wait in the kernel's backlog. Default: 100,000.
    pub max_connections: usize,
    /// Events each [`events`](crate::Provider::events) receiver holds before it loses its
    /// oldest (see [`EventStream`](crate::EventStream)); a slow receiver never holds up a
    /// connection. Default: 1024.
    pub event_capacity: usize,
    /// How long a graceful close waits for the peer's close frame, and the longest any
    /// close may take to flush before the socket is dropped, in ms. Default: 5000.
    #[serde(with = "millis")]
    pub close_timeout: Duration,
    /// TLS (`wss://`): the certificate and key to serve with. Default: none, plain `ws://`.
    pub ssl: Option<SslOptions>,
}

impl Default for ProviderOptions {
    fn default() -> Self {
        Self {
            host: "0.0.0.0".to_owned(),
            port: DEFAULT_PORT,
            path: DEFAULT_PATH.to_owned(),
            ws: WsOptions::default(),
            auth: AuthOptions::default(),
            heartbeat: HeartbeatOptions::default(),
            handshake: HandshakeOptions::default(),
            max_connections: 100_000,
            event_capacity: 1024,
            close_timeout: Duration::from_secs(5),
            ssl: None,
        }
    }
}

impl fmt::Debug for ProviderOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProviderOptions")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("path", &self.path)
            .field("ws", &self.ws)
            .field("auth", &self.auth)
            .field("heartbeat", &self.heartbeat)
            .field("handshake", &self.handshake)
            .field("max_connections", &self.max_connections)
            .field("event_capacity", &self.event_capacity)
            .field("close_timeout", &self.close_timeout)
            .field("ssl", &self.ssl)
            .finish()
    }
}

/// The seed's `ssl` options: TLS for the provider, with rustls.
///
/// `cert` and `key` are PEM files. The certificate file holds the server's certificate
/// first, then any intermediates. The key file holds one private key: PKCS#8
/// (`PRIVATE KEY`), PKCS#1 (`RSA PRIVATE KEY`), SEC1 (`EC PRIVATE KEY`), or an encrypted
/// PKCS#8 key (`ENCRYPTED PRIVATE KEY`, PBES2: PBKDF2 or scrypt with AES-CBC, what
/// `openssl pkcs8 -topk8 -v2 aes-256-cbc` and `openssl genpkey -aes256` write), which is
/// decrypted with `passphrase`. Both files are read and checked when the provider binds:
/// a missing file, a wrong passphrase or a key that does not match the certificate fail
/// [`bind`](crate::ProviderBuilder::bind) with [`BindError::Tls`](crate::BindError::Tls).
///
/// Two seed options have no meaning under rustls; they are accepted, so a config written
/// for the original loads, and ignored (the provider logs that at bind):
/// - `dh_params`: a file of finite-field Diffie-Hellman parameters for OpenSSL's `DHE`
///   cipher suites. rustls implements no `DHE` suites at all; its key exchange is
///   elliptic-curve only (`ECDHE` with X25519, P-256 or P-384), which needs no parameter
///   file.
/// - `prefer_low_memory_usage`: uWebSockets' switch for OpenSSL's `SSL_MODE_RELEASE_BUFFERS`
///   (free a connection's TLS buffers while it is idle). rustls has no such switch; it
///   already shrinks a connection's receive buffer back to 4 KiB once no record is pending,
///   so a large message does not stay resident.
///
/// ```
/// use cluster_transport::SslOptions;
/// let ssl: SslOptions = serde_json::from_str(r#"{
///     "cert": "misc/cert.pem", "key": "misc/key.pem", "passphrase": "SOME_RANDOM_PASSPHRASE"
/// }"#).unwrap();
/// assert!(!format!("{ssl:?}").contains("SOME_RANDOM"));
/// let same = SslOptions::new("misc/cert.pem", "misc/key.pem").passphrase("SOME_RANDOM_PASSPHRASE");
/// assert_eq!(same.cert, ssl.cert);
/// ```
#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct SslOptions {
    /// Path of the PEM private key file. Required.
    pub key: PathBuf,
    /// Path of the PEM certificate (chain) file. Required.
    pub cert: PathBuf,
    /// Decrypts an encrypted key (`ENCRYPTED PRIVATE KEY`); ignored for a plain key, as
    /// OpenSSL ignores it. Never shown by `Debug` nor in errors. Default: none.
    pub passphrase: Option<String>,
    /// Accepted for the seed's sake and ignored: rustls has no finite-field DHE (see above).
    pub dh_params: Option<PathBuf>,
    /// Accepted for the seed's sake and ignored: rustls has no such mode (see above).
    pub prefer_low_memory_usage: bool,
}

impl SslOptions {
    /// A certificate (chain) file and its key file, both PEM.
    pub fn new(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        Self {
            cert: cert.into(),
            key: key.into(),
            ..Self::default()
        }
    }

    /// The passphrase of an encrypted key file.
    #[must_use]
    pub fn passphrase(mut self, passphrase: impl Into<String>) -> Self {
        self.passphrase = Some(passphrase.into());
        self
    }
}

impl fmt::Debug for SslOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The passphrase never reaches Debug: only whether there is one.
        f.debug_struct("SslOptions")
            .field("key", &self.key)
            .field("cert", &self.cert)
            .field("passphrase", &self.passphrase.as_ref().map(|_| "<hidden>"))
            .field("dh_params", &self.dh_params)
            .field("prefer_low_memory_usage", &self.prefer_low_memory_usage)
            .finish()
    }
}

/// The seed's `ws` options.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct WsOptions {
    /// Largest incoming message in bytes, inclusive; a larger one closes the connection
    /// with 1009. Default: 32768.
    pub max_payload_length: usize,
    /// Most bytes queued for one connection, control frames included (a flood of pings
    /// queues one pong at most); a send beyond it closes that connection (1008).
    /// Default: 1 MiB.
    pub max_backpressure: usize,
    /// permessage-deflate: [`Compressor::Disabled`] (the default), shared or dedicated.
    pub compressor: Compressor,
}

impl Default for WsOptions {
    fn default() -> Self {
        Self {
            max_payload_length: DEFAULT_MAX_PAYLOAD_LENGTH,
            max_backpressure: DEFAULT_MAX_BACKPRESSURE,
            compressor: Compressor::Disabled,
        }
    }
}

/// The seed's `auth` options. The async handler is set on the builder.
#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct AuthOptions {
    /// Every key must be present in the consumer's query with exactly this value (compared in
    /// constant time). Default: none.
    pub parameters: BTreeMap<String, String>,
}

impl fmt::Debug for AuthOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Secrets never reach Debug: keys only.
        f.debug_struct("AuthOptions")
            .field("parameters", &self.parameters.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// The seed's `heartbeat` options.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct HeartbeatOptions {
    /// Time between heartbeat cycles, in ms in config files. Default: 30000, what the
    /// original sends on the wire (`PROVIDER_HEARTBEAT|30000`); its README says 10 s, but
    /// the wire is what consumers see, so we follow the wire.
    #[serde(with = "millis")]
    pub interval: Duration,
    /// Cycles a connection may miss before it is closed. Default: 2.
    pub max_strikes: u32,
    /// Whether to speak the heartbeat protocol at all. Default: true. With `false` the
    /// provider sends no `PROVIDER_HEARTBEAT|…` and no `PING`, treats `PING`/`PONG` as
    /// ordinary messages and lets them be sent: a plain websocket server for clients that
    /// are not network-cluster consumers (browsers, conformance suites).
    pub enabled: bool,
}

impl Default for HeartbeatOptions {
    fn default() -> Self {
        Self {
            interval: DEFAULT_HEARTBEAT_INTERVAL,
            max_strikes: DEFAULT_MAX_STRIKES,
            enabled: true,
        }
    }
}

/// Limits on a client's HTTP upgrade request (none of these exist in the original).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct HandshakeOptions {
    /// Time a client has to send its whole upgrade request, in ms. Default: 10000.
    #[serde(with = "millis")]
    pub timeout: Duration,
    /// Largest request (line plus headers) in bytes; larger gets 431. Default: 8192.
    pub max_request_bytes: usize,
    /// Largest request target (path plus query) in bytes; longer gets 414. Default: 4096.
    pub max_target_bytes: usize,
    /// Most header lines; more gets 431. Default: 32.
    pub max_headers: usize,
}

impl Default for HandshakeOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(10),
            max_request_bytes: 8192,
            max_target_bytes: 4096,
            max_headers: 32,
        }
    }
}

/// Everything a [`Consumer`](crate::Consumer) can be configured with from a file.
///
/// ```
/// use cluster_transport::ConsumerOptions;
/// let opts: ConsumerOptions = serde_json::from_str(r#"{
///     "host": "127.0.0.1", "port": 9000,
///     "parameters": { "key": "SECRET" },
///     "reconnect": { "interval": 250, "max_attempts": 3 }
/// }"#).unwrap();
/// assert_eq!(opts.path, "/connect");
/// assert_eq!(opts.reconnect.max_attempts, 3);
/// ```
#[derive(Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct ConsumerOptions {
    /// Host or IP of the provider. Default: `127.0.0.1`. Not used when `hosts` is set.
    pub host: String,
    /// Port of the provider, and of every entry of `hosts` that names none.
    /// Default: 8080.
    pub port: u16,
    /// Several providers (hubs) to fail over between: `host`, `host:port`, `[v6]` or
    /// `[v6]:port` each. The consumer connects to the first that answers, in this order,
    /// and after a drop tries the next one first. Empty: just `host` and `port`.
    /// Default: empty.
    pub hosts: Vec<String>,
    /// Path of the provider's websocket route. Default: `/connect`.
    pub path: String,
    /// URL parameters sent with every connect (auth values and metadata). Default: none.
    pub parameters: BTreeMap<String, String>,
    /// What to do when the connection drops.
    pub reconnect: ReconnectOptions,
    /// Time one connect attempt may take, in ms. Default: 10000.
    #[serde(with = "millis")]
    pub connect_timeout: Duration,
    /// Largest message in bytes, inclusive, either way. `send` refuses a larger one with a
    /// clear error (a message the provider's default limit would refuse), and a larger one
    /// from the provider closes the connection with 1009. Default: 32768, the provider's
    /// default limit.
    pub max_payload_length: usize,
    /// Most bytes queued for sending while the socket is busy, control frames included;
    /// `send` refuses a message beyond it (the connection stays). Default: 1 MiB.
    pub max_backpressure: usize,
    /// Events each [`events`](crate::Consumer::events) receiver holds before it loses its
    /// oldest (see [`EventStream`](crate::EventStream)). Default: 1024.
    pub event_capacity: usize,
    /// Connect with TLS (`wss://`), verifying the provider's certificate against the
    /// system's root certificates, or against `ca` when given. Default: false.
    pub ssl: bool,
    /// A PEM file of CA certificates to trust instead of the system roots (a private CA,
    /// a self-signed provider). Used with `ssl`. Default: none.
    pub ca: Option<PathBuf>,
    /// Offer permessage-deflate, as the original's consumer does; used only when the
    /// provider's `ws.compressor` accepts it. Default: true.
    pub compression: bool,
}

impl Default for ConsumerOptions {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".to_owned(),
            port: DEFAULT_PORT,
            hosts: Vec::new(),
            path: DEFAULT_PATH.to_owned(),
            parameters: BTreeMap::new(),
            reconnect: ReconnectOptions::default(),
            connect_timeout: Duration::from_secs(10),
            max_payload_length: DEFAULT_MAX_PAYLOAD_LENGTH,
            max_backpressure: DEFAULT_MAX_BACKPRESSURE,
            event_capacity: 1024,
            ssl: false,
            ca: None,
            compression: true,
        }
    }
}

impl fmt::Debug for ConsumerOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsumerOptions")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("hosts", &self.hosts)
            .field("path", &self.path)
            .field("parameters", &self.parameters.keys().collect::<Vec<_>>())
            .field("reconnect", &self.reconnect)
            .field("connect_timeout", &self.connect_timeout)
            .field("max_payload_length", &self.max_payload_length)
            .field("max_backpressure", &self.max_backpressure)
            .field("event_capacity", &self.event_capacity)
            .field("ssl", &self.ssl)
            .field("ca", &self.ca)
            .field("compression", &self.compression)
            .finish()
    }
}

/// The seed's `reconnect` policy, plus an optional exponential backoff and an optional
/// buffer for what is sent while reconnecting.
///
/// ```
/// use cluster_transport::{Backoff, ReconnectOptions};
/// let opts: ReconnectOptions = serde_json::from_str(r#"{
///     "interval": 500, "max_attempts": 20, "backoff": "exponential", "max_interval": 30000,
///     "buffer_messages": 1000, "buffer_bytes": 262144
/// }"#).unwrap();
/// assert_eq!(opts.backoff, Backoff::Exponential);
/// // Attempt 3 waits a random time up to 500 ms x 2^2.
/// assert_eq!(opts.max_delay(3).as_millis(), 2000);
/// assert!(opts.delay(3) <= opts.max_delay(3));
/// assert_eq!(opts.buffer_messages, 1000);
/// ```
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct ReconnectOptions {
    /// Wait before each reconnect attempt, in ms in config files: every wait with
    /// [`Backoff::Fixed`], the first ceiling with [`Backoff::Exponential`]. Default: 1000.
    #[serde(with = "millis")]
    pub interval: Duration,
    /// Failed attempts in a row before the consumer closes for good. Default: 10. With
    /// several `hosts`, one attempt is a round that tried each host once.
    pub max_attempts: u32,
    /// How the wait grows from one attempt to the next. Default: [`Backoff::Fixed`], as
    /// the seed.
    pub backoff: Backoff,
    /// The longest wait with [`Backoff::Exponential`], in ms in config files.
    /// Default: 30000.
    #[serde(with = "millis")]
    pub max_interval: Duration,
    /// Most messages kept while reconnecting, to go out first on the next connection.
    /// 0 (the default, as the seed): sends between connections are refused with
    /// [`NotConnected`](crate::SendErrorKind::NotConnected). See
    /// [`ConsumerBuilder::reconnect_buffer`](crate::ConsumerBuilder::reconnect_buffer).
    pub buffer_messages: usize,
    /// Most bytes kept while reconnecting, each message counting its payload plus 14
    /// bytes of frame header; at most `max_backpressure` whatever is set here, so the
    /// whole buffer fits in the next connection's send queue. 0 (the default): nothing
    /// is kept.
    pub buffer_bytes: usize,
}

impl Default for ReconnectOptions {
    fn default() -> Self {
        Self {
            interval: DEFAULT_RECONNECT_INTERVAL,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            backoff: Backoff::Fixed,
            max_interval: DEFAULT_MAX_RECONNECT_INTERVAL,
            buffer_messages: 0,
            buffer_bytes: 0,
        }
    }
}

/// How a consumer spaces its reconnect attempts.
///
/// The attempt number counts attempts since the last connection was open: 1 is the first
/// attempt after a drop (or the first retry of a first connect), and it grows by one with
/// each failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Backoff {
    /// Every attempt waits `interval`: the seed's behaviour. When a provider restarts,
    /// all its consumers come back in the same instant.
    #[default]
    Fixed,
    /// Exponential backoff with full jitter: attempt `n` waits a random time between 0
    /// and `min(max_interval, interval x 2^(n-1))`, so a crowd of consumers spreads out
    /// over the window instead of arriving at once, and keeps spreading while the
    /// provider stays away.
    Exponential,
}

/// Serde for a [`Duration`] written as whole milliseconds.
mod millis {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_defaults() {
        let p = ProviderOptions::default();
        assert_eq!(p.port, 8080);
        assert_eq!(p.path, "/connect");
        assert_eq!(p.ws.max_payload_length, 32 * 1024);
        assert_eq!(p.ws.max_backpressure, 1024 * 1024);
        assert_eq!(p.heartbeat.max_strikes, 2);
        let c = ConsumerOptions::default();
        assert_eq!(c.reconnect.interval, Duration::from_millis(1000));
        assert_eq!(c.reconnect.max_attempts, 10);
    }

    #[test]
    fn seed_ssl_options_load() {
        let p: ProviderOptions = serde_json::from_str(
            r#"{"ssl": {"key": "misc/key.pm", "cert": "misc/cert.pm", "passphrase": "P",
                "dh_params": "misc/dhparam4096.pm", "prefer_low_memory_usage": true}}"#,
        )
        .unwrap();
        let ssl = p.ssl.unwrap();
        assert_eq!(ssl.key, PathBuf::from("misc/key.pm"));
        assert_eq!(ssl.passphrase.as_deref(), Some("P"));
        assert!(ssl.prefer_low_memory_usage);
        let c: ConsumerOptions = serde_json::from_str(r#"{"ssl": true, "ca": "ca.pem"}"#).unwrap();
        assert!(c.ssl);
        assert!(serde_json::from_str::<ProviderOptions>(r#"{"ssl": {"crt": "x"}}"#).is_err());
    }

    #[test]
    fn failover_options_load() {
        let c: ConsumerOptions = serde_json::from_str(
            r#"{"hosts": ["hub-a:9001", "hub-b"], "port": 9000,
                "reconnect": {"buffer_messages": 100, "buffer_bytes": 65536}}"#,
        )
        .unwrap();
        assert_eq!(c.hosts, ["hub-a:9001", "hub-b"]);
        assert_eq!(c.reconnect.buffer_messages, 100);
        assert_eq!(c.reconnect.buffer_bytes, 65536);
        let seed = ConsumerOptions::default();
        assert!(seed.hosts.is_empty());
        assert_eq!(
            (seed.reconnect.buffer_messages, seed.reconnect.buffer_bytes),
            (0, 0)
        );
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = serde_json::from_str::<ProviderOptions>(r#"{"prot": 1}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field"));
    }

    #[test]
    fn debug_hides_secrets() {
        let mut p = ProviderOptions::default();
        p.auth.parameters.insert("key".into(), "hunter2".into());
        p.ssl = Some(SslOptions::new("c.pem", "k.pem").passphrase("hunter2"));
        let mut c = ConsumerOptions::default();
        c.parameters.insert("key".into(), "hunter2".into());
        assert!(!format!("{p:?}").contains("hunter2"));
        assert!(format!("{p:?}").contains("<hidden>"));
        assert!(!format!("{c:?}").contains("hunter2"));
        assert!(format!("{c:?}").contains("key"));
    }
}
