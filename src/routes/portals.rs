//! `GET /v1/portals`: every portal the service knows — journaled,
//! configured or registered — with its status, source and counts.

use std::sync::Arc;

use serde_json::{json, Value};
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Rejection};

use super::auth::{bearer, Api, Bearer};
use super::events::visible;
use super::filters::with_app;
use crate::app::App;
use crate::http::{json_response, respond, ApiError};
use crate::journal::registration::{Source, Status};
use crate::types::millis_to_rfc3339;

/// `GET /v1/portals`
pub fn routes(app: Arc<App>) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("v1" / "portals")
        .and(warp::get())
        .and(bearer(app.clone(), Api::Read))
        .and(with_app(app))
        .map(|auth: Bearer, app: Arc<App>| respond(portals(&app, auth)))
}

/// The portal list.
fn portals(app: &App, auth: Bearer) -> Result<Response, ApiError> {
    let access = auth.require()?;
    let live = app.live();
    let mut list: Vec<Value> = app.journal.with_directory(|dir| {
        let describe = |member: &str| {
            let reg = dir.registration(member);
            let status = match reg.map(|r| r.status) {
                Some(Status::Uninstalled) => "uninstalled",
                _ => "active",
            };
            let source = if live.verifier.is_configured(member) {
                "configured"
            } else {
                match reg.map(|r| r.source) {
                    Some(Source::Install) => "install",
                    Some(Source::Operator) => "operator",
                    // Journaled earlier, no longer configured or registered.
                    None => "none",
                }
            };
            (status, source)
        };
        let mut list: Vec<Value> = dir
            .portals()
            .iter()
            // Erased portals leave a nameless record behind.
            .filter(|p| !p.member_id.is_empty() && visible(&access, p))
            .map(|p| {
                let (status, source) = describe(&p.member_id);
                json!({
                    "member_id": p.member_id,
                    "domain": p.domain(),
                    "previous_domains": p.previous_domains(),
                    "status": status,
                    "source": source,
                    "events": p.events,
                    "duplicates": p.duplicates,
                    "first_received_at": p.first_received_ms.map(millis_to_rfc3339),
                    "last_received_at": p.last_received_ms.map(millis_to_rfc3339),
                })
            })
            .collect();
        // Configured or registered portals that sent nothing yet: visible, so
        // an operator can see the configuration took.
        let mut quiet: Vec<(String, Option<String>)> = live
            .verifier
            .members()
            .into_iter()
            .map(|m| (m.as_str().to_owned(), None))
            .chain(
                dir.registrations()
                    .map(|r| (r.member_id.clone(), Some(r.domain.clone()))),
            )
            .filter(|(m, _)| dir.by_member(m).is_none())
            .filter(|(m, d)| access.allows(m, d.as_deref()))
            .collect();
        quiet.sort();
        // Keep one entry per member, with the domain if any entry has it.
        quiet.dedup_by(|later, kept| {
            if later.0 != kept.0 {
                return false;
            }
            if kept.1.is_none() {
                kept.1 = later.1.take();
            }
            true
        });
        for (member, domain) in quiet {
            let (status, source) = describe(&member);
            list.push(json!({
                "member_id": member,
                "domain": domain,
                "previous_domains": [],
                "status": status,
                "source": source,
                "events": 0,
                "duplicates": 0,
                "first_received_at": null,
                "last_received_at": null,
            }));
        }
        list
    });
    // Offline pulling per portal (`null`: not pulled), never a token.
    let pulls = app.offline.as_ref().map(|o| o.status()).unwrap_or_default();
    for entry in &mut list {
        let member = entry["member_id"].as_str().unwrap_or_default().to_owned();
        entry["offline"] = match pulls.get(&member) {
            Some(status) => json!(status),
            None => Value::Null,
        };
    }
    Ok(json_response(StatusCode::OK, &json!({ "portals": list })))
}
