//! The secrets key and sealing: refresh tokens are the one secret
//! b24-journal keeps on disk, and only sealed with XChaCha20-Poly1305
//! (RustCrypto's `chacha20poly1305`) under a 256-bit key kept outside the
//! data directory (`--secrets-key-file`, made by `b24-journal keygen`).
//!
//! Each seal draws a fresh random 192-bit nonce (safe to draw at random,
//! unlike ChaCha20-Poly1305's 96 bits) and binds the portal's member id as
//! associated data, so a sealed token copied onto another portal's record
//! does not open. Sealed bytes: version byte, nonce, ciphertext and tag.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

use crate::types::Secret;

/// First byte of sealed bytes: the scheme, so that a later one can be
/// told apart.
const SEAL_V1: u8 = 1;
/// XChaCha20's nonce length.
const NONCE_LEN: usize = 24;

/// Why the key file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file could not be read or written.
    #[error("secrets key file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Group or others may read or write it.
    #[error("secrets key file {path} has mode {mode:o}; it must be readable by its owner only (chmod 600)")]
    Mode {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// It does not hold a key.
    #[error("secrets key file {path} does not hold a key (64 hex digits); create one with `b24-journal keygen`")]
    Malformed {
        /// The file.
        path: PathBuf,
    },
}

/// A sealed value that does not open: another key, another portal, or
/// damaged bytes.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("a sealed token does not open with this secrets key (another key file, or damaged)")]
pub struct OpenError;

/// The key refresh tokens are sealed with. Its `Debug` shows nothing.
#[derive(Clone)]
pub struct SecretsKey(XChaCha20Poly1305);

impl std::fmt::Debug for SecretsKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretsKey(<redacted>)")
    }
}

impl SecretsKey {
    /// Reads the key from `path`, refusing a file others may read.
    pub fn load(path: &Path) -> Result<SecretsKey, KeyError> {
        let io = |source| KeyError::Io {
            path: path.to_owned(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(io)?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyError::Mode {
                path: path.to_owned(),
                mode,
            });
        }
        let text = std::fs::read_to_string(path).map_err(io)?;
        let malformed = || KeyError::Malformed {
            path: path.to_owned(),
        };
        let hex = text.trim();
        if hex.len() != 64 {
            return Err(malformed());
        }
        let mut key = [0u8; 32];
        for (i, byte) in key.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| malformed())?;
        }
        Ok(SecretsKey(XChaCha20Poly1305::new(&key.into())))
    }

    /// Creates a new random key in `path` (mode 0600; an existing file is
    /// never overwritten).
    pub fn generate(path: &Path) -> Result<(), KeyError> {
        let io = |source| KeyError::Io {
            path: path.to_owned(),
            source,
        };
        let key = XChaCha20Poly1305::generate_key(&mut OsRng);
        let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(io)?;
        file.write_all(format!("{hex}\n").as_bytes()).map_err(io)?;
        file.sync_all().map_err(io)
    }

    /// Seals `secret` for portal `member_id`.
    pub fn seal(&self, member_id: &str, secret: &Secret) -> Vec<u8> {
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let payload = Payload {
            msg: secret.expose().as_bytes(),
            aad: member_id.as_bytes(),
        };
        // Cannot fail: encryption fails only for inputs longer than the
        // cipher's 256 GiB limit; a token is a few dozen bytes.
        let sealed = self.0.encrypt(&nonce, payload).expect("a token seals");
        let mut out = Vec::with_capacity(1 + NONCE_LEN + sealed.len());
        out.push(SEAL_V1);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    /// Opens what [`seal`](Self::seal) sealed for `member_id`.
    pub fn open(&self, member_id: &str, sealed: &[u8]) -> Result<Secret, OpenError> {
        if sealed.len() < 1 + NONCE_LEN || sealed[0] != SEAL_V1 {
            return Err(OpenError);
        }
        let nonce = XNonce::from_slice(&sealed[1..1 + NONCE_LEN]);
        let payload = Payload {
            msg: &sealed[1 + NONCE_LEN..],
            aad: member_id.as_bytes(),
        };
        let plain = self.0.decrypt(nonce, payload).map_err(|_| OpenError)?;
        String::from_utf8(plain)
            .map(Secret::new)
            .map_err(|_| OpenError)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keygen_seal_open_and_mode_check() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        SecretsKey::generate(&path).unwrap();
        assert!(SecretsKey::generate(&path).is_err(), "never overwrites");
        let key = SecretsKey::load(&path).unwrap();
        let token = Secret::new("refresh-4s386p3q0tr8dy89".into());
        let sealed = key.seal("member-a", &token);
        assert!(!sealed
            .windows(token.expose().len())
            .any(|w| w == token.expose().as_bytes()));
        assert_eq!(
            key.open("member-a", &sealed).unwrap().expose(),
            token.expose()
        );
        assert!(
            key.open("member-b", &sealed).is_err(),
            "bound to its portal"
        );
        let mut damaged = sealed.clone();
        *damaged.last_mut().unwrap() ^= 1;
        assert!(key.open("member-a", &damaged).is_err());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            SecretsKey::load(&path),
            Err(KeyError::Mode { .. })
        ));
        assert_eq!(format!("{key:?}"), "SecretsKey(<redacted>)");
    }
}
