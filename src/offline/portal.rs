//! One pulled portal: its durable pull state, its access token (in memory
//! only), and the token refresh.
//!
//! Every change of the pull state is a closure applied to the latest state
//! under one lock and saved through the writer before the lock is let go,
//! so the install path and the puller never undo each other's changes. A
//! refresh holds the lock for its whole round trip: the OAuth server
//! rotates the refresh token on every use, so two refreshes at once would
//! leave one of them holding a dead token.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use reqwest::{Client, Url};
use tokio::sync::Notify;

use super::config::{AppCredentials, Policy};
use super::http::CallError;
use super::oauth::{self, RefreshError};
use super::secrets::{OpenError, SecretsKey};
use super::sink::Sink;
use crate::journal::pull_state::{PullMerge, PullState, TokenState};
use crate::journal::AppendError;
use crate::types::{MemberId, Secret};

/// Why a pull (or one of its steps) failed.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// A REST call failed.
    #[error("{method}: {source}")]
    Call {
        /// The method.
        method: &'static str,
        /// Why.
        #[source]
        source: CallError,
    },
    /// The access token could not be renewed.
    #[error(transparent)]
    Refresh(#[from] RefreshError),
    /// The grant is revoked: nothing is tried until a new install.
    #[error("the grant is revoked (invalid_grant); reinstall the application")]
    Revoked,
    /// The journal did not take the records or the state.
    #[error("journal: {0}")]
    Journal(#[from] AppendError),
    /// The sealed refresh token does not open.
    #[error(transparent)]
    Sealed(#[from] OpenError),
    /// The portal's REST endpoint may not be called.
    #[error("REST endpoint refused: {0}")]
    Endpoint(String),
}

impl PullError {
    /// A short label for the error metric.
    pub fn kind(&self) -> &'static str {
        match self {
            PullError::Call { source, .. } if source.code() == Some("WRONG_LICENSE") => "licence",
            PullError::Call { source, .. } if source.is_transient() => "transient",
            PullError::Call { .. } => "call",
            PullError::Refresh(RefreshError::Revoked) | PullError::Revoked => "revoked",
            PullError::Refresh(_) => "refresh",
            PullError::Journal(_) => "journal",
            PullError::Sealed(_) => "sealed",
            PullError::Endpoint(_) => "endpoint",
        }
    }
}

/// What a portal's calls need besides its own state.
pub struct Outbound {
    /// The HTTP client.
    pub http: Client,
    /// The OAuth server's token endpoint.
    pub token_url: Url,
    /// The application.
    pub app: AppCredentials,
    /// The sealing key.
    pub key: SecretsKey,
    /// Time limit of one call.
    pub timeout: Duration,
    /// Where state changes and pulled records go.
    pub sink: Sink,
}

/// One pulled portal.
pub struct Portal {
    /// Its member id.
    pub member_id: MemberId,
    /// How it is pulled.
    pub policy: Policy,
    /// The durable state; changed only through [`Portal::update`].
    state: tokio::sync::Mutex<PullState>,
    /// A copy of the last saved state, for status answers that must not
    /// wait on a running save.
    snapshot: Mutex<PullState>,
    /// The access token: in memory only, never saved.
    access: Mutex<Option<Secret>>,
    /// A refresh is running.
    refreshing: AtomicBool,
    /// Pull now (ONOFFLINEEVENT, a new install, shutdown).
    pub wake: Notify,
    /// This node pulls it (cluster mode: holds its lease).
    pub pulls_here: AtomicBool,
}

impl Portal {
    /// A portal with its saved `state`.
    pub fn new(member_id: MemberId, policy: Policy, state: PullState) -> Portal {
        Portal {
            member_id,
            policy,
            snapshot: Mutex::new(state.clone()),
            state: tokio::sync::Mutex::new(state),
            access: Mutex::new(None),
            refreshing: AtomicBool::new(false),
            wake: Notify::new(),
            pulls_here: AtomicBool::new(true),
        }
    }

    /// The last saved state.
    pub fn snapshot(&self) -> PullState {
        self.snapshot
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether a refresh is running.
    pub fn is_refreshing(&self) -> bool {
        self.refreshing.load(Ordering::Relaxed)
    }

    fn set_snapshot(&self, state: &PullState) {
        *self.snapshot.lock().unwrap_or_else(|p| p.into_inner()) = state.clone();
    }

    /// Applies `change` to the latest state and saves it durably. On a
    /// failed save the change is kept in memory (the next save carries it)
    /// and the error returned. In cluster mode the latest state is the one
    /// this node applied from the stream, and a change whose publish
    /// failed is dropped (the next pull starts again from what the
    /// cluster holds).
    pub async fn update(
        &self,
        sink: &Sink,
        change: impl FnOnce(&mut PullState),
    ) -> Result<(), AppendError> {
        self.save(sink, false, change).await
    }

    /// Saves a new grant (an install): in cluster mode it replaces the
    /// grant fields only, whatever the puller (maybe on another node) did
    /// meanwhile.
    pub async fn grant(
        &self,
        sink: &Sink,
        change: impl FnOnce(&mut PullState),
    ) -> Result<(), AppendError> {
        self.save(sink, true, change).await
    }

    async fn save(
        &self,
        sink: &Sink,
        grant: bool,
        change: impl FnOnce(&mut PullState),
    ) -> Result<(), AppendError> {
        let mut state = self.state.lock().await;
        self.catch_up(sink, &mut state);
        let merge = if grant {
            PullMerge::Grant
        } else {
            PullMerge::Progress {
                base: state.sealed_refresh_token.clone(),
            }
        };
        change(&mut state);
        let saved = sink.save_pull(state.clone(), merge).await;
        self.catch_up(sink, &mut state);
        self.set_snapshot(&state);
        saved
    }

    /// Cluster mode: takes the state this node applied as the latest (and
    /// shows it).
    pub async fn resync(&self, sink: &Sink) {
        let mut state = self.state.lock().await;
        self.catch_up(sink, &mut state);
        self.set_snapshot(&state);
    }

    /// Cluster mode: takes the state this node applied (a grant from
    /// another node, the committed counters) as the latest.
    fn catch_up(&self, sink: &Sink, state: &mut PullState) {
        if let Some(applied) = sink.applied_state(self.member_id.as_str()) {
            *state = applied;
        }
    }

    /// Journals `events` with the pull state `change`d (e.g. the process
    /// id in flight) in one atomic batch; returns each record's outcome.
    pub async fn journal(
        &self,
        sink: &Sink,
        events: Vec<crate::journal::NewEvent>,
        change: impl FnOnce(&mut PullState),
    ) -> Result<Vec<Result<crate::journal::AppendOutcome, AppendError>>, AppendError> {
        let mut state = self.state.lock().await;
        self.catch_up(sink, &mut state);
        let merge = PullMerge::Progress {
            base: state.sealed_refresh_token.clone(),
        };
        let mut next = state.clone();
        change(&mut next);
        let (outcomes, committed) = sink.append_pulled(events, next, merge).await?;
        *state = committed;
        self.set_snapshot(&state);
        Ok(outcomes)
    }

    /// Keeps a fresh access token (from an install) for the next call.
    pub fn set_access(&self, token: Option<Secret>) {
        *self.access.lock().unwrap_or_else(|p| p.into_inner()) = token;
    }

    /// The access token to call with, renewed first if there is none.
    pub async fn access_token(&self, out: &Outbound) -> Result<Secret, PullError> {
        let held = self
            .access
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        match held {
            Some(t) => Ok(t),
            None => self.refresh(out).await,
        }
    }

    /// Renews the access token with the sealed refresh token. The new
    /// refresh token is saved durably **before** the new access token is
    /// used: the old refresh token no longer works, so a crash after using
    /// the access token but before saving would lose the grant. On
    /// `invalid_grant` the portal is marked revoked.
    pub async fn refresh(&self, out: &Outbound) -> Result<Secret, PullError> {
        let mut state = self.state.lock().await;
        self.catch_up(&out.sink, &mut state);
        if state.token == TokenState::Revoked {
            return Err(PullError::Revoked);
        }
        self.refreshing.store(true, Ordering::Relaxed);
        let result = self.refresh_locked(out, &mut state).await;
        self.refreshing.store(false, Ordering::Relaxed);
        self.set_snapshot(&state);
        result
    }

    async fn refresh_locked(
        &self,
        out: &Outbound,
        state: &mut PullState,
    ) -> Result<Secret, PullError> {
        let member = self.member_id.as_str();
        let merge = PullMerge::Progress {
            base: state.sealed_refresh_token.clone(),
        };
        let refresh_token = out.key.open(member, &state.sealed_refresh_token)?;
        match oauth::refresh(
            &out.http,
            &out.token_url,
            &out.app,
            &refresh_token,
            out.timeout,
        )
        .await
        {
            Ok(tokens) => {
                state.sealed_refresh_token = out.key.seal(member, &tokens.refresh_token);
                state.token = TokenState::Ok;
                // Durable before use; kept in memory even if the save
                // fails, so the next save (any change) carries it.
                out.sink.save_pull(state.clone(), merge).await?;
                crate::metrics::metrics().offline_refreshes.inc();
                self.set_access(Some(tokens.access_token.clone()));
                Ok(tokens.access_token)
            }
            Err(RefreshError::Revoked) => {
                self.set_access(None);
                state.token = TokenState::Revoked;
                state.last_error = Some(RefreshError::Revoked.to_string());
                out.sink.save_pull(state.clone(), merge).await?;
                tracing::warn!(member_id = %self.member_id, "offline pulling stopped: the OAuth server refused the refresh token (invalid_grant); reinstall the application on the portal");
                Err(PullError::Revoked)
            }
            Err(e) => Err(PullError::Refresh(e)),
        }
    }

    /// Runs `call` with the access token; on `expired_token` (or an access
    /// token the portal no longer knows) renews it and retries once.
    pub async fn with_token<T, F, Fut>(
        &self,
        out: &Outbound,
        method: &'static str,
        call: F,
    ) -> Result<T, PullError>
    where
        F: Fn(Secret) -> Fut,
        Fut: std::future::Future<Output = Result<T, CallError>>,
    {
        let token = self.access_token(out).await?;
        match call(token).await {
            Err(e) if matches!(e.code(), Some("expired_token" | "invalid_token")) => {
                self.set_access(None);
                let token = self.refresh(out).await?;
                call(token)
                    .await
                    .map_err(|source| PullError::Call { method, source })
            }
            r => r.map_err(|source| PullError::Call { method, source }),
        }
    }
}
