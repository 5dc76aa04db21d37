//! Keeping the activity rollups (see `journal::rollup`) in step with the
//! events: each batch's changes are merged into the stored records in the
//! same atomic write as the events they count.

use super::super::rollup::{HourRollup, RollupDelta};
use super::super::store::{StoreError, WriteBatch};
use super::Writer;

impl Writer {
    /// Adds `delta` to the stored rollup records, in `writes`. Only the
    /// writer writes rollups, so read-modify-write is safe here.
    pub(super) fn write_rollups(
        &self,
        delta: &RollupDelta,
        writes: &mut WriteBatch,
    ) -> Result<(), StoreError> {
        let reader = self.store.reader();
        for (&(portal, hour), changes) in &delta.0 {
            let mut record = match reader.rollup(portal, hour)? {
                Some(bytes) => HourRollup::from_bytes(&bytes)
                    .map_err(|e| StoreError::undecodable(format!("rollup {portal}/{hour}"), e.0))?,
                None => HourRollup::default(),
            };
            record.apply(changes);
            if record.is_empty() {
                writes.delete_rollup(portal, hour);
            } else {
                writes.put_rollup(portal, hour, record.to_bytes());
            }
        }
        Ok(())
    }
}
