//! taskhook: watches AceData Cloud task IDs with batched polling and
//! delivers each finished task as a signed, retried webhook.
//!
//! The data path, one module per stage, each calling only the stages after
//! it (and the small shared modules below):
//! [`ingest`] → [`store`] → [`poll`] (claims, the upstream client, service
//! profiles, the terminal rule) → [`fanout`] (events and who gets them) →
//! [`deliver`] (lanes, attempts, signatures, the SSRF guard). Beside it:
//! the control [`api`] with its browser console (`console`, at `/ui`), the
//! [`runtime`] that wires and runs it all, and the [`cli`]. Shared:
//! [`config`], [`clock`], [`cluster`], [`heartbeat`], [`http`], [`metrics`],
//! [`redact`], [`limit`].

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
pub mod poll;
pub mod redact;
pub mod runtime;
pub mod store;
