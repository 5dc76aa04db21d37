//! The rollup records' keys (`A`, portal, hour): the typed setters and
//! reads, kept apart from the event layout they sit beside.

use super::error::StoreError;
use super::keys::{key, ROLLUP};
use super::{Reader, WriteBatch};
use crate::journal::record::PortalIx;

/// The key of `portal`'s rollup of `hour` (Unix hours).
fn rollup_key(portal: PortalIx, hour: u64) -> Vec<u8> {
    key(ROLLUP, portal, &[&hour.to_be_bytes()])
}

impl WriteBatch {
    /// Stores a rollup record.
    pub fn put_rollup(&mut self, portal: PortalIx, hour: u64, value: Vec<u8>) {
        self.insert(rollup_key(portal, hour), value);
    }

    /// Deletes a rollup record (nothing left in its hour).
    pub fn delete_rollup(&mut self, portal: PortalIx, hour: u64) {
        self.remove(rollup_key(portal, hour));
    }
}

impl Reader {
    /// One rollup record.
    pub fn rollup(&self, portal: PortalIx, hour: u64) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .tree()?
            .get(rollup_key(portal, hour))?
            .map(|v| v.to_vec()))
    }

    /// The rollup records of hours `from..=to`, in hour order: one read per
    /// stored hour, nothing else.
    pub fn rollups(
        &self,
        portal: PortalIx,
        from: u64,
        to: u64,
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        if from > to {
            return Ok(Vec::new());
        }
        let tree = self.tree()?;
        let mut out = Vec::new();
        for kv in tree.range(rollup_key(portal, from)..=rollup_key(portal, to)) {
            let (k, v) = kv?;
            let hour = super::keys::seq_suffix(&k)?;
            out.push((hour, v.to_vec()));
        }
        Ok(out)
    }
}
