//! Decode: a request body (PHP-style form or JSON) becomes an [`IncomingEvent`].
//!
//! Bitrix24 sends `application/x-www-form-urlencoded` bodies produced by PHP's
//! `http_build_query`, with bracket keys such as `data%5BFIELDS%5D%5BID%5D=999`.
//! `serde_urlencoded` cannot nest those, so the pairs are decoded here and
//! nested by hand into the same JSON tree a JSON body parses into; one function
//! then turns that tree into typed values. Secrets are taken out of the tree in
//! that same step, so nothing downstream can store or log them by mistake.

use serde_json::{Map, Value};

use crate::journal::record::PortalProfile;
use crate::journal::{Lifecycle, NewEvent, Origin};
pub use crate::types::Grant;
use crate::types::{Domain, EntityId, EventName, Invalid, MemberId, Secret, Ts};

/// Deepest nesting accepted (`a[b][c]…` or JSON objects/arrays). Real events
/// nest three levels; the bound keeps hostile bodies from costing much.
pub const MAX_DEPTH: usize = 32;
/// Most key/value pairs accepted in one form body.
pub const MAX_PAIRS: usize = 10_000;

/// The two body encodings we accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// `application/x-www-form-urlencoded`, PHP bracket keys.
    Form,
    /// `application/json`, the same structure.
    Json,
}

/// Why a body could not be decoded. Every variant names what was wrong; all
/// of them are the sender's fault (400).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// The body is not well-formed in its declared encoding.
    #[error("malformed body: {0}")]
    Malformed(String),
    /// A required field is absent.
    #[error("missing field `{0}`")]
    Missing(&'static str),
    /// A form body that failed to decode and looks like JSON: what
    /// `curl -d '{…}'` sends, as curl's `-d` declares a form.
    #[error("{0}; the body looks like JSON, but its Content-Type is application/x-www-form-urlencoded (curl -d sends that unless told otherwise): send JSON with `Content-Type: application/json`")]
    JsonAsForm(Box<DecodeError>),
    /// A field is present but unusable.
    #[error("invalid field `{field}`: {reason}")]
    Invalid {
        /// The field, in bracket notation.
        field: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

impl DecodeError {
    fn invalid(field: &str, reason: &'static str) -> Self {
        DecodeError::Invalid {
            field: field.to_owned(),
            reason,
        }
    }
}

/// `auth` fields that stay the same for an installation from one event to
/// the next, so they belong in the profile stored once per portal.
pub const PROFILE_FIELDS: [&str; 3] = ["scope", "status", "expires_in"];

/// An event as received, typed, with every secret removed except the
/// application token, which is kept apart (redacted in `Debug`) until it has
/// been verified.
#[derive(Debug, Clone)]
pub struct IncomingEvent {
    /// Upper-case event name.
    pub event: EventName,
    /// The portal's queue time.
    pub ts: Ts,
    /// `auth[member_id]`.
    pub member_id: MemberId,
    /// Domain and endpoints.
    pub profile: PortalProfile,
    /// `auth[application_token]`, to verify and then drop.
    pub application_token: Secret,
    /// `event_handler_id`, if sent.
    pub event_handler_id: Option<String>,
    /// `data[FIELDS][ID]`, else `data[FIELDS_AFTER][ID]`.
    pub entity_id: Option<EntityId>,
    /// `data` as received (`None` when absent).
    pub data: Option<Value>,
    /// Non-secret `auth` fields other than member_id, domain and endpoints
    /// (scope, status, user_id, expires, …).
    pub auth_rest: Map<String, Value>,
    /// ONAPPINSTALL's OAuth tokens, kept apart (redacted in `Debug`) for
    /// offline-event pulling, which seals the refresh token at rest; never
    /// journaled. `None` for every other event.
    pub grant: Option<Grant>,
}

impl IncomingEvent {
    /// The event to journal once verified, with what it does to the
    /// portal's registration. Drops the application token: past
    /// verification nothing needs it.
    pub fn into_new_event(self, lifecycle: Lifecycle) -> NewEvent {
        NewEvent {
            event: self.event,
            ts: self.ts,
            member_id: self.member_id,
            profile: self.profile,
            event_handler_id: self.event_handler_id,
            entity_id: self.entity_id,
            data: self.data,
            auth_rest: self.auth_rest,
            lifecycle,
            id: None,
            origin: Origin::Push,
        }
    }
}

/// Decodes a body of the given kind.
pub fn decode(kind: BodyKind, body: &[u8]) -> Result<IncomingEvent, DecodeError> {
    let decoded = match kind {
        BodyKind::Form => parse_form(body),
        BodyKind::Json => parse_json(body),
    }
    .and_then(from_tree);
    match decoded {
        Err(e) if kind == BodyKind::Form && body.trim_ascii_start().starts_with(b"{") => {
            Err(DecodeError::JsonAsForm(Box::new(e)))
        }
        other => other,
    }
}

/// Parses a PHP-style form body into a JSON object tree.
pub fn parse_form(body: &[u8]) -> Result<Map<String, Value>, DecodeError> {
    let mut root = Map::new();
    let mut pairs = 0usize;
    for segment in body.split(|&b| b == b'&') {
        if segment.is_empty() {
            continue;
        }
        pairs += 1;
        if pairs > MAX_PAIRS {
            return Err(DecodeError::Malformed(format!(
                "more than {MAX_PAIRS} fields"
            )));
        }
        let (raw_key, raw_value) = match segment.iter().position(|&b| b == b'=') {
            Some(i) => (&segment[..i], &segment[i + 1..]),
            None => (segment, &b""[..]),
        };
        let key = decode_component(raw_key)?;
        let value = decode_component(raw_value)?;
        let path = parse_key(&key)?;
        insert(&mut root, &key, &path, value)?;
    }
    Ok(root)
}

/// Parses a JSON body: an object no deeper than [`MAX_DEPTH`], with no key
/// repeated within one object and no NUL character in any key or string.
///
/// `serde_json::Value` silently keeps the last of two equal keys; like a
/// repeated form key, that makes the event ambiguous, so the tree is built
/// here by a visitor that refuses repeats. The visitor counts depth while it
/// descends, so a hostile body is refused at the 33rd level without building
/// (or recursing into) anything deeper.
pub fn parse_json(body: &[u8]) -> Result<Map<String, Value>, DecodeError> {
    use serde::de::DeserializeSeed;
    let malformed = |e: serde_json::Error| DecodeError::Malformed(format!("invalid JSON: {e}"));
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = StrictValue { depth: 0 }
        .deserialize(&mut de)
        .map_err(malformed)?;
    de.end().map_err(malformed)?;
    match value {
        Value::Object(map) => Ok(map),
        _ => Err(DecodeError::Malformed("JSON body must be an object".into())),
    }
}

/// Builds a [`Value`] refusing repeated keys, NUL characters and nesting
/// deeper than [`MAX_DEPTH`]. `depth` is the number of objects/arrays that
/// enclose the value being built.
#[derive(Clone, Copy)]
struct StrictValue {
    depth: usize,
}

impl StrictValue {
    fn enter<E: serde::de::Error>(self) -> Result<StrictValue, E> {
        if self.depth >= MAX_DEPTH {
            return Err(E::custom(format_args!(
                "nested deeper than {MAX_DEPTH} levels"
            )));
        }
        Ok(StrictValue {
            depth: self.depth + 1,
        })
    }
}

fn no_nul<E: serde::de::Error>(s: &str) -> Result<(), E> {
    if s.contains('\0') {
        return Err(E::custom("NUL character in a JSON string"));
    }
    Ok(())
}

impl<'de> serde::de::DeserializeSeed<'de> for StrictValue {
    type Value = Value;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for StrictValue {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        // serde_json never yields a non-finite number; map one to null as
        // `serde_json::Value` does.
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Value, E> {
        no_nul(v)?;
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Value, E> {
        no_nul(&v)?;
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let inner = self.enter()?;
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(inner)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut access: A) -> Result<Value, A::Error> {
        use serde::de::Error as _;
        let inner = self.enter()?;
        let mut map = Map::new();
        while let Some(key) = access.next_key::<String>()? {
            no_nul(&key)?;
            if map.contains_key(&key) {
                return Err(A::Error::custom(format_args!(
                    "duplicate key `{}`",
                    truncate(&key)
                )));
            }
            let value = access.next_value_seed(inner)?;
            map.insert(key, value);
        }
        Ok(Value::Object(map))
    }
}

/// Percent-decodes one form component strictly: `+` is a space, every `%`
/// must start a valid escape, the result must be UTF-8 without NUL bytes.
/// A component without either (most values) is checked and copied whole.
fn decode_component(raw: &[u8]) -> Result<String, DecodeError> {
    if !raw.iter().any(|&b| b == b'%' || b == b'+' || b == 0) {
        return std::str::from_utf8(raw)
            .map(str::to_owned)
            .map_err(|_| DecodeError::Malformed("form body is not UTF-8".into()));
    }
    let mut bytes = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'+' => bytes.push(b' '),
            b'%' => {
                let hex = raw
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| {
                        DecodeError::Malformed("invalid percent-escape in form body".into())
                    })?;
                bytes.push(hex);
                i += 2;
            }
            b => bytes.push(b),
        }
        i += 1;
    }
    if bytes.contains(&0) {
        return Err(DecodeError::Malformed("NUL byte in form body".into()));
    }
    String::from_utf8(bytes).map_err(|_| DecodeError::Malformed("form body is not UTF-8".into()))
}

/// One step of a bracket key.
#[derive(Debug, PartialEq, Eq)]
enum Step<'a> {
    Key(&'a str),
    /// `[]`: append to an array.
    Append,
}

/// Splits `data[FIELDS][ID]` into `data`, `FIELDS`, `ID`.
fn parse_key(key: &str) -> Result<Vec<Step<'_>>, DecodeError> {
    let bad = || DecodeError::Malformed(format!("malformed key `{}`", truncate(key)));
    let (name, mut rest) = match key.find('[') {
        Some(i) => (&key[..i], &key[i..]),
        None => (key, ""),
    };
    if name.is_empty() || name.contains(']') {
        return Err(bad());
    }
    let mut path = vec![Step::Key(name)];
    while !rest.is_empty() {
        let inner_end = rest.find(']').ok_or_else(bad)?;
        if !rest.starts_with('[') {
            return Err(bad());
        }
        let inner = &rest[1..inner_end];
        if inner.contains('[') {
            return Err(bad());
        }
        path.push(if inner.is_empty() {
            Step::Append
        } else {
            Step::Key(inner)
        });
        if path.len() > MAX_DEPTH {
            return Err(DecodeError::Malformed(format!(
                "key nested deeper than {MAX_DEPTH} levels"
            )));
        }
        rest = &rest[inner_end + 1..];
    }
    Ok(path)
}

fn truncate(s: &str) -> &str {
    match s.char_indices().nth(64) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Places `value` at `path`, refusing duplicates and scalar/structure clashes
/// (PHP would silently keep the last; an ambiguous event is better refused
/// than stored wrong, and `http_build_query` never produces either).
fn insert(
    root: &mut Map<String, Value>,
    key: &str,
    path: &[Step<'_>],
    value: String,
) -> Result<(), DecodeError> {
    let clash =
        || DecodeError::Malformed(format!("conflicting or duplicate key `{}`", truncate(key)));
    // The first step is always a key (parse_key guarantees it).
    let Some((Step::Key(first), rest)) = path.split_first() else {
        return Err(clash());
    };
    if rest.is_empty() {
        if root.contains_key(*first) {
            return Err(clash());
        }
        root.insert((*first).to_owned(), Value::String(value));
        return Ok(());
    }
    // Looked up before an entry is made: most keys share their first steps
    // (`auth[…]`), and an entry would allocate its key every time.
    if !root.contains_key(*first) {
        root.insert((*first).to_owned(), container_for(&rest[0]));
    }
    let mut node = root
        .get_mut(*first)
        .expect("the key is there: inserted just above if it was missing");
    for (i, step) in rest.iter().enumerate() {
        let last = i + 1 == rest.len();
        match (step, node) {
            (Step::Key(k), Value::Object(map)) => {
                if last {
                    if map.contains_key(*k) {
                        return Err(clash());
                    }
                    map.insert((*k).to_owned(), Value::String(value));
                    return Ok(());
                }
                if !map.contains_key(*k) {
                    map.insert((*k).to_owned(), container_for(&rest[i + 1]));
                }
                node = map
                    .get_mut(*k)
                    .expect("the key is there: inserted just above if it was missing");
            }
            (Step::Append, Value::Array(items)) => {
                if last {
                    items.push(Value::String(value));
                    return Ok(());
                }
                items.push(container_for(&rest[i + 1]));
                // Cannot fail: an element was pushed on the line above.
                node = items.last_mut().expect("just pushed");
            }
            _ => return Err(clash()),
        }
    }
    Err(clash())
}

fn container_for(step: &Step<'_>) -> Value {
    match step {
        Step::Key(_) => Value::Object(Map::new()),
        Step::Append => Value::Array(Vec::new()),
    }
}

/// Field names under `auth` that are credentials. Anything whose name ends in
/// `token` is treated as one too, so a future token field is never stored.
fn is_secret_auth_field(name: &str) -> bool {
    name.to_ascii_lowercase().ends_with("token")
}

/// Turns a decoded tree into a typed event.
pub fn from_tree(mut tree: Map<String, Value>) -> Result<IncomingEvent, DecodeError> {
    let event = required_string(&tree, "event", "event")?;
    let event = EventName::parse(&event).map_err(|Invalid(r)| DecodeError::invalid("event", r))?;

    let ts = match tree.get("ts") {
        None => return Err(DecodeError::Missing("ts")),
        Some(Value::String(s)) => {
            Ts::parse_unix(s).map_err(|Invalid(r)| DecodeError::invalid("ts", r))?
        }
        Some(Value::Number(n)) => {
            let secs = n.as_u64().ok_or_else(|| {
                DecodeError::invalid("ts", "must be Unix seconds as a non-negative integer")
            })?;
            Ts::from_secs(secs).map_err(|Invalid(r)| DecodeError::invalid("ts", r))?
        }
        Some(_) => {
            return Err(DecodeError::invalid(
                "ts",
                "must be a string of Unix seconds",
            ))
        }
    };

    let event_handler_id = match tree.get("event_handler_id") {
        None => None,
        Some(Value::String(s)) if s.len() <= 100 => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        Some(_) => {
            return Err(DecodeError::invalid(
                "event_handler_id",
                "must be a string of at most 100 characters",
            ))
        }
    };

    let mut auth = match tree.remove("auth") {
        None => return Err(DecodeError::Missing("auth[member_id]")),
        Some(Value::Object(map)) => map,
        Some(_) => return Err(DecodeError::invalid("auth", "must be a structure")),
    };
    let member_id = required_string(&auth, "member_id", "auth[member_id]")?;
    let member_id = MemberId::parse(&member_id)
        .map_err(|Invalid(r)| DecodeError::invalid("auth[member_id]", r))?;
    let domain = required_string(&auth, "domain", "auth[domain]")?;
    let domain =
        Domain::parse(&domain).map_err(|Invalid(r)| DecodeError::invalid("auth[domain]", r))?;
    let token = required_string(&auth, "application_token", "auth[application_token]")?;
    if token.is_empty() {
        return Err(DecodeError::invalid(
            "auth[application_token]",
            "must not be empty",
        ));
    }
    let application_token = Secret::new(token);
    let grant = match (event.as_str(), auth.get("refresh_token")) {
        ("ONAPPINSTALL", Some(Value::String(refresh))) if !refresh.is_empty() => Some(Grant {
            refresh_token: Secret::new(refresh.clone()),
            access_token: match auth.get("access_token") {
                Some(Value::String(a)) if !a.is_empty() => Some(Secret::new(a.clone())),
                _ => None,
            },
        }),
        _ => None,
    };
    let client_endpoint = optional_string(&auth, "client_endpoint", "auth[client_endpoint]")?;
    let server_endpoint = optional_string(&auth, "server_endpoint", "auth[server_endpoint]")?;
    auth.retain(|k, _| {
        !is_secret_auth_field(k)
            && !matches!(
                k.as_str(),
                "member_id" | "domain" | "client_endpoint" | "server_endpoint"
            )
    });
    let mut fixed = Vec::new();
    for name in PROFILE_FIELDS {
        if let Some(Value::String(v)) = auth.get(name) {
            fixed.push((name.to_owned(), v.clone()));
            auth.remove(name);
        }
    }

    let data = tree.remove("data");
    let entity_id = entity_id(data.as_ref())?;

    Ok(IncomingEvent {
        event,
        ts,
        member_id,
        profile: PortalProfile {
            domain: domain.as_str().to_owned(),
            client_endpoint,
            server_endpoint,
            fixed,
        },
        application_token,
        event_handler_id,
        entity_id,
        data,
        auth_rest: auth,
        grant,
    })
}

fn required_string(
    map: &Map<String, Value>,
    key: &str,
    field: &'static str,
) -> Result<String, DecodeError> {
    match map.get(key) {
        None => Err(DecodeError::Missing(field)),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(DecodeError::invalid(field, "must be a string")),
    }
}

fn optional_string(
    map: &Map<String, Value>,
    key: &str,
    field: &'static str,
) -> Result<Option<String>, DecodeError> {
    match map.get(key) {
        None => Ok(None),
        Some(Value::String(s)) if s.len() <= 1000 => Ok(Some(s.clone())),
        Some(Value::String(_)) => Err(DecodeError::invalid(field, "must be at most 1000 bytes")),
        Some(_) => Err(DecodeError::invalid(field, "must be a string")),
    }
}

/// `data[FIELDS][ID]`, else `data[FIELDS_AFTER][ID]`; a string or a number.
pub fn entity_id(data: Option<&Value>) -> Result<Option<EntityId>, DecodeError> {
    for (section, field) in [
        ("FIELDS", "data[FIELDS][ID]"),
        ("FIELDS_AFTER", "data[FIELDS_AFTER][ID]"),
    ] {
        let raw = match data.and_then(|d| d.get(section)).and_then(|s| s.get("ID")) {
            Some(Value::String(s)) if s.is_empty() => continue,
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            Some(Value::Null) | None => continue,
            Some(_) => return Err(DecodeError::invalid(field, "must be a string")),
        };
        return EntityId::parse(&raw)
            .map(Some)
            .map_err(|Invalid(r)| DecodeError::invalid(field, r));
    }
    Ok(None)
}

#[cfg(test)]
mod tests;
