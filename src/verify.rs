//! Verify: prove an event came from a portal we trust.
//!
//! Bitrix24 signs nothing; the only proof of origin is `auth[application_token]`,
//! a fixed secret per installation (../shared/PROTOCOL.md). We keep only the
//! SHA-256 digest of each configured token and compare digests in constant
//! time, so neither the token's bytes nor its length leak through timing.

use std::collections::HashMap;

use crate::decode::IncomingEvent;
use crate::types::{MemberId, Secret, TokenDigest};

/// Why an event was not trusted. Both cases answer the same 401 to the
/// caller, so that a prober cannot tell which member ids exist.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    /// No token is configured for this `member_id`.
    #[error("unknown portal")]
    UnknownPortal,
    /// The token does not match the one on record.
    #[error("wrong application token")]
    WrongToken,
}

/// The portals we accept events from, with their token digests.
#[derive(Debug, Clone, Default)]
pub struct Verifier {
    tokens: HashMap<MemberId, TokenDigest>,
}

impl Verifier {
    /// Builds the registry from configured `(member_id, application_token)`
    /// pairs. The raw tokens are dropped here.
    pub fn new(portals: impl IntoIterator<Item = (MemberId, Secret)>) -> Self {
        Verifier {
            tokens: portals
                .into_iter()
                .map(|(member, token)| (member, token.digest()))
                .collect(),
        }
    }

    /// Checks the event's application token against its portal's.
    pub fn verify(&self, event: &IncomingEvent) -> Result<(), VerifyError> {
        let presented = event.application_token.digest();
        match self.tokens.get(&event.member_id) {
            Some(expected) if expected.ct_eq(&presented) => Ok(()),
            Some(_) => Err(VerifyError::WrongToken),
            None => {
                // Spend the same work as a real comparison, so that an unknown
                // member id does not answer measurably faster than a known one.
                let _ = TokenDigest([0; 32]).ct_eq(&presented);
                Err(VerifyError::UnknownPortal)
            }
        }
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
        let v = Verifier::new([
            (MemberId::parse("m1").unwrap(), Secret::new("t1".into())),
            (MemberId::parse("m2").unwrap(), Secret::new("t2".into())),
        ]);
        assert_eq!(v.verify(&event("m1", "t1")), Ok(()));
        assert_eq!(v.verify(&event("m1", "t2")), Err(VerifyError::WrongToken));
        assert_eq!(
            v.verify(&event("m3", "t1")),
            Err(VerifyError::UnknownPortal)
        );
    }
}
