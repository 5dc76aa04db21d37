//! Leases: jobs that one node at a time must do — pulling a portal's
//! offline queue, publishing retention steps — are held through a key in
//! a NATS KV bucket whose entries expire ([`LEASE_TTL`]). A node takes a
//! free key with `create` (which fails if another node holds it), renews
//! it with `update` at the revision it last wrote (which fails if it lost
//! it), and stops the job as soon as a renewal fails. A node that dies
//! stops renewing; its key expires and another node takes the job over
//! within [`LEASE_TTL`] plus one renewal period.

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use tokio::sync::watch;

/// The KV bucket of leases.
pub const LEASES_BUCKET: &str = "b24j_leases";
/// How long a lease lives without renewal.
pub const LEASE_TTL: Duration = Duration::from_secs(6);
/// How often a node renews (or tries to take) a lease.
pub const RENEW_EVERY: Duration = Duration::from_secs(2);

/// The bucket's settings (`cluster init` creates it; a node creates it if
/// missing, with the stream's replicas).
pub fn bucket_config(replicas: usize) -> kv::Config {
    kv::Config {
        bucket: LEASES_BUCKET.into(),
        description: "b24-journal leases: which node pulls each portal, publishes retention".into(),
        history: 1,
        max_age: LEASE_TTL,
        num_replicas: replicas,
        ..Default::default()
    }
}

/// Keeps trying to hold lease `name` for `node` until `stop` turns true;
/// the returned receiver says whether this node holds it now. The lease
/// is let go (deleted) when the task stops, so another node can take it
/// at once.
pub fn hold(
    js: jetstream::Context,
    replicas: usize,
    name: String,
    node: String,
    mut stop: watch::Receiver<bool>,
) -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let mut bucket: Option<kv::Store> = None;
        let mut revision: Option<u64> = None;
        loop {
            if bucket.is_none() {
                bucket = match js.get_key_value(LEASES_BUCKET).await {
                    Ok(b) => Some(b),
                    Err(_) => js.create_key_value(bucket_config(replicas)).await.ok(),
                };
            }
            if let Some(b) = &bucket {
                let value = node.clone().into_bytes().into();
                revision = match revision {
                    Some(r) => b.update(&name, value, r).await.ok(),
                    None => b.create(&name, value).await.ok(),
                };
            } else {
                revision = None;
            }
            let held = revision.is_some();
            if *tx.borrow() != held {
                tracing::info!(lease = %name, node = %node, held, "lease changed hands");
            }
            tx.send_replace(held);
            tokio::select! {
                _ = tokio::time::sleep(RENEW_EVERY) => {}
                _ = stop.wait_for(|s| *s) => break,
                _ = tx.closed() => break,
            }
        }
        tx.send_replace(false);
        if let (Some(b), Some(_)) = (&bucket, revision) {
            let _ = b.delete(&name).await;
        }
    });
    rx
}
