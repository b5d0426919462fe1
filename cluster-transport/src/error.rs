//! Errors of the transport: connecting, sending and binding.

use std::fmt;
use std::sync::Arc;

/// A boxed error from a foreign source (I/O, TLS, a user's handler).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a [`send`](crate::Connection::send) was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SendErrorKind {
    /// The connection is not open (not yet connected, reconnecting, or closed).
    NotConnected,
    /// The message is one the protocol reserves (`PING`, `PONG`, `PROVIDER_HEARTBEAT|…`).
    Reserved,
    /// The message alone is larger than the limit that applies to it.
    PayloadTooLarge,
    /// Queuing the message would exceed `max_backpressure`; the connection is closed.
    Backpressure,
    /// The consumer is reconnecting and its reconnect buffer
    /// ([`ReconnectOptions::buffer_messages`](crate::ReconnectOptions::buffer_messages),
    /// [`buffer_bytes`](crate::ReconnectOptions::buffer_bytes)) has no room for the
    /// message: refused, nothing buffered before it is lost.
    BufferFull,
}

/// A message that could not be sent, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendError {
    kind: SendErrorKind,
}

impl SendError {
    pub(crate) fn new(kind: SendErrorKind) -> Self {
        Self { kind }
    }

    /// What went wrong.
    pub fn kind(&self) -> SendErrorKind {
        self.kind
    }
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.kind {
            SendErrorKind::NotConnected => "not connected",
            SendErrorKind::Reserved => {
                "message is reserved by the protocol (PING, PONG, PROVIDER_HEARTBEAT|…)"
            }
            SendErrorKind::PayloadTooLarge => "message is larger than the payload limit",
            SendErrorKind::Backpressure => {
                "backpressure limit exceeded: the peer is not reading, connection closed"
            }
            SendErrorKind::BufferFull => {
                "reconnecting, and the reconnect buffer is full (reconnect.buffer_messages / buffer_bytes)"
            }
        })
    }
}

impl std::error::Error for SendError {}

/// Why connecting to a provider failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ConnectErrorKind {
    /// The provider refused the connection (HTTP 401 or 403). Fatal: never retried.
    Rejected,
    /// The attempt did not finish in time.
    TimedOut,
    /// TLS failed: the provider's certificate cannot be verified, the provider does not
    /// speak TLS, or the CA file cannot be used. Fatal: never retried, as trying again
    /// cannot change any of these (a provider that is down fails with `Io` instead).
    Tls,
    /// The network failed (refused, reset, DNS, a bad HTTP answer).
    Io,
    /// Every attempt the reconnect policy allows has failed.
    MaxAttempts,
    /// The consumer was destroyed.
    Destroyed,
    /// The options cannot work (an entry of `hosts` that is not `host[:port]`). Fatal.
    InvalidOptions,
}

/// An error connecting to a provider. Cheap to clone: one failure can reach many waiters.
#[derive(Clone)]
pub struct ConnectError {
    kind: ConnectErrorKind,
    detail: Option<Arc<str>>,
    source: Option<Arc<dyn std::error::Error + Send + Sync + 'static>>,
}

impl ConnectError {
    /// An error of `kind`. For layers built on the transport that fail a connect of
    /// their own (the typed layer, when a provider never confirms a member).
    pub fn new(kind: ConnectErrorKind) -> Self {
        Self {
            kind,
            detail: None,
            source: None,
        }
    }

    /// The error with a detail that says more than its kind.
    pub fn with_detail(mut self, detail: impl Into<Arc<str>>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    pub(crate) fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(Arc::from(source.into()));
        self
    }

    /// What went wrong.
    pub fn kind(&self) -> ConnectErrorKind {
        self.kind
    }

    /// Whether reconnecting can never help (the provider rejected us or its certificate,
    /// or we were destroyed).
    pub fn is_fatal(&self) -> bool {
        matches!(
            self.kind,
            ConnectErrorKind::Rejected
                | ConnectErrorKind::Tls
                | ConnectErrorKind::Destroyed
                | ConnectErrorKind::MaxAttempts
                | ConnectErrorKind::InvalidOptions
        )
    }
}

impl fmt::Debug for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectError")
            .field("kind", &self.kind)
            .field("detail", &self.detail)
            .field("source", &self.source)
            .finish()
    }
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.kind {
            ConnectErrorKind::Rejected => "provider rejected the connection",
            ConnectErrorKind::TimedOut => "connect timed out",
            ConnectErrorKind::Tls => "tls error",
            ConnectErrorKind::Io => "connection failed",
            ConnectErrorKind::MaxAttempts => "reconnect attempts exhausted",
            ConnectErrorKind::Destroyed => "consumer destroyed",
            ConnectErrorKind::InvalidOptions => "invalid consumer options",
        })?;
        if let Some(detail) = &self.detail {
            write!(f, ": {detail}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConnectError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// An error starting a provider.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BindError {
    /// The listening socket could not be opened.
    #[error("cannot listen on {addr}")]
    Listen {
        /// The address we tried.
        addr: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The options are inconsistent.
    #[error("invalid provider options: {0}")]
    Options(String),
    /// The TLS certificate or key cannot be used: a file cannot be read or holds no
    /// certificate or key, the passphrase is wrong or missing, or the key does not match
    /// the certificate. The message names the file; it never holds the passphrase.
    #[error("tls setup failed: {reason}")]
    Tls {
        /// What is wrong, naming the file concerned.
        reason: String,
        /// The underlying error (I/O, PEM, PKCS#8, rustls), when there is one.
        #[source]
        source: Option<BoxError>,
    },
}
