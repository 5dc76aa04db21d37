//! Pages: collecting the events a query returns, and where the next page
//! starts.
//!
//! The journal's scans (`journal::read`) decide which events match and in
//! which order; this module takes them one at a time, renders each straight
//! into the page's body, stops when the page is full, and turns where the
//! scan ended into the page's `next_cursor`.

use std::ops::ControlFlow;

use warp::http::StatusCode;
use warp::reply::Response;

use super::params::{Cursor, EventsQuery};
use super::render::{json_opt_str, EventJson, Rendered, Renderer};
use crate::http::json_bytes_response;
use crate::journal::read::{self, Found, ScanEnd};
use crate::journal::record::PortalRecord;
use crate::journal::store::StoreError;
use crate::journal::JournalReader;

/// One page of results.
#[derive(Debug)]
pub struct Page {
    /// `{"events":[` and the event objects so far, newest first, comma
    /// separated: events are rendered straight into the response body.
    body: Vec<u8>,
    /// Events in `body`.
    count: usize,
    /// Where the next page starts; `null` when there is nothing more.
    next_cursor: Option<String>,
}

impl Page {
    /// A page without events yet.
    pub(crate) fn new() -> Self {
        let mut body = Vec::with_capacity(4096);
        body.extend_from_slice(b"{\"events\":[");
        Page {
            body,
            count: 0,
            next_cursor: None,
        }
    }

    /// A page of already rendered events.
    pub(crate) fn of(
        events: impl IntoIterator<Item = EventJson>,
        next_cursor: Option<String>,
    ) -> Self {
        let mut page = Page::new();
        for event in events {
            page.separate();
            page.body.extend_from_slice(event.as_str().as_bytes());
        }
        page.next_cursor = next_cursor;
        page
    }

    /// Makes room for the next event object.
    fn separate(&mut self) {
        if self.count > 0 {
            self.body.push(b',');
        }
        self.count += 1;
    }

    /// Events on the page.
    pub fn event_count(&self) -> usize {
        self.count
    }

    /// The page's JSON: `{"events":[…],"next_cursor":…}`.
    pub fn into_body(self) -> Vec<u8> {
        let mut body = self.body;
        body.extend_from_slice(b"],\"next_cursor\":");
        json_opt_str(&mut body, self.next_cursor.as_deref());
        body.push(b'}');
        body
    }

    /// The page as a 200 response with [`Page::into_body`].
    pub(crate) fn into_response(self) -> Response {
        json_bytes_response(StatusCode::OK, self.into_body())
    }
}

/// Collects one page from matches offered newest first, up to the page
/// size.
struct Collector<'a> {
    limit: usize,
    renderer: Renderer<'a>,
    page: Page,
    last_returned: Option<u64>,
}

impl Collector<'_> {
    /// Takes one match; breaks on the first one past a full page (which
    /// proves the page is not the last).
    fn take(&mut self, found: Found<'_>) -> Result<ControlFlow<()>, StoreError> {
        if self.page.count == self.limit {
            return Ok(ControlFlow::Break(()));
        }
        self.page.separate();
        self.renderer.render_into(
            &mut self.page.body,
            found.seq,
            found.record,
            found.duplicates,
        )?;
        self.last_returned = Some(found.seq);
        Ok(ControlFlow::Continue(()))
    }

    /// The page, with the cursor where the scan's end says the next one
    /// starts.
    fn finish(self, end: ScanEnd) -> Page {
        let next_cursor = match end {
            ScanEnd::Exhausted => None,
            ScanEnd::Stopped(_) => self.last_returned.map(|s| Cursor(s).encode()),
            ScanEnd::OutOfBudget(seq) => Some(Cursor(seq).encode()),
        };
        Page {
            next_cursor,
            ..self.page
        }
    }
}

/// The newest page of `portal`'s events that match `q`, below `q`'s cursor
/// if it has one, from a durable snapshot.
pub fn newest(
    reader: &JournalReader,
    portal: &PortalRecord,
    q: &EventsQuery,
) -> Result<Page, StoreError> {
    // Only events known durable; below the cursor when continuing.
    let at_most = q
        .cursor
        .map_or(u64::MAX, |Cursor(seq)| seq.saturating_sub(1));
    let mut page = Collector {
        limit: q.page_size(),
        renderer: Renderer::new(portal),
        page: Page::new(),
        last_returned: None,
    };
    let end = read::newest(reader, portal, &q.filter(), at_most, |found| {
        page.take(found)
    })?;
    Ok(page.finish(end))
}

/// Matching events with seq above `after`, oldest first, at most `max` (and
/// at most [`read::SCAN_BUDGET`] looked at), each rendered on its own (a
/// stream sends them one by one); returns them with the highest seq looked
/// at, where the next call continues.
pub fn follow(
    reader: &JournalReader,
    portal: &PortalRecord,
    q: &EventsQuery,
    after: u64,
    max: usize,
) -> Result<(Vec<Rendered>, u64), StoreError> {
    let mut out = Vec::new();
    let mut renderer = Renderer::new(portal);
    let to = read::after(reader, portal, &q.filter(), after, |found| {
        let event = renderer.render(found.seq, found.record, found.duplicates)?;
        out.push((found.seq, event));
        Ok(if out.len() >= max {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        })
    })?;
    Ok((out, to))
}
