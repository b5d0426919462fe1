//! Jobs submitted by members: the hub's `__jobs` service, and the member's side of it.
//!
//! A member submits with a `__jobs.submit` call that carries a ticket of the member's
//! own; the hub checks the job against its limits, queues it under an id it assigns, and
//! answers with that id (or why not). The job's outcome and progress come back later in
//! [`RESULT_SUBJECT`] and [`UPDATE_SUBJECT`] frames under the ticket; a member cancels its
//! own jobs (and only those) in [`CANCEL_SUBJECT`] frames. Once accepted, a job runs on
//! whether its submitter stays connected or not.
//!
//! Handles outlive the connection. Each submission carries the member's owner secret
//! (random, the same across its reconnects); after a reconnect the member sends one
//! `__jobs.attach` call (`{owner, jobs: [(ticket, id)]}`, answered with the tickets that
//! could not be attached and why) and the hub sends each job's outcome under the ticket
//! when it comes, at once for a result it kept. A handle resolves once, so no result
//! reaches it twice. Handles fail with [`RpcErrorKind::Disconnected`] only when the member
//! closes for good.

use super::handle::{Canceller, Delivery, Outcome, Progress, ProgressRef};
use super::queue::{Queue, Submitter};
use super::store::{Owner, StoreFuture};
use super::wire::{self, Batch, Malformed, CANCEL_SUBJECT};
use super::{JobError, JobHandle, JobId, JobInfo, JobOptions, JobState, JobStats};
use crate::codec::{Codec, CodecKind};
use crate::error::{RpcError, RpcErrorKind};
use crate::link::Link;
use crate::peer::{Caller, PeerCore};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use tokio::sync::oneshot;
use uuid::Uuid;

/// The hub's service through which members submit jobs and read statistics.
pub(crate) const JOBS_SERVICE: &str = "__jobs";

#[derive(Serialize, Deserialize)]
struct SubmitRequest {
    /// The member's secret, the same across its reconnects: only it may attach to the
    /// job's result or cancel it.
    owner: u128,
    /// The member's own name for the job, under which the hub sends its outcome.
    ticket: u64,
    name: String,
    payload: ByteBuf,
    options: JobOptions,
}

/// Attaching handles to jobs by id: after a reconnect, or a lookup by id.
#[derive(Serialize, Deserialize)]
struct AttachRequest {
    owner: u128,
    /// `(ticket, job id)`: the outcome of each job comes under its ticket.
    jobs: Vec<(u64, JobId)>,
}

/// What an operator's call (`job`, `list`, `requeue`, `cancel`, `delete`) is about.
#[derive(Serialize, Deserialize)]
struct AdminRequest {
    /// The job, for `job`, `requeue`, `cancel` and `delete`.
    id: JobId,
    /// The state listed, for `list`.
    state: Option<JobState>,
    /// Most jobs listed, for `list` (at most [`MAX_LISTED`]).
    limit: usize,
}

/// Most jobs one `list` answers with.
pub(crate) const MAX_LISTED: usize = 10_000;

/// The connect parameter carrying the hub's jobs admin token, which the operator calls
/// need.
pub const JOBS_ADMIN_PARAMETER: &str = "jobs_admin";

/// Jobs per `attach` call when a member re-attaches its handles.
const ATTACH_BATCH: usize = 256;

/// The tickets whose job could not be attached to, and why.
type AttachResponse = Vec<(u64, JobError)>;

/// The hub's answer to a submission: the id it assigned, or why it refused.
type SubmitResponse = Result<JobId, JobError>;

/// Answers a `__jobs` call from member `conn` through `respond`: a submission once the
/// store has kept it, anything else at once.
///
/// `admin` says whether the member presented the hub's jobs admin token: the operator
/// calls need it.
/// # Errors
/// [`RpcErrorKind::NoSuchMethod`] or [`RpcErrorKind::Decode`]; a refused job is an `Ok` answer
/// holding the [`JobError`].
pub(crate) fn serve(
    queue: &Arc<Queue>,
    conn: Uuid,
    admin: bool,
    link: &Arc<dyn Link>,
    method: &str,
    request: &[u8],
    respond: impl FnOnce(Result<Vec<u8>, RpcError>) + Send + 'static,
) {
    let codec = queue.codec();
    let Some(respond) = serve_admin(queue, admin, method, request, respond) else {
        return;
    };
    match method {
        "stats" => respond(encode(codec, &queue.stats())),
        "submit" => {
            let req: SubmitRequest = match codec.decode(request) {
                Ok(req) => req,
                Err(e) => return respond(Err(RpcError::new(RpcErrorKind::Decode, e.to_string()))),
            };
            if req.owner == Owner::HUB.0 {
                return respond(Err(RpcError::new(
                    RpcErrorKind::Decode,
                    "a submission without an owner",
                )));
            }
            let submitter = Submitter::Member {
                conn,
                link: Arc::clone(link),
                ticket: req.ticket,
            };
            let owner = Owner(req.owner);
            match queue.submit(
                &req.name,
                req.payload.into_vec(),
                req.options,
                submitter,
                owner,
            ) {
                Ok(job) => queue.accept_then(job, move |response: SubmitResponse| {
                    respond(encode(codec, &response));
                }),
                Err(error) => respond(encode(codec, &SubmitResponse::Err(error))),
            }
        }
        "attach" => {
            let req = match codec.decode::<AttachRequest>(request) {
                Ok(req) if req.owner != Owner::HUB.0 => req,
                Ok(_) => {
                    return respond(Err(RpcError::new(
                        RpcErrorKind::Decode,
                        "an attach without an owner",
                    )))
                }
                Err(e) => return respond(Err(RpcError::new(RpcErrorKind::Decode, e.to_string()))),
            };
            let failed: AttachResponse = req
                .jobs
                .into_iter()
                .filter_map(|(ticket, id)| {
                    let submitter = Submitter::Member {
                        conn,
                        link: Arc::clone(link),
                        ticket,
                    };
                    queue
                        .attach(id, Owner(req.owner), submitter)
                        .err()
                        .map(|error| (ticket, error))
                })
                .collect();
            respond(encode(codec, &failed));
        }
        other => respond(Err(RpcError::new(
            RpcErrorKind::NoSuchMethod,
            other.to_owned(),
        ))),
    }
}

/// Answers the operator calls; gives `respond` back for any other method.
///
/// On a store several hubs share, the dead letters are the store's (any hub's): listing,
/// requeueing and deleting them are answered from a task once the store has.
fn serve_admin<R>(
    queue: &Arc<Queue>,
    admin: bool,
    method: &str,
    request: &[u8],
    respond: R,
) -> Option<R>
where
    R: FnOnce(Result<Vec<u8>, RpcError>) + Send + 'static,
{
    if !matches!(method, "job" | "list" | "requeue" | "cancel" | "delete") {
        return Some(respond);
    }
    let codec = queue.codec();
    if !admin {
        let refused: Result<(), JobError> = Err(JobError::Forbidden(format!(
            "{method} needs the hub's jobs admin token in the `{JOBS_ADMIN_PARAMETER}` connect parameter"
        )));
        respond(encode(codec, &refused));
        return None;
    }
    let req = match codec.decode::<AdminRequest>(request) {
        Ok(req) => req,
        Err(e) => {
            respond(Err(RpcError::new(RpcErrorKind::Decode, e.to_string())));
            return None;
        }
    };
    let limit = req.limit.min(MAX_LISTED);
    let later = match method {
        "list" if req.state == Some(JobState::Dead) => queue
            .shared_dead(|store| store.dead_letters(limit))
            .map(|listed| {
                later(codec, listed, |dead| {
                    dead.iter().map(JobInfo::dead).collect::<Vec<_>>()
                })
            }),
        "requeue" => queue
            .shared_dead(|store| store.requeue_dead(req.id))
            .map(|requeued| later(codec, requeued, drop)),
        "delete" => queue
            .shared_dead(|store| store.delete_dead(req.id))
            .map(|deleted| later(codec, deleted, std::convert::identity)),
        _ => None,
    };
    if let Some(answer) = later {
        queue.answer_later(answer, respond);
        return None;
    }
    respond(match method {
        "job" => encode(codec, &Ok::<_, JobError>(queue.find(req.id))),
        "list" => {
            let state = req.state.unwrap_or(JobState::Waiting);
            encode(codec, &Ok::<_, JobError>(queue.list(state, limit)))
        }
        "requeue" => encode(codec, &queue.requeue_dead_any(req.id)),
        "cancel" => encode(codec, &Ok::<_, JobError>(queue.cancel_by_id(req.id))),
        _ => encode(codec, &Ok::<_, JobError>(queue.delete_dead(req.id))),
    });
    None
}

/// A shared store's answer, once it comes, encoded as the operator call's answer
/// (`Result<U, JobError>`, `U` made from the store's value by `map`).
fn later<T: 'static, U: Serialize>(
    codec: CodecKind,
    answer: StoreFuture<T>,
    map: impl FnOnce(T) -> U + Send + 'static,
) -> Later {
    Box::pin(async move { encode(codec, &answer.await.map(map)) })
}

/// An operator call's answer to come.
type Later = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Vec<u8>, RpcError>> + Send>>;

/// An operator's call to the hub's queue, from a member that holds the admin token.
pub(crate) async fn admin<T: serde::de::DeserializeOwned>(
    core: Arc<PeerCore>,
    method: &'static str,
    id: JobId,
    state: Option<JobState>,
    limit: usize,
) -> Result<T, JobError> {
    let request = AdminRequest { id, state, limit };
    Caller::new(core)
        .call::<_, Result<T, JobError>>(JOBS_SERVICE, method, &request)
        .await?
}

/// A value encoded with the queue's codec, as an answer.
fn encode<T: Serialize>(codec: CodecKind, value: &T) -> Result<Vec<u8>, RpcError> {
    let mut out = Vec::new();
    codec
        .encode(value, &mut out)
        .map_err(|e| RpcError::new(RpcErrorKind::Encode, e.to_string()))?;
    Ok(out)
}

/// A member's jobs not resolved yet, by ticket: where their outcomes and progress go.
/// They outlive the member's connection: after a reconnect (to the same hub, or to a hub
/// restarted on the same data directory) the handles attach again by job id.
///
/// A submission the hub answered on an earlier connection whose future was not polled
/// again before the reconnect (its id was not known to the re-attach of the new
/// connection) attaches on its own once its id is taken ([`NewTicket::handle`]): every
/// handle is re-attached once, whichever of the two comes first.
pub(crate) struct Submissions {
    /// The member's secret, sent with each submission and attach: random, kept across
    /// reconnects, never shown.
    owner: u128,
    next_ticket: AtomicU64,
    /// How many times the member's connection opened; changed under `pending`'s lock, so
    /// that a handle taking its id either is seen by the re-attach or sees the change.
    opens: AtomicU64,
    pending: Mutex<HashMap<u64, Pending>>,
}

impl Default for Submissions {
    fn default() -> Self {
        Self {
            // Never 0, the hub's own owner.
            owner: rand::random::<u128>() | 1,
            next_ticket: AtomicU64::new(0),
            opens: AtomicU64::new(0),
            pending: Mutex::new(HashMap::new()),
        }
    }
}

struct Pending {
    outcome: oneshot::Sender<Outcome>,
    progress: ProgressRef,
    /// The job's id, once the hub accepted it.
    id: Option<JobId>,
}

impl Submissions {
    fn pending(&self) -> MutexGuard<'_, HashMap<u64, Pending>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hands the outcomes of a [`RESULT_SUBJECT`](wire::RESULT_SUBJECT) frame to their
    /// handles.
    ///
    /// # Errors
    /// A malformed frame (the outcomes before the bad record are handed over).
    pub(crate) fn results(&self, payload: &[u8], codec: CodecKind) -> Result<(), Malformed> {
        for record in wire::results(payload) {
            let (ticket, outcome) = record?;
            let Some(pending) = self.pending().remove(&ticket) else {
                continue;
            };
            let outcome = match outcome {
                Ok(output) => Ok(bytes::Bytes::copy_from_slice(output)),
                Err(error) => Err(codec
                    .decode::<JobError>(error)
                    .unwrap_or_else(|e| JobError::Decode(e.to_string()))),
            };
            pending.progress.close();
            let _ = pending.outcome.send(outcome);
        }
        Ok(())
    }

    /// Records the progress of an [`UPDATE_SUBJECT`](wire::UPDATE_SUBJECT) frame.
    ///
    /// # Errors
    /// A malformed frame (the reports before the bad record count).
    pub(crate) fn updates(&self, payload: &[u8]) -> Result<(), Malformed> {
        for record in wire::updates(payload) {
            let (ticket, value) = record?;
            if let Some(pending) = self.pending().get(&ticket) {
                pending.progress.set(value);
            }
        }
        Ok(())
    }

    /// The member's connection opened (again), before any call goes out on it: the
    /// handles whose job the hub accepted, `(ticket, id)`, to [`reattach`](Self::reattach).
    pub(crate) fn opened(&self) -> Vec<(u64, JobId)> {
        let pending = self.pending();
        self.opens.fetch_add(1, Ordering::SeqCst);
        pending
            .iter()
            .filter_map(|(ticket, p)| Some((*ticket, p.id?)))
            .collect()
    }

    /// After a reconnect: attaches handles `jobs` to their jobs again (a result that came
    /// while the member was away comes now). A handle whose job the hub no longer knows
    /// fails with the hub's reason, and one the hub did not answer for with the call's
    /// error; a handle disconnected again is attached on the next open.
    pub(crate) async fn reattach(&self, core: Arc<PeerCore>, jobs: Vec<(u64, JobId)>) {
        // A few hundred per call: each call stays far below the hub's payload limit.
        for jobs in jobs.chunks(ATTACH_BATCH) {
            let request = AttachRequest {
                owner: self.owner,
                jobs: jobs.to_vec(),
            };
            let failed = match Caller::new(Arc::clone(&core))
                .call::<_, AttachResponse>(JOBS_SERVICE, "attach", &request)
                .await
            {
                Ok(failed) => failed,
                // The next open attaches them (their ids are known by then).
                Err(error) if error.kind() == RpcErrorKind::Disconnected => {
                    tracing::debug!(cause = %error, "re-attaching jobs failed; again on the next open");
                    return;
                }
                Err(error) => {
                    tracing::warn!(cause = %error, jobs = jobs.len(), "re-attaching jobs failed; their handles fail");
                    let error = JobError::from(error);
                    jobs.iter()
                        .map(|(ticket, _)| (*ticket, error.clone()))
                        .collect()
                }
            };
            for (ticket, error) in failed {
                if let Some(pending) = self.pending().remove(&ticket) {
                    pending.progress.close();
                    let _ = pending.outcome.send(Err(error));
                }
            }
        }
    }

    /// The member closed for good: the hub can no longer answer these handles.
    pub(crate) fn closed(&self) {
        let pending = std::mem::take(&mut *self.pending());
        for (_, pending) in pending {
            pending.progress.close();
            let _ = pending.outcome.send(Err(JobError::Rpc(RpcError::from(
                RpcErrorKind::Disconnected,
            ))));
        }
    }
}

/// Forgets a ticket whose submission did not go through (refused, failed, or dropped).
struct TicketGuard<'a> {
    submissions: &'a Submissions,
    ticket: u64,
    armed: bool,
}

impl Drop for TicketGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.submissions.pending().remove(&self.ticket);
        }
    }
}

/// How a member's handle cancels its job: it resolves at once, and the hub is told.
pub(crate) struct Withdraw {
    submissions: Weak<Submissions>,
    core: Weak<PeerCore>,
    ticket: u64,
}

impl Withdraw {
    pub(crate) fn withdraw(&self, id: JobId, progress: &Progress) {
        progress.cancel();
        if let Some(submissions) = self.submissions.upgrade() {
            submissions.pending().remove(&self.ticket);
        }
        if let Some(core) = self.core.upgrade() {
            let mut batch = Batch::new(CANCEL_SUBJECT);
            batch.push_cancel(id);
            // A refused frame: the connection is going, and the hub cannot be told.
            let _ = core.link().send_frame(batch.frame());
        }
    }
}

/// A new handle's ticket, registered for its outcome (and forgotten again unless the
/// guard is disarmed), and how the handle cancels.
struct NewTicket<'a> {
    ticket: u64,
    /// The member's [`opens`](Submissions::opens) when the ticket was made.
    opens: u64,
    outcome: oneshot::Receiver<Outcome>,
    progress: ProgressRef,
    guard: TicketGuard<'a>,
    withdraw: Withdraw,
}

impl<'a> NewTicket<'a> {
    fn new(core: &Arc<PeerCore>, submissions: &'a Arc<Submissions>, id: Option<JobId>) -> Self {
        let ticket = submissions.next_ticket.fetch_add(1, Ordering::Relaxed);
        let (tx, outcome) = oneshot::channel();
        let progress = ProgressRef::new();
        let opens = {
            let mut pending = submissions.pending();
            pending.insert(
                ticket,
                Pending {
                    outcome: tx,
                    progress: progress.clone(),
                    id,
                },
            );
            submissions.opens.load(Ordering::SeqCst)
        };
        Self {
            ticket,
            opens,
            outcome,
            progress,
            guard: TicketGuard {
                submissions,
                ticket,
                armed: true,
            },
            withdraw: Withdraw {
                submissions: Arc::downgrade(submissions),
                core: Arc::downgrade(core),
                ticket,
            },
        }
    }

    /// The hub took it: the handle on job `id`, and whether it must attach to the job on
    /// its own (the connection that carried the hub's answer is gone, and the re-attach
    /// of the one after it did not know the id).
    fn handle(mut self, id: JobId) -> (Accepted, bool) {
        self.guard.armed = false;
        let submissions = self.guard.submissions;
        let unseen = match submissions.pending().get_mut(&self.ticket) {
            Some(pending) => {
                let unseen =
                    pending.id.is_none() && submissions.opens.load(Ordering::SeqCst) != self.opens;
                pending.id = Some(id);
                unseen
            }
            // Its outcome came already.
            None => false,
        };
        let accepted = (
            id,
            self.outcome,
            self.progress,
            Canceller::Member(self.withdraw),
        );
        (accepted, unseen)
    }
}

/// A member's accepted job: its id, where its outcome arrives, its progress, and how it
/// is cancelled.
pub(crate) type Accepted = (JobId, oneshot::Receiver<Outcome>, ProgressRef, Canceller);

/// Submits a job from a member; resolves once the hub accepted it.
pub(crate) async fn submit(
    core: Arc<PeerCore>,
    submissions: &Arc<Submissions>,
    name: &str,
    payload: Vec<u8>,
    options: JobOptions,
) -> Result<Accepted, JobError> {
    let new = NewTicket::new(&core, submissions, None);
    let request = SubmitRequest {
        owner: submissions.owner,
        ticket: new.ticket,
        name: name.to_owned(),
        payload: ByteBuf::from(payload),
        options,
    };
    let ticket = new.ticket;
    let id = Caller::new(Arc::clone(&core))
        .call::<_, SubmitResponse>(JOBS_SERVICE, "submit", &request)
        .await??;
    let (accepted, unseen) = new.handle(id);
    if unseen {
        submissions.reattach(core, vec![(ticket, id)]).await;
    }
    Ok(accepted)
}

/// Attaches a new handle to the member's job `id` (one it submitted): resolves once the
/// hub took it.
pub(crate) async fn attach(
    core: Arc<PeerCore>,
    submissions: &Arc<Submissions>,
    id: JobId,
) -> Result<Accepted, JobError> {
    // Its id is known from the start: a reconnect before it is polled again re-attaches it.
    let new = NewTicket::new(&core, submissions, Some(id));
    let request = AttachRequest {
        owner: submissions.owner,
        jobs: vec![(new.ticket, id)],
    };
    let failed = Caller::new(core)
        .call::<_, AttachResponse>(JOBS_SERVICE, "attach", &request)
        .await?;
    if let Some((_, error)) = failed.into_iter().next() {
        return Err(error);
    }
    Ok(new.handle(id).0)
}

/// A member's handle on an accepted job.
pub(crate) fn handle<T>(
    (id, outcome, progress, cancel): Accepted,
    codec: CodecKind,
) -> JobHandle<T> {
    JobHandle::new(id, Delivery::Channel(outcome), progress, cancel, codec)
}

/// The hub queue's statistics, asked from a member.
pub(crate) async fn stats(core: Arc<PeerCore>) -> Result<JobStats, RpcError> {
    Caller::new(core).call(JOBS_SERVICE, "stats", &()).await
}
