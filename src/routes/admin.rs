//! The admin API: online backup and portal erasure. Every route needs
//! `Authorization: Bearer <admin token>`, a token separate from the read
//! token, so dashboards that can read cannot also copy or erase.

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Rejection};

use super::auth::{bearer, Api, Bearer};
use super::filters::with_app;
use crate::app::App;
use crate::http::{json_response, respond, ApiError};
use crate::journal::maintain::{self, MaintainError};

/// Largest admin request body.
const MAX_ADMIN_BODY: u64 = 4096;

/// The admin routes: backup, then erasure.
pub fn routes(app: Arc<App>) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    backup(app.clone()).or(erase_portal(app)).unify()
}

/// `POST /v1/admin/backup`
fn backup(app: Arc<App>) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("v1" / "admin" / "backup")
        .and(warp::post())
        .and(bearer(app.clone(), Api::Admin))
        .and(warp::body::content_length_limit(MAX_ADMIN_BODY))
        .and(warp::body::bytes())
        .and(with_app(app))
        .then(|auth: Bearer, body: Bytes, app: Arc<App>| async move {
            respond(run_backup(app, auth, &body).await)
        })
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct BackupRequest {
    to: PathBuf,
}

/// Writes a backup to the directory the body names, on a thread of its own
/// that shutdown joins (see [`crate::app::Backups`]).
async fn run_backup(app: Arc<App>, auth: Bearer, body: &[u8]) -> Result<Response, ApiError> {
    auth.require()?;
    let req: BackupRequest = serde_json::from_slice(body).map_err(|e| {
        ApiError::BadRequest(format!("body must be {{\"to\": \"/absolute/dir\"}}: {e}"))
    })?;
    maintain::check_backup_target(&req.to).map_err(backup_error)?;
    let journal = app.journal.clone();
    let to = req.to.clone();
    let (done, finished) = tokio::sync::oneshot::channel();
    let started = app
        .backups
        .spawn(move || {
            // The requester may have gone: the backup is complete anyway.
            let _ = done.send(maintain::backup(&journal, &to));
        })
        .map_err(|e| ApiError::Internal(format!("cannot start the backup thread: {e}")))?;
    if !started {
        return Err(ApiError::Unavailable {
            message: "the service is stopping; start the backup after it is back".into(),
            retry_after: 5,
        });
    }
    tracing::info!(to = %req.to.display(), "backup started");
    let stats = finished
        .await
        .map_err(|_| ApiError::Internal("backup thread ended without a result".into()))?
        .map_err(backup_error)?;
    tracing::info!(to = %req.to.display(), portals = stats.portals, events = stats.events, "backup done");
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({
            "status": "ok",
            "to": req.to,
            "portals": stats.portals,
            "events": stats.events,
        }),
    ))
}

/// The answer to a failed backup: the target's problems are the caller's
/// (409/400), anything else is the service's (503, logged).
fn backup_error(e: MaintainError) -> ApiError {
    match e {
        MaintainError::TargetExists(why) => ApiError::Conflict(why),
        MaintainError::Target(why) => ApiError::BadRequest(why),
        other => {
            tracing::error!(error = %other, "backup failed");
            ApiError::Unavailable {
                message: format!("backup failed: {other}"),
                retry_after: 60,
            }
        }
    }
}

/// `DELETE /v1/admin/portals/{portal}`
fn erase_portal(app: Arc<App>) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("v1" / "admin" / "portals" / String)
        .and(warp::delete())
        .and(bearer(app.clone(), Api::Admin))
        .and(with_app(app))
        .then(|portal: String, auth: Bearer, app: Arc<App>| async move {
            respond(erase(app, &portal, auth).await)
        })
}

/// Erases every event of the portal named by member id or domain.
async fn erase(app: Arc<App>, key: &str, auth: Bearer) -> Result<Response, ApiError> {
    auth.require()?;
    let unknown = || ApiError::NotFound(format!("unknown portal `{key}`"));
    let member = app
        .journal
        .with_directory(|d| d.resolve(key).map(|p| p.member_id.clone()))
        .ok_or_else(unknown)?;
    match app.journal.erase(&member).await {
        Ok(Some(events)) => Ok(json_response(
            StatusCode::OK,
            &serde_json::json!({ "status": "erased", "member_id": member, "events": events }),
        )),
        Ok(None) => Err(unknown()),
        Err(e) => {
            tracing::error!(error = %e, "erase failed");
            Err(ApiError::Unavailable {
                message: "storage unavailable; the portal was not erased".into(),
                retry_after: 5,
            })
        }
    }
}
