//! Event bodies as Bitrix24 sends them: [`EventSpec`] builds one event's
//! key/value pairs, encoded the way PHP's `http_build_query` does (and the
//! variants some senders use) or nested into JSON as PHP's `parse_str`
//! would read them.

use serde_json::{json, Map, Value};

use super::portals::{Portal, ACCESS_TOKEN, REFRESH_TOKEN};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style {
    /// PHP http_build_query (RFC 1738): brackets %5B %5D, spaces '+'.
    Php,
    /// Brackets left raw, spaces '+'.
    RawBrackets,
    /// Brackets encoded, spaces %20.
    Pct20,
    /// Brackets raw, spaces %20.
    RawBracketsPct20,
}

fn enc(s: &str, raw_brackets: bool, plus_space: bool) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => out.push(b as char),
            b'[' | b']' if raw_brackets => out.push(b as char),
            b' ' if plus_space => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

pub fn encode_pairs(pairs: &[(String, String)], style: Style) -> String {
    let (raw, plus) = match style {
        Style::Php => (false, true),
        Style::RawBrackets => (true, true),
        Style::Pct20 => (false, false),
        Style::RawBracketsPct20 => (true, false),
    };
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k, raw, plus), enc(v, false, plus)))
        .collect::<Vec<_>>()
        .join("&")
}

/// `http_build_query` of a flat list of bracket-key pairs.
pub fn php_form(pairs: &[(&str, &str)]) -> String {
    let owned: Vec<(String, String)> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    encode_pairs(&owned, Style::Php)
}

/// "a[b][c]" -> ["a", "b", "c"]
pub fn split_key(k: &str) -> Vec<String> {
    let (head, mut rest) = match k.find('[') {
        Some(i) => (&k[..i], &k[i..]),
        None => (k, ""),
    };
    let mut parts = vec![head.to_string()];
    while let Some(s) = rest.strip_prefix('[') {
        let end = s.find(']').expect("unbalanced bracket key");
        parts.push(s[..end].to_string());
        rest = &s[end + 1..];
    }
    parts
}

/// Nest bracket-key pairs into a JSON object, as PHP's parse_str would.
pub fn nest(pairs: &[(String, String)]) -> Value {
    let mut root = Map::new();
    for (k, v) in pairs {
        let parts = split_key(k);
        let mut cur = &mut root;
        for (i, p) in parts.iter().enumerate() {
            if i + 1 == parts.len() {
                cur.insert(p.clone(), Value::String(v.clone()));
            } else {
                let entry = cur
                    .entry(p.clone())
                    .or_insert_with(|| Value::Object(Map::new()));
                if !entry.is_object() {
                    *entry = Value::Object(Map::new());
                }
                cur = entry.as_object_mut().unwrap();
            }
        }
    }
    Value::Object(root)
}

#[derive(Clone, Debug)]
pub struct EventSpec {
    pub portal: Portal,
    pub event: String,
    pub ts: String,
    pub entity: Option<String>,
    /// Extra pairs with full keys, e.g. ("data[FIELDS][TITLE]", "x").
    pub extra: Vec<(String, String)>,
    pub handler_id: Option<String>,
    /// Full application auth set (with access/refresh token) or the short
    /// webhook set.
    pub full_auth: bool,
    /// Override the application token sent.
    pub token: Option<String>,
    /// Override the member_id sent.
    pub member: Option<String>,
}

impl EventSpec {
    pub fn new(portal: Portal, event: &str, entity: Option<&str>, ts: u64) -> EventSpec {
        EventSpec {
            portal,
            event: event.to_string(),
            ts: ts.to_string(),
            entity: entity.map(str::to_string),
            extra: Vec::new(),
            handler_id: Some("42".into()),
            full_auth: true,
            token: None,
            member: None,
        }
    }

    pub fn with(mut self, key: &str, value: &str) -> EventSpec {
        self.extra.push((key.to_string(), value.to_string()));
        self
    }

    pub fn pairs(&self) -> Vec<(String, String)> {
        let mut p: Vec<(String, String)> = vec![("event".into(), self.event.clone())];
        if let Some(h) = &self.handler_id {
            p.push(("event_handler_id".into(), h.clone()));
        }
        if let Some(e) = &self.entity {
            p.push(("data[FIELDS][ID]".into(), e.clone()));
        }
        p.extend(self.extra.iter().cloned());
        p.push(("ts".into(), self.ts.clone()));
        let member = self
            .member
            .clone()
            .unwrap_or_else(|| self.portal.member.to_string());
        let token = self
            .token
            .clone()
            .unwrap_or_else(|| self.portal.token.to_string());
        let endpoint = format!("https://{}/rest/", self.portal.domain);
        if self.full_auth {
            p.push(("auth[access_token]".into(), ACCESS_TOKEN.into()));
            p.push(("auth[expires]".into(), "1727022526".into()));
            p.push(("auth[expires_in]".into(), "3600".into()));
            p.push(("auth[scope]".into(), "crm,user_brief".into()));
            p.push(("auth[domain]".into(), self.portal.domain.into()));
            p.push((
                "auth[server_endpoint]".into(),
                "https://oauth.bitrix.info/rest/".into(),
            ));
            p.push(("auth[status]".into(), "L".into()));
            p.push(("auth[client_endpoint]".into(), endpoint));
            p.push(("auth[member_id]".into(), member));
            p.push(("auth[user_id]".into(), "1".into()));
            p.push(("auth[refresh_token]".into(), REFRESH_TOKEN.into()));
            p.push(("auth[application_token]".into(), token));
        } else {
            p.push(("auth[domain]".into(), self.portal.domain.into()));
            p.push(("auth[client_endpoint]".into(), endpoint));
            p.push((
                "auth[server_endpoint]".into(),
                "https://oauth.bitrix.info/rest/".into(),
            ));
            p.push(("auth[member_id]".into(), member));
            p.push(("auth[application_token]".into(), token));
        }
        p
    }

    /// Pairs without the given keys (for "missing field" cases).
    pub fn pairs_without(&self, key: &str) -> Vec<(String, String)> {
        self.pairs().into_iter().filter(|(k, _)| k != key).collect()
    }

    pub fn form(&self) -> String {
        encode_pairs(&self.pairs(), Style::Php)
    }

    pub fn form_styled(&self, style: Style) -> String {
        encode_pairs(&self.pairs(), style)
    }

    pub fn json(&self) -> Value {
        nest(&self.pairs())
    }
}

/// The data object a generated event should come back with.
pub fn expected_data(ev: &EventSpec) -> Value {
    let pairs: Vec<(String, String)> = ev
        .pairs()
        .into_iter()
        .filter(|(k, _)| k.starts_with("data["))
        .collect();
    if pairs.is_empty() {
        return Value::Null;
    }
    nest(&pairs)["data"].clone()
}

pub fn short_auth_json(p: Portal) -> Value {
    json!({
        "domain": p.domain,
        "client_endpoint": format!("https://{}/rest/", p.domain),
        "server_endpoint": "https://oauth.bitrix.info/rest/",
        "member_id": p.member,
        "application_token": p.token,
    })
}

/// A valid form body for `ev`, padded with `data[PAD]` to exactly `len` bytes.
pub fn padded_form(ev: &EventSpec, len: usize) -> String {
    let base = ev.form();
    let prefix = format!("{base}&data%5BPAD%5D=");
    assert!(prefix.len() < len, "base body already longer than {len}");
    let pad = len - prefix.len();
    let mut s = prefix;
    s.push_str(&"x".repeat(pad));
    assert_eq!(s.len(), len);
    s
}
