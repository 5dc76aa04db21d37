//! The application state every route shares: the journal handle, the
//! [`Live`] settings (verifier, API token digests, retention) and the
//! per-request limits.
//!
//! [`App`] is built once by [`server`](crate::server) at start-up and handed
//! to the routes; it holds no HTTP types, so the routes depend on it and it
//! depends only on the domain (journal, verify).
//!
//! What a reload (SIGHUP) may change sits in one [`Live`] value behind one
//! swap point, [`App::live`]: a request loads it once (no lock, no wait
//! while a reload runs) and sees either the old settings or the new ones,
//! never a mix.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use arc_swap::ArcSwap;
use ipnet::IpNet;
use tokio::sync::{watch, Semaphore};

use crate::access::ReadTokens;
use crate::cluster::Cluster;
use crate::journal::{JournalHandle, RetentionPolicy};
use crate::offline::Offline;
use crate::tickets::TicketKey;
use crate::types::TokenDigest;
use crate::verify::Verifier;

/// The settings that change on a reload, swapped as one value.
#[derive(Debug, Clone)]
pub struct Live {
    /// Trusted portals and the install allowlist.
    pub verifier: Verifier,
    /// The read API's tokens: the one that opens every portal and the
    /// scoped ones.
    pub read: ReadTokens,
    /// Origins whose pages may call the read API (CORS).
    pub cors_origins: Arc<[String]>,
    /// Digest of the admin API's bearer token.
    pub admin_token: Option<TokenDigest>,
    /// What the background retention deletes.
    pub retention: RetentionPolicy,
}

/// State shared by the request handlers.
pub struct App {
    /// The journal.
    pub journal: JournalHandle,
    /// The settings a reload changes: load them once per request.
    pub live: ArcSwap<Live>,
    /// Time an ingest body has to arrive in.
    pub body_timeout: Duration,
    /// The data directory (for the disk-size metric).
    pub data_dir: PathBuf,
    /// Slots for live streams (SSE and long-polls).
    pub streams: Arc<Semaphore>,
    /// Turns `true` when shutdown begins: live streams end then, so that
    /// they do not hold the graceful shutdown open.
    pub stopping: watch::Receiver<bool>,
    /// Backup threads started by `POST /v1/admin/backup`: a clean stop
    /// waits for them, so that it does not leave a half-written backup.
    pub backups: Backups,
    /// The directory online backups are confined to (`None`: online
    /// backups are refused).
    pub backup_dir: Option<PathBuf>,
    /// Peers whose `X-Forwarded-For` is believed, for the logs.
    pub trusted_proxies: Vec<IpNet>,
    /// Cluster mode: this node's part (`None`: embedded mode, the default).
    /// Every state change then goes through the stream.
    pub cluster: Option<Arc<Cluster>>,
    /// The offline-event puller (`None`: pulling is off).
    pub offline: Option<Arc<Offline>>,
    /// Signs and checks stream tickets.
    pub tickets: TicketKey,
    /// Whether `/console` is served.
    pub console: bool,
}

impl App {
    /// The live settings in force now. Cheap (no lock, no reference count
    /// in the common case); hold it for the request at most, and use
    /// `live.load_full()` where it must outlive an `.await`.
    pub fn live(&self) -> arc_swap::Guard<Arc<Live>> {
        self.live.load()
    }
}

/// The backups running in this process. A backup starts and is recorded
/// under the same lock that shutdown takes to close the list, so shutdown
/// either joins a backup or the backup never starts.
#[derive(Default)]
pub struct Backups(Mutex<BackupThreads>);

#[derive(Default)]
struct BackupThreads {
    /// Set by [`Backups::close`]: no backup starts after it.
    closed: bool,
    /// The backup threads; finished ones are dropped as new ones start.
    running: Vec<JoinHandle<()>>,
}

impl Backups {
    /// Runs `job` on a thread of its own, not tokio's blocking pool: a
    /// backup of a large journal runs for minutes, and the pool (one thread
    /// per core, see `main.rs`) serves the filtered queries and live
    /// streams meanwhile. `Ok(false)`, and `job` does not run, once
    /// shutdown has begun.
    pub fn spawn(&self, job: impl FnOnce() + Send + 'static) -> std::io::Result<bool> {
        let mut threads = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if threads.closed {
            return Ok(false);
        }
        let thread = std::thread::Builder::new()
            .name("backup".into())
            .spawn(job)?;
        threads.running.retain(|t| !t.is_finished());
        threads.running.push(thread);
        Ok(true)
    }

    /// Stops new backups from starting and returns the threads still
    /// running, for shutdown to join.
    pub fn close(&self) -> Vec<JoinHandle<()>> {
        let mut threads = self.0.lock().unwrap_or_else(|p| p.into_inner());
        threads.closed = true;
        let mut running = std::mem::take(&mut threads.running);
        running.retain(|t| !t.is_finished());
        running
    }
}

#[cfg(test)]
mod tests {
    use super::Backups;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{mpsc, Arc};

    /// A running backup is handed to shutdown; once closed, no backup
    /// starts.
    #[test]
    fn close_returns_running_backups_and_refuses_new_ones() {
        let backups = Backups::default();
        let (release, wait) = mpsc::channel::<()>();
        assert!(backups
            .spawn(move || {
                let _ = wait.recv();
            })
            .unwrap());
        let running = backups.close();
        assert_eq!(running.len(), 1);
        let ran = Arc::new(AtomicBool::new(false));
        let flag = ran.clone();
        assert!(!backups
            .spawn(move || flag.store(true, Ordering::SeqCst))
            .unwrap());
        release.send(()).unwrap();
        for thread in running {
            thread.join().unwrap();
        }
        assert!(!ran.load(Ordering::SeqCst));
        assert!(backups.close().is_empty());
    }
}
