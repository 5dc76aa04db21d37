//! One pull of one portal: fetch what Bitrix24 queued, journal it through
//! the writer, and only once that is durable clear it at the portal.
//!
//! With the plan feature "extended offline events" the fetch is
//! `clear=0`: the batch is reserved under a `process_id`, which is saved
//! (in the same atomic batch as the journaled records) before
//! `event.offline.clear` deletes exactly those records. A crash between
//! the two leaves the id saved, and the next start refetches the
//! reservation by it; deduplication makes journaling it again harmless.
//! A fetch whose answer never reached the journal (a crash, or a time-out
//! while the portal still reserved the batch) leaves a reservation whose
//! id was never saved: the first pull after a start or after a failed
//! pull finds such reservations with `event.offline.list`, which shows
//! each record's `PROCESS_ID`.
//!
//! Without the feature the portal answers `WRONG_LICENSE`; that is
//! recorded and the portal is pulled with `clear=1`, which deletes records
//! as it returns them (a crash between fetch and commit loses that batch:
//! the plan's limitation, documented in the README).

use super::config::Policy;
use super::portal::{Outbound, Portal, PullError};
use super::record::to_event;
use super::rest::{self, Fetched};
use crate::journal::pull_state::ClearMode;
use crate::journal::record::PortalProfile;
use crate::journal::{AppendError, AppendOutcome};
use crate::metrics::metrics;

/// Tries to journal one fetched batch before the pull fails.
const JOURNAL_ATTEMPTS: u32 = 5;

/// What a pull needs besides the portal.
pub struct PullContext<'a> {
    /// Outbound calls and the journal.
    pub out: &'a Outbound,
    /// The portal's REST endpoint (checked).
    pub endpoint: &'a reqwest::Url,
    /// Records asked for per fetch.
    pub batch: usize,
    /// Reconcile window (seconds) under the reconcile policy.
    pub reconcile_window: u64,
    /// Look for reservations whose id was never saved (the first pull
    /// after a start or after a failed pull).
    pub find_orphans: bool,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Pulls `portal` until its queue is empty.
pub async fn pull(portal: &Portal, cx: &PullContext<'_>) -> Result<(), PullError> {
    let saved = portal.snapshot();
    if let Some(process_id) = saved.in_flight.clone() {
        drain_reservation(portal, cx, &process_id).await?;
    }
    if cx.find_orphans && saved.clear_mode != ClearMode::Delete {
        let found = portal
            .with_token(cx.out, "event.offline.list", |token| {
                let (http, endpoint, timeout) = (&cx.out.http, cx.endpoint, cx.out.timeout);
                async move { rest::reserved_process_ids(http, endpoint, &token, timeout).await }
            })
            .await?;
        for process_id in found {
            tracing::info!(member_id = %portal.member_id, "refetching an offline batch reserved before a restart");
            drain_reservation(portal, cx, &process_id).await?;
        }
    }
    loop {
        let mode = portal.snapshot().clear_mode;
        let reserve = mode != ClearMode::Delete;
        let fetched = portal
            .with_token(cx.out, "event.offline.get", |token| {
                let (http, endpoint, timeout) = (&cx.out.http, cx.endpoint, cx.out.timeout);
                async move {
                    rest::offline_get(http, endpoint, &token, !reserve, None, cx.batch, timeout)
                        .await
                }
            })
            .await;
        let fetched = match fetched {
            Err(PullError::Call { source, .. })
                if reserve && source.code() == Some("WRONG_LICENSE") =>
            {
                tracing::warn!(member_id = %portal.member_id, "the portal's plan lacks \"extended offline events\" (WRONG_LICENSE): pulling with clear=1, which deletes records as they are fetched");
                portal
                    .update(&cx.out.sink, |s| s.clear_mode = ClearMode::Delete)
                    .await?;
                continue;
            }
            other => other?,
        };
        if reserve && mode == ClearMode::Unknown {
            portal
                .update(&cx.out.sink, |s| s.clear_mode = ClearMode::Reserve)
                .await?;
        }
        let full = fetched.events.len() + fetched.unreadable >= cx.batch;
        match (reserve, fetched.process_id.clone()) {
            (true, Some(process_id)) => {
                journal_and_clear(portal, cx, &process_id, fetched).await?;
            }
            (true, None) if !fetched.events.is_empty() => {
                return Err(PullError::Call {
                    method: "event.offline.get",
                    source: super::http::CallError::BadAnswer(
                        "clear=0 returned records without a process_id".into(),
                    ),
                });
            }
            _ => {
                journal_batch(portal, cx, &fetched, None).await?;
            }
        }
        if !full {
            break;
        }
    }
    let done = now_ms();
    portal
        .update(&cx.out.sink, |s| {
            s.last_pull_ms = Some(done);
            s.last_error = None;
        })
        .await?;
    Ok(())
}

/// Refetches reservation `process_id` until it is empty, journaling and
/// clearing each batch.
async fn drain_reservation(
    portal: &Portal,
    cx: &PullContext<'_>,
    process_id: &str,
) -> Result<(), PullError> {
    loop {
        let fetched = portal
            .with_token(cx.out, "event.offline.get", |token| {
                let (http, endpoint, timeout) = (&cx.out.http, cx.endpoint, cx.out.timeout);
                async move {
                    rest::offline_get(
                        http,
                        endpoint,
                        &token,
                        false,
                        Some(process_id),
                        cx.batch,
                        timeout,
                    )
                    .await
                }
            })
            .await?;
        if fetched.events.is_empty() {
            // Done (records that cannot be read stay reserved: the portal
            // drops them after about 30 days).
            portal
                .update(&cx.out.sink, |s| {
                    if s.in_flight.as_deref() == Some(process_id) {
                        s.in_flight = None;
                    }
                })
                .await?;
            return Ok(());
        }
        journal_and_clear(portal, cx, process_id, fetched).await?;
    }
}

/// Journals a reserved batch (saving its process id with it), then clears
/// the journaled records at the portal and forgets the id.
async fn journal_and_clear(
    portal: &Portal,
    cx: &PullContext<'_>,
    process_id: &str,
    fetched: Fetched,
) -> Result<(), PullError> {
    let journaled = journal_batch(portal, cx, &fetched, Some(process_id)).await?;
    if !journaled.is_empty() {
        portal
            .with_token(cx.out, "event.offline.clear", |token| {
                let (http, endpoint, timeout) = (&cx.out.http, cx.endpoint, cx.out.timeout);
                let ids = &journaled;
                async move {
                    rest::offline_clear(http, endpoint, &token, process_id, ids, timeout).await
                }
            })
            .await?;
    }
    portal
        .update(&cx.out.sink, |s| {
            if s.in_flight.as_deref() == Some(process_id) {
                s.in_flight = None;
            }
        })
        .await?;
    Ok(())
}

/// Journals the readable records of `fetched` (with `in_flight` saved in
/// the same batch); returns the MESSAGE_IDs durably journaled. Any record
/// the journal refused fails the whole pull, so that nothing of it is
/// cleared.
async fn journal_batch(
    portal: &Portal,
    cx: &PullContext<'_>,
    fetched: &Fetched,
    in_flight: Option<&str>,
) -> Result<Vec<String>, PullError> {
    let m = metrics();
    if fetched.unreadable > 0 {
        m.offline_records
            .with_label_values(&["unreadable"])
            .inc_by(fetched.unreadable as u64);
        tracing::error!(member_id = %portal.member_id, count = fetched.unreadable, "offline records without ID, TIMESTAMP_X, EVENT_NAME or MESSAGE_ID were left in the portal's queue");
    }
    let state = portal.snapshot();
    let profile = PortalProfile {
        domain: state.domain.clone(),
        client_endpoint: Some(state.client_endpoint.clone()),
        server_endpoint: None,
        fixed: Vec::new(),
    };
    let window = (portal.policy == Policy::Reconcile).then_some(cx.reconcile_window);
    let mut events = Vec::with_capacity(fetched.events.len());
    let mut ids = Vec::with_capacity(fetched.events.len());
    for record in &fetched.events {
        match to_event(record, &portal.member_id, &profile, window) {
            Ok(e) => {
                events.push(e);
                ids.push(record.message_id.clone());
            }
            Err(e) => {
                m.offline_records.with_label_values(&["unreadable"]).inc();
                tracing::error!(member_id = %portal.member_id, error = %e, "offline record left in the portal's queue");
            }
        }
    }
    if events.is_empty() && in_flight.is_none() {
        return Ok(ids);
    }
    // A busy or briefly failing journal is waited for: with clear=1 the
    // records exist nowhere else.
    let mut attempt = 0;
    let outcomes = loop {
        let saved_id = in_flight.map(str::to_owned);
        match portal
            .journal(&cx.out.sink, events.clone(), move |s| {
                s.in_flight = saved_id
            })
            .await
        {
            Ok(outcomes) => break outcomes,
            Err(e) if attempt < JOURNAL_ATTEMPTS => {
                attempt += 1;
                tracing::warn!(member_id = %portal.member_id, error = %e, attempt, "journal did not take pulled records; retrying");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e.into()),
        }
    };
    for (outcome, id) in outcomes.into_iter().zip(&ids) {
        let label = match outcome {
            Ok(AppendOutcome::Stored { .. }) => "recovered",
            Ok(AppendOutcome::Duplicate { .. }) => "duplicate",
            Ok(AppendOutcome::Reconciled { .. }) => "reconciled",
            // Not stored, try later: nothing of this batch is cleared.
            Err(e @ (AppendError::QueueFull | AppendError::Unavailable(_))) => return Err(e.into()),
            // Refused for good (its domain belongs to another portal):
            // keeping it queued would stop the portal's pulling forever.
            Err(e) => {
                tracing::error!(member_id = %portal.member_id, message_id = %id, error = %e, "offline record refused by the journal; cleared at the portal");
                "refused"
            }
        };
        m.offline_records.with_label_values(&[label]).inc();
    }
    Ok(ids)
}
