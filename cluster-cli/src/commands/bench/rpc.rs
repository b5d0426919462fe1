//! W4 and W7 on our typed layer: the hub (server child) and the W4 member (clients child).
//!
//! W4: the hub serves the [`Echo`] service below; one member calls it through the
//! generated [`EchoClient`], one call at a time (latency) or 64 at once over its one
//! connection (throughput). Every response is checked equal to its request.
//!
//! Lines to the parent (W4 clients): `CONNECTED` after the warm-up, then, after `GO`,
//! `ECHO <n> <total ns> <p50 ns> <p99 ns> <p999 ns>` (one in flight) or
//! `RPC <calls> <ns>` (more in flight).

use super::client::{report_echo, spawn_or_fail};
use super::server::wait_for;
use super::spec::{ClientSpec, Workload, PAYLOAD, PAYLOAD_LEN};
use crate::commands::print_line;
use cluster_rpc::{Hub, Member, MemberBuilder};
use cluster_transport::{Consumer, Provider};
use futures_util::{StreamExt, TryStreamExt};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How many members connect at once (W7).
const CONNECT_CONCURRENCY: usize = 64;
/// Longest wait for a member's open callback after it connected.
const OPEN_WAIT: Duration = Duration::from_secs(10);

/// The W4 service.
#[cluster_macros::cluster_service(crate = "cluster_rpc")]
pub(crate) trait Echo {
    /// Returns `data` unchanged.
    async fn echo(&self, data: Vec<u8>) -> Vec<u8>;
}

/// What the hub serves: the bytes back.
#[derive(Debug, Clone, Copy)]
struct Echoer;

impl Echo for Echoer {
    async fn echo(&self, data: Vec<u8>) -> Vec<u8> {
        data
    }
}

/// Our hub, running in the server child: W4 serves [`Echo`], W5 queues jobs, W7 only
/// routes.
#[derive(Debug)]
pub(crate) struct HubServer {
    hub: Hub,
}

impl HubServer {
    /// Binds a hub on 127.0.0.1 (any port); our provider's defaults, heartbeat on.
    pub(crate) async fn start(workload: Workload) -> anyhow::Result<Self> {
        let mut builder = Hub::builder(Provider::builder().host("127.0.0.1").port(0));
        if workload == Workload::W4 {
            builder = builder.serve(EchoServer::new(Echoer));
        }
        Ok(Self {
            hub: builder.start().await?,
        })
    }

    /// The hub itself.
    pub(crate) fn hub(&self) -> &Hub {
        &self.hub
    }

    /// The port it listens on.
    pub(crate) fn port(&self) -> u16 {
        self.hub.provider().port()
    }

    /// W7: waits (bounded) until `n` subscriptions are in the routing table; returns how
    /// many there are.
    pub(crate) async fn wait_for_subscriptions(&self, n: usize) -> anyhow::Result<usize> {
        wait_for(|| self.hub.subscription_count(), n, "subscriptions").await?;
        Ok(self.hub.subscription_count())
    }
}

/// A member connected to the hub on `port`, not reconnecting, whose open callback has run.
///
/// `Member::connect` returns once the consumer is connected, which can be before the
/// consumer's `on_open` callbacks ran; the member's callback then sends every
/// subscription made so far once more, and the hub, which does not deduplicate, delivers
/// each message twice to it. The consumer reads the provider's heartbeat frame only after
/// its open callbacks, so waiting for that frame closes the race.
pub(crate) async fn connect_member(port: u16) -> anyhow::Result<Member> {
    connect_member_with(port, |builder| builder).await
}

/// [`connect_member`] with the member builder set up by `setup` (W5: a worker).
pub(crate) async fn connect_member_with(
    port: u16,
    setup: impl FnOnce(MemberBuilder) -> MemberBuilder,
) -> anyhow::Result<Member> {
    let consumer = Consumer::builder()
        .host("127.0.0.1")
        .port(port)
        .max_attempts(0);
    let member = setup(Member::builder(consumer)).connect().await?;
    let deadline = Instant::now() + OPEN_WAIT;
    while member.consumer().heartbeat_duration().is_none() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "no heartbeat frame from the hub in {OPEN_WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(member)
}

/// `n` members, [`CONNECT_CONCURRENCY`] connecting at a time.
pub(crate) async fn connect_members(port: u16, n: usize) -> anyhow::Result<Vec<Member>> {
    futures_util::stream::iter(0..n)
        .map(|_| connect_member(port))
        .buffer_unordered(CONNECT_CONCURRENCY)
        .try_collect()
        .await
}

/// The request of call `i`: the 64-byte payload with `i` in its first 8 bytes, so that
/// each response can be matched with its request.
fn request(i: u64) -> Vec<u8> {
    let mut data = PAYLOAD.as_bytes().to_vec();
    data[..8].copy_from_slice(&i.to_le_bytes());
    data
}

/// Whether `response` is the echo of [`request`]`(i)`.
fn is_echo_of(response: &[u8], i: u64) -> bool {
    response.len() == PAYLOAD_LEN
        && response[..8] == i.to_le_bytes()
        && response[8..] == PAYLOAD.as_bytes()[8..]
}

/// Calls `echo` with request `i` and checks the answer.
async fn call(client: &EchoClient, i: u64) -> anyhow::Result<()> {
    let response = client.echo(request(i)).await?;
    anyhow::ensure!(
        is_echo_of(&response, i),
        "call {i}: the response is not its request ({} bytes)",
        response.len()
    );
    Ok(())
}

/// Calls `first..first + n` by `in_flight` tasks, each calling one after another.
async fn concurrent(
    client: &EchoClient,
    first: u64,
    n: u64,
    in_flight: usize,
) -> anyhow::Result<()> {
    let tasks = in_flight as u64;
    let mut handles = Vec::with_capacity(in_flight);
    for t in 0..tasks {
        let client = client.clone();
        // Task t makes calls first + t, first + t + tasks, …
        handles.push(tokio::spawn(async move {
            let mut i = first + t;
            while i < first + n {
                call(&client, i).await?;
                i += tasks;
            }
            anyhow::Ok(())
        }));
    }
    for handle in handles {
        handle.await??;
    }
    Ok(())
}

/// W4: warms up, says `CONNECTED`, and on go makes `spec.count` calls with
/// `spec.in_flight` in flight.
pub(super) async fn calls(spec: &ClientSpec) -> anyhow::Result<watch::Sender<bool>> {
    let member = connect_member(spec.port).await?;
    let client = member.client::<EchoClient>()?;
    let in_flight = spec.in_flight.max(1);
    concurrent(&client, 0, spec.warmup, in_flight).await?;
    let (go_tx, mut go_rx) = watch::channel(false);
    let (first, count) = (spec.warmup, spec.count);
    spawn_or_fail(async move {
        go_rx.wait_for(|go| *go).await?;
        if in_flight == 1 {
            let mut samples = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
            let start = Instant::now();
            for i in first..first + count {
                let sent = Instant::now();
                call(&client, i).await?;
                samples.push(sent.elapsed());
            }
            report_echo(samples, start.elapsed());
        } else {
            let start = Instant::now();
            concurrent(&client, first, count, in_flight).await?;
            let took = start.elapsed();
            print_line(&format!("RPC {count} {}", took.as_nanos()));
        }
        // Stay connected until the process ends.
        let _open = member;
        std::future::pending::<()>().await;
        Ok(())
    });
    print_line("CONNECTED");
    Ok(go_tx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_64_bytes_and_checked() {
        let r = request(7);
        assert_eq!(r.len(), PAYLOAD_LEN);
        assert!(is_echo_of(&r, 7));
        assert!(!is_echo_of(&r, 8));
        assert!(!is_echo_of(&r[..63], 7));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn member_calls_the_hub() {
        let hub = HubServer::start(Workload::W4).await.unwrap();
        let member = connect_member(hub.port()).await.unwrap();
        let client = member.client::<EchoClient>().unwrap();
        concurrent(&client, 0, 200, 8).await.unwrap();
        call(&client, 1234).await.unwrap();
    }
}
