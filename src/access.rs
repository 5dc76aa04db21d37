//! Who may read what: the read API's tokens and the portals each one opens.
//!
//! The read token (`--read-token`) opens every portal; each named token of
//! `[[read_tokens]]` opens only its list. A request's token becomes an
//! [`Access`], which every read route asks before it names a portal: a
//! portal outside the list answers exactly as an unknown one does (404),
//! so a token does not even learn which other portals exist.
//!
//! Tokens are held as SHA-256 digests and compared in constant time, every
//! configured token on every request, so the time of an answer says
//! nothing about which token (if any) came close.

use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::types::TokenDigest;

/// A named read token limited to some portals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopedToken {
    /// Its name, for the logs and the CLI (never the token).
    pub name: String,
    /// SHA-256 of the token.
    pub digest: TokenDigest,
    /// The portals it opens, by member id or domain (lower-case).
    pub portals: Vec<String>,
}

/// Every token of the read API, as one value a reload swaps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadTokens {
    /// The token that opens every portal.
    pub all: Option<TokenDigest>,
    /// The named, scoped tokens.
    pub scoped: Vec<ScopedToken>,
}

/// What one request may read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// Every portal (the read token, or the admin token's routes).
    All,
    /// Only these portals (a named token).
    Only {
        /// The token's name.
        name: Arc<str>,
        /// Member ids or domains, lower-case.
        portals: Arc<[String]>,
    },
}

impl ReadTokens {
    /// Whether any read token is configured (without one the read API is
    /// closed).
    pub fn is_empty(&self) -> bool {
        self.all.is_none() && self.scoped.is_empty()
    }

    /// The access a presented token's digest gives, if it is one of ours.
    /// Compares against every token, without stopping at a match.
    pub fn check(&self, presented: &TokenDigest) -> Option<Access> {
        let mut found = None;
        if let Some(all) = &self.all {
            if all.ct_eq(presented) {
                found = Some(Access::All);
            }
        }
        for token in &self.scoped {
            if token.digest.ct_eq(presented) && found.is_none() {
                found = Some(token.access());
            }
        }
        found
    }

    /// The access of the token whose [`fingerprint`] is `fp`, if it is
    /// still configured: a stream ticket names its token this way, so that
    /// revoking the token revokes its tickets.
    pub fn by_fingerprint(&self, fp: &[u8; 16]) -> Option<Access> {
        use subtle::ConstantTimeEq;
        let mut found = None;
        if let Some(all) = &self.all {
            if bool::from(fingerprint(all).ct_eq(fp)) {
                found = Some(Access::All);
            }
        }
        for token in &self.scoped {
            if bool::from(fingerprint(&token.digest).ct_eq(fp)) && found.is_none() {
                found = Some(token.access());
            }
        }
        found
    }
}

impl ScopedToken {
    fn access(&self) -> Access {
        Access::Only {
            name: self.name.as_str().into(),
            portals: self.portals.clone().into(),
        }
    }
}

impl Access {
    /// Whether the portal with `member_id` (and `domain`, and the domains
    /// it had before) may be read.
    pub fn allows<'a>(&self, member_id: &str, domains: impl IntoIterator<Item = &'a str>) -> bool {
        match self {
            Access::All => true,
            Access::Only { portals, .. } => {
                let listed = |name: &str| portals.iter().any(|p| p.eq_ignore_ascii_case(name));
                listed(member_id) || domains.into_iter().any(listed)
            }
        }
    }

    /// Whether a name (member id or domain) as given in a URL is listed;
    /// for portals known by nothing but that name.
    pub fn allows_name(&self, name: &str) -> bool {
        self.allows(name, [])
    }
}

/// A one-way name for a token's digest, safe to put in a signed ticket: it
/// identifies the token without being usable as one.
pub fn fingerprint(digest: &TokenDigest) -> [u8; 16] {
    let mut h = Sha256::new();
    h.update(b"b24-journal stream ticket token v1");
    h.update(digest.0);
    let full = h.finalize();
    let mut fp = [0u8; 16];
    fp.copy_from_slice(&full[..16]);
    fp
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Secret;

    fn tokens() -> ReadTokens {
        ReadTokens {
            all: Some(Secret::new("all-token".into()).digest()),
            scoped: vec![ScopedToken {
                name: "acme".into(),
                digest: Secret::new("acme-token".into()).digest(),
                portals: vec!["acme.bitrix24.com".into(), "m2".into()],
            }],
        }
    }

    #[test]
    fn tokens_map_to_their_access() {
        let t = tokens();
        let d = |s: &str| Secret::new(s.into()).digest();
        assert_eq!(t.check(&d("all-token")), Some(Access::All));
        let acme = t.check(&d("acme-token")).unwrap();
        assert!(acme.allows("m1", ["acme.bitrix24.com"]));
        assert!(acme.allows("M2", []));
        assert!(!acme.allows("m3", ["other.bitrix24.com"]));
        assert_eq!(t.check(&d("nope")), None);
        let fp = fingerprint(&d("acme-token"));
        assert_eq!(t.by_fingerprint(&fp), Some(acme));
        assert_eq!(t.by_fingerprint(&[0; 16]), None);
    }
}
