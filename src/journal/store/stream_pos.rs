//! The replicated log's position: in cluster mode, the sequence of the
//! last stream message the journal applied, written in the same atomic
//! batch as what that message changed, so that a restart resumes exactly
//! after it (nothing applied twice, nothing skipped).
//!
//! One key, `Q` (no portal), holding a u64 BE; absent in embedded mode and
//! in journals that never applied a stream message. A backup copies it
//! with the rest, so a node restored from a peer's backup knows where to
//! resume the stream.

use super::batch::WriteBatch;
use super::error::StoreError;
use super::keys::{be_u64, STREAM_SEQ};
use super::reader::Reader;

impl WriteBatch {
    /// Records `seq` as the last applied stream message.
    pub fn put_stream_seq(&mut self, seq: u64) {
        self.insert(vec![STREAM_SEQ], seq.to_be_bytes().to_vec());
    }
}

impl Reader {
    /// The last applied stream message (0 when none was applied).
    pub fn stream_seq(&self) -> Result<u64, StoreError> {
        match self.tree()?.get([STREAM_SEQ])? {
            None => Ok(0),
            Some(v) => {
                be_u64(&v).ok_or_else(|| StoreError::Corrupt("stream position is not a u64".into()))
            }
        }
    }
}
