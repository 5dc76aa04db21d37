//! Offline events: pulling what Bitrix24 queued, so that events survive
//! our downtime and a journal can run without a public URL.
//!
//! An application bound with `event_type=offline` has the portal queue one
//! record per changed object; b24-journal fetches them with
//! `event.offline.get`, journals them through the normal writer and clears
//! them only once they are durable (`pull`). The grant to do so is the
//! refresh token of the portal's ONAPPINSTALL, kept sealed at rest
//! (`secrets`) and renewed at the OAuth server (`oauth`); calls go only to
//! the portal's own `https` endpoint (`endpoint`) through a client with
//! time and size limits (`http`, `rest`). `record` says what a pulled
//! record becomes; `portal` holds one portal's state and token; this file
//! runs one task per portal: a poll every `--offline-poll`, at once on an
//! ONOFFLINEEVENT, a bounded number of pulls at a time, back-off with
//! jitter after errors, and nothing at all once the grant is revoked. The
//! puller never blocks ingest: it talks to the writer like any client.

pub mod config;
pub mod endpoint;
pub mod http;
pub mod oauth;
pub mod portal;
pub mod pull;
pub mod record;
pub mod rest;
pub mod secrets;
pub mod sink;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{watch, Semaphore};

use crate::decode::Grant;
use crate::journal::pull_state::{ClearMode, PullState, TokenState};
use crate::journal::record::PortalProfile;
use crate::journal::AppendError;
use crate::types::{millis_to_rfc3339, MemberId};
use config::OfflineConfig;
use portal::{Outbound, Portal};
use secrets::SecretsKey;
use sink::Sink;

/// Longest back-off after repeated errors.
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// First back-off after an error.
const FIRST_BACKOFF: Duration = Duration::from_secs(2);

/// Why the puller cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The OAuth server URL may not be used.
    #[error("[app] oauth_server: {0}")]
    OAuthServer(#[from] endpoint::EndpointError),
    /// The HTTP client could not be built.
    #[error("outbound HTTP client: {0}")]
    Client(#[from] reqwest::Error),
    /// The saved pull states could not be read.
    #[error("reading the offline pull states: {0}")]
    Store(#[from] crate::journal::store::StoreError),
}

/// Why an install's grant was not kept.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// The install's `client_endpoint` may not be called.
    #[error("auth[client_endpoint] refused: {0}")]
    Endpoint(#[from] endpoint::EndpointError),
    /// The install carries no `client_endpoint`.
    #[error("the install event has no auth[client_endpoint]")]
    NoEndpoint,
    /// The sealed token could not be saved.
    #[error("saving the sealed refresh token: {0}")]
    Journal(#[from] AppendError),
}

/// A portal's pulling state as the API and the CLI show it (never a
/// token).
#[derive(Debug, Clone, Serialize)]
pub struct PullStatus {
    /// `pull` or `reconcile`.
    pub policy: &'static str,
    /// `ok`, `refreshing` or `revoked`.
    pub token: &'static str,
    /// `reserve` (clear=0), `delete` (clear=1, the plan lacks extended
    /// offline events) or `unknown` (not pulled yet).
    pub clear_mode: &'static str,
    /// RFC 3339 time of the last pull that emptied the queue.
    pub last_pull: Option<String>,
    /// Records fetched and journaled.
    pub pulled: u64,
    /// Records stored as new events.
    pub recovered: u64,
    /// Records a pushed event already stood for.
    pub reconciled: u64,
    /// Records fetched again (already journaled).
    pub duplicates: u64,
    /// A reserved batch is being journaled or awaits its clear.
    pub in_flight: bool,
    /// The last error, if the last pull failed.
    pub last_error: Option<String>,
    /// Whether this node pulls the portal (cluster mode: holds its lease).
    pub pulls_here: bool,
}

impl PullStatus {
    /// The status of a saved `state` pulled with `policy`.
    pub fn of(state: &PullState, policy: &'static str, refreshing: bool) -> PullStatus {
        PullStatus {
            policy,
            token: match (state.token, refreshing) {
                (TokenState::Revoked, _) => "revoked",
                (TokenState::Ok, true) => "refreshing",
                (TokenState::Ok, false) => "ok",
            },
            clear_mode: match state.clear_mode {
                ClearMode::Unknown => "unknown",
                ClearMode::Reserve => "reserve",
                ClearMode::Delete => "delete",
            },
            last_pull: state.last_pull_ms.map(millis_to_rfc3339),
            pulled: state.pulled,
            recovered: state.recovered,
            reconciled: state.reconciled,
            duplicates: state.duplicates,
            in_flight: state.in_flight.is_some(),
            last_error: state.last_error.clone(),
            pulls_here: true,
        }
    }
}

/// The puller: one task per pulled portal.
pub struct Offline {
    inner: Arc<Inner>,
}

struct Inner {
    config: OfflineConfig,
    out: Outbound,
    portals: Mutex<HashMap<String, Arc<Portal>>>,
    permits: Semaphore,
    stopping: watch::Receiver<bool>,
}

impl Offline {
    /// Starts pulling every portal with a saved grant and a policy. In
    /// cluster mode every node runs a task per portal, and the one holding
    /// the portal's lease pulls; portals whose grant another node received
    /// are picked up as their state is applied here.
    pub fn start(
        config: OfflineConfig,
        key: SecretsKey,
        sink: Sink,
        stopping: watch::Receiver<bool>,
    ) -> Result<Offline, StartError> {
        let journal = sink.journal().clone();
        let token_url =
            endpoint::oauth_token_url(&config.app.oauth_server, config.allow_http_loopback)?;
        if config.allow_http_loopback {
            tracing::warn!("--offline-allow-http-loopback is on: plain-http REST and OAuth endpoints on loopback addresses are accepted (for tests and the demo only)");
        }
        let states = journal.reader().store().pull_states()?;
        let out = Outbound {
            http: http::client(config.call_timeout)?,
            token_url,
            app: config.app.clone(),
            key,
            timeout: config.call_timeout,
            sink,
        };
        let inner = Arc::new(Inner {
            permits: Semaphore::new(config.concurrency.max(1)),
            config,
            out,
            portals: Mutex::new(HashMap::new()),
            stopping,
        });
        let offline = Offline { inner };
        offline.adopt(states, true);
        if offline.inner.out.sink.is_cluster() {
            let adopter = Offline {
                inner: offline.inner.clone(),
            };
            tokio::spawn(async move {
                let mut stopping = adopter.inner.stopping.clone();
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(crate::cluster::lease::RENEW_EVERY) => {}
                        _ = stopping.wait_for(|s| *s) => return,
                    }
                    let store = adopter.inner.out.sink.journal().reader().store().clone();
                    if let Ok(states) = store.pull_states() {
                        adopter.adopt(states, false);
                    }
                }
            });
        }
        Ok(offline)
    }

    /// Starts a task for each portal of `states` that has none yet and
    /// that a policy names.
    fn adopt(&self, states: Vec<PullState>, log_unnamed: bool) {
        for state in states {
            let Ok(member) = MemberId::parse(&state.member_id) else {
                continue;
            };
            if self.portal(member.as_str()).is_some() {
                continue;
            }
            match self.inner.config.policy(member.as_str()) {
                Some(policy) => self.spawn(Arc::new(Portal::new(member, policy, state))),
                None if log_unnamed => {
                    tracing::info!(member_id = %member, "a sealed grant is kept for this portal but no offline policy names it; not pulling")
                }
                None => {}
            }
        }
    }

    fn spawn(&self, portal: Arc<Portal>) {
        // Cluster mode: not until its lease is held.
        portal.pulls_here.store(
            !self.inner.out.sink.is_cluster(),
            std::sync::atomic::Ordering::Relaxed,
        );
        let key = portal.member_id.as_str().to_owned();
        self.inner
            .portals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, portal.clone());
        tokio::spawn(run(self.inner.clone(), portal));
    }

    fn portal(&self, member: &str) -> Option<Arc<Portal>> {
        self.inner
            .portals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(member)
            .cloned()
    }

    /// Keeps the grant of a verified, journaled ONAPPINSTALL: seals the
    /// refresh token, saves it durably with the portal's REST endpoint,
    /// and starts (or wakes) the portal's puller. `Ok(false)`: the portal
    /// is not pulled (no policy names it), nothing is kept.
    pub async fn installed(
        &self,
        member: &MemberId,
        profile: &PortalProfile,
        grant: Grant,
    ) -> Result<bool, InstallError> {
        let Some(policy) = self.inner.config.policy(member.as_str()) else {
            return Ok(false);
        };
        let client_endpoint = profile
            .client_endpoint
            .clone()
            .ok_or(InstallError::NoEndpoint)?;
        endpoint::rest_endpoint(
            &client_endpoint,
            &profile.domain,
            self.inner.config.allow_http_loopback,
        )?;
        let sealed = self
            .inner
            .out
            .key
            .seal(member.as_str(), &grant.refresh_token);
        let install = |s: &mut PullState| {
            s.member_id = member.as_str().to_owned();
            s.domain = profile.domain.clone();
            s.client_endpoint = client_endpoint.clone();
            s.sealed_refresh_token = sealed.clone();
            s.token = TokenState::Ok;
            s.last_error = None;
        };
        match self.portal(member.as_str()) {
            Some(portal) => {
                portal.grant(&self.inner.out.sink, install).await?;
                portal.set_access(grant.access_token);
                portal.wake.notify_one();
            }
            None => {
                // Saved, and given the install's access token, before its
                // task starts: the first pull then needs no refresh.
                let mut state = PullState::default();
                install(&mut state);
                let portal = Arc::new(Portal::new(member.clone(), policy, state));
                portal.grant(&self.inner.out.sink, |_| {}).await?;
                portal.set_access(grant.access_token);
                self.spawn(portal);
            }
        }
        tracing::info!(member_id = %member, policy = policy.as_str(), "offline pulling on: the install's refresh token is kept sealed");
        Ok(true)
    }

    /// Pulls `member` now (an ONOFFLINEEVENT arrived).
    pub fn wake(&self, member: &MemberId) {
        if let Some(p) = self.portal(member.as_str()) {
            p.wake.notify_one();
        }
    }

    /// Every pulled portal's status, by member id.
    pub fn status(&self) -> HashMap<String, PullStatus> {
        let portals = self.inner.portals.lock().unwrap_or_else(|p| p.into_inner());
        portals
            .iter()
            .map(|(member, p)| {
                // Cluster mode: what this node applied, whichever node pulls.
                let state = self
                    .inner
                    .out
                    .sink
                    .applied_state(member)
                    .unwrap_or_else(|| p.snapshot());
                let mut status = PullStatus::of(&state, p.policy.as_str(), p.is_refreshing());
                status.pulls_here = p.pulls_here.load(std::sync::atomic::Ordering::Relaxed);
                (member.clone(), status)
            })
            .collect()
    }

    /// Sets the per-portal gauges (at scrape time).
    pub fn sample_metrics(&self) {
        let m = crate::metrics::metrics();
        for (member, status) in self.status() {
            if let Some(ms) = self.portal(&member).and_then(|p| p.snapshot().last_pull_ms) {
                m.offline_last_pull
                    .with_label_values(&[member.as_str()])
                    .set((ms / 1000) as i64);
            }
            for state in ["ok", "refreshing", "revoked"] {
                m.offline_token_state
                    .with_label_values(&[member.as_str(), state])
                    .set(i64::from(status.token == state));
            }
        }
    }
}

/// The delay before retry `failures` (1, 2, …): doubling from
/// [`FIRST_BACKOFF`] up to [`MAX_BACKOFF`], with up to a quarter added at
/// random so that portals failing together do not retry together.
fn backoff(failures: u32) -> Duration {
    let base = FIRST_BACKOFF
        .saturating_mul(1u32 << failures.saturating_sub(1).min(16))
        .min(MAX_BACKOFF);
    base + base.mul_f64(fastrand::f64() / 4.0)
}

/// One portal's puller task.
async fn run(inner: Arc<Inner>, portal: Arc<Portal>) {
    let mut stopping = inner.stopping.clone();
    let mut failures = 0u32;
    // Look for reservations whose process id was never saved: after a
    // start, and after a failed pull (a fetch that timed out may still
    // have reserved its batch at the portal).
    let mut look_for_orphans = true;
    let mut delay = Duration::ZERO;
    // Cluster mode: only the node holding the portal's lease pulls.
    let mut lease = match &inner.out.sink {
        Sink::Cluster(cluster, _) => Some(cluster.lease(
            &format!("offline.{}", portal.member_id.as_str()),
            stopping.clone(),
        )),
        Sink::Local(_) => None,
    };
    loop {
        if let Some(held) = lease.as_mut() {
            let holds = *held.borrow_and_update();
            portal
                .pulls_here
                .store(holds, std::sync::atomic::Ordering::Relaxed);
            if !holds {
                tokio::select! {
                    _ = held.wait_for(|h| *h) => {}
                    _ = stopping.wait_for(|s| *s) => return,
                }
                // Taken over: the last holder may have died mid-fetch.
                portal
                    .pulls_here
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                look_for_orphans = true;
                delay = Duration::ZERO;
                tracing::info!(member_id = %portal.member_id, "this node now pulls the portal's offline queue");
            }
        }
        let revoked = portal.snapshot().token == TokenState::Revoked;
        let wait = if revoked {
            // Only a new install (which wakes us) brings a working grant.
            Duration::from_secs(u32::MAX.into())
        } else {
            delay
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = portal.wake.notified() => {}
            _ = stopping.wait_for(|s| *s) => return,
        }
        if *stopping.borrow() {
            return;
        }
        if portal.snapshot().token == TokenState::Revoked {
            continue;
        }
        let Ok(_permit) = inner.permits.acquire().await else {
            return;
        };
        let result = match lease.as_mut() {
            None => pull_once(&inner, &portal, look_for_orphans).await,
            Some(held) => {
                // Lost mid-pull: stop at once. What was published is
                // durable; the reservation in flight is saved with it.
                tokio::select! {
                    r = pull_once(&inner, &portal, look_for_orphans) => r,
                    _ = held.wait_for(|h| !*h) => {
                        tracing::warn!(member_id = %portal.member_id, "lease lost: this node stops pulling the portal");
                        continue;
                    }
                }
            }
        };
        match result {
            Ok(()) => {
                failures = 0;
                look_for_orphans = false;
                delay = inner.config.poll;
            }
            Err(e) => {
                failures += 1;
                look_for_orphans = true;
                delay = backoff(failures);
                crate::metrics::metrics()
                    .offline_errors
                    .with_label_values(&[e.kind()])
                    .inc();
                tracing::warn!(member_id = %portal.member_id, error = %e, retry_in_ms = delay.as_millis() as u64, "offline pull failed");
                let message = e.to_string();
                // A failed save here is retried with the next change.
                let _ = portal
                    .update(&inner.out.sink, |s| s.last_error = Some(message))
                    .await;
            }
        }
    }
}

/// One pull of `portal`, with its endpoint checked.
async fn pull_once(
    inner: &Inner,
    portal: &Portal,
    look_for_orphans: bool,
) -> Result<(), portal::PullError> {
    if let Sink::Cluster(cluster, _) = &inner.out.sink {
        // Apply everything the stream holds first: the last holder's
        // rotated refresh token and reservation in flight.
        cluster
            .barrier(cluster.config.publish_deadline)
            .await
            .map_err(|e| {
                portal::PullError::Journal(AppendError::Unavailable(
                    crate::journal::UnavailableCause::NotReplicated(e.to_string()),
                ))
            })?;
        portal.resync(&inner.out.sink).await;
    }
    let state = portal.snapshot();
    let endpoint = endpoint::rest_endpoint(
        &state.client_endpoint,
        &state.domain,
        inner.config.allow_http_loopback,
    )
    .map_err(|e| portal::PullError::Endpoint(e.to_string()))?;
    let cx = pull::PullContext {
        out: &inner.out,
        endpoint: &endpoint,
        batch: inner.config.batch,
        reconcile_window: inner.config.reconcile_window,
        find_orphans: look_for_orphans,
    };
    pull::pull(portal, &cx).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_up_to_a_cap() {
        for failures in 1..40 {
            let d = backoff(failures);
            let base = FIRST_BACKOFF
                .saturating_mul(1 << (failures - 1).min(16))
                .min(MAX_BACKOFF);
            assert!(d >= base && d <= base + base / 4, "{failures}: {d:?}");
        }
        assert!(backoff(30) <= MAX_BACKOFF + MAX_BACKOFF / 4);
    }
}
