//! The hub's `__jobs` service, through which members submit jobs and read statistics.

use super::queue::Queue;
use super::{new_job_id, Canceller, Job, JobError, JobHandle, JobOptions, JobStats, Progress};
use crate::codec::{Codec, CodecKind};
use crate::error::RpcError;
use crate::member::Member;
use crate::service::Service;
use futures_util::future::{AbortHandle, Abortable, BoxFuture};
use futures_util::FutureExt;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

/// How long a member waits for a submitted job at most.
const MEMBER_JOB_DEADLINE: Duration = Duration::from_secs(24 * 3600);

#[derive(Serialize, Deserialize)]
struct SubmitRequest {
    id: super::JobId,
    name: String,
    #[serde(with = "serde_bytes")]
    payload: Vec<u8>,
    options: JobOptions,
    progress_subject: String,
}

type SubmitResponse = Result<serde_bytes::ByteBuf, JobError>;

/// The `__jobs` service of a hub.
#[derive(Clone)]
pub(crate) struct JobsService {
    pub(crate) queue: Arc<Queue>,
}

/// Cancels the member's job if its submit call is dropped (the member cancelled or left).
struct CancelOnDrop {
    queue: Arc<Queue>,
    id: super::JobId,
    /// The job's progress, when it was queued: what a cancel marks.
    progress: Option<Arc<Progress>>,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(progress) = self.progress.take() {
            self.queue.cancel(self.id, &progress);
        }
    }
}

impl Service for JobsService {
    fn name(&self) -> &'static str {
        "__jobs"
    }

    fn methods(&self) -> &'static [&'static str] {
        &["submit", "stats"]
    }

    fn call(
        &self,
        method: &str,
        request: &[u8],
        codec: CodecKind,
    ) -> Result<BoxFuture<'static, Result<Vec<u8>, RpcError>>, RpcError> {
        let encode = move |value: &dyn erased::Encode| value.encode_with(codec);
        match method {
            "stats" => {
                let stats = self.queue.stats();
                Ok(async move { encode(&stats) }.boxed())
            }
            "submit" => {
                let req: SubmitRequest = codec
                    .decode(request)
                    .map_err(|e| RpcError::Decode(e.to_string()))?;
                let queued = self.queue.submit(
                    req.id,
                    &req.name,
                    req.payload,
                    req.options,
                    Some(req.progress_subject),
                );
                let guard = CancelOnDrop {
                    queue: Arc::clone(&self.queue),
                    id: req.id,
                    progress: queued
                        .as_ref()
                        .ok()
                        .map(|(_, progress)| Arc::clone(progress)),
                };
                Ok(async move {
                    // Moved in whole: dropping this future (a cancelled call) cancels the job.
                    let mut guard = guard;
                    let response: SubmitResponse = match queued {
                        Err(error) => Err(error),
                        Ok((outcome, _progress)) => {
                            let outcome = outcome.await.unwrap_or(Err(JobError::Cancelled));
                            guard.progress = None;
                            outcome.map(serde_bytes::ByteBuf::from)
                        }
                    };
                    encode(&response)
                }
                .boxed())
            }
            other => Err(RpcError::NoSuchMethod(other.to_owned())),
        }
    }
}

/// Encoding a response without naming its type at the call site.
mod erased {
    use crate::codec::{Codec, CodecKind};
    use crate::error::RpcError;

    pub(super) trait Encode {
        fn encode_with(&self, codec: CodecKind) -> Result<Vec<u8>, RpcError>;
    }

    impl<T: serde::Serialize> Encode for T {
        fn encode_with(&self, codec: CodecKind) -> Result<Vec<u8>, RpcError> {
            let mut out = Vec::new();
            codec
                .encode(self, &mut out)
                .map_err(|e| RpcError::Encode(e.to_string()))?;
            Ok(out)
        }
    }
}

/// Submits a job from a member: one call to the hub's `__jobs.submit` that lasts as long
/// as the job; progress arrives on a pub/sub subject of the job's own.
pub(crate) fn submit_from_member<J: Job>(
    member: &Member,
    job: &J,
    name: &str,
    options: JobOptions,
) -> Result<JobHandle<J::Output>, JobError> {
    let caller = member.caller()?.with_deadline(MEMBER_JOB_DEADLINE);
    let codec = member.codec();
    let mut payload = Vec::new();
    codec
        .encode(job, &mut payload)
        .map_err(|e| JobError::Decode(e.to_string()))?;
    let id = new_job_id();
    let progress_subject = format!("__jobs.progress.{id:032x}");
    let mut progress_updates = member.subscribe::<f64>(&progress_subject)?;
    let request = SubmitRequest {
        id,
        name: name.to_owned(),
        payload,
        options,
        progress_subject,
    };
    let (outcome_tx, outcome_rx) = oneshot::channel();
    let progress = Arc::new(Progress::default());
    let progress_tx = Arc::clone(&progress);
    let (abort, registration) = AbortHandle::new_pair();
    let call = async move {
        let submitted = caller.call::<_, SubmitResponse>("__jobs", "submit", &request);
        tokio::pin!(submitted);
        let outcome = loop {
            tokio::select! {
                response = &mut submitted => break response,
                Some(Ok(update)) = progress_updates.recv() => {
                    progress_tx.set(update.value);
                }
            }
        };
        let outcome = match outcome {
            Ok(Ok(bytes)) => Ok(bytes.into_vec()),
            Ok(Err(error)) => Err(error),
            Err(error) => Err(JobError::Rpc(error)),
        };
        progress_tx.close();
        let _ = outcome_tx.send(outcome);
    };
    tokio::spawn(Abortable::new(call, registration));
    Ok(JobHandle::new(
        id,
        outcome_rx,
        progress,
        Canceller::Call(abort),
        codec,
    ))
}

/// The hub queue's statistics, asked from a member.
pub(crate) async fn stats(member: &Member) -> Result<JobStats, RpcError> {
    member.caller()?.call("__jobs", "stats", &()).await
}
