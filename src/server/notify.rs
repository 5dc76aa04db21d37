//! Tells the supervisor (systemd, `Type=notify`) where the service stands,
//! with the `sd-notify` crate: `READY=1` once the journal is open, its
//! writer runs and the socket accepts; `RELOADING=1` while a reload runs;
//! `STOPPING=1` when shutdown begins. Without `NOTIFY_SOCKET` (not under
//! systemd) each call does nothing.

use sd_notify::NotifyState;

/// The service takes requests (again, after a reload).
pub fn ready() {
    send(&[NotifyState::Ready], "READY=1");
}

/// A reload began. `MONOTONIC_USEC` is what systemd's `Type=notify-reload`
/// (253 and later) asks for with it; older versions ignore it.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now], "RELOADING=1"),
        Err(_) => send(&[NotifyState::Reloading], "RELOADING=1"),
    }
}

/// Shutdown began.
pub fn stopping() {
    send(&[NotifyState::Stopping], "STOPPING=1");
}

/// Sends `state`; a failure is logged and changes nothing else: the
/// supervisor's timeouts deal with a service that never says it is ready.
fn send(state: &[NotifyState], what: &str) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::warn!(error = %e, "cannot notify the service manager of {what}");
    }
}
