//! Where a stored event came from: pushed to the ingest route by Bitrix24,
//! or pulled from its offline queue (with the record's `MESSAGE_ID`), and
//! how many offline records were reconciled with a pushed event.
//!
//! **Encoding change (additive, format 4).** The provenance is encoded
//! *after* the event record's postcard body, as [`EXTENSION_TAG`] and the
//! postcard encoding of [`Provenance`], and only when it is not the
//! default. Events written before it have no extension and read as pushed
//! and never reconciled; a binary that does not know the extension decodes
//! the body and ignores the trailing bytes (postcard's `from_bytes` leaves
//! them unread), so it shows such an event as pushed. A v3 → v4 migration
//! therefore has nothing to rewrite for this part: every existing event is
//! `source: "push"` by construction.

use serde::{Deserialize, Serialize};

/// First byte of the extension after an event record's body.
pub const EXTENSION_TAG: u8 = 0xB2;

/// An event's origin and reconciliation count.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Provenance {
    /// The offline record's `MESSAGE_ID` when the event was pulled from
    /// Bitrix24's offline queue; `None` for a pushed event.
    pub message_id: Option<String>,
    /// Offline records that matched this (pushed) event within the
    /// reconcile window and were therefore not stored again.
    pub reconciled: u32,
}

impl Provenance {
    /// A pulled event's provenance.
    pub fn offline(message_id: String) -> Self {
        Provenance {
            message_id: Some(message_id),
            reconciled: 0,
        }
    }

    /// `"offline"` or `"push"`, as the read API shows it.
    pub fn source(&self) -> &'static str {
        if self.message_id.is_some() {
            "offline"
        } else {
            "push"
        }
    }

    /// Appends the extension to an encoded record (nothing for the
    /// default, so pushed events keep version 3's bytes exactly).
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        if *self == Provenance::default() {
            return;
        }
        out.push(EXTENSION_TAG);
        // Cannot fail: postcard serialises an option of a string and an
        // integer into a Vec without error.
        out.extend_from_slice(&postcard::to_stdvec(self).expect("provenance serialises"));
    }

    /// Reads the extension from the bytes left after a record's body.
    pub fn decode(rest: &[u8]) -> Result<Self, postcard::Error> {
        match rest.split_first() {
            None => Ok(Provenance::default()),
            Some((&EXTENSION_TAG, body)) => postcard::from_bytes(body),
            Some(_) => Err(postcard::Error::DeserializeBadEncoding),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_adds_nothing_and_offline_round_trips() {
        let mut out = vec![1, 2];
        Provenance::default().encode_into(&mut out);
        assert_eq!(out, vec![1, 2]);
        let p = Provenance {
            message_id: Some("0123456789abcdef0123456789abcdef".into()),
            reconciled: 0,
        };
        let mut out = Vec::new();
        p.encode_into(&mut out);
        assert_eq!(Provenance::decode(&out).unwrap(), p);
        assert_eq!(p.source(), "offline");
        assert!(Provenance::decode(&[7]).is_err());
    }
}
