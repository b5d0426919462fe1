//! TLS (`wss://`) end to end, on loopback with certificates made at test time: round trips
//! with a plain and a passphrase-encrypted key, what `bind` says about bad files, a consumer
//! refusing a certificate it cannot verify, plaintext and TLS clients on the wrong kind of
//! port, the TLS handshake time limit, secrets kept out of logs, and the memory of a plain
//! idle connection.

mod common;

use common::http::Captured;
use common::pki::{Pki, PASSPHRASE};
use common::*;
use network_cluster::transport::{BindError, ConnectErrorKind, ProviderEvent, SslOptions};
use network_cluster::{ConsumerEvent, Message, Provider};
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};
use std::alloc::System;
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Counts heap bytes, so a test can tell what idle connections cost.
#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

async fn echo_provider(ssl: Option<SslOptions>) -> Provider {
    let mut builder = local().on_message(|conn, message| {
        let _ = conn.send(message);
    });
    if let Some(ssl) = ssl {
        builder = builder.tls(ssl);
    }
    builder.bind().await.unwrap()
}

/// Sends `text` and waits for it to come back.
async fn round_trip(consumer: &network_cluster::Consumer, text: &str) {
    let mut events = consumer.events();
    consumer.send(text).unwrap();
    within("the echo", async {
        loop {
            if let Some(ConsumerEvent::Message(m)) = events.recv().await {
                assert_eq!(m, Message::from(text));
                return;
            }
        }
    })
    .await;
}

#[tokio::test]
async fn round_trip_with_a_plain_key() {
    let pki = Pki::new("plain");
    let provider = echo_provider(Some(pki.plain())).await;
    assert!(provider.is_tls());
    let mut events = provider.events();
    let consumer = consumer_for(&provider)
        .parameter("role", "worker")
        .ca_file(pki.path("ca.pem"))
        .connect()
        .await
        .unwrap();
    let conn = next_open(&mut events).await;
    assert_eq!(conn.parameters()["role"], "worker");
    round_trip(&consumer, "over TLS").await;
    // Large messages cross several TLS records.
    let big = "x".repeat(30_000);
    round_trip(&consumer, &big).await;
    // The heartbeat's first frame was read too (it is never surfaced as a message).
    assert_eq!(consumer.heartbeat_duration(), Some(Duration::from_secs(30)));
    consumer.shutdown().await;
    let (_, info) = next_event(&mut events, |e| match e {
        ProviderEvent::Close(c, info) => Some((c, info)),
        _ => None,
    })
    .await;
    assert_eq!(info.code, 1000);
    provider.shutdown().await;
}

#[tokio::test]
async fn round_trip_with_a_passphrase_encrypted_key_by_name() {
    let pki = Pki::new("encrypted");
    let provider = echo_provider(Some(pki.encrypted())).await;
    // By name this time: `localhost` is in the certificate too.
    let consumer = consumer_for(&provider)
        .host("localhost")
        .ca_file(pki.path("ca.pem"))
        .connect()
        .await
        .unwrap();
    round_trip(&consumer, "encrypted key").await;
    consumer.shutdown().await;
    provider.shutdown().await;
}

#[tokio::test]
async fn options_from_a_config_file_serve_tls() {
    let pki = Pki::new("config");
    let options: network_cluster::transport::ProviderOptions =
        serde_json::from_value(serde_json::json!({
            "host": "127.0.0.1",
            "port": 0,
            "ssl": {
                "key": pki.path("key-encrypted.pem"),
                "cert": pki.path("cert.pem"),
                "passphrase": PASSPHRASE,
                "dh_params": "misc/dhparam4096.pm",
                "prefer_low_memory_usage": true
            }
        }))
        .unwrap();
    let provider = network_cluster::transport::ProviderBuilder::from_options(options)
        .on_message(|conn, message| {
            let _ = conn.send(message);
        })
        .bind()
        .await
        .unwrap();
    let consumer: network_cluster::transport::ConsumerOptions =
        serde_json::from_value(serde_json::json!({
            "host": "127.0.0.1",
            "port": provider.port(),
            "ssl": true,
            "ca": pki.path("ca.pem"),
        }))
        .unwrap();
    let consumer = network_cluster::transport::ConsumerBuilder::from_options(consumer)
        .connect()
        .await
        .unwrap();
    round_trip(&consumer, "from a config file").await;
    consumer.shutdown().await;
    provider.shutdown().await;
}

async fn bind_error(ssl: SslOptions) -> String {
    let error = local().tls(ssl).bind().await.unwrap_err();
    assert!(matches!(error, BindError::Tls { .. }), "{error:?}");
    let text = format!("{error} / {error:?}");
    assert!(!text.contains(PASSPHRASE), "secret in the error: {text}");
    assert!(
        !text.contains("wrong-secret"),
        "secret in the error: {text}"
    );
    text
}

#[tokio::test]
async fn bad_files_fail_bind_with_a_clear_message() {
    let pki = Pki::new("bad");
    let wrong = bind_error(pki.encrypted().passphrase("wrong-secret")).await;
    assert!(wrong.contains("wrong passphrase"), "{wrong}");
    assert!(wrong.contains("key-encrypted.pem"), "{wrong}");

    let mut none = pki.encrypted();
    none.passphrase = None;
    let missing = bind_error(none).await;
    assert!(
        missing.contains("is encrypted; give its passphrase"),
        "{missing}"
    );

    let unreadable = bind_error(SslOptions::new(pki.path("cert.pem"), pki.path("nope.pem"))).await;
    assert!(unreadable.contains("cannot read ssl.key"), "{unreadable}");
    assert!(unreadable.contains("nope.pem"), "{unreadable}");

    let mismatch = bind_error(SslOptions::new(
        pki.path("cert.pem"),
        pki.path("stranger-key.pem"),
    ))
    .await;
    assert!(
        mismatch.contains("does not match the certificate"),
        "{mismatch}"
    );

    let no_cert = bind_error(SslOptions::new(pki.path("key.pem"), pki.path("key.pem"))).await;
    assert!(no_cert.contains("holds no CERTIFICATE"), "{no_cert}");

    let no_key = bind_error(SslOptions::new(pki.path("cert.pem"), pki.path("cert.pem"))).await;
    assert!(no_key.contains("holds no private key"), "{no_key}");

    // A plain key with a passphrase (the seed required one) works: it is ignored.
    let provider = local()
        .tls(pki.plain().passphrase("ignored"))
        .bind()
        .await
        .unwrap();
    provider.shutdown().await;
}

#[tokio::test]
async fn consumer_refuses_a_certificate_it_cannot_verify() {
    let pki = Pki::new("refuse");
    let provider = echo_provider(Some(pki.plain())).await;
    let mut events = provider.events();
    // Signed by a CA this consumer does not trust.
    let error = consumer_for(&provider)
        .ca_file(pki.path("other-ca.pem"))
        .connect()
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ConnectErrorKind::Tls, "{error}");
    assert!(error.is_fatal());
    let text = error.to_string();
    assert!(text.contains("invalid peer certificate"), "{text}");
    assert!(text.contains("UnknownIssuer"), "{text}");

    // The system's roots do not know our test CA either (or there are none): still Tls.
    let error = consumer_for(&provider)
        .ssl(true)
        .connect()
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ConnectErrorKind::Tls, "{error}");

    // A certificate from the right CA, for another name.
    let elsewhere = echo_provider(Some(SslOptions::new(
        pki.path("elsewhere-cert.pem"),
        pki.path("key.pem"),
    )))
    .await;
    let error = consumer_for(&elsewhere)
        .ca_file(pki.path("ca.pem"))
        .connect()
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ConnectErrorKind::Tls, "{error}");
    assert!(error.to_string().contains("not valid for name"), "{error}");
    elsewhere.shutdown().await;

    // A CA file that is not there.
    let error = consumer_for(&provider)
        .ca_file(pki.path("missing-ca.pem"))
        .connect()
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ConnectErrorKind::Tls, "{error}");
    assert!(error.to_string().contains("missing-ca.pem"), "{error}");

    // None of that reached the provider's application, and a good consumer still gets in.
    let good = consumer_for(&provider)
        .ca_file(pki.path("ca.pem"))
        .connect()
        .await
        .unwrap();
    let opened = next_open(&mut events).await;
    assert_eq!(provider.connection_count(), 1);
    assert_eq!(provider.connections().keys().next(), Some(&opened.id()));
    round_trip(&good, "still fine").await;
    good.shutdown().await;
    provider.shutdown().await;
}

#[tokio::test]
async fn plaintext_client_on_a_tls_port_fails_alone() {
    let pki = Pki::new("plaintext");
    let provider = echo_provider(Some(pki.plain())).await;
    let good = consumer_for(&provider)
        .ca_file(pki.path("ca.pem"))
        .connect()
        .await
        .unwrap();

    // Our consumer without ssl: the attempt fails and, once retries are spent, connect too.
    let error = consumer_for(&provider)
        .max_attempts(0)
        .connect()
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ConnectErrorKind::MaxAttempts, "{error}");
    assert!(error.to_string().contains("serving TLS"), "{error}");

    // A raw plaintext HTTP request: no HTTP answer (a TLS alert at most), then closed.
    let answer = raw_http(provider.local_addr(), b"GET /alive HTTP/1.1\r\n\r\n").await;
    assert!(!answer.starts_with("HTTP/"), "{answer:?}");

    assert_eq!(provider.connection_count(), 1);
    round_trip(&good, "unaffected").await;
    good.shutdown().await;
    provider.shutdown().await;
}

#[tokio::test]
async fn tls_client_on_a_plain_port_fails_alone() {
    let pki = Pki::new("wrongway");
    let provider = echo_provider(None).await;
    let good = consumer_for(&provider).connect().await.unwrap();
    let error = consumer_for(&provider)
        .ca_file(pki.path("ca.pem"))
        .connect()
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ConnectErrorKind::Tls, "{error}");
    assert!(error.to_string().contains("serving TLS"), "{error}");
    assert_eq!(provider.connection_count(), 1);
    round_trip(&good, "unaffected").await;
    good.shutdown().await;
    provider.shutdown().await;
}

#[tokio::test]
async fn a_silent_client_is_dropped_at_the_handshake_time_limit() {
    let pki = Pki::new("silent");
    let provider = local()
        .tls(pki.plain())
        .handshake_timeout(Duration::from_millis(300))
        .bind()
        .await
        .unwrap();
    // Connects and sends nothing: no TLS hello, so no connection, and it is closed.
    let mut silent = TcpStream::connect(provider.local_addr()).await.unwrap();
    // Half a ClientHello: a TLS record header promising more than is ever sent.
    let mut partial = TcpStream::connect(provider.local_addr()).await.unwrap();
    partial
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .await
        .unwrap();
    for stream in [&mut silent, &mut partial] {
        let mut buf = Vec::new();
        // EOF (or a reset) once the limit is up; `within` fails the test if it never comes.
        let _ = within("the handshake limit", stream.read_to_end(&mut buf)).await;
    }
    assert_eq!(provider.connection_count(), 0);
    provider.shutdown().await;
}

#[tokio::test]
async fn secrets_reach_no_log_line() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let pki = Pki::new("logs");
    let _ = local()
        .tls(pki.encrypted().passphrase("wrong-secret"))
        .bind()
        .await;
    let mut ssl = pki.encrypted();
    ssl.dh_params = Some("dh.pem".into());
    let provider = local()
        .tls(ssl)
        .auth_parameter("key", "auth-secret")
        .bind()
        .await
        .unwrap();
    let refused = consumer_for(&provider)
        .ca_file(pki.path("ca.pem"))
        .parameter("key", "guessed-secret")
        .connect()
        .await
        .unwrap_err();
    assert_eq!(refused.kind(), ConnectErrorKind::Rejected);
    let consumer = consumer_for(&provider)
        .ca_file(pki.path("ca.pem"))
        .parameter("key", "auth-secret")
        .connect()
        .await
        .unwrap();
    let _ = format!("{provider:?} {consumer:?} {refused:?}");
    consumer.shutdown().await;
    provider.shutdown().await;

    let logs = captured.text();
    assert!(
        logs.contains("provider listening"),
        "the capture works: {logs}"
    );
    assert!(logs.contains("dh_params ignored"), "{logs}");
    for secret in [PASSPHRASE, "wrong-secret", "auth-secret", "guessed-secret"] {
        assert!(!logs.contains(secret), "{secret} in the logs:\n{logs}");
    }
}

const UPGRADE: &[u8] = b"GET /connect HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

/// A raw client that upgrades and reads until the provider's first frame, so the
/// connection is registered and idle when this returns.
async fn raw_upgraded(addr: std::net::SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(UPGRADE).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    while !got.windows(18).any(|w| w == b"PROVIDER_HEARTBEAT") {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed during the upgrade");
        got.extend_from_slice(&buf[..n]);
    }
    stream
}

/// Adding TLS must not cost plain connections anything: they run the very task they ran
/// before. Measured as live heap per idle connection, both ends of the loopback socket
/// together (this process is both): 1,329–1,331 bytes before TLS support existed, with
/// N = 400 on a current-thread runtime. The bound leaves room for allocator-independent
/// noise (the registry's hash map growing), not for a single new allocation per
/// connection's task.
#[tokio::test]
async fn plain_idle_connection_memory_is_unchanged() {
    const N: usize = 400;
    const BEFORE_TLS: isize = 1331;
    let pki = Pki::new("memory");
    let provider = local().bind().await.unwrap();
    // A TLS provider in the same process must change nothing for the plain one.
    let tls_provider = local().tls(pki.plain()).bind().await.unwrap();
    let addr = provider.local_addr();
    // Warm up: the per-thread read buffer, the registry, the timer wheel.
    let warm = futures_util::future::join_all((0..8).map(|_| raw_upgraded(addr))).await;
    let region = Region::new(GLOBAL);
    let mut held = Vec::with_capacity(N);
    for _ in 0..N {
        held.push(raw_upgraded(addr).await);
    }
    within("every connection registered", async {
        while provider.connection_count() < N + warm.len() {
            tokio::task::yield_now().await;
        }
    })
    .await;
    let change = region.change();
    let live = change.bytes_allocated as isize - change.bytes_deallocated as isize
        + change.bytes_reallocated;
    let per_conn = live / N as isize;
    eprintln!("live heap per idle plain connection (both ends): {per_conn} bytes");
    assert!(
        per_conn <= BEFORE_TLS + 48,
        "a plain idle connection now costs {per_conn} bytes, {BEFORE_TLS} before TLS"
    );
    drop(held);
    tls_provider.shutdown().await;
    provider.shutdown().await;
}

/// Not a test of a number, a report of one: what an idle TLS connection costs, both
/// ends, with rustls' buffers and session state.
#[tokio::test]
async fn tls_idle_connection_memory_is_bounded() {
    const N: usize = 100;
    let pki = Pki::new("tls-memory");
    let provider = local().tls(pki.plain()).bind().await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(client_config(&pki.path("ca.pem")));
    let addr = provider.local_addr();
    let connect = || async {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let mut tls = connector.connect(name, tcp).await.unwrap();
        tls.write_all(UPGRADE).await.unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 512];
        while !got.windows(18).any(|w| w == b"PROVIDER_HEARTBEAT") {
            let n = tls.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed during the upgrade");
            got.extend_from_slice(&buf[..n]);
        }
        tls
    };
    let warm = connect().await;
    let region = Region::new(GLOBAL);
    let mut held = Vec::with_capacity(N);
    for _ in 0..N {
        held.push(connect().await);
    }
    within("every connection registered", async {
        while provider.connection_count() < N + 1 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    let change = region.change();
    let live = change.bytes_allocated as isize - change.bytes_deallocated as isize
        + change.bytes_reallocated;
    let per_conn = live / N as isize;
    eprintln!("live heap per idle TLS connection (both ends): {per_conn} bytes");
    assert!(
        per_conn < 128 * 1024,
        "{per_conn} bytes per idle TLS connection"
    );
    drop((warm, held));
    provider.shutdown().await;
}

fn client_config(ca: &Path) -> std::sync::Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(ca).unwrap();
    for cert in rustls_pki_types::pem::PemObject::pem_slice_iter(&pem) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    std::sync::Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}
