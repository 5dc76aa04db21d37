//! Small checks on answers: ids and seqs of event lists, UUIDv7 ids, and
//! RFC 3339 times formatted and parsed with `time`, an oracle independent
//! of the service's own formatter.

use std::collections::HashSet;

use serde_json::Value;

pub fn ids(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["id"].as_str().expect("event id").to_string())
        .collect()
}

pub fn seqs(events: &[Value]) -> Vec<u64> {
    events
        .iter()
        .map(|e| e["seq"].as_u64().expect("event seq"))
        .collect()
}

#[track_caller]
pub fn assert_unique(ids: &[String]) {
    let mut seen = HashSet::new();
    for id in ids {
        assert!(seen.insert(id.clone()), "id {id} returned more than once");
    }
}

#[track_caller]
pub fn assert_uuid_v7(id: &str) {
    let u = uuid::Uuid::parse_str(id).unwrap_or_else(|e| panic!("{id:?} is not a UUID: {e}"));
    assert_eq!(u.get_version_num(), 7, "{id} is not a UUIDv7");
    assert_eq!(
        id,
        u.hyphenated().to_string(),
        "id should be the canonical lower-case hyphenated form"
    );
}

pub fn parse_rfc3339(s: &str) -> time::OffsetDateTime {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("{s:?} is not RFC 3339: {e}"))
}

pub fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

pub fn now_unix() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}
