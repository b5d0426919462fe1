//! The `fnv` job: hash `data` after sleeping `sleep_ms`. The `test_peer` worker processes
//! run it too, so every test that works it, in process or through them, shares this shape.

use network_cluster::rpc::{ByteBuf, Job, JobContext};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Hash `data`, after sleeping `sleep_ms`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Fnv {
    pub data: ByteBuf,
    pub sleep_ms: u64,
}

impl Job for Fnv {
    const NAME: &'static str = "fnv";
    type Output = u64;
}

/// The job hashing `data`.
pub fn job(data: impl Into<Vec<u8>>, sleep_ms: u64) -> Fnv {
    Fnv {
        data: ByteBuf::from(data.into()),
        sleep_ms,
    }
}

/// Job number `i`: it hashes `i`'s little-endian bytes.
pub fn numbered(i: u64, sleep_ms: u64) -> Fnv {
    job(i.to_le_bytes(), sleep_ms)
}

/// 64-bit FNV-1a.
pub fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The worker's handler: the hash, after the job's sleep.
pub async fn work(job: Fnv, _ctx: JobContext) -> Result<u64, String> {
    tokio::time::sleep(Duration::from_millis(job.sleep_ms)).await;
    Ok(fnv(&job.data))
}
