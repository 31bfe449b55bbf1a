//! taskhook: watches AceData Cloud task IDs with batched polling and
//! delivers each finished task as a signed, retried webhook.
//!
//! The data path, one module per stage: [`ingest`] → [`store`] → [`poll`]
//! (claims, the upstream client, the terminal rule, the request budget) →
//! [`fanout`] (events and who gets them) → [`deliver`] (lanes, attempts,
//! signatures, the SSRF guard). Beside it: the control [`api`] with its
//! browser console (`console`, at `/ui`), [`hints`] (upstream callbacks),
//! the [`runtime`] that wires and runs it all, and the [`cli`].
//!
//! Calls point one way, with no cycle between files or between these
//! modules (`tests/it/layout.rs` checks it, and that each module's `//!`
//! names every module it calls under "May call"), bottom to top:
//! 1. vocabulary and helpers that call nothing of taskhook's: [`clock`],
//!    [`outcome`], [`profile`] (service profiles), [`redact`], [`http`],
//!    [`limit`], [`heartbeat`];
//! 2. [`config`]; then the [`store`]; then [`metrics`] and [`cluster`];
//! 3. the stages: [`ingest`], [`fanout`], [`poll`], [`deliver`], [`hints`];
//! 4. [`api`], `console`, [`runtime`], [`cli`].

pub mod api;
pub mod cli;
pub mod clock;
pub mod cluster;
pub mod config;
mod console;
pub mod deliver;
pub mod fanout;
pub mod heartbeat;
pub mod hints;
pub mod http;
pub mod ingest;
pub mod limit;
pub mod metrics;
pub mod outcome;
pub mod poll;
pub mod profile;
pub mod redact;
pub mod runtime;
pub mod store;
