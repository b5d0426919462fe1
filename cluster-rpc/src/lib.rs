//! Typed RPC, broadcast and pub/sub over the network-cluster transport.
//!
//! The typed layer rides on binary frames, so the transport's raw text messages keep
//! working on the same connection. A [`Hub`] wraps the provider, a [`Member`] wraps a
//! consumer. Services are traits marked `#[cluster_service]` (re-exported by the
//! `network-cluster` facade), which generates a typed `{Trait}Client`, a `{Trait}Server`
//! dispatcher and the `{Trait}Request`/`{Trait}Response` enums.
//!
//! - **Calls both ways**: a member calls the hub's services ([`Member::client`]); the hub
//!   calls one member's ([`Hub::client`], [`Hub::any`]) or every member's
//!   ([`Hub::broadcast`]). Every call has a deadline (a default per node, overridable per
//!   call); dropping a call's future cancels it and the handler on the far side is dropped
//!   too; a call in flight when its connection drops fails at once with
//!   [`RpcError::Disconnected`]. Each connection runs at most `max_concurrent_calls` of the
//!   other side's calls at once (more are refused [`RpcError::Overloaded`]).
//! - **Errors**: a method returning `Result<T, E>` delivers its `E` typed; everything else is
//!   an [`RpcError`]. A panicking handler answers [`RpcError::Panicked`] and the connection
//!   stays up.
//! - **Pub/sub** ([`pubsub`]): subjects with `*` and `>` wildcards, routed by the hub.
//! - **Jobs** ([`jobs`]): a distributed job queue owned by the hub, worked by members,
//!   with credits, priorities, delays, retries with backoff, dead letters and progress.
//!   Jobs and their answers travel in batches, several to a frame, as publish envelopes on
//!   reserved `__jobs.` subjects (see [`jobs`], "How jobs travel").
//! - **Codecs** ([`codec`]): MessagePack by default, bincode as an option; one codec per
//!   hub, and a member that names another is refused at connect time (HTTP 406, with a
//!   body saying which codec the hub speaks).
//!
//! # The envelope
//!
//! Every binary frame of this layer is one envelope (all integers little-endian):
//!
//! | bytes | field |
//! |---|---|
//! | 0 | version, [`envelope::VERSION`] = 1 |
//! | 1 | kind: 1 request, 2 response, 3 error, 4 cancel, 5 subscribe, 6 unsubscribe, 7 publish, 8 message |
//! | 2..10 | u64 correlation id (request/response/error/cancel) or subscription id (subscribe/unsubscribe/message); 0 for publish |
//!
//! followed by, per kind:
//!
//! - request: u32 relative deadline in ms, u8 length + service name, u8 length + method
//!   name, then the codec-encoded `{Trait}Request`;
//! - response: the codec-encoded `{Trait}Response`;
//! - error: u8 [`RpcError`] code, then the UTF-8 detail;
//! - cancel, unsubscribe: nothing;
//! - subscribe: the UTF-8 pattern;
//! - publish, message: u16 length + UTF-8 subject, then the codec-encoded value.
//!
//! An unknown version closes the connection with 1003 (unsupported data) and an
//! undecodable envelope with 1007 (invalid payload), each with a reason that says why;
//! other connections are not affected. Deadlines travel relative, so clocks need not agree.

#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(missing_docs, rustdoc::broken_intra_doc_links)]

mod broadcast;
pub mod codec;
pub mod envelope;
mod error;
mod hub;
pub mod jobs;
mod link;
mod member;
mod options;
mod peer;
pub mod pubsub;
mod service;

pub use broadcast::Broadcast;
pub use codec::{Bincode, Codec, CodecError, CodecKind, MessagePack};
pub use error::RpcError;
pub use hub::{Hub, HubBuilder, SERVICES_PARAMETER};
pub use jobs::{
    Job, JobContext, JobError, JobHandle, JobId, JobOptions, JobStats, Jobs, MemberJobs,
    QueueOptions,
};
pub use link::Link;
pub use member::{Member, MemberBuilder};
pub use options::{DEFAULT_DEADLINE, DEFAULT_MAX_CONCURRENT_CALLS};
pub use peer::Caller;
pub use pubsub::{Published, Subscription};
pub use service::{Service, ServiceClient};

/// What `#[cluster_service]`'s generated code uses. Not a public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::{Caller, Codec, CodecKind, RpcError, Service, ServiceClient};
    pub use ::futures_util::future::BoxFuture;
    pub use ::serde;
    pub use ::serde_bytes;
}

#[cfg(test)]
mod assert_traits {
    fn send_sync_clone<T: Send + Sync + Clone>() {}

    #[test]
    fn handles_are_send_sync_clone() {
        send_sync_clone::<super::Hub>();
        send_sync_clone::<super::Member>();
        send_sync_clone::<super::Caller>();
        send_sync_clone::<super::RpcError>();
    }
}
