//! Typed RPC, broadcast and pub/sub over the network-cluster transport.
//!
//! The typed layer rides on binary frames, so the transport's raw text messages keep
//! working on the same connection. A [`Hub`] wraps the provider, a [`Member`] wraps a
//! consumer. Services are traits marked `#[cluster_service]` (re-exported by the
//! `network-cluster` facade), which generates a typed `{Trait}Client`, a `{Trait}Server`
//! dispatcher and the `{Trait}Request`/`{Trait}Response` enums.
//!
//! - **Ready means ready**: [`MemberBuilder::connect`] returns once the hub has
//!   registered the member and its services, [`Member::subscribe`] once the hub has the
//!   subscription, and [`Member::ready`] says when a reconnected member is whole again.
//! - **Calls both ways**: a member calls the hub's services ([`Member::client`]); the hub
//!   calls one member's ([`Hub::client`], [`Hub::any`]) or those of every member serving
//!   the service ([`Hub::broadcast`], [`Hub::broadcast_where`]). Every call has a deadline
//!   (a default per node, overridable per call); dropping a call's future cancels it and
//!   the handler on the far side is dropped too; a call in flight when its connection
//!   drops fails at once with [`RpcErrorKind::Disconnected`]. Each connection runs at most
//!   `max_concurrent_calls` of the other side's calls at once; more are refused
//!   [`RpcErrorKind::Overloaded`] before their handler starts.
//! - **Errors**: a method returning `Result<T, E>` delivers its `E` typed; everything
//!   else is an [`RpcError`]: a [kind](RpcErrorKind) to match on and the detail. A
//!   panicking handler answers [`RpcErrorKind::Panicked`] and the connection stays up. An
//!   answer the transport refuses (over a payload limit, a full send queue) fails its
//!   caller at once with the reason; names and subjects too long for the envelope are
//!   refused at the caller.
//! - **Ownership**: dropping the last [`Hub`] or [`Member`] handle (or `shutdown`) stops
//!   its connections, reconnects, tasks and the job dispatcher.
//! - **Pub/sub** ([`pubsub`]): subjects with `*` and `>` wildcards, routed by the hub
//!   through a subject trie; each publication reaches each subscription once; a hub caps
//!   the patterns of each member.
//! - **Jobs** ([`jobs`]): a distributed job queue owned by the hub, worked by members,
//!   with credits, priorities, delays, retries with backoff, dead letters and progress.
//!   Jobs and their answers travel in batches, several to a frame, as publish envelopes on
//!   reserved `__jobs.` subjects (see [`jobs`], "How jobs travel").
//! - **Clusters** (module `cluster`, feature `nats`): several hubs as one on NATS: pub/sub,
//!   calls and broadcasts reach the members of every hub.
//! - **Operations**: an admin page at `/admin` on the hub's port ([`admin`], off unless
//!   given a token) and metrics of calls, pub/sub and jobs through the `metrics` facade
//!   (the README's table lists them; `ProviderBuilder::metrics` serves them).
//! - **Codecs** ([`codec`]): MessagePack by default, bincode as an option; one codec per
//!   hub, and a member that names another is refused at connect time (HTTP 406, with a
//!   body saying which codec the hub speaks).
//!
//! # Features
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `bincode` | yes | the bincode codec ([`CodecKind::Bincode`], `Bincode`) and its dependency |
//! | `admin` | yes | the admin page and its JSON API ([`admin`], [`HubBuilder::admin`]) |
//! | `nats` | no | several hubs as one cluster on NATS (`cluster`, `HubBuilder::cluster`); brings async-nats |
//!
//! # The envelope
//!
//! Every binary frame of this layer is one envelope (all integers little-endian):
//!
//! | bytes | field |
//! |---|---|
//! | 0 | version, [`envelope::VERSION`] = 2 |
//! | 1 | kind: 1 request, 2 response, 3 error, 4 cancel, 5 subscribe, 6 unsubscribe, 7 publish, 8 message, 9 ready, 10 subscribed |
//! | 2..10 | u64 correlation id (request/response/error/cancel) or subscription id (subscribe/unsubscribe/message/subscribed); 0 for publish and ready |
//!
//! followed by, per kind:
//!
//! - request: u32 relative deadline in ms, u8 length + service name, u8 length + method
//!   name, then the codec-encoded `{Trait}Request`;
//! - response: the codec-encoded `{Trait}Response`;
//! - error: u8 [`RpcErrorKind`] code, then the UTF-8 detail;
//! - cancel, unsubscribe: nothing;
//! - subscribe: the UTF-8 pattern;
//! - publish, message: u16 length + UTF-8 subject, then the codec-encoded value;
//! - ready (hub → member, first on each member connection, once the hub has registered
//!   the member's services and job names): u32 the largest frame the hub accepts;
//! - subscribed (hub → member, the answer to each subscribe): u8 0 when the subscription
//!   is in place, else the [`RpcErrorKind`] code why not, then the UTF-8 detail.
//!
//! Names and subjects longer than their length prefix are refused by the sender
//! ([`RpcErrorKind::InvalidName`], [`RpcErrorKind::InvalidSubject`]), never cut.
//! Version 2 added ready and subscribed, and the job records of [`jobs`].
//!
//! An unknown version closes the connection with 1003 (unsupported data) and an
//! undecodable envelope with 1007 (invalid payload), each with a reason that says why;
//! other connections are not affected. Deadlines travel relative, so clocks need not agree.

#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(missing_docs, rustdoc::broken_intra_doc_links)]

#[cfg(feature = "admin")]
#[cfg_attr(docsrs, doc(cfg(feature = "admin")))]
pub mod admin;
mod broadcast;
#[cfg(feature = "nats")]
#[cfg_attr(docsrs, doc(cfg(feature = "nats")))]
pub mod cluster;
pub mod codec;
pub mod envelope;
mod error;
mod hub;
pub mod jobs;
mod link;
mod member;
mod metrics;
mod options;
mod peer;
pub mod pubsub;
mod service;

#[cfg(feature = "admin")]
pub use admin::AdminOptions;
pub use broadcast::Broadcast;
#[cfg(feature = "nats")]
pub use broadcast::Gathered;
#[cfg(feature = "bincode")]
pub use codec::Bincode;
pub use codec::{Codec, CodecError, CodecKind, MessagePack};
pub use error::{RpcError, RpcErrorKind};
pub use hub::{Hub, HubBuilder, StartError, SERVICES_PARAMETER};
pub use jobs::{
    DeadJob, InvalidJob, Job, JobContext, JobError, JobHandle, JobId, JobInfo, JobOptions,
    JobState, JobStats, Jobs, MemberJobs, QueueOptions, StoreError, WorkerStats,
};
pub use member::{Member, MemberBuilder};
pub use options::{DEFAULT_DEADLINE, DEFAULT_MAX_CONCURRENT_CALLS, DEFAULT_MAX_SUBSCRIPTIONS};
pub use peer::Caller;
pub use pubsub::{Published, Subscription};
/// Bytes that codecs write as bytes (a plain `Vec<u8>` is written as a list of numbers):
/// the type for binary fields of jobs, messages and service arguments.
pub use serde_bytes::ByteBuf;
pub use service::{Service, ServiceClient};

/// What `#[cluster_service]`'s generated code uses. Not a public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::peer::encode_response;
    pub use crate::{Caller, Codec, CodecKind, RpcError, RpcErrorKind, Service, ServiceClient};
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
