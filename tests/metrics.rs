//! `GET /metrics`: the Prometheus recorder installed by `MetricsEndpoint::install`, behind
//! its bearer token, with the transport's and the typed layer's metrics counting what
//! really happened on loopback.
//!
//! One test in this file on purpose: the recorder is the process's global one, so every
//! count below is this test's alone, however the tests are run.

mod common;

use common::http::get;
use common::pki::Pki;
use common::*;
use network_cluster::prelude::*;
use network_cluster::rpc::{Job, JobContext, JobError, JobOptions};
use network_cluster::transport::{Compressor, MetricsEndpoint};
use network_cluster::ConsumerEvent;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::AsyncReadExt;

const TOKEN: &str = "scrape-token";

#[cluster_service]
trait Greeter {
    async fn greet(&self, name: String) -> Result<String, String>;
}

struct Hello;

impl Greeter for Hello {
    async fn greet(&self, name: String) -> Result<String, String> {
        match name.as_str() {
            "panic" => panic!("asked to"),
            "fail" => Err("no".into()),
            _ => Ok(format!("hello {name}")),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Square {
    n: u64,
}

impl Job for Square {
    const NAME: &'static str = "square";
    type Output = u64;
}

/// One sample's value: `name{labels} value`, labels in any order.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let wanted: BTreeSet<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    text.lines().find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (metric, rest) = match series.split_once('{') {
            Some((metric, rest)) => (metric, rest.strip_suffix('}')?),
            None => (series, ""),
        };
        let have: BTreeSet<String> = rest
            .split(',')
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect();
        (metric == name && have == wanted).then(|| value.parse().ok())?
    })
}

async fn scrape(addr: SocketAddr) -> String {
    let response = get(addr, "/metrics", Some(TOKEN)).await;
    assert_eq!(response.status, 200, "{}", response.body);
    assert_eq!(
        response.header("Content-Type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    response.body
}

/// Scrapes until `check` passes (gauges are set once a second).
async fn scrape_until(addr: SocketAddr, what: &str, check: impl Fn(&str) -> bool) -> String {
    within(what, async {
        loop {
            let text = scrape(addr).await;
            if check(&text) {
                return text;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
}

#[tokio::test]
async fn metrics_count_calls_pubsub_jobs_and_traffic() {
    let endpoint = MetricsEndpoint::install()
        .expect("the recorder")
        .bearer_token(TOKEN);
    let hub = Hub::builder(
        local()
            .metrics(endpoint)
            .auth_parameter("key", "K")
            .handshake_timeout(Duration::from_millis(300)),
    )
    .serve(GreeterServer::new(Hello))
    .start()
    .await
    .expect("hub");
    let addr = hub.provider().local_addr();

    // The token guards the endpoint.
    assert_eq!(get(addr, "/metrics", None).await.status, 401);
    assert_eq!(get(addr, "/metrics", Some("wrong")).await.status, 401);

    let member = Member::builder(
        Consumer::builder()
            .host("127.0.0.1")
            .port(hub.provider().port())
            .parameter("key", "K"),
    )
    .worker(|job: Square, ctx: JobContext| async move {
        if job.n == 0 {
            Err(format!("attempt {} of zero", ctx.attempt()))
        } else {
            Ok(job.n * job.n)
        }
    })
    .connect()
    .await
    .expect("member");
    let greeter = member.client::<GreeterClient>().expect("a client");
    for name in ["a", "b", "c"] {
        assert_eq!(
            greeter.greet(name.into()).await,
            Ok(Ok(format!("hello {name}")))
        );
    }
    assert_eq!(greeter.greet("fail".into()).await, Ok(Err("no".into())));
    assert!(greeter.greet("panic".into()).await.is_err());

    let mut orders = hub.subscribe::<String>("orders.>").expect("subscribe");
    for i in 0..2 {
        member
            .publish(&format!("orders.{i}"), &"order".to_owned())
            .expect("publish");
        within("a publication", orders.recv())
            .await
            .expect("one")
            .expect("decodes");
    }

    within("the worker", async {
        while hub.jobs().stats().workers.is_empty() {
            tokio::task::yield_now().await;
        }
    })
    .await;
    for n in 1..=3 {
        assert_eq!(
            within("a job", hub.jobs().submit(&Square { n }).await.unwrap()).await,
            Ok(n * n)
        );
    }
    let dead = hub
        .jobs()
        .submit_with(&Square { n: 0 }, JobOptions::default().max_attempts(1))
        .await
        .unwrap();
    assert!(matches!(
        within("a dead job", dead).await,
        Err(JobError::Dead { .. })
    ));

    let text = scrape_until(addr, "the dead job's gauge", |t| {
        sample(t, "cluster_jobs", &[("state", "dead")]) == Some(1.0)
    })
    .await;
    let calls = |outcome| {
        sample(
            &text,
            "cluster_rpc_calls_total",
            &[
                ("service", "Greeter"),
                ("method", "greet"),
                ("outcome", outcome),
            ],
        )
    };
    // A method returning Err(E) answers with its typed error: an `ok` call.
    assert_eq!(calls("ok"), Some(4.0), "{text}");
    assert_eq!(calls("panicked"), Some(1.0));
    assert_eq!(calls("timeout"), Some(0.0));
    assert_eq!(
        sample(
            &text,
            "cluster_rpc_call_duration_seconds_count",
            &[("service", "Greeter"), ("method", "greet")]
        ),
        Some(5.0)
    );
    assert!(text.contains("# TYPE cluster_rpc_call_duration_seconds histogram"));
    assert_eq!(
        sample(&text, "cluster_pubsub_publications_total", &[]),
        Some(2.0)
    );
    assert_eq!(
        sample(&text, "cluster_pubsub_deliveries_total", &[]),
        Some(2.0)
    );
    assert_eq!(
        sample(&text, "cluster_pubsub_slow_subscriber_drops_total", &[]),
        Some(0.0)
    );
    let attempts = |outcome| sample(&text, "cluster_job_attempts_total", &[("outcome", outcome)]);
    assert_eq!(
        (attempts("completed"), attempts("failed")),
        (Some(3.0), Some(1.0))
    );
    assert_eq!(
        sample(
            &text,
            "cluster_job_duration_seconds_count",
            &[("name", "square")]
        ),
        Some(4.0)
    );
    assert_eq!(
        sample(&text, "cluster_jobs", &[("state", "waiting")]),
        Some(0.0)
    );
    assert!(sample(&text, "cluster_job_worker_credits", &[("state", "total")]) > Some(0.0));
    assert_eq!(
        sample(&text, "cluster_job_worker_credits", &[("state", "in_use")]),
        Some(0.0)
    );

    // Calls are counted in the typed layer's own atomics and handed to the recorder when
    // the provider publishes: a scrape right after a call sees it, without waiting for
    // the once-a-second flush, and the histogram has its bucket, sum and count.
    assert_eq!(greeter.greet("d".into()).await, Ok(Ok("hello d".into())));
    let text = scrape(addr).await;
    let greet = [("service", "Greeter"), ("method", "greet")];
    let ok = [greet[0], greet[1], ("outcome", "ok")];
    assert_eq!(sample(&text, "cluster_rpc_calls_total", &ok), Some(5.0));
    let count = sample(&text, "cluster_rpc_call_duration_seconds_count", &greet);
    assert_eq!(count, Some(6.0), "{text}");
    let inf = [greet[0], greet[1], ("le", "+Inf")];
    let bucket = sample(&text, "cluster_rpc_call_duration_seconds_bucket", &inf);
    assert_eq!(bucket, Some(6.0), "{text}");
    let sum = sample(&text, "cluster_rpc_call_duration_seconds_sum", &greet);
    assert!(sum > Some(0.0) && sum < Some(6.0 * 30.0), "{sum:?}");

    // The transport: connects by result, disconnects by reason, messages and bytes by
    // type, heartbeat round trips. Text messages are the seed's strings: two sent here.
    let port = hub.provider().port();
    let refused = Consumer::builder()
        .host("127.0.0.1")
        .port(port)
        .parameter("key", "wrong")
        .connect()
        .await;
    assert!(refused.is_err());
    let bad = raw_http(
        addr,
        b"GET /connect HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    )
    .await;
    assert!(bad.starts_with("HTTP/1.1 426 "), "{bad}");
    let mut silent = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut buf = [0u8; 16];
    let _ = within("the handshake limit", silent.read(&mut buf)).await;
    let talker = Consumer::builder()
        .host("127.0.0.1")
        .port(port)
        .parameter("key", "K")
        .parameter("name", "talker")
        .connect()
        .await
        .expect("talker");
    talker.send("hello").expect("send");
    talker.send("world!").expect("send");
    let closed_by_app = Consumer::builder()
        .host("127.0.0.1")
        .port(port)
        .parameter("key", "K")
        .parameter("name", "closed")
        .max_attempts(0)
        .connect()
        .await
        .expect("connect");
    connection_named(hub.provider(), "closed")
        .await
        .close(4000, "bye");
    connection_named(hub.provider(), "talker").await;
    let text = scrape_until(addr, "the transport's counts", |t| {
        let received = sample(t, "cluster_messages_received_total", &[("type", "text")]);
        let server = sample(t, "cluster_disconnects_total", &[("reason", "server")]);
        received == Some(2.0) && server == Some(1.0)
    })
    .await;
    let connects = |result| sample(&text, "cluster_connects_total", &[("result", result)]);
    assert_eq!(connects("accepted"), Some(3.0), "{text}");
    assert_eq!(connects("unauthorized"), Some(1.0));
    assert_eq!(connects("bad_request"), Some(1.0));
    assert_eq!(connects("timed_out"), Some(1.0));
    assert_eq!(
        sample(&text, "cluster_received_bytes_total", &[("type", "text")]),
        Some(11.0)
    );
    let binary = |name| sample(&text, name, &[("type", "binary")]);
    assert!(binary("cluster_messages_received_total") >= Some(5.0));
    assert!(binary("cluster_messages_sent_total") >= Some(5.0));
    // Each connection's first frame is the heartbeat announcement, a text message.
    assert!(sample(&text, "cluster_messages_sent_total", &[("type", "text")]) >= Some(3.0));
    assert_eq!(sample(&text, "cluster_connections", &[]), Some(2.0));
    talker.shutdown().await;
    let text = scrape_until(addr, "the talker's close", |t| {
        sample(t, "cluster_disconnects_total", &[("reason", "client")]) == Some(1.0)
    })
    .await;
    assert_eq!(sample(&text, "cluster_connections", &[]), Some(1.0));
    drop(closed_by_app);

    // TLS handshakes, compression and heartbeat round trips, on a second provider (with
    // a fast heartbeat): the facade adds its counts to the hub's.
    let pki = Pki::new("metrics");
    let tls = local()
        .tls(pki.plain())
        .compressor(Compressor::Shared)
        .heartbeat_interval(Duration::from_millis(100))
        .on_open(|conn| {
            let _ = conn.send("a long and repetitive message, a long and repetitive message");
        })
        .bind()
        .await
        .expect("tls provider");
    let secure = Consumer::builder()
        .host("localhost")
        .port(tls.port())
        .ca_file(pki.path("ca.pem"))
        .build();
    let mut events = secure.events();
    secure.connect().await.expect("tls connect");
    within("the compressed message", async {
        while !matches!(events.recv().await, Some(ConsumerEvent::Message(_))) {}
    })
    .await;
    let plaintext = raw_http(tls.local_addr(), b"GET /alive HTTP/1.1\r\n\r\n").await;
    assert!(!plaintext.contains("200 OK"));
    let text = scrape_until(addr, "the TLS handshakes and a heartbeat", |t| {
        let failed = sample(t, "cluster_tls_handshakes_total", &[("result", "failed")]);
        let rtt = sample(t, "cluster_heartbeat_rtt_seconds_count", &[]);
        failed == Some(1.0) && rtt >= Some(1.0)
    })
    .await;
    assert!(text.contains("# TYPE cluster_heartbeat_rtt_seconds histogram"));
    let tls_ok = sample(&text, "cluster_tls_handshakes_total", &[("result", "ok")]);
    assert_eq!(tls_ok, Some(1.0));
    let raw = sample(&text, "cluster_deflate_raw_bytes_total", &[]).unwrap_or(0.0);
    let compressed = sample(&text, "cluster_deflate_compressed_bytes_total", &[]).unwrap_or(0.0);
    assert!(
        raw >= 60.0 && compressed > 0.0 && compressed < raw,
        "{raw} -> {compressed}"
    );
    let ratio = sample(&text, "cluster_deflate_ratio", &[]).unwrap_or(1.0);
    assert!(ratio < 1.0, "{ratio}");
    secure.shutdown().await;
    tls.shutdown().await;
    // No label carries a connection id, a subject or a job id.
    let id = hub
        .provider()
        .connections()
        .into_keys()
        .next()
        .expect("a connection");
    assert!(!text.contains(&id.to_string()));
    assert!(!text.contains("orders."));
    member.shutdown().await;
    hub.shutdown().await;
}
