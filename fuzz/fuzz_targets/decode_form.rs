//! The form body decoder: any bytes, as `application/x-www-form-urlencoded`.
//! It must return Ok or Err, never panic, and an accepted event must hold
//! the invariants later stages rely on.
#![no_main]

use b24_journal::decode::{decode, parse_form, BodyKind, MAX_DEPTH};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(tree) = parse_form(data) {
        let v = serde_json::Value::Object(tree);
        assert!(depth(&v) <= MAX_DEPTH, "form tree deeper than {MAX_DEPTH}");
    }
    if let Ok(e) = decode(BodyKind::Form, data) {
        check(&e);
    }
});

fn depth(v: &serde_json::Value) -> usize {
    match v {
        serde_json::Value::Object(m) => 1 + m.values().map(depth).max().unwrap_or(0),
        serde_json::Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

fn check(e: &b24_journal::decode::IncomingEvent) {
    assert_eq!(e.event.as_str(), e.event.as_str().to_ascii_uppercase());
    assert!(!e.application_token.expose().is_empty());
    assert!(e
        .auth_rest
        .keys()
        .all(|k| !k.to_ascii_lowercase().ends_with("token")));
}
