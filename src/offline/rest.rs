//! The portal's REST methods the puller calls: `event.offline.get`,
//! `event.offline.clear` and `event.offline.list`, with the access token
//! as `auth` in a JSON body (never in the URL).

use std::time::Duration;

use reqwest::{Client, Url};
use serde_json::{json, Value};

use super::http::{json_answer, transport, CallError};
use crate::types::Secret;

/// One record of the portal's offline queue, as answered.
#[derive(Debug, Clone, PartialEq)]
pub struct OfflineRecord {
    /// `ID`.
    pub id: String,
    /// `TIMESTAMP_X`: RFC 3339 with the portal's offset.
    pub timestamp: String,
    /// `EVENT_NAME`.
    pub event_name: String,
    /// `EVENT_DATA` (`None` for `false`).
    pub data: Option<Value>,
    /// `EVENT_ADDITIONAL.user_id`, if any.
    pub user_id: Option<Value>,
    /// `MESSAGE_ID` (an md5 in hex; kept as a string).
    pub message_id: String,
}

/// A batch `event.offline.get` answered.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// The reservation (`clear=0`); `None` with `clear=1` or nothing fetched.
    pub process_id: Option<String>,
    /// The records.
    pub events: Vec<OfflineRecord>,
    /// Records in the answer that could not be read (logged, not cleared).
    pub unreadable: usize,
}

/// A REST method call on the portal at `endpoint` (its `client_endpoint`).
async fn call(
    http: &Client,
    endpoint: &Url,
    method: &str,
    access: &Secret,
    mut params: Value,
    timeout: Duration,
) -> Result<Value, CallError> {
    let url = endpoint
        .join(&format!("{method}.json"))
        .map_err(|_| CallError::BadAnswer("bad method URL".into()))?;
    params["auth"] = json!(access.expose());
    let res = http
        .post(url)
        .json(&params)
        .send()
        .await
        .map_err(|e| transport(e, timeout))?;
    json_answer(res, timeout).await
}

fn string_of(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn record(v: &Value) -> Option<OfflineRecord> {
    let data = match v.get("EVENT_DATA") {
        None | Some(Value::Bool(false)) | Some(Value::Null) => None,
        Some(d) => Some(d.clone()),
    };
    let user_id = v
        .get("EVENT_ADDITIONAL")
        .and_then(|a| a.get("user_id"))
        .cloned();
    Some(OfflineRecord {
        id: string_of(v.get("ID"))?,
        timestamp: string_of(v.get("TIMESTAMP_X"))?,
        event_name: string_of(v.get("EVENT_NAME"))?,
        data,
        user_id,
        message_id: string_of(v.get("MESSAGE_ID"))?,
    })
}

/// `event.offline.get`: up to `limit` records; `clear=0` reserves them
/// (or refetches the reservation `process_id`), `clear=1` deletes them as
/// they are returned.
pub async fn offline_get(
    http: &Client,
    endpoint: &Url,
    access: &Secret,
    clear: bool,
    process_id: Option<&str>,
    limit: usize,
    timeout: Duration,
) -> Result<Fetched, CallError> {
    let mut params = json!({ "clear": u8::from(clear), "limit": limit });
    if let Some(p) = process_id {
        params["process_id"] = json!(p);
    }
    let body = call(http, endpoint, "event.offline.get", access, params, timeout).await?;
    let result = body
        .get("result")
        .ok_or_else(|| CallError::BadAnswer("no result".into()))?;
    let items = match result.get("events") {
        Some(Value::Array(items)) => items.as_slice(),
        _ => &[],
    };
    let events: Vec<OfflineRecord> = items.iter().filter_map(record).collect();
    Ok(Fetched {
        process_id: string_of(result.get("process_id")),
        unreadable: items.len() - events.len(),
        events,
    })
}

/// `event.offline.clear`: deletes the records `message_ids` of the
/// reservation `process_id` (only `message_id[]` is sent: the docs and the
/// server disagree on which wins when both are).
pub async fn offline_clear(
    http: &Client,
    endpoint: &Url,
    access: &Secret,
    process_id: &str,
    message_ids: &[String],
    timeout: Duration,
) -> Result<(), CallError> {
    let params = json!({ "process_id": process_id, "message_id": message_ids });
    let body = call(
        http,
        endpoint,
        "event.offline.clear",
        access,
        params,
        timeout,
    )
    .await?;
    match body.get("result") {
        Some(Value::Bool(true)) => Ok(()),
        _ => Err(CallError::BadAnswer(
            "event.offline.clear did not answer true".into(),
        )),
    }
}

/// Most pages of `event.offline.list` read when looking for reservations.
const LIST_PAGES: usize = 20;

/// The process ids of reserved records in the queue (`event.offline.list`
/// shows each record's `PROCESS_ID`), read-only: how a restart finds a
/// batch reserved by a fetch whose process id was never saved.
pub async fn reserved_process_ids(
    http: &Client,
    endpoint: &Url,
    access: &Secret,
    timeout: Duration,
) -> Result<Vec<String>, CallError> {
    let mut found: Vec<String> = Vec::new();
    let mut start = 0u64;
    for _ in 0..LIST_PAGES {
        let params = json!({ "start": start, "order": { "ID": "ASC" } });
        let body = call(
            http,
            endpoint,
            "event.offline.list",
            access,
            params,
            timeout,
        )
        .await?;
        let Some(Value::Array(items)) = body.get("result") else {
            break;
        };
        for p in items.iter().filter_map(|v| string_of(v.get("PROCESS_ID"))) {
            if !found.contains(&p) {
                found.push(p);
            }
        }
        match body.get("next").and_then(Value::as_u64) {
            Some(next) if next > start => start = next,
            _ => break,
        }
    }
    Ok(found)
}
