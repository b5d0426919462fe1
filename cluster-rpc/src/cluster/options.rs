//! What a hub needs to join a cluster: where NATS is, the cluster's subject prefix, and
//! the hub's name.

use super::ClusterError;
use crate::jobs::store::JetStreamOptions;
use crate::pubsub::check;
use std::time::Duration;

/// Default subject prefix of a cluster's NATS subjects: `cluster`.
pub const DEFAULT_PREFIX: &str = "cluster";
/// Default bound of what a hub has queued for NATS and not yet handed to the client:
/// 64 MiB. Publications past it are dropped and counted (pub/sub is at-most-once).
pub const DEFAULT_MAX_PENDING_BYTES: usize = 64 * 1024 * 1024;

/// How a hub joins a cluster of hubs on NATS ([`HubBuilder::cluster`](crate::HubBuilder::cluster)).
///
/// ```
/// use cluster_rpc::cluster::ClusterOptions;
/// let options = ClusterOptions::new("nats://127.0.0.1:4222")
///     .server("nats://127.0.0.1:4223")
///     .prefix("shop")
///     .hub_name("hub-eu-1");
/// assert_eq!(options.servers().len(), 2);
/// ```
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub(crate) servers: Vec<String>,
    pub(crate) prefix: String,
    pub(crate) hub_name: Option<String>,
    pub(crate) connect_timeout: Duration,
    pub(crate) max_reconnect_delay: Duration,
    pub(crate) max_pending_bytes: usize,
    pub(crate) presence_interval: Duration,
    pub(crate) jobs: Option<JetStreamOptions>,
}

impl ClusterOptions {
    /// Options for a cluster on the NATS server at `url` (`nats://host:port`, or
    /// `host:port`).
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            servers: vec![url.into()],
            prefix: DEFAULT_PREFIX.to_owned(),
            hub_name: None,
            connect_timeout: Duration::from_secs(5),
            max_reconnect_delay: Duration::from_secs(2),
            max_pending_bytes: DEFAULT_MAX_PENDING_BYTES,
            presence_interval: Duration::from_secs(1),
            jobs: Some(JetStreamOptions::default()),
        }
    }

    /// Adds another server of the same NATS cluster; the client picks among them and
    /// moves to another when its server goes.
    pub fn server(mut self, url: impl Into<String>) -> Self {
        self.servers.push(url.into());
        self
    }

    /// The first token(s) of every NATS subject the cluster uses; hubs with the same
    /// prefix on the same NATS form one cluster, so several clusters can share a server.
    /// A subject without wildcards (`shop`, `shop.eu`). Default: [`DEFAULT_PREFIX`].
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// This hub's name in the cluster (in logs, the NATS connection name, and the
    /// answers of a broadcast). Default: its id.
    pub fn hub_name(mut self, name: impl Into<String>) -> Self {
        self.hub_name = Some(name.into());
        self
    }

    /// How long the first connection to NATS may take before
    /// [`start`](crate::HubBuilder::start) fails. Default: 5 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The longest wait between two attempts to reconnect to NATS (the waits grow up to
    /// it; the hub retries forever). Default: 2 s.
    pub fn max_reconnect_delay(mut self, delay: Duration) -> Self {
        self.max_reconnect_delay = delay;
        self
    }

    /// The most bytes of publications and call frames queued for NATS at once (while
    /// NATS is slow or away); past it, publications are dropped and calls fail
    /// [`Backpressure`](crate::RpcErrorKind::Backpressure). Default:
    /// [`DEFAULT_MAX_PENDING_BYTES`].
    pub fn max_pending_bytes(mut self, bytes: usize) -> Self {
        self.max_pending_bytes = bytes;
        self
    }

    /// How often the hub tells the others it is alive. A hub not heard from for three
    /// intervals is taken as gone: a broadcast no longer waits for it (nor names it as
    /// missing). Shorter notices a dead hub sooner, for a little more traffic. Default:
    /// 1 s.
    pub fn presence_interval(mut self, interval: Duration) -> Self {
        self.presence_interval = interval;
        self
    }

    /// How the hub keeps its jobs on NATS JetStream (see
    /// [`jobs::store::jetstream`](crate::jobs::store::jetstream)): the ack wait, replicas,
    /// duplicate window and the rest. Its URL, servers and prefix are ignored: the
    /// cluster's are used, on a connection of the store's own. The result retention and
    /// most results kept are the hub's queue's
    /// ([`QueueOptions`](crate::QueueOptions)).
    ///
    /// Jobs are on JetStream by default in cluster mode, so that a job submitted on one
    /// hub runs on a worker of any hub and its result reaches the submitter wherever it
    /// is connected: a hub that kept its jobs to itself would split the cluster's workers.
    /// A store given to the hub ([`HubBuilder::jobs_store`](crate::HubBuilder::jobs_store),
    /// [`jobs_storage`](crate::HubBuilder::jobs_storage)) takes precedence.
    ///
    /// ```
    /// use cluster_rpc::cluster::ClusterOptions;
    /// use cluster_rpc::jobs::store::JetStreamOptions;
    /// use std::time::Duration;
    /// let options = ClusterOptions::new("nats://127.0.0.1:4222")
    ///     .jobs(JetStreamOptions::default().ack_wait(Duration::from_secs(10)).replicas(3));
    /// assert_eq!(options.jobs_options().map(|j| j.ack_wait), Some(Duration::from_secs(10)));
    /// ```
    pub fn jobs(mut self, options: JetStreamOptions) -> Self {
        self.jobs = Some(options);
        self
    }

    /// Keeps the hub's jobs to itself (its own store and workers), not on JetStream: for
    /// a NATS server without JetStream, or hubs whose workers are all local.
    pub fn local_jobs(mut self) -> Self {
        self.jobs = None;
        self
    }

    /// The JetStream settings of the hub's jobs; `None` with [`local_jobs`](Self::local_jobs).
    pub fn jobs_options(&self) -> Option<&JetStreamOptions> {
        self.jobs.as_ref()
    }

    /// The JetStream settings of the hub's jobs, with the cluster's servers and prefix and
    /// the queue's result retention.
    pub(crate) fn jetstream(&self, queue: &crate::QueueOptions) -> Option<JetStreamOptions> {
        let mut jobs = self.jobs.clone()?;
        let mut servers = self.servers.iter().cloned();
        jobs.url = servers.next().unwrap_or_default();
        jobs.servers = servers.collect();
        jobs.prefix.clone_from(&self.prefix);
        jobs.result_retention = queue.result_retention;
        jobs.max_results = queue.max_results;
        Some(jobs)
    }

    /// The NATS servers.
    pub fn servers(&self) -> &[String] {
        &self.servers
    }

    /// The subject prefix.
    pub fn subject_prefix(&self) -> &str {
        &self.prefix
    }

    /// Refuses options a cluster cannot run with.
    pub(crate) fn validate(&self) -> Result<(), ClusterError> {
        if self.servers.is_empty() {
            return Err(ClusterError::Options("no NATS server given".into()));
        }
        check(&self.prefix, false).map_err(|why| {
            ClusterError::Options(format!("the prefix {:?} is {why}", self.prefix))
        })?;
        if self.connect_timeout.is_zero()
            || self.max_reconnect_delay.is_zero()
            || self.presence_interval.is_zero()
        {
            return Err(ClusterError::Options(
                "the connect timeout, reconnect delay and presence interval must be above zero"
                    .into(),
            ));
        }
        if self.max_pending_bytes == 0 {
            return Err(ClusterError::Options(
                "max_pending_bytes must be above zero".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_what_cannot_run() {
        assert!(ClusterOptions::new("nats://127.0.0.1:1").validate().is_ok());
        for bad in ["", "a..b", "a.*", "a.>", "has space", "__jobs"] {
            let error = ClusterOptions::new("x").prefix(bad).validate().unwrap_err();
            assert!(error.to_string().contains("prefix"), "{bad:?}: {error}");
        }
        let none = ClusterOptions {
            servers: Vec::new(),
            ..ClusterOptions::new("x")
        };
        assert!(none.validate().is_err());
        let zero = ClusterOptions::new("x").connect_timeout(Duration::ZERO);
        assert!(zero.validate().is_err());
        assert!(ClusterOptions::new("x")
            .max_pending_bytes(0)
            .validate()
            .is_err());
    }

    #[test]
    fn jobs_are_on_jetstream_by_default_with_the_clusters_servers_and_prefix() {
        let queue = crate::QueueOptions::default().result_retention(Duration::from_secs(9));
        let options = ClusterOptions::new("nats://a:1")
            .server("nats://b:2")
            .prefix("shop.eu");
        let jobs = options.jetstream(&queue).unwrap();
        assert_eq!(jobs.url, "nats://a:1");
        assert_eq!(jobs.servers, ["nats://b:2"]);
        assert_eq!(jobs.prefix, "shop.eu");
        assert_eq!(jobs.result_retention, Duration::from_secs(9));
        let ack = Duration::from_millis(700);
        let tuned = options
            .clone()
            .jobs(JetStreamOptions::default().ack_wait(ack));
        assert_eq!(tuned.jetstream(&queue).unwrap().ack_wait, ack);
        assert!(options.local_jobs().jetstream(&queue).is_none());
    }
}
