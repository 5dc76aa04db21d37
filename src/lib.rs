//! b24-journal: receive, verify, deduplicate and durably journal Bitrix24
//! events, and serve them to dashboards.
//!
//! # The data path
//!
//! ```text
//! POST /v1/bitrix24/events
//!   routes::ingest   content type, length, body read with limits
//!   ingest           the pipeline below, as one typed outcome
//!     decode         form/JSON body → IncomingEvent (secrets stripped)
//!     verify         token and install rules → Lifecycle
//!     journal        dedup, commit, durable ack → AppendOutcome
//! GET /v1/portals/{portal}/events[/stream]
//!   routes::events, routes::stream   parameters, long-poll, SSE
//!   query            parse the parameters, collect a page, render JSON
//!     journal        read the durable events
//! ```
//!
//! Around it: [`server`] starts the service (opens the journal, builds the
//! shared [`app::App`], runs the accept loop and shuts down cleanly),
//! [`routes`] maps HTTP onto handlers, [`cli`], [`settings`] and
//! [`commands`] are the configuration and the subcommands at the edge.
//! Dependencies point one way: server → routes → app → domain (ingest,
//! decode, verify, query) → journal.

#![warn(missing_docs)]

// The data path, in order; blank lines keep rustfmt from sorting it.

// HTTP in and out: one file per area of the API, the access log, `recover`.
pub mod routes;

// The ingest pipeline after the body is read: decode → verify → append.
pub mod ingest;

// Request body (form or JSON) → `IncomingEvent`, secrets stripped.
pub mod decode;

// Trust: token check and install allowlist → `Lifecycle`.
pub mod verify;

// The durable store: dedup, commit, portal directory, reads, maintenance.
pub mod journal;

// The read API's parameters, pages, cursors and JSON rendering.
pub mod query;

// Offline events: pull what Bitrix24 queued (sealed grant, REST, puller).
pub mod offline;

// Shared by the steps above.

// The state the routes share.
pub mod app;

// Who may read which portals: the read API's tokens.
pub mod access;

// Signed, short-lived tickets that open one stream from a browser.
pub mod tickets;

// `ApiError` and JSON replies.
pub mod http;

// Prometheus metrics.
pub mod metrics;

// Typed values parsed at the edge.
pub mod types;

// Start-up and the edge: configuration and the subcommands.

// Start-up, accept loop, shutdown.
pub mod server;

// The command line (clap types).
pub mod cli;

// Flags, environment, config file and defaults → `Settings`.
pub mod settings;

// The configured tokens the service refuses to run with.
pub mod token_policy;

// The subcommands' bodies.
pub mod commands;

// Logging to stderr, with a filter and format a reload can change.
pub mod logging;

// Cluster mode: several nodes on NATS JetStream (off by default).
pub mod cluster;

// Process memory settings applied first thing in `main`.
pub mod memory;

// The bench calls these at the crate root.
pub use memory::{disable_transparent_huge_pages, shorten_allocator_purge_delay};
