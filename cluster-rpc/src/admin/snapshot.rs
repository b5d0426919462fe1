//! Building a [`Snapshot`] of a hub for one viewer: their page of connections, filtered
//! on the server, and the capped lists of everything else.

use super::dead::Shown;
use super::history::Sampler;
use super::view::{
    ConnectionPage, ConnectionRow, DeadRow, HubSummary, JobsView, MemberRef, ServiceRow, Snapshot,
    SubjectList, SubjectRow, WorkerRow, MAX_ROWS, SAMPLE_MEMBERS,
};
use crate::hub::{Hub, SERVICES_PARAMETER};
use crate::jobs::JobStats;
use cluster_transport::{Connection, Parameters};
use std::collections::{BTreeMap, HashSet};
use std::time::{SystemTime, UNIX_EPOCH};
use uuid::Uuid;

/// Rows per page when the viewer asks for none, and at most.
pub(crate) const DEFAULT_PER_PAGE: usize = 50;
pub(crate) const MAX_PER_PAGE: usize = 200;
/// Longest filter kept, in characters.
const MAX_FILTER_CHARS: usize = 200;

/// What a value shows instead of a secret.
pub(crate) const REDACTED: &str = "<redacted>";

/// The viewer's choice of connections: a page of those matching a filter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ConnectionQuery {
    pub(crate) page: usize,
    pub(crate) per_page: usize,
    /// Lowercase; matches ids, IPs and parameter keys and (unredacted) values.
    pub(crate) filter: String,
}

impl ConnectionQuery {
    /// From `?page=&per_page=&filter=`, clamped: a bad number is the default.
    pub(crate) fn from_parameters(parameters: &Parameters) -> Self {
        let number = |key: &str| parameters.get(key).and_then(|v| v.parse::<usize>().ok());
        Self {
            page: number("page").unwrap_or(0),
            per_page: number("per_page")
                .unwrap_or(DEFAULT_PER_PAGE)
                .clamp(1, MAX_PER_PAGE),
            filter: parameters
                .get("filter")
                .map(|f| f.trim().chars().take(MAX_FILTER_CHARS).collect::<String>())
                .unwrap_or_default()
                .to_lowercase(),
        }
    }
}

/// Which parameter values are secrets: the provider's auth keys, and any key that names
/// a secret (`key`, `token`, `secret`, `password`, `auth`, `credential`).
#[derive(Debug, Clone)]
pub(crate) struct Redactor {
    auth_keys: HashSet<String>,
}

impl Redactor {
    pub(crate) fn new(auth_keys: impl IntoIterator<Item = String>) -> Self {
        Self {
            auth_keys: auth_keys.into_iter().collect(),
        }
    }

    pub(crate) fn is_secret(&self, key: &str) -> bool {
        const SECRET_WORDS: [&str; 7] = [
            "key",
            "token",
            "secret",
            "password",
            "passwd",
            "auth",
            "credential",
        ];
        let lower = key.to_ascii_lowercase();
        self.auth_keys.contains(key) || SECRET_WORDS.iter().any(|w| lower.contains(w))
    }

    /// The parameters sorted by key, secret values replaced.
    fn redact(&self, parameters: &Parameters) -> Vec<(String, String)> {
        let mut pairs: Vec<(String, String)> = parameters
            .iter()
            .map(|(k, v)| {
                let value = if self.is_secret(k) { REDACTED } else { v };
                (k.clone(), value.to_owned())
            })
            .collect();
        pairs.sort();
        pairs
    }

    /// Whether `filter` (lowercase) appears in what the viewer may see of the connection.
    fn matches(&self, conn: &Connection, filter: &str) -> bool {
        filter.is_empty()
            || conn.id().to_string().contains(filter)
            || conn.ip().to_string().contains(filter)
            || conn.parameters().iter().any(|(k, v)| {
                k.to_lowercase().contains(filter)
                    || (!self.is_secret(k) && v.to_lowercase().contains(filter))
            })
    }
}

/// A hub's snapshot as one viewer asked for it.
pub(crate) fn take(
    hub: &Hub,
    dead: Shown,
    sampler: &Sampler,
    redactor: &Redactor,
    query: &ConnectionQuery,
    role: &str,
) -> Snapshot {
    let connections: Vec<Connection> = hub.provider().connections().into_values().collect();
    let members = hub.members();
    let member_ids: HashSet<Uuid> = members.iter().map(Connection::id).collect();
    let stats = hub.provider().stats();
    let subjects = hub.subjects();
    Snapshot {
        time_ms: millis(SystemTime::now()),
        role: role.to_owned(),
        hub: HubSummary {
            connections: connections.len(),
            members: members.len(),
            subscriptions: subjects.iter().map(|(_, n)| n).sum(),
            uptime_s: sampler.uptime_s(),
            messages_received: stats.messages_received(),
            messages_sent: stats.messages_sent(),
        },
        rates: sampler.current(),
        history: sampler.history(),
        connections: connection_page(connections, &member_ids, redactor, query),
        services: services(hub, &members),
        subjects: subject_list(subjects),
        jobs: jobs_view(hub.jobs().stats(), dead),
    }
}

fn connection_page(
    connections: Vec<Connection>,
    members: &HashSet<Uuid>,
    redactor: &Redactor,
    query: &ConnectionQuery,
) -> ConnectionPage {
    let total = connections.len();
    let mut matching: Vec<Connection> = connections
        .into_iter()
        .filter(|c| redactor.matches(c, &query.filter))
        .collect();
    matching.sort_by_key(|c| (c.connected_at(), c.id()));
    let rows = matching
        .iter()
        .skip(query.page.saturating_mul(query.per_page))
        .take(query.per_page)
        .map(|c| ConnectionRow {
            id: c.id().to_string(),
            ip: c.ip().to_string(),
            parameters: redactor.redact(c.parameters()),
            compressed: c.is_compressed(),
            backpressure: c.backpressure(),
            strikes: c.strikes(),
            connected_ms: millis(c.connected_at()),
            member: members.contains(&c.id()),
        })
        .collect();
    ConnectionPage {
        total,
        matching: matching.len(),
        page: query.page,
        per_page: query.per_page,
        filter: query.filter.clone(),
        rows,
    }
}

fn services(hub: &Hub, members: &[Connection]) -> Vec<ServiceRow> {
    let mut rows: BTreeMap<String, ServiceRow> = BTreeMap::new();
    // `__`-names are the hub's own plumbing (the job queue's service), not the user's.
    for name in hub.services().into_iter().filter(|n| !n.starts_with("__")) {
        rows.entry(name.to_owned()).or_default().on_hub = true;
    }
    for member in members {
        let Some(list) = member.parameters().get(SERVICES_PARAMETER) else {
            continue;
        };
        for name in list.split(',').filter(|s| !s.is_empty()) {
            let row = rows.entry(name.to_owned()).or_default();
            row.members += 1;
            if row.sample.len() < SAMPLE_MEMBERS {
                row.sample.push(MemberRef {
                    id: member.id().to_string(),
                    name: member.parameters().get("name").cloned(),
                });
            }
        }
    }
    // Member-announced names come from the network: cap how many distinct ones are shown.
    rows.into_iter()
        .take(MAX_ROWS)
        .map(|(name, row)| ServiceRow { name, ..row })
        .collect()
}

fn subject_list(mut subjects: Vec<(String, usize)>) -> SubjectList {
    subjects.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    SubjectList {
        total: subjects.len(),
        rows: subjects
            .into_iter()
            .take(MAX_ROWS)
            .map(|(pattern, subscribers)| SubjectRow {
                pattern,
                subscribers,
            })
            .collect(),
    }
}

fn jobs_view(stats: JobStats, dead: Shown) -> JobsView {
    let mut workers = stats.workers;
    workers.sort_by(|a, b| b.active.cmp(&a.active).then_with(|| a.id.cmp(&b.id)));
    JobsView {
        waiting: stats.waiting,
        delayed: stats.delayed,
        active: stats.active,
        completed: stats.completed,
        failed: stats.failed,
        dead: dead.count,
        dead_more: dead.more,
        workers_total: workers.len(),
        workers: workers
            .into_iter()
            .take(MAX_ROWS)
            .map(|w| WorkerRow {
                id: w.id.to_string(),
                name: w.name,
                credits: w.credits,
                active: w.active,
                completed: w.completed,
                per_second: w.per_second,
            })
            .collect(),
        dead_letters: dead
            .letters
            .into_iter()
            .rev()
            .map(|d| DeadRow {
                id: Uuid::from_u128(d.id).to_string(),
                name: d.name,
                attempts: d.attempts,
                last_error: d.last_error,
            })
            .collect(),
    }
}

pub(crate) fn millis(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_clamped() {
        let p = |pairs: &[(&str, &str)]| {
            ConnectionQuery::from_parameters(
                &pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            )
        };
        assert_eq!(
            p(&[]),
            ConnectionQuery {
                page: 0,
                per_page: DEFAULT_PER_PAGE,
                filter: String::new()
            }
        );
        let q = p(&[
            ("page", "3"),
            ("per_page", "100000"),
            ("filter", " Worker "),
        ]);
        assert_eq!(
            (q.page, q.per_page, q.filter.as_str()),
            (3, MAX_PER_PAGE, "worker")
        );
        let q = p(&[("page", "-1"), ("per_page", "0")]);
        assert_eq!((q.page, q.per_page), (0, 1));
        let long = "x".repeat(1000);
        assert_eq!(p(&[("filter", &long)]).filter.len(), MAX_FILTER_CHARS);
    }

    #[test]
    fn secrets_are_redacted() {
        let redactor = Redactor::new(["shared".to_owned()]);
        let parameters: Parameters = [
            ("shared", "s3"),
            ("api_key", "k"),
            ("Token", "t"),
            ("name", "worker-1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let shown = redactor.redact(&parameters);
        assert_eq!(
            shown,
            [
                ("Token".to_owned(), REDACTED.to_owned()),
                ("api_key".to_owned(), REDACTED.to_owned()),
                ("name".to_owned(), "worker-1".to_owned()),
                ("shared".to_owned(), REDACTED.to_owned()),
            ]
        );
    }

    #[test]
    fn subjects_most_subscribed_first_and_capped() {
        let subjects = (0..MAX_ROWS + 10)
            .map(|i| (format!("s.{i}"), i))
            .collect::<Vec<_>>();
        let list = subject_list(subjects);
        assert_eq!(list.total, MAX_ROWS + 10);
        assert_eq!(list.rows.len(), MAX_ROWS);
        assert_eq!(list.rows[0].subscribers, MAX_ROWS + 9);
    }
}
