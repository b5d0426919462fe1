//! The provider's metrics through the [`metrics`] facade, and `GET /metrics` in the
//! Prometheus text format ([`MetricsEndpoint`], feature `prometheus`).
//!
//! The hot path never calls the facade: traffic is counted in per-thread shards
//! (`stats.rs`), and a publisher adds what changed to the facade's counters once a second
//! and right before each scrape. A recorder of your own (statsd, OpenTelemetry, …) gets
//! the same metrics, at most a second late. The publisher's metric handles are resolved
//! when the provider binds: install your recorder before [`bind`](crate::ProviderBuilder::bind)
//! ([`ProviderBuilder::metrics`](crate::ProviderBuilder::metrics) installs ours there,
//! before anything is resolved). A recorder installed later sees nothing from a provider
//! that was already bound.
//!
//! Every metric, its type, labels and meaning are in the README's metrics table.

use crate::stats::{ProviderStats, TransportStats, CONNECT_RESULTS, DISCONNECT_REASONS};
use metrics::{Counter, Gauge, Histogram, Unit};
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often the publisher hands the counters to the facade.
const PUBLISH_EVERY: Duration = Duration::from_secs(1);

/// The bucket bounds, in seconds (100 µs to 30 s), of every `…_seconds` histogram that
/// [`MetricsEndpoint::install`]'s recorder serves; the typed layer counts call durations
/// in the same buckets. Give them to a `PrometheusBuilder` of your own
/// (`set_buckets_for_metric`) to get the same histograms from it.
pub const SECONDS_BUCKETS: [f64; 17] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

/// Runs when the provider hands its counters to the facade (see
/// [`ProviderBuilder::on_metrics_flush`](crate::ProviderBuilder::on_metrics_flush)).
pub(crate) type MetricsFlush = Arc<dyn Fn() + Send + Sync>;

#[cfg(feature = "prometheus")]
mod seconds;

/// The transport's metric names.
pub(crate) mod names {
    pub(crate) const CONNECTIONS: &str = "cluster_connections";
    pub(crate) const CONNECTS: &str = "cluster_connects_total";
    pub(crate) const DISCONNECTS: &str = "cluster_disconnects_total";
    pub(crate) const MESSAGES_RECEIVED: &str = "cluster_messages_received_total";
    pub(crate) const MESSAGES_SENT: &str = "cluster_messages_sent_total";
    pub(crate) const BYTES_RECEIVED: &str = "cluster_received_bytes_total";
    pub(crate) const BYTES_SENT: &str = "cluster_sent_bytes_total";
    pub(crate) const HEARTBEAT_RTT: &str = "cluster_heartbeat_rtt_seconds";
    pub(crate) const TLS_HANDSHAKES: &str = "cluster_tls_handshakes_total";
    pub(crate) const DEFLATE_RAW: &str = "cluster_deflate_raw_bytes_total";
    pub(crate) const DEFLATE_COMPRESSED: &str = "cluster_deflate_compressed_bytes_total";
    pub(crate) const DEFLATE_RATIO: &str = "cluster_deflate_ratio";
}

const KINDS: [&str; 2] = ["text", "binary"];

/// Describes the metrics to the recorder (once per process; a recorder keeps the first).
fn describe() {
    static DESCRIBED: Once = Once::new();
    DESCRIBED.call_once(|| {
        use metrics::{describe_counter, describe_gauge, describe_histogram};
        describe_gauge!(names::CONNECTIONS, "Connections open now.");
        describe_counter!(names::CONNECTS, "Upgrade attempts, by result.");
        describe_counter!(names::DISCONNECTS, "Connections closed, by reason.");
        describe_counter!(names::MESSAGES_RECEIVED, "Messages received, by type.");
        describe_counter!(names::MESSAGES_SENT, "Messages sent, by type.");
        describe_counter!(
            names::BYTES_RECEIVED,
            Unit::Bytes,
            "Payload bytes received (after inflating), by type."
        );
        describe_counter!(
            names::BYTES_SENT,
            Unit::Bytes,
            "Payload bytes sent (before compressing), by type."
        );
        describe_histogram!(
            names::HEARTBEAT_RTT,
            Unit::Seconds,
            "Time from a heartbeat PING to its PONG."
        );
        describe_counter!(names::TLS_HANDSHAKES, "TLS handshakes, by result.");
        describe_counter!(
            names::DEFLATE_RAW,
            Unit::Bytes,
            "Payload bytes sent to connections with permessage-deflate, uncompressed."
        );
        describe_counter!(
            names::DEFLATE_COMPRESSED,
            Unit::Bytes,
            "The same payloads as sent, compressed where it paid."
        );
        describe_gauge!(
            names::DEFLATE_RATIO,
            "Compressed bytes per uncompressed byte sent since the start."
        );
    });
}

/// The histogram of heartbeat round trips, resolved when the provider binds.
pub(crate) fn heartbeat_rtt() -> Histogram {
    metrics::histogram!(names::HEARTBEAT_RTT)
}

/// Hands the provider's counters to the facade: what changed since the last time, so
/// several providers in one process add up.
pub(crate) struct Publisher {
    stats: Arc<TransportStats>,
    /// Layers above that count on their own, flushed first.
    flushes: Vec<MetricsFlush>,
    last: ProviderStats,
    connections: Gauge,
    connects: [Counter; 5],
    disconnects: [Counter; 7],
    messages_received: [Counter; 2],
    messages_sent: [Counter; 2],
    bytes_received: [Counter; 2],
    bytes_sent: [Counter; 2],
    tls_handshakes: [Counter; 2],
    deflate_raw: Counter,
    deflate_compressed: Counter,
    deflate_ratio: Gauge,
    /// The endpoint whose recorder's histograms need draining, if any.
    #[cfg(feature = "prometheus")]
    endpoint: Option<MetricsEndpoint>,
}

impl Publisher {
    /// Resolves every handle against the recorder installed now.
    pub(crate) fn new(
        stats: Arc<TransportStats>,
        flushes: Vec<MetricsFlush>,
        #[cfg(feature = "prometheus")] endpoint: Option<MetricsEndpoint>,
    ) -> Self {
        describe();
        let by = |name: &'static str, label: &'static str, values: [&'static str; 2]| {
            values.map(|v| metrics::counter!(name, label => v))
        };
        Self {
            stats,
            flushes,
            last: ProviderStats::default(),
            connections: metrics::gauge!(names::CONNECTIONS),
            connects: CONNECT_RESULTS.map(|r| metrics::counter!(names::CONNECTS, "result" => r)),
            disconnects: DISCONNECT_REASONS
                .map(|r| metrics::counter!(names::DISCONNECTS, "reason" => r)),
            messages_received: by(names::MESSAGES_RECEIVED, "type", KINDS),
            messages_sent: by(names::MESSAGES_SENT, "type", KINDS),
            bytes_received: by(names::BYTES_RECEIVED, "type", KINDS),
            bytes_sent: by(names::BYTES_SENT, "type", KINDS),
            tls_handshakes: by(names::TLS_HANDSHAKES, "result", ["ok", "failed"]),
            deflate_raw: metrics::counter!(names::DEFLATE_RAW),
            deflate_compressed: metrics::counter!(names::DEFLATE_COMPRESSED),
            deflate_ratio: metrics::gauge!(names::DEFLATE_RATIO),
            #[cfg(feature = "prometheus")]
            endpoint,
        }
    }

    /// Runs the layers' flushes, adds what changed since the last call, and drains the
    /// Prometheus recorder's histogram samples into their buckets (so they cannot pile up
    /// between scrapes).
    pub(crate) fn publish(&mut self) {
        for flush in &self.flushes {
            flush();
        }
        #[cfg(feature = "prometheus")]
        if let Some(endpoint) = &self.endpoint {
            endpoint::upkeep(endpoint);
        }
        let now = self.stats.snapshot();
        let last = &self.last;
        let add = |counter: &Counter, now: u64, last: u64| {
            if now > last {
                counter.increment(now - last);
            }
        };
        self.connections
            .increment(now.connections as f64 - last.connections as f64);
        for i in 0..5 {
            add(&self.connects[i], now.connects[i], last.connects[i]);
        }
        for i in 0..7 {
            add(
                &self.disconnects[i],
                now.disconnects[i],
                last.disconnects[i],
            );
        }
        for i in 0..2 {
            let (r, lr) = (now.received[i], last.received[i]);
            add(&self.messages_received[i], r.messages, lr.messages);
            add(&self.bytes_received[i], r.bytes, lr.bytes);
            let (s, ls) = (now.sent[i], last.sent[i]);
            add(&self.messages_sent[i], s.messages, ls.messages);
            add(&self.bytes_sent[i], s.bytes, ls.bytes);
            add(
                &self.tls_handshakes[i],
                now.tls_handshakes[i],
                last.tls_handshakes[i],
            );
        }
        let (deflate, last_deflate) = (now.deflate_sent, last.deflate_sent);
        add(&self.deflate_raw, deflate.raw, last_deflate.raw);
        add(
            &self.deflate_compressed,
            deflate.compressed,
            last_deflate.compressed,
        );
        if let Some(ratio) = deflate.ratio() {
            self.deflate_ratio.set(ratio);
        }
        self.last = now;
    }

    /// Takes this provider's open connections out of the gauge (it stopped).
    fn retire(&mut self) {
        self.connections.decrement(self.last.connections as f64);
        self.last.connections = 0;
    }
}

/// Publishes once a second until `stop`, then a last time.
pub(crate) async fn run(publisher: Arc<Mutex<Publisher>>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(PUBLISH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => lock(&publisher).publish(),
        }
    }
    let mut publisher = lock(&publisher);
    publisher.publish();
    publisher.retire();
}

fn lock(publisher: &Mutex<Publisher>) -> std::sync::MutexGuard<'_, Publisher> {
    publisher.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(feature = "prometheus")]
pub use endpoint::{MetricsEndpoint, MetricsError};

#[cfg(feature = "prometheus")]
mod endpoint {
    use super::seconds::{SecondsHistograms, SecondsRecorder};
    use super::{lock, Publisher};
    use crate::http::{HttpRequest, HttpResponse, HttpRoutes};
    use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
    use std::fmt;
    use std::sync::{Arc, Mutex, OnceLock};
    use subtle::ConstantTimeEq;

    /// `GET /metrics` on the provider's port, in the Prometheus text format; give it to
    /// [`ProviderBuilder::metrics`](crate::ProviderBuilder::metrics).
    ///
    /// It renders a [`metrics_exporter_prometheus`] recorder: the one [`install`](Self::install)
    /// sets up as the process's global recorder (with `…_seconds` histograms counted in
    /// fixed buckets beside it, [`SECONDS_BUCKETS`](crate::SECONDS_BUCKETS)), or one of
    /// yours ([`from_handle`](Self::from_handle)). With a [`bearer_token`](Self::bearer_token),
    /// a scrape without `Authorization: Bearer <token>` gets 401.
    ///
    /// ```
    /// use cluster_transport::{MetricsEndpoint, Provider};
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let provider = Provider::builder()
    ///     .host("127.0.0.1")
    ///     .port(0)
    ///     .metrics(MetricsEndpoint::install()?.bearer_token("SCRAPE_TOKEN"))
    ///     .bind()
    ///     .await?;
    /// // curl -H 'Authorization: Bearer SCRAPE_TOKEN' http://127.0.0.1:{port}/metrics
    /// # provider.shutdown().await;
    /// # Ok(()) }
    /// ```
    #[derive(Clone)]
    pub struct MetricsEndpoint {
        handle: PrometheusHandle,
        /// The `…_seconds` histograms of [`install`](Self::install)'s recorder.
        histograms: Option<Arc<SecondsHistograms>>,
        token: Option<Arc<str>>,
    }

    /// The global recorder could not be installed.
    #[derive(Debug, thiserror::Error)]
    #[error("another metrics recorder is installed; pass its PrometheusHandle to MetricsEndpoint::from_handle")]
    pub struct MetricsError(());

    impl MetricsEndpoint {
        /// Installs a Prometheus recorder as the process's global `metrics` recorder, and
        /// renders it. Histograms named `…_seconds` are counted in the fixed buckets
        /// [`SECONDS_BUCKETS`](crate::SECONDS_BUCKETS) (a sample is one atomic add, and
        /// `record_many` of `n` samples too); other histograms are the exporter's
        /// summaries. Later calls (a second provider, say) render the same recorder.
        ///
        /// # Errors
        /// [`MetricsError`] when a recorder not installed by this function is already the
        /// global one: use [`from_handle`](Self::from_handle) with yours.
        pub fn install() -> Result<Self, MetricsError> {
            static INSTALLED: OnceLock<MetricsEndpoint> = OnceLock::new();
            static INSTALLING: Mutex<()> = Mutex::new(());
            let _one_at_a_time = INSTALLING.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(endpoint) = INSTALLED.get() {
                return Ok(endpoint.clone());
            }
            let inner = PrometheusBuilder::new().build_recorder();
            let handle = inner.handle();
            let histograms = Arc::new(SecondsHistograms::default());
            let recorder = SecondsRecorder {
                inner,
                histograms: Arc::clone(&histograms),
            };
            metrics::set_global_recorder(recorder).map_err(|_| MetricsError(()))?;
            let endpoint = Self {
                handle,
                histograms: Some(histograms),
                token: None,
            };
            let _ = INSTALLED.set(endpoint.clone());
            Ok(endpoint)
        }

        /// Renders a Prometheus recorder you built and installed yourself.
        pub fn from_handle(handle: PrometheusHandle) -> Self {
            Self {
                handle,
                histograms: None,
                token: None,
            }
        }

        /// Answers only scrapes that send `Authorization: Bearer <token>` (compared in
        /// constant time); others get 401.
        pub fn bearer_token(mut self, token: impl Into<String>) -> Self {
            self.token = Some(Arc::from(token.into()));
            self
        }

        /// `routes` with `/metrics` first.
        pub(crate) fn route(
            self,
            mut routes: HttpRoutes,
            publisher: Arc<Mutex<Publisher>>,
        ) -> HttpRoutes {
            routes.add_first("/metrics".into(), move |request| {
                let response = self.answer(&request, &publisher);
                async move { response }
            });
            routes
        }

        /// The route's answer to one request.
        fn answer(&self, request: &HttpRequest, publisher: &Mutex<Publisher>) -> HttpResponse {
            if request.method() != "GET" {
                return HttpResponse::text(405, "method not allowed").header("Allow", "GET");
            }
            if let Some(expected) = &self.token {
                let given = request.bearer_token().unwrap_or("");
                if !bool::from(given.as_bytes().ct_eq(expected.as_bytes())) {
                    return HttpResponse::text(401, "unauthorized")
                        .header("WWW-Authenticate", "Bearer");
                }
            }
            lock(publisher).publish();
            let mut text = self.handle.render();
            if let Some(histograms) = &self.histograms {
                histograms.render(&mut text);
            }
            HttpResponse::new(200, "text/plain; version=0.0.4; charset=utf-8", text)
        }
    }

    impl fmt::Debug for MetricsEndpoint {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("MetricsEndpoint")
                .field("token", &self.token.as_ref().map(|_| "<redacted>"))
                .finish_non_exhaustive()
        }
    }

    /// Keeps the recorder's histograms drained between scrapes.
    pub(crate) fn upkeep(endpoint: &MetricsEndpoint) {
        endpoint.handle.run_upkeep();
    }
}
