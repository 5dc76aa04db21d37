//! Token policy: which configured secrets the service refuses to run with.
//!
//! A copied example config must not start a service that anyone who read
//! the example can talk to. So every configured token (read, admin, each
//! portal's application token) is checked at start: a `CHANGE-ME`
//! placeholder or a token shorter than [`MIN_TOKEN_LEN`] is refused; a
//! public sample value (printed in Bitrix24's documentation, the official
//! PHP SDK's tests or this project's README) is accepted only while the
//! service listens on loopback, where it serves the README's first command
//! and the tests, and is refused anywhere else. Part of the configuration
//! layer: nothing below it depends on this file.

/// Shortest token accepted. Bitrix24's application tokens are 32
/// characters; `openssl rand -hex 32` gives 64.
pub const MIN_TOKEN_LEN: usize = 16;

/// The marker of the example config's placeholders.
const PLACEHOLDER: &str = "change-me";

/// Values printed in public documents, with where they come from. Anyone
/// can send them, so they prove nothing.
const PUBLIC_SAMPLES: &[(&str, &str)] = &[
    (
        "51856fefc120afa4b628cc82d3935cce",
        "the sample application_token of Bitrix24's REST documentation",
    ),
    (
        "3c6c9248ec54af6bea1159b43ee0ab32",
        "the sample application_token of Bitrix24's PHP SDK tests",
    ),
    (
        "s6p6eclrvim6da22ft9ch94ekreb52lv",
        "the sample access_token of Bitrix24's REST documentation",
    ),
    (
        "4s386p3q0tr8dy89xvmt96234v3dljg8",
        "the sample refresh_token of Bitrix24's REST documentation",
    ),
    (
        "local-read-token",
        "the sample read token of this project's README",
    ),
];

/// Why a token is not good enough.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Weakness {
    /// It still holds the example config's `CHANGE-ME` placeholder.
    Placeholder,
    /// It is shorter than [`MIN_TOKEN_LEN`] characters.
    TooShort,
    /// It is a public sample value; the text says where it is printed.
    PublicSample(&'static str),
}

impl Weakness {
    /// Whether a service listening on loopback may still use it (with a
    /// warning): only public samples, so that the README's first command
    /// and the test suite, which use the documentation's sample portal,
    /// keep working.
    pub fn allowed_on_loopback(self) -> bool {
        matches!(self, Weakness::PublicSample(_))
    }

    /// What is wrong, without the token itself.
    pub fn describe(self) -> String {
        match self {
            Weakness::Placeholder => {
                "is still the CHANGE-ME placeholder of the example config; set a long random value (openssl rand -hex 32)".to_owned()
            }
            Weakness::TooShort => format!(
                "is shorter than {MIN_TOKEN_LEN} characters; use a long random value (openssl rand -hex 32)"
            ),
            Weakness::PublicSample(source) => format!(
                "is {source}: anyone can send it; use your own long random value"
            ),
        }
    }
}

/// What is wrong with `token`, if anything. Surrounding whitespace does not
/// count towards the length.
pub fn weakness(token: &str) -> Option<Weakness> {
    let token = token.trim();
    if token.to_ascii_lowercase().contains(PLACEHOLDER) {
        return Some(Weakness::Placeholder);
    }
    if let Some((_, source)) = PUBLIC_SAMPLES.iter().find(|(sample, _)| *sample == token) {
        return Some(Weakness::PublicSample(source));
    }
    if token.chars().count() < MIN_TOKEN_LEN {
        return Some(Weakness::TooShort);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_short_tokens_and_samples_are_weak() {
        assert_eq!(
            weakness("CHANGE-ME-long-random-read-token"),
            Some(Weakness::Placeholder)
        );
        assert_eq!(weakness("x-change-me-x"), Some(Weakness::Placeholder));
        assert_eq!(weakness("short"), Some(Weakness::TooShort));
        assert_eq!(weakness("fifteen-chars-x"), Some(Weakness::TooShort));
        assert_eq!(weakness("   fifteen-chars-x   "), Some(Weakness::TooShort));
        assert!(matches!(
            weakness("51856fefc120afa4b628cc82d3935cce"),
            Some(Weakness::PublicSample(_))
        ));
        assert!(matches!(
            weakness("local-read-token"),
            Some(Weakness::PublicSample(_))
        ));
        assert_eq!(weakness("sixteen-chars-xy"), None);
        assert_eq!(weakness("9d8c7b6a5f4e3d2c1b0a998877665544"), None);
    }

    #[test]
    fn only_public_samples_pass_on_loopback() {
        assert!(!Weakness::Placeholder.allowed_on_loopback());
        assert!(!Weakness::TooShort.allowed_on_loopback());
        assert!(Weakness::PublicSample("x").allowed_on_loopback());
    }

    #[test]
    fn descriptions_never_hold_the_token() {
        for token in ["CHANGE-ME-abc", "q7x", "51856fefc120afa4b628cc82d3935cce"] {
            let why = weakness(token).unwrap().describe();
            assert!(!why.contains(token), "{why}");
        }
    }
}
