//! Verify: prove an event came from a portal we trust.
//!
//! Bitrix24 signs nothing; the only proof of origin is `auth[application_token]`,
//! a fixed secret per installation (Bitrix24's REST docs). We keep only the
//! SHA-256 digest of each configured token and compare digests in constant
//! time, so neither the token's bytes nor its length leak through timing.
//!
//! Tokens come from two places: the configuration (`--portal`, env, file),
//! which always wins, and the journal's registrations, learnt from
//! ONAPPINSTALL events of allowed domains (`--install-domains`). A portal
//! whose application was uninstalled is refused until it is installed again.

use std::collections::HashMap;

use crate::decode::IncomingEvent;
use crate::journal::registration::Status;
use crate::journal::{Lifecycle, PortalDirectory};
use crate::types::{MemberId, Secret, TokenDigest};

/// The event that carries a new installation's token.
pub const INSTALL_EVENT: &str = "ONAPPINSTALL";
/// The event sent when the application is removed from a portal.
pub const UNINSTALL_EVENT: &str = "ONAPPUNINSTALL";

/// Why an event was not trusted. The token cases answer the same 401, so
/// that a prober cannot tell which member ids exist.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    /// No token is known for this `member_id`.
    #[error("unknown portal")]
    UnknownPortal,
    /// The token does not match the one on record.
    #[error("wrong application token")]
    WrongToken,
    /// The portal's application was uninstalled.
    #[error("portal is uninstalled")]
    Uninstalled,
    /// An ONAPPINSTALL from a domain outside `--install-domains`.
    #[error("domain not allowed to install")]
    DomainNotAllowed,
}

/// A domain pattern of `--install-domains`: `crm.example.ru` matches only
/// itself, `*.bitrix24.com` matches any sub-domain of `bitrix24.com`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DomainPattern {
    /// The domain itself.
    Exact(String),
    /// Any domain ending in `.suffix`.
    Suffix(String),
}

impl DomainPattern {
    /// Parses one pattern (lower-cased).
    pub fn parse(raw: &str) -> Result<Self, String> {
        let raw = raw.trim().to_ascii_lowercase();
        let valid = |d: &str| {
            !d.is_empty()
                && d.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b':'))
        };
        match raw.strip_prefix("*.") {
            Some(rest) if valid(rest) => Ok(DomainPattern::Suffix(format!(".{rest}"))),
            None if valid(&raw) => Ok(DomainPattern::Exact(raw)),
            _ => Err(format!("{raw:?} is not a domain or a *.domain pattern")),
        }
    }

    /// Whether `domain` (lower-case) matches.
    pub fn matches(&self, domain: &str) -> bool {
        match self {
            DomainPattern::Exact(d) => d == domain,
            DomainPattern::Suffix(s) => domain.ends_with(s.as_str()),
        }
    }
}

/// The portals we accept events from, with their token digests.
#[derive(Debug, Clone, Default)]
pub struct Verifier {
    tokens: HashMap<MemberId, TokenDigest>,
    install_domains: Vec<DomainPattern>,
}

impl Verifier {
    /// Builds the verifier from configured `(member_id, application_token)`
    /// pairs (the raw tokens are dropped here) and the install allowlist
    /// (empty: learning portals from ONAPPINSTALL is off).
    pub fn new(
        portals: impl IntoIterator<Item = (MemberId, Secret)>,
        install_domains: Vec<DomainPattern>,
    ) -> Self {
        Verifier {
            tokens: portals
                .into_iter()
                .map(|(member, token)| (member, token.digest()))
                .collect(),
            install_domains,
        }
    }

    /// Checks an event against the configuration and the journal's
    /// registrations, and says what it does to the registration. The writer
    /// re-checks an install against registrations atomically (takeover).
    pub fn check(
        &self,
        event: &IncomingEvent,
        dir: &PortalDirectory,
    ) -> Result<Lifecycle, VerifyError> {
        let presented = event.application_token.digest();
        let member = event.member_id.as_str();
        let configured = self.tokens.get(member);
        let registration = dir.registration(member);
        let name = event.event.as_str();

        if name == INSTALL_EVENT {
            if let Some(expected) = configured {
                return if expected.ct_eq(&presented) {
                    Ok(Lifecycle::Install {
                        token: presented,
                        configured: true,
                    })
                } else {
                    Err(VerifyError::WrongToken)
                };
            }
            if !self.install_domains.is_empty() {
                let domain = event.profile.domain.as_str();
                if !self.install_domains.iter().any(|p| p.matches(domain)) {
                    return Err(VerifyError::DomainNotAllowed);
                }
                return Ok(Lifecycle::Install {
                    token: presented,
                    configured: false,
                });
            }
            // Learning is off: an install is an ordinary event of a portal
            // registered by an operator, or unknown.
        }

        let trusted = match (configured, registration.and_then(|r| r.token_sha256)) {
            (Some(expected), _) => expected.ct_eq(&presented),
            (None, Some(recorded)) => TokenDigest(recorded).ct_eq(&presented),
            (None, None) => {
                // Spend the same work as a real comparison, so that an unknown
                // member id does not answer measurably faster than a known one.
                let _ = TokenDigest([0; 32]).ct_eq(&presented);
                return Err(VerifyError::UnknownPortal);
            }
        };
        if !trusted {
            return Err(VerifyError::WrongToken);
        }
        if registration.is_some_and(|r| r.status == Status::Uninstalled) {
            return Err(VerifyError::Uninstalled);
        }
        Ok(if name == UNINSTALL_EVENT {
            Lifecycle::Uninstall
        } else {
            Lifecycle::Ordinary
        })
    }

    /// Whether a token is configured for `member`.
    pub fn is_configured(&self, member: &str) -> bool {
        self.tokens.contains_key(member)
    }

    /// The configured member ids, sorted.
    pub fn members(&self) -> Vec<MemberId> {
        let mut members: Vec<_> = self.tokens.keys().cloned().collect();
        members.sort();
        members
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::{decode, BodyKind};

    fn event(member: &str, token: &str) -> IncomingEvent {
        let body = format!(
            "event=X&ts=1&auth[member_id]={member}&auth[domain]=d.example&auth[application_token]={token}"
        );
        decode(BodyKind::Form, body.as_bytes()).unwrap()
    }

    #[test]
    fn accepts_only_the_right_token_for_the_right_portal() {
        let v = Verifier::new(
            [
                (MemberId::parse("m1").unwrap(), Secret::new("t1".into())),
                (MemberId::parse("m2").unwrap(), Secret::new("t2".into())),
            ],
            Vec::new(),
        );
        let dir = PortalDirectory::default();
        assert_eq!(v.check(&event("m1", "t1"), &dir), Ok(Lifecycle::Ordinary));
        assert_eq!(
            v.check(&event("m1", "t2"), &dir),
            Err(VerifyError::WrongToken)
        );
        assert_eq!(
            v.check(&event("m3", "t1"), &dir),
            Err(VerifyError::UnknownPortal)
        );
    }

    #[test]
    fn domain_patterns() {
        let p = DomainPattern::parse("*.Bitrix24.com").unwrap();
        assert!(p.matches("acme.bitrix24.com"));
        assert!(!p.matches("bitrix24.com"));
        assert!(!p.matches("evilbitrix24.com"));
        let e = DomainPattern::parse("crm.example.ru").unwrap();
        assert!(e.matches("crm.example.ru") && !e.matches("x.crm.example.ru"));
        assert!(DomainPattern::parse("*.").is_err());
        assert!(DomainPattern::parse("a b").is_err());
    }
}
