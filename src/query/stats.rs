//! Activity statistics: `?since=&until=&bucket=hour|day&event=` parsed
//! into a [`StatsQuery`], answered from the journal's hourly rollups (one
//! record per portal and hour, see `journal::rollup`), so the cost is the
//! number of hours in the window, not the number of events.
//!
//! Every bucket of the window is listed, empty ones with zeros, so a chart
//! (or Grafana's Infinity data source) draws a continuous time axis.

use std::collections::BTreeMap;

use serde::Serialize;

use super::params::truncate;
use crate::http::ApiError;
use crate::journal::record::PortalIx;
use crate::journal::rollup::{hour_of, Counts, HourRollup, HOUR_SECS};
use crate::journal::store::{Reader, StoreError};
use crate::types::{millis_to_rfc3339, EventName, Ts};

/// Most buckets one answer holds (83 days of hours, 5 years of days).
pub const MAX_BUCKETS: u64 = 2000;

/// The width of a bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bucket {
    /// One hour.
    Hour,
    /// One UTC day.
    Day,
}

impl Bucket {
    fn secs(self) -> u64 {
        match self {
            Bucket::Hour => HOUR_SECS,
            Bucket::Day => 24 * HOUR_SECS,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Bucket::Hour => "hour",
            Bucket::Day => "day",
        }
    }
}

/// The parameters of the stats routes.
#[derive(Debug, Clone)]
pub struct StatsQuery {
    /// First second of the window (rounded down to its bucket).
    pub since: u64,
    /// Last second of the window.
    pub until: u64,
    /// Bucket width.
    pub bucket: Bucket,
    /// Only these event names.
    pub events: Option<Vec<EventName>>,
}

impl StatsQuery {
    /// Parses the query string; `now` (Unix seconds) is the default
    /// `until`, and `since` defaults to 24 hours (hour buckets) or 30 days
    /// (day buckets) before it.
    pub fn parse(raw: &str, now: u64) -> Result<StatsQuery, ApiError> {
        let bad = |name: &str, why: &str| ApiError::BadRequest(format!("invalid `{name}`: {why}"));
        let (mut since, mut until, mut bucket, mut events) = (None, None, None, None);
        let mut seen: Vec<String> = Vec::new();
        for (name, value) in form_urlencoded::parse(raw.as_bytes()) {
            if seen.iter().any(|s| *s == name) {
                return Err(ApiError::BadRequest(format!(
                    "parameter `{}` given more than once",
                    truncate(&name)
                )));
            }
            seen.push(name.to_string());
            match &*name {
                "since" => {
                    since = Some(Ts::parse_unix_or_rfc3339(&value).map_err(|e| bad("since", e.0))?)
                }
                "until" => {
                    until = Some(Ts::parse_unix_or_rfc3339(&value).map_err(|e| bad("until", e.0))?)
                }
                "bucket" => {
                    bucket = Some(match &*value {
                        "hour" => Bucket::Hour,
                        "day" => Bucket::Day,
                        _ => return Err(bad("bucket", "must be `hour` or `day`")),
                    })
                }
                "event" => {
                    let names = value
                        .split(',')
                        .map(|n| EventName::parse(n.trim()))
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|e| bad("event", e.0))?;
                    events = Some(names);
                }
                other => {
                    return Err(ApiError::BadRequest(format!(
                        "unknown parameter `{}` (known: since, until, bucket, event)",
                        truncate(other)
                    )))
                }
            }
        }
        let bucket = bucket.unwrap_or(Bucket::Hour);
        let until = until.map_or(now, |t| t.secs());
        // By default the last 24 hours or 30 days, the current one included.
        let default_buckets = match bucket {
            Bucket::Hour => 24,
            Bucket::Day => 30,
        };
        let current = until - until % bucket.secs();
        let since = since.map_or(
            current.saturating_sub((default_buckets - 1) * bucket.secs()),
            |t| t.secs(),
        );
        if since > until {
            return Err(bad("since", "is after `until`"));
        }
        let since = since - since % bucket.secs();
        let buckets = (until - since) / bucket.secs() + 1;
        if buckets > MAX_BUCKETS {
            return Err(ApiError::BadRequest(format!(
                "the window holds {buckets} {}s; at most {MAX_BUCKETS} per request: narrow `since`/`until` or use `bucket=day`",
                bucket.name()
            )));
        }
        Ok(StatsQuery {
            since,
            until,
            bucket,
            events,
        })
    }

    fn wanted(&self, name: &str) -> bool {
        self.events
            .as_ref()
            .is_none_or(|names| names.iter().any(|n| n.as_str() == name))
    }
}

/// One bucket of a series.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BucketCounts {
    /// Start of the bucket, RFC 3339 UTC.
    pub time: String,
    /// Events stored with a `ts` in the bucket.
    pub events: u64,
    /// Duplicates of them received.
    pub duplicates: u64,
    /// The same, by event name (names with no event left out).
    pub by_event: BTreeMap<String, Counts>,
}

/// Counts per bucket over one or more portals.
#[derive(Debug, Clone, Serialize)]
pub struct Series {
    /// `hour` or `day`.
    pub bucket: &'static str,
    /// Start of the first bucket.
    pub since: String,
    /// End of the window as asked.
    pub until: String,
    /// Events in the whole window.
    pub events: u64,
    /// Duplicates in the whole window.
    pub duplicates: u64,
    /// Every bucket of the window, oldest first.
    pub buckets: Vec<BucketCounts>,
}

impl Series {
    /// An empty series over `q`'s window.
    pub fn new(q: &StatsQuery) -> Series {
        let width = q.bucket.secs();
        let buckets = (q.since..=q.until)
            .step_by(width as usize)
            .map(|start| BucketCounts {
                time: millis_to_rfc3339(start * 1000),
                ..Default::default()
            })
            .collect();
        Series {
            bucket: q.bucket.name(),
            since: millis_to_rfc3339(q.since * 1000),
            until: millis_to_rfc3339(q.until * 1000),
            events: 0,
            duplicates: 0,
            buckets,
        }
    }

    /// Adds `portal`'s rollups in `q`'s window; returns the portal's own
    /// totals.
    pub fn add_portal(
        &mut self,
        reader: &Reader,
        portal: PortalIx,
        q: &StatsQuery,
    ) -> Result<Counts, StoreError> {
        let mut total = Counts::default();
        for (hour, bytes) in reader.rollups(portal, hour_of(q.since), hour_of(q.until))? {
            let record = HourRollup::from_bytes(&bytes)
                .map_err(|e| StoreError::undecodable(format!("rollup {portal}/{hour}"), e.0))?;
            let start = hour * HOUR_SECS;
            let Some(slot) = start
                .checked_sub(q.since)
                .map(|d| (d / q.bucket.secs()) as usize)
                .and_then(|i| self.buckets.get_mut(i))
            else {
                continue;
            };
            for (name, c) in record.names.iter().filter(|(n, _)| q.wanted(n)) {
                let by = slot.by_event.entry(name.clone()).or_default();
                by.events += c.events;
                by.duplicates += c.duplicates;
                slot.events += c.events;
                slot.duplicates += c.duplicates;
                total.events += c.events;
                total.duplicates += c.duplicates;
            }
        }
        self.events += total.events;
        self.duplicates += total.duplicates;
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_default_round_and_are_bounded() {
        let q = StatsQuery::parse("", 100 * HOUR_SECS + 5).unwrap();
        assert_eq!(q.bucket, Bucket::Hour);
        assert_eq!(Series::new(&q).buckets.len(), 24);
        let q = StatsQuery::parse("bucket=day&since=0&until=86400", 0).unwrap();
        assert_eq!(Series::new(&q).buckets.len(), 2);
        for bad in [
            "bucket=week",
            "since=10&until=5",
            "since=0&until=99999999",
            "event=bad name",
            "x=1",
            "since=1&since=2",
        ] {
            assert!(StatsQuery::parse(bad, 0).is_err(), "{bad}");
        }
    }
}
