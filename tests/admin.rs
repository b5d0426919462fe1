//! The hub's admin API over real HTTP on loopback: tokens and roles, the snapshot and its
//! bounds at a thousand connections, redaction, the feed, every action, and in cluster
//! mode (a real nats-server) the cluster's dead letters on every hub (the page that
//! drives them is tested in a real browser in `admin_browser.rs`).

mod common;

use common::gate::{dead_job, gated_worker, Gate};
use common::http::{get, post, Captured, Events};
use common::nats::NatsServer;
use common::*;
use network_cluster::prelude::*;
use network_cluster::rpc::admin::view::Snapshot;
use network_cluster::rpc::cluster::ClusterOptions;
use network_cluster::rpc::jobs::JetStreamOptions;
use network_cluster::rpc::{AdminOptions, JobError, JobOptions};
use network_cluster::ConsumerEvent;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

const ADMIN: &str = "admin-token-1";
const VIEW: &str = "view-token-2";

async fn hub_with_admin() -> Hub {
    Hub::builder(local().auth_parameter("key", "AUTH-SECRET-9"))
        .admin(AdminOptions::new(ADMIN).read_only_token(VIEW))
        .start()
        .await
        .expect("hub")
}

fn consumer(hub: &Hub) -> network_cluster::transport::ConsumerBuilder {
    Consumer::builder()
        .host("127.0.0.1")
        .port(hub.provider().port())
        .parameter("key", "AUTH-SECRET-9")
        .max_attempts(0)
}

async fn snapshot(addr: SocketAddr, query: &str, token: &str) -> Snapshot {
    let response = get(addr, &format!("/admin/api/snapshot{query}"), Some(token)).await;
    assert_eq!(response.status, 200, "{}", response.body);
    serde_json::from_str(&response.body).expect("a snapshot")
}

#[tokio::test]
async fn every_request_needs_a_token_and_read_only_cannot_act() {
    let hub = hub_with_admin().await;
    let addr = hub.provider().local_addr();
    let member = consumer(&hub)
        .parameter("name", "member")
        .connect()
        .await
        .expect("connect");
    let id = connection_named(hub.provider(), "member").await.id();
    let actions = [
        format!("/admin/api/connections/{id}/disconnect"),
        "/admin/api/dead/00000000-0000-4000-8000-000000000001/requeue".to_owned(),
        "/admin/api/dead/00000000-0000-4000-8000-000000000001/delete".to_owned(),
        "/admin/api/jobs/00000000-0000-4000-8000-000000000001/cancel".to_owned(),
    ];
    for token in [None, Some("wrong"), Some("")] {
        let page = get(addr, "/admin", token).await;
        assert_eq!(page.status, 401);
        assert!(page.body.contains("<form"), "a sign-in form: {}", page.body);
        assert_eq!(get(addr, "/admin/api/snapshot", token).await.status, 401);
        assert_eq!(get(addr, "/admin/api/feed", token).await.status, 401);
        for action in &actions {
            assert_eq!(post(addr, action, token).await.status, 401, "{action}");
        }
    }
    // A token in the query works as well as in the header, for both roles.
    let page = get(addr, &format!("/admin?token={ADMIN}"), None).await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("network-cluster hub"));
    assert_eq!(page.header("Referrer-Policy"), Some("no-referrer"));
    assert!(page.header("Content-Security-Policy").is_some());
    assert_eq!(
        snapshot(addr, &format!("?token={VIEW}"), "").await.role,
        "read-only"
    );
    assert_eq!(snapshot(addr, "", ADMIN).await.role, "admin");

    for action in &actions {
        let refused = post(addr, action, Some(VIEW)).await;
        assert_eq!(refused.status, 403, "{action}: {}", refused.body);
    }
    assert!(member.is_connected(), "the read-only token closed nothing");
    assert_eq!(
        get(addr, "/admin/api/nothing", Some(ADMIN)).await.status,
        404
    );
    assert_eq!(post(addr, "/admin", Some(ADMIN)).await.status, 405);
    member.shutdown().await;
    hub.shutdown().await;
}

#[tokio::test]
async fn disconnect_closes_the_consumer_and_is_logged_with_who() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let hub = hub_with_admin().await;
    let addr = hub.provider().local_addr();
    let target = consumer(&hub).parameter("name", "target").build();
    let mut events = target.events();
    target.connect().await.expect("connect");
    let id = connection_named(hub.provider(), "target").await.id();
    let bystander = consumer(&hub).connect().await.expect("connect");

    let done = post(
        addr,
        &format!("/admin/api/connections/{id}/disconnect"),
        Some(ADMIN),
    )
    .await;
    assert_eq!(
        (done.status, done.json()["ok"].as_bool()),
        (200, Some(true))
    );
    let close = within("the close", async {
        loop {
            if let Some(ConsumerEvent::Disconnect(info)) = events.recv().await {
                return info;
            }
        }
    })
    .await;
    assert_eq!(close.code, 1008);
    assert_eq!(close.reason, "disconnected by an administrator");
    assert!(bystander.is_connected());
    let gone = post(
        addr,
        &format!("/admin/api/connections/{id}/disconnect"),
        Some(ADMIN),
    )
    .await;
    assert_eq!(gone.status, 404);

    let logs = captured.text();
    let line = logs
        .lines()
        .find(|l| l.contains("admin action"))
        .unwrap_or_else(|| panic!("no admin action logged:\n{logs}"));
    assert!(line.contains("admin.role=\"admin\""), "{line}");
    assert!(line.contains("peer.ip=127.0.0.1"), "{line}");
    assert!(line.contains(&id.to_string()), "{line}");
    for secret in [ADMIN, VIEW, "AUTH-SECRET-9"] {
        assert!(!logs.contains(secret), "{secret} in the logs");
    }
    bystander.shutdown().await;
    target.shutdown().await;
    hub.shutdown().await;
}

/// Pages and filters are the server's: at a thousand connections a snapshot carries one
/// page, and a filter finds one connection among them. Auth values never leave the hub.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_connections_come_a_page_at_a_time_redacted() {
    rlimit::increase_nofile_limit(u64::MAX).unwrap();
    const N: usize = 1000;
    let hub = hub_with_admin().await;
    let addr = hub.provider().local_addr();
    let consumers: Vec<Consumer> = (0..N)
        .map(|i| {
            consumer(&hub)
                .parameter("name", format!("node-{i:04}"))
                .build()
        })
        .collect();
    within(
        "a thousand connects",
        futures_util::future::try_join_all(consumers.iter().map(|c| c.connect())),
    )
    .await
    .expect("connects");
    // A consumer's connect resolves at the 101; the hub registers it just after.
    within("every connection registered", async {
        while hub.provider().connection_count() < N {
            tokio::task::yield_now().await;
        }
    })
    .await;

    let first = get(addr, "/admin/api/snapshot?per_page=25", Some(ADMIN)).await;
    assert!(
        !first.body.contains("AUTH-SECRET-9"),
        "an auth value was sent"
    );
    let first: Snapshot = serde_json::from_str(&first.body).unwrap();
    let page = &first.connections;
    assert_eq!((page.total, page.matching, page.rows.len()), (N, N, 25));
    let row = &page.rows[0];
    assert!(row
        .parameters
        .contains(&("key".to_owned(), "<redacted>".to_owned())));
    assert!(row
        .parameters
        .iter()
        .any(|(k, v)| k == "name" && v.starts_with("node-")));
    assert_eq!(
        (row.ip.as_str(), row.strikes, row.compressed),
        ("127.0.0.1", 0, false)
    );

    let last = snapshot(addr, "?per_page=25&page=39", ADMIN).await;
    assert_eq!(last.connections.rows.len(), 25);
    let beyond = snapshot(addr, "?per_page=25&page=40", ADMIN).await;
    assert!(beyond.connections.rows.is_empty());
    let one = snapshot(addr, "?filter=NODE-0777", ADMIN).await;
    assert_eq!(one.connections.matching, 1);
    assert_eq!(
        one.connections.rows[0]
            .parameters
            .iter()
            .find(|(k, _)| k == "name")
            .map(|(_, v)| v.as_str()),
        Some("node-0777")
    );
    // Secret values are not searchable either.
    let secret = snapshot(addr, "?filter=auth-secret", ADMIN).await;
    assert_eq!(secret.connections.matching, 0);
    // Pages come in the order connections opened, each connection once.
    let mut seen = std::collections::HashSet::new();
    for page in 0..5 {
        let s = snapshot(addr, &format!("?per_page=200&page={page}"), ADMIN).await;
        for row in s.connections.rows {
            assert!(seen.insert(row.id), "a connection on two pages");
        }
    }
    assert_eq!(seen.len(), N);

    // The feed sends the same bounded page: its size does not grow with the hub.
    let mut feed = Events::open(addr, "/admin/api/feed?per_page=50", Some(ADMIN)).await;
    assert!(feed.head.contains("text/event-stream"), "{}", feed.head);
    let event = feed.next_data().await;
    assert!(
        event.len() < 48 * 1024,
        "{} bytes for one page",
        event.len()
    );
    let parsed: Snapshot = serde_json::from_str(&event).unwrap();
    assert_eq!(
        (parsed.connections.total, parsed.connections.rows.len()),
        (N, 50)
    );
    for c in &consumers {
        c.destroy();
    }
    hub.shutdown().await;
}

#[tokio::test]
async fn dead_letters_requeue_and_delete_jobs_look_up_and_cancel() {
    let hub = hub_with_admin().await;
    let addr = hub.provider().local_addr();
    let (worker, open, mut ran) =
        gated_worker(&hub, consumer(&hub).parameter("name", "gatekeeper")).await;
    let dead_ids = [dead_job(&hub, 1).await, dead_job(&hub, 2).await];
    let s = snapshot(addr, "", ADMIN).await;
    assert_eq!(s.jobs.dead, 2);
    assert_eq!(s.jobs.dead_letters.len(), 2);
    assert!(s
        .jobs
        .dead_letters
        .iter()
        .any(|d| d.id == dead_ids[0] && d.last_error == "gate 1 is closed"));
    assert_eq!(s.jobs.workers[0].name.as_deref(), Some("gatekeeper"));

    let looked = get(
        addr,
        &format!("/admin/api/jobs/{}", dead_ids[0]),
        Some(ADMIN),
    )
    .await;
    assert_eq!(looked.json()["state"], "dead");

    open.store(true, Ordering::SeqCst);
    let requeued = post(
        addr,
        &format!("/admin/api/dead/{}/requeue", dead_ids[0]),
        Some(ADMIN),
    )
    .await;
    assert_eq!(requeued.status, 200, "{}", requeued.body);
    assert_eq!(within("the requeued job runs", ran.recv()).await, Some(1));
    let deleted = post(
        addr,
        &format!("/admin/api/dead/{}/delete", dead_ids[1]),
        Some(ADMIN),
    )
    .await;
    assert_eq!(deleted.status, 200);
    assert!(hub.jobs().dead_letters().is_empty());
    let again = post(
        addr,
        &format!("/admin/api/dead/{}/delete", dead_ids[1]),
        Some(ADMIN),
    )
    .await;
    assert_eq!(again.status, 404);

    // A delayed job is found by id, and cancelled: its handle resolves Cancelled.
    let later = JobOptions::default().delay(Duration::from_secs(3600));
    let handle = hub.jobs().submit_with(&Gate { n: 3 }, later).await.unwrap();
    let id = uuid::Uuid::from_u128(handle.id()).to_string();
    let found = get(addr, &format!("/admin/api/jobs/{id}"), Some(ADMIN)).await;
    assert_eq!(
        (found.status, found.json()["state"].as_str()),
        (200, Some("delayed"))
    );
    assert_eq!(found.json()["name"], "gate");
    let cancelled = post(addr, &format!("/admin/api/jobs/{id}/cancel"), Some(ADMIN)).await;
    assert_eq!(cancelled.status, 200);
    assert_eq!(
        within("the cancelled handle", handle).await,
        Err(JobError::Cancelled)
    );
    assert_eq!(
        get(addr, &format!("/admin/api/jobs/{id}"), Some(ADMIN))
            .await
            .status,
        404
    );
    assert_eq!(
        get(addr, "/admin/api/jobs/not-an-id", Some(ADMIN))
            .await
            .status,
        400
    );
    worker.shutdown().await;
    hub.shutdown().await;
}

/// A hub of the cluster on `server` with the admin page, its jobs on JetStream.
async fn clustered_hub_with_admin(server: &NatsServer) -> Hub {
    let jobs = JetStreamOptions::default().poll(Duration::from_millis(20));
    Hub::builder(local())
        .admin(AdminOptions::new(ADMIN))
        .cluster(ClusterOptions::new(server.url()).prefix("t").jobs(jobs))
        .start()
        .await
        .expect("hub in the cluster")
}

/// Polls hub `addr`'s snapshot until its dead letters are `ids` (in any order); the page
/// reads the cluster's at most every 5 s.
async fn until_dead_letters(addr: SocketAddr, ids: &[&str]) -> Snapshot {
    let mut want: Vec<&str> = ids.to_vec();
    want.sort_unstable();
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let s = snapshot(addr, "", ADMIN).await;
            let mut shown: Vec<&str> = s.jobs.dead_letters.iter().map(|d| d.id.as_str()).collect();
            shown.sort_unstable();
            if shown == want {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("hub {addr} never showed dead letters {ids:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_cluster_every_hub_shows_and_acts_on_the_clusters_dead_letters() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    let (a, b) = (
        clustered_hub_with_admin(&server).await,
        clustered_hub_with_admin(&server).await,
    );
    let (addr_a, addr_b) = (a.provider().local_addr(), b.provider().local_addr());
    let (worker, open, mut ran) = gated_worker(&a, consumer(&a)).await;
    let dead_ids = [dead_job(&a, 1).await, dead_job(&a, 2).await];
    let (first, second) = (dead_ids[0].as_str(), dead_ids[1].as_str());
    // Both hubs' pages show the cluster's dead letters, hub B's though they died on A.
    let on_b = until_dead_letters(addr_b, &[first, second]).await;
    assert_eq!((on_b.jobs.dead, on_b.jobs.dead_more), (2, false));
    let row = on_b
        .jobs
        .dead_letters
        .iter()
        .find(|d| d.id == first)
        .unwrap();
    assert_eq!(
        (row.name.as_str(), row.attempts, row.last_error.as_str()),
        ("gate", 1, "gate 1 is closed")
    );
    until_dead_letters(addr_a, &[first, second]).await;
    // Requeued from hub B's page: it runs on A's worker; deleted from A's page: gone.
    open.store(true, Ordering::SeqCst);
    let requeued = post(
        addr_b,
        &format!("/admin/api/dead/{first}/requeue"),
        Some(ADMIN),
    )
    .await;
    assert_eq!(requeued.status, 200, "{}", requeued.body);
    assert_eq!(within("the requeued job runs", ran.recv()).await, Some(1));
    let deleted = post(
        addr_a,
        &format!("/admin/api/dead/{second}/delete"),
        Some(ADMIN),
    )
    .await;
    assert_eq!(deleted.status, 200, "{}", deleted.body);
    for (addr, action) in [(addr_b, "delete"), (addr_a, "requeue")] {
        let again = post(
            addr,
            &format!("/admin/api/dead/{second}/{action}"),
            Some(ADMIN),
        )
        .await;
        assert_eq!(again.status, 404, "{action} again: {}", again.body);
    }
    for addr in [addr_a, addr_b] {
        assert_eq!(until_dead_letters(addr, &[]).await.jobs.dead, 0);
    }
    worker.shutdown().await;
    a.shutdown().await;
    b.shutdown().await;
}

#[cluster_service]
trait Greeter {
    async fn greet(&self, name: String) -> String;
}

struct Hello;

impl Greeter for Hello {
    async fn greet(&self, name: String) -> String {
        format!("hello {name}")
    }
}

#[tokio::test]
async fn services_subjects_and_rates_appear_in_the_feed() {
    let hub = Hub::builder(local())
        .serve(GreeterServer::new(Hello))
        .admin(AdminOptions::new(ADMIN))
        .start()
        .await
        .expect("hub");
    let addr = hub.provider().local_addr();
    let member = Member::builder(
        Consumer::builder()
            .host("127.0.0.1")
            .port(hub.provider().port())
            .parameter("name", "greeter-1"),
    )
    .serve(GreeterServer::new(Hello))
    .connect()
    .await
    .expect("member");
    let _orders = member
        .subscribe::<String>("orders.>")
        .await
        .expect("subscribe");
    let _more = hub.subscribe::<String>("orders.>").expect("subscribe");
    let mut feed = Events::open(addr, "/admin/api/feed", Some(ADMIN)).await;
    let snapshot: Snapshot = within("the member's services and subjects", async {
        loop {
            let s: Snapshot = serde_json::from_str(&feed.next_data().await).unwrap();
            let served = s
                .services
                .iter()
                .any(|r| r.name == "Greeter" && r.members == 1);
            let subscribed = s.subjects.rows.first().is_some_and(|r| r.subscribers == 2);
            if served && subscribed {
                return s;
            }
        }
    })
    .await;
    let greeter = snapshot
        .services
        .iter()
        .find(|r| r.name == "Greeter")
        .unwrap();
    assert!(greeter.on_hub);
    assert_eq!(greeter.sample[0].name.as_deref(), Some("greeter-1"));
    assert_eq!(
        (
            snapshot.subjects.rows[0].pattern.as_str(),
            snapshot.subjects.rows[0].subscribers
        ),
        ("orders.>", 2)
    );
    assert!(!snapshot.services.iter().any(|r| r.name.starts_with("__")));
    assert_eq!(snapshot.hub.members, 1);
    member.shutdown().await;
    hub.shutdown().await;
}
