//! Retention: what the journal may delete in the background.
//!
//! The journal defines the policy it applies, so that it does not depend on
//! where the policy comes from; `settings` builds one from the
//! configuration, and the writer's retention job (`writer::retain`) applies
//! it in bounded steps.

use std::time::Duration;

/// What to delete in the background (both off by default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// Delete events received more than this long ago.
    pub max_age: Option<Duration>,
    /// Keep at most this many events per portal.
    pub per_portal: Option<u64>,
    /// Time between retention passes.
    pub every: Duration,
}

impl RetentionPolicy {
    /// Whether any retention is configured.
    pub fn is_on(&self) -> bool {
        self.max_age.is_some() || self.per_portal.is_some()
    }

    /// The receive time (Unix ms) below which events are too old at
    /// `now_ms`, if there is an age limit.
    pub fn cutoff_ms(&self, now_ms: u64) -> Option<u64> {
        self.max_age
            .map(|age| now_ms.saturating_sub(age.as_millis() as u64))
    }
}
