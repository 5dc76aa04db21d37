//! Receive: `POST /v1/bitrix24/events`, the ingest route.
//!
//! The order of checks is the order of cost: content type (415), declared
//! length (413), the body read under a hard limit that also holds for chunked
//! bodies (413), decode (400), verify (401), and only then the journal. A
//! rejected request never reaches the writer, so it changes nothing.

use std::sync::Arc;

use bytes::{Buf, BytesMut};
use futures_util::{Stream, StreamExt};
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Rejection};

use crate::decode::{self, BodyKind};
use crate::http::{json_response, respond, ApiError};
use crate::journal::{AppendError, AppendOutcome, NewEvent};
use crate::server::App;

/// Largest body accepted: 64 KiB. Real events are under 1 KiB.
pub const MAX_BODY: usize = 64 * 1024;

/// `POST /v1/bitrix24/events`
pub fn route(app: Arc<App>) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("v1" / "bitrix24" / "events")
        .and(warp::post())
        .and(warp::header::optional::<String>("content-type"))
        .and(warp::header::optional::<String>("content-length"))
        .and(warp::body::stream())
        .and(warp::any().map(move || app.clone()))
        .then(
            |content_type: Option<String>, length: Option<String>, body, app: Arc<App>| async move {
                respond(ingest(&app, content_type.as_deref(), length.as_deref(), body).await)
            },
        )
}

async fn ingest<S, B>(
    app: &App,
    content_type: Option<&str>,
    content_length: Option<&str>,
    body: S,
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
    let body = read_limited(body, MAX_BODY).await?;
    let event = decode::decode(kind, &body).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    if let Err(why) = app.verifier.verify(&event) {
        tracing::warn!(member_id = %event.member_id, reason = %why, "refused event");
        return Err(ApiError::Unauthorized(
            "auth[application_token] is not valid for auth[member_id]".into(),
        ));
    }
    let member = event.member_id.clone();
    let name = event.event.clone();
    let outcome = app
        .journal
        .append(NewEvent::from(event))
        .await
        .map_err(|e| match e {
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
        })?;
    let (status, id, seq) = match outcome {
        AppendOutcome::Stored { id, seq } => ("stored", id, seq),
        AppendOutcome::Duplicate { id, seq } => ("duplicate", id, seq),
    };
    tracing::debug!(member_id = %member, event = name.as_str(), seq, status, "event journaled");
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({ "status": status, "id": id.to_string(), "seq": seq }),
    ))
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

/// Reads the body, refusing it as soon as it passes `limit` bytes, whether
/// or not a Content-Length was sent.
async fn read_limited<S, B>(body: S, limit: usize) -> Result<BytesMut, ApiError>
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    let mut body = std::pin::pin!(body);
    let mut out = BytesMut::new();
    while let Some(chunk) = body.next().await {
        let mut chunk =
            chunk.map_err(|e| ApiError::BadRequest(format!("could not read the body: {e}")))?;
        if out.len() + chunk.remaining() > limit {
            return Err(ApiError::PayloadTooLarge(limit));
        }
        while chunk.has_remaining() {
            let piece = chunk.chunk();
            out.extend_from_slice(piece);
            let n = piece.len();
            chunk.advance(n);
        }
    }
    Ok(out)
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
}
