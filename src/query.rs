//! Query out: the read API for dashboards.
//!
//! - [`params`]: the query string, parsed ([`EventsQuery`], [`Cursor`]);
//! - [`page`]: a page of events and its cursor ([`newest`], [`follow`]);
//! - [`render`]: one stored event as the API's JSON;
//! - [`stats`]: activity counts per bucket, from the journal's rollups.
//!
//! Which stored events match, in which order and within what budget is the
//! journal's (`journal::read`). Readers only ever see events up to the last
//! seq known durable, so a dashboard never shows an event that a crash could
//! still take back. A page scans at most [`SCAN_BUDGET`] entries: a filter
//! that matches rarely then returns a short (even empty) page with a cursor
//! instead of walking the whole portal in one request.

pub mod page;
pub mod params;
pub mod render;
pub mod stats;

use std::time::Duration;

pub(crate) use params::truncate;

pub use crate::journal::read::SCAN_BUDGET;
pub use page::{follow, newest, Page};
pub use params::{Cursor, EventsQuery, DEFAULT_LIMIT, MAX_LIMIT, MAX_WAIT_SECS};
pub use render::{EventJson, Rendered};

/// Interval of SSE keep-alive comments.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);
