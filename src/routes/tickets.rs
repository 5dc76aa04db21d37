//! `POST /v1/portals/{portal}/stream-tickets`: a short-lived, signed ticket
//! that opens this portal's stream with these filters, for a browser's
//! `EventSource` (which cannot send `Authorization`). The threat model is
//! in [`tickets`](crate::tickets).

use std::sync::Arc;

use serde_json::json;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Rejection};

use super::auth::{bearer, Api, Bearer};
use super::events::resolve;
use super::filters::{raw_query, with_app};
use crate::access::fingerprint;
use crate::app::App;
use crate::http::{json_response, respond, ApiError};
use crate::query::EventsQuery;
use crate::tickets::{unix_now, Ticket, TICKET_TTL};
use crate::types::millis_to_rfc3339;

/// `POST /v1/portals/{portal}/stream-tickets`
pub fn routes(app: Arc<App>) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("v1" / "portals" / String / "stream-tickets")
        .and(warp::post())
        .and(bearer(app.clone(), Api::Read))
        .and(raw_query())
        .and(with_app(app))
        .map(
            |portal: String, auth: Bearer, query: String, app: Arc<App>| {
                respond(issue(&app, &portal, auth, &query))
            },
        )
}

/// Issues a ticket for the stream of `portal` with the filters in `raw`.
fn issue(app: &App, portal: &str, auth: Bearer, raw: &str) -> Result<Response, ApiError> {
    let (access, token) = auth.require_token()?;
    let query = EventsQuery::parse(raw)?;
    if query.wait.is_some() || query.limit.is_some() || query.cursor.is_some() {
        return Err(ApiError::BadRequest(
            "a stream ticket takes the stream's filters only (`event`, `entity_id`, `since`, `until`); give `cursor` to the stream or send `Last-Event-ID`".into(),
        ));
    }
    resolve(app, &access, portal)?;
    let expires = unix_now() + TICKET_TTL.as_secs();
    let ticket = Ticket {
        portal: portal.to_owned(),
        filters: raw.to_owned(),
        token: fingerprint(&token),
        expires,
    };
    let text = app.tickets.sign(&ticket);
    let stream = format!("/v1/portals/{portal}/events/stream?ticket={text}");
    Ok(json_response(
        StatusCode::CREATED,
        &json!({
            "ticket": text,
            "stream_url": stream,
            "expires_at": millis_to_rfc3339(expires * 1000),
            "expires_in": TICKET_TTL.as_secs(),
        }),
    ))
}
