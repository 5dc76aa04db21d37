//! Property: any nested structure (maps of strings to strings or maps; keys
//! of safe characters, spaces and unicode included; bounded depth), encoded
//! the way PHP's `http_build_query` encodes it (`a%5Bb%5D%5Bc%5D=v`, RFC 1738
//! `+` for spaces), decodes with `b24_journal::decode::parse_form` to the same
//! structure. Also with raw brackets and `%20` spaces, which some senders use.

use b24_journal::decode::{parse_form, MAX_DEPTH};
use proptest::prelude::*;
use serde_json::Value;

/// A form structure: `Map` is never empty (`http_build_query` drops empty
/// arrays, so an empty map cannot be sent).
#[derive(Debug, Clone)]
enum Node {
    Leaf(String),
    Map(Vec<(String, Node)>),
}

impl Node {
    fn to_value(&self) -> Value {
        match self {
            Node::Leaf(s) => Value::String(s.clone()),
            Node::Map(entries) => Value::Object(
                entries
                    .iter()
                    .map(|(k, v)| (k.clone(), v.to_value()))
                    .collect(),
            ),
        }
    }
}

/// PHP `urlencode` (RFC 1738): alphanumerics and `-_.` stay, space is `+`,
/// every other byte is `%XX` (upper-case hex).
fn php_urlencode(s: &str, raw_brackets: bool, plus_space: bool) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => out.push(b as char),
            b' ' if plus_space => out.push('+'),
            b'[' | b']' if raw_brackets => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// `http_build_query`: `prefix[key]` for nested keys, in order.
fn build_query(
    entries: &[(String, Node)],
    prefix: Option<&str>,
    raw_brackets: bool,
    plus_space: bool,
    out: &mut Vec<String>,
) {
    for (k, v) in entries {
        let key = match prefix {
            None => k.clone(),
            Some(p) => format!("{p}[{k}]"),
        };
        match v {
            Node::Leaf(s) => out.push(format!(
                "{}={}",
                php_urlencode(&key, raw_brackets, plus_space),
                php_urlencode(s, false, plus_space)
            )),
            Node::Map(inner) => build_query(inner, Some(&key), raw_brackets, plus_space, out),
        }
    }
}

fn encode(entries: &[(String, Node)], raw_brackets: bool, plus_space: bool) -> String {
    let mut parts = Vec::new();
    build_query(entries, None, raw_brackets, plus_space, &mut parts);
    parts.join("&")
}

/// Keys: letters, digits, spaces, punctuation that needs escaping, and
/// non-ASCII text; never brackets (they are the nesting syntax) or NUL.
fn key() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9 _.~+%&=#?/:;,!*'()$@|é日本語ßЖ😀-]{1,12}"
}

/// Values: any text without NUL (refused on purpose), empty included.
fn value() -> impl Strategy<Value = String> {
    "[^\\x00]{0,16}"
}

/// Unique keys, order kept, at least one entry.
fn entries(inner: BoxedStrategy<Node>) -> impl Strategy<Value = Vec<(String, Node)>> {
    prop::collection::vec((key(), inner), 1..6).prop_map(|v| {
        let mut seen = std::collections::HashSet::new();
        v.into_iter()
            .filter(|(k, _)| seen.insert(k.clone()))
            .collect()
    })
}

fn node() -> impl Strategy<Value = Node> {
    value()
        .prop_map(Node::Leaf)
        .prop_recursive(6, 64, 5, |inner| entries(inner.boxed()).prop_map(Node::Map))
}

fn top() -> impl Strategy<Value = Vec<(String, Node)>> {
    prop::collection::vec((key(), node()), 0..8).prop_map(|v| {
        let mut seen = std::collections::HashSet::new();
        v.into_iter()
            .filter(|(k, _)| seen.insert(k.clone()))
            .collect()
    })
}

fn expected(entries: &[(String, Node)]) -> Value {
    Node::Map(entries.to_vec()).to_value()
}

proptest! {
    // 512 cases each keep a debug `cargo test` quick; PROPTEST_CASES=100000
    // for a long run.
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(512)
    ))]

    #[test]
    fn php_http_build_query_round_trips(t in top()) {
        let body = encode(&t, false, true);
        let parsed = parse_form(body.as_bytes());
        prop_assert!(parsed.is_ok(), "{body:?}: {parsed:?}");
        prop_assert_eq!(Value::Object(parsed.unwrap()), expected(&t), "{}", body);
    }

    #[test]
    fn raw_brackets_and_pct20_spaces_round_trip(t in top(), raw in any::<bool>(), plus in any::<bool>()) {
        let body = encode(&t, raw, plus);
        let parsed = parse_form(body.as_bytes());
        prop_assert!(parsed.is_ok(), "{body:?}: {parsed:?}");
        prop_assert_eq!(Value::Object(parsed.unwrap()), expected(&t), "{}", body);
    }
}

/// The depth bound: exactly `MAX_DEPTH` levels round-trip, one more is
/// refused.
#[test]
fn deepest_accepted_structure_round_trips() {
    let mut node = Node::Leaf("v w".into());
    for i in 0..MAX_DEPTH - 1 {
        node = Node::Map(vec![(format!("k {i}"), node)]);
    }
    let t = vec![("top".to_owned(), node)];
    let body = encode(&t, false, true);
    let parsed = parse_form(body.as_bytes()).expect("32 levels");
    assert_eq!(Value::Object(parsed), expected(&t));

    let deeper = vec![("top".to_owned(), Node::Map(t))];
    assert!(parse_form(encode(&deeper, false, true).as_bytes()).is_err());
}
