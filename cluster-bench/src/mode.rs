//! What a W1–W3/W6 server (ours or the baseline) does with each message it receives.

use crate::tally::Ingest;
use std::sync::Arc;

/// What a server does with each message it receives.
#[derive(Debug, Clone)]
pub(crate) enum Mode {
    /// W1: count it.
    Ingest(Arc<Ingest>),
    /// W2, W6: send it back.
    Echo,
    /// W3: nothing (the clients only answer heartbeats).
    Ignore,
}
