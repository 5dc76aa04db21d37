//! `POST /v1/bitrix24/events`, the ingest route: the HTTP half of ingest.
//!
//! The order of checks is the order of cost: content type (415), declared
//! length (413), the body read under a hard limit that also holds for chunked
//! bodies (413) and within a time limit (408); then [`crate::ingest`] decodes
//! (400), verifies (401/403) and appends (409/503), and this route maps its
//! outcome to a status and counts it in the metrics.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Buf;
use futures_util::Stream;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Rejection};

use super::client::{client, ClientAddr};
use super::filters::{read_limited, with_app};
use crate::app::App;
use crate::cluster::receive;
use crate::decode::BodyKind;
use crate::http::{json_response, respond, ApiError};
use crate::ingest::{self, IngestError, Ingested};
use crate::journal::{AppendError, AppendOutcome};
use crate::metrics::metrics;
use crate::verify::VerifyError;

/// Largest body accepted: 64 KiB. Real events are under 1 KiB.
pub const MAX_BODY: usize = 64 * 1024;

/// `POST /v1/bitrix24/events`
pub fn routes(app: Arc<App>) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("v1" / "bitrix24" / "events")
        .and(warp::post())
        .and(warp::header::optional::<String>("content-type"))
        .and(warp::header::optional::<String>("content-length"))
        .and(warp::body::stream())
        .and(client(&app))
        .and(with_app(app))
        .then(
            |content_type: Option<String>,
             length: Option<String>,
             body,
             client: ClientAddr,
             app: Arc<App>| async move {
                let m = metrics();
                m.received.inc();
                let started = Instant::now();
                let headers = (content_type.as_deref(), length.as_deref());
                let result = receive(&app, headers, body, client).await;
                match &result {
                    Ok(res) if res.status() == StatusCode::OK => {
                        m.ack_latency.observe(started.elapsed().as_secs_f64());
                    }
                    Ok(res) => m.rejected.with_label_values(&[res.status().as_str()]).inc(),
                    Err(e) => m.rejected.with_label_values(&[e.status().as_str()]).inc(),
                }
                respond(result)
            },
        )
}

/// Reads the body within its limits and ingests it. `headers` are the
/// request's `Content-Type` and `Content-Length`.
async fn receive<S, B>(
    app: &App,
    (content_type, content_length): (Option<&str>, Option<&str>),
    body: S,
    client: ClientAddr,
) -> Result<Response, ApiError>
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    let kind = body_kind(content_type)?;
    if let Some(len) = content_length.and_then(|l| l.trim().parse::<u64>().ok()) {
        if len > MAX_BODY as u64 {
            return Err(ApiError::PayloadTooLarge(MAX_BODY));
        }
    }
    let limit = app.body_timeout;
    let body = match tokio::time::timeout(limit, read_limited(body, MAX_BODY)).await {
        Ok(body) => body?,
        Err(_) => {
            tracing::warn!(
                %client,
                timeout_ms = limit.as_millis() as u64,
                "request body not received in time; answering 408"
            );
            return Ok(body_timeout_response(limit));
        }
    };
    let verifier = &app.live.load_full().verifier;
    let Ingested {
        member_id,
        event,
        outcome,
        grant,
    } = match &app.cluster {
        None => ingest::ingest(&app.journal, verifier, kind, &body)
            .await
            .map_err(|e| refusal(e, client))?,
        Some(cluster) => {
            let received = receive::receive(cluster, &app.journal, verifier, kind, &body)
                .await
                .map_err(|e| refusal(e, client))?;
            match received.outcome {
                Ok(outcome) => Ingested {
                    member_id: received.member_id,
                    event: received.event,
                    outcome,
                    grant: received.grant,
                },
                Err(id) => {
                    // Durable in the cluster, not applied here yet: the
                    // grant is kept all the same.
                    if let (Some(offline), Some((grant, profile))) = (&app.offline, received.grant)
                    {
                        keep_grant(offline, &received.member_id, &profile, grant).await?;
                    }
                    return Ok(accepted(id));
                }
            }
        }
    };
    if let Some(offline) = &app.offline {
        if let Some((grant, profile)) = grant {
            keep_grant(offline, &member_id, &profile, grant).await?;
        } else if event.as_str() == OFFLINE_SIGNAL {
            offline.wake(&member_id);
        }
    }
    let (status, id, seq) = match outcome {
        AppendOutcome::Stored { id, seq } => {
            metrics().stored.inc();
            ("stored", id, seq)
        }
        // A push is never reconciled (only pulled records are); counted
        // as the duplicate it would be.
        AppendOutcome::Duplicate { id, seq } | AppendOutcome::Reconciled { id, seq } => {
            metrics().duplicates.inc();
            ("duplicate", id, seq)
        }
    };
    tracing::debug!(%member_id, event = event.as_str(), seq, status, "event journaled");
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({ "status": status, "id": id.to_string(), "seq": seq }),
    ))
}

/// Cluster mode's answer for an event the stream acknowledged but the
/// local journal has not applied yet: durable, without a seq (and without
/// an id when the stream took it for a repeat of an earlier message).
fn accepted(id: Option<uuid::Uuid>) -> Response {
    crate::cluster::metrics::cluster_metrics().accepted.inc();
    let body = match id {
        Some(id) => serde_json::json!({ "status": "accepted", "id": id.to_string() }),
        None => serde_json::json!({ "status": "accepted" }),
    };
    json_response(StatusCode::OK, &body)
}

/// The online event by which a portal says its offline queue has records.
const OFFLINE_SIGNAL: &str = "ONOFFLINEEVENT";

/// Keeps a journaled ONAPPINSTALL's grant for offline pulling, sealed and
/// durable before the install is acknowledged. The event itself is
/// already stored: an endpoint that may not be called is logged and the
/// install answered as usual (pulling stays off for that portal); a grant
/// that cannot be saved is a 503, so that the operator sees it.
async fn keep_grant(
    offline: &crate::offline::Offline,
    member_id: &crate::types::MemberId,
    profile: &crate::journal::record::PortalProfile,
    grant: crate::decode::Grant,
) -> Result<(), ApiError> {
    use crate::offline::InstallError;
    match offline.installed(member_id, profile, grant).await {
        Ok(_) => Ok(()),
        Err(e @ (InstallError::Endpoint(_) | InstallError::NoEndpoint)) => {
            tracing::warn!(%member_id, error = %e, "offline pulling not enabled for this portal");
            Ok(())
        }
        Err(e @ InstallError::Journal(_)) => {
            tracing::error!(%member_id, error = %e, "the install's grant was not saved");
            Err(ApiError::Unavailable {
                message: "the install was journaled but its offline-pulling grant could not be saved; reinstall later".into(),
                retry_after: 5,
            })
        }
    }
}

/// The answer to an event that was not acknowledged, logged as operators
/// need it (refusals at `warn` with the client's address, storage failures
/// at `error`).
fn refusal(e: IngestError, client: ClientAddr) -> ApiError {
    match e {
        IngestError::Decode(e) => ApiError::BadRequest(e.to_string()),
        IngestError::Refused { member_id, reason } => {
            tracing::warn!(%client, %member_id, %reason, "refused event");
            match reason {
                VerifyError::DomainNotAllowed => ApiError::Forbidden(
                    "auth[domain] is not allowed to install this application (--install-domains)"
                        .into(),
                ),
                VerifyError::Uninstalled => ApiError::NotTrusted(
                    "the application is uninstalled from this portal (auth[member_id]); events are refused until it is installed again".into(),
                ),
                VerifyError::UnknownPortal | VerifyError::WrongToken => ApiError::NotTrusted(
                    "auth[application_token] is not valid for auth[member_id]".into(),
                ),
            }
        }
        IngestError::NotReplicated { member_id, reason } => {
            tracing::error!(%member_id, %reason, "event not acknowledged by the cluster");
            ApiError::Unavailable {
                message: "the cluster did not acknowledge the event; it was not stored".into(),
                retry_after: 5,
            }
        }
        IngestError::NotStored { member_id, source } => match source {
            AppendError::Conflict(member) => {
                tracing::warn!(%client, member_id = %member, "refused ONAPPINSTALL: portal is installed with a different token");
                ApiError::Conflict(
                    "this portal (auth[member_id]) is already installed with a different auth[application_token]; an operator must reset it".into(),
                )
            }
            AppendError::DomainTaken(domain) => {
                tracing::warn!(%client, %member_id, %domain, "refused event: its auth[domain] belongs to another portal");
                ApiError::Conflict(
                    "auth[domain] belongs to another portal; the event was not stored".into(),
                )
            }
            AppendError::QueueFull => ApiError::Unavailable {
                message: "journal is busy; try again shortly".into(),
                retry_after: 1,
            },
            AppendError::Unavailable(cause) => {
                tracing::error!(%cause, "event not stored");
                ApiError::Unavailable {
                    message: "storage unavailable; the event was not stored".into(),
                    retry_after: 5,
                }
            }
        },
    }
}

/// 408 for a body that did not arrive in time, in the `{"error": ...}`
/// shape of [`ApiError`] (which has no 408: only this route times a body).
/// The rest of the body may still be in flight, so the connection is closed
/// rather than reused.
fn body_timeout_response(limit: Duration) -> Response {
    let mut res = json_response(
        StatusCode::REQUEST_TIMEOUT,
        &serde_json::json!({
            "error": format!(
                "request body not received within {} ms; nothing was stored",
                limit.as_millis()
            )
        }),
    );
    res.headers_mut().insert(
        warp::http::header::CONNECTION,
        warp::http::HeaderValue::from_static("close"),
    );
    res
}

/// The body kind from `Content-Type`; only UTF-8 (or unspecified) charsets.
fn body_kind(content_type: Option<&str>) -> Result<BodyKind, ApiError> {
    let unsupported = |what: &str| {
        ApiError::UnsupportedMediaType(format!(
            "{what}; send application/x-www-form-urlencoded or application/json"
        ))
    };
    let raw = content_type.ok_or_else(|| unsupported("missing Content-Type"))?;
    let mut parts = raw.split(';');
    let essence = parts.next().unwrap_or("").trim().to_ascii_lowercase();
    let kind = match essence.as_str() {
        "application/x-www-form-urlencoded" => BodyKind::Form,
        "application/json" => BodyKind::Json,
        _ => return Err(unsupported("unsupported Content-Type")),
    };
    for param in parts {
        if let Some((name, value)) = param.split_once('=') {
            if name.trim().eq_ignore_ascii_case("charset") {
                let value = value.trim().trim_matches('"');
                if !value.eq_ignore_ascii_case("utf-8") && !value.eq_ignore_ascii_case("utf8") {
                    return Err(unsupported("unsupported charset (only UTF-8)"));
                }
            }
        }
    }
    Ok(kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types() {
        assert_eq!(
            body_kind(Some("application/x-www-form-urlencoded")).unwrap(),
            BodyKind::Form
        );
        assert_eq!(
            body_kind(Some("Application/JSON; charset=\"UTF-8\"")).unwrap(),
            BodyKind::Json
        );
        assert!(body_kind(Some("application/x-www-form-urlencoded; charset=koi8-r")).is_err());
        assert!(body_kind(Some("text/plain")).is_err());
        assert!(body_kind(None).is_err());
    }

    #[tokio::test]
    async fn a_body_that_never_ends_times_out_with_408() {
        let stalled = futures_util::stream::pending::<Result<bytes::Bytes, warp::Error>>();
        let limit = Duration::from_millis(50);
        let started = Instant::now();
        let r = tokio::time::timeout(limit, read_limited(stalled, MAX_BODY)).await;
        assert!(r.is_err());
        assert!(started.elapsed() < Duration::from_secs(5));
        let res = body_timeout_response(limit);
        assert_eq!(res.status(), StatusCode::REQUEST_TIMEOUT);
        assert_eq!(res.headers()["connection"], "close");
    }
}
