//! taskhook: watches AceData Cloud task IDs with batched polling and
//! delivers each finished task as a signed, retried webhook.
//!
//! The data path, one module per stage:
//! [`ingest`] → [`store`] → [`poller`] → [`upstream`] → [`terminal`] →
//! [`dispatcher`] → [`webhook`]; beside it the control [`api`] and the
//! [`demo`]. The upstream simulator is its own crate, `taskhook-sim`.

pub mod api;
pub mod bench;
pub mod cli;
pub mod client;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod dispatcher;
pub mod ingest;
pub mod metrics;
pub mod poller;
pub mod profile;
pub mod redact;
pub mod schedule;
pub mod ssrf;
pub mod store;
pub mod terminal;
pub mod upstream;
pub mod webhook;
