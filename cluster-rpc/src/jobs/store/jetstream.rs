//! Jobs on NATS JetStream: a [`JobStore`] several hubs share (feature `nats`).
//!
//! A hub in cluster mode ([`HubBuilder::cluster`](crate::HubBuilder::cluster)) opens one
//! on the cluster's NATS servers and subject prefix unless told otherwise
//! ([`ClusterOptions::jobs`](crate::cluster::ClusterOptions::jobs),
//! [`local_jobs`](crate::cluster::ClusterOptions::local_jobs)); a hub outside cluster mode
//! can be handed one ([`HubBuilder::jobs_store`](crate::HubBuilder::jobs_store)). The jobs
//! then wait in JetStream, not in a hub, and any hub's workers run them:
//!
//! - **Submission.** A job is published to the work-queue stream `<PREFIX>_JOBS`, on its
//!   name's and level's subject (`<prefix>.__jobs.<name>.<level>`), with its id as the
//!   message id (`Nats-Msg-Id`: the 128 bits in 22 base64url characters; the UUIDs of
//!   older hubs are read too). Not on a subject of its own: the server's file store
//!   keeps an index entry per subject, and a level's consumer filtering on
//!   `….<level>.*` walked it for every job (about a third of the server's CPU per job,
//!   issue 13). Within the stream's duplicate window
//!   ([`JetStreamOptions::duplicate_window`]) a second publish of the same job is dropped.
//!   The submission resolves once JetStream acknowledged it (the message is stored).
//! - **Priorities.** JetStream has none per message: each job name has one subject per
//!   level (priority above 0, 0, below 0), each with its own durable pull consumer, and a
//!   hub pulls the levels in order. Within a level jobs run first in, first out (the finer
//!   order of priorities within a level is not kept).
//! - **Lanes.** The levels and the delayed jobs' subject are the stream's lanes. A hub
//!   opens the normal level's consumers from the start, and another lane's only once it
//!   knows jobs were put there: a kick names the lanes its hub published to, and every
//!   tenth [`poll`](JetStreamOptions::poll) (and at start) a hub asks the server, one
//!   stream info request per lane it does not know yet, whether jobs wait there (a kick
//!   lost, or jobs submitted before it started). The server walks every consumer of the
//!   stream on each ack: a cluster that never uses priorities or delays keeps one consumer
//!   per name instead of four, which cut the server's CPU per job by 4–9% (issue 13). A
//!   lane, once known, stays so (its consumers are durable), for every name: a hub that
//!   learns of high-priority jobs opens the high level's consumer of each name it pulls.
//! - **Credits.** A hub pulls, per name, at most the free credits of its own workers of
//!   that name; it pulls again when credits free up, when a hub published jobs (a kick on
//!   core NATS, naming the lanes published to), and every
//!   [`poll`](JetStreamOptions::poll) while credits are free (for redeliveries, which come
//!   with no kick). It pulls as soon as credits free up; credits freed while a pull is
//!   answered go in the next one, so a pull asks for more jobs the busier the hub is, with
//!   no timer holding free credits back. A level a pull found empty is not asked again
//!   before the next poll or a kick naming it. Every pull is answered on one subscription
//!   the hub holds for good (no subscription per pull), and the jobs that have arrived are
//!   queued together (one hold of the queue's lock).
//! - **Acks.** Success: ack. Failure: a negative ack with the queue's backoff as its delay
//!   (any hub may take the retry). The last failed attempt: the job is published to the
//!   dead-letter stream `<PREFIX>_DEAD` (headers `Cluster-Job`, `Cluster-Attempts`,
//!   `Cluster-Error`; payload the job's record) and the original is terminated (JetStream
//!   has no dead-letter queue of its own). A worker that leaves: a negative ack without
//!   delay. A hub that shuts down stops pulling first, gives back at once every job it
//!   holds (those its last pull brought too), and stores the outcomes it took, acking
//!   their jobs, before it closes. A running job's hub sends an in-progress ack for it
//!   every third of the ack wait and when its worker reports progress, so a long job is
//!   never redelivered while its hub lives.
//! - **Attempts.** A job's attempt number is JetStream's delivery count: an attempt cut
//!   short by its worker leaving, or by its hub dying, counts (unlike on a single hub).
//! - **A hub killed.** Its running jobs are no longer in progress: JetStream redelivers
//!   them after the ack wait ([`JetStreamOptions::ack_wait`]) to the hubs left. The
//!   trade-off: a short ack wait brings a dead hub's jobs back sooner, at the cost of one
//!   in-progress ack per running job every third of it; a hub stalled longer than the ack
//!   wait (a paused VM) sees its jobs run elsewhere too.
//! - **Results.** A job's outcome (output, dead, or cancelled) is stored in the results
//!   stream `<PREFIX>_RESULTS`, on `<prefix>.__results.<submitting hub>`, kept for
//!   [`result_retention`](JetStreamOptions::result_retention), and the job is acked only
//!   once it is stored (an outcome that cannot be stored is a negative ack: the job runs
//!   again). Outcomes are stored by rounds (group commit): each round is one message per
//!   submitting hub holding every outcome that came while the last round was being
//!   stored, and the round's jobs are acked once it is. So a busy server stores one
//!   message for many jobs, where one per job doubled its work (issue 13: JetStream was
//!   the bottleneck of a cluster's jobs), at the cost of a job's ack waiting for up to
//!   two store round trips. The submitting hub subscribes to its own subject, so the same
//!   publish delivers the outcomes live; a second outcome of a job (run twice after a
//!   stall) finds no handle waiting and is dropped. A handle attached on another hub (a
//!   member that failed over, or [`Jobs::result`](crate::Jobs::result) there)
//!   listens to every hub's outcomes and reads the results stream for the outcome (all
//!   of it, which the retention and [`max_results`](JetStreamOptions::max_results)
//!   bound). Not there: it finds out whether the job is in the job stream, asking the
//!   hubs on core NATS (`<prefix>.__jobq.find`; the hub running the job answers, or its
//!   submitter with the job's sequence, checked in the stream) and, when none answers
//!   within 250 ms (the submitter is gone and the job waits, or there is no such job),
//!   reading the job stream message by message. In it: the outcome comes live. Not in
//!   it: an outcome is stored before its job leaves the job stream, so the job is
//!   unknown ([`JobError::NotFound`](crate::JobError)). Nothing is lost when any one hub dies:
//!   what is stored stays in the stream, what is not was never acked and runs again.
//!   Weighed and left: sending the outcome to the submitting hub over core NATS and
//!   storing it only when no live handle took it (the submitter's hub dying right after
//!   handing it over loses it for a member that fails over, and a lookup by id elsewhere
//!   finds nothing); keeping one message per job with cheaper options (message ids off,
//!   no per-subject limit) still stores twice per job. The outcome carries the
//!   submitter's owner: a member only finds its own jobs. Progress goes to the submitting
//!   hub only, on core NATS (at most once).
//! - **Cancellation.** The submitting hub deletes the job's message from the stream (it is
//!   never delivered again), stores a cancelled outcome, and tells every hub
//!   (`<prefix>.__jobq.cancel`); the hub running it drops it on its worker and terminates
//!   it. A job pulled while the cancel travels is terminated when it arrives (each hub
//!   remembers the last cancels). A handle re-attached on another hub cancels the same way,
//!   without the delete: a waiting job is terminated when a hub pulls it.
//! - **Delays.** A delayed job waits on the stream's `delayed` subject; when it is due, a
//!   hub moves it to its name's subject (message id `<id>.due`, so a move repeated after a
//!   crash is dropped) and acks it. Every hub moves them, once it knows the lane.
//! - **The engine fails.** While the NATS connection is down, [`check`](JobStore::check)
//!   fails and submissions are refused at once with [`JobError::Store`](crate::JobError);
//!   a publish that gets no acknowledgement within
//!   [`request_timeout`](JetStreamOptions::request_timeout) fails its submission. The
//!   client reconnects on its own (every 100 ms at first, then every second), and pulling
//!   goes on.
//!
//! Unique keys ([`JobOptions::key`](crate::JobOptions::key)) hold per hub, not across the
//! cluster: the duplicate window dedups message ids, and a key-to-job lookup in NATS on
//! every keyed submission would cost a round trip each.
//!
//! **Dead letters** are in the dead-letter stream, not in the hubs' own dead letters, and
//! any hub lists, requeues and deletes them (the operator calls of
//! [`MemberJobs`](crate::MemberJobs) and `cluster jobs dead|requeue|delete`;
//! [`Shared::dead_letters`], [`requeue_dead`](Shared::requeue_dead),
//! [`delete_dead`](Shared::delete_dead)). A list reads the stream message by message from
//! its start (gets by sequence, up to the limit asked), each letter with its id, attempts
//! and last error from its headers, its name and payload from its record. A requeue
//! deletes the letter by its sequence first, and only the hub whose delete succeeded
//! publishes the job again, so two hubs requeueing it at once run it once: on its name's
//! subject, with the default options (as on one hub), under a new message id
//! (`<id>.<random>`: the duplicate window would drop the job's own), so its first
//! delivery and fresh attempts. Its outcome goes to its submitting hub and the results
//! stream as the first time, so the submitter finds it by id
//! ([`MemberJobs::result`](crate::MemberJobs::result)): a lookup takes the last outcome
//! stored, and a stored death is not final while the job is back in the job stream. A
//! publish that fails puts the letter back. On the hub itself:
//! [`Jobs::cluster_dead_letters`](crate::Jobs::cluster_dead_letters) and its siblings;
//! the sync [`Jobs::dead_letters`](crate::Jobs::dead_letters) (and the admin page) lists
//! only its local dead letters: none in cluster mode.

use super::{
    Change, Commit, Feed, JobStore, Owner, PulledJob, Recovery, Shared, StoreError, StoreFuture,
    StoreStats,
};
use crate::jobs::id::IdMap;
use crate::jobs::{DeadJob, JobError, JobId, JobOptions};
use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy, PullConsumer};
use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::stream::{
    DeleteMessageErrorKind, DiscardPolicy, LastRawMessageErrorKind, RetentionPolicy, StorageType,
};
use async_nats::jetstream::{self, AckKind, Context};
use async_nats::{Client, StatusCode, Subject};
use bytes::{BufMut, Bytes, BytesMut};
use foldhash::fast::RandomState;
use futures_util::{FutureExt, StreamExt};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Where and how a [`JetStreamStore`] keeps the jobs.
///
/// ```
/// use cluster_rpc::jobs::store::JetStreamOptions;
/// use std::time::Duration;
/// let options = JetStreamOptions::new("nats://127.0.0.1:4222").ack_wait(Duration::from_secs(10));
/// assert_eq!(options.prefix, "cluster");
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct JetStreamOptions {
    /// The NATS server's URL. Default `nats://127.0.0.1:4222`.
    pub url: String,
    /// More servers of the same NATS cluster (the client moves to another when its
    /// server goes). Default: none.
    pub servers: Vec<String>,
    /// The first token(s) of every subject (letters, digits, `_`, `-`, tokens joined by
    /// `.`); with each `.` made `_` and upper-cased, the streams' and consumers' name
    /// prefix. Hubs of one cluster share it. Default `cluster`.
    pub prefix: String,
    /// How long JetStream waits for a running job's ack or in-progress ack before it
    /// redelivers the job (to any hub): how soon a killed hub's jobs run again. Default 30 s.
    pub ack_wait: Duration,
    /// The stream's duplicate window: a job published twice within it is stored once.
    /// Default 2 minutes.
    pub duplicate_window: Duration,
    /// How often a hub with free credits looks for jobs that came back with no kick
    /// (retries, redeliveries). Default 100 ms.
    pub poll: Duration,
    /// Most bytes the job stream stores; past it submissions are refused. Default: no limit.
    pub max_bytes: Option<u64>,
    /// How long a JetStream request or publish waits for its answer. Default 5 s.
    pub request_timeout: Duration,
    /// Replicas of the streams (a clustered NATS). Default 1.
    pub replicas: usize,
    /// Most jobs delivered and not yet acked over the whole cluster, per name and
    /// priority level (JetStream's `max_ack_pending`). Default 100,000.
    pub max_ack_pending: u32,
    /// How long the results stream keeps each job's outcome (its `max_age`): how long
    /// [`Jobs::result`](crate::Jobs::result) on any hub, or a handle re-attached
    /// after a failover, finds it. At least 1 s (the live delivery rides on it). Default
    /// 5 minutes, as [`QueueOptions::result_retention`](crate::QueueOptions); a hub in
    /// cluster mode sets it from its queue's.
    pub result_retention: Duration,
    /// Most messages the results stream keeps (the oldest go first); each holds one or
    /// more outcomes, so at least this many outcomes are kept. Default 100,000.
    pub max_results: usize,
}

impl JetStreamOptions {
    /// The defaults, on the NATS server at `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            ..Self::default()
        }
    }

    /// With a subject prefix.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// With an ack wait.
    pub fn ack_wait(mut self, ack_wait: Duration) -> Self {
        self.ack_wait = ack_wait;
        self
    }

    /// With a poll interval.
    pub fn poll(mut self, poll: Duration) -> Self {
        self.poll = poll;
        self
    }

    /// With a request timeout.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// With stream replicas (a clustered NATS).
    pub fn replicas(mut self, replicas: usize) -> Self {
        self.replicas = replicas;
        self
    }

    /// With a result retention.
    pub fn result_retention(mut self, retention: Duration) -> Self {
        self.result_retention = retention;
        self
    }
}

impl Default for JetStreamOptions {
    fn default() -> Self {
        Self {
            url: "nats://127.0.0.1:4222".to_owned(),
            servers: Vec::new(),
            prefix: "cluster".to_owned(),
            ack_wait: Duration::from_secs(30),
            duplicate_window: Duration::from_secs(120),
            poll: Duration::from_millis(100),
            max_bytes: None,
            request_timeout: Duration::from_secs(5),
            replicas: 1,
            max_ack_pending: 100_000,
            result_retention: Duration::from_secs(300),
            max_results: 100_000,
        }
    }
}

/// What a [`JetStreamStore`] did since it opened.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct JetStreamStats {
    /// Jobs published (submissions accepted by JetStream or still waiting for its ack).
    pub published: u64,
    /// Jobs pulled for this hub's workers.
    pub pulled: u64,
    /// Of those, redeliveries (delivered before, to this hub or another).
    pub redelivered: u64,
    /// Jobs acked (done here).
    pub acked: u64,
    /// Negative acks (retries, released attempts).
    pub naked: u64,
    /// Jobs moved to the dead-letter stream from here.
    pub dead: u64,
    /// Jobs terminated (cancelled, or unreadable).
    pub terminated: u64,
    /// Messages stored in the results stream from here: each holds the outcomes of one or
    /// more jobs.
    pub outcome_messages: u64,
}

#[derive(Default)]
struct Counters {
    changes: AtomicU64,
    commits: AtomicU64,
    published: AtomicU64,
    pulled: AtomicU64,
    redelivered: AtomicU64,
    acked: AtomicU64,
    naked: AtomicU64,
    dead: AtomicU64,
    terminated: AtomicU64,
    outcome_messages: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// A job store on NATS JetStream, shared by the hubs of a cluster: see the
/// [module docs](self). Cheap to clone (clones share the connection).
#[derive(Clone)]
pub struct JetStreamStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for JetStreamStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JetStreamStore")
            .field("hub", &self.inner.hub)
            .field("prefix", &self.inner.options.prefix)
            .finish()
    }
}

/// A job pulled here and not yet answered: how to ack it, and where its outcome goes.
struct Inflight {
    reply: Subject,
    origin: Uuid,
    owner: Owner,
    /// The job's record, for the dead-letter stream.
    record: Bytes,
    /// The last failed attempt's error, until its `Dead` follows.
    error: Option<String>,
    attempts: u32,
    /// The last in-progress ack sent.
    last_progress: Instant,
    /// The last progress forwarded to the submitting hub.
    last_forward: Option<Instant>,
}

/// How long a lookup waits for a hub that knows the job ([`Inner::ask_hubs`]).
const FIND_WAIT: Duration = Duration::from_millis(250);
/// A hub's answer to a find: the job waits in the job stream at the sequence given (the
/// hub submitted it), or runs on that hub.
const FOUND_WAITING: u8 = 1;
const FOUND_RUNNING: u8 = 2;

/// Progress of one job is forwarded to its submitting hub at most this often.
const PROGRESS_EVERY: Duration = Duration::from_millis(20);

/// Ids of the last cancels heard: a job pulled after its cancel is terminated.
struct Recent {
    order: VecDeque<JobId>,
    set: HashSet<JobId, RandomState>,
}

/// Lanes not known yet are looked for every this many polls ([`Inner::discover`]).
const DISCOVER_EVERY: u32 = 10;

/// Cancels remembered.
const RECENT_CANCELS: usize = 10_000;
/// Publishes JetStream has not acknowledged yet, at most, per store (job publishes, and
/// the client's own bound, `max_ack_inflight`, on the others). A job publish past it
/// waits until an acknowledgement came.
const MAX_ACKS_IN_FLIGHT: usize = 5_000;

impl Recent {
    fn insert(&mut self, id: JobId) {
        if self.set.insert(id) {
            self.order.push_back(id);
            if self.order.len() > RECENT_CANCELS {
                if let Some(old) = self.order.pop_front() {
                    self.set.remove(&old);
                }
            }
        }
    }
}

struct Inner {
    hub: Uuid,
    options: JetStreamOptions,
    client: Client,
    js: Context,
    subjects: Subjects,
    /// Unbounded, but bounded by what feeds it: publishes by the queue's capacity,
    /// acks by the workers' credits.
    ops: mpsc::UnboundedSender<Op>,
    /// Taken by the op task when the queue starts.
    op_rx: Mutex<Option<mpsc::UnboundedReceiver<Op>>>,
    /// Outcomes to store, straight to the outcome task ([`run_outcomes`]): not through
    /// the op task, which cost every finished job one more channel hop and task wake
    /// (issue 13). Bounded by what feeds it, as `ops`.
    outcomes: mpsc::UnboundedSender<ToStore>,
    /// Taken by the op task, which starts the outcome task, when the queue starts.
    outcome_rx: Mutex<Option<mpsc::UnboundedReceiver<ToStore>>>,
    /// Subscriptions made at connect, handed to the listener task at start.
    subscriptions: Mutex<Option<Subscriptions>>,
    inflight: Mutex<IdMap<Inflight>>,
    /// The subject of each job name's level, by the name's hash ([`Subjects::ready`]),
    /// made once.
    ready: Mutex<HashMap<(u64, Level), Subject, RandomState>>,
    /// Where JetStream acknowledges job publishes: `<inbox>.<n>`, the publish's number
    /// in hex ([`run_confirmer`]).
    acks_inbox: String,
    /// Job publishes that may still be sent before an acknowledgement came back
    /// ([`MAX_ACKS_IN_FLIGHT`]).
    ack_permits: tokio::sync::Semaphore,
    /// Jobs submitted here and not resolved, with their stream sequence once known (0
    /// before), so a cancel can delete them, and their owner.
    submitted: Mutex<IdMap<(u64, Owner)>>,
    recent: Mutex<Recent>,
    /// The queue's feed, once started: for lookups of jobs taken elsewhere.
    feed: Mutex<Option<Feed>>,
    wake: Notify,
    /// The lanes kicks named since the puller last looked (a hub published jobs there):
    /// its levels found empty are pulled again.
    kicked: AtomicU8,
    /// The lanes known to have had jobs ([`Lanes`]): a kick or
    /// [`discover`](Inner::discover) adds to it; only their consumers are opened. The
    /// normal level from the start.
    known: AtomicU8,
    stop: CancellationToken,
    counters: Counters,
    /// Told once the op task wrote what was queued before a close.
    closed: Mutex<Option<std::sync::mpsc::Receiver<()>>>,
    closed_tx: Mutex<Option<std::sync::mpsc::Sender<()>>>,
    /// Told (its sender dropped) once the puller stopped, set at start: a close waits
    /// for it, so a job its last pull brings goes back before the op task ends.
    puller_stopped: Mutex<Option<std::sync::mpsc::Receiver<()>>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

struct Subscriptions {
    results: async_nats::Subscriber,
    progress: async_nats::Subscriber,
    cancels: async_nats::Subscriber,
    kicks: async_nats::Subscriber,
    finds: async_nats::Subscriber,
    /// JetStream's acknowledgements of job publishes: taken by the confirmer at start.
    acks: Option<async_nats::Subscriber>,
}

/// The subjects and names of one prefix.
struct Subjects {
    prefix: String,
    /// The prefix as a stream or consumer name token (`.` made `_`).
    name: String,
    stream: String,
    dead_stream: String,
    results_stream: String,
    delayed: String,
    /// The outcomes of jobs submitted here.
    results_here: String,
    /// The outcomes of every hub's jobs.
    results_all: String,
    progress_here: String,
    cancel: String,
    kick: String,
    /// Where a hub asks the others whether they know a job ([`Inner::ask_hubs`]).
    find: String,
}

impl Subjects {
    fn new(prefix: &str, hub: Uuid) -> Self {
        let hub = hub.simple();
        let name = prefix.replace('.', "_");
        let upper = name.to_uppercase();
        Self {
            prefix: prefix.to_owned(),
            stream: format!("{upper}_JOBS"),
            dead_stream: format!("{upper}_DEAD"),
            results_stream: format!("{upper}_RESULTS"),
            name,
            delayed: format!("{prefix}.__jobs.delayed.wait"),
            results_here: format!("{prefix}.__results.{hub}"),
            results_all: format!("{prefix}.__results.*"),
            progress_here: format!("{prefix}.__jobq.progress.{hub}"),
            cancel: format!("{prefix}.__jobq.cancel"),
            kick: format!("{prefix}.__jobq.kick"),
            find: format!("{prefix}.__jobq.find"),
        }
    }

    /// The subject of `name`'s jobs at `level`.
    fn ready(&self, name: &str, level: Level) -> String {
        format!(
            "{}.__jobs.{:016x}.{}",
            self.prefix,
            name_hash(name),
            level.token()
        )
    }

    /// Every name's subject at `level`.
    fn level_filter(&self, level: Level) -> String {
        format!("{}.__jobs.*.{}", self.prefix, level.token())
    }

    fn consumer(&self, name: &str, level: Level) -> String {
        format!("{}_{:016x}_{}", self.name, name_hash(name), level.token())
    }

    fn dead(&self, name: &str) -> String {
        format!("{}.__dead.{:016x}", self.prefix, name_hash(name))
    }

    /// Where the outcomes of jobs submitted on hub `origin` are stored (and delivered live
    /// to that hub).
    fn results_to(&self, origin: Uuid) -> String {
        format!("{}.__results.{}", self.prefix, origin.simple())
    }

    fn progress_to(&self, hub: Uuid) -> String {
        format!("{}.__jobq.progress.{}", self.prefix, hub.simple())
    }
}

/// FNV-1a: a job name's token in subjects and consumer names (names may hold characters
/// subjects cannot), the same in every process.
fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A priority level: one subject and consumer each, pulled in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Level {
    High = 0,
    Normal = 1,
    Low = 2,
}

const LEVELS: [Level; 3] = [Level::High, Level::Normal, Level::Low];

impl Level {
    fn of(priority: i32) -> Self {
        match priority {
            p if p > 0 => Level::High,
            0 => Level::Normal,
            _ => Level::Low,
        }
    }

    fn token(self) -> &'static str {
        match self {
            Level::High => "hi",
            Level::Normal => "mid",
            Level::Low => "lo",
        }
    }
}

/// A set of the job stream's lanes: the three levels and the delayed jobs, each with its
/// subject(s) and consumer(s). A kick names the lanes the kicking hub published to, and a
/// hub opens a lane's consumer only once it knows jobs were put there: the server walks
/// every consumer of the stream on each ack, so a cluster that never uses priorities or
/// delays pays for one consumer per name, not four (issue 13).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Lanes(u8);

impl Lanes {
    const NONE: Self = Self(0);
    const DELAYED: Self = Self(1 << 3);
    const ALL: Self = Self(0b1111);

    fn of(level: Level) -> Self {
        Self(1 << level as u8)
    }

    fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    fn with(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    /// The lanes a kick names: its payload's first byte. A kick of an older hub has no
    /// payload and stands for every lane.
    fn from_kick(payload: &[u8]) -> Self {
        payload
            .first()
            .map_or(Self::ALL, |&bits| Self(bits & Self::ALL.0))
    }
}

/// What the op task does, in the order it was asked.
enum Op {
    /// Publish a job to the stream.
    Publish {
        id: JobId,
        subject: Subject,
        /// The lane `subject` is in, for the kick.
        lane: Lanes,
        record: Bytes,
    },
    /// Finish the commit once the publishes before it are acknowledged.
    Sync(Commit),
    /// An ack of some kind to a pulled job's reply subject.
    Reply(Subject, AckKind),
    /// A core NATS message (progress).
    Core(String, Bytes),
    /// Move a job to the dead-letter stream, then store its outcome, whose `then`
    /// terminates it.
    Dead {
        subject: String,
        record: Bytes,
        headers: async_nats::HeaderMap,
        outcome: Stored,
    },
    /// Delete a job submitted here from the stream and tell every hub.
    Cancel(JobId),
    /// Write what is queued and stop.
    Close,
}

/// One job's outcome on its way to the results stream.
struct Stored {
    /// The hub that submitted the job: the outcome goes to its subject.
    origin: Uuid,
    /// The outcome ([`encode_outcome`]).
    payload: Bytes,
    /// Sent to the job's reply subject once the outcome is stored (an ack that cannot
    /// follow a stored outcome becomes a negative ack: the job runs again).
    then: Option<(Subject, AckKind)>,
}

/// A job's record in the stream: version, flags, origin hub, owner (if not the hub's),
/// submission time, due time (if delayed), name, options (if not the defaults), payload.
/// All integers little-endian. The parts a plain job does not need are left out (issue
/// 13: the server stores, hashes and delivers every byte; a plain job's record is 33
/// bytes shorter than in version 2, which hubs still read).
const RECORD_VERSION: u8 = 3;
/// Version 2: every part always there (hubs before version 3).
const RECORD_VERSION_2: u8 = 2;
/// Flags of a version 3 record: which optional parts follow.
const HAS_OWNER: u8 = 1;
const HAS_NOT_BEFORE: u8 = 2;
const HAS_OPTIONS: u8 = 4;

struct Record<'a> {
    origin: Uuid,
    owner: Owner,
    submitted_at: u64,
    not_before: u64,
    name: &'a str,
    options: JobOptions,
    payload: &'a [u8],
}

fn encode_record(
    (origin, owner): (Uuid, Owner),
    (submitted_at, not_before): (u64, u64),
    name: &str,
    options: &JobOptions,
    payload: &[u8],
) -> Bytes {
    // Most jobs carry the default options: then none are written.
    let options =
        (*options != JobOptions::default()).then(|| rmp_serde::to_vec(options).unwrap_or_default());
    let flags = (if owner == Owner::HUB { 0 } else { HAS_OWNER })
        | (if not_before == 0 { 0 } else { HAS_NOT_BEFORE })
        | (if options.is_some() { HAS_OPTIONS } else { 0 });
    let options_len = options.as_ref().map_or(0, |o| 4 + o.len());
    let name = &name.as_bytes()[..name.len().min(255)];
    // Exactly the record's length: a buffer filled to its capacity freezes without the
    // allocation `Bytes` otherwise makes for its shared part (one per job).
    let len = 2
        + 16
        + if flags & HAS_OWNER != 0 { 16 } else { 0 }
        + 8
        + if flags & HAS_NOT_BEFORE != 0 { 8 } else { 0 }
        + 1
        + name.len()
        + options_len
        + payload.len();
    let mut out = BytesMut::with_capacity(len);
    out.put_u8(RECORD_VERSION);
    out.put_u8(flags);
    out.put_u128_le(origin.as_u128());
    if flags & HAS_OWNER != 0 {
        out.put_u128_le(owner.0);
    }
    out.put_u64_le(submitted_at);
    if flags & HAS_NOT_BEFORE != 0 {
        out.put_u64_le(not_before);
    }
    // Job names are at most 255 bytes (checked at submission; cut above).
    out.put_u8(u8::try_from(name.len()).unwrap_or(u8::MAX));
    out.put_slice(name);
    if let Some(options) = &options {
        out.put_u32_le(u32::try_from(options.len()).unwrap_or(u32::MAX));
        out.put_slice(options);
    }
    out.put_slice(payload);
    debug_assert_eq!(out.len(), len);
    out.freeze()
}

/// Reads a record (version 3, or 2 from older hubs); the stream is shared
/// infrastructure, so every length and flag is checked.
fn decode_record(bytes: &[u8]) -> Result<Record<'_>, &'static str> {
    fn take<'a, const N: usize>(bytes: &mut &'a [u8]) -> Result<&'a [u8; N], &'static str> {
        let (head, rest) = bytes.split_first_chunk::<N>().ok_or("truncated record")?;
        *bytes = rest;
        Ok(head)
    }
    fn take_n<'a>(bytes: &mut &'a [u8], n: usize) -> Result<&'a [u8], &'static str> {
        if bytes.len() < n {
            return Err("truncated record");
        }
        let (head, rest) = bytes.split_at(n);
        *bytes = rest;
        Ok(head)
    }
    let mut rest = bytes;
    let flags = match take::<1>(&mut rest)?[0] {
        RECORD_VERSION => match take::<1>(&mut rest)?[0] {
            flags if flags & !(HAS_OWNER | HAS_NOT_BEFORE | HAS_OPTIONS) == 0 => flags,
            _ => return Err("unknown record flags"),
        },
        RECORD_VERSION_2 => HAS_OWNER | HAS_NOT_BEFORE | HAS_OPTIONS,
        _ => return Err("unknown record version"),
    };
    let origin = u128::from_le_bytes(*take(&mut rest)?);
    let owner = if flags & HAS_OWNER != 0 {
        u128::from_le_bytes(*take(&mut rest)?)
    } else {
        Owner::HUB.0
    };
    let submitted_at = u64::from_le_bytes(*take(&mut rest)?);
    let not_before = if flags & HAS_NOT_BEFORE != 0 {
        u64::from_le_bytes(*take(&mut rest)?)
    } else {
        0
    };
    let name_len = usize::from(take::<1>(&mut rest)?[0]);
    let name = std::str::from_utf8(take_n(&mut rest, name_len)?).map_err(|_| "name not UTF-8")?;
    let options = if flags & HAS_OPTIONS != 0 {
        let len = u32::from_le_bytes(*take(&mut rest)?);
        let len = usize::try_from(len).map_err(|_| "length")?;
        rmp_serde::from_slice(take_n(&mut rest, len)?).map_err(|_| "bad options")?
    } else {
        JobOptions::default()
    };
    Ok(Record {
        origin: Uuid::from_u128(origin),
        owner: Owner(owner),
        submitted_at,
        not_before,
        name,
        options,
        payload: rest,
    })
}

/// A job's outcome in the results stream: u128 id, u128 owner, u8 status (0 output, 1
/// error), then the output or the MessagePack-encoded [`JobError`].
fn encode_outcome(id: JobId, owner: Owner, outcome: Result<&[u8], &JobError>) -> Bytes {
    let error = outcome
        .err()
        .map(|error| rmp_serde::to_vec(error).unwrap_or_default());
    let body = match (outcome, &error) {
        (Ok(output), _) => output,
        (Err(_), error) => error.as_deref().unwrap_or_default(),
    };
    // Sized once (grown from empty, it was reallocated on the way).
    let mut out = BytesMut::with_capacity(33 + body.len());
    out.put_u128_le(id);
    out.put_u128_le(owner.0);
    out.put_u8(u8::from(outcome.is_err()));
    out.put_slice(body);
    out.freeze()
}

/// A job's outcome: its id, owner, and output or error.
type Outcome = (JobId, Owner, Result<Bytes, JobError>);

/// The version of a message of the results stream: outcomes, each a u32 length and an
/// outcome ([`encode_outcome`]).
const OUTCOMES_VERSION: u8 = 1;

/// The outcomes in a message of the results stream. A malformed outcome is skipped; a
/// length past the end, or an unknown version, ends the reading (the stream is shared
/// infrastructure: every length is checked).
fn outcomes(message: &Bytes) -> impl Iterator<Item = Outcome> + '_ {
    let mut at = if message.first() == Some(&OUTCOMES_VERSION) {
        1
    } else {
        message.len()
    };
    std::iter::from_fn(move || {
        let head = message.get(at..at.checked_add(4)?)?;
        let len = usize::try_from(u32::from_le_bytes(head.try_into().ok()?)).ok()?;
        let start = at + 4;
        let end = start.checked_add(len).filter(|&end| end <= message.len())?;
        at = end;
        Some(decode_outcome(&message.slice(start..end)))
    })
    .flatten()
}

fn decode_outcome(bytes: &Bytes) -> Option<Outcome> {
    let id = u128::from_le_bytes(bytes.get(..16)?.try_into().ok()?);
    let owner = Owner(u128::from_le_bytes(bytes.get(16..32)?.try_into().ok()?));
    let body = bytes.slice(33.min(bytes.len())..);
    match bytes.get(32)? {
        0 => Some((id, owner, Ok(body))),
        1 => Some((id, owner, Err(rmp_serde::from_slice(&body).ok()?))),
        _ => None,
    }
}

/// How many times JetStream delivered the job whose ack subject is `reply`
/// (`$JS.ACK.<stream>.<consumer>.<delivered>.…`, or with a domain and an account hash
/// before the stream: 9 tokens or more after `$JS.ACK.`).
fn delivery_count(reply: &str) -> Option<u64> {
    // Bytes, not `str::split`: this runs for every job pulled, and a search per token
    // cost more than the rest of taking the job.
    let tokens = reply.strip_prefix("$JS.ACK.")?.as_bytes();
    let at = if tokens.iter().filter(|&&b| b == b'.').count() >= 8 {
        4
    } else {
        2
    };
    let token = tokens.split(|&b| b == b'.').nth(at)?;
    std::str::from_utf8(token).ok()?.parse().ok()
}

/// The job id a job message carries as its message id (`<id>`, `<id>.due` once moved
/// from the delayed subject, `<id>.<requeue>` once requeued from the dead letters).
fn message_id(headers: &async_nats::HeaderMap) -> Option<JobId> {
    // Found by a scan of the (one or few) headers, not by hashing the name, and split by
    // byte: this runs for every job pulled (~900 instructions per job before, issue 13).
    let (_, values) = headers
        .iter()
        .find(|(name, _)| **name == async_nats::header::NATS_MESSAGE_ID)?;
    let value = values.first()?.as_str();
    // `.` is ASCII: the byte's index is a char boundary.
    let id = value
        .bytes()
        .position(|b| b == b'.')
        .map_or(value, |dot| &value[..dot]);
    decode_msg_id(id)
}

/// The digits of a job's message id: base64url's.
const MSG_ID_DIGITS: &[u8; 64] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
/// The length of a job's message id: 128 bits in 6-bit digits.
const MSG_ID_LEN: usize = 22;

/// A job's id as its message id: 22 base64url digits, most significant first (the server
/// keeps every message id of the duplicate window, and the 32 hex digits of before cost
/// it and every delivery 10 bytes more).
fn encode_msg_id(id: JobId, out: &mut [u8; MSG_ID_LEN]) -> &str {
    for (at, digit) in out.iter_mut().enumerate() {
        let shift = 6 * (MSG_ID_LEN - 1 - at);
        *digit = MSG_ID_DIGITS[usize::try_from((id >> shift) & 63).unwrap_or(0)];
    }
    // Every digit is ASCII.
    std::str::from_utf8(out).unwrap_or_default()
}

/// A job id from its message id ([`encode_msg_id`]), or from a UUID (messages stored by
/// hubs before the short ids); `None` for anything else: the stream is shared
/// infrastructure.
fn decode_msg_id(text: &str) -> Option<JobId> {
    if text.len() != MSG_ID_LEN {
        return Some(Uuid::try_parse(text).ok()?.as_u128());
    }
    // Each digit's value by table (a match per digit was half of reading a job's id,
    // issue 13); 64 marks a byte that is no digit.
    const VALUES: [u8; 256] = {
        let mut values = [64; 256];
        let mut at = 0;
        while at < 64 {
            values[MSG_ID_DIGITS[at] as usize] = at as u8;
            at += 1;
        }
        values
    };
    let mut id = 0u128;
    let mut invalid = 0;
    for &digit in text.as_bytes() {
        let value = VALUES[usize::from(digit)];
        invalid |= value;
        id = (id << 6) | u128::from(value & 63);
    }
    // A byte that is no digit, or past 128 bits (the first digit holds the top 2 bits
    // only: one text per id).
    (invalid & 64 == 0 && MSG_ID_DIGITS[..4].contains(&text.as_bytes()[0])).then_some(id)
}

/// A message of the dead-letter stream as the hubs list it: the job's id, attempts and
/// last error from its headers, its name and payload from its record. `None` for a
/// message a hub did not write.
fn dead_job(message: &StreamMessage) -> Option<DeadJob> {
    let header = |name: &str| message.headers.get(name).map(|v| v.as_str().to_owned());
    let id = Uuid::try_parse(&header("Cluster-Job")?).ok()?.as_u128();
    let attempts = header("Cluster-Attempts")?.parse().ok()?;
    let record = decode_record(&message.payload).ok()?;
    Some(DeadJob {
        id,
        name: record.name.to_owned(),
        attempts,
        last_error: header("Cluster-Error").unwrap_or_default(),
        payload: record.payload.to_vec(),
        history: Vec::new(),
    })
}

fn decode_id(bytes: &[u8]) -> Option<JobId> {
    Some(u128::from_le_bytes(bytes.get(..16)?.try_into().ok()?))
}

fn store_error(what: &str, error: impl std::fmt::Display) -> StoreError {
    StoreError::Io(format!("NATS JetStream: {what}: {error}"))
}

fn now_millis() -> u64 {
    super::unix_millis(SystemTime::now())
}

impl JetStreamStore {
    /// Connects to the NATS server and creates (or opens) the job and dead-letter streams.
    ///
    /// # Errors
    /// A prefix that is not a single token of letters, digits, `_` and `-`; a server that
    /// cannot be reached, or that has no JetStream.
    pub async fn connect(options: JetStreamOptions) -> Result<Self, StoreError> {
        let valid = options.prefix.split('.').all(|token| {
            !token.is_empty()
                && token
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        });
        if !valid {
            return Err(StoreError::Io(format!(
                "invalid JetStream subject prefix {:?}: use letters, digits, '_' and '-' (tokens joined by '.')",
                options.prefix
            )));
        }
        let servers: Vec<&str> = std::iter::once(options.url.as_str())
            .chain(options.servers.iter().map(String::as_str))
            .collect();
        let client = async_nats::ConnectOptions::new()
            .request_timeout(Some(options.request_timeout))
            // Retries every 100 ms, then every second at most: a hub is back within about
            // a second of the server (the client's default grows to 4 s).
            .reconnect_delay_callback(|attempts| {
                Duration::from_millis(100u64.saturating_mul(attempts as u64).min(1000))
            })
            .connect(servers)
            .await
            .map_err(|e| store_error("connect", e))?;
        let js = jetstream::ContextBuilder::new()
            .timeout(options.request_timeout)
            .ack_timeout(options.request_timeout)
            .max_ack_inflight(MAX_ACKS_IN_FLIGHT)
            .build(client.clone());
        let hub = Uuid::new_v4();
        let subjects = Subjects::new(&options.prefix, hub);
        let max_bytes = options
            .max_bytes
            .map_or(-1, |b| i64::try_from(b).unwrap_or(i64::MAX));
        js.get_or_create_stream(jetstream::stream::Config {
            name: subjects.stream.clone(),
            subjects: vec![format!("{}.__jobs.>", options.prefix)],
            retention: RetentionPolicy::WorkQueue,
            storage: StorageType::File,
            duplicate_window: options.duplicate_window,
            max_bytes,
            discard: DiscardPolicy::New,
            num_replicas: options.replicas,
            ..Default::default()
        })
        .await
        .map_err(|e| store_error("job stream", e))?;
        js.get_or_create_stream(jetstream::stream::Config {
            name: subjects.dead_stream.clone(),
            subjects: vec![format!("{}.__dead.>", options.prefix)],
            retention: RetentionPolicy::Limits,
            storage: StorageType::File,
            num_replicas: options.replicas,
            ..Default::default()
        })
        .await
        .map_err(|e| store_error("dead-letter stream", e))?;
        // Outcomes, many per message, on one subject per submitting hub (see
        // `run_outcomes`), kept for the result retention. Updated if it exists: it held
        // one outcome per subject before.
        let max_age = options.result_retention.max(Duration::from_secs(1));
        js.create_or_update_stream(jetstream::stream::Config {
            name: subjects.results_stream.clone(),
            subjects: vec![format!("{}.__results.>", options.prefix)],
            retention: RetentionPolicy::Limits,
            storage: StorageType::File,
            max_age,
            max_messages: i64::try_from(options.max_results)
                .unwrap_or(i64::MAX)
                .max(1),
            discard: DiscardPolicy::Old,
            num_replicas: options.replicas,
            ..Default::default()
        })
        .await
        .map_err(|e| store_error("results stream", e))?;
        let subscribe = |subject: String| {
            let client = client.clone();
            async move {
                client
                    .subscribe(subject)
                    .await
                    .map_err(|e| store_error("subscribe", e))
            }
        };
        let acks_inbox = client.new_inbox();
        let subscriptions = Subscriptions {
            results: subscribe(subjects.results_here.clone()).await?,
            progress: subscribe(subjects.progress_here.clone()).await?,
            cancels: subscribe(subjects.cancel.clone()).await?,
            kicks: subscribe(subjects.kick.clone()).await?,
            finds: subscribe(subjects.find.clone()).await?,
            acks: Some(subscribe(format!("{acks_inbox}.*")).await?),
        };
        let (ops, op_rx) = mpsc::unbounded_channel();
        let (outcomes, outcome_rx) = mpsc::unbounded_channel();
        let (closed_tx, closed) = std::sync::mpsc::channel();
        Ok(Self {
            inner: Arc::new(Inner {
                hub,
                options,
                client,
                js,
                subjects,
                ops,
                op_rx: Mutex::new(Some(op_rx)),
                outcomes,
                outcome_rx: Mutex::new(Some(outcome_rx)),
                subscriptions: Mutex::new(Some(subscriptions)),
                inflight: Mutex::default(),
                ready: Mutex::default(),
                acks_inbox,
                ack_permits: tokio::sync::Semaphore::new(MAX_ACKS_IN_FLIGHT),
                submitted: Mutex::default(),
                recent: Mutex::new(Recent {
                    order: VecDeque::new(),
                    set: HashSet::default(),
                }),
                feed: Mutex::new(None),
                wake: Notify::new(),
                kicked: AtomicU8::new(0),
                known: AtomicU8::new(Lanes::of(Level::Normal).0),
                stop: CancellationToken::new(),
                counters: Counters::default(),
                closed: Mutex::new(Some(closed)),
                closed_tx: Mutex::new(Some(closed_tx)),
                puller_stopped: Mutex::new(None),
            }),
        })
    }

    /// This hub's id in the cluster (where the outcomes of jobs submitted here go).
    pub fn hub_id(&self) -> Uuid {
        self.inner.hub
    }

    /// The job stream's name (`<PREFIX>_JOBS`).
    pub fn stream_name(&self) -> &str {
        &self.inner.subjects.stream
    }

    /// The dead-letter stream's name (`<PREFIX>_DEAD`).
    pub fn dead_stream_name(&self) -> &str {
        &self.inner.subjects.dead_stream
    }

    /// The results stream's name (`<PREFIX>_RESULTS`).
    pub fn results_stream_name(&self) -> &str {
        &self.inner.subjects.results_stream
    }

    /// What this store did since it opened.
    pub fn jetstream_stats(&self) -> JetStreamStats {
        let c = &self.inner.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        JetStreamStats {
            published: get(&c.published),
            pulled: get(&c.pulled),
            redelivered: get(&c.redelivered),
            acked: get(&c.acked),
            naked: get(&c.naked),
            dead: get(&c.dead),
            terminated: get(&c.terminated),
            outcome_messages: get(&c.outcome_messages),
        }
    }
}

impl Inner {
    /// [`Subjects::ready`], made once per name and level.
    fn ready_subject(&self, name: &str, level: Level) -> Subject {
        lock(&self.ready)
            .entry((name_hash(name), level))
            .or_insert_with(|| Subject::from(self.subjects.ready(name, level)))
            .clone()
    }

    fn send(&self, op: Op) {
        let _ = self.ops.send(op);
    }

    /// Tells every hub that jobs were put in `lanes`.
    async fn kick(&self, lanes: Lanes) {
        let _ = self
            .client
            .publish(
                self.subjects.kick.clone(),
                Bytes::copy_from_slice(&[lanes.0]),
            )
            .await;
    }

    /// The lanes known to have had jobs.
    fn known(&self) -> Lanes {
        Lanes(self.known.load(Ordering::Acquire))
    }

    /// Finds the lanes not known yet where jobs wait (a kick lost, or jobs put there
    /// before this hub started): one stream info request, filtered on the lane's
    /// subjects, per such lane.
    async fn discover(&self, stream: &jetstream::stream::Stream) {
        let lanes = [
            (
                Lanes::of(Level::High),
                self.subjects.level_filter(Level::High),
            ),
            (
                Lanes::of(Level::Low),
                self.subjects.level_filter(Level::Low),
            ),
            (Lanes::DELAYED, self.subjects.delayed.clone()),
        ];
        for (lane, filter) in lanes {
            if self.known().contains(lane) {
                continue;
            }
            match stream.info_with_subjects(&filter).await {
                // Only subjects holding messages are listed.
                Ok(mut subjects) => {
                    if let Ok(Some(_)) = subjects.next().await.transpose() {
                        self.known.fetch_or(lane.0, Ordering::AcqRel);
                    }
                }
                Err(error) => tracing::debug!(%error, "cannot look for waiting jobs"),
            }
        }
    }

    fn reply(&self, reply: Subject, kind: AckKind) {
        let counter = match kind {
            AckKind::Ack => Some(&self.counters.acked),
            AckKind::Nak(_) => Some(&self.counters.naked),
            AckKind::Term => Some(&self.counters.terminated),
            AckKind::Progress | AckKind::Next => None,
        };
        if let Some(counter) = counter {
            bump(counter);
        }
        self.send(Op::Reply(reply, kind));
    }

    /// Stores job `id`'s outcome in the results stream (its submitting hub `origin` gets
    /// it live); then sends `then`, if any, to the job's reply subject.
    fn outcome_to(
        &self,
        (origin, owner): (Uuid, Owner),
        id: JobId,
        outcome: Result<&[u8], &JobError>,
        then: Option<(Subject, AckKind)>,
    ) {
        let _ = self.outcomes.send(ToStore::Outcome(Stored {
            origin,
            payload: encode_outcome(id, owner, outcome),
            then,
        }));
    }

    /// A job pulled for this hub: added to `taken`, to be queued here
    /// ([`hand_over`](Self::hand_over)), unless it was cancelled, cannot be read, or runs
    /// here already (a redelivery while it runs: the new delivery's claim is kept).
    ///
    /// `now` is when the pull that brought it was sent (one clock read per pull): its
    /// claim is renewed from then.
    fn take(&self, message: async_nats::Message, taken: &mut Vec<PulledJob>, now: Instant) {
        let Some(reply) = message.reply.clone() else {
            return;
        };
        let delivered = delivery_count(&reply).unwrap_or(1);
        bump(&self.counters.pulled);
        if delivered > 1 {
            bump(&self.counters.redelivered);
        }
        let record = match decode_record(&message.payload) {
            Ok(record) => record,
            Err(why) => {
                tracing::warn!(subject = %message.subject, why, "unreadable job in the stream: terminated");
                return self.reply(reply, AckKind::Term);
            }
        };
        let Some(id) = message.headers.as_ref().and_then(message_id) else {
            tracing::warn!(subject = %message.subject, "job without an id in the stream: terminated");
            return self.reply(reply, AckKind::Term);
        };
        if lock(&self.recent).set.contains(&id) {
            // Cancelled while it waited: whoever waits for it learns so.
            bump(&self.counters.terminated);
            let then = Some((reply, AckKind::Term));
            let whose = (record.origin, record.owner);
            return self.outcome_to(whose, id, Err(&JobError::Cancelled), then);
        }
        let attempts = u32::try_from(delivered.saturating_sub(1)).unwrap_or(u32::MAX);
        {
            let mut inflight = lock(&self.inflight);
            if let Some(running) = inflight.get_mut(&id) {
                running.reply = reply;
                return;
            }
            inflight.insert(
                id,
                Inflight {
                    reply: reply.clone(),
                    origin: record.origin,
                    owner: record.owner,
                    record: message.payload.clone(),
                    error: None,
                    attempts,
                    last_progress: now,
                    last_forward: None,
                },
            );
        }
        // The payload stays in the message's buffer (no copy, no allocation).
        let mut job = PulledJob::new(
            id,
            record.name.to_owned(),
            message.payload.slice_ref(record.payload),
            record.options,
        );
        job.attempts = attempts;
        job.submitted_at = record.submitted_at;
        taken.push(job);
    }

    /// Queues the jobs [`take`](Self::take) took, in one go (one hold of the queue's lock,
    /// which a multi-thread runtime's other thread, answering jobs, would otherwise wait
    /// for once per job); when the hub stopped meanwhile, they go back to the others at
    /// once.
    fn hand_over(&self, taken: &mut Vec<PulledJob>, feed: &Feed) {
        if taken.is_empty() || feed.pulled_many(taken) {
            return;
        }
        for job in taken.drain(..) {
            if let Some(job) = lock(&self.inflight).remove(&job.id) {
                self.reply(job.reply, AckKind::Nak(None));
            }
        }
    }

    /// Pulls for the free credits of each name, levels in order, until nothing comes;
    /// then waits for a wake, a kick or the poll interval.
    ///
    /// Every pull is answered on one subscription the puller holds for good (a reply
    /// subject per pull under one inbox): a pull costs one request, not a subscription
    /// made and dropped around it as `fetch` does.
    async fn run_puller(self: Arc<Self>, feed: Feed, _stopped: std::sync::mpsc::Sender<()>) {
        let mut consumers: HashMap<(Arc<str>, Level), PullConsumer> = HashMap::new();
        let inbox = self.client.new_inbox();
        let (stream, mut answers) = loop {
            let opened = async {
                let stream = self
                    .js
                    .get_stream(&self.subjects.stream)
                    .await
                    .map_err(|e| e.to_string())?;
                let answers = self
                    .client
                    .subscribe(format!("{inbox}.*"))
                    .await
                    .map_err(|e| e.to_string())?;
                Ok::<_, String>((stream, answers))
            };
            match opened.await {
                Ok(opened) => break opened,
                Err(error) => {
                    tracing::warn!(%error, "job stream unavailable; retrying");
                    tokio::select! {
                        () = self.stop.cancelled() => return,
                        () = tokio::time::sleep(self.options.poll.max(Duration::from_millis(100))) => {}
                    }
                }
            }
        };
        let mut pulls = 0u64;
        // The jobs of a pull on their way to the queue.
        let mut taken = Vec::new();
        // Levels a pull found empty: not asked again (each ask is a request to the
        // server, and most wakes are credits freeing up) until a kick says jobs were
        // published, or the poll interval passed (retries and redeliveries come with no
        // kick).
        let mut dry: HashSet<(Arc<str>, Level)> = HashSet::new();
        let mut last_sweep = Instant::now();
        // Lanes are looked for at start, then every DISCOVER_EVERY polls.
        let mut last_discovery: Option<Instant> = None;
        let discover_every = self.options.poll.saturating_mul(DISCOVER_EVERY);
        let mut next_progress = Instant::now() + self.options.ack_wait / 3;
        loop {
            let kicked = Lanes(self.kicked.swap(0, Ordering::AcqRel));
            if last_sweep.elapsed() >= self.options.poll {
                dry.clear();
                last_sweep = Instant::now();
            } else if kicked != Lanes::NONE {
                dry.retain(|(_, level)| !kicked.contains(Lanes::of(*level)));
            }
            if !self.known().contains(Lanes::ALL)
                && last_discovery.is_none_or(|at| at.elapsed() >= discover_every)
            {
                self.discover(&stream).await;
                last_discovery = Some(Instant::now());
            }
            let known = self.known();
            for name in feed.names() {
                for level in LEVELS {
                    let key = (Arc::clone(&name), level);
                    // A level no job was put in has no consumer, and needs none. Looked
                    // at first: the free credits take the queue's lock.
                    if !known.contains(Lanes::of(level)) || dry.contains(&key) {
                        continue;
                    }
                    let free = feed.free(&name);
                    // Closing: no more pulls (the one answered last is taken in).
                    if free == 0 || self.stop.is_cancelled() {
                        break;
                    }
                    let consumer = match consumers.get(&key) {
                        Some(consumer) => consumer,
                        None => match self.consumer(&stream, &name, level).await {
                            Ok(consumer) => consumers.entry(key).or_insert(consumer),
                            Err(error) => {
                                tracing::warn!(%error, job.name = %name, "cannot open a job consumer");
                                continue;
                            }
                        },
                    };
                    pulls = pulls.wrapping_add(1);
                    let reply = Subject::from(format!("{inbox}.{pulls:x}"));
                    let answered = (&mut answers, &mut taken);
                    let pulled = self.pull(consumer, free, reply, answered, &feed).await;
                    if pulled < free {
                        dry.insert((Arc::clone(&name), level));
                    } else {
                        // This level may hold more: the credits freed from now on go to
                        // it, not to a lower level (the next wake starts from the top).
                        break;
                    }
                }
            }
            if !feed.is_open() {
                self.stop.cancel();
                return;
            }
            if Instant::now() >= next_progress {
                self.keep_claims();
                next_progress = Instant::now() + self.options.ack_wait / 3;
            }
            let sleep = self.options.poll.min(next_progress - Instant::now());
            tokio::select! {
                () = self.stop.cancelled() => return,
                // Credits freed: pull at once. Credits freed while a pull is answered
                // go in the next one, so a pull asks for more jobs the busier the hub
                // is, with no timer holding free credits back.
                () = self.wake.notified() => {}
                () = tokio::time::sleep(sleep) => {}
            }
        }
    }

    /// Asks `consumer` for at most `want` jobs, answered on `reply` (under the puller's
    /// inbox, which `answers` holds), and takes each job that comes, until the server says
    /// there are no more, `want` came, or the request timeout passed since the pull was
    /// sent (a pull sent just before the server went away is never answered, and waiting
    /// for it would stop this hub pulling for good). A job late for an earlier pull that
    /// gave up is taken too (it was delivered to this hub) and counted as this pull's.
    /// The jobs already received are queued together, before waiting for more (`taken`
    /// holds them meanwhile). Returns how many jobs came.
    async fn pull(
        &self,
        consumer: &PullConsumer,
        want: usize,
        reply: Subject,
        (answers, taken): (&mut async_nats::Subscriber, &mut Vec<PulledJob>),
        feed: &Feed,
    ) -> usize {
        let request = pull::BatchConfig {
            batch: want,
            no_wait: true,
            ..Default::default()
        };
        if let Err(error) = consumer.request_batch(request, reply.clone()).await {
            tracing::debug!(%error, "pull failed");
            return 0;
        }
        let mut pulled = 0;
        // One deadline for the whole pull: no clock read per job.
        let now = Instant::now();
        let deadline = now + self.options.request_timeout;
        while pulled < want {
            let next = match answers.next().now_or_never() {
                Some(next) => next,
                None => {
                    self.hand_over(taken, feed);
                    match tokio::time::timeout_at(deadline, answers.next()).await {
                        Ok(next) => next,
                        Err(_) => {
                            tracing::debug!("pull unanswered: asking again");
                            break;
                        }
                    }
                }
            };
            let Some(message) = next else {
                break;
            };
            match message.status {
                // A job comes on its own subject, whichever pull it answers.
                None | Some(StatusCode::OK) => {
                    pulled += 1;
                    self.take(message, taken, now);
                }
                Some(StatusCode::IDLE_HEARTBEAT) => {}
                // No more jobs (404), fewer than asked (408), too many unacked (409):
                // this pull is over (a status comes on the pull's reply subject).
                Some(status) if message.subject == reply => {
                    tracing::trace!(%status, "pull ended");
                    break;
                }
                Some(_) => {}
            }
        }
        self.hand_over(taken, feed);
        pulled
    }

    /// The next message of a fetch, or `None` once it ended, failed, or got no answer
    /// within the request timeout (a no-wait fetch has no timer of its own).
    async fn next_pulled(&self, batch: &mut pull::Batch) -> Option<jetstream::Message> {
        match tokio::time::timeout(self.options.request_timeout, batch.next()).await {
            Ok(Some(Ok(message))) => Some(message),
            Ok(Some(Err(error))) => {
                tracing::debug!(%error, "pull ended");
                None
            }
            Ok(None) => None,
            Err(_) => {
                tracing::debug!("pull unanswered: asking again");
                None
            }
        }
    }

    /// The durable pull consumer of `name` at `level`, created if missing.
    async fn consumer(
        &self,
        stream: &jetstream::stream::Stream,
        name: &str,
        level: Level,
    ) -> Result<PullConsumer, String> {
        let durable = self.subjects.consumer(name, level);
        // Created, or updated: before, jobs had a subject each under this one.
        stream
            .create_consumer(pull::Config {
                durable_name: Some(durable.clone()),
                filter_subject: self.subjects.ready(name, level),
                ack_policy: AckPolicy::Explicit,
                ack_wait: self.options.ack_wait,
                max_deliver: -1,
                max_ack_pending: i64::from(self.options.max_ack_pending),
                ..Default::default()
            })
            .await
            .map_err(|e| e.to_string())
    }

    /// Every job running here is in progress: its claim holds for another ack wait.
    fn keep_claims(&self) {
        let replies: Vec<Subject> = lock(&self.inflight)
            .values_mut()
            .map(|job| {
                job.last_progress = Instant::now();
                job.reply.clone()
            })
            .collect();
        for reply in replies {
            self.reply(reply, AckKind::Progress);
        }
    }

    /// Moves delayed jobs that are due to their name's subject; asks again for the others
    /// when they are due.
    async fn run_delays(self: Arc<Self>) {
        // No consumer on the delayed jobs' subject before a job was delayed.
        while !self.known().contains(Lanes::DELAYED) {
            tokio::select! {
                () = self.stop.cancelled() => return,
                () = tokio::time::sleep(self.options.poll) => {}
            }
        }
        let consumer = loop {
            let made = async {
                let stream = self
                    .js
                    .get_stream(&self.subjects.stream)
                    .await
                    .map_err(|e| e.to_string())?;
                let durable = format!("{}_delayed", self.subjects.prefix);
                stream
                    .create_consumer(pull::Config {
                        durable_name: Some(durable.clone()),
                        filter_subject: self.subjects.delayed.clone(),
                        ack_policy: AckPolicy::Explicit,
                        ack_wait: self.options.ack_wait,
                        max_deliver: -1,
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| e.to_string())
            };
            match made.await {
                Ok(consumer) => break consumer,
                Err(error) => {
                    tracing::warn!(%error, "delayed-job consumer unavailable; retrying");
                    tokio::select! {
                        () = self.stop.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        };
        loop {
            let mut got = 0usize;
            if let Ok(mut batch) = consumer.fetch().max_messages(256).messages().await {
                while let Some(message) = self.next_pulled(&mut batch).await {
                    got += 1;
                    self.move_if_due(message).await;
                }
            }
            if got == 0 {
                tokio::select! {
                    () = self.stop.cancelled() => return,
                    () = tokio::time::sleep(self.options.poll) => {}
                }
            }
        }
    }

    async fn move_if_due(&self, message: jetstream::Message) {
        let Ok(record) = decode_record(&message.payload) else {
            let _ = message.ack_with(AckKind::Term).await;
            return;
        };
        let now = now_millis();
        if record.not_before > now {
            let wait = Duration::from_millis(record.not_before - now);
            let _ = message.ack_with(AckKind::Nak(Some(wait))).await;
            return;
        }
        let Some(id) = message.headers.as_ref().and_then(message_id) else {
            let _ = message.ack_with(AckKind::Term).await;
            return;
        };
        let level = Level::of(record.options.priority);
        let subject = self.subjects.ready(record.name, level);
        let publish = jetstream::message::PublishMessage::build()
            .payload(message.payload.clone())
            .message_id(format!("{}.due", encode_msg_id(id, &mut [0; MSG_ID_LEN])));
        let moved = match self.js.send_publish(subject, publish).await {
            Ok(ack) => ack.await.is_ok(),
            Err(_) => false,
        };
        if moved {
            let _ = message.ack().await;
            self.kick(Lanes::of(level)).await;
        }
    }

    /// Finds the outcome of job `id`, submitted or taken elsewhere, for a handle attached
    /// here: listens to every hub's outcomes, reads the results stream for it (all of it,
    /// which the result retention bounds), and, when it is not there, finds out whether
    /// the job is in the job stream ([`find_job`](Self::find_job)): then its outcome
    /// comes live; else there is no such job.
    async fn watch(self: Arc<Self>, id: JobId, feed: Feed) {
        let found = async {
            let mut live = self
                .client
                .subscribe(self.subjects.results_all.clone())
                .await
                .map_err(|e| store_error("subscribe", e))?;
            // Stored before the subscription: in the stream; after: live. A death is
            // not the last word: the job may have been requeued since (it is in the job
            // stream then).
            let stored = self.stored_outcome(id).await?;
            let dead = |o: &Outcome| matches!(o.2, Err(JobError::Dead { .. }));
            if stored.as_ref().is_some_and(|o| !dead(o)) {
                return Ok(stored);
            }
            let pending = self.find_job(id).await?;
            loop {
                // A job left the job stream only once its outcome was stored, and the
                // server sent that outcome here before it answered the lookup on the
                // same connection: a job not found has its outcome here already, or
                // none.
                let next = if pending {
                    live.next().await
                } else {
                    match live.next().now_or_never() {
                        Some(next) => next,
                        None => return Ok(stored),
                    }
                };
                let Some(message) = next else {
                    return Err(StoreError::Closed);
                };
                let outcome = outcomes(&message.payload).find(|o| o.0 == id);
                if outcome.is_some() {
                    return Ok(outcome);
                }
            }
        };
        let outcome = tokio::select! {
            () = self.stop.cancelled() => return,
            outcome = found => outcome,
        };
        match outcome {
            Ok(Some((_, owner, outcome))) => feed.resolved(id, owner, outcome),
            Ok(None) => feed.missing(id, JobError::NotFound),
            Err(error) => feed.missing(id, JobError::Store(error)),
        }
    }

    /// Whether job `id` is in the job stream (waiting or running). Jobs share their level's subject, so the hubs are asked
    /// first ([`ask_hubs`](Self::ask_hubs)): the one running it, or its submitter (which
    /// knows its sequence). When none knows it (its submitter is gone, and it waits), the
    /// job stream is read message by message.
    async fn find_job(&self, id: JobId) -> Result<bool, StoreError> {
        let stream = self
            .js
            .get_stream_no_info(&self.subjects.stream)
            .await
            .map_err(|e| store_error("lookup", e))?;
        match self.ask_hubs(id).await {
            Some((FOUND_RUNNING, _)) => Ok(true),
            Some((_, seq)) => self.job_from(&stream, id, seq, false).await,
            None => self.job_from(&stream, id, 1, true).await,
        }
    }

    /// Whether job `id` is in the job stream at sequence `seq`, or (`scan`) at or after
    /// it.
    async fn job_from(
        &self,
        stream: &jetstream::stream::Stream<()>,
        id: JobId,
        mut seq: u64,
        scan: bool,
    ) -> Result<bool, StoreError> {
        let every_job = format!("{}.__jobs.>", self.subjects.prefix);
        loop {
            let mut get = stream.raw_message_builder().sequence(seq);
            if scan {
                get = get.next_by_subject(every_job.clone());
            }
            let message = match get.send().await {
                Ok(message) => message,
                Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => return Ok(false),
                Err(e) => return Err(store_error("lookup", e)),
            };
            if message_id(&message.headers) == Some(id) {
                return Ok(true);
            }
            if !scan {
                return Ok(false);
            }
            seq = message.sequence.saturating_add(1);
        }
    }

    /// Asks every hub whether it knows job `id` ([`answer_find`](Self::answer_find)):
    /// the first answer within [`FIND_WAIT`], if any.
    async fn ask_hubs(&self, id: JobId) -> Option<(u8, u64)> {
        let inbox = self.client.new_inbox();
        let mut answers = self.client.subscribe(inbox.clone()).await.ok()?;
        let ask = Bytes::copy_from_slice(&id.to_le_bytes());
        self.client
            .publish_with_reply(self.subjects.find.clone(), inbox, ask)
            .await
            .ok()?;
        let answer = tokio::time::timeout(FIND_WAIT, answers.next())
            .await
            .ok()??;
        let kind = *answer.payload.first()?;
        let seq = u64::from_le_bytes(answer.payload.get(1..9)?.try_into().ok()?);
        Some((kind, seq))
    }

    /// Answers a hub asking for a job, if this hub knows it: running here, or submitted
    /// here and unresolved (with its sequence in the job stream). Else silent.
    fn answer_find(&self, message: &async_nats::Message) {
        let (Some(reply), Some(id)) = (message.reply.as_ref(), decode_id(&message.payload)) else {
            return;
        };
        let answer = if lock(&self.inflight).contains_key(&id) {
            Some((FOUND_RUNNING, 0))
        } else {
            lock(&self.submitted)
                .get(&id)
                .filter(|(seq, _)| *seq > 0)
                .map(|&(seq, _)| (FOUND_WAITING, seq))
        };
        if let Some((kind, seq)) = answer {
            let mut payload = BytesMut::with_capacity(9);
            payload.put_u8(kind);
            payload.put_u64_le(seq);
            self.send(Op::Core(reply.to_string(), payload.freeze()));
        }
    }

    /// Job `id`'s last outcome in the results stream (a requeued job has more than one),
    /// read from the start to the last message stored when the read began.
    async fn stored_outcome(&self, id: JobId) -> Result<Option<Outcome>, StoreError> {
        let error = |e| store_error("results lookup", e);
        let stream = self
            .js
            .get_stream_no_info(&self.subjects.results_stream)
            .await
            .map_err(|e| error(e.to_string()))?;
        let consumer = stream
            .create_consumer(pull::OrderedConfig {
                filter_subject: self.subjects.results_all.clone(),
                deliver_policy: DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .map_err(|e| error(e.to_string()))?;
        if consumer.cached_info().num_pending == 0 {
            return Ok(None);
        }
        let mut messages = consumer
            .messages()
            .await
            .map_err(|e| error(e.to_string()))?;
        let mut found = None;
        loop {
            let next = tokio::time::timeout(self.options.request_timeout, messages.next());
            let message = match next.await {
                Ok(Some(Ok(message))) => message,
                Ok(Some(Err(e))) => return Err(error(e.to_string())),
                Ok(None) => return Ok(found),
                Err(_) => return Err(error("no answer in time".to_owned())),
            };
            if let Some(outcome) = outcomes(&message.payload).filter(|o| o.0 == id).last() {
                found = Some(outcome);
            }
            let pending = message.info().map_or(0, |info| info.pending);
            if pending == 0 {
                return Ok(found);
            }
        }
    }

    /// The dead letters from the start of the dead-letter stream, oldest first: at most
    /// `limit`, or (`want`) only job `want`'s. Read message by message (the stream
    /// API's get by sequence, which any hub may use on a limits stream).
    async fn dead_from(
        &self,
        limit: usize,
        want: Option<JobId>,
    ) -> Result<Vec<(StreamMessage, DeadJob)>, StoreError> {
        let error = |e: String| store_error("dead letters", e);
        let stream = self
            .js
            .get_stream_no_info(&self.subjects.dead_stream)
            .await
            .map_err(|e| error(e.to_string()))?;
        let every_letter = format!("{}.__dead.>", self.subjects.prefix);
        let mut found = Vec::new();
        let mut seq = 1;
        while found.len() < limit {
            let get = stream
                .raw_message_builder()
                .sequence(seq)
                .next_by_subject(every_letter.clone());
            let message: StreamMessage = match get.send().await {
                Ok(message) => message,
                Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => break,
                Err(e) => return Err(error(e.to_string())),
            };
            seq = message.sequence.saturating_add(1);
            let Some(dead) = dead_job(&message) else {
                tracing::warn!(seq = message.sequence, "unreadable dead letter: skipped");
                continue;
            };
            match want {
                Some(id) if dead.id != id => {}
                Some(_) => return Ok(vec![(message, dead)]),
                None => found.push((message, dead)),
            }
        }
        Ok(found)
    }

    /// Deletes job `id`'s dead letter: the message it was read as, or none if another
    /// hub deleted it first (JetStream deletes a sequence once).
    async fn delete_letter(&self, id: JobId) -> Result<Option<StreamMessage>, StoreError> {
        let Some((message, _)) = self.dead_from(1, Some(id)).await?.pop() else {
            return Ok(None);
        };
        let stream = self
            .js
            .get_stream_no_info(&self.subjects.dead_stream)
            .await
            .map_err(|e| store_error("dead letters", e))?;
        match stream.delete_message(message.sequence).await {
            Ok(true) => Ok(Some(message)),
            Ok(false) => Ok(None),
            Err(e) => match e.kind() {
                // The server's answer for a sequence deleted already ("no message
                // found", code 10057).
                DeleteMessageErrorKind::JetStream(e)
                    if matches!(
                        e.error_code(),
                        jetstream::ErrorCode::STREAM_MESSAGE_DELETE_FAILED
                            | jetstream::ErrorCode::NO_MESSAGE_FOUND
                    ) =>
                {
                    Ok(None)
                }
                _ => Err(store_error("dead letter delete", e)),
            },
        }
    }

    /// Runs dead job `id` again: its dead letter is deleted first, and only the hub whose
    /// delete took it publishes the job (so two hubs requeueing it at once run it once),
    /// with the default options and a new message id (the duplicate window would drop its
    /// id), for its first delivery: fresh attempts. Its outcome goes to its submitting
    /// hub, as the first time. A publish that fails puts the dead letter back.
    async fn requeue_dead(&self, id: JobId) -> Result<(), JobError> {
        let message = self.delete_letter(id).await?.ok_or(JobError::NotFound)?;
        let record = decode_record(&message.payload)
            .map_err(|why| JobError::Store(StoreError::Io(format!("dead letter {id}: {why}"))))?;
        let options = JobOptions::default();
        let whose = (record.origin, record.owner);
        let times = (record.submitted_at, 0);
        let job = encode_record(whose, times, record.name, &options, record.payload);
        let level = Level::of(options.priority);
        let subject = self.subjects.ready(record.name, level);
        let publish = jetstream::message::PublishMessage::build()
            .payload(job)
            .message_id(format!(
                "{}.{}",
                encode_msg_id(id, &mut [0; MSG_ID_LEN]),
                Uuid::new_v4().simple()
            ));
        let published = match self.js.send_publish(subject, publish).await {
            Ok(ack) => ack.await.map(drop).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(error) = published {
            let letter = jetstream::message::PublishMessage::build()
                .payload(message.payload)
                .headers(message.headers);
            if let Err(lost) = self.js.send_publish(message.subject, letter).await {
                tracing::error!(job.id = %Uuid::from_u128(id), %lost, "requeue failed and the dead letter could not be put back");
            }
            return Err(JobError::Store(store_error("requeue", error)));
        }
        self.kick(Lanes::of(level)).await;
        Ok(())
    }

    /// Outcomes, progress and cancels for this hub, kicks, and finds.
    async fn run_listener(self: Arc<Self>, mut subs: Subscriptions, feed: Feed) {
        // A round's outcomes, resolved together (one hold of each lock per round).
        let mut round: Vec<Outcome> = Vec::new();
        loop {
            tokio::select! {
                () = self.stop.cancelled() => return,
                Some(message) = subs.results.next() => {
                    round.extend(outcomes(&message.payload));
                    {
                        let mut submitted = lock(&self.submitted);
                        for (id, ..) in &round {
                            submitted.remove(id);
                        }
                    }
                    feed.resolved_many(round.drain(..));
                }
                Some(message) = subs.progress.next() => {
                    if let (Some(id), Some(value)) = (
                        decode_id(&message.payload),
                        message.payload.get(16..24).and_then(|b| b.try_into().ok()).map(f64::from_le_bytes),
                    ) {
                        feed.progress(id, value);
                    }
                }
                Some(message) = subs.cancels.next() => {
                    if let Some(id) = decode_id(&message.payload) {
                        lock(&self.recent).insert(id);
                        feed.cancel(id);
                    }
                }
                Some(message) = subs.kicks.next() => {
                    let lanes = Lanes::from_kick(&message.payload);
                    self.known.fetch_or(lanes.0, Ordering::AcqRel);
                    self.kicked.fetch_or(lanes.0, Ordering::AcqRel);
                    self.wake.notify_one();
                }
                Some(message) = subs.finds.next() => self.answer_find(&message),
                else => return,
            }
        }
    }
}

/// Runs the ops in order: publishes (their acks awaited by the confirmer, in order),
/// acks, core messages, dead letters.
///
/// A job is published on core NATS with a reply subject of the store's own
/// (`<acks inbox>.<n>`), where JetStream's acknowledgement comes to one subscription the
/// confirmer reads: not through the client's JetStream publish, which makes an inbox
/// subject, a channel and a timer per publish and reads each acknowledgement into a
/// generic response (about a fifth of the submitting hub's instructions per job, issue 13).
async fn run_ops(
    inner: Arc<Inner>,
    mut rx: mpsc::UnboundedReceiver<Op>,
    outcome_rx: mpsc::UnboundedReceiver<ToStore>,
    acks: async_nats::Subscriber,
    closed: std::sync::mpsc::Sender<()>,
) {
    let (confirm_tx, confirm_rx) = mpsc::unbounded_channel();
    tokio::spawn(run_outcomes(Arc::clone(&inner), outcome_rx));
    tokio::spawn(run_confirmer(Arc::clone(&inner), confirm_rx, acks));
    let mut sent = 0u64;
    let mut parts = BytesMut::new();
    let mut ops = Vec::with_capacity(256);
    loop {
        if rx.recv_many(&mut ops, 256).await == 0 {
            break;
        }
        let mut kick = Lanes::NONE;
        for op in ops.drain(..) {
            match op {
                Op::Publish {
                    id,
                    subject,
                    lane,
                    record,
                } => {
                    kick = kick.with(lane);
                    // Given back by the confirmer when the acknowledgement came (or did
                    // not in time); closed only with the store.
                    if let Ok(permit) = inner.ack_permits.acquire().await {
                        permit.forget();
                    }
                    sent = sent.wrapping_add(1);
                    let (reply, headers) = publish_parts(&mut parts, &inner.acks_inbox, sent, id);
                    // The client's queue to its connection is full only while the
                    // connection is down: then the submission fails in time.
                    let publish = inner
                        .client
                        .publish_with_reply_and_encoded_headers(subject, reply, headers, record);
                    let mut publish = std::pin::pin!(publish);
                    // Almost always done at once: the clock is read (for the timeout)
                    // only when it is not.
                    let done = match publish.as_mut().now_or_never() {
                        Some(done) => Ok(done),
                        None => tokio::time::timeout(inner.options.request_timeout, publish).await,
                    };
                    let failed = match done {
                        Ok(Ok(())) => None,
                        Ok(Err(error)) => Some(error.to_string()),
                        Err(_) => Some("the NATS connection is not writable".to_owned()),
                    };
                    let _ = confirm_tx.send(Confirm::Sent {
                        n: sent,
                        id,
                        failed,
                    });
                }
                Op::Sync(commit) => {
                    let _ = confirm_tx.send(Confirm::Commit(commit));
                }
                Op::Reply(subject, kind) => {
                    let _ = inner.client.publish(subject, kind.into()).await;
                }
                Op::Core(subject, payload) => {
                    let _ = inner.client.publish(subject, payload).await;
                }
                Op::Dead {
                    subject,
                    record,
                    headers,
                    outcome,
                } => {
                    let publish = jetstream::message::PublishMessage::build()
                        .payload(record)
                        .headers(headers);
                    match inner.js.send_publish(subject, publish).await {
                        Ok(ack) => {
                            if let Err(error) = ack.await {
                                tracing::warn!(%error, "dead letter not stored; the job stays in the stream");
                                continue;
                            }
                        }
                        Err(error) => {
                            tracing::warn!(%error, "dead letter not stored; the job stays in the stream");
                            continue;
                        }
                    }
                    let _ = inner.outcomes.send(ToStore::Outcome(outcome));
                }
                Op::Cancel(id) => {
                    let _ = confirm_tx.send(Confirm::Cancel(id));
                }
                Op::Close => {
                    // The outcomes queued before are stored, and their jobs acked, first.
                    let (done, stored) = oneshot::channel();
                    let _ = inner.outcomes.send(ToStore::Close(done));
                    let _ = stored.await;
                    let _ = inner.client.flush().await;
                    let _ = closed.send(());
                    return;
                }
            }
        }
        if kick != Lanes::NONE {
            inner.kick(kick).await;
        }
    }
}

/// The start of a job's header block, before its message id.
const MSG_ID_HEADER: &[u8] = b"NATS/1.0\r\nNats-Msg-Id: ";

/// Job publish number `n`'s reply subject (`<acks inbox>.<n in hex>`) and header block (its
/// message id, [`encode_msg_id`]), both sliced from `parts`, which is refilled by the
/// block: no map, string or allocation of their own per job (building and dropping a
/// `HeaderMap` per publish was ~1,700 instructions of the submitting hub's per job,
/// issue 13).
fn publish_parts(parts: &mut BytesMut, inbox: &str, n: u64, id: JobId) -> (Subject, Bytes) {
    let headers_len = MSG_ID_HEADER.len() + MSG_ID_LEN + 4;
    let len = inbox.len() + 17 + headers_len;
    if parts.capacity() < len {
        *parts = BytesMut::with_capacity(len * 64);
    }
    parts.extend_from_slice(inbox.as_bytes());
    parts.put_u8(b'.');
    push_hex(parts, n);
    // Made of an inbox (a string) and ASCII: always UTF-8.
    let reply = Subject::from_utf8(parts.split().freeze()).unwrap_or_else(|_| Subject::from(""));
    parts.extend_from_slice(MSG_ID_HEADER);
    parts.extend_from_slice(encode_msg_id(id, &mut [0; MSG_ID_LEN]).as_bytes());
    parts.extend_from_slice(b"\r\n\r\n");
    (reply, parts.split().freeze())
}

/// `n` in lower-case hex, without leading zeros.
fn push_hex(out: &mut BytesMut, n: u64) {
    let digits = (64 - n.leading_zeros()).div_ceil(4).max(1);
    for at in (0..digits).rev() {
        let nibble = (n >> (at * 4)) & 0xf;
        out.put_u8(b"0123456789abcdef"[nibble as usize]);
    }
}

/// JetStream's answer to a publish: the message's sequence in the stream, or why it was
/// not stored.
fn read_ack(message: &async_nats::Message) -> Result<u64, String> {
    #[derive(serde::Deserialize)]
    struct Ack {
        #[serde(default)]
        seq: u64,
        #[serde(default)]
        error: Option<AckError>,
    }
    #[derive(serde::Deserialize)]
    struct AckError {
        #[serde(default)]
        description: String,
    }
    match message.status {
        None | Some(StatusCode::OK) => {}
        Some(StatusCode::NO_RESPONDERS) => return Err("no JetStream stream for the job".into()),
        Some(status) => return Err(format!("JetStream answered {status}")),
    }
    if let Some(seq) = plain_ack_seq(&message.payload) {
        return Ok(seq);
    }
    match serde_json::from_slice::<Ack>(&message.payload) {
        Ok(Ack {
            error: Some(error), ..
        }) => Err(error.description),
        Ok(ack) => Ok(ack.seq),
        Err(error) => Err(format!("unreadable acknowledgement: {error}")),
    }
}

/// The sequence of a plain acknowledgement, `{"stream":"…","seq":N}` (fields may follow),
/// read without the JSON parser: this runs for every job published, and the parser cost
/// the submitting hub ~1,000 instructions per job (issue 13). `None`: anything else (an
/// error, a field order JetStream does not write), left to the parser.
fn plain_ack_seq(payload: &[u8]) -> Option<u64> {
    let name = payload.strip_prefix(b"{\"stream\":\"")?;
    // A stream name has no quote and nothing escaped.
    let end = name.iter().position(|&b| b == b'"' || b == b'\\')?;
    let rest = name[end..].strip_prefix(b"\",\"seq\":")?;
    let digits = rest.iter().position(|b| !b.is_ascii_digit())?;
    let after = &rest[digits..];
    // What follows is plain too (`}`, or `,"duplicate":true}`...), and no error.
    let plain = after == b"}"
        || (after.first() == Some(&b',')
            && after.last() == Some(&b'}')
            && !after.windows(7).any(|w| w == b"\"error\""));
    if !plain {
        return None;
    }
    std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()
}

/// What the confirmer is told, in the order of the ops.
enum Confirm {
    /// Job publish number `n` went out (or `failed` to).
    Sent {
        n: u64,
        id: JobId,
        failed: Option<String>,
    },
    /// Finish the commit once every publish before it was acknowledged.
    Commit(Commit),
    /// Delete a job submitted here, after the publishes before.
    Cancel(JobId),
}

/// A commit or cancel waiting for the publishes before it.
enum Mark {
    Commit(Commit),
    Cancel(JobId),
}

/// A job publish waiting for its acknowledgement.
struct Unconfirmed {
    id: JobId,
    sent_at: Instant,
    /// The sequence in the stream, or why it failed; `None` until known.
    acked: Option<Result<u64, String>>,
}

/// What the outcome task does.
enum ToStore {
    Outcome(Stored),
    /// Store what came before, then say so.
    Close(oneshot::Sender<()>),
}

/// Most items the confirmer takes from its channel at once (one clock read for them).
const CONFIRMS_PER_ROUND: usize = 256;
/// Most outcomes taken into one round of [`run_outcomes`].
const OUTCOMES_PER_ROUND: usize = 1024;
/// Most bytes of outcomes in one message of the results stream (the server's default
/// `max_payload` is 1 MiB). A larger outcome goes in a message of its own.
const OUTCOME_BYTES: usize = 256 * 1024;

/// The outcomes of one round for one submitting hub: one message of the results stream.
struct Batch {
    origin: Uuid,
    payload: BytesMut,
    /// The jobs' acks, sent once the message is stored.
    then: Vec<(Subject, AckKind)>,
}

impl Batch {
    /// Adds `stored` to the round's batch for its hub, or to a new one.
    fn add(batches: &mut Vec<Batch>, stored: Stored) {
        let len = stored.payload.len();
        let fits = |b: &Batch| {
            b.origin == stored.origin && b.payload.len().saturating_add(4 + len) <= OUTCOME_BYTES
        };
        let at = match batches.iter().rposition(fits) {
            Some(at) => at,
            None => {
                let mut payload = BytesMut::with_capacity((5 + len).min(OUTCOME_BYTES));
                payload.put_u8(OUTCOMES_VERSION);
                batches.push(Batch {
                    origin: stored.origin,
                    payload,
                    then: Vec::new(),
                });
                batches.len() - 1
            }
        };
        let batch = &mut batches[at];
        // An outcome is far below 4 GiB: the server refuses messages past `max_payload`.
        batch
            .payload
            .put_u32_le(u32::try_from(len).unwrap_or(u32::MAX));
        batch.payload.put_slice(&stored.payload);
        batch.then.extend(stored.then);
    }
}

/// Stores outcomes in the results stream by rounds (group commit): a round takes every
/// outcome that came while the last one was being stored, publishes them as one message
/// per submitting hub, awaits JetStream's acknowledgements, then sends the jobs' acks. So
/// the server stores one message for many jobs when it is busy, and a job leaves the job
/// stream only once its outcome is stored. An outcome that could not be stored: its job
/// gets a negative ack (it runs again).
async fn run_outcomes(inner: Arc<Inner>, mut rx: mpsc::UnboundedReceiver<ToStore>) {
    let mut queued = Vec::with_capacity(OUTCOMES_PER_ROUND);
    let mut batches: Vec<Batch> = Vec::new();
    let mut sent = Vec::new();
    let mut closed = None;
    while closed.is_none() && rx.recv_many(&mut queued, OUTCOMES_PER_ROUND).await > 0 {
        for item in queued.drain(..) {
            match item {
                ToStore::Outcome(stored) => Batch::add(&mut batches, stored),
                ToStore::Close(done) => closed = Some(done),
            }
        }
        for batch in batches.drain(..) {
            let subject = inner.subjects.results_to(batch.origin);
            let ack = inner.js.publish(subject, batch.payload.freeze()).await;
            bump(&inner.counters.outcome_messages);
            sent.push((ack, batch.then));
        }
        for (ack, then) in sent.drain(..) {
            let stored = match ack {
                Ok(ack) => ack.await.map(drop).map_err(|e| e.to_string()),
                Err(error) => Err(error.to_string()),
            };
            if let Err(error) = &stored {
                tracing::warn!(%error, jobs = then.len(), "job outcomes not stored: the jobs run again");
            }
            for (reply, kind) in then {
                let kind = match (&stored, kind) {
                    (Err(_), AckKind::Ack) => {
                        bump(&inner.counters.naked);
                        AckKind::Nak(None)
                    }
                    (_, kind) => kind,
                };
                let _ = inner.client.publish(reply, kind.into()).await;
            }
        }
    }
    if let Some(done) = closed {
        let _ = done.send(());
    }
}

/// Finishes commits once JetStream acknowledged the publishes before them, in order, runs
/// cancels after the publishes they follow. An acknowledgement that does not come within
/// the request timeout fails its publish (a publish sent just before the server went away
/// is never answered).
async fn run_confirmer(
    inner: Arc<Inner>,
    mut rx: mpsc::UnboundedReceiver<Confirm>,
    mut acks: async_nats::Subscriber,
) {
    // Publishes in the order sent: `waiting[i]` is publish number `first + i`.
    let mut waiting: VecDeque<Unconfirmed> = VecDeque::new();
    let mut first = 1u64;
    // Commits and cancels, each after the publishes numbered below its number.
    let mut marks: VecDeque<(u64, Mark)> = VecDeque::new();
    // The first failure among the publishes since the last commit, for the next commit.
    let mut failed = Ok(());
    let mut items = Vec::with_capacity(CONFIRMS_PER_ROUND);
    // One timer, armed for the oldest publish's deadline. Deadlines grow along `waiting`,
    // so when the oldest is acknowledged the timer is early, never late: it is re-armed
    // when it fires, not per acknowledgement.
    let timer = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(timer);
    let mut armed = false;
    loop {
        if !armed {
            if let Some(oldest) = waiting.front() {
                timer
                    .as_mut()
                    .reset(oldest.sent_at + inner.options.request_timeout);
                armed = true;
            }
        }
        tokio::select! {
            // Every publish is told here before its acknowledgement can arrive: the
            // channel is read first.
            biased;
            received = rx.recv_many(&mut items, CONFIRMS_PER_ROUND) => {
                if received == 0 {
                    return;
                }
                let now = Instant::now();
                for item in items.drain(..) {
                    match item {
                        Confirm::Sent { n, id, failed } => {
                            if waiting.is_empty() {
                                first = n;
                            }
                            let acked = failed.map(Err);
                            if acked.is_some() {
                                inner.ack_permits.add_permits(1);
                            }
                            waiting.push_back(Unconfirmed { id, sent_at: now, acked });
                        }
                        Confirm::Commit(commit) => {
                            marks.push_back((first.wrapping_add(waiting.len() as u64), Mark::Commit(commit)));
                        }
                        Confirm::Cancel(id) => {
                            marks.push_back((first.wrapping_add(waiting.len() as u64), Mark::Cancel(id)));
                        }
                    }
                }
            },
            Some(message) = acks.next() => {
                let n = message
                    .subject
                    .rsplit('.')
                    .next()
                    .and_then(|token| u64::from_str_radix(token, 16).ok());
                let slot = n
                    .and_then(|n| n.checked_sub(first))
                    .and_then(|i| usize::try_from(i).ok())
                    .and_then(|i| waiting.get_mut(i));
                // A late acknowledgement of a publish that timed out is dropped.
                if let Some(slot) = slot.filter(|slot| slot.acked.is_none()) {
                    slot.acked = Some(read_ack(&message));
                    inner.ack_permits.add_permits(1);
                }
            }
            () = &mut timer, if armed => {
                armed = false;
                let now = Instant::now();
                if let Some(oldest) = waiting.front_mut().filter(|oldest| {
                    oldest.acked.is_none() && oldest.sent_at + inner.options.request_timeout <= now
                }) {
                    oldest.acked = Some(Err("no acknowledgement in time".into()));
                    inner.ack_permits.add_permits(1);
                }
            }
        }
        while waiting.front().is_some_and(|oldest| oldest.acked.is_some()) {
            let Some(Unconfirmed {
                id,
                acked: Some(acked),
                ..
            }) = waiting.pop_front()
            else {
                break;
            };
            first = first.wrapping_add(1);
            match acked {
                Ok(seq) => {
                    if let Some((at, _)) = lock(&inner.submitted).get_mut(&id) {
                        *at = seq;
                    }
                }
                Err(error) => {
                    if failed.is_ok() {
                        failed = Err(store_error("publish", error));
                    }
                }
            }
        }
        while marks
            .front()
            .is_some_and(|(before, _)| waiting.is_empty() || *before <= first)
        {
            let Some((_, mark)) = marks.pop_front() else {
                break;
            };
            match mark {
                Mark::Commit(commit) => {
                    bump(&inner.counters.commits);
                    commit.finish(std::mem::replace(&mut failed, Ok(())));
                }
                Mark::Cancel(id) => cancel(&inner, id).await,
            }
        }
    }
}

/// Deletes job `id`, submitted here, from the job stream, stores its cancelled outcome and
/// tells every hub.
async fn cancel(inner: &Inner, id: JobId) {
    let submitted = lock(&inner.submitted).remove(&id);
    if let Some((seq, owner)) = submitted {
        if seq > 0 {
            if let Ok(stream) = inner.js.get_stream_no_info(&inner.subjects.stream).await {
                // Fails if a hub holds it (it is terminated there) or it is gone.
                let _ = stream.delete_message(seq).await;
            }
        }
        // For handles re-attached on other hubs.
        let _ = inner.outcomes.send(ToStore::Outcome(Stored {
            origin: inner.hub,
            payload: encode_outcome(id, owner, Err(&JobError::Cancelled)),
            then: None,
        }));
    }
    let _ = inner
        .client
        .publish(
            inner.subjects.cancel.clone(),
            Bytes::copy_from_slice(&id.to_le_bytes()),
        )
        .await;
}

impl JobStore for JetStreamStore {
    fn recover(&self) -> Result<Recovery, StoreError> {
        // The jobs wait in JetStream: nothing to give back to one hub.
        Ok(Recovery::default())
    }

    fn record(&self, change: &Change<'_>) {
        let inner = &self.inner;
        bump(&inner.counters.changes);
        match *change {
            Change::Submitted {
                id,
                name,
                payload,
                options,
                owner,
                at,
                ..
            } => {
                let delay = options.delay.filter(|d| !d.is_zero());
                let not_before = delay.map_or(0, |d| {
                    at.saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
                });
                let (subject, lane) = match delay {
                    Some(_) => (
                        Subject::from(inner.subjects.delayed.as_str()),
                        Lanes::DELAYED,
                    ),
                    None => {
                        let level = Level::of(options.priority);
                        (inner.ready_subject(name, level), Lanes::of(level))
                    }
                };
                let whose = (inner.hub, owner);
                let record = encode_record(whose, (at, not_before), name, options, payload);
                lock(&inner.submitted).insert(id, (0, owner));
                bump(&inner.counters.published);
                inner.send(Op::Publish {
                    id,
                    subject,
                    lane,
                    record,
                });
            }
            Change::Progress { id, value, .. } => {
                let mut inflight = lock(&inner.inflight);
                let Some(job) = inflight.get_mut(&id) else {
                    return;
                };
                let origin = job.origin;
                // An in-progress ack at most every tenth of the ack wait, whatever the
                // worker reports.
                let renew = job.last_progress.elapsed() >= inner.options.ack_wait / 10;
                if renew {
                    job.last_progress = Instant::now();
                }
                // Progress goes to the submitter at most every PROGRESS_EVERY per job, so a
                // worker reporting in a loop cannot flood NATS.
                let forward = job
                    .last_forward
                    .is_none_or(|at| at.elapsed() >= PROGRESS_EVERY);
                if forward {
                    job.last_forward = Some(Instant::now());
                }
                let reply = renew.then(|| job.reply.clone());
                drop(inflight);
                if let Some(reply) = reply {
                    inner.reply(reply, AckKind::Progress);
                }
                if !forward {
                    return;
                }
                let mut payload = BytesMut::with_capacity(24);
                payload.put_u128_le(id);
                payload.put_f64_le(value);
                inner.send(Op::Core(
                    inner.subjects.progress_to(origin),
                    payload.freeze(),
                ));
            }
            Change::Completed { id, output, .. } => {
                if let Some(job) = lock(&inner.inflight).remove(&id) {
                    bump(&inner.counters.acked);
                    let then = Some((job.reply, AckKind::Ack));
                    inner.outcome_to((job.origin, job.owner), id, Ok(output), then);
                }
            }
            Change::Failed {
                id,
                error,
                retry_at,
                ..
            } => {
                let mut inflight = lock(&inner.inflight);
                match retry_at {
                    Some(at) => {
                        if let Some(job) = inflight.remove(&id) {
                            drop(inflight);
                            let delay = Duration::from_millis(at.saturating_sub(now_millis()));
                            inner.reply(job.reply, AckKind::Nak(Some(delay)));
                        }
                    }
                    None => {
                        if let Some(job) = inflight.get_mut(&id) {
                            job.error = Some(error.to_owned());
                        }
                    }
                }
            }
            Change::Dead { id, .. } => {
                let Some(job) = lock(&inner.inflight).remove(&id) else {
                    return;
                };
                let attempts = job.attempts.saturating_add(1);
                let last_error = job.error.unwrap_or_default();
                let name = decode_record(&job.record)
                    .map_or_else(|_| String::new(), |r| r.name.to_owned());
                let mut headers = async_nats::HeaderMap::new();
                headers.insert("Cluster-Job", Uuid::from_u128(id).to_string().as_str());
                headers.insert("Cluster-Attempts", attempts.to_string().as_str());
                let one_line: String = last_error
                    .chars()
                    .map(|c| if c.is_control() { ' ' } else { c })
                    .take(1024)
                    .collect();
                headers.insert("Cluster-Error", one_line.as_str());
                let dead = JobError::Dead {
                    attempts,
                    last_error,
                };
                bump(&inner.counters.dead);
                inner.send(Op::Dead {
                    subject: inner.subjects.dead(&name),
                    record: job.record,
                    headers,
                    outcome: Stored {
                        origin: job.origin,
                        payload: encode_outcome(id, job.owner, Err(&dead)),
                        then: Some((job.reply, AckKind::Term)),
                    },
                });
            }
            Change::Released { id, .. } => {
                if let Some(job) = lock(&inner.inflight).remove(&id) {
                    inner.reply(job.reply, AckKind::Nak(None));
                }
            }
            Change::Cancelled { id } => {
                // Submitted here: out of the stream, and every hub told (this one too,
                // should it run the job). Else pulled here: terminated. Else (watched
                // here): every hub told.
                let submitted_here = lock(&inner.submitted).contains_key(&id);
                let pulled = if submitted_here {
                    None
                } else {
                    lock(&inner.inflight).remove(&id)
                };
                if let Some(job) = pulled {
                    bump(&inner.counters.terminated);
                    let then = Some((job.reply, AckKind::Term));
                    let whose = (job.origin, job.owner);
                    inner.outcome_to(whose, id, Err(&JobError::Cancelled), then);
                } else {
                    inner.send(Op::Cancel(id));
                }
            }
            Change::Started { .. } | Change::Revived { .. } | Change::Removed { .. } => {}
        }
    }

    fn sync(&self, commit: Commit) {
        if let Err(Op::Sync(commit)) = self.inner.ops.send(Op::Sync(commit)).map_err(|e| e.0) {
            commit.finish(Err(StoreError::Closed));
        }
    }

    fn check(&self) -> Result<(), StoreError> {
        if self.inner.stop.is_cancelled() {
            return Err(StoreError::Closed);
        }
        match self.inner.client.connection_state() {
            async_nats::connection::State::Connected => Ok(()),
            _ => Err(StoreError::Io(format!(
                "NATS JetStream: not connected to {} (reconnecting)",
                self.inner.options.url
            ))),
        }
    }

    fn stats(&self) -> StoreStats {
        let c = &self.inner.counters;
        StoreStats {
            kind: "jetstream".to_owned(),
            changes: c.changes.load(Ordering::Relaxed),
            commits: c.commits.load(Ordering::Relaxed),
            ..StoreStats::default()
        }
    }

    fn close(&self) {
        let inner = &self.inner;
        // The puller first: it pulls no more, and a job its last pull brings goes back
        // (the hub stopped) through the op task, which still runs. Closed before it, a
        // job pulled meanwhile waited for the ack wait.
        inner.stop.cancel();
        if let Some(stopped) = lock(&inner.puller_stopped).take() {
            let _ = stopped.recv_timeout(inner.options.request_timeout);
        }
        // Jobs running here go back to the others at once, not after the ack wait.
        let running: Vec<Inflight> = lock(&inner.inflight).drain().map(|(_, job)| job).collect();
        for job in running {
            inner.reply(job.reply, AckKind::Nak(None));
        }
        inner.send(Op::Close);
        // Without a start, no op task runs to say it is done.
        let started = lock(&inner.closed_tx).is_none();
        if let Some(closed) = lock(&inner.closed).take().filter(|_| started) {
            let _ = closed.recv_timeout(inner.options.request_timeout);
        }
    }

    fn shared(&self) -> Option<&dyn Shared> {
        Some(self)
    }
}

impl Shared for JetStreamStore {
    fn start(&self, feed: Feed) {
        let inner = &self.inner;
        let (Some(op_rx), Some(outcome_rx), Some(mut subs), Some(closed)) = (
            lock(&inner.op_rx).take(),
            lock(&inner.outcome_rx).take(),
            lock(&inner.subscriptions).take(),
            lock(&inner.closed_tx).take(),
        ) else {
            tracing::warn!("a JetStream store serves one hub: started twice");
            return;
        };
        let Some(acks) = subs.acks.take() else {
            return;
        };
        *lock(&inner.feed) = Some(feed.clone());
        tokio::spawn(run_ops(Arc::clone(inner), op_rx, outcome_rx, acks, closed));
        tokio::spawn(Arc::clone(inner).run_listener(subs, feed.clone()));
        tokio::spawn(Arc::clone(inner).run_delays());
        let (stopped, puller_stopped) = std::sync::mpsc::channel();
        *lock(&inner.puller_stopped) = Some(puller_stopped);
        tokio::spawn(Arc::clone(inner).run_puller(feed, stopped));
    }

    fn wake(&self) {
        self.inner.wake.notify_one();
    }

    fn watch(&self, id: JobId) {
        let feed = lock(&self.inner.feed).clone();
        if let Some(feed) = feed {
            tokio::spawn(Arc::clone(&self.inner).watch(id, feed));
        }
    }

    fn dead_letters(&self, limit: usize) -> StoreFuture<Vec<DeadJob>> {
        let inner = Arc::clone(&self.inner);
        Box::pin(async move {
            let found = inner.dead_from(limit, None).await?;
            Ok(found.into_iter().map(|(_, dead)| dead).collect())
        })
    }

    fn requeue_dead(&self, id: JobId) -> StoreFuture<()> {
        let inner = Arc::clone(&self.inner);
        Box::pin(async move { inner.requeue_dead(id).await })
    }

    fn delete_dead(&self, id: JobId) -> StoreFuture<bool> {
        let inner = Arc::clone(&self.inner);
        Box::pin(async move { Ok(inner.delete_letter(id).await?.is_some()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_reads_back_and_a_bad_one_is_refused() {
        let options = JobOptions::default().priority(3).max_attempts(4);
        let origin = Uuid::new_v4();
        let record = encode_record((origin, Owner(9)), (10, 20), "resize", &options, b"payload");
        let read = decode_record(&record).unwrap();
        assert_eq!(read.origin, origin);
        assert_eq!(read.owner, Owner(9));
        assert_eq!((read.submitted_at, read.not_before), (10, 20));
        assert_eq!(read.name, "resize");
        assert_eq!(read.options, options);
        assert_eq!(read.payload, b"payload");
        for cut in 0..record.len() - b"payload".len() {
            assert!(decode_record(&record[..cut]).is_err(), "cut at {cut}");
        }
        let mut other = record.to_vec();
        other[0] = 9;
        assert!(decode_record(&other).is_err());
        let mut other = record.to_vec();
        other[1] |= 8;
        assert!(decode_record(&other).is_err(), "unknown flags");
        // A plain job (the hub's, due now, default options) leaves those parts out.
        let plain = encode_record(
            (origin, Owner::HUB),
            (10, 0),
            "resize",
            &JobOptions::default(),
            b"p",
        );
        assert_eq!(plain.len(), 2 + 16 + 8 + 1 + 6 + 1);
        let read = decode_record(&plain).unwrap();
        assert_eq!((read.origin, read.owner), (origin, Owner::HUB));
        assert_eq!((read.submitted_at, read.not_before), (10, 0));
        assert_eq!((read.name, read.payload), ("resize", &b"p"[..]));
        assert_eq!(read.options, JobOptions::default());
        for cut in 0..plain.len() - 1 {
            assert!(decode_record(&plain[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn a_record_of_an_older_hub_reads_back() {
        // Version 2: every part always there.
        let origin = Uuid::new_v4();
        let options = JobOptions::default().priority(-1);
        let encoded = rmp_serde::to_vec(&options).unwrap();
        let mut old = vec![2];
        old.extend_from_slice(&origin.as_u128().to_le_bytes());
        old.extend_from_slice(&7u128.to_le_bytes());
        old.extend_from_slice(&10u64.to_le_bytes());
        old.extend_from_slice(&20u64.to_le_bytes());
        old.push(3);
        old.extend_from_slice(b"fnv");
        old.extend_from_slice(&u32::try_from(encoded.len()).unwrap().to_le_bytes());
        old.extend_from_slice(&encoded);
        old.extend_from_slice(b"payload");
        let read = decode_record(&old).unwrap();
        assert_eq!((read.origin, read.owner), (origin, Owner(7)));
        assert_eq!((read.submitted_at, read.not_before), (10, 20));
        assert_eq!((read.name, read.payload), ("fnv", &b"payload"[..]));
        assert_eq!(read.options, options);
        for cut in 0..old.len() - b"payload".len() {
            assert!(decode_record(&old[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn publish_numbers_read_back_from_their_hex_token() {
        let mut parts = BytesMut::new();
        for n in [0, 1, 9, 10, 255, 4096, u64::MAX] {
            let (subject, headers) = publish_parts(&mut parts, "_INBOX.x", n, 64);
            let token = subject.rsplit('.').next().unwrap();
            assert_eq!(token, format!("{n:x}"));
            assert_eq!(u64::from_str_radix(token, 16), Ok(n));
            assert_eq!(
                &headers[..],
                b"NATS/1.0\r\nNats-Msg-Id: AAAAAAAAAAAAAAAAAAAABA\r\n\r\n"
            );
        }
        // The block reads back as the message id it carries.
        let (_, headers) = publish_parts(&mut parts, "_INBOX.x", 1, u128::MAX - 5);
        let mut map = async_nats::HeaderMap::new();
        let text = std::str::from_utf8(&headers).unwrap();
        let value = text.split("Nats-Msg-Id: ").nth(1).unwrap().trim_end();
        map.insert(async_nats::header::NATS_MESSAGE_ID, value);
        assert_eq!(message_id(&map), Some(u128::MAX - 5));
    }

    #[test]
    fn acknowledgements_give_the_sequence_or_why_not() {
        let answer = |payload: &'static [u8], status| async_nats::Message {
            subject: Subject::from("_INBOX.x.1"),
            reply: None,
            payload: Bytes::from_static(payload),
            headers: None,
            status,
            description: None,
            length: payload.len(),
        };
        let stored = answer(br#"{"stream":"C_JOBS","seq":42}"#, None);
        assert_eq!(read_ack(&stored), Ok(42));
        let duplicate = answer(br#"{"stream":"C_JOBS","seq":7,"duplicate":true}"#, None);
        assert_eq!(read_ack(&duplicate), Ok(7));
        let refused = answer(
            br#"{"error":{"code":503,"err_code":10077,"description":"maximum messages exceeded"}}"#,
            None,
        );
        assert_eq!(
            read_ack(&refused),
            Err("maximum messages exceeded".to_owned())
        );
        let nobody = answer(b"", Some(StatusCode::NO_RESPONDERS));
        assert!(read_ack(&nobody).is_err());
        assert!(read_ack(&answer(b"not json", None)).is_err());
        // The plain ones are read without the parser, the same as the parser reads them;
        // the rest goes to the parser.
        let domain = br#"{"stream":"C_JOBS","seq":9,"domain":"hub"}"#;
        for (payload, seq) in [
            (&br#"{"stream":"C_JOBS","seq":42}"#[..], Some(42)),
            (br#"{"stream":"C_JOBS","seq":7,"duplicate":true}"#, Some(7)),
            (domain, Some(9)),
            (br#"{"stream":"C_JOBS","seq":}"#, None),
            (br#"{"stream":"C_JOBS","seq":4x}"#, None),
            (br#"{"stream":"C_JOBS","seq":99999999999999999999}"#, None),
            (
                br#"{"stream":"C_JOBS","seq":1,"error":{"description":"no"}}"#,
                None,
            ),
            (br#"{"seq":5,"stream":"C_JOBS"}"#, None),
            (br#"{"stream":"C\"JOBS","seq":5}"#, None),
        ] {
            assert_eq!(plain_ack_seq(payload), seq, "{payload:?}");
        }
        assert_eq!(read_ack(&answer(domain, None)), Ok(9));
        assert!(read_ack(&answer(br#"{"stream":"C_JOBS","seq":}"#, None)).is_err());
        assert_eq!(
            read_ack(&answer(br#"{"seq":5,"stream":"C_JOBS"}"#, None)),
            Ok(5)
        );
    }

    #[test]
    fn outcomes_read_back() {
        let ok = encode_outcome(7, Owner(3), Ok(b"out"));
        let (id, owner, outcome) = decode_outcome(&ok).unwrap();
        assert_eq!((id, owner), (7, Owner(3)));
        assert_eq!(outcome.unwrap(), Bytes::from_static(b"out"));
        let err = encode_outcome(8, Owner::HUB, Err(&JobError::Cancelled));
        let (id, _, outcome) = decode_outcome(&err).unwrap();
        assert_eq!(id, 8);
        assert!(matches!(outcome, Err(JobError::Cancelled)));
        assert!(decode_outcome(&Bytes::from_static(b"short")).is_none());
    }

    #[test]
    fn a_round_of_outcomes_reads_back_and_a_bad_length_ends_it() {
        let origin = Uuid::new_v4();
        let mut batches = Vec::new();
        for id in 1..=3 {
            let then = Some((Subject::from("reply"), AckKind::Ack));
            let payload = encode_outcome(id, Owner(id), Ok(b"out"));
            Batch::add(
                &mut batches,
                Stored {
                    origin,
                    payload,
                    then,
                },
            );
        }
        let payload = encode_outcome(9, Owner::HUB, Ok(b"other"));
        let other = Uuid::new_v4();
        Batch::add(
            &mut batches,
            Stored {
                origin: other,
                payload,
                then: None,
            },
        );
        assert_eq!(batches.len(), 2, "one message per submitting hub");
        assert_eq!(batches[0].then.len(), 3);
        let message = batches.remove(0).payload.freeze();
        let ids: Vec<JobId> = outcomes(&message).map(|(id, _, _)| id).collect();
        assert_eq!(ids, [1, 2, 3]);
        // Cut anywhere: the outcomes before the cut, never a panic.
        for cut in 0..message.len() {
            let cut = message.slice(..cut);
            assert!(outcomes(&cut).count() <= 3);
        }
        let mut long = message.to_vec();
        long[1..5].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(outcomes(&Bytes::from(long)).count(), 0);
        assert_eq!(outcomes(&Bytes::from_static(b"\x09abc")).count(), 0);
    }

    #[test]
    fn message_ids_read_back_and_bad_ones_are_refused() {
        for id in [0, 1, 63, 64, u128::MAX, Uuid::new_v4().as_u128()] {
            let mut buf = [0; MSG_ID_LEN];
            let text = encode_msg_id(id, &mut buf);
            assert_eq!(text.len(), MSG_ID_LEN);
            assert_eq!(decode_msg_id(text), Some(id), "{text}");
        }
        assert_eq!(
            encode_msg_id(u128::MAX, &mut [0; MSG_ID_LEN]),
            "D_____________________"
        );
        assert_eq!(
            encode_msg_id(1, &mut [0; MSG_ID_LEN]),
            "AAAAAAAAAAAAAAAAAAAAAB"
        );
        // Ids stored by hubs before the short ids.
        let old = Uuid::new_v4();
        assert_eq!(
            decode_msg_id(&old.simple().to_string()),
            Some(old.as_u128())
        );
        // Past 128 bits, a digit outside base64url, the wrong length.
        assert_eq!(decode_msg_id("E_____________________"), None);
        assert_eq!(decode_msg_id("AAAAAAAAAAAAAAAAAAAAA+"), None);
        assert_eq!(decode_msg_id("AAAAAAAAAAAAAAAAAAAAA"), None);
        assert_eq!(decode_msg_id(""), None);
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            async_nats::header::NATS_MESSAGE_ID,
            "AAAAAAAAAAAAAAAAAAAABA.due",
        );
        assert_eq!(message_id(&headers), Some(64));
    }

    #[test]
    fn delivery_counts_read_from_ack_subjects() {
        assert_eq!(
            delivery_count("$JS.ACK.S.C.3.10.9.1700000000000000000.0"),
            Some(3)
        );
        let with_domain = "$JS.ACK.hub.ACCHASH.S.C.2.10.9.1700000000000000000.0.tok";
        assert_eq!(delivery_count(with_domain), Some(2));
        assert_eq!(delivery_count("$JS.ACK.S.C"), None);
        assert_eq!(delivery_count("_INBOX.x"), None);
    }

    #[test]
    fn levels_and_names_map_to_subject_tokens() {
        assert_eq!(Level::of(5), Level::High);
        assert_eq!(Level::of(0), Level::Normal);
        assert_eq!(Level::of(-1), Level::Low);
        let subjects = Subjects::new("c1", Uuid::nil());
        let subject = subjects.ready("a name.with *>", Level::High);
        assert!(subject.starts_with("c1.__jobs."), "{subject}");
        assert!(!subject.contains(' ') && !subject.contains('*') && !subject.contains('>'));
        assert_eq!(subject.split('.').count(), 4);
        assert_ne!(name_hash("a"), name_hash("b"));
        // Every job subject is under the job stream's, with as many tokens.
        assert_eq!(
            subjects.delayed.split('.').count(),
            subject.split('.').count()
        );
        assert!(subjects.delayed.starts_with("c1.__jobs."));
        // Dots in the prefix stay in subjects, not in stream names.
        let dotted = Subjects::new("shop.eu", Uuid::nil());
        assert_eq!(dotted.stream, "SHOP_EU_JOBS");
        assert!(!dotted.consumer("a", Level::Low).contains('.'));
    }

    #[test]
    fn kicks_name_their_lanes_and_an_empty_one_names_all() {
        let high = Lanes::of(Level::High);
        let both = high.with(Lanes::DELAYED);
        assert_eq!(Lanes::from_kick(&[both.0]), both);
        assert!(both.contains(high) && !both.contains(Lanes::of(Level::Low)));
        // An older hub's kick has no payload: every lane may have jobs.
        assert_eq!(Lanes::from_kick(&[]), Lanes::ALL);
        // Bits past the four lanes are dropped, not trusted.
        assert_eq!(Lanes::from_kick(&[0xf0 | high.0]), high);
        let levels = LEVELS.map(Lanes::of);
        let all = levels
            .iter()
            .fold(Lanes::DELAYED, |all, &lane| all.with(lane));
        assert_eq!(all, Lanes::ALL);
        // The level filters match a level's subjects, and not the delayed jobs'.
        let subjects = Subjects::new("c1", Uuid::nil());
        let filter = subjects.level_filter(Level::Low);
        let subject = subjects.ready("x", Level::Low);
        assert_eq!(filter.split('.').count(), subject.split('.').count());
        assert!(subject.ends_with(filter.rsplit('.').next().unwrap_or_default()));
        assert!(!subjects.delayed.ends_with(".lo"));
    }
}
