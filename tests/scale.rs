//! Many consumers at once.

mod common;

use common::*;
use network_cluster::ConsumerEvent;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_consumers_connect_and_all_receive() {
    rlimit::increase_nofile_limit(u64::MAX).unwrap();
    let provider = local().bind().await.unwrap();
    let mut consumers = Vec::new();
    let mut streams = Vec::new();
    for i in 0..1000 {
        let c = consumer_for(&provider)
            .parameter("n", i.to_string())
            .build();
        streams.push(c.events());
        consumers.push(c);
    }
    let connects = consumers.iter().map(|c| c.connect());
    within(
        "1000 connects",
        futures_util::future::try_join_all(connects),
    )
    .await
    .unwrap();
    // A connect resolves at the 101; the provider registers the connection just after.
    within("1000 registrations", async {
        while provider.connection_count() < 1000 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert_eq!(provider.connection_count(), 1000);
    let mut ns: Vec<usize> = provider
        .connections()
        .values()
        .map(|c| c.parameters()["n"].parse().unwrap())
        .collect();
    ns.sort_unstable();
    assert_eq!(ns, (0..1000).collect::<Vec<_>>());

    assert_eq!(provider.send_to_all("to everyone"), 1000);
    for events in &mut streams {
        loop {
            match within("broadcast", events.recv()).await.unwrap() {
                ConsumerEvent::Message(m) => {
                    assert_eq!(m.as_text(), Some("to everyone"));
                    break;
                }
                _ => continue,
            }
        }
    }
    for c in &consumers {
        c.destroy();
    }
    provider.shutdown().await;
}
