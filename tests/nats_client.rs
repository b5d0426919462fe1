//! The vendored async-nats's ping timer (vendor/async-nats/PATCHED.md, change 4): traffic
//! marks the connection active instead of resetting the timer per op, so no PING goes out
//! while messages flow, the first PING of a silence goes out one to two ping intervals
//! into it, and a server that stops answering is still given up.
//!
//! Against a small fake NATS server on loopback (a real socket) that records when each
//! PING arrives. Time is the subject: the clock is paused. A client pings once as it
//! connects (the timer's first tick is immediate, as in the release).

use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::time::Instant;

const INTERVAL: Duration = Duration::from_secs(10);

/// What the fake server saw, in order.
#[derive(Debug, PartialEq)]
enum Seen {
    Publish,
    Ping,
}

/// Serves one connection: INFO, the CONNECT handshake's PONG, then a `Seen` per PUB and
/// per PING, answering PINGs only while `answer` says so (a number of them).
async fn fake_server(
    listener: TcpListener,
    seen: mpsc::UnboundedSender<(Seen, Instant)>,
    mut answer: usize,
) {
    let (socket, _) = listener.accept().await.unwrap();
    let (read, mut write) = socket.into_split();
    write
        .write_all(
            b"INFO {\"server_id\":\"fake\",\"server_name\":\"fake\",\"version\":\"2.10.0\",\
              \"proto\":1,\"host\":\"127.0.0.1\",\"port\":4222,\"headers\":true,\
              \"max_payload\":1048576}\r\n",
        )
        .await
        .unwrap();
    let mut lines = BufReader::new(read).lines();
    // CONNECT, then the handshake's PING: answered whatever `answer` says.
    while let Ok(Some(line)) = lines.next_line().await {
        if line == "PING" {
            write.write_all(b"PONG\r\n").await.unwrap();
            break;
        }
    }
    while let Ok(Some(line)) = lines.next_line().await {
        if line.starts_with("PUB ") {
            // The payload line follows.
            let _ = lines.next_line().await;
            let _ = seen.send((Seen::Publish, Instant::now()));
        } else if line == "PING" {
            let _ = seen.send((Seen::Ping, Instant::now()));
            if answer > 0 {
                answer -= 1;
                write.write_all(b"PONG\r\n").await.unwrap();
            }
        }
    }
}

async fn connect(
    port: u16,
) -> (
    async_nats::Client,
    mpsc::UnboundedReceiver<async_nats::Event>,
) {
    let (events_tx, events) = mpsc::unbounded_channel();
    let client = async_nats::ConnectOptions::new()
        .ping_interval(INTERVAL)
        .event_callback(move |event| {
            let events_tx = events_tx.clone();
            async move {
                let _ = events_tx.send(event);
            }
        })
        .connect(format!("nats://127.0.0.1:{port}"))
        .await
        .unwrap();
    (client, events)
}

/// When the next PING came; fails after five intervals without one.
async fn next_ping(seen: &mut mpsc::UnboundedReceiver<(Seen, Instant)>) -> Instant {
    let next = tokio::time::timeout(INTERVAL * 5, seen.recv()).await;
    let (what, at) = next.expect("no PING in five intervals").unwrap();
    assert_eq!(what, Seen::Ping);
    at
}

async fn listener() -> (TcpListener, u16) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    (listener, port)
}

#[tokio::test(start_paused = true)]
async fn traffic_holds_pings_back_and_a_silence_brings_the_first_within_two_intervals() {
    let (listener, port) = listener().await;
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    tokio::spawn(fake_server(listener, seen_tx, usize::MAX));
    let (client, _events) = connect(port).await;
    assert_eq!(
        seen.recv().await.unwrap().0,
        Seen::Ping,
        "the PING of the connect"
    );
    // Four intervals of traffic, a publish a second: no PING among them.
    for _ in 0..40 {
        client.publish("work", "x".into()).await.unwrap();
        client.flush().await.ok();
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let mut last_publish = None;
    while let Ok((what, at)) = seen.try_recv() {
        assert_eq!(what, Seen::Publish, "a PING while messages flowed");
        last_publish = Some(at);
    }
    let silent_since = last_publish.expect("the publishes reached the server");
    // Then silence: the first PING comes one to two intervals into it, the next an
    // interval after each PONG.
    let first = next_ping(&mut seen).await;
    let took = first - silent_since;
    assert!(
        took >= INTERVAL && took <= INTERVAL * 2 + Duration::from_secs(1),
        "first PING after {took:?} of silence"
    );
    let second = next_ping(&mut seen).await;
    assert!(second - first <= INTERVAL * 2 + Duration::from_secs(1));
    drop(client);
}

#[tokio::test(start_paused = true)]
async fn a_server_that_stops_answering_pings_is_given_up() {
    let (listener, port) = listener().await;
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    // The PING of the connect is answered, none after it.
    tokio::spawn(fake_server(listener, seen_tx, 1));
    let (client, mut events) = connect(port).await;
    let connected_at = Instant::now();
    let disconnected = async {
        loop {
            match events.recv().await {
                Some(async_nats::Event::Disconnected) => return Instant::now(),
                Some(_) => {}
                None => panic!("the client's events ended"),
            }
        }
    };
    let at = tokio::time::timeout(INTERVAL * 10, disconnected)
        .await
        .expect("the client never gave the silent server up");
    // The connect's PING is answered (traffic: the next tick sends none), then two
    // unanswered PINGs an interval apart, and the tick after them gives up: at the fourth
    // interval (the third before the patch, which reset the timer on the PONG).
    let took = at - connected_at;
    assert!(
        took >= INTERVAL * 3 && took <= INTERVAL * 4 + Duration::from_secs(1),
        "given up after {took:?}"
    );
    let mut pings = 0;
    while let Ok((what, _)) = seen.try_recv() {
        assert_eq!(what, Seen::Ping);
        pings += 1;
    }
    assert_eq!(pings, 3, "the connect's PING, then two unanswered");
    drop(client);
}
