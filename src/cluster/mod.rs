//! Cluster mode: several nodes on one replicated log, NATS JetStream, so
//! that any one machine can die and no acknowledged or arriving event is
//! lost.
//!
//! Every state change goes through the stream as a [`commands::Command`];
//! every node both receives and applies:
//!
//! - `receive`: decode and verify as in embedded mode, give the event its
//!   id, publish it and wait for the stream's acknowledgement
//!   (`publish`), then briefly for the local journal to apply it;
//! - `apply`: consume the stream in order into the local journal through
//!   the same writer, the stream position recorded atomically with each
//!   batch, so every node builds the same journal;
//! - `barrier`: before refusing an unknown portal or token, apply
//!   everything the stream holds (an install acknowledged by another node
//!   is then known here);
//! - `changes`: erasures, retention steps and offline pulling's state
//!   changes and pulled batches, published as commands;
//! - `lease`: one node at a time for a job (a portal's pulling, retention),
//!   through expiring keys in a KV bucket;
//! - `node`: this node's connection, its lag, and its report to the
//!   other nodes (a KV bucket that `cluster status` reads);
//! - `ops`: `cluster init` and `cluster status`;
//! - `config`: the settings.
//!
//! The single-node embedded mode is the default and does not use any of it.

pub mod apply;
pub mod barrier;
pub mod changes;
pub mod commands;
pub mod config;
pub mod lease;
pub mod metrics;
pub mod node;
pub mod ops;
pub mod publish;
pub mod receive;

pub use config::{ClusterArgs, ClusterConfig, ClusterFile};
pub use node::{Cluster, StartError};
