//! What a pulled offline record becomes: an event like a pushed one.
//!
//! `event` = `EVENT_NAME` upper-cased, `data` = `EVENT_DATA` (absent when
//! `false`), `ts` = `TIMESTAMP_X`, the entity id from `data.FIELDS.ID` (or
//! `FIELDS_AFTER`) as for pushes, `auth` = the portal's domain, member id
//! and endpoints plus `user_id` from `EVENT_ADDITIONAL`, and the origin
//! `offline` with the record's `MESSAGE_ID`. The dedup key is the same as
//! a push's (name, entity id or data, ts), so fetching a record twice
//! stores it once.

use serde_json::Map;

use super::rest::OfflineRecord;
use crate::decode;
use crate::journal::record::PortalProfile;
use crate::journal::{Lifecycle, NewEvent, Origin};
use crate::types::{EventName, MemberId, Ts};

/// Longest `MESSAGE_ID` kept: Bitrix24's are 32 hex digits (an md5).
const MAX_MESSAGE_ID: usize = 64;

/// Why a record cannot be journaled.
#[derive(Debug, thiserror::Error)]
#[error("offline record {message_id}: {why}")]
pub struct Unreadable {
    /// Its `MESSAGE_ID`.
    pub message_id: String,
    /// What is wrong.
    pub why: String,
}

/// The event a pulled `record` of portal `member_id` becomes;
/// `reconcile_window` under the reconcile policy.
pub fn to_event(
    record: &OfflineRecord,
    member_id: &MemberId,
    profile: &PortalProfile,
    reconcile_window: Option<u64>,
) -> Result<NewEvent, Unreadable> {
    let bad = |why: String| Unreadable {
        message_id: record.message_id.clone(),
        why,
    };
    if record.message_id.len() > MAX_MESSAGE_ID || record.message_id.chars().any(char::is_control) {
        return Err(bad("MESSAGE_ID is not a short printable string".into()));
    }
    let event =
        EventName::parse(&record.event_name).map_err(|e| bad(format!("EVENT_NAME {}", e.0)))?;
    let ts = Ts::parse_unix_or_rfc3339(&record.timestamp)
        .map_err(|e| bad(format!("TIMESTAMP_X {}", e.0)))?;
    let entity_id = decode::entity_id(record.data.as_ref()).map_err(|e| bad(e.to_string()))?;
    let mut auth_rest = Map::new();
    if let Some(user) = &record.user_id {
        auth_rest.insert("user_id".into(), user.clone());
    }
    Ok(NewEvent {
        event,
        ts,
        member_id: member_id.clone(),
        profile: profile.clone(),
        event_handler_id: None,
        entity_id,
        data: record.data.clone(),
        auth_rest,
        lifecycle: Lifecycle::Ordinary,
        id: None,
        origin: Origin::Offline {
            message_id: record.message_id.clone(),
            reconcile_window,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_record_becomes_an_event_like_a_push() {
        let record = OfflineRecord {
            id: "7".into(),
            timestamp: "2024-07-18T12:32:31+02:00".into(),
            event_name: "onCrmDealUpdate".into(),
            data: Some(json!({"FIELDS": {"ID": 42}})),
            user_id: Some(json!("1")),
            message_id: "0123456789abcdef0123456789abcdef".into(),
        };
        let profile = PortalProfile {
            domain: "a.bitrix24.com".into(),
            client_endpoint: Some("https://a.bitrix24.com/rest/".into()),
            server_endpoint: None,
            fixed: Vec::new(),
        };
        let member = MemberId::parse("m").unwrap();
        let e = to_event(&record, &member, &profile, Some(5)).unwrap();
        assert_eq!(e.event.as_str(), "ONCRMDEALUPDATE");
        assert_eq!(e.ts.secs(), 1_721_298_751);
        assert_eq!(e.entity_id.unwrap().as_str(), "42");
        assert_eq!(e.auth_rest["user_id"], json!("1"));
        assert!(matches!(
            e.origin,
            Origin::Offline {
                reconcile_window: Some(5),
                ..
            }
        ));
        let bad = OfflineRecord {
            timestamp: "yesterday".into(),
            ..record
        };
        assert!(to_event(&bad, &member, &profile, None).is_err());
    }
}
