//! Reloading the configuration of a running daemon (SIGHUP): what changes
//! at once, what needs a restart, and deliveries parked for a webhook that
//! is configured again.
//!
//! May call: `config`, `poll::upstream` (the token), `store` (admin),
//! `clock`.

use std::sync::Arc;

use tokio::sync::{Notify, watch};

use crate::clock::now_ms;
use crate::config::Config;
use crate::poll::upstream::UpstreamClient;
use crate::store::Admin;

/// Applies a new configuration to a running daemon (SIGHUP).
#[derive(Clone)]
pub struct Reloader {
    config: Arc<watch::Sender<Arc<Config>>>,
    upstream: Arc<UpstreamClient>,
    store: Arc<dyn Admin>,
    dispatcher_wake: Arc<Notify>,
}

impl Reloader {
    pub(super) fn new(
        config: watch::Sender<Arc<Config>>,
        upstream: Arc<UpstreamClient>,
        store: Arc<dyn Admin>,
        dispatcher_wake: Arc<Notify>,
    ) -> Self {
        Reloader {
            config: Arc::new(config),
            upstream,
            store,
            dispatcher_wake,
        }
    }

    /// Installs `new`: webhooks, retry settings, poll settings, batch size,
    /// the upstream token and the API token take effect at once. Settings
    /// fixed at start keep their running value; each one that changed is
    /// returned so the caller can log that it needs a restart.
    pub fn reload(&self, mut new: Config) -> Vec<&'static str> {
        let old = self.config.borrow().clone();
        let mut restart = Vec::new();
        macro_rules! keep {
            ($($field:ident).+, $name:literal) => {
                if new.$($field).+ != old.$($field).+ {
                    restart.push($name);
                    new.$($field).+ = old.$($field).+.clone();
                }
            };
        }
        keep!(store.url, "store.url");
        keep!(store.pool_size, "store.pool_size");
        keep!(store.path, "store.path");
        keep!(store.sync, "store.sync");
        keep!(api.listen, "api.listen");
        keep!(api.max_body_bytes, "api.max_body_bytes");
        keep!(upstream.base_url, "upstream.base_url");
        keep!(
            upstream.max_requests_per_second,
            "upstream.max_requests_per_second"
        );
        keep!(
            upstream.max_concurrent_requests,
            "upstream.max_concurrent_requests"
        );
        keep!(upstream.request_timeout, "upstream.request_timeout");
        keep!(delivery.request_timeout, "delivery.request_timeout");
        keep!(delivery.connect_timeout, "delivery.connect_timeout");
        keep!(daemon.log_format, "daemon.log_format");
        keep!(daemon.log_level, "daemon.log_level");
        if new.upstream.token != old.upstream.token || self.upstream.token_refused() {
            self.upstream.set_token(new.upstream.token.clone());
        }
        self.upstream
            .set_broken_service_retry(new.upstream.broken_service_retry);
        let names: Vec<String> = new.webhooks.iter().map(|w| w.name.clone()).collect();
        if let Some(w) = new.nothing_receives() {
            tracing::warn!("{w}");
        }
        self.config.send_replace(Arc::new(new));
        // Deliveries parked because their webhook had left the
        // configuration go out again now that it is back.
        let (store, wake) = (self.store.clone(), self.dispatcher_wake.clone());
        tokio::spawn(resume_parked(store, wake, names));
        restart
    }
}

/// Makes deliveries parked for a missing webhook pending again, for the
/// webhooks configured now.
pub(super) async fn resume_parked(store: Arc<dyn Admin>, wake: Arc<Notify>, names: Vec<String>) {
    match store.resume_parked(now_ms(), names).await {
        Ok(0) => {}
        Ok(n) => {
            tracing::info!(
                deliveries = n,
                "deliveries parked for a removed webhook resume: the webhook is configured again"
            );
            wake.notify_one();
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot resume parked deliveries; replay them by hand")
        }
    }
}
