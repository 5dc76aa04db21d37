//! Stream tickets: how a web page follows a portal with the browser's
//! standard `EventSource`, which cannot send an `Authorization` header,
//! without putting a long-lived token in a URL.
//!
//! A page holding a read token asks `POST /v1/portals/{portal}/stream-tickets`
//! (bearer auth) for a ticket and opens
//! `…/events/stream?ticket=…`. A ticket is signed (HMAC-SHA256 with a key
//! kept in the data directory, so tickets outlive a restart and an
//! `EventSource` reconnecting across one keeps working) and says: this
//! portal, these filters, until this time, on behalf of this token. It is
//! checked on every (re)connect: expired, altered, for another portal, or
//! issued for a token no longer configured (revoked by a reload) → 401.
//!
//! Threat model: a leaked ticket lets its holder read that one portal's
//! stream, with the ticket's filters, until it expires ([`TICKET_TTL`]) or
//! its token is revoked; it opens no other route and cannot be widened.
//! Tickets are never logged (the access log prints paths without queries).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// How long a ticket opens its stream: long enough for `EventSource`'s
/// reconnects across a restart or a network change; a page that stays
/// longer asks for a new one.
pub const TICKET_TTL: Duration = Duration::from_secs(3600);

/// The key file in the data directory.
pub const KEY_FILE: &str = "stream-tickets.key";

const VERSION: u8 = 1;
const TAG_LEN: usize = 32;

/// What a ticket allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    /// The portal, as named when the ticket was issued (member id or domain).
    pub portal: String,
    /// The stream's filters, as a query string (`event=…&entity_id=…`).
    pub filters: String,
    /// Fingerprint of the token it was issued for
    /// ([`access::fingerprint`](crate::access::fingerprint)).
    pub token: [u8; 16],
    /// Unix seconds after which it no longer opens a stream.
    pub expires: u64,
}

/// Why a ticket is refused. Deliberately coarse: the caller learns only
/// that it must ask for a new ticket.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TicketError {
    /// Not a ticket of ours, or altered.
    #[error("invalid stream ticket")]
    Invalid,
    /// Past its expiry.
    #[error("expired stream ticket: ask POST /v1/portals/{{portal}}/stream-tickets for a new one")]
    Expired,
}

/// The signing key. `Debug` never shows it.
#[derive(Clone)]
pub struct TicketKey([u8; 32]);

impl std::fmt::Debug for TicketKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TicketKey(<redacted>)")
    }
}

impl TicketKey {
    /// A key from raw bytes (tests).
    pub fn from_bytes(bytes: [u8; 32]) -> TicketKey {
        TicketKey(bytes)
    }

    /// Loads the key from `dir`/[`KEY_FILE`], creating it (32 random bytes,
    /// mode 0600) on first start.
    pub fn load_or_create(dir: &Path) -> std::io::Result<TicketKey> {
        use std::os::unix::fs::OpenOptionsExt;
        let path: PathBuf = dir.join(KEY_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => {
                let key: [u8; 32] = bytes.try_into().map_err(|_| {
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("{} is not 32 bytes; delete it to make a new key (open tickets then stop working)", path.display()),
                    )
                })?;
                Ok(TicketKey(key))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = [0u8; 32];
                getrandom::getrandom(&mut key).map_err(|e| std::io::Error::other(e.to_string()))?;
                let tmp = dir.join(format!("{KEY_FILE}.tmp"));
                let _ = std::fs::remove_file(&tmp);
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&tmp)?;
                file.write_all(&key)?;
                file.sync_all()?;
                std::fs::rename(&tmp, &path)?;
                std::fs::File::open(dir)?.sync_all()?;
                Ok(TicketKey(key))
            }
            Err(e) => Err(e),
        }
    }

    fn mac(&self) -> Hmac<Sha256> {
        Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes a key of any length")
    }

    /// The ticket's text form: base64url of the payload and its tag.
    pub fn sign(&self, ticket: &Ticket) -> String {
        let mut bytes = vec![VERSION];
        bytes.extend_from_slice(&ticket.expires.to_be_bytes());
        bytes.extend_from_slice(&ticket.token);
        let portal = ticket.portal.as_bytes();
        bytes.push(u8::try_from(portal.len()).unwrap_or(u8::MAX));
        bytes.extend_from_slice(&portal[..portal.len().min(255)]);
        bytes.extend_from_slice(ticket.filters.as_bytes());
        let mut mac = self.mac();
        mac.update(&bytes);
        bytes.extend_from_slice(&mac.finalize().into_bytes());
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Checks a ticket's signature and expiry (at `now`, Unix seconds).
    pub fn verify(&self, text: &str, now: u64) -> Result<Ticket, TicketError> {
        if text.len() > 8192 {
            return Err(TicketError::Invalid);
        }
        let bytes = URL_SAFE_NO_PAD
            .decode(text.trim())
            .map_err(|_| TicketError::Invalid)?;
        let body_len = bytes
            .len()
            .checked_sub(TAG_LEN)
            .ok_or(TicketError::Invalid)?;
        let (body, tag) = bytes.split_at(body_len);
        let mut mac = self.mac();
        mac.update(body);
        mac.verify_slice(tag).map_err(|_| TicketError::Invalid)?;
        // Signed by us: the layout below is ours.
        let parse = || -> Option<Ticket> {
            if *body.first()? != VERSION {
                return None;
            }
            let expires = u64::from_be_bytes(body.get(1..9)?.try_into().ok()?);
            let token: [u8; 16] = body.get(9..25)?.try_into().ok()?;
            let len = *body.get(25)? as usize;
            let portal = std::str::from_utf8(body.get(26..26 + len)?).ok()?;
            let filters = std::str::from_utf8(body.get(26 + len..)?).ok()?;
            Some(Ticket {
                portal: portal.to_owned(),
                filters: filters.to_owned(),
                token,
                expires,
            })
        };
        let ticket = parse().ok_or(TicketError::Invalid)?;
        if ticket.expires < now {
            return Err(TicketError::Expired);
        }
        Ok(ticket)
    }
}

/// Unix seconds now.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ticket() -> Ticket {
        Ticket {
            portal: "acme.bitrix24.com".into(),
            filters: "event=ONCRMDEALADD".into(),
            token: [7; 16],
            expires: 1_000,
        }
    }

    #[test]
    fn signed_tickets_verify_until_they_expire() {
        let key = TicketKey::from_bytes([1; 32]);
        let text = key.sign(&ticket());
        assert_eq!(key.verify(&text, 999), Ok(ticket()));
        assert_eq!(key.verify(&text, 1_001), Err(TicketError::Expired));
        let other = TicketKey::from_bytes([2; 32]);
        assert_eq!(other.verify(&text, 999), Err(TicketError::Invalid));
    }

    #[test]
    fn altered_tickets_are_refused() {
        let key = TicketKey::from_bytes([1; 32]);
        let mut bytes = URL_SAFE_NO_PAD.decode(key.sign(&ticket())).unwrap();
        bytes[27] ^= 1;
        let altered = URL_SAFE_NO_PAD.encode(&bytes);
        assert_eq!(key.verify(&altered, 0), Err(TicketError::Invalid));
        assert_eq!(key.verify("", 0), Err(TicketError::Invalid));
        assert_eq!(key.verify("!!", 0), Err(TicketError::Invalid));
    }

    #[test]
    fn the_key_survives_a_restart_and_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let a = TicketKey::load_or_create(dir.path()).unwrap();
        let b = TicketKey::load_or_create(dir.path()).unwrap();
        assert_eq!(a.0, b.0);
        let mode = std::fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
