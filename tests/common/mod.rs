//! Shared helpers for the integration tests, one concern per file:
//!
//! - `app`: the service in-process ([`spawn_app`] → [`TestApp`]);
//! - `process`: the real binary as a child process ([`TestServer`],
//!   [`run_to_exit`]);
//! - `activation`: the binary on a socket the test holds, as systemd's
//!   socket activation starts it ([`HeldSocket`], [`spawn_activated`]);
//! - `senders`: continuous one-connection-per-event senders ([`Senders`]);
//! - `client`: the HTTP helpers both harnesses share ([`Client`], [`Resp`]);
//! - `raw_http`: hand-written HTTP/1.1 for broken or unusual framing;
//! - `events`: Bitrix24-style event bodies ([`EventSpec`], PHP's encoding);
//! - `portals`: the sample portals, tokens and standard `serve` arguments;
//! - `files`: fixtures (in `tests/fixtures/`), temp dirs, byte searches;
//! - `checks`: small assertions on ids, seqs, UUIDs and times;
//! - `nats`: a real 3-server NATS JetStream cluster ([`NatsCluster`]).
//!
//! # Which harness a test uses, and why
//!
//! A test of HTTP behaviour starts the service in-process with
//! [`spawn_app`]: no process start, the port comes straight from the bound
//! listener. The real binary ([`TestServer`]) stays where the process
//! itself is under test, or where the test reads something that is global
//! to a process (the tracing subscriber, the Prometheus registry) and would
//! mix with the other tests that run in parallel threads of one binary:
//!
//! | Harness | Tests | Why |
//! |---------|-------|-----|
//! | in-process | `access`, `ingest`, `rejections`, `query`, `stream`, `openapi` | HTTP behaviour |
//! | in-process | `dedup`, except the one below | HTTP behaviour |
//! | in-process | `admin`: online backup, portal erasure, retention | HTTP behaviour; `backup` and `verify` still run as the binary, against it or its stopped directory |
//! | in-process | `lifecycle`: install allowlist, configured portals | HTTP behaviour |
//! | in-process | `overload`: header timeout (ignored: takes 30 s) | HTTP behaviour |
//! | in-process | `harness` | the in-process harness itself |
//! | binary | `config` | flags, `B24J_*` variables, config file, exit codes, log levels |
//! | binary | `logging` | the client in refusal and access log lines, latencies, one line per command error |
//! | binary | `tls_proxy` | behind a real Caddy running `deploy/Caddyfile`; reads the client in a refusal line |
//! | binary | `crash`, `restart`, `packing` | SIGKILL, SIGTERM, exit status, restarts on one data directory |
//! | binary | `zero_downtime`, `reload` | socket activation, restarts under load, SIGHUP |
//! | binary | `diskfull` | restarts, and the logs of the failure |
//! | binary | `hostile`, `secrets` | they search the trace-level logs for secrets |
//! | binary | `admin`: metrics | exact `/metrics` values: the registry is per process |
//! | binary | `admin`: offline registrations | restarts, with the data directory edited offline between them |
//! | binary | `lifecycle`: install/uninstall/restart; takeover; rename | a restart; the takeover and rename tests read a log line |
//! | binary | `overload`: flood; slow clients | the flood measures the server process's memory; slow clients reads the 408 log line |
//! | binary | `dedup`: concurrent distinct events | when a request fails it shows the server's warnings and errors |
//!
//! Every test file declares `mod common;` and uses a part of it: the
//! allowances below keep the unused rest quiet.
#![allow(dead_code)]

mod activation;
mod app;
mod checks;
mod client;
mod events;
mod files;
mod nats;
mod portals;
mod process;
mod raw_http;
mod senders;

// Each test file uses a part of these.
#[allow(unused_imports)]
pub use self::{
    activation::*, app::*, checks::*, client::*, events::*, files::*, nats::*, portals::*,
    process::*, raw_http::*, senders::*,
};
