//! W4 and W7 on our typed layer: the hub (server child) and the W4 member (clients child).
//!
//! W4: the hub serves the [`Echo`] service below; one member calls it through the
//! generated [`EchoClient`], one call at a time (latency) or 64 at once over its one
//! connection (throughput). Every response is checked equal to its request.
//!
//! Lines to the parent (W4 clients): `CONNECTED` after the warm-up, then, after `GO`,
//! `ECHO <n> <total ns> <p50 ns> <p99 ns> <p999 ns>` (one in flight) or
//! `RPC <calls> <ns>` (more in flight).

use crate::common::print_line;
use crate::common::{report_echo, spawn_or_fail, wait_for};
use crate::spec::{ClientSpec, Workload, PAYLOAD, PAYLOAD_LEN};
use cluster_rpc::cluster::ClusterOptions;
use cluster_rpc::{Hub, Member, MemberBuilder};
use cluster_transport::{Consumer, MetricsEndpoint, Provider};
use futures_util::{StreamExt, TryStreamExt};
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How many members connect at once (W7).
const CONNECT_CONCURRENCY: usize = 64;
/// The subject prefix of W8's cluster, and of its job streams.
const CLUSTER_PREFIX: &str = "w8";
/// W8: how long the caller waits for the first call to reach the service on another hub.
const SERVICE_WAIT: Duration = Duration::from_secs(10);

/// Where our hub's cluster is: W8's hubs, and the cluster-cost cases' one hub.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clustered<'a> {
    /// The NATS server's URL.
    pub(crate) nats: &'a str,
    /// W8: the hub is one of three: W4's echo is served by a member on another hub, and
    /// W5's jobs wait in JetStream.
    pub(crate) across: bool,
}

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
/// routes; in a cluster on NATS when told.
#[derive(Debug)]
pub(crate) struct HubServer {
    hub: Hub,
    /// W8: one of three hubs sharing their jobs in JetStream.
    across: bool,
}

impl HubServer {
    /// Binds a hub on 127.0.0.1 (any port); our provider's defaults, heartbeat on; in the
    /// cluster `clustered` says (`HubBuilder::cluster`: its jobs on JetStream).
    pub(crate) async fn start(
        workload: Workload,
        metrics: Option<MetricsEndpoint>,
        data_dir: Option<&Path>,
        clustered: Option<Clustered<'_>>,
    ) -> anyhow::Result<Self> {
        let mut provider = Provider::builder().host("127.0.0.1").port(0);
        if let Some(endpoint) = metrics {
            provider = provider.metrics(endpoint);
        }
        let mut builder = Hub::builder(provider);
        let across = clustered.is_some_and(|c| c.across);
        if workload == Workload::W4 && !across {
            builder = builder.serve(EchoServer::new(Echoer));
        }
        // In cluster mode the hub's jobs are on JetStream, shared by every hub (the
        // cluster's default), for W8's jobs.
        if let Some(cluster) = clustered {
            builder = builder.cluster(ClusterOptions::new(cluster.nats).prefix(CLUSTER_PREFIX));
        }
        // W5d: the data directory the parent made on the local disk.
        if let Some(dir) = data_dir {
            builder = builder.jobs_storage(dir);
        }
        Ok(Self {
            hub: builder.start().await?,
            across,
        })
    }

    /// W8: one of three hubs whose jobs wait in JetStream (so its own queue's counts are
    /// not the whole queue's).
    pub(crate) fn is_across(&self) -> bool {
        self.across
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

/// A member connected to the hub on `port`, not reconnecting (registered by the hub once
/// `connect` returns).
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
    Ok(setup(Member::builder(consumer)).connect().await?)
}

/// `n` members, member `i` on the hub at `ports[i % ports.len()]`,
/// [`CONNECT_CONCURRENCY`] connecting at a time.
pub(crate) async fn connect_members(ports: &[u16], n: usize) -> anyhow::Result<Vec<Member>> {
    anyhow::ensure!(!ports.is_empty(), "no hub to connect to");
    futures_util::stream::iter(0..n)
        .map(|i| connect_member(ports[i % ports.len()]))
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
/// `spec.in_flight` in flight. W8: the caller is on the first hub and a member on the last
/// serves [`Echo`] (the hubs serve nothing themselves).
pub(super) async fn calls(spec: &ClientSpec) -> anyhow::Result<watch::Sender<bool>> {
    let member = connect_member(spec.port).await?;
    let client = member.client::<EchoClient>()?;
    let serving = match spec.hubs.last() {
        Some(&port) => {
            let server = connect_member_with(port, |b| b.serve(EchoServer::new(Echoer))).await?;
            wait_for_service(&client).await?;
            Some(server)
        }
        None => None,
    };
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
        let _open = (member, serving);
        std::future::pending::<()>().await;
        Ok(())
    });
    print_line("CONNECTED");
    Ok(go_tx)
}

/// W8: calls until one reaches the service on the other hub (the first hub learns of it
/// through NATS), bounded by [`SERVICE_WAIT`].
async fn wait_for_service(client: &EchoClient) -> anyhow::Result<()> {
    let deadline = Instant::now() + SERVICE_WAIT;
    loop {
        match call(client, 0).await {
            Ok(()) => return Ok(()),
            Err(error) if Instant::now() < deadline => {
                tracing::debug!(cause = %error, "the service on the other hub is not reachable yet");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(error) => {
                return Err(error.context(format!(
                    "the service on the other hub was not reachable in {SERVICE_WAIT:?}"
                )))
            }
        }
    }
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
        let hub = HubServer::start(Workload::W4, None, None, None)
            .await
            .unwrap();
        let member = connect_member(hub.port()).await.unwrap();
        let client = member.client::<EchoClient>().unwrap();
        concurrent(&client, 0, 200, 8).await.unwrap();
        call(&client, 1234).await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_member_calls_a_service_served_on_another_hub() {
        let Some(nats) = crate::nats::start_for_test().await else {
            return;
        };
        let clustered = Some(Clustered {
            nats: nats.url(),
            across: true,
        });
        let first = HubServer::start(Workload::W4, None, None, clustered)
            .await
            .unwrap();
        let last = HubServer::start(Workload::W4, None, None, clustered)
            .await
            .unwrap();
        let member = connect_member(first.port()).await.unwrap();
        let client = member.client::<EchoClient>().unwrap();
        // Neither hub serves Echo itself.
        assert!(call(&client, 1).await.is_err());
        let _serving = connect_member_with(last.port(), |b| b.serve(EchoServer::new(Echoer)))
            .await
            .unwrap();
        wait_for_service(&client).await.unwrap();
        concurrent(&client, 0, 200, 8).await.unwrap();
    }
}
