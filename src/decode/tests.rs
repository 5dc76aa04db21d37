//! Tests of `decode`, kept apart so that the module reads as the code.

use super::*;
use serde_json::json;

const UPDATE: &str = "event=ONCRMACTIVITYUPDATE&data%5BFIELDS%5D%5BID%5D=999&ts=1466439714&auth%5Baccess_token%5D=s6p6&auth%5Bexpires_in%5D=3600&auth%5Bscope%5D=crm&auth%5Bdomain%5D=some-domain.bitrix24.com&auth%5Bserver_endpoint%5D=https%3A%2F%2Foauth.bitrix.info%2Frest%2F&auth%5Bstatus%5D=L&auth%5Bclient_endpoint%5D=https%3A%2F%2Fsome-domain.bitrix24.com%2Frest%2F&auth%5Bmember_id%5D=a223&auth%5Brefresh_token%5D=4s38&auth%5Bapplication_token%5D=5185";

#[test]
fn decodes_php_form() {
    let e = decode(BodyKind::Form, UPDATE.as_bytes()).unwrap();
    assert_eq!(e.event.as_str(), "ONCRMACTIVITYUPDATE");
    assert_eq!(e.ts.secs(), 1466439714);
    assert_eq!(e.member_id.as_str(), "a223");
    assert_eq!(e.entity_id.unwrap().as_str(), "999");
    assert_eq!(e.application_token.expose(), "5185");
    assert_eq!(e.data, Some(json!({"FIELDS": {"ID": "999"}})));
    assert_eq!(
        e.profile.client_endpoint.as_deref(),
        Some("https://some-domain.bitrix24.com/rest/")
    );
    assert!(e.auth_rest.is_empty());
    let fixed: Vec<_> = e
        .profile
        .fixed
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    assert_eq!(fixed, ["scope=crm", "status=L", "expires_in=3600"]);
}

#[test]
fn raw_brackets_and_spaces() {
    let t = parse_form(b"a[b][c]=x+y%20z&a[b][d]=1&l[]=1&l[]=2").unwrap();
    assert_eq!(
        Value::Object(t),
        json!({"a": {"b": {"c": "x y z", "d": "1"}}, "l": ["1", "2"]})
    );
}

#[test]
fn refuses_ambiguous_forms() {
    assert!(parse_form(b"a=1&a=2").is_err());
    assert!(parse_form(b"a=1&a[b]=2").is_err());
    assert!(parse_form(b"a[b]=1&a=2").is_err());
    assert!(parse_form(b"a[b=1").is_err());
    assert!(parse_form(b"a]b=1").is_err());
    assert!(parse_form(b"[a]=1").is_err());
    assert!(parse_form(b"a[b]x=1").is_err());
    assert!(parse_form(b"a=%zz").is_err());
    assert!(parse_form(b"a=%ff").is_err());
    assert!(parse_form(b"a=%00").is_err());
    let deep = format!("a{}=1", "[x]".repeat(40));
    assert!(parse_form(deep.as_bytes()).is_err());
}

#[test]
fn json_refuses_repeated_keys_nul_and_deep_nesting() {
    let dup = parse_json(br#"{"event":"A","ts":1,"event":"B"}"#).unwrap_err();
    assert!(dup.to_string().contains("duplicate key `event`"), "{dup}");
    let nested = parse_json(br#"{"auth":{"member_id":"m","member_id":"n"}}"#).unwrap_err();
    assert!(nested.to_string().contains("duplicate key `member_id`"));
    // Equal after unescaping is equal.
    assert!(parse_json(br#"{"a":1,"\u0061":2}"#).is_err());
    // The same key in different objects is fine.
    assert!(parse_json(br#"{"a":{"x":1},"b":{"x":1},"l":[{"x":1},{"x":2}]}"#).is_ok());
    assert!(parse_json(br#"{"a":"x\u0000y"}"#).is_err());
    assert!(parse_json(br#"{"a\u0000":"x"}"#).is_err());
    assert!(parse_json(br#"{"a":1} x"#).is_err());
    assert!(parse_json(br#"[1]"#).is_err());
    // 32 levels are accepted, 33 refused, and a very deep body is
    // refused without recursing into it.
    let nest = |n: usize| format!("{}1{}", "{\"a\":".repeat(n), "}".repeat(n));
    assert!(parse_json(nest(32).as_bytes()).is_ok());
    let err = parse_json(nest(33).as_bytes()).unwrap_err();
    assert!(err.to_string().contains("deeper than 32"), "{err}");
    let arrays = format!("{{\"a\":{}{}}}", "[".repeat(100_000), "]".repeat(100_000));
    assert!(parse_json(arrays.as_bytes()).is_err());
    let v = parse_json(br#"{"n":-1.5e3,"b":true,"z":null,"u":18446744073709551615}"#).unwrap();
    assert_eq!(
        Value::Object(v),
        json!({"n": -1500.0, "b": true, "z": null, "u": 18446744073709551615u64})
    );
}

#[test]
fn task_events_use_fields_after() {
    let e = decode(
        BodyKind::Form,
        b"event=ONTASKUPDATE&ts=1&data[FIELDS_BEFORE]=undefined&data[FIELDS_AFTER][ID]=42&auth[member_id]=m&auth[domain]=d.example&auth[application_token]=t",
    )
    .unwrap();
    assert_eq!(e.entity_id.unwrap().as_str(), "42");
}

#[test]
fn missing_and_bad_fields_are_named() {
    let err = decode(BodyKind::Form, b"event=X&auth[member_id]=m").unwrap_err();
    assert_eq!(err.to_string(), "missing field `ts`");
    let err = decode(
        BodyKind::Form,
        b"event=X&ts=1&auth[member_id][]=m&auth[domain]=d&auth[application_token]=t",
    )
    .unwrap_err();
    assert!(err.to_string().contains("auth[member_id]"));
    let err = decode(BodyKind::Json, br#"{"event":"X","ts":-1}"#).unwrap_err();
    assert!(err.to_string().contains("`ts`"));
}

#[test]
fn json_bodies_and_secret_stripping() {
    let e = decode(
        BodyKind::Json,
        br#"{"event":"onCrmActivityUpdate","ts":1466439714,"auth":{"member_id":"m","domain":"D.example","application_token":"t","access_token":"a","refresh_token":"r","some_new_token":"x","user_id":"1"}}"#,
    )
    .unwrap();
    assert_eq!(e.event.as_str(), "ONCRMACTIVITYUPDATE");
    assert_eq!(e.profile.domain, "d.example");
    assert_eq!(Value::Object(e.auth_rest), json!({"user_id": "1"}));
    assert!(e.data.is_none() && e.entity_id.is_none());
}
