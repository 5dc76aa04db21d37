//! The settings for browser dashboards: scoped read tokens
//! (`[[read_tokens]]`), the origins allowed to call the read API from a
//! page (CORS), and the built-in console.

use serde::Deserialize;

use super::{invalid, SettingsError, TokenCheck};
use crate::access::ScopedToken;
use crate::types::{Secret, TokenDigest};

const READ_TOKENS: &str = "read_tokens ([[read_tokens]] in the config file)";
const CORS: &str = "cors_origins (--cors-origins, B24J_CORS_ORIGINS)";

/// One `[[read_tokens]]` entry as written in the config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileReadToken {
    name: String,
    token: Option<String>,
    token_sha256: Option<String>,
    #[serde(default)]
    portals: Vec<String>,
}

/// Checks the `[[read_tokens]]` entries: unique names, exactly one of
/// `token` or `token_sha256`, at least one portal each. Errors name the
/// entry, never its token.
pub(super) fn read_tokens(
    entries: Vec<FileReadToken>,
    check: &mut TokenCheck,
) -> Result<Vec<ScopedToken>, SettingsError> {
    let mut out: Vec<ScopedToken> = Vec::new();
    for entry in entries {
        let name = entry.name.trim().to_owned();
        if !valid_name(&name) {
            return Err(invalid(
                READ_TOKENS,
                format!(
                    "name {:?}: use 1 to 64 letters, digits, `-`, `_` or `.`",
                    name
                ),
            ));
        }
        if out.iter().any(|t| t.name == name) {
            return Err(invalid(READ_TOKENS, format!("name {name:?} is used twice")));
        }
        let digest = match (entry.token, entry.token_sha256) {
            (Some(token), None) => {
                let token = Secret::new(token.trim().to_owned());
                check.check(READ_TOKENS, &format!("the read token {name:?}"), &token)?;
                token.digest()
            }
            (None, Some(hex)) => parse_sha256(&hex).ok_or_else(|| {
                invalid(
                    READ_TOKENS,
                    format!(
                        "{name:?}: token_sha256 must be 64 hex digits (sha256sum of the token)"
                    ),
                )
            })?,
            _ => {
                return Err(invalid(
                    READ_TOKENS,
                    format!("{name:?}: give exactly one of `token` and `token_sha256`"),
                ))
            }
        };
        if out.iter().any(|t| t.digest == digest) {
            return Err(invalid(
                READ_TOKENS,
                format!("{name:?} has the same token as another entry"),
            ));
        }
        let portals: Vec<String> = entry
            .portals
            .iter()
            .map(|p| p.trim().to_ascii_lowercase())
            .filter(|p| !p.is_empty())
            .collect();
        if portals.is_empty() {
            return Err(invalid(
                READ_TOKENS,
                format!("{name:?}: `portals` must list at least one member id or domain"),
            ));
        }
        if let Some(bad) = portals.iter().find(|p| !valid_portal(p)) {
            return Err(invalid(
                READ_TOKENS,
                format!("{name:?}: {bad:?} is neither a member id nor a domain"),
            ));
        }
        out.push(ScopedToken {
            name,
            digest,
            portals,
        });
    }
    Ok(out)
}

/// A token name: short, printable, safe in logs and on the command line.
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// A member id or a domain, as a scoped token lists portals.
fn valid_portal(p: &str) -> bool {
    p.len() <= 253
        && p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// 64 hex digits → a digest.
pub fn parse_sha256(hex: &str) -> Option<TokenDigest> {
    let hex = hex.trim();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in hex.as_bytes().chunks(2).enumerate() {
        let s = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(s, 16).ok()?;
    }
    Some(TokenDigest(out))
}

/// Checks the CORS origins: each `scheme://host[:port]`, no path, no `*`
/// (the read API takes bearer credentials, which a wildcard would offer to
/// every page on the web), lower-cased as browsers send them.
pub(super) fn cors_origins(raw: Vec<String>) -> Result<Vec<String>, SettingsError> {
    let mut out = Vec::new();
    for origin in raw.iter().map(|o| o.trim()).filter(|o| !o.is_empty()) {
        if origin == "*" {
            return Err(invalid(
                CORS,
                "`*` is refused: the read API takes credentials (bearer tokens); list each origin, e.g. https://dash.example.com",
            ));
        }
        let Some((scheme, rest)) = origin.split_once("://") else {
            return Err(invalid(
                CORS,
                format!("{origin:?}: expected scheme://host[:port], e.g. https://dash.example.com"),
            ));
        };
        let host_ok = !rest.is_empty()
            && rest.bytes().all(|b| {
                b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b':' | b'[' | b']')
            });
        if !matches!(scheme, "http" | "https") || !host_ok {
            return Err(invalid(
                CORS,
                format!(
                    "{origin:?}: expected http(s)://host[:port] with no path, e.g. https://dash.example.com"
                ),
            ));
        }
        let origin = origin.to_ascii_lowercase();
        if !out.contains(&origin) {
            out.push(origin);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_checked() {
        assert_eq!(
            cors_origins(vec![
                "https://Dash.example.com".into(),
                "http://127.0.0.1:9000".into()
            ])
            .unwrap(),
            ["https://dash.example.com", "http://127.0.0.1:9000"]
        );
        for bad in ["*", "dash.example.com", "https://a.com/path", "ftp://a.com"] {
            let err = cors_origins(vec![bad.into()]).unwrap_err().to_string();
            assert!(err.starts_with("invalid cors_origins"), "{bad}: {err}");
        }
    }

    #[test]
    fn sha256_digests_parse() {
        let hex = "a".repeat(64);
        assert_eq!(parse_sha256(&hex).unwrap().0, [0xaa; 32]);
        assert!(parse_sha256("abc").is_none());
        assert!(parse_sha256(&"g".repeat(64)).is_none());
    }
}
