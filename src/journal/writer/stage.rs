//! Staging: what one appended event becomes in the current batch.
//!
//! An event is refused (its domain belongs to another portal, or its
//! install is a takeover), counted as a duplicate (of an event earlier in
//! the batch, or of a stored one), or staged as new with the next seq of
//! its portal. Nothing here touches the store's contents: the batch is
//! kept apart from the writer's committed state until `commit` applies it.

use uuid::Uuid;

use super::super::append::{AppendError, AppendOutcome, NewEvent, Origin};
use super::super::dedup::key::dedup_key;
use super::super::provenance::Provenance;
use super::super::record::{
    bump_duplicates, store_data, EventRecord, Interned, PortalIx, PortalRecord,
};
use super::super::registration::{Lifecycle, Registration};
use super::super::store::StoreError;
use super::{now_ms, unavailable, Batch, Pending, Writer};

impl Writer {
    /// The number of `member`'s portal, in the store or created in `batch`.
    fn known_portal(&self, batch: &Batch, member: &str) -> Option<PortalIx> {
        self.directory
            .ix_of(member)
            .or_else(|| batch.new_members.get(member).copied())
    }

    /// The portal record `event`'s portal has in this batch, creating it if
    /// new.
    fn portal_for<'b>(&self, batch: &'b mut Batch, event: &NewEvent) -> &'b mut PortalRecord {
        let member = event.member_id.as_str();
        let ix = match self.known_portal(batch, member) {
            Some(ix) => ix,
            None => {
                // Cannot overflow in practice: four billion portals.
                let ix = u32::try_from(self.directory.portals().len() + batch.new_members.len())
                    .unwrap_or(u32::MAX);
                batch.new_members.insert(member.to_owned(), ix);
                batch
                    .portals
                    .insert(ix, PortalRecord::new(ix, &event.member_id));
                ix
            }
        };
        batch.portals.entry(ix).or_insert_with(|| {
            self.directory
                .portal(ix)
                .expect("`ix` came from the directory (new ones were inserted above)")
                .clone()
        })
    }

    /// Applies an install or uninstall to the portal's registration (see
    /// [`Registration::after`]).
    fn register(&self, batch: &mut Batch, event: &NewEvent) -> Result<(), AppendError> {
        if event.lifecycle == Lifecycle::Ordinary {
            return Ok(());
        }
        let member = event.member_id.as_str();
        let current = batch
            .registrations
            .get(member)
            .or_else(|| self.directory.registration(member));
        // A replicated event carries its time in its id: applying it must
        // not read this node's clock.
        let at_ms = event
            .id
            .map_or_else(now_ms, |id| (id.as_u128() >> 80) as u64);
        let next = Registration::after(
            current,
            member,
            &event.profile.domain,
            event.lifecycle,
            at_ms,
        )
        .map_err(|_takeover| AppendError::Conflict(member.to_owned()))?;
        if let Some(next) = next {
            batch.registrations.insert(member.to_owned(), next);
        }
        Ok(())
    }

    /// Decides what one event is: new (staged) or a duplicate (counted).
    pub(super) fn stage(
        &mut self,
        batch: &mut Batch,
        event: NewEvent,
    ) -> Result<AppendOutcome, AppendError> {
        // A domain names one portal: a trusted portal must not make another
        // portal's domain point at its own events. Checked before anything
        // is staged, so a refused event changes nothing.
        let member = event.member_id.as_str();
        let this = self.known_portal(batch, member);
        let domain = &event.profile.domain;
        let owner = self
            .directory
            .domain_owner(domain)
            .or_else(|| batch.domains.get(domain).copied());
        if owner.is_some_and(|owner| Some(owner) != this) {
            return Err(AppendError::DomainTaken(domain.clone()));
        }
        self.register(batch, &event)?;
        let dedup = dedup_key(
            &event.event,
            event.entity_id.as_ref(),
            event.data.as_ref(),
            event.ts,
        );
        let portal = self.portal_for(batch, &event).ix;
        batch
            .domains
            .entry(event.profile.domain.clone())
            .or_insert(portal);

        // Reconcile policy: a pulled record a pushed event stands for.
        if let Origin::Offline {
            reconcile_window: Some(window),
            ..
        } = &event.origin
        {
            if let Some((id, seq)) = self.reconcile(batch, portal, &event, *window)? {
                return Ok(AppendOutcome::Reconciled { id, seq });
            }
        }

        // A duplicate of an event earlier in this same batch.
        if let Some(&i) = batch.taken.get(&(portal, dedup)) {
            let pending = &mut batch.new_events[i];
            pending.duplicates = pending.duplicates.saturating_add(1);
            let outcome = AppendOutcome::Duplicate {
                id: pending.record.uuid(),
                seq: pending.seq,
            };
            if let Some(rec) = batch.portals.get_mut(&portal) {
                rec.duplicates += 1;
            }
            return Ok(outcome);
        }

        // A duplicate of a stored event. Only portals already in the store
        // can have stored events.
        if let Some(committed) = self.directory.by_member(member) {
            let found = self
                .tails
                .stored_duplicate(
                    self.store.reader(),
                    &self.entities,
                    committed,
                    &event,
                    &dedup,
                )
                .map_err(unavailable)?;
            if let Some(seq) = found {
                match self.bump_stored(batch, portal, seq) {
                    Ok(Some(id)) => {
                        if let Some(rec) = batch.portals.get_mut(&portal) {
                            rec.duplicates += 1;
                        }
                        return Ok(AppendOutcome::Duplicate { id, seq });
                    }
                    Ok(None) => {
                        // A dedup key without its event cannot be produced by
                        // our atomic batches; store the event rather than
                        // refuse it, and say so loudly.
                        tracing::error!(
                            portal,
                            seq,
                            "dedup key points to a missing event; storing anew"
                        );
                    }
                    Err(e) => return Err(unavailable(e)),
                }
            }
        }

        // New: take the next seq and stage it.
        let now = event.id.unwrap_or_else(Uuid::now_v7);
        let rec = batch
            .portals
            .get_mut(&portal)
            .expect("portal_for put the portal in the batch");
        let seq = rec.next_seq;
        rec.next_seq += 1;
        rec.events += 1;
        if let Some(old) = rec.renamed_from(&event.profile.domain) {
            // Kept, not refused: Bitrix24 portals can change their address
            // and keep their member id. Both names lead to the portal.
            tracing::warn!(
                member_id = %event.member_id,
                from = old,
                to = %event.profile.domain,
                "portal renamed: its auth[domain] changed; GET /v1/portals lists the old domain in previous_domains"
            );
        }
        let ts = event.ts.secs();
        if let Some(sealed) = rec.summarise(seq, ts) {
            batch.sealed.push((portal, sealed));
        }
        let name = event.event.as_str();
        let provenance = match event.origin {
            Origin::Push => Provenance::default(),
            Origin::Offline { message_id, .. } => Provenance::offline(message_id),
        };
        let record = EventRecord {
            id: now.into_bytes(),
            ts,
            event: match rec.name_index(name) {
                Some(i) => Interned::At(i),
                None => Interned::Inline(name.to_owned()),
            },
            data: store_data(
                event.data.as_ref(),
                event.entity_id.as_ref().map(|e| e.as_str()),
            ),
            entity_id: event.entity_id.map(|e| e.as_str().to_owned()),
            event_handler_id: event.event_handler_id,
            profile: match rec.profile_index(&event.profile) {
                Some(i) => Interned::At(i),
                None => Interned::Inline(event.profile),
            },
            auth: if event.auth_rest.is_empty() {
                Vec::new()
            } else {
                // Cannot fail: a JSON object with string keys always
                // serialises.
                serde_json::to_vec(&event.auth_rest).expect("a JSON object serialises")
            },
            provenance,
        };
        let received = record.received_ms();
        rec.first_received_ms.get_or_insert(received);
        rec.last_received_ms = Some(received);
        batch.taken.insert((portal, dedup), batch.new_events.len());
        batch.new_events.push(Pending {
            portal,
            seq,
            dedup,
            record,
            duplicates: 0,
        });
        Ok(AppendOutcome::Stored { id: now, seq })
    }

    /// Stored event `seq` as this batch leaves it: its rewrite in the batch
    /// (taken out, to be put back changed), else as stored; `None` if it
    /// does not exist.
    pub(super) fn current_bytes(
        &self,
        batch: &mut Batch,
        portal: PortalIx,
        seq: u64,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        match batch.rewritten.remove(&(portal, seq)) {
            Some(b) => Ok(Some(b)),
            None => self.store.reader().event(portal, seq),
        }
    }

    /// Bumps the duplicate counter of stored event `seq`; returns its id, or
    /// `None` if it does not exist.
    fn bump_stored(
        &self,
        batch: &mut Batch,
        portal: PortalIx,
        seq: u64,
    ) -> Result<Option<Uuid>, StoreError> {
        let Some(bytes) = self.current_bytes(batch, portal, seq)? else {
            return Ok(None);
        };
        let (record, _) = EventRecord::from_bytes(&bytes)
            .map_err(|e| StoreError::undecodable(format!("event {portal}/{seq}"), e))?;
        if let Some(rec) = batch.portals.get(&portal) {
            let name = record.event_name(rec).to_owned();
            batch.rollups.add(portal, record.ts, &name, 0, 1);
        }
        let mut bytes = bytes;
        bump_duplicates(&mut bytes);
        batch.rewritten.insert((portal, seq), bytes);
        Ok(Some(record.uuid()))
    }
}
