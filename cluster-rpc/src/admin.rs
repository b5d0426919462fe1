//! The admin page: `GET /admin` on the hub's port, a live view of the hub for operators,
//! and the JSON API behind it. Off unless [`HubBuilder::admin`](crate::HubBuilder::admin)
//! gives it a token (`cluster provider --admin-token`).
//!
//! ```
//! use cluster_rpc::{AdminOptions, Hub};
//! use cluster_transport::Provider;
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let hub = Hub::builder(Provider::builder().host("127.0.0.1").port(0))
//!     .admin(AdminOptions::new("ADMIN_TOKEN").read_only_token("VIEW_TOKEN"))
//!     .start()
//!     .await?;
//! println!("http://127.0.0.1:{}/admin?token=ADMIN_TOKEN", hub.provider().port());
//! # hub.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! # Access
//!
//! Every request needs a token, as `Authorization: Bearer <token>` or as `?token=<token>`
//! (so a bookmark works; the page then takes it out of its address with
//! `history.replaceState` and sends it only in headers). Tokens are compared in constant
//! time. Without a valid one: 401. The admin token may act; the read-only token sees the
//! same page and gets 403 for every action. Each action is logged (`info`) with the role
//! that did it and the client's address. Serve the hub over TLS, or keep its port on a
//! private network, where the token must not be seen by others.
//!
//! # What it shows
//!
//! Updated every second over a server-sent event stream: connections (id, IP, parameters
//! with secret values redacted, compression, backpressure, strikes, connected since) with
//! a disconnect button; services and the members serving them; subjects with subscriber
//! counts; the job queue (counts by state, a throughput chart over the last five
//! minutes, each worker's credits and load, dead letters with requeue and delete, a job
//! looked up by id with cancel); the hub's message rates. In cluster mode the dead
//! letters are the cluster's (its JetStream dead-letter stream, the oldest 100, read at
//! most every 5 s while the page is open), and requeue and delete act on them from any
//! hub; the counts, workers and job lookup are this hub's.
//!
//! Connections are paged and filtered on the server: at 10,000 connections a viewer gets
//! the page it looks at, never every row each second. Other lists that grow with the hub
//! are capped (see [`view`]).
//!
//! # API
//!
//! | request | answer |
//! |---|---|
//! | `GET /admin` | the page (HTML, CSS and JS embedded in the binary) |
//! | `GET /admin/api/snapshot?page=&per_page=&filter=` | one [`view::Snapshot`] (JSON) |
//! | `GET /admin/api/feed?page=&per_page=&filter=` | a `text/event-stream` of `snapshot` events, one a second |
//! | `GET /admin/api/jobs/{id}` | a [`JobInfo`](crate::JobInfo), or 404 |
//! | `POST /admin/api/connections/{id}/disconnect` | closes the connection (1008) |
//! | `POST /admin/api/dead/{id}/requeue` | puts a dead job back in the queue |
//! | `POST /admin/api/dead/{id}/delete` | forgets a dead job |
//! | `POST /admin/api/jobs/{id}/cancel` | cancels a waiting, delayed or running job |
//!
//! Job ids are written as UUIDs. Actions answer `{"ok":true}` or `{"error":"…"}` with a
//! 4xx status.

mod actions;
mod auth;
mod dead;
mod feed;
mod history;
mod page;
mod snapshot;
pub mod view;

use crate::hub::{Hub, WeakHub};
use auth::{Role, Tokens};
use cluster_transport::{HttpRequest, HttpResponse, ProviderBuilder};
use dead::DeadLetters;
use history::{Reading, Sampler};
use snapshot::{ConnectionQuery, Redactor};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

/// How often the hub's counters are sampled, and the feed sends a snapshot.
const TICK: Duration = Duration::from_secs(1);

/// Turns the admin page on, with the token that may act and optionally one that may only
/// look. See the [module docs](self).
#[derive(Clone)]
pub struct AdminOptions {
    tokens: Tokens,
}

impl AdminOptions {
    /// The admin page, for clients that present `admin_token`.
    pub fn new(admin_token: impl Into<String>) -> Self {
        Self {
            tokens: Tokens {
                admin: admin_token.into(),
                read_only: None,
            },
        }
    }

    /// A second token that sees the page but may not act.
    pub fn read_only_token(mut self, token: impl Into<String>) -> Self {
        self.tokens.read_only = Some(token.into());
        self
    }
}

impl fmt::Debug for AdminOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminOptions")
            .field("tokens", &self.tokens)
            .finish()
    }
}

/// The admin page of one hub: its tokens, its samples, and the hub once it runs.
pub(crate) struct Admin {
    tokens: Tokens,
    redactor: Redactor,
    hub: OnceLock<WeakHub>,
    sampler: Mutex<Sampler>,
    dead: Arc<DeadLetters>,
}

impl fmt::Debug for Admin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Admin")
            .field("tokens", &self.tokens)
            .finish_non_exhaustive()
    }
}

/// Adds the `/admin` route to the provider the hub is about to bind.
pub(crate) fn install(
    provider: ProviderBuilder,
    options: AdminOptions,
) -> (ProviderBuilder, Arc<Admin>) {
    let admin = Arc::new(Admin {
        tokens: options.tokens,
        redactor: Redactor::new(provider.options().auth.parameters.keys().cloned()),
        hub: OnceLock::new(),
        sampler: Mutex::new(Sampler::new()),
        dead: Arc::default(),
    });
    let route = Arc::clone(&admin);
    let provider = provider.http_route("/admin", move |request| Arc::clone(&route).handle(request));
    (provider, admin)
}

impl Admin {
    /// Connects the page to its running hub and starts sampling; the sampler stops when
    /// the hub stops or is dropped.
    pub(crate) fn attach(self: &Arc<Self>, hub: &Hub) {
        let _ = self.hub.set(hub.downgrade());
        let admin = Arc::clone(self);
        let stop = hub.stop_token();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tick.tick() => {}
                }
                let Some(hub) = admin.hub() else { break };
                let reading = read(&hub);
                admin.sampler().record(reading);
            }
        });
    }

    fn hub(&self) -> Option<Hub> {
        self.hub.get().and_then(WeakHub::upgrade)
    }

    fn sampler(&self) -> MutexGuard<'_, Sampler> {
        self.sampler.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn snapshot(&self, hub: &Hub, query: &ConnectionQuery, role: Role) -> view::Snapshot {
        let dead = self.dead.shown(hub);
        let sampler = self.sampler();
        snapshot::take(hub, dead, &sampler, &self.redactor, query, role.name())
    }

    async fn handle(self: Arc<Self>, request: HttpRequest) -> HttpResponse {
        let rest = request.path().trim_start_matches("/admin");
        let rest = rest.trim_matches('/').to_owned();
        let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
        let Some(role) = self.tokens.role(&request) else {
            return if segments.is_empty() {
                page::login(request.parameters().contains_key("token"))
            } else {
                json_error(401, "a valid token is required").header("WWW-Authenticate", "Bearer")
            };
        };
        let Some(hub) = self.hub() else {
            return json_error(503, "the hub is not running");
        };
        let query = ConnectionQuery::from_parameters(&request.parameters());
        match (request.method(), segments.as_slice()) {
            ("GET", []) => page::page(),
            ("GET", ["api", "snapshot"]) => json(200, &self.snapshot(&hub, &query, role)),
            ("GET", ["api", "feed"]) => feed::stream(Arc::clone(&self), query, role),
            ("GET", ["api", "jobs", id]) => actions::job(&hub, id),
            ("POST", ["api", ..]) => {
                actions::act(&hub, &self.dead, &request, role, &segments[1..]).await
            }
            (_, [] | ["api", "snapshot" | "feed"] | ["api", "jobs", _]) => {
                json_error(405, "method not allowed")
            }
            _ => json_error(404, "no such page"),
        }
    }
}

/// The hub's counters now.
fn read(hub: &Hub) -> Reading {
    let traffic = hub.provider().stats();
    let jobs = hub.jobs().stats();
    Reading {
        at: Instant::now(),
        messages_in: traffic.messages_received(),
        messages_out: traffic.messages_sent(),
        bytes_in: traffic.bytes_received(),
        bytes_out: traffic.bytes_sent(),
        jobs_completed: jobs.completed,
        jobs_failed: jobs.failed,
    }
}

fn json(status: u16, value: &impl serde::Serialize) -> HttpResponse {
    match serde_json::to_vec(value) {
        Ok(body) => {
            HttpResponse::new(status, "application/json", body).header("Cache-Control", "no-store")
        }
        Err(error) => json_error(500, &format!("encoding failed: {error}")),
    }
}

fn json_error(status: u16, message: &str) -> HttpResponse {
    json_body(status, &serde_json::json!({ "error": message }))
}

fn json_body(status: u16, value: &serde_json::Value) -> HttpResponse {
    HttpResponse::new(status, "application/json", value.to_string())
        .header("Cache-Control", "no-store")
}
