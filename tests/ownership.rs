//! Every handle owns what it starts: dropping the last `Member` closes its connection and
//! stops its reconnects, calls and jobs; dropping the last `Hub` stops its provider, its
//! job dispatcher and every call in flight. Proved by the runtime's count of live tasks
//! going back to where it was.

mod common;

use common::*;
use network_cluster::prelude::*;
use network_cluster::rpc::{Job, JobContext};
use serde::{Deserialize, Serialize};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// Waits forever once started (says so first).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Stuck;

impl Job for Stuck {
    const NAME: &'static str = "stuck";
    type Output = ();
}

/// A service whose one method never answers (says it started first).
#[cluster_service]
pub trait Slow {
    /// Never returns.
    async fn wait(&self);
}

struct SlowImpl(Arc<Notify>);

impl Slow for SlowImpl {
    async fn wait(&self) {
        self.0.notify_one();
        std::future::pending::<()>().await;
    }
}

fn live_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

/// Waits until the runtime runs at most `n` tasks.
async fn tasks_back_to(n: usize) {
    within("tasks to end", async {
        while live_tasks() > n {
            tokio::task::yield_now().await;
        }
    })
    .await;
}

fn consumer_of(hub: &Hub) -> network_cluster::transport::ConsumerBuilder {
    Consumer::builder()
        .host("127.0.0.1")
        .port(hub.provider().port())
        .reconnect_interval(Duration::from_millis(20))
}

#[tokio::test]
async fn a_dropped_member_frees_its_connection_and_takes_no_more_jobs() {
    let hub = Hub::builder(local()).start().await.unwrap();
    let mut events = hub.provider().events();
    let before = live_tasks();
    let started = Arc::new(Notify::new());
    let signal = Arc::clone(&started);
    let worker = Member::builder(consumer_of(&hub))
        .job_credits(2)
        .worker(move |_: Stuck, _: JobContext| {
            let signal = Arc::clone(&signal);
            async move {
                signal.notify_one();
                std::future::pending::<()>().await;
                Ok::<_, Infallible>(())
            }
        })
        .connect()
        .await
        .unwrap();
    let conn = next_open(&mut events).await;
    let running = hub.jobs().submit(&Stuck).await.unwrap();
    within("the job to start", started.notified()).await;
    // A clone of the handle keeps it alive; dropping the last one ends it.
    let clone = worker.clone();
    drop(worker);
    assert!(clone.consumer().is_connected());
    drop(clone);
    let closed = next_event(&mut events, |e| match e {
        ProviderEvent::Close(c, _) => Some(c),
        _ => None,
    })
    .await;
    assert_eq!(closed.id(), conn.id());
    assert_eq!(hub.provider().connection_count(), 0);
    // No worker left: its job went back to the queue, and a new one waits too.
    let later = hub.jobs().submit(&Stuck).await.unwrap();
    let stats = hub.jobs().stats();
    assert!(stats.workers.is_empty(), "{stats:?}");
    assert_eq!((stats.waiting, stats.active), (2, 0));
    // Nothing of the member runs: no reconnect loop, no job task.
    tasks_back_to(before).await;
    assert_eq!(hub.provider().connection_count(), 0);
    running.cancel();
    later.cancel();
    hub.shutdown().await;
}

#[tokio::test]
async fn a_dropped_hub_leaves_no_task_running() {
    let before = live_tasks();
    let started = Arc::new(Notify::new());
    let hub = Hub::builder(local())
        .serve(SlowServer::new(SlowImpl(Arc::clone(&started))))
        .start()
        .await
        .unwrap();
    let member = Member::builder(consumer_of(&hub).max_attempts(1))
        .connect()
        .await
        .unwrap();
    // A member's call running on the hub, a job waiting, a subscription: all owned by the
    // hub, all stopped with it.
    let slow: SlowClient = member.client().unwrap();
    let call = tokio::spawn(async move { slow.wait().await });
    within("the handler to start", started.notified()).await;
    let _queued = hub.jobs().submit(&Stuck).await.unwrap();
    let _sub = hub.subscribe::<String>("a.>").unwrap();
    drop(hub);
    let outcome = within("the call to fail", call).await.unwrap();
    assert_eq!(outcome.unwrap_err().kind(), RpcErrorKind::Disconnected);
    member.shutdown().await;
    drop(member);
    tasks_back_to(before).await;
}
