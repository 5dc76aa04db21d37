//! Typed values parsed at the edge.
//!
//! Raw strings from the wire become one of these types once, where they enter
//! the program; everything inside relies on the guarantees the constructors
//! check (non-empty, bounded length, a known character set, a sane range) and
//! never re-validates.

use std::fmt;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use time::format_description::well_known::Rfc3339;
use time::format_description::FormatItem;
use time::macros::format_description;
use time::OffsetDateTime;

/// Why a raw value was refused; the caller adds the field name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid(pub &'static str);

/// A Bitrix24 portal's `member_id`: the stable identity of an installation.
///
/// Real ids are 32 hex characters; we accept 1..=128 ASCII letters, digits,
/// `-`, `_` and `.` so that unusual but harmless ids are not refused (a refused
/// event is lost for good), while keys stay bounded.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MemberId(String);

impl MemberId {
    /// Parses a raw member id.
    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        if raw.is_empty() {
            return Err(Invalid("must not be empty"));
        }
        if raw.len() > 128 {
            return Err(Invalid("must be at most 128 characters"));
        }
        if !raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            return Err(Invalid(
                "may only contain letters, digits, '-', '_' and '.'",
            ));
        }
        Ok(MemberId(raw.to_owned()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for MemberId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for MemberId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A portal's domain (`some-domain.bitrix24.com`), stored lower-case.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Domain(String);

impl Domain {
    /// Parses a host name, optionally with a port.
    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        if raw.is_empty() {
            return Err(Invalid("must not be empty"));
        }
        if raw.len() > 253 {
            return Err(Invalid("must be at most 253 characters"));
        }
        if !raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b':' | b'_'))
        {
            return Err(Invalid("is not a host name"));
        }
        Ok(Domain(raw.to_ascii_lowercase()))
    }

    /// The domain as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An event name such as `ONCRMACTIVITYUPDATE`, always upper-case.
///
/// Bitrix24 upper-cases names when a handler is bound, its docs write them in
/// camel case; matching is therefore case-insensitive and storage upper-case.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EventName(String);

impl EventName {
    /// Parses and upper-cases an event name.
    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        if raw.is_empty() {
            return Err(Invalid("must not be empty"));
        }
        if raw.len() > 100 {
            return Err(Invalid("must be at most 100 characters"));
        }
        if !raw.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(Invalid("may only contain letters, digits and '_'"));
        }
        Ok(EventName(raw.to_ascii_uppercase()))
    }

    /// The upper-case name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The id of the entity an event is about (`data[FIELDS][ID]`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EntityId(String);

impl EntityId {
    /// Longest entity id accepted; keeps index keys bounded (real ids are short
    /// integers).
    pub const MAX_LEN: usize = 200;

    /// Parses an entity id.
    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        if raw.is_empty() {
            return Err(Invalid("must not be empty"));
        }
        if raw.len() > Self::MAX_LEN {
            return Err(Invalid("must be at most 200 bytes"));
        }
        if raw.chars().any(char::is_control) {
            return Err(Invalid("must not contain control characters"));
        }
        Ok(EntityId(raw.to_owned()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A point in time in Unix seconds, within 1970..=9999 so that it always
/// formats as RFC 3339 and sorts as an unsigned big-endian key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ts(u64);

impl Ts {
    /// 9999-12-31T23:59:59Z.
    pub const MAX: Ts = Ts(253_402_300_799);
    /// The epoch.
    pub const MIN: Ts = Ts(0);

    /// Unix milliseconds of 2001-09-09 to 2286-11-20: 13 digits, the form a
    /// client that sends milliseconds by mistake (JavaScript's
    /// `Date.now()`) sends for any date it can mean.
    const MILLIS: std::ops::Range<u64> = 1_000_000_000_000..10_000_000_000_000;
    /// The answer to a value in [`Ts::MILLIS`].
    const MILLIS_HINT: &'static str =
        "must be Unix seconds; this value looks like milliseconds (13 digits): divide it by 1000";

    /// Parses a decimal string of Unix seconds (what Bitrix24 sends).
    pub fn parse_unix(raw: &str) -> Result<Self, Invalid> {
        let digits = !raw.is_empty() && raw.bytes().all(|b| b.is_ascii_digit());
        if digits && raw.len() == 13 {
            return Err(Invalid(Self::MILLIS_HINT));
        }
        if !digits || raw.len() > 12 {
            return Err(Invalid("must be Unix seconds as a non-negative integer"));
        }
        // Cannot fail: at most 12 ASCII digits always fit in a u64.
        let secs: u64 = raw.parse().map_err(|_| Invalid("is not a number"))?;
        Self::from_secs(secs)
    }

    /// Parses Unix seconds or an RFC 3339 date-time (for query bounds).
    pub fn parse_unix_or_rfc3339(raw: &str) -> Result<Self, Invalid> {
        if raw.bytes().all(|b| b.is_ascii_digit()) {
            return Self::parse_unix(raw);
        }
        let dt = OffsetDateTime::parse(raw, &Rfc3339)
            .map_err(|_| Invalid("must be Unix seconds or an RFC 3339 date-time"))?;
        let secs = u64::try_from(dt.unix_timestamp()).map_err(|_| Invalid("is before 1970"))?;
        Self::from_secs(secs)
    }

    /// Wraps Unix seconds, refusing values past year 9999 (with a hint for
    /// what looks like milliseconds).
    pub fn from_secs(secs: u64) -> Result<Self, Invalid> {
        if Self::MILLIS.contains(&secs) {
            return Err(Invalid(Self::MILLIS_HINT));
        }
        if secs > Self::MAX.0 {
            return Err(Invalid("is past the year 9999"));
        }
        Ok(Ts(secs))
    }

    /// Unix seconds.
    pub fn secs(self) -> u64 {
        self.0
    }

    /// RFC 3339 in UTC, e.g. `2016-06-20T16:21:54Z`.
    pub fn to_rfc3339(self) -> String {
        format_utc(i128::from(self.0) * 1_000_000_000, SECONDS)
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ`.
const SECONDS: &[FormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
/// `YYYY-MM-DDTHH:MM:SS.mmmZ`.
const MILLIS: &[FormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");

/// Formats Unix nanoseconds within [`Ts`]'s range as UTC.
fn format_utc(nanos: i128, format: &[FormatItem<'_>]) -> String {
    // Cannot fail: callers stay within 1970..=9999, which `time`
    // represents and formats with four-digit years.
    OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .expect("a time within 1970..=9999 is in range")
        .format(format)
        .expect("a time within 1970..=9999 formats")
}

/// Unix milliseconds as RFC 3339 UTC with millisecond precision, e.g.
/// `2016-06-20T16:21:54.123Z`; as the plain number past year 9999, which no
/// clock this runs on reaches. Not for per-event use on hot paths: event
/// rendering writes the time of day itself (`query::render`).
pub fn millis_to_rfc3339(ms: u64) -> String {
    if ms / 1000 > Ts::MAX.0 {
        return ms.to_string();
    }
    format_utc(i128::from(ms) * 1_000_000, MILLIS)
}

/// A secret (application token, read token). Its `Debug` never shows the
/// value, so a stray `?secret` in a log line leaks nothing.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: String) -> Self {
        Secret(value)
    }

    /// The SHA-256 digest: the only form in which a secret is ever compared
    /// or persisted.
    pub fn digest(&self) -> TokenDigest {
        TokenDigest(Sha256::digest(self.0.as_bytes()).into())
    }

    /// The raw value, for the one place that must compare it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// SHA-256 of a token. Comparing digests in constant time leaks neither the
/// token's bytes nor its length.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TokenDigest(pub [u8; 32]);

impl TokenDigest {
    /// Constant-time equality.
    pub fn ct_eq(&self, other: &TokenDigest) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl fmt::Debug for TokenDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenDigest(<redacted>)")
    }
}

/// The OAuth tokens an ONAPPINSTALL carries, kept apart from the event
/// (which never stores them) for offline-event pulling.
#[derive(Debug, Clone)]
pub struct Grant {
    /// `auth[refresh_token]`: renews access tokens (and itself).
    pub refresh_token: Secret,
    /// `auth[access_token]`: good for about an hour.
    pub access_token: Option<Secret>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_names_are_upper_cased() {
        assert_eq!(
            EventName::parse("onCrmActivityUpdate").unwrap().as_str(),
            "ONCRMACTIVITYUPDATE"
        );
        assert!(EventName::parse("on crm").is_err());
        assert!(EventName::parse("").is_err());
    }

    #[test]
    fn ts_accepts_unix_and_rfc3339() {
        assert_eq!(Ts::parse_unix("1466439714").unwrap().secs(), 1466439714);
        assert!(Ts::parse_unix("-1").is_err());
        assert!(Ts::parse_unix("1.5").is_err());
        assert!(Ts::parse_unix("999999999999").is_err());
        for millis in [
            Ts::parse_unix("1700000000000").unwrap_err(),
            Ts::from_secs(1_700_000_000_000).unwrap_err(),
        ] {
            assert!(millis.0.contains("looks like milliseconds"), "{}", millis.0);
        }
        assert!(!Ts::parse_unix("17000000000000")
            .unwrap_err()
            .0
            .contains("milliseconds"));
        assert_eq!(
            Ts::parse_unix_or_rfc3339("2016-06-20T16:21:54Z")
                .unwrap()
                .secs(),
            1466439714
        );
        assert_eq!(
            Ts::from_secs(1466439714).unwrap().to_rfc3339(),
            "2016-06-20T16:21:54Z"
        );
    }

    #[test]
    fn millis_format() {
        assert_eq!(millis_to_rfc3339(1466439714123), "2016-06-20T16:21:54.123Z");
        assert_eq!(millis_to_rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(millis_to_rfc3339(1466439714007), "2016-06-20T16:21:54.007Z");
        // Past year 9999 (no real clock): the number, not a panic.
        assert_eq!(millis_to_rfc3339(253_402_300_800_000), "253402300800000");
        assert_eq!(millis_to_rfc3339(u64::MAX), u64::MAX.to_string());
    }

    #[test]
    fn the_whole_ts_range_formats() {
        assert_eq!(Ts::MIN.to_rfc3339(), "1970-01-01T00:00:00Z");
        assert_eq!(Ts::MAX.to_rfc3339(), "9999-12-31T23:59:59Z");
        // A leap day, through the same path the query writes with.
        assert_eq!(
            Ts::from_secs(951_782_400).unwrap().to_rfc3339(),
            "2000-02-29T00:00:00Z"
        );
    }

    #[test]
    fn secrets_do_not_debug_print() {
        let s = Secret::new("hunter2".into());
        assert!(!format!("{s:?}").contains("hunter2"));
        assert!(s.digest().ct_eq(&Secret::new("hunter2".into()).digest()));
        assert!(!s.digest().ct_eq(&Secret::new("hunter3".into()).digest()));
    }
}
