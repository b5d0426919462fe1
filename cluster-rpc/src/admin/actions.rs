//! What an admin may do from the page, and the job lookup. Every action is refused to the
//! read-only role and logged with who did it.

use super::auth::Role;
use super::dead::DeadLetters;
use super::{json, json_body, json_error};
use crate::hub::Hub;
use crate::jobs::{JobError, JobId};
use cluster_transport::{close_code, HttpRequest, HttpResponse};
use uuid::Uuid;

/// The reason a disconnected consumer sees in its close frame.
pub(crate) const DISCONNECT_REASON: &str = "disconnected by an administrator";

/// `GET /admin/api/jobs/{id}`.
pub(super) fn job(hub: &Hub, id: &str) -> HttpResponse {
    let Some(id) = parse_job_id(id) else {
        return json_error(400, "not a job id");
    };
    match hub.jobs().job(id) {
        Some(info) => json(
            200,
            &serde_json::json!({
                "id": Uuid::from_u128(info.id).to_string(),
                "name": info.name,
                "state": info.state,
                "attempts": info.attempts,
                "worker": info.worker.map(|w| w.to_string()),
                "progress": info.progress,
                "last_error": info.last_error,
            }),
        ),
        None => json_error(404, "no waiting, delayed, running or dead job has this id"),
    }
}

/// `POST /admin/api/{what}/{id}/{action}`.
pub(super) async fn act(
    hub: &Hub,
    dead: &DeadLetters,
    request: &HttpRequest,
    role: Role,
    path: &[&str],
) -> HttpResponse {
    let [what, id, action] = path else {
        return json_error(404, "no such action");
    };
    if role != Role::Admin {
        tracing::warn!(
            admin.role = role.name(),
            peer.ip = %request.ip(),
            action = %action,
            "admin action refused to a read-only token"
        );
        return json_error(403, "this token may only view");
    }
    let outcome = match (*what, *action) {
        ("connections", "disconnect") => disconnect(hub, id),
        ("dead", "requeue" | "delete") => match parse_job_id(id) {
            Some(job) => on_dead_letter(hub, dead, job, action).await,
            None => Err(not_a_job_id()),
        },
        ("jobs", "cancel") => parse_job_id(id).ok_or_else(not_a_job_id).and_then(|id| {
            hub.jobs().cancel(id).then_some(()).ok_or((
                404,
                "no waiting, delayed or running job has this id".to_owned(),
            ))
        }),
        _ => return json_error(404, "no such action"),
    };
    match outcome {
        Ok(()) => {
            tracing::info!(
                admin.role = role.name(),
                peer.ip = %request.ip(),
                action = %format!("{what}.{action}"),
                target = %id,
                "admin action"
            );
            json_body(200, &serde_json::json!({ "ok": true }))
        }
        Err((status, message)) => json_error(status, &message),
    }
}

/// Requeues or deletes dead job `id` wherever it is kept: this hub's dead letters, or in
/// cluster mode the cluster's (from any hub, once however many ask).
async fn on_dead_letter(
    hub: &Hub,
    dead: &DeadLetters,
    id: JobId,
    action: &str,
) -> Result<(), (u16, String)> {
    let not_found = || (404, "no dead job has this id".to_owned());
    let done = match action {
        "requeue" => hub
            .jobs()
            .cluster_requeue_dead(id)
            .await
            .map_err(|e| match e {
                JobError::NotFound => not_found(),
                other => (409, other.to_string()),
            }),
        _ => match hub.jobs().cluster_delete_dead(id).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(not_found()),
            Err(e) => Err((409, e.to_string())),
        },
    };
    if done.is_ok() {
        dead.forget(id);
    }
    done
}

fn disconnect(hub: &Hub, id: &str) -> Result<(), (u16, String)> {
    let id = Uuid::parse_str(id).map_err(|_| (400, "not a connection id".to_owned()))?;
    let conn = hub
        .provider()
        .connection(id)
        .ok_or((404, "no open connection has this id".to_owned()))?;
    conn.close(close_code::POLICY, DISCONNECT_REASON);
    Ok(())
}

fn not_a_job_id() -> (u16, String) {
    (400, "not a job id".to_owned())
}

/// A job id as the page writes it (a UUID), or as a decimal number.
fn parse_job_id(id: &str) -> Option<JobId> {
    Uuid::parse_str(id)
        .map(|id| id.as_u128())
        .ok()
        .or_else(|| id.parse::<u128>().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids_as_uuid_or_number() {
        let id = Uuid::new_v4();
        assert_eq!(parse_job_id(&id.to_string()), Some(id.as_u128()));
        assert_eq!(parse_job_id("42"), Some(42));
        assert_eq!(parse_job_id("x"), None);
        assert_eq!(parse_job_id(""), None);
    }
}
