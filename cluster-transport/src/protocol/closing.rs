//! The close handshake (RFC 6455, 7.1), from either side: who closed first decides which
//! close code the connection ends with and whether a close frame is still owed.

use crate::message::{close_code, CloseInfo};

/// How to end a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CloseRequest {
    pub(crate) code: u16,
    pub(crate) reason: String,
    pub(crate) mode: CloseMode,
}

impl CloseRequest {
    /// A close this side starts: shutdown, heartbeat kill, a user's `close`.
    pub(crate) fn new(code: u16, reason: &str, mode: CloseMode) -> Self {
        Self {
            code,
            reason: reason.to_owned(),
            mode,
        }
    }
}

/// What happens after the close frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CloseMode {
    /// Wait (up to the close timeout) for the peer's close frame, then FIN.
    Graceful,
    /// FIN as soon as the close frame is written (within the close timeout, else the
    /// socket is dropped): the peer is not answering.
    Immediate,
    /// Drop the socket now, without writing anything more.
    Abort,
}

/// Where a connection is in its close handshake. Boxed while closing, so an open
/// connection (nearly all of them, nearly always) carries a pointer's worth.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Closing {
    /// No close frame sent or received.
    Open,
    /// We sent a close frame with this code and wait for the peer's.
    Sent(Box<CloseInfo>),
    /// The handshake is over (or not waited for): flush what is queued, then end.
    Done(Box<CloseInfo>),
}

/// The close frame owed to a peer that closed first: its code echoed, as RFC 6455 asks
/// (`None`: an empty close frame, for a peer that sent no code).
pub(crate) type Echo = Option<u16>;

impl Closing {
    /// Whether messages are still exchanged (no close frame either way yet).
    pub(crate) fn is_open(&self) -> bool {
        matches!(self, Closing::Open)
    }

    /// Whether the connection only flushes before it ends.
    pub(crate) fn is_done(&self) -> bool {
        matches!(self, Closing::Done(_))
    }

    /// This side sends a close frame (`info`): wait for the answer, or not.
    pub(crate) fn start(&mut self, info: CloseInfo, mode: CloseMode) {
        *self = match mode {
            CloseMode::Graceful => Closing::Sent(Box::new(info)),
            CloseMode::Immediate | CloseMode::Abort => Closing::Done(Box::new(info)),
        };
    }

    /// The peer's close frame arrived. Returns the close frame to answer with, if one is
    /// still owed.
    pub(crate) fn peer_closed(&mut self, info: CloseInfo) -> Option<Echo> {
        match std::mem::replace(self, Closing::Open) {
            Closing::Open => {
                let echo = (info.code != close_code::NO_STATUS).then_some(info.code);
                *self = Closing::Done(Box::new(info));
                Some(echo)
            }
            Closing::Sent(ours) | Closing::Done(ours) => {
                *self = Closing::Done(ours);
                None
            }
        }
    }

    /// Stops waiting for the peer: end once flushed, with the code known so far.
    pub(crate) fn give_up(&mut self) {
        *self = Closing::Done(Box::new(self.ended_abnormally()));
    }

    /// How the connection ended when the socket ended before the handshake finished.
    pub(crate) fn ended_abnormally(&self) -> CloseInfo {
        match self {
            Closing::Open => CloseInfo::new(close_code::ABNORMAL, ""),
            Closing::Sent(info) | Closing::Done(info) => CloseInfo::clone(info),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_to_close_names_the_code() {
        let mut ours = Closing::Open;
        ours.start(CloseInfo::new(1001, "bye"), CloseMode::Graceful);
        assert!(!ours.is_open() && !ours.is_done());
        assert_eq!(ours.peer_closed(CloseInfo::new(1000, "")), None);
        assert_eq!(ours, Closing::Done(Box::new(CloseInfo::new(1001, "bye"))));

        let mut theirs = Closing::Open;
        assert_eq!(
            theirs.peer_closed(CloseInfo::new(4000, "x")),
            Some(Some(4000))
        );
        assert_eq!(theirs.ended_abnormally(), CloseInfo::new(4000, "x"));
        let mut empty = Closing::Open;
        assert_eq!(
            empty.peer_closed(CloseInfo::new(close_code::NO_STATUS, "")),
            Some(None)
        );
        assert_eq!(Closing::Open.ended_abnormally().code, close_code::ABNORMAL);
    }
}
