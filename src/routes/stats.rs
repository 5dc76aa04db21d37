//! `GET /v1/portals/{portal}/stats` and `GET /v1/stats`: events and
//! duplicates per hour or day, per event name, from the journal's rollups
//! (see [`query::stats`](crate::query::stats)); `/v1/stats` sums the
//! portals the token may read and lists each one's totals.

use std::sync::Arc;

use serde_json::{json, Value};
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Rejection};

use super::auth::{bearer, Api, Bearer};
use super::events::{resolve, storage_unavailable, visible};
use super::filters::{raw_query, with_app};
use crate::app::App;
use crate::http::{json_response, respond, ApiError};
use crate::query::stats::{Series, StatsQuery};
use crate::tickets::unix_now;

/// `GET /v1/portals/{portal}/stats` and `GET /v1/stats`
pub fn routes(app: Arc<App>) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    let one = warp::path!("v1" / "portals" / String / "stats")
        .and(warp::get())
        .and(bearer(app.clone(), Api::Read))
        .and(raw_query())
        .and(with_app(app.clone()))
        .map(
            |portal: String, auth: Bearer, query: String, app: Arc<App>| {
                respond(portal_stats(&app, &portal, auth, &query))
            },
        );
    let all = warp::path!("v1" / "stats")
        .and(warp::get())
        .and(bearer(app.clone(), Api::Read))
        .and(raw_query())
        .and(with_app(app))
        .map(|auth: Bearer, query: String, app: Arc<App>| respond(all_stats(&app, auth, &query)));
    one.or(all).unify()
}

/// One portal's series.
fn portal_stats(app: &App, key: &str, auth: Bearer, raw: &str) -> Result<Response, ApiError> {
    let access = auth.require()?;
    let query = StatsQuery::parse(raw, unix_now())?;
    let record = resolve(app, &access, key)?;
    let mut series = Series::new(&query);
    let mut body = json!({ "portal": key });
    if let Some(rec) = &record {
        series
            .add_portal(app.journal.reader().store(), rec.ix, &query)
            .map_err(storage_unavailable)?;
        body = json!({ "portal": rec.member_id, "domain": rec.domain() });
    }
    let mut out = to_object(&series);
    out.extend(body.as_object().cloned().unwrap_or_default());
    Ok(json_response(StatusCode::OK, &Value::Object(out)))
}

/// The series of every portal the token may read, summed, with each
/// portal's totals.
fn all_stats(app: &App, auth: Bearer, raw: &str) -> Result<Response, ApiError> {
    let access = auth.require()?;
    let query = StatsQuery::parse(raw, unix_now())?;
    let portals: Vec<_> = app.journal.with_directory(|dir| {
        dir.portals()
            .iter()
            .filter(|p| !p.member_id.is_empty() && visible(&access, p))
            .map(|p| (p.ix, p.member_id.clone(), p.domain().map(str::to_owned)))
            .collect()
    });
    let mut series = Series::new(&query);
    let mut list = Vec::new();
    for (ix, member, domain) in portals {
        let total = series
            .add_portal(app.journal.reader().store(), ix, &query)
            .map_err(storage_unavailable)?;
        list.push(json!({
            "member_id": member,
            "domain": domain,
            "events": total.events,
            "duplicates": total.duplicates,
        }));
    }
    let mut out = to_object(&series);
    out.insert("portals".into(), Value::Array(list));
    Ok(json_response(StatusCode::OK, &Value::Object(out)))
}

fn to_object(series: &Series) -> serde_json::Map<String, Value> {
    match serde_json::to_value(series) {
        Ok(Value::Object(map)) => map,
        _ => serde_json::Map::new(),
    }
}
