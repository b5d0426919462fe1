//! Several hubs as one cluster on a real `nats-server` (one per test, JetStream on, on a
//! free loopback port): joining, refusing what cannot work, pub/sub across hubs, calls
//! across hubs, and NATS going away and coming back.
//!
//! Without `nats-server` installed these tests skip loudly (and fail under `CI=true`).

mod common;

use common::nats::NatsServer;
use common::*;
use network_cluster::rpc::cluster::{ClusterError, ClusterOptions};
use network_cluster::rpc::{HubBuilder, MemberBuilder, StartError};
use network_cluster::{Consumer, Hub, Member, Subscription};
use std::collections::HashMap;
use std::time::Duration;

/// A hub on loopback in the cluster on `nats`, named `name`.
fn hub_on(nats: &NatsServer, name: &str) -> HubBuilder {
    Hub::builder(local()).cluster(ClusterOptions::new(nats.url()).hub_name(name))
}

/// Hubs named `names`, started, in the cluster on `nats`.
async fn hubs(nats: &NatsServer, names: &[&str]) -> Vec<Hub> {
    let mut hubs = Vec::new();
    for name in names {
        hubs.push(
            within("hub start", hub_on(nats, name).start())
                .await
                .expect("hub joins"),
        );
    }
    hubs
}

/// A member builder aimed at `hub`, with fast reconnects.
fn member_of(hub: &Hub) -> MemberBuilder {
    Member::builder(
        Consumer::builder()
            .host("127.0.0.1")
            .port(hub.provider().port())
            .reconnect_interval(Duration::from_millis(20)),
    )
}

async fn member(hub: &Hub) -> Member {
    within("member connect", member_of(hub).connect())
        .await
        .expect("member connects")
}

async fn subscribe(member: &Member, pattern: &str) -> Subscription<u32> {
    within("subscribe", member.subscribe::<u32>(pattern))
        .await
        .expect("subscribed")
}

/// Receives from `subscription` until every `(subject, value)` of `expected` arrived,
/// failing on anything unexpected or arriving twice; `what` names the subscription.
async fn receive_exactly(
    subscription: &mut Subscription<u32>,
    expected: &[(String, u32)],
    what: &str,
) {
    let mut left: HashMap<(String, u32), usize> = HashMap::new();
    for e in expected {
        *left.entry(e.clone()).or_default() += 1;
    }
    while !left.is_empty() {
        let Ok(got) = tokio::time::timeout(WAIT, subscription.recv()).await else {
            let mut missing: Vec<_> = left.keys().collect();
            missing.sort();
            panic!("{what}: {} never arrived: {missing:?}", missing.len());
        };
        let got = got
            .unwrap_or_else(|| panic!("{what}: subscription ended"))
            .expect("decodes");
        let key = (got.subject.clone(), got.value);
        match left.get_mut(&key) {
            Some(n) => {
                *n -= 1;
                if *n == 0 {
                    left.remove(&key);
                }
            }
            None => panic!("{what}: unexpected or duplicate {key:?}"),
        }
    }
}

#[tokio::test]
async fn a_hub_joins_the_cluster_on_nats() {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let hub = within("hub start", hub_on(&nats, "a").start())
        .await
        .expect("hub joins");
    let cluster = hub.cluster().expect("clustered");
    assert!(cluster.is_connected());
    assert_eq!(cluster.hub_name(), "a");
    assert_eq!(cluster.prefix(), "cluster");
    // The hub's NATS connection is a real one: it round-trips to the server.
    within("flush", cluster.nats().flush())
        .await
        .expect("flush");
    hub.shutdown().await;
}

#[tokio::test]
async fn a_hub_that_cannot_reach_nats_does_not_start() {
    let Some(mut nats) = NatsServer::start() else {
        return;
    };
    nats.kill();
    let options = ClusterOptions::new(nats.url()).connect_timeout(Duration::from_secs(2));
    let started = within("hub start", Hub::builder(local()).cluster(options).start()).await;
    match started {
        Err(StartError::Cluster(ClusterError::Connect(detail))) => {
            assert!(detail.contains(&nats.url()), "{detail}");
        }
        other => panic!("expected a connect error, got {other:?}"),
    }
}

#[tokio::test]
async fn cluster_options_that_cannot_work_are_refused() {
    let started = Hub::builder(local())
        .cluster(ClusterOptions::new("nats://127.0.0.1:1").prefix("a.*"))
        .start()
        .await;
    match started {
        Err(StartError::Cluster(ClusterError::Options(detail))) => {
            assert!(detail.contains("prefix"), "{detail}");
        }
        other => panic!("expected an options error, got {other:?}"),
    }
}

/// Publications from members and hubs on three hubs reach every matching subscription on
/// every hub exactly once: overlapping patterns on one hub (`orders.*` and `orders.>`)
/// and on one member do not double-deliver, the publishing hub's own subscriptions get
/// theirs once (not again from NATS), and a hub holds NATS interest only in patterns its
/// members use.
#[tokio::test]
async fn pubsub_across_three_hubs_reaches_each_subscription_exactly_once() {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let hubs = hubs(&nats, &["a", "b", "c"]).await;
    let (a, b, c) = (
        member(&hubs[0]).await,
        member(&hubs[1]).await,
        member(&hubs[2]).await,
    );
    let a2 = member(&hubs[0]).await;
    // Overlapping patterns: on one member (a), and on one hub (a and a2).
    let mut a_all = subscribe(&a, "orders.>").await;
    let mut a_star = subscribe(&a, "orders.*").await;
    let mut a2_star = subscribe(&a2, "orders.*").await;
    let mut b_eu = subscribe(&b, "orders.eu").await;
    let mut b_deep = subscribe(&b, "orders.*.paid").await;
    let mut c_users = subscribe(&c, "users.>").await;
    let mut hub_c_orders = hubs[2]
        .subscribe::<u32>("orders.>")
        .expect("hub subscribes");
    // Answered after everything the hub asked NATS for before it: hub c's own pattern too.
    let mut c_marker = subscribe(&c, "marker").await;

    let n = 50u32;
    let mut sent = Vec::new();
    for i in 0..n {
        a.publish("orders.eu", &i).unwrap();
        sent.push(("orders.eu".to_owned(), i));
        b.publish("orders.us", &(1000 + i)).unwrap();
        sent.push(("orders.us".to_owned(), 1000 + i));
        c.publish("orders.eu.paid", &(2000 + i)).unwrap();
        sent.push(("orders.eu.paid".to_owned(), 2000 + i));
        hubs[2].publish("orders.eu", &(3000 + i)).unwrap();
        sent.push(("orders.eu".to_owned(), 3000 + i));
    }
    let matching = |pattern: &str| -> Vec<(String, u32)> {
        sent.iter()
            .filter(|(subject, _)| network_cluster::rpc::pubsub::matches(pattern, subject))
            .cloned()
            .collect()
    };
    receive_exactly(&mut a_all, &matching("orders.>"), "a orders.>").await;
    receive_exactly(&mut a_star, &matching("orders.*"), "a orders.*").await;
    receive_exactly(&mut a2_star, &matching("orders.*"), "a2 orders.*").await;
    receive_exactly(&mut b_eu, &matching("orders.eu"), "b orders.eu").await;
    receive_exactly(&mut b_deep, &matching("orders.*.paid"), "b orders.*.paid").await;
    receive_exactly(&mut hub_c_orders, &matching("orders.>"), "hub c orders.>").await;

    // Nothing more: a last round from every hub arrives, and nothing extra before it.
    a.publish("marker", &1).unwrap();
    b.publish("marker", &2).unwrap();
    hubs[2].publish("marker", &3).unwrap();
    let markers: Vec<(String, u32)> = (1..=3).map(|i| ("marker".to_owned(), i)).collect();
    receive_exactly(&mut c_marker, &markers, "c marker").await;
    for (subscription, what) in [
        (&mut a_all, "a orders.>"),
        (&mut a_star, "a orders.*"),
        (&mut a2_star, "a2 orders.*"),
        (&mut b_eu, "b orders.eu"),
        (&mut b_deep, "b orders.*.paid"),
        (&mut c_users, "c users.>"),
        (&mut hub_c_orders, "hub c orders.>"),
    ] {
        assert!(
            tokio::time::timeout(Duration::from_millis(200), subscription.recv())
                .await
                .is_err(),
            "{what}: a duplicate arrived"
        );
    }

    // Interest follows the members: once the last `orders.*` of hub a is gone, hub a
    // holds no NATS subscription for it. (A later subscribe on the same connections is
    // answered after the hub dropped them.)
    drop(a_star);
    drop(a2_star);
    drop(a_all);
    let _after = subscribe(&a, "later").await;
    let _after2 = subscribe(&a2, "later").await;
    let mut b_all = subscribe(&b, "orders.>").await;
    let subscriptions = within("connz", nats.subscriptions_of("network-cluster hub a")).await;
    assert!(
        subscriptions.iter().all(|s| !s.contains(".ps.orders")),
        "hub a still holds {subscriptions:?}"
    );
    c.publish("orders.eu", &7).unwrap();
    receive_exactly(&mut b_all, &[("orders.eu".to_owned(), 7)], "b orders.>").await;
}

/// A calculator whose `sleep` reports when its handler starts and when it is dropped.
#[network_cluster::cluster_service]
pub trait Calc {
    /// Adds.
    async fn add(&self, a: i64, b: i64) -> i64;
    /// Waits `ms` milliseconds and answers them.
    async fn sleep(&self, ms: u64) -> u64;
    /// The name of whoever serves it.
    async fn name(&self) -> String;
}

/// What the `sleep` handlers of a [`CalcImpl`] did.
#[derive(Debug, PartialEq, Eq)]
enum Sleep {
    Started,
    Dropped,
}

struct CalcImpl {
    name: String,
    sleeps: tokio::sync::mpsc::UnboundedSender<Sleep>,
}

/// Tells of a dropped handler.
struct OnDrop(tokio::sync::mpsc::UnboundedSender<Sleep>, bool);

impl Drop for OnDrop {
    fn drop(&mut self) {
        if self.1 {
            let _ = self.0.send(Sleep::Dropped);
        }
    }
}

impl Calc for CalcImpl {
    async fn add(&self, a: i64, b: i64) -> i64 {
        a + b
    }

    async fn sleep(&self, ms: u64) -> u64 {
        let _ = self.sleeps.send(Sleep::Started);
        let mut guard = OnDrop(self.sleeps.clone(), true);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        guard.1 = false;
        ms
    }

    async fn name(&self) -> String {
        self.name.clone()
    }
}

fn calc(
    name: &str,
) -> (
    CalcServer<CalcImpl>,
    tokio::sync::mpsc::UnboundedReceiver<Sleep>,
) {
    let (sleeps, rx) = tokio::sync::mpsc::unbounded_channel();
    let name = name.to_owned();
    (CalcServer::new(CalcImpl { name, sleeps }), rx)
}

/// A member of `hub` serving `Calc` as `name`, and what its `sleep` reports.
async fn calc_member(
    hub: &Hub,
    name: &str,
) -> (Member, tokio::sync::mpsc::UnboundedReceiver<Sleep>) {
    let (server, sleeps) = calc(name);
    let member = within("member connect", member_of(hub).serve(server).connect())
        .await
        .expect("a member serving Calc");
    (member, sleeps)
}

/// A member on hub a calls a service that only a member on hub c serves; hub b calls it
/// with `any` and hub a by the member's id; deadlines and cancellation reach the handler
/// on the far hub; nobody serving, or an unknown member, fail at once with a clear kind.
#[tokio::test]
async fn calls_reach_a_service_served_only_on_another_hub() {
    use network_cluster::{RpcError, RpcErrorKind};
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let hubs = hubs(&nats, &["a", "b", "c"]).await;
    let (_on_c, mut sleeps) = calc_member(&hubs[2], "on-c").await;
    let on_a = member(&hubs[0]).await;

    // Member on a -> hub a -> NATS -> hub c -> member on c.
    let client: CalcClient = on_a.client().unwrap();
    assert_eq!(within("call", client.add(2, 3)).await.unwrap(), 5);
    assert_eq!(within("call", client.name()).await.unwrap(), "on-c");
    // Hub b, which has no member serving Calc.
    let any: CalcClient = hubs[1].any().unwrap();
    assert_eq!(within("any", any.add(40, 2)).await.unwrap(), 42);
    // Hub a, to the member of hub c by its id.
    let id = hubs[2].members_serving("Calc")[0].id();
    let direct: CalcClient = hubs[0].client(id).unwrap();
    assert_eq!(within("direct", direct.name()).await.unwrap(), "on-c");

    // A deadline crosses the hop: the handler on c is stopped when it passes.
    let error = within(
        "deadline",
        client
            .clone()
            .with_deadline(Duration::from_millis(300))
            .sleep(60_000),
    )
    .await
    .unwrap_err();
    assert_eq!(error.kind(), RpcErrorKind::Timeout, "{error}");
    assert_eq!(within("started", sleeps.recv()).await, Some(Sleep::Started));
    assert_eq!(within("stopped", sleeps.recv()).await, Some(Sleep::Dropped));

    // Dropping a call cancels it on the far hub, for each way of calling.
    for (what, caller) in [
        ("member", client.clone()),
        ("any", any.clone()),
        ("direct", direct.clone()),
    ] {
        let call = tokio::spawn(async move { caller.sleep(60_000).await });
        assert_eq!(
            within(what, sleeps.recv()).await,
            Some(Sleep::Started),
            "{what}"
        );
        call.abort();
        assert_eq!(
            within(what, sleeps.recv()).await,
            Some(Sleep::Dropped),
            "{what}"
        );
    }

    // Nobody serves it, anywhere: refused at once, not at the deadline.
    let who: WhoClient = on_a.client().unwrap();
    let error: RpcError = within("nobody", who.who()).await.unwrap_err();
    assert_eq!(error.kind(), RpcErrorKind::NoPeer, "{error}");
    let error = hubs[0].any::<WhoClient>().unwrap().who().await.unwrap_err();
    assert_eq!(error.kind(), RpcErrorKind::NoPeer, "{error}");
    let gone: CalcClient = hubs[0].client(network_cluster::Uuid::new_v4()).unwrap();
    let error = within("unknown member", gone.add(1, 1)).await.unwrap_err();
    assert_eq!(error.kind(), RpcErrorKind::NotConnected, "{error}");
}

/// A service nobody serves.
#[network_cluster::cluster_service]
pub trait Who {
    /// Who.
    async fn who(&self) -> String;
}

/// NATS killed and started again: the hubs notice, local traffic keeps flowing while it
/// is away, calls across hubs fail at once with a clear error instead of hanging, and
/// once NATS is back the hubs reconnect and pub/sub and calls across hubs go on.
#[tokio::test]
async fn hubs_ride_out_a_nats_restart() {
    use network_cluster::RpcErrorKind;
    let Some(mut nats) = NatsServer::start() else {
        return;
    };
    let mut hubs = Vec::new();
    for name in ["a", "b"] {
        let options = ClusterOptions::new(nats.url())
            .hub_name(name)
            .max_reconnect_delay(Duration::from_millis(100));
        let hub = within("hub start", Hub::builder(local()).cluster(options).start()).await;
        hubs.push(hub.expect("hub joins"));
    }
    let (_on_b, _sleeps) = calc_member(&hubs[1], "on-b").await;
    let (a, a2, b) = (
        member(&hubs[0]).await,
        member(&hubs[0]).await,
        member(&hubs[1]).await,
    );
    let mut on_b = subscribe(&b, "t.>").await;
    let mut local = subscribe(&a2, "t.>").await;
    let calc: CalcClient = a.client().unwrap();
    a.publish("t.1", &1).unwrap();
    receive_exactly(&mut on_b, &[("t.1".to_owned(), 1)], "before: b").await;
    receive_exactly(&mut local, &[("t.1".to_owned(), 1)], "before: a2").await;
    assert_eq!(within("call before", calc.add(1, 1)).await.unwrap(), 2);

    let mut up: Vec<_> = hubs
        .iter()
        .map(|h| h.cluster().unwrap().connection())
        .collect();
    nats.kill();
    for up in &mut up {
        let _ = within("the hub sees NATS go", up.wait_for(|up| !*up)).await;
    }
    // Local traffic flows while NATS is away.
    a.publish("t.2", &2).unwrap();
    receive_exactly(&mut local, &[("t.2".to_owned(), 2)], "away: a2").await;
    // A call that needs another hub fails at once, saying why.
    let error = within("call while away", calc.add(1, 1)).await.unwrap_err();
    assert_eq!(error.kind(), RpcErrorKind::NotConnected, "{error}");
    assert!(error.detail().contains("NATS"), "{error}");

    nats.restart();
    for up in &mut up {
        let _ = within("the hub reconnects", up.wait_for(|up| *up)).await;
    }
    // Answered after a round trip to the server, which has the re-sent subscriptions by
    // then.
    let _barrier_b = subscribe(&b, "barrier").await;
    let _barrier_a = subscribe(&a, "barrier").await;
    a.publish("t.3", &3).unwrap();
    // t.2 was queued while NATS was away and may arrive late (at most once); t.3 arrives.
    loop {
        let got = within("after: b", on_b.recv()).await.unwrap().unwrap();
        match (got.subject.as_str(), got.value) {
            ("t.2", 2) => continue,
            ("t.3", 3) => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(within("call after", calc.add(2, 2)).await.unwrap(), 4);
}

/// A `test_peer cluster-hub` process: a hub named `name` in the cluster on `nats`.
struct HubProcess {
    child: tokio::process::Child,
    port: u16,
}

impl HubProcess {
    async fn start(nats: &NatsServer, name: &str) -> Self {
        use tokio::io::AsyncBufReadExt;
        let mut child = tokio::process::Command::new(test_peer())
            .args(["cluster-hub", "0", &nats.url(), name])
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start test_peer cluster-hub");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let line = within("READY", lines.next_line())
            .await
            .unwrap()
            .expect("a READY line");
        let port = line
            .strip_prefix("READY ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("not READY: {line:?}"));
        Self { child, port }
    }

    fn member(&self) -> MemberBuilder {
        Member::builder(
            Consumer::builder()
                .host("127.0.0.1")
                .port(self.port)
                .reconnect_interval(Duration::from_millis(20)),
        )
    }
}

/// A broadcast from hub a reaches the members serving the service on every hub (two hub
/// processes); each hub answers once. Once one hub process is killed with SIGKILL, the
/// broadcast still answers by its deadline, with the other hubs' members, and names the
/// dead hub as missing: a partial answer is explicit.
#[tokio::test]
async fn broadcast_gathers_across_hubs_and_names_a_killed_hub() {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let hub_a = within("hub start", hub_on(&nats, "a").start())
        .await
        .expect("hub a");
    let b = HubProcess::start(&nats, "b").await;
    let mut c = HubProcess::start(&nats, "c").await;
    let mut members = Vec::new();
    for (name, builder) in [
        ("a1", member_of(&hub_a)),
        ("b1", b.member()),
        ("b2", b.member()),
        ("c1", c.member()),
    ] {
        let (server, _) = calc(name);
        let member = within("member connect", builder.serve(server).connect()).await;
        members.push(member.expect("member connects"));
    }
    let ask = |client: CalcClient| async move {
        client
            .with_deadline(Duration::from_millis(800))
            .name()
            .await
    };
    let names = |gathered: &network_cluster::rpc::Gathered<String>| {
        let mut names: Vec<String> = gathered
            .outcomes
            .values()
            .map(|o| o.clone().expect("each member answers"))
            .collect();
        names.sort();
        names
    };

    let gathered = within("broadcast", hub_a.broadcast_cluster(ask)).await;
    assert!(gathered.is_complete(), "missing {:?}", gathered.missing);
    assert_eq!(names(&gathered), ["a1", "b1", "b2", "c1"]);
    let mut answered = gathered.answered.clone();
    answered.sort();
    assert_eq!(answered, ["a", "b", "c"]);

    c.child.kill().await.expect("kill -9 hub c");
    let started = std::time::Instant::now();
    let gathered = within("broadcast", hub_a.broadcast_cluster(ask)).await;
    assert!(!gathered.is_complete());
    assert_eq!(gathered.missing, ["c"]);
    assert_eq!(names(&gathered), ["a1", "b1", "b2"]);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "bounded by the deadline"
    );
}

/// A call NATS hands to a hub just as the last member serving the service there left:
/// that hub drops its interest and answers `NoPeer` (nothing ran). Played here by a
/// plain NATS client in the service's queue group; the caller sends the call once more
/// and a hub that still serves it answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_reaching_a_hub_whose_last_server_left_goes_to_another_that_serves_it() {
    use futures_util::StreamExt;
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let hubs = hubs(&nats, &["a", "c"]).await;
    let (_on_c, _sleeps) = calc_member(&hubs[1], "on-c").await;
    let client = async_nats::connect(nats.url())
        .await
        .expect("connect to NATS");
    let any: CalcClient = hubs[0].any().unwrap();
    // NATS picks at random in a queue group: a leaving hub per call until one was hit.
    let mut refused = 0;
    for i in 0..100 {
        let mut leaving = client
            .queue_subscribe("cluster.svc.Calc", "cluster.svc.Calc".into())
            .await
            .unwrap();
        // The server has the subscription before the call (see the barrier below).
        let _ = client.request("barrier.nobody", Vec::new().into()).await;
        let calling = any.clone();
        let mut call = tokio::spawn(async move { calling.add(i, 1).await });
        // Either hub C answers the call, or the leaving hub gets it (and nobody else).
        let hit = within("the call or the leaving hub", async {
            tokio::select! {
                answered = &mut call => {
                    assert_eq!(answered.unwrap().unwrap(), i + 1);
                    None
                }
                message = leaving.next() => message,
            }
        })
        .await;
        // Drained as a hub drains it: the subscription ends once the server has the
        // UNSUB, and a call the server gave it before that still arrives (with the
        // client's plain `unsubscribe`, the next call could go to a subscription the
        // client no longer knew, and wait for its deadline).
        leaving.drain().await.unwrap();
        let late = within("the drain", leaving.next()).await;
        assert!(late.is_none(), "no call was on its way");
        let Some(message) = hit else {
            continue;
        };
        // Envelope::Error { id, code: NoPeer (11), message }: version 2, kind 3.
        let id = message.payload.get(2..10).unwrap().to_vec();
        let mut frame = vec![2u8, 3];
        frame.extend_from_slice(&id);
        frame.push(11);
        frame.extend_from_slice(b"Calc");
        client.flush().await.unwrap();
        client
            .publish(message.reply.unwrap(), frame.into())
            .await
            .unwrap();
        refused += 1;
        assert_eq!(within("the call", call).await.unwrap().unwrap(), i + 1);
        break;
    }
    assert!(refused > 0, "the leaving hub was never picked");
}

/// What a hub's leaving service relies on (the vendored async-nats' fix): a drained
/// subscription still gets what the server sent it before it had the UNSUB, however
/// busy the client's connection is meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_subscription_gets_what_the_server_sent_it_before_the_unsubscribe() {
    use futures_util::StreamExt;
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let client = async_nats::connect(nats.url())
        .await
        .expect("connect to NATS");
    for round in 0..20 {
        let mut sub = client.subscribe("drain.late").await.unwrap();
        // The server delivers this before it reads the UNSUB sent after it.
        client.publish("drain.late", "late".into()).await.unwrap();
        sub.drain().await.unwrap();
        // The client's connection task runs again before the message is back.
        tokio::task::yield_now().await;
        client.publish("drain.other", "".into()).await.unwrap();
        let late = within("the late message", sub.next()).await;
        assert_eq!(
            late.map(|m| m.payload),
            Some("late".into()),
            "round {round}"
        );
        assert!(within("the drain's end", sub.next()).await.is_none());
    }
}
