//! The admin API: online backup and portal erasure. Every route needs
//! `Authorization: Bearer <admin token>`, a token separate from the read
//! token, so dashboards that can read cannot also copy or erase; and
//! backups go only into the configured backup directory
//! (`--backup-dir`), so even the admin token cannot write elsewhere.

use std::path::PathBuf;
use std::sync::Arc;

use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Rejection};

use super::auth::{bearer, Api, Bearer};
use super::filters::{read_limited, with_app};
use crate::app::App;
use crate::http::{json_response, respond, ApiError};
use crate::journal::maintain::{self, MaintainError};

/// Largest admin request body.
const MAX_ADMIN_BODY: usize = 4096;

/// The admin routes: backup, then erasure.
pub fn routes(app: Arc<App>) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    backup(app.clone()).or(erase_portal(app)).unify()
}

/// `POST /v1/admin/backup`. The body is read by the handler, after the
/// token check: a caller without the token learns nothing about what the
/// route wants (no 411 or 413 before the 401).
fn backup(app: Arc<App>) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("v1" / "admin" / "backup")
        .and(warp::post())
        .and(bearer(app.clone(), Api::Admin))
        .and(warp::header::optional::<String>("content-length"))
        .and(warp::body::stream())
        .and(with_app(app))
        .then(
            |auth: Bearer, length: Option<String>, body, app: Arc<App>| async move {
                let result = async {
                    auth.require()?;
                    let root = app.backup_dir.clone().ok_or_else(|| {
                        ApiError::Forbidden(
                            "online backups are off: no backup directory is configured (--backup-dir, B24J_BACKUP_DIR or backup_dir)".into(),
                        )
                    })?;
                    let declared = length.and_then(|l| l.trim().parse::<u64>().ok());
                    if declared.is_some_and(|len| len > MAX_ADMIN_BODY as u64) {
                        return Err(ApiError::PayloadTooLarge(MAX_ADMIN_BODY));
                    }
                    let body = read_limited(body, MAX_ADMIN_BODY).await?;
                    run_backup(app, root, &body).await
                };
                respond(result.await)
            },
        )
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct BackupRequest {
    to: PathBuf,
}

/// Writes a backup to the directory the body names inside `root`, on a
/// thread of its own that shutdown joins (see [`crate::app::Backups`]).
async fn run_backup(app: Arc<App>, root: PathBuf, body: &[u8]) -> Result<Response, ApiError> {
    let req: BackupRequest = serde_json::from_slice(body).map_err(|e| {
        ApiError::BadRequest(format!(
            "body must be {{\"to\": \"NAME\"}}, NAME a directory to create inside the backup directory: {e}"
        ))
    })?;
    let to = maintain::backup_target(&root, &req.to).map_err(backup_error)?;
    maintain::check_backup_target(&to).map_err(backup_error)?;
    let journal = app.journal.clone();
    let dest = to.clone();
    let (done, finished) = tokio::sync::oneshot::channel();
    // Cluster mode: the journal holds still at one stream position for the
    // copy, which records it, so that a node restored from it resumes the
    // stream exactly there.
    let paused = match &app.cluster {
        Some(cluster) => Some(cluster.applied.pause().await),
        None => None,
    };
    let started = app
        .backups
        .spawn(move || {
            // The requester may have gone: the backup is complete anyway.
            let _ = done.send(maintain::backup(&journal, &dest));
            drop(paused);
        })
        .map_err(|e| ApiError::Internal(format!("cannot start the backup thread: {e}")))?;
    if !started {
        return Err(ApiError::Unavailable {
            message: "the service is stopping; start the backup after it is back".into(),
            retry_after: 5,
        });
    }
    tracing::info!(to = %to.display(), "backup started");
    let stats = finished
        .await
        .map_err(|_| ApiError::Internal("backup thread ended without a result".into()))?
        .map_err(backup_error)?;
    tracing::info!(to = %to.display(), portals = stats.portals, events = stats.events, "backup done");
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({
            "status": "ok",
            "to": req.to,
            "path": to,
            "portals": stats.portals,
            "events": stats.events,
            "stream_seq": stats.stream_seq,
            "sealed_tokens": stats.sealed_tokens,
            "note": if stats.sealed_tokens > 0 { SEALED_NOTE } else { "" },
        }),
    ))
}

/// What a backup with sealed refresh tokens tells its caller.
const SEALED_NOTE: &str = "refresh tokens are copied only sealed: offline pulling from this copy needs the same --secrets-key-file";

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
    let erased = match &app.cluster {
        Some(cluster) => cluster.erase(&member).await,
        None => app.journal.erase(&member).await.map_err(|e| e.to_string()),
    };
    match erased {
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
