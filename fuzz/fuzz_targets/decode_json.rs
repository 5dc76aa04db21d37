//! The JSON body decoder: any bytes, as `application/json`. Never panics;
//! an accepted body has no key repeated and is no deeper than MAX_DEPTH.
#![no_main]

use b24_journal::decode::{decode, parse_json, BodyKind, MAX_DEPTH};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(tree) = parse_json(data) {
        let v = serde_json::Value::Object(tree);
        assert!(depth(&v) <= MAX_DEPTH, "JSON tree deeper than {MAX_DEPTH}");
        // Whatever is accepted is exactly what serde_json reads (which keeps
        // the last of repeated keys, so equality also shows there were none
        // that changed the result).
        let plain: serde_json::Value = serde_json::from_slice(data).expect("serde_json agrees");
        assert_eq!(plain, v);
    }
    if let Ok(e) = decode(BodyKind::Json, data) {
        assert_eq!(e.event.as_str(), e.event.as_str().to_ascii_uppercase());
        assert!(e
            .auth_rest
            .keys()
            .all(|k| !k.to_ascii_lowercase().ends_with("token")));
    }
});

fn depth(v: &serde_json::Value) -> usize {
    match v {
        serde_json::Value::Object(m) => 1 + m.values().map(depth).max().unwrap_or(0),
        serde_json::Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}
