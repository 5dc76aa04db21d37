//! The read API's query-string parser: any text. Never panics; accepted
//! parameters respect their documented bounds.
#![no_main]

use b24_journal::query::{EventsQuery, MAX_LIMIT, MAX_WAIT_SECS};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(q) = EventsQuery::parse(raw) {
        if let Some(limit) = q.limit {
            assert!((1..=MAX_LIMIT).contains(&limit));
        }
        if let (Some(s), Some(u)) = (q.since, q.until) {
            assert!(s <= u);
        }
        if let Some(w) = q.wait {
            assert!(w.as_secs() <= MAX_WAIT_SECS);
        }
    }
});
