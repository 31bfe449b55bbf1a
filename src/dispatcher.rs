//! The dispatcher: leases due deliveries, sends each to its webhook within
//! that webhook's concurrency cap, and records results in batches. A slow
//! receiver only ever holds its own slots: the claim skips webhooks that are
//! at their cap.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::clock::{Millis, now_ms};
use crate::config::{Config, SigningKey};
use crate::schedule::{Retry, retry_after_attempt};
use crate::store::{ClaimedDelivery, DeliveryKind, DeliveryQueue, DeliveryReport, DeliveryVerdict};
use crate::webhook::{self, Attempt, AttemptResult};

/// Deliveries leased per claim.
const CLAIM_BATCH: usize = 256;
/// Attempts in flight (or queued for a webhook slot) at most.
const MAX_IN_FLIGHT: usize = 4096;

/// Runs the delivery loop until cancelled.
pub struct Dispatcher {
    /// Deliveries the poller stored already leased, to send at once.
    pub handoff: mpsc::UnboundedReceiver<Vec<ClaimedDelivery>>,
    pub heartbeat: crate::daemon::Heartbeat,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub store: Arc<dyn DeliveryQueue>,
    pub config: watch::Receiver<Arc<Config>>,
    /// Woken by the poller when it stored events, and by result writes.
    pub wake: Arc<Notify>,
}

/// The HTTP clients for webhooks: no redirects, bounded timeouts.
#[derive(Clone)]
pub struct Clients {
    /// For configured webhooks, which are trusted.
    trusted: reqwest::Client,
    /// For per-task webhook URLs: resolves to public addresses only.
    guarded: reqwest::Client,
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
                .user_agent(webhook::user_agent())
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
                .dns_resolver(Arc::new(crate::ssrf::PublicOnly))
                .build()?,
        };
        Ok(Clients { trusted, guarded })
    }
}

/// The lease of a delivery being sent: long enough to cover a wait for a
/// slot behind a slow receiver plus the attempt itself.
pub fn delivery_lease(cfg: &Config, now: Millis) -> Millis {
    now + (cfg.delivery.request_timeout * 40)
        .max(Duration::from_secs(600))
        .as_millis() as Millis
}

/// Deliveries queued for one webhook, per slot, at most; a handed-off
/// delivery beyond that is given back to the store instead. Each queued
/// delivery waits at most this many attempts (each bounded by the request
/// timeout), well inside the lease of 40 request timeouts.
const LANE_QUEUE_PER_SLOT: usize = 32;

/// One webhook's concurrency: its slots, their number, and how many
/// attempts wait for one.
#[derive(Clone)]
struct Lane {
    slots: Arc<Semaphore>,
    cap: usize,
    waiting: Arc<std::sync::atomic::AtomicUsize>,
}

impl Lane {
    fn new(cap: usize) -> Lane {
        Lane {
            slots: Arc::new(Semaphore::new(cap)),
            cap,
            waiting: Arc::default(),
        }
    }

    /// Follows a reloaded `max_concurrent_per_webhook`: more slots at once;
    /// fewer as attempts in flight give theirs back.
    fn resize(&mut self, cap: usize) {
        if cap > self.cap {
            self.slots.add_permits(cap - self.cap);
        } else if cap < self.cap {
            let slots = self.slots.clone();
            let excess = (self.cap - cap) as u32;
            tokio::spawn(async move {
                if let Ok(p) = slots.acquire_many_owned(excess).await {
                    p.forget();
                }
            });
        }
        self.cap = cap;
    }
}

/// The dispatch loop's working state.
struct Work {
    client: Clients,
    report: mpsc::Sender<DeliveryReport>,
    in_flight: Arc<Semaphore>,
    lanes: HashMap<String, Lane>,
    attempts: JoinSet<()>,
    metrics: Arc<crate::metrics::Metrics>,
}

impl Work {
    /// Starts an attempt for `d`; false (and `d` dropped, still leased:
    /// the caller gives it back) when its webhook's queue or the global
    /// cap is full.
    fn start(&mut self, cfg: &Arc<Config>, d: ClaimedDelivery) -> bool {
        use std::sync::atomic::Ordering;
        let cap = cfg.delivery.max_concurrent_per_webhook;
        let lane = self
            .lanes
            .entry(d.webhook.clone())
            .or_insert_with(|| Lane::new(cap));
        if lane.cap != cap {
            lane.resize(cap);
        }
        let lane = lane.clone();
        if lane.waiting.load(Ordering::Relaxed) >= LANE_QUEUE_PER_SLOT * cap {
            return false;
        }
        let Ok(slot) = self.in_flight.clone().try_acquire_owned() else {
            return false;
        };
        let job = Job {
            metrics: self.metrics.clone(),
            client: self.client.clone(),
            cfg: cfg.clone(),
            report: self.report.clone(),
        };
        lane.waiting.fetch_add(1, Ordering::Relaxed);
        self.attempts.spawn(async move {
            let _slot = slot;
            let turn = lane.slots.acquire_owned().await.expect("never closed");
            lane.waiting.fetch_sub(1, Ordering::Relaxed);
            job.attempt(d).await;
            drop(turn);
        });
        true
    }

    /// Webhooks whose slots are all taken.
    fn saturated(&mut self) -> Vec<String> {
        self.lanes.retain(|_, l| {
            l.slots.available_permits() < l.cap
                || l.waiting.load(std::sync::atomic::Ordering::Relaxed) > 0
        });
        self.lanes
            .iter()
            .filter(|(_, l)| l.slots.available_permits() == 0)
            .map(|(k, _)| k.clone())
            .collect()
    }
}

impl Dispatcher {
    pub async fn run(mut self, shutdown: CancellationToken) {
        let client = match Clients::new(&self.config.borrow()) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "cannot build the webhook client");
                return;
            }
        };
        let (tx, rx) = mpsc::channel::<DeliveryReport>(MAX_IN_FLIGHT);
        let writer = tokio::spawn(write_reports(self.store.clone(), rx, self.wake.clone()));
        let mut work = Work {
            client,
            report: tx,
            in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
            lanes: HashMap::new(),
            attempts: JoinSet::new(),
            metrics: self.metrics.clone(),
        };
        let mut stash: Vec<Vec<ClaimedDelivery>> = Vec::new();
        loop {
            self.heartbeat.beat();
            while work.attempts.try_join_next().is_some() {}
            if shutdown.is_cancelled() {
                break;
            }
            let cfg = self.config.borrow().clone();
            // Fresh deliveries handed over by the poller, already leased.
            let mut give_back = Vec::new();
            while let Ok(batch) = self.handoff.try_recv() {
                stash.push(batch);
            }
            for batch in stash.drain(..) {
                for d in batch {
                    let lease = (d.id, d.claim);
                    if !work.start(&cfg, d) {
                        give_back.push(lease);
                    }
                }
            }
            self.give_back(give_back).await;
            let free = work.in_flight.available_permits().min(CLAIM_BATCH);
            if free == 0 {
                tokio::select! {
                    _ = work.attempts.join_next() => continue,
                    _ = shutdown.cancelled() => break,
                }
            }
            let exclude = work.saturated();
            let now = now_ms();
            let saturated = !exclude.is_empty();
            let claim = match self
                .store
                .claim_deliveries(
                    now,
                    free,
                    delivery_lease(&cfg, now),
                    exclude,
                    cfg.delivery.max_concurrent_per_webhook,
                )
                .await
            {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot claim deliveries; retrying in 1s");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        _ = shutdown.cancelled() => break,
                    }
                }
            };
            if claim.deliveries.is_empty() {
                let sleep = match claim.next_due {
                    // Everything due is for webhooks at their cap: wait for a slot.
                    Some(_) if saturated && !work.attempts.is_empty() => self.heartbeat.max_idle(),
                    Some(due) => Duration::from_millis((due - now).max(1) as u64),
                    None => self.heartbeat.max_idle(),
                }
                .min(self.heartbeat.max_idle());
                tokio::select! {
                    _ = tokio::time::sleep(sleep) => {}
                    _ = self.wake.notified() => {}
                    Some(batch) = self.handoff.recv() => stash.push(batch),
                    _ = work.attempts.join_next(), if !work.attempts.is_empty() => {}
                    _ = shutdown.cancelled() => break,
                }
                continue;
            }
            let mut give_back = Vec::new();
            for d in claim.deliveries {
                let lease = (d.id, d.claim);
                if !work.start(&cfg, d) {
                    give_back.push(lease);
                }
            }
            self.give_back(give_back).await;
        }
        // Let attempts in flight finish (the daemon bounds this by its grace
        // period); unfinished ones keep their lease and are retried later.
        while work.attempts.join_next().await.is_some() {}
        drop(work);
        let _ = writer.await;
    }

    /// Returns unsent deliveries (id, claim) to the store, due now. If that
    /// fails, their lease runs out and they are claimed then.
    async fn give_back(&self, leases: Vec<(i64, i64)>) {
        if leases.is_empty() {
            return;
        }
        if let Err(e) = self.store.release_deliveries(now_ms(), leases).await {
            tracing::warn!(error = %e, "cannot give back deliveries; they wait for their lease");
        }
    }
}

/// One delivery attempt and its report.
struct Job {
    metrics: Arc<crate::metrics::Metrics>,
    client: Clients,
    cfg: Arc<Config>,
    report: mpsc::Sender<DeliveryReport>,
}

impl Job {
    async fn attempt(self, d: ClaimedDelivery) {
        let attempt_no = d.attempts + 1;
        // A configured webhook is whatever its name means now: its current
        // URL, secret and headers. Gone from the configuration: parked,
        // never sent unsigned to a stale URL.
        let target = match d.kind {
            DeliveryKind::Webhook => match self.cfg.webhooks.iter().find(|w| w.name == d.webhook) {
                Some(w) => Target {
                    url: w.url.to_string(),
                    key: w.secret.as_ref(),
                    headers: w
                        .headers
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                    guarded: false,
                },
                None => {
                    tracing::warn!(task_id = %d.task_id, webhook = %d.webhook, "the delivery's webhook is no longer configured; parked as webhook_removed (it resumes when a webhook of that name is configured again)");
                    self.report(
                        &d,
                        DeliveryVerdict::WebhookRemoved,
                        None,
                        Some(format!("webhook {:?} is not configured", d.webhook)),
                    )
                    .await;
                    return;
                }
            },
            DeliveryKind::TaskUrl => Target {
                url: d.url.clone(),
                key: self.cfg.delivery.secret.as_ref(),
                headers: Vec::new(),
                guarded: !self.cfg.delivery.allow_private_networks,
            },
        };
        let started = std::time::Instant::now();
        let client = if target.guarded {
            &self.client.guarded
        } else {
            &self.client.trusted
        };
        let literal_blocked = if target.guarded {
            url::Url::parse(&target.url)
                .map_err(|e| e.to_string())
                .and_then(|u| crate::ssrf::check_url(&u))
                .err()
        } else {
            None
        };
        let result = if let Some(reason) = literal_blocked {
            AttemptResult::Blocked { reason }
        } else {
            webhook::send(
                client,
                &Attempt {
                    url: &target.url,
                    event_id: &d.event_id,
                    body: d.body.as_bytes(),
                    key: target.key,
                    headers: &target.headers,
                },
            )
            .await
        };
        self.metrics
            .delivery_duration
            .observe(started.elapsed().as_secs_f64());
        let now = now_ms();
        let (verdict, status, error) = match result {
            AttemptResult::Delivered { status } => {
                tracing::info!(task_id = %d.task_id, webhook = %d.webhook, attempt = attempt_no, status, "delivered");
                self.metrics
                    .enqueue_to_delivered
                    .observe((now - d.enqueued_at).max(0) as f64 / 1000.0);
                (DeliveryVerdict::Delivered, Some(status), None)
            }
            AttemptResult::Blocked { reason } => {
                tracing::warn!(task_id = %d.task_id, webhook = %d.webhook, attempt = attempt_no, reason = %reason, "delivery blocked by the SSRF guard; dead-lettered");
                (
                    DeliveryVerdict::DeadLetter,
                    None,
                    Some(format!("blocked: {reason}")),
                )
            }
            AttemptResult::Gone => {
                tracing::info!(task_id = %d.task_id, webhook = %d.webhook, attempt = attempt_no, "receiver answered 410 Gone; not retrying");
                (
                    DeliveryVerdict::Gone,
                    Some(410),
                    Some("410 Gone".to_string()),
                )
            }
            AttemptResult::Failed {
                status,
                error,
                retry_after,
            } => {
                let verdict = match retry_after_attempt(
                    &self.cfg.delivery.retry_schedule,
                    attempt_no,
                    retry_after,
                    rand::random(),
                ) {
                    Retry::After(delay) => {
                        tracing::debug!(task_id = %d.task_id, webhook = %d.webhook, attempt = attempt_no, error = %error, retry_in = ?delay, "delivery attempt failed");
                        DeliveryVerdict::Retry {
                            at: now + delay.as_millis() as Millis,
                        }
                    }
                    Retry::DeadLetter => {
                        tracing::warn!(task_id = %d.task_id, webhook = %d.webhook, attempt = attempt_no, error = %error, "delivery dead-lettered after the last retry");
                        DeliveryVerdict::DeadLetter
                    }
                };
                (verdict, status, Some(error))
            }
        };
        self.metrics.delivery(match verdict {
            DeliveryVerdict::Delivered => "delivered",
            DeliveryVerdict::Retry { .. } => "retry",
            DeliveryVerdict::DeadLetter => "dead_letter",
            DeliveryVerdict::Gone => "gone",
            DeliveryVerdict::WebhookRemoved => "webhook_removed",
        });
        self.report(&d, verdict, status, error).await;
    }

    async fn report(
        &self,
        d: &ClaimedDelivery,
        verdict: DeliveryVerdict,
        status: Option<u16>,
        error: Option<String>,
    ) {
        let _ = self
            .report
            .send(DeliveryReport {
                id: d.id,
                claim: d.claim,
                task_id: d.task_id.clone(),
                event_id: d.event_id.clone(),
                verdict,
                status,
                error,
            })
            .await;
    }
}

/// Where one attempt goes and how it is signed.
struct Target<'a> {
    url: String,
    key: Option<&'a SigningKey>,
    headers: Vec<(String, String)>,
    /// A per-task URL: the SSRF guard applies.
    guarded: bool,
}

/// Collects attempt reports and writes them in batches, one transaction
/// each. A failed write is retried (the reports stay in memory) so a store
/// hiccup does not turn into re-deliveries.
async fn write_reports(
    store: Arc<dyn DeliveryQueue>,
    mut rx: mpsc::Receiver<DeliveryReport>,
    wake: Arc<Notify>,
) {
    let mut buf = Vec::with_capacity(1024);
    while rx.recv_many(&mut buf, 1024).await > 0 {
        let batch = std::mem::take(&mut buf);
        let mut delay = Duration::from_millis(100);
        loop {
            match store.record_deliveries(now_ms(), batch.clone()).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::error!(error = %e, reports = batch.len(), "cannot record delivery results; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
        wake.notify_one();
    }
}
