//! The HTTP clients for webhooks: no redirects, bounded timeouts; one
//! trusted (configured webhooks), one guarded by the SSRF guard (URLs a
//! task named).
//!
//! May call: `deliver::ssrf`, `http`, `config`.

use std::sync::Arc;

use crate::config::Config;

/// The HTTP clients for webhooks: no redirects, bounded timeouts.
#[derive(Clone)]
pub struct Clients {
    /// For configured webhooks, which are trusted.
    pub trusted: reqwest::Client,
    /// For per-task webhook URLs: resolves to public addresses only.
    pub guarded: reqwest::Client,
}

impl Clients {
    /// Both clients send through `delivery.proxy` when it is set. Without
    /// it, the trusted client honours the environment's proxy variables
    /// and the guarded one never does: a proxy would resolve names the
    /// guard never sees.
    pub fn new(cfg: &Config) -> reqwest::Result<Clients> {
        let builder = || {
            let b = reqwest::Client::builder()
                .timeout(cfg.delivery.request_timeout)
                .connect_timeout(cfg.delivery.connect_timeout)
                .redirect(reqwest::redirect::Policy::none())
                .user_agent(crate::http::user_agent())
                .pool_max_idle_per_host(cfg.delivery.max_concurrent_per_webhook);
            match &cfg.delivery.proxy {
                Some(p) => reqwest::Proxy::all(p.as_str()).map(|p| b.proxy(p)),
                None => Ok(b),
            }
        };
        let trusted = builder()?.build()?;
        let guarded = match cfg.delivery.proxy {
            // The proxy resolves the receiver's name; only literal
            // addresses can be checked here (see `delivery.proxy`).
            Some(_) => builder()?.build()?,
            None => builder()?
                .no_proxy()
                .dns_resolver(Arc::new(super::ssrf::PublicOnly))
                .build()?,
        };
        Ok(Clients { trusted, guarded })
    }
}
