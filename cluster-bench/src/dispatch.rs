//! W5's baseline: a bare credit dispatcher over tuned tokio-tungstenite, what the job
//! queue is held against. No retries, timeouts, dead letters, names or priorities: the
//! hub hands each worker jobs up to its credits, the workers answer, the hub checks every
//! result.
//!
//! Written as a competent engineer would for speed: the jobs (their payloads) are there
//! before the clock starts, as our queue's submitter has its jobs before it submits
//! them; each job's frame is built when the job is handed out, inside the clock (our
//! queue encodes its jobs inside the clock too), into an arena per worker connection that
//! frames are zero-copy slices of; both sides answer everything already readable before
//! one flush (batched writes); a worker writes its results into an arena instead of
//! allocating each. One websocket frame per job and per result, as our queue sends them.
//!
//! The wire: a worker's first message is text `CREDITS <n>`; a job is a binary frame of
//! its index (u64 LE) and the 64-byte payload; a result is the index and the FNV-1a hash
//! (u64 LE each).

use crate::common::{print_line, wait_for};
use crate::jobs::{fnv, payload};
use crate::spec::ClientSpec;
use anyhow::Context;
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::{FutureExt, SinkExt, StreamExt};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Bytes of a job frame: the index and the payload.
const JOB_LEN: usize = 8 + crate::spec::PAYLOAD_LEN;
/// Bytes of a result frame: the index and the hash.
const RESULT_LEN: usize = 16;
/// Results a worker's arena holds before it takes a new one.
const ARENA_RESULTS: usize = 4096;
/// Job frames a worker connection's arena on the hub holds before it takes a new one.
const ARENA_JOBS: usize = 1024;
/// Longest wait for the last result once every job is handed out.
const ROUND_WAIT: Duration = Duration::from_secs(30);
/// The most credits a worker may claim.
const MAX_CREDITS: usize = 1 << 16;

/// The tuned configuration of both sides: reads of 8 KiB (tungstenite zero-fills its read
/// buffer before each read, so its 128 KiB default costs a memset per read), writes
/// flushed when asked.
fn config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .write_buffer_size(64 * 1024)
}

/// One batch of jobs, handed out and checked.
#[derive(Debug)]
struct Round {
    /// Every job's payload, as the submitter has them.
    payloads: Vec<Vec<u8>>,
    /// The hash each job must come back with.
    expected: Vec<u64>,
    /// The next job to hand out.
    next: AtomicU64,
    /// Results checked.
    done: AtomicU64,
    start: Instant,
    /// Told once, with the time to the last result or the first wrong one.
    finished: Mutex<Option<oneshot::Sender<Result<Duration, String>>>>,
}

impl Round {
    fn len(&self) -> u64 {
        self.expected.len() as u64
    }

    /// The next job's frame, if any is left, built in `arena`.
    fn take(&self, arena: &mut BytesMut) -> Option<Bytes> {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        let data = self.payloads.get(usize::try_from(i).ok()?)?;
        if arena.capacity() < JOB_LEN {
            arena.reserve(ARENA_JOBS * JOB_LEN);
        }
        arena.put_u64_le(i);
        arena.put_slice(data);
        Some(arena.split().freeze())
    }

    /// Checks one result frame; the last one (or a wrong one) finishes the round.
    fn check(&self, frame: &[u8]) -> Result<(), String> {
        let (index, hash) = match frame {
            [i @ .., h0, h1, h2, h3, h4, h5, h6, h7] if i.len() == 8 => {
                let mut index = [0u8; 8];
                index.copy_from_slice(i);
                (
                    u64::from_le_bytes(index),
                    u64::from_le_bytes([*h0, *h1, *h2, *h3, *h4, *h5, *h6, *h7]),
                )
            }
            _ => return self.finish(Err(format!("a result of {} bytes", frame.len()))),
        };
        let expected = usize::try_from(index)
            .ok()
            .and_then(|i| self.expected.get(i));
        match expected {
            Some(&e) if e == hash => {}
            Some(&e) => {
                return self.finish(Err(format!(
                    "job {index}: wrong result {hash:#x}, expected {e:#x}"
                )))
            }
            None => return self.finish(Err(format!("a result for unknown job {index}"))),
        }
        if self.done.fetch_add(1, Ordering::AcqRel) + 1 == self.len() {
            self.finish(Ok(self.start.elapsed()))?;
        }
        Ok(())
    }

    fn finish(&self, outcome: Result<Duration, String>) -> Result<(), String> {
        let failed = outcome.as_ref().err().cloned();
        let sender = self
            .finished
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(sender) = sender {
            let _ = sender.send(outcome);
        }
        failed.map_or(Ok(()), Err)
    }
}

/// The dispatcher's hub, running.
#[derive(Debug)]
pub(crate) struct Dispatcher {
    port: u16,
    workers: Arc<AtomicUsize>,
    round: watch::Sender<Option<Arc<Round>>>,
}

impl Dispatcher {
    /// Listens on 127.0.0.1 (any port) for workers.
    pub(crate) async fn start() -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let workers = Arc::new(AtomicUsize::new(0));
        let (round, rounds) = watch::channel(None);
        tokio::spawn(accept_loop(listener, Arc::clone(&workers), rounds));
        Ok(Self {
            port,
            workers,
            round,
        })
    }

    /// The port it listens on.
    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    /// How many workers are connected.
    pub(crate) fn workers(&self) -> usize {
        self.workers.load(Ordering::Relaxed)
    }

    /// Waits for `workers` workers, hands out `n` jobs (their payloads made before the
    /// clock starts, their frames built as they are handed out) and checks every result;
    /// returns the time from the first job to the last result.
    pub(crate) async fn submit_and_check(
        &self,
        n: u64,
        workers: usize,
    ) -> anyhow::Result<Duration> {
        wait_for(|| self.workers(), workers, "workers").await?;
        let count = usize::try_from(n).context("job count")?;
        let payloads: Vec<Vec<u8>> = (0..n).map(payload).collect();
        let mut expected = Vec::with_capacity(count);
        expected.extend(payloads.iter().map(|data| fnv(data)));
        let (finished, outcome) = oneshot::channel();
        let round = Arc::new(Round {
            payloads,
            expected,
            next: AtomicU64::new(0),
            done: AtomicU64::new(0),
            start: Instant::now(),
            finished: Mutex::new(Some(finished)),
        });
        self.round.send_replace(Some(round));
        let outcome = tokio::time::timeout(ROUND_WAIT + Duration::from_secs(n / 10_000), outcome)
            .await
            .context("the dispatcher's jobs did not finish in time (lost)")?
            .context("the round ended without an outcome")?;
        outcome.map_err(|e| anyhow::anyhow!(e))
    }
}

async fn accept_loop(
    listener: TcpListener,
    workers: Arc<AtomicUsize>,
    rounds: watch::Receiver<Option<Arc<Round>>>,
) {
    while let Ok((stream, _)) = listener.accept().await {
        let (workers, rounds) = (Arc::clone(&workers), rounds.clone());
        tokio::spawn(async move {
            if let Err(error) = serve_worker(stream, &workers, rounds).await {
                tracing::debug!(cause = %error, "dispatcher worker ended");
            }
        });
    }
}

/// One worker: its credits, then each round's jobs up to them.
async fn serve_worker(
    stream: TcpStream,
    workers: &AtomicUsize,
    mut rounds: watch::Receiver<Option<Arc<Round>>>,
) -> anyhow::Result<()> {
    stream.set_nodelay(true)?;
    let mut ws = tokio_tungstenite::accept_async_with_config(stream, Some(config())).await?;
    let credits = match ws.next().await.context("no credits")?? {
        Message::Text(text) => text
            .strip_prefix("CREDITS ")
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|n| (1..=MAX_CREDITS).contains(n))
            .context("bad CREDITS line")?,
        _ => anyhow::bail!("expected CREDITS"),
    };
    workers.fetch_add(1, Ordering::Relaxed);
    let served = async {
        loop {
            rounds.changed().await?;
            let round = rounds.borrow_and_update().clone();
            if let Some(round) = round {
                if let Err(error) = hand_out(&mut ws, &round, credits).await {
                    let _ = round.finish(Err(format!("{error:#}")));
                    return Err(error);
                }
            }
        }
    }
    .await;
    workers.fetch_sub(1, Ordering::Relaxed);
    served
}

/// Keeps `credits` jobs of `round` at the worker until none is left, checking each result.
async fn hand_out(
    ws: &mut WebSocketStream<TcpStream>,
    round: &Round,
    credits: usize,
) -> anyhow::Result<()> {
    let mut arena = BytesMut::new();
    let mut outstanding = 0usize;
    while outstanding < credits {
        let Some(job) = round.take(&mut arena) else {
            break;
        };
        ws.feed(Message::Binary(job)).await?;
        outstanding += 1;
    }
    ws.flush().await?;
    while outstanding > 0 {
        let mut message = ws.next().await.context("worker gone")??;
        // Every result already readable is answered before one flush.
        loop {
            if let Message::Binary(result) = &message {
                round.check(result).map_err(|e| anyhow::anyhow!(e))?;
                outstanding -= 1;
                if let Some(job) = round.take(&mut arena) {
                    ws.feed(Message::Binary(job)).await?;
                    outstanding += 1;
                }
            }
            match ws.next().now_or_never() {
                Some(Some(next)) => message = next?,
                Some(None) => anyhow::bail!("worker gone"),
                None => break,
            }
        }
        ws.flush().await?;
    }
    Ok(())
}

/// W5 baseline, the clients child: connects `spec.conns` workers of `spec.in_flight`
/// credits each, says `CONNECTED`, and works until the process ends.
pub(crate) async fn workers(spec: &ClientSpec) -> anyhow::Result<()> {
    let credits = spec.in_flight.max(1);
    let url = format!("ws://127.0.0.1:{}/", spec.port);
    for _ in 0..spec.conns {
        let stream = TcpStream::connect(("127.0.0.1", spec.port)).await?;
        stream.set_nodelay(true)?;
        let (mut ws, _) =
            tokio_tungstenite::client_async_with_config(url.as_str(), stream, Some(config()))
                .await?;
        ws.send(Message::text(format!("CREDITS {credits}"))).await?;
        crate::common::spawn_or_fail(work(ws));
    }
    print_line("CONNECTED");
    Ok(())
}

/// A worker: hashes each job, answering everything already readable before one flush.
/// It ends when the hub goes away (the hub, not the worker, notices lost jobs); a job
/// frame that is not one fails it.
async fn work(mut ws: WebSocketStream<TcpStream>) -> anyhow::Result<()> {
    let mut arena = BytesMut::with_capacity(ARENA_RESULTS * RESULT_LEN);
    while let Some(Ok(mut message)) = ws.next().await {
        loop {
            if let Message::Binary(job) = &message {
                if arena.capacity() < RESULT_LEN {
                    arena.reserve(ARENA_RESULTS * RESULT_LEN);
                }
                let result = answer(job, &mut arena)?;
                if ws.feed(Message::Binary(result)).await.is_err() {
                    return Ok(());
                }
            }
            match ws.next().now_or_never() {
                Some(Some(Ok(next))) => message = next,
                Some(Some(Err(_)) | None) => return Ok(()),
                None => break,
            }
        }
        if ws.flush().await.is_err() {
            return Ok(());
        }
    }
    Ok(())
}

/// The result frame of a job frame, written into `arena`.
fn answer(job: &[u8], arena: &mut BytesMut) -> anyhow::Result<Bytes> {
    anyhow::ensure!(job.len() == JOB_LEN, "a job of {} bytes", job.len());
    let (index, data) = job.split_at(8);
    arena.put_slice(index);
    arena.put_u64_le(fnv(data));
    Ok(arena.split().freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_the_index_and_the_hash() {
        let mut job = 7u64.to_le_bytes().to_vec();
        job.extend(payload(7));
        let mut arena = BytesMut::with_capacity(64);
        let result = answer(&job, &mut arena).unwrap();
        assert_eq!(result.len(), RESULT_LEN);
        assert_eq!(result[..8], 7u64.to_le_bytes());
        assert_eq!(result[8..], fnv(&payload(7)).to_le_bytes());
        assert!(answer(&job[..10], &mut arena).is_err());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn workers_answer_every_job_right() {
        let dispatcher = Dispatcher::start().await.unwrap();
        let spec = ClientSpec {
            workload: crate::spec::Workload::W5,
            port: dispatcher.port(),
            conns: 2,
            count: 0,
            warmup: 0,
            in_flight: 4,
            client: crate::spec::ClientKind::Lean,
            ca: None,
            setup: crate::spec::Setup::Tuned,
            hubs: Vec::new(),
            nats: None,
        };
        workers(&spec).await.unwrap();
        let took = dispatcher.submit_and_check(5_000, 2).await.unwrap();
        assert!(took > Duration::ZERO);
    }

    #[test]
    fn a_wrong_result_fails_the_round() {
        let (finished, mut outcome) = oneshot::channel();
        let round = Round {
            payloads: vec![payload(0)],
            expected: vec![fnv(&payload(0))],
            next: AtomicU64::new(0),
            done: AtomicU64::new(0),
            start: Instant::now(),
            finished: Mutex::new(Some(finished)),
        };
        let mut wrong = 0u64.to_le_bytes().to_vec();
        wrong.extend(1u64.to_le_bytes());
        assert!(round.check(&wrong).is_err());
        let failed = outcome.try_recv().unwrap().unwrap_err();
        assert!(failed.contains("wrong result"), "{failed}");
        let mut unknown = 5u64.to_le_bytes().to_vec();
        unknown.extend(1u64.to_le_bytes());
        assert!(round.check(&unknown).unwrap_err().contains("unknown job"));
    }
}
