//! The sample portals the tests send as, the tokens they use, and the
//! standard `serve` arguments that trust them. The fixtures in
//! `tests/fixtures/` belong to P1 and P2.

use std::path::Path;

/// The read API's bearer token in every standard server.
pub const READ_TOKEN: &str = "rd-Kq7Vx2Lm9Pz4Tn8Wc3Yb6";
/// Distinctive OAuth values placed in every generated event so that leak
/// checks have something unique to look for.
pub const ACCESS_TOKEN: &str = "acc0f3e1d9c7b5a3918273645zzQ";
/// See [`ACCESS_TOKEN`].
pub const REFRESH_TOKEN: &str = "ref9a8b7c6d5e4f3a2b1c0ddeeWW";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Portal {
    pub member: &'static str,
    pub domain: &'static str,
    pub token: &'static str,
}

/// The portal of the docs / activity fixtures.
pub const P1: Portal = Portal {
    member: "a223c6b3710f85df22e9377d6c4f7553",
    domain: "some-domain.bitrix24.com",
    token: "51856fefc120afa4b628cc82d3935cce",
};
/// The portal of the PHP SDK fixture.
pub const P2: Portal = Portal {
    member: "010b6886ebc205e43ae65000ee00addb",
    domain: "bitrix24-php-sdk-playground.bitrix24.com",
    token: "3c6c9248ec54af6bea1159b43ee0ab32",
};
/// A configured portal that the fixtures never use.
pub const P3: Portal = Portal {
    member: "5e1d0c9b8a7f6e5d4c3b2a1908f7e6d5",
    domain: "third-portal.bitrix24.de",
    token: "9d8c7b6a5f4e3d2c1b0a998877665544",
};

impl Portal {
    /// The `--portal MEMBER_ID=TOKEN` value that trusts this portal.
    pub fn flag(&self) -> String {
        format!("{}={}", self.member, self.token)
    }
}

/// `serve` on 127.0.0.1:0 in `data_dir`, trusting P1, P2 and P3, with
/// [`READ_TOKEN`]: the arguments of every standard server, in either harness.
pub fn default_args(data_dir: &Path) -> Vec<String> {
    vec![
        "serve".into(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--data-dir".into(),
        data_dir.to_str().unwrap().into(),
        "--portal".into(),
        P1.flag(),
        "--portal".into(),
        P2.flag(),
        "--portal".into(),
        P3.flag(),
        "--read-token".into(),
        READ_TOKEN.into(),
    ]
}
