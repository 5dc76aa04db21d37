//! The read API's cursor decoder: any text. Never panics; whatever it
//! accepts re-encodes to the same text (cursors are canonical).
#![no_main]

use b24_journal::query::Cursor;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(c) = Cursor::decode(raw) {
        assert_eq!(Cursor::decode(&c.encode()).ok(), Some(c));
        // Cursors are canonical: one text per position.
        assert_eq!(c.encode(), raw);
    }
});
