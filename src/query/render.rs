//! Rendering: stored events as the API's JSON text.
//!
//! An event is written once, as bytes, straight into the response body (a
//! page) or into its own [`EventJson`] (a stream message), from the stored
//! record and the portal's tables; see [`Renderer`] for how the per-event
//! work is kept small.

use serde_json::value::RawValue;

use super::params::Cursor;
use crate::journal::record::{EventRecord, Interned, PortalProfile, PortalRecord, StoredData};
use crate::journal::store::StoreError;
use crate::types::{millis_to_rfc3339, Ts};

/// An event rendered for the API, with its seq.
pub type Rendered = (u64, EventJson);

/// One event object of the API as JSON text, written once by the renderer
/// and spliced as it is into pages and stream messages.
#[derive(Debug)]
pub struct EventJson(String);

impl EventJson {
    /// The JSON text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Renders the events of one portal into their public JSON form.
///
/// Each event is written once as text straight from the stored record:
/// stored JSON (`data`, the rest of `auth`) is checked and spliced in, never
/// rebuilt as a tree or passed through serde, because that work is most of
/// a query's CPU. Keys come in the order the API documents.
///
/// The portal-constant parts (member id, domain, the profile's `auth`
/// fields, event names) are the same for most events of a page, so each is
/// escaped once per renderer and copied after that (measurements:
/// docs/performance.md, `Renderer`).
pub(super) struct Renderer<'a> {
    portal: &'a PortalRecord,
    /// By profile position, filled on first use.
    profiles: Vec<Option<ProfileJson>>,
    /// Profile-less events (a record naming a position the portal lacks).
    no_profile: Option<ProfileJson>,
    /// JSON strings of event names, by name position, filled on first use.
    names: Vec<Option<Vec<u8>>>,
    /// The date of the last `ts` written.
    ts_day: DayCache,
    /// The date of the last `received_at` written.
    received_day: DayCache,
}

/// Writes RFC 3339 UTC timestamps, keeping the date part of the last day
/// written: the events of a page mostly share their day, so only the time
/// of day (plain division of the seconds of the day: UTC, no leap seconds
/// in Unix time) is written per event, and the calendar is worked out once
/// per day (docs/performance.md, `DayCache`).
#[derive(Default)]
struct DayCache(Option<(u64, [u8; 10])>);

impl DayCache {
    /// Appends `"YYYY-MM-DDTHH:MM:SSZ"`, or with `.mmm` before the `Z`
    /// when `millis` (below 1000) is given. `secs` must be within
    /// [`Ts`]'s range.
    fn write(&mut self, out: &mut Vec<u8>, secs: u64, millis: Option<u64>) {
        let day = secs / 86_400;
        let date = match self.0 {
            Some((cached, date)) if cached == day => date,
            _ => {
                let mut date = *b"1970-01-01";
                // The date part of the day's midnight.
                if let Ok(midnight) = Ts::from_secs(day * 86_400) {
                    let text = midnight.to_rfc3339();
                    if let Some(part) = text.as_bytes().get(..10) {
                        date.copy_from_slice(part);
                    }
                }
                self.0 = Some((day, date));
                date
            }
        };
        let of_day = secs % 86_400;
        out.push(b'"');
        out.extend_from_slice(&date);
        out.push(b'T');
        two_digits(out, of_day / 3600);
        out.push(b':');
        two_digits(out, of_day / 60 % 60);
        out.push(b':');
        two_digits(out, of_day % 60);
        if let Some(ms) = millis {
            out.push(b'.');
            out.push(b'0' + (ms / 100 % 10) as u8);
            two_digits(out, ms % 100);
        }
        out.extend_from_slice(b"Z\"");
    }
}

/// Appends `n` (below 100) as two digits.
fn two_digits(out: &mut Vec<u8>, n: u64) {
    out.push(b'0' + (n / 10 % 10) as u8);
    out.push(b'0' + (n % 10) as u8);
}

/// The JSON fragments one portal profile contributes to every event.
struct ProfileJson {
    /// `,"member_id":…,"domain":…`
    head: Vec<u8>,
    /// `,"auth":{"domain":…,"member_id":…` and the profile's constant
    /// fields, left open for the event's own `auth` members.
    auth: Vec<u8>,
}

impl ProfileJson {
    fn new(portal: &PortalRecord, profile: Option<&PortalProfile>) -> Self {
        let domain = profile.map(|p| p.domain.as_str());
        let mut head = Vec::with_capacity(96);
        head.extend_from_slice(b",\"member_id\":");
        json_str(&mut head, &portal.member_id);
        head.extend_from_slice(b",\"domain\":");
        json_opt_str(&mut head, domain);
        let mut auth = Vec::with_capacity(256);
        auth.extend_from_slice(b",\"auth\":{\"domain\":");
        json_opt_str(&mut auth, domain);
        auth.extend_from_slice(b",\"member_id\":");
        json_str(&mut auth, &portal.member_id);
        if let Some(p) = profile {
            let fields = [
                ("client_endpoint", p.client_endpoint.as_deref()),
                ("server_endpoint", p.server_endpoint.as_deref()),
            ];
            let fixed = p.fixed.iter().map(|(k, v)| (k.as_str(), Some(v.as_str())));
            for (key, value) in fields.into_iter().chain(fixed) {
                if let Some(value) = value {
                    auth.push(b',');
                    json_str(&mut auth, key);
                    auth.push(b':');
                    json_str(&mut auth, value);
                }
            }
        }
        ProfileJson { head, auth }
    }
}

impl<'a> Renderer<'a> {
    /// A renderer for events of `portal`.
    pub(super) fn new(portal: &'a PortalRecord) -> Self {
        Renderer {
            portal,
            profiles: std::iter::repeat_with(|| None)
                .take(portal.profiles.len())
                .collect(),
            no_profile: None,
            names: vec![None; portal.event_names.len()],
            ts_day: DayCache::default(),
            received_day: DayCache::default(),
        }
    }

    /// Event `seq` as JSON. Fails only on a corrupt record.
    pub(super) fn render(
        &mut self,
        seq: u64,
        rec: &EventRecord,
        duplicates: u32,
    ) -> Result<EventJson, StoreError> {
        let mut out = Vec::with_capacity(768);
        self.render_into(&mut out, seq, rec, duplicates)?;
        String::from_utf8(out)
            .map(EventJson)
            .map_err(|_| StoreError::Corrupt(format!("event {seq}: stored text")))
    }

    /// Appends event `seq` as JSON to `out`. The text is UTF-8 by
    /// construction: every piece is a `str` or stored JSON that
    /// `RawValue` checked. Fails only on a corrupt record, with `out` partly
    /// written: callers drop it (the whole answer fails).
    pub(super) fn render_into(
        &mut self,
        out: &mut Vec<u8>,
        seq: u64,
        rec: &EventRecord,
        duplicates: u32,
    ) -> Result<(), StoreError> {
        let portal = self.portal;
        let corrupt = |what: &str| StoreError::Corrupt(format!("event {seq}: stored {what}"));
        let inline;
        let profile = match &rec.profile {
            Interned::At(i) => match portal.profiles.get(*i as usize) {
                Some(p) => self.profiles[*i as usize]
                    .get_or_insert_with(|| ProfileJson::new(portal, Some(p))),
                None => self
                    .no_profile
                    .get_or_insert_with(|| ProfileJson::new(portal, None)),
            },
            Interned::Inline(p) => {
                inline = ProfileJson::new(portal, Some(p));
                &inline
            }
        };
        let mut uuid = uuid::Uuid::encode_buffer();
        out.extend_from_slice(b"{\"id\":\"");
        out.extend_from_slice(rec.uuid().hyphenated().encode_lower(&mut uuid).as_bytes());
        out.extend_from_slice(b"\",\"seq\":");
        json_u64(out, seq);
        out.extend_from_slice(b",\"cursor\":");
        Cursor(seq).write_json(out);
        out.extend_from_slice(&profile.head);
        out.extend_from_slice(b",\"event\":");
        match &rec.event {
            Interned::At(i) if (*i as usize) < self.names.len() => {
                let name = self.names[*i as usize].get_or_insert_with(|| {
                    let mut name = Vec::new();
                    json_str(&mut name, rec.event_name(portal));
                    name
                });
                out.extend_from_slice(name);
            }
            _ => json_str(out, rec.event_name(portal)),
        }
        out.extend_from_slice(b",\"entity_id\":");
        json_opt_str(out, rec.entity_id.as_deref());
        out.extend_from_slice(b",\"ts\":");
        // ts was checked to be within 1970..=9999 when received.
        self.ts_day
            .write(out, Ts::from_secs(rec.ts).unwrap_or(Ts::MIN).secs(), None);
        out.extend_from_slice(b",\"ts_unix\":");
        json_u64(out, rec.ts);
        out.extend_from_slice(b",\"received_at\":");
        let received = rec.received_ms();
        if received / 1000 <= Ts::MAX.secs() {
            self.received_day
                .write(out, received / 1000, Some(received % 1000));
        } else {
            json_str(out, &millis_to_rfc3339(received));
        }
        out.extend_from_slice(b",\"duplicates\":");
        json_u64(out, u64::from(duplicates));
        out.extend_from_slice(b",\"source\":\"");
        out.extend_from_slice(rec.provenance.source().as_bytes());
        out.extend_from_slice(b"\",\"message_id\":");
        json_opt_str(out, rec.provenance.message_id.as_deref());
        out.extend_from_slice(b",\"reconciled\":");
        json_u64(out, u64::from(rec.provenance.reconciled));
        out.extend_from_slice(b",\"event_handler_id\":");
        json_opt_str(out, rec.event_handler_id.as_deref());
        out.extend_from_slice(b",\"data\":");
        match &rec.data {
            StoredData::Absent => out.extend_from_slice(b"null"),
            StoredData::FieldsId => {
                out.extend_from_slice(b"{\"FIELDS\":{\"ID\":");
                json_str(out, rec.entity_id.as_deref().unwrap_or_default());
                out.extend_from_slice(b"}}");
            }
            StoredData::Json(bytes) => {
                serde_json::from_slice::<&RawValue>(bytes).map_err(|_| corrupt("data"))?;
                out.extend_from_slice(bytes);
            }
        }
        // The non-secret `auth` fields: the portal-constant ones from the
        // profile, then the ones stored with the event.
        out.extend_from_slice(&profile.auth);
        if !rec.auth.is_empty() {
            // A JSON object written by serde_json at receipt: its members go
            // in as they are.
            let raw =
                serde_json::from_slice::<&RawValue>(&rec.auth).map_err(|_| corrupt("auth"))?;
            let members = raw
                .get()
                .strip_prefix('{')
                .and_then(|r| r.strip_suffix('}'))
                .ok_or_else(|| corrupt("auth"))?;
            if !members.is_empty() {
                out.push(b',');
                out.extend_from_slice(members.as_bytes());
            }
        }
        out.extend_from_slice(b"}}");
        Ok(())
    }
}

/// Writes `s` as a JSON string.
fn json_str(out: &mut Vec<u8>, s: &str) {
    // Cannot fail: a str always serialises and writing to a Vec does not
    // fail.
    serde_json::to_writer(out, s).expect("a str serialises into a Vec");
}

/// Writes `s` as a JSON string, or `null`.
pub(super) fn json_opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => json_str(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

/// Writes `n` as a JSON number.
fn json_u64(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The day cache writes what `Ts::to_rfc3339` and `millis_to_rfc3339`
    /// write for the whole timestamp,
    /// whether the day is cached or not: day and year boundaries, leap
    /// days, the last second of year 9999, and a pseudo-random spread.
    #[test]
    fn day_cache_matches_whole_timestamps() {
        let mut secs: Vec<u64> = vec![
            0,
            59,
            86_399,
            86_400,
            951_782_399,
            951_782_400,
            951_868_799,
            1_466_439_714,
            1_700_000_000,
            Ts::MAX.secs(),
            Ts::MAX.secs() - 86_399,
        ];
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let last = *secs.last().unwrap();
            // Mostly near the previous value (cache hits), sometimes anywhere.
            secs.push(if x.is_multiple_of(4) {
                (x >> 11) % (Ts::MAX.secs() + 1)
            } else {
                (last + (x >> 40) % 7_200).min(Ts::MAX.secs())
            });
        }
        let (mut plain, mut precise) = (DayCache::default(), DayCache::default());
        for (i, &s) in secs.iter().enumerate() {
            let mut out = Vec::new();
            plain.write(&mut out, s, None);
            let want = format!("\"{}\"", Ts::from_secs(s).unwrap().to_rfc3339());
            assert_eq!(String::from_utf8(out).unwrap(), want, "secs {s}");
            let ms = s * 1000 + (i as u64 * 37) % 1000;
            let mut out = Vec::new();
            precise.write(&mut out, s, Some(ms % 1000));
            let want = format!("\"{}\"", millis_to_rfc3339(ms));
            assert_eq!(String::from_utf8(out).unwrap(), want, "ms {ms}");
        }
    }
}
