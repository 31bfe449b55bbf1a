//! taskhook's integration tests, one binary: each module starts the real
//! `taskhook` binary (or the real store) and drives it the way a user would.
//! `common` holds the harness they share.

mod common;

mod api;
mod api_fuzz;
mod callbacks;
mod chaos;
mod cli;
mod console;
mod documented_records;
mod e2e;
mod hardening;
mod layout;
mod openapi;
mod operations;
mod pacing;
mod properties;
mod receivers;
mod recovery;
mod scale_out;
mod services;
mod store_conformance;
mod store_copy;
mod store_faults;
mod upstream_faults;
