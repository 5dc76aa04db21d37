//! The admin API: online backup and portal erasure. Every route needs
//! `Authorization: Bearer <admin token>`, a token separate from the read
//! token, so dashboards that can read cannot also copy or erase.

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Rejection};

use crate::http::{check_bearer_for, json_response, respond, ApiError};
use crate::journal::maintain::{self, MaintainError};
use crate::server::App;

/// Largest admin request body.
const MAX_ADMIN_BODY: u64 = 4096;

/// `POST /v1/admin/backup`
pub fn backup(app: Arc<App>) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("v1" / "admin" / "backup")
        .and(warp::post())
        .and(warp::header::optional::<String>("authorization"))
        .and(warp::body::content_length_limit(MAX_ADMIN_BODY))
        .and(warp::body::bytes())
        .and(warp::any().map(move || app.clone()))
        .then(
            |auth: Option<String>, body: Bytes, app: Arc<App>| async move {
                respond(run_backup(app, auth.as_deref(), &body).await)
            },
        )
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct BackupRequest {
    to: PathBuf,
}

async fn run_backup(app: Arc<App>, auth: Option<&str>, body: &[u8]) -> Result<Response, ApiError> {
    check_admin(&app, auth)?;
    let req: BackupRequest = serde_json::from_slice(body).map_err(|e| {
        ApiError::BadRequest(format!("body must be {{\"to\": \"/absolute/dir\"}}: {e}"))
    })?;
    maintain::check_backup_target(&req.to).map_err(backup_error)?;
    let journal = app.journal.clone();
    let to = req.to.clone();
    // Shutdown joins the thread (see `server::serve`).
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

/// The admin token check shared by every admin route.
fn check_admin(app: &App, auth: Option<&str>) -> Result<(), ApiError> {
    check_bearer_for(
        auth,
        app.admin_token.as_ref(),
        "admin",
        "--admin-token or B24J_ADMIN_TOKEN",
    )
}

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
pub fn erase_portal(
    app: Arc<App>,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("v1" / "admin" / "portals" / String)
        .and(warp::delete())
        .and(warp::header::optional::<String>("authorization"))
        .and(warp::any().map(move || app.clone()))
        .then(
            |portal: String, auth: Option<String>, app: Arc<App>| async move {
                respond(erase(app, &portal, auth.as_deref()).await)
            },
        )
}

async fn erase(app: Arc<App>, key: &str, auth: Option<&str>) -> Result<Response, ApiError> {
    check_admin(&app, auth)?;
    let member = app
        .journal
        .with_directory(|d| d.resolve(key).map(|p| p.member_id.clone()))
        .ok_or_else(|| ApiError::NotFound(format!("unknown portal `{key}`")))?;
    match app.journal.erase(&member).await {
        Ok(Some(events)) => Ok(json_response(
            StatusCode::OK,
            &serde_json::json!({ "status": "erased", "member_id": member, "events": events }),
        )),
        Ok(None) => Err(ApiError::NotFound(format!("unknown portal `{key}`"))),
        Err(e) => {
            tracing::error!(error = %e, "erase failed");
            Err(ApiError::Unavailable {
                message: "storage unavailable; the portal was not erased".into(),
                retry_after: 5,
            })
        }
    }
}
