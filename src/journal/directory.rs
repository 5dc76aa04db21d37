//! The portal directory: every portal the journal knows, by number, member
//! id and domain, with the registrations.
//!
//! The writer keeps one copy as committed and publishes another, behind a
//! lock, that readers see: it only ever holds state known durable (see
//! [`super::JournalHandle::with_directory`]).

use std::collections::HashMap;

use super::record::{PortalIx, PortalRecord};
use super::registration::Registration;
use super::store::StoreError;

/// Portals by number, member id and domain, and their registrations, as
/// last committed.
#[derive(Debug, Clone, Default)]
pub struct PortalDirectory {
    portals: Vec<PortalRecord>,
    by_member: HashMap<String, PortalIx>,
    by_domain: HashMap<String, PortalIx>,
    registrations: HashMap<String, Registration>,
}

impl PortalDirectory {
    /// Builds the directory from the stored records (in number order) and
    /// registrations; refuses records whose numbers are not dense.
    pub(crate) fn from_records(
        records: Vec<PortalRecord>,
        registrations: Vec<Registration>,
    ) -> Result<Self, StoreError> {
        let mut dir = PortalDirectory {
            registrations: registrations
                .into_iter()
                .map(|r| (r.member_id.clone(), r))
                .collect(),
            ..PortalDirectory::default()
        };
        for rec in records {
            if rec.ix as usize != dir.portals.len() {
                return Err(StoreError::Corrupt(format!(
                    "portal numbers are not dense at {}",
                    rec.ix
                )));
            }
            dir.upsert(rec);
        }
        Ok(dir)
    }

    /// Inserts or replaces a portal record. New portals must come in number
    /// order (the writer sorts them), so a new one is always the next index.
    /// An erased portal (empty member id) loses its member and domain names.
    pub(super) fn upsert(&mut self, rec: PortalRecord) {
        if rec.member_id.is_empty() {
            let ix = rec.ix;
            self.by_member.retain(|_, v| *v != ix);
            self.by_domain.retain(|_, v| *v != ix);
        }
        debug_assert!(
            rec.ix as usize <= self.portals.len(),
            "portal numbers are dense"
        );
        if !rec.member_id.is_empty() {
            self.by_member.insert(rec.member_id.clone(), rec.ix);
            for p in &rec.profiles {
                self.by_domain.insert(p.domain.clone(), rec.ix);
            }
        }
        let ix = rec.ix as usize;
        if ix < self.portals.len() {
            self.portals[ix] = rec;
        } else {
            self.portals.push(rec);
        }
    }

    /// A portal's registration, if it has one.
    pub fn registration(&self, member: &str) -> Option<&Registration> {
        self.registrations.get(member)
    }

    /// Every registration.
    pub fn registrations(&self) -> impl Iterator<Item = &Registration> {
        self.registrations.values()
    }

    /// Records a registration (new or changed).
    pub(super) fn set_registration(&mut self, reg: Registration) {
        self.registrations.insert(reg.member_id.clone(), reg);
    }

    /// Forgets `member`'s registration.
    pub(super) fn remove_registration(&mut self, member: &str) {
        self.registrations.remove(member);
    }

    /// A portal by member id, or else by domain (case-insensitive).
    pub fn resolve(&self, key: &str) -> Option<&PortalRecord> {
        let ix = self
            .by_member
            .get(key)
            .or_else(|| self.by_domain.get(&key.to_ascii_lowercase()))?;
        self.portals.get(*ix as usize)
    }

    /// The portal that owns `domain`, if any.
    pub fn domain_owner(&self, domain: &str) -> Option<PortalIx> {
        self.by_domain.get(domain).copied()
    }

    /// The number of `member`'s portal.
    pub fn ix_of(&self, member: &str) -> Option<PortalIx> {
        self.by_member.get(member).copied()
    }

    /// A portal by member id.
    pub fn by_member(&self, member: &str) -> Option<&PortalRecord> {
        self.portals.get(self.ix_of(member)? as usize)
    }

    /// A portal by number.
    pub fn portal(&self, ix: PortalIx) -> Option<&PortalRecord> {
        self.portals.get(ix as usize)
    }

    /// All portals, in number order (erased ones have an empty member id).
    pub fn portals(&self) -> &[PortalRecord] {
        &self.portals
    }
}
