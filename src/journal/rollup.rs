//! Activity rollups: per portal and per hour (of the events' `ts`), how
//! many events of each name were stored and how many duplicates of them
//! arrived. The writer keeps them in the same atomic batch as the events
//! (and retention and erase in the same batches as their deletions), so a
//! chart over 30 days reads 720 small records instead of the events.
//!
//! A duplicate is counted in the hour and under the name of the event it
//! repeats: retention, which deletes an event with its duplicate count,
//! then takes both back out of the same record.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::record::PortalIx;

/// Seconds per rollup bucket.
pub const HOUR_SECS: u64 = 3600;

/// The hour (Unix hours) a `ts` (Unix seconds) falls in.
pub fn hour_of(ts: u64) -> u64 {
    ts / HOUR_SECS
}

/// One name's counts in one hour.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Events stored.
    pub events: u64,
    /// Duplicates of them received.
    pub duplicates: u64,
}

/// One portal's hour: counts by event name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HourRollup {
    /// Event name → counts; names with nothing left are dropped.
    pub names: BTreeMap<String, Counts>,
}

/// A rollup record that does not decode.
#[derive(Debug, thiserror::Error)]
#[error("undecodable rollup record: {0}")]
pub struct RollupError(#[from] pub postcard::Error);

impl HourRollup {
    /// The stored form (postcard).
    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("a map of strings and integers serialises")
    }

    /// Reads the stored form.
    pub fn from_bytes(bytes: &[u8]) -> Result<HourRollup, RollupError> {
        Ok(postcard::from_bytes(bytes)?)
    }

    /// Adds signed changes (retention subtracts), never below zero.
    pub fn apply(&mut self, changes: &BTreeMap<String, (i64, i64)>) {
        for (name, &(events, duplicates)) in changes {
            let c = self.names.entry(name.clone()).or_default();
            c.events = c.events.saturating_add_signed(events);
            c.duplicates = c.duplicates.saturating_add_signed(duplicates);
            if c.events == 0 && c.duplicates == 0 {
                self.names.remove(name);
            }
        }
    }

    /// Whether it counts nothing (then it is deleted, not stored).
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The sum over every name.
    pub fn total(&self) -> Counts {
        self.names.values().fold(Counts::default(), |a, c| Counts {
            events: a.events + c.events,
            duplicates: a.duplicates + c.duplicates,
        })
    }
}

/// Changes to rollups that one batch makes: (portal, hour) → name →
/// (events, duplicates).
#[derive(Debug, Default)]
pub struct RollupDelta(pub BTreeMap<(PortalIx, u64), BTreeMap<String, (i64, i64)>>);

impl RollupDelta {
    /// Counts `events` and `duplicates` (either may be negative) for an
    /// event named `name` with `ts`.
    pub fn add(&mut self, portal: PortalIx, ts: u64, name: &str, events: i64, duplicates: i64) {
        let slot = self
            .0
            .entry((portal, hour_of(ts)))
            .or_default()
            .entry(name.to_owned())
            .or_default();
        slot.0 += events;
        slot.1 += duplicates;
    }

    /// Whether there is nothing to change.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apply_counts_and_drops_empty_names() {
        let mut delta = RollupDelta::default();
        delta.add(0, 7200, "A", 2, 1);
        delta.add(0, 7300, "B", 1, 0);
        let changes = &delta.0[&(0, 2)];
        let mut r = HourRollup::default();
        r.apply(changes);
        assert_eq!(
            r.total(),
            Counts {
                events: 3,
                duplicates: 1
            }
        );
        let back = HourRollup::from_bytes(&r.to_bytes()).unwrap();
        assert_eq!(back, r);
        let mut minus = BTreeMap::new();
        minus.insert("A".to_owned(), (-2, -1));
        minus.insert("B".to_owned(), (-1, 0));
        r.apply(&minus);
        assert!(r.is_empty());
    }
}
