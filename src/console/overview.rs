//! The overview (`/ui`): the queue's counts (the very [`Stats`] value
//! `/v1/stats` answers), recent enqueue and delivery rates, the oldest
//! watched task, the daemons sharing the store, the upstream's health and
//! each webhook's, and how long each service's tasks take (learned
//! durations). One [`Snapshot`] feeds
//! both the page and its server-sent updates, so a live number is written
//! exactly as the page first showed it.
//!
//! May call: `api` (its state and `api::stats`, the summary), `store`
//! (`ReadModel::activity`, `duration_models`), `config`, `redact`, `clock`.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::response::Response;
use maud::{Markup, html};
use serde_json::{Value, json};

use super::layout::{self, Ctx, Nav, fmt_span, fmt_time};
use crate::api::ApiState;
use crate::api::stats::Stats;
use crate::clock::Millis;
use crate::store::{Activity, StoreError, WebhookHealth};

/// The span the rates and webhook health are measured over.
pub(super) const WINDOW_MS: Millis = 15 * 60 * 1000;

/// Everything the overview shows, read once.
pub(super) struct Snapshot {
    pub now: Millis,
    /// What `/v1/stats` answers: counts, the upstream, the cluster.
    pub stats: Stats,
    /// Recent activity, or why the store could not say.
    pub activity: Result<Activity, String>,
    pub webhooks: Vec<WebhookRow>,
}

/// One receiver's line in the webhooks table: a configured webhook (even
/// before its first attempt) or a per-task URL seen in the attempt log.
pub(super) struct WebhookRow {
    pub name: String,
    /// The configured URL, secrets redacted; `None` for per-task URLs.
    pub url: Option<String>,
    pub health: WebhookHealth,
    /// Attempts allowed in flight at once to one receiver.
    pub cap: usize,
}

impl Snapshot {
    /// Reads the summary `/v1/stats` answers and the recent activity. The
    /// summary must come, the activity may fail (shown as such).
    pub async fn load(s: &ApiState) -> Result<Snapshot, StoreError> {
        let now = s.clock.now_ms();
        let stats = crate::api::stats::snapshot(s).await?;
        let activity = s
            .store
            .activity(now, now - WINDOW_MS)
            .await
            .map_err(|e| e.to_string());
        let cfg = s.config.borrow().clone();
        let cap = cfg.delivery.max_concurrent_per_webhook;
        let mut health: BTreeMap<String, WebhookHealth> = activity
            .as_ref()
            .map(|a| {
                a.webhooks
                    .iter()
                    .map(|h| (h.webhook.clone(), h.clone()))
                    .collect()
            })
            .unwrap_or_default();
        let mut webhooks: Vec<WebhookRow> = cfg
            .webhooks
            .iter()
            .map(|w| WebhookRow {
                name: w.name.clone(),
                url: Some(crate::redact::url(w.url.as_str())),
                health: health.remove(&w.name).unwrap_or_else(|| WebhookHealth {
                    webhook: w.name.clone(),
                    ..Default::default()
                }),
                cap,
            })
            .collect();
        webhooks.extend(health.into_values().map(|h| WebhookRow {
            name: h.webhook.clone(),
            url: None,
            health: h,
            cap,
        }));
        Ok(Snapshot {
            now,
            stats,
            activity,
            webhooks,
        })
    }

    /// Every live number of the page, by its `data-stat` key, as written.
    pub fn stats_text(&self) -> Vec<(&'static str, String)> {
        let st = &self.stats;
        let per_min = |n: u64| {
            let rate = n as f64 / (WINDOW_MS as f64 / 60_000.0);
            format!("{rate:.1}/min")
        };
        let mut v = vec![
            ("watching", st.tasks.watching.to_string()),
            ("delivering", st.tasks.delivering.to_string()),
            ("done", st.tasks.done.to_string()),
            ("dead_letters", st.dead_letters.to_string()),
            ("deliveries_pending", st.deliveries.pending.to_string()),
            ("webhook_removed", st.deliveries.webhook_removed.to_string()),
            (
                "daemons",
                format!(
                    "{} live; this one is {}; {}",
                    st.instances.len().max(1),
                    st.instance,
                    match &st.leader {
                        Some(l) if l.instance == st.instance => {
                            "it leads the periodic work".to_string()
                        }
                        Some(l) => format!("{} leads the periodic work", l.instance),
                        None => "none leads the periodic work yet".to_string(),
                    }
                ),
            ),
            (
                "oldest_watching",
                match st.oldest_watching_enqueued_at {
                    Some(t) => format!("enqueued {} ago ({})", fmt_span(self.now - t), fmt_time(t)),
                    None => "no task is being watched".into(),
                },
            ),
        ];
        match &self.activity {
            Ok(a) => v.extend([
                ("enqueued", a.enqueued.to_string()),
                ("enqueued_rate", per_min(a.enqueued)),
                ("delivered", a.delivered.to_string()),
                ("delivered_rate", per_min(a.delivered)),
                ("failed_attempts", a.failed_attempts.to_string()),
            ]),
            Err(_) => v.extend(
                [
                    "enqueued",
                    "enqueued_rate",
                    "delivered",
                    "delivered_rate",
                    "failed_attempts",
                ]
                .map(|k| (k, "unknown".to_string())),
            ),
        }
        let up = &st.upstream;
        v.extend([
            (
                "upstream_token",
                if up.token_accepted {
                    "accepted".to_string()
                } else {
                    "refused: polling is paused until the token is fixed".to_string()
                },
            ),
            (
                "upstream_rate",
                format!(
                    "{:.2} requests/s in use (this daemon's budget: {:.2}/s, {} at once)",
                    up.requests_per_second,
                    st.budget.requests_per_second,
                    st.budget.concurrent_requests
                ),
            ),
            (
                "upstream_failures",
                format!(
                    "{} in a row ({} of {} requests failed since start)",
                    up.consecutive_failures, up.failures, up.requests
                ),
            ),
            (
                "upstream_last_error",
                up.last_error.clone().unwrap_or_else(|| "none".into()),
            ),
            (
                "upstream_last_success",
                up.last_success_at
                    .map(|t| format!("{} ago", fmt_span(self.now - t)))
                    .unwrap_or_else(|| "none yet".into()),
            ),
            (
                "upstream_refused",
                if up.broken_services.is_empty() {
                    "none".to_string()
                } else {
                    up.broken_services
                        .iter()
                        .map(|b| b.service.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                },
            ),
            ("updated_at", fmt_time(self.now)),
        ]);
        v
    }

    /// The server-sent event of this snapshot: the same texts, by key.
    pub fn to_event(&self) -> Value {
        let stats: serde_json::Map<String, Value> = self
            .stats_text()
            .into_iter()
            .map(|(k, v)| (k.to_string(), Value::String(v)))
            .collect();
        let webhooks: serde_json::Map<String, Value> = self
            .webhooks
            .iter()
            .map(|w| {
                let fields: serde_json::Map<String, Value> = w
                    .text()
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), Value::String(v)))
                    .collect();
                (w.name.clone(), Value::Object(fields))
            })
            .collect();
        json!({"stats": stats, "webhooks": webhooks})
    }
}

impl WebhookRow {
    /// The row's cells by `data-field` key, as written.
    pub fn text(&self) -> Vec<(&'static str, String)> {
        let h = &self.health;
        let ms = |v: Option<i64>| v.map(|v| format!("{v} ms")).unwrap_or_else(|| "–".into());
        vec![
            ("attempts", h.attempts.to_string()),
            (
                "success",
                if h.attempts == 0 {
                    "–".into()
                } else {
                    format!("{:.1}%", 100.0 * h.delivered as f64 / h.attempts as f64)
                },
            ),
            ("p50", ms(h.p50_ms)),
            ("p95", ms(h.p95_ms)),
            (
                "last_error",
                match (&h.last_error, h.last_error_at) {
                    (Some(e), Some(t)) => format!("{e} ({})", fmt_time(t)),
                    (Some(e), None) => e.clone(),
                    _ => "none".into(),
                },
            ),
            ("in_flight", format!("{} / {}", h.in_flight, self.cap)),
        ]
    }
}

fn stat(texts: &BTreeMap<&str, String>, key: &str) -> Markup {
    html! { span data-stat=(key) { (texts.get(key).map(String::as_str).unwrap_or("")) } }
}

/// `GET /ui`: the overview.
pub(super) async fn page(State(s): State<ApiState>, ctx: Ctx) -> Response {
    let snap = match Snapshot::load(&s).await {
        Ok(snap) => snap,
        Err(e) => return layout::store_failure(&e),
    };
    let durations = s.store.duration_models().await.map_err(|e| e.to_string());
    let t: BTreeMap<&str, String> = snap.stats_text().into_iter().collect();
    let tile = |key: &str, label: &str, href: Option<&str>| {
        html! {
            div.tile {
                dt {
                    @if let Some(h) = href { a href=(h) { (label) } } @else { (label) }
                }
                dd { (stat(&t, key)) }
            }
        }
    };
    let window = fmt_span(WINDOW_MS);
    let body = html! {
        h1 { "Overview" }
        p.updated { "As of " (stat(&t, "updated_at")) "." }
        section aria-labelledby="queue-h" {
            h2 #queue-h { "Queue" }
            dl.tiles {
                (tile("watching", "Watching", Some("/ui/tasks?status=watching")))
                (tile("delivering", "Delivering", Some("/ui/tasks?status=delivering")))
                (tile("done", "Done", Some("/ui/tasks?status=done")))
                (tile("dead_letters", "Dead letters", Some("/ui/dead-letters")))
                (tile("deliveries_pending", "Deliveries pending", None))
                (tile("webhook_removed", "Parked (webhook removed)", None))
            }
            p { "Oldest watched task: " (stat(&t, "oldest_watching")) "." }
            p { "Daemons on this store: " (stat(&t, "daemons")) "." }
        }
        section aria-labelledby="activity-h" {
            h2 #activity-h { "Activity in the last " (window) }
            @if let Err(e) = &snap.activity {
                p.notice.error { "The store could not report recent activity: " (e) }
            }
            dl.tiles {
                div.tile { dt { "Enqueued" } dd { (stat(&t, "enqueued")) " " small { "(" (stat(&t, "enqueued_rate")) ")" } } }
                div.tile { dt { "Delivered" } dd { (stat(&t, "delivered")) " " small { "(" (stat(&t, "delivered_rate")) ")" } } }
                div.tile { dt { "Failed attempts" } dd { (stat(&t, "failed_attempts")) } }
            }
        }
        section aria-labelledby="upstream-h" {
            h2 #upstream-h { "Upstream" }
            dl.facts {
                dt { "Token" } dd { (stat(&t, "upstream_token")) }
                dt { "Request rate" } dd { (stat(&t, "upstream_rate")) }
                dt { "Failures" } dd { (stat(&t, "upstream_failures")) }
                dt { "Last error" } dd { (stat(&t, "upstream_last_error")) }
                dt { "Last success" } dd { (stat(&t, "upstream_last_success")) }
                dt { "Refused services" } dd { (stat(&t, "upstream_refused")) }
            }
            @if snap.stats.upstream.broken_services.is_empty() {
                p { "Every service is polled normally; they share the request rate above." }
            } @else {
                div.table-wrap tabindex="0" role="region" aria-label="Refused services" {
                    table {
                        caption { "Services the upstream refuses (their tasks wait; others carry on)" }
                        thead { tr { th scope="col" { "Service" } th scope="col" { "Answer" } th scope="col" { "Reason" } th scope="col" { "Since" } th scope="col" { "Asked again" } th scope="col" { "Refusals in a row" } } }
                        tbody {
                            @for b in &snap.stats.upstream.broken_services {
                                tr {
                                    th scope="row" { (b.service) }
                                    td { (b.status) " " (b.code) }
                                    td { (b.message) }
                                    td { (layout::time(b.broken_since)) }
                                    td { (layout::time(b.retry_at)) }
                                    td { (b.failures) }
                                }
                            }
                        }
                    }
                }
            }
        }
        section aria-labelledby="webhooks-h" {
            h2 #webhooks-h { "Webhooks" }
            @if snap.webhooks.is_empty() {
                p { "No webhook is configured and no per-task URL was tried in the last " (window) "." }
            } @else {
                div.table-wrap tabindex="0" role="region" aria-label="Webhooks" {
                    table #webhooks {
                        caption { "Health over the last " (window) "; leased deliveries against the per-webhook cap, across every daemon" }
                        thead { tr {
                            th scope="col" { "Webhook" }
                            th scope="col" { "Attempts" }
                            th scope="col" { "Success rate" }
                            th scope="col" { "p50" }
                            th scope="col" { "p95" }
                            th scope="col" { "Last error" }
                            th scope="col" { "Leased / cap" }
                        } }
                        tbody {
                            @for w in &snap.webhooks {
                                tr data-webhook=(w.name) {
                                    th scope="row" {
                                        (w.name)
                                        @if let Some(u) = &w.url { br; small.url { (u) } }
                                    }
                                    @for (k, v) in w.text() {
                                        td data-field=(k) { (v) }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        section aria-labelledby="durations-h" {
            h2 #durations-h { "How long tasks take" }
            @match &durations {
                Err(e) => { p.notice.error { "The store could not report learned durations: " (e) } }
                Ok(models) if models.is_empty() => { p { "Nothing learned yet: durations are learned from tasks as they finish." } }
                Ok(models) => {
                    div.table-wrap tabindex="0" role="region" aria-label="Learned durations" {
                        table #durations {
                            caption { "From enqueue to the upstream's finish, learned from finished tasks" }
                            thead { tr {
                                th scope="col" { "Service" }
                                th scope="col" { "Tasks seen" }
                                th scope="col" { "p10" }
                                th scope="col" { "p50" }
                                th scope="col" { "p90" }
                                th scope="col" { "Updated" }
                            } }
                            tbody {
                                @for m in models {
                                    tr {
                                        th scope="row" { (m.service) }
                                        td { (m.count) }
                                        td { (fmt_span(m.p10_ms)) }
                                        td { (fmt_span(m.p50_ms)) }
                                        td { (fmt_span(m.p90_ms)) }
                                        td { (layout::time(m.updated_at)) }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    layout::page(&ctx, Nav::Overview, "Overview", Some("/ui/events"), body)
}
