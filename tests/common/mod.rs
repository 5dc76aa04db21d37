//! Shared helpers for the integration tests, one concern per file:
//!
//! - `app`: the service in-process ([`spawn_app`] → [`TestApp`]);
//! - `process`: the real binary as a child process ([`TestServer`],
//!   [`run_to_exit`]);
//! - `client`: the HTTP helpers both harnesses share ([`Client`], [`Resp`]);
//! - `raw_http`: hand-written HTTP/1.1 for broken or unusual framing;
//! - `events`: Bitrix24-style event bodies ([`EventSpec`], PHP's encoding);
//! - `portals`: the sample portals, tokens and standard `serve` arguments;
//! - `files`: fixtures (in `tests/fixtures/`), temp dirs, byte searches;
//! - `checks`: small assertions on ids, seqs, UUIDs and times.
//!
//! Every test file declares `mod common;` and uses a part of it: the
//! allowances below keep the unused rest quiet.
#![allow(dead_code)]

mod app;
mod checks;
mod client;
mod events;
mod files;
mod portals;
mod process;
mod raw_http;

// Each test file uses a part of these.
#[allow(unused_imports)]
pub use self::{
    app::*, checks::*, client::*, events::*, files::*, portals::*, process::*, raw_http::*,
};
