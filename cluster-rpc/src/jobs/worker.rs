//! The worker side: the `__worker` service that runs a member's job handlers, and the
//! context a handler reports progress through.

use super::queue::{JobRun, RunResult};
use super::{Job, JobId};
use crate::codec::{Codec, CodecKind};
use crate::envelope::Envelope;
use crate::error::RpcError;
use crate::peer::{with_frame, PeerCore};
use crate::service::Service;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, OnceLock};

/// The connect parameter listing the job names a worker runs.
pub(crate) const JOBS_PARAMETER: &str = "jobs";
/// The connect parameter with a worker's credits (jobs at once).
pub(crate) const JOB_CREDITS_PARAMETER: &str = "job_credits";
/// The subject workers report progress on.
pub(crate) const PROGRESS_SUBJECT: &str = "__jobs.progress";

/// What a job handler gets besides the job: its id, attempt, and a way to report
/// progress to the submitter.
#[derive(Clone)]
pub struct JobContext {
    id: JobId,
    attempt: u32,
    core: Option<Arc<PeerCore>>,
}

impl JobContext {
    /// The job's id.
    pub fn id(&self) -> JobId {
        self.id
    }

    /// Which attempt this is (1 for the first).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Reports progress (say, 0.0 to 1.0) to the submitter's [`JobHandle`](super::JobHandle).
    /// Fire and forget: a lost report is replaced by the next.
    pub fn progress(&self, value: f64) {
        let Some(core) = &self.core else {
            return;
        };
        let codec = core.codec();
        let _ = with_frame(
            |buf| {
                Envelope::Publish {
                    subject: PROGRESS_SUBJECT,
                    payload: &[],
                }
                .encode(buf);
                codec
                    .encode(&(self.id, value), buf)
                    .map_err(|e| RpcError::Encode(e.to_string()))
            },
            |frame| core.link().send_frame(frame),
        );
    }
}

impl fmt::Debug for JobContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobContext")
            .field("id", &self.id)
            .field("attempt", &self.attempt)
            .finish()
    }
}

type Handler = Arc<
    dyn Fn(&[u8], CodecKind, JobContext) -> Result<BoxFuture<'static, RunResult>, String>
        + Send
        + Sync,
>;

/// The `__worker` service: runs the member's job handlers by job name.
#[derive(Clone, Default)]
pub(crate) struct WorkerService {
    handlers: HashMap<&'static str, Handler>,
    /// The member's connection, for progress reports; set once the member exists.
    pub(crate) core: Arc<OnceLock<Arc<PeerCore>>>,
}

impl WorkerService {
    pub(crate) fn add<J, F, Fut>(&mut self, handler: F)
    where
        J: Job,
        F: Fn(J, JobContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<J::Output, String>> + Send + 'static,
    {
        let handler = Arc::new(handler);
        self.handlers.insert(
            J::NAME,
            Arc::new(move |payload, codec, ctx| {
                let job: J = codec.decode(payload).map_err(|e| e.to_string())?;
                let running = handler(job, ctx);
                Ok(async move {
                    let output = running.await?;
                    let mut bytes = Vec::new();
                    codec
                        .encode(&output, &mut bytes)
                        .map_err(|e| e.to_string())?;
                    Ok(serde_bytes::ByteBuf::from(bytes))
                }
                .boxed())
            }),
        );
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.handlers.is_empty()
    }

    /// The job names, comma-separated, for the `jobs` connect parameter.
    pub(crate) fn names(&self) -> String {
        let mut names: Vec<_> = self.handlers.keys().copied().collect();
        names.sort_unstable();
        names.join(",")
    }
}

impl Service for WorkerService {
    fn name(&self) -> &'static str {
        "__worker"
    }

    fn methods(&self) -> &'static [&'static str] {
        &["run"]
    }

    fn call(
        &self,
        method: &str,
        request: &[u8],
        codec: CodecKind,
    ) -> Result<BoxFuture<'static, Result<Vec<u8>, RpcError>>, RpcError> {
        if method != "run" {
            return Err(RpcError::NoSuchMethod(method.to_owned()));
        }
        let run: JobRun = codec
            .decode(request)
            .map_err(|e| RpcError::Decode(e.to_string()))?;
        let ctx = JobContext {
            id: run.id,
            attempt: run.attempt,
            core: self.core.get().cloned(),
        };
        let started = match self.handlers.get(run.name.as_str()) {
            Some(handler) => handler(&run.payload, codec, ctx),
            None => Err(format!("this worker runs no job named {:?}", run.name)),
        };
        Ok(async move {
            let result: RunResult = match started {
                Ok(running) => running.await,
                Err(error) => Err(error),
            };
            let mut out = Vec::new();
            codec
                .encode(&result, &mut out)
                .map_err(|e| RpcError::Encode(e.to_string()))?;
            Ok(out)
        }
        .boxed())
    }
}

impl fmt::Debug for WorkerService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.handlers.keys()).finish()
    }
}
