//! Dead letters (`/ui/dead-letters`): filtered by webhook, event type and
//! time; one replayed at a time, or every one that matches after a
//! confirmation page that says how many. Replayed deliveries go back to
//! the dispatcher, whose per-webhook lanes pace them; it is woken at once.
//!
//! May call: `api` (its state), `store` (`ReadModel::list_matching`,
//! `count_matching`, `Admin::replay_delivery`, `replay_matching`),
//! `config` (webhook names), `clock`.

use axum::extract::{Form, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use serde::Deserialize;

use super::layout::{self, Ctx, Nav, task_href};
use super::session::safe_next;
use crate::api::ApiState;
use crate::clock::Millis;
use crate::store::{DeliveryState, ReplayFilter};

/// Dead letters listed on the page (newest first).
const SHOWN: usize = 200;

const EVENT_TYPES: [&str; 4] = [
    "task.succeeded",
    "task.failed",
    "task.not_found",
    "task.expired",
];

/// What the last action did, carried in the address it redirected to (a
/// number, never text from the request).
#[derive(Deserialize, Default, Debug)]
pub(super) struct Notice {
    /// Deliveries made pending again.
    replayed: Option<u64>,
    /// A delivery that could not be replayed (not dead-lettered or parked).
    not_replayed: Option<i64>,
}

impl Notice {
    pub fn render(&self) -> Markup {
        html! {
            @if let Some(n) = self.replayed {
                p.notice.ok role="status" #notice {
                    (n) @if n == 1 { " delivery is" } @else { " deliveries are" }
                    " pending again; the dispatcher sends them at each webhook's pace."
                }
            }
            @if let Some(id) = self.not_replayed {
                p.notice.error role="alert" #notice {
                    "Delivery " (id) " was not replayed: it is no longer dead-lettered or parked (already replayed, delivered or purged)."
                }
            }
        }
    }
}

/// The filter as the page's form gives it: every field optional text.
#[derive(Deserialize, Default, Debug, Clone)]
pub(super) struct FilterQuery {
    #[serde(default)]
    state: String,
    #[serde(default)]
    webhook: String,
    #[serde(default)]
    event_type: String,
    /// `YYYY-MM-DDTHH:MM[:SS]` in UTC (a `datetime-local` field), or RFC 3339.
    #[serde(default)]
    since: String,
    #[serde(default)]
    until: String,
    /// Set by the confirmation: the moment it counted, so the replay takes
    /// no dead letter that arrived after the count.
    until_ms: Option<Millis>,
}

/// Parses a time field: `datetime-local` values are read as UTC.
fn parse_time(field: &str, v: &str) -> Result<Option<Millis>, String> {
    let v = v.trim();
    if v.is_empty() {
        return Ok(None);
    }
    let full = if v.len() == 16 {
        format!("{v}:00")
    } else {
        v.to_string()
    };
    humantime::parse_rfc3339_weak(&full)
        .map(|t| {
            Some(
                t.duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis() as Millis)
                    .unwrap_or(0),
            )
        })
        .map_err(|_| format!("{field}: {v:?} is not a time (use 2026-01-31T14:00, UTC)"))
}

impl FilterQuery {
    fn filter(&self) -> Result<ReplayFilter, String> {
        let state = match self.state.as_str() {
            "" | "failed" => DeliveryState::Failed,
            "webhook_removed" => DeliveryState::WebhookRemoved,
            w => return Err(format!("state: {w:?} is not failed or webhook_removed")),
        };
        if !self.event_type.is_empty() && !EVENT_TYPES.contains(&self.event_type.as_str()) {
            return Err(format!(
                "event type: {:?} is not one of {}",
                self.event_type,
                EVENT_TYPES.join(", ")
            ));
        }
        let some = |v: &str| (!v.trim().is_empty()).then(|| v.trim().to_string());
        let until = parse_time("until", &self.until)?;
        let until = match (until, self.until_ms) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Ok(ReplayFilter {
            state,
            webhook: some(&self.webhook),
            event_type: some(&self.event_type),
            since: parse_time("since", &self.since)?,
            until,
        })
    }

    /// The filter's fields as a query string (without the pin).
    fn query(&self) -> String {
        layout::query(&[
            ("state", &self.state),
            ("webhook", &self.webhook),
            ("event_type", &self.event_type),
            ("since", &self.since),
            ("until", &self.until),
        ])
    }

    /// The filter in words, for the confirmation.
    fn describe(&self) -> Markup {
        let parked = self.state == "webhook_removed";
        html! {
            ul #filter-summary {
                li { (if parked { "Parked deliveries (their webhook left the configuration)" } else { "Dead letters" }) }
                li { "Webhook: " @if self.webhook.trim().is_empty() { "any" } @else { code { (self.webhook.trim()) } } }
                li { "Event type: " @if self.event_type.is_empty() { "any" } @else { code { (self.event_type) } } }
                @if !self.since.trim().is_empty() { li { "Since: " (self.since.trim()) " UTC" } }
                @if !self.until.trim().is_empty() { li { "Until: " (self.until.trim()) " UTC" } }
            }
        }
    }
}

/// The replay button of one delivery: a form posting its ID with the CSRF
/// token, coming back to `back` afterwards.
pub(super) fn replay_button(ctx: &Ctx, id: i64, back: &str) -> Markup {
    html! {
        form.replay-form method="post" action={ "/ui/deliveries/" (id) "/replay" } {
            (ctx.csrf_field())
            input type="hidden" name="back" value=(back);
            button type="submit" aria-label={ "Replay delivery " (id) } { "Replay" }
        }
    }
}

fn bad_filter(msg: &str) -> Response {
    layout::refusal(StatusCode::BAD_REQUEST, "Bad filter", msg)
}

fn filter_form(f: &FilterQuery, webhooks: &[String]) -> Markup {
    html! {
        form.filters method="get" action="/ui/dead-letters" aria-label="Filter dead letters" {
            div.field {
                label for="state" { "Kind" }
                select #state name="state" {
                    option value="failed" selected[f.state != "webhook_removed"] { "dead letters" }
                    option value="webhook_removed" selected[f.state == "webhook_removed"] { "parked (webhook removed)" }
                }
            }
            div.field {
                label for="webhook" { "Webhook" }
                input #webhook type="text" name="webhook" value=(f.webhook) list="webhook-names" autocomplete="off" spellcheck="false";
                datalist #webhook-names { @for w in webhooks { option value=(w) {} } }
            }
            div.field {
                label for="event_type" { "Event type" }
                select #event_type name="event_type" {
                    option value="" selected[f.event_type.is_empty()] { "any" }
                    @for t in EVENT_TYPES { option value=(t) selected[f.event_type == t] { (t) } }
                }
            }
            div.field {
                label for="since" { "Since (UTC)" }
                input #since type="datetime-local" name="since" value=(f.since) step="1";
            }
            div.field {
                label for="until" { "Until (UTC)" }
                input #until type="datetime-local" name="until" value=(f.until) step="1";
            }
            div.field.actions {
                button type="submit" { "Show" }
                a href="/ui/dead-letters" { "Clear" }
            }
        }
    }
}

/// `GET /ui/dead-letters`.
pub(super) async fn list(
    State(s): State<ApiState>,
    ctx: Ctx,
    query: Result<Query<FilterQuery>, axum::extract::rejection::QueryRejection>,
    notice: Result<Query<Notice>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(f)) = query else {
        return bad_filter("The page's address could not be read; start again from Dead letters.");
    };
    let notice = notice.map(|q| q.0).unwrap_or_default();
    let filter = match f.filter() {
        Ok(f) => f,
        Err(m) => return bad_filter(&m),
    };
    let filter_again = filter.clone();
    let list = match s.store.list_matching(filter, SHOWN + 1).await {
        Ok(l) => l,
        Err(e) => return layout::store_failure(&e),
    };
    let more = list.len() > SHOWN;
    let list = &list[..list.len().min(SHOWN)];
    let total = if more {
        match s.store.count_matching(filter_again).await {
            Ok(n) => n.to_string(),
            Err(_) => "more".to_string(),
        }
    } else {
        list.len().to_string()
    };
    let webhooks: Vec<String> = s
        .config
        .borrow()
        .webhooks
        .iter()
        .map(|w| w.name.clone())
        .collect();
    let here = {
        let q = f.query();
        if q.is_empty() {
            "/ui/dead-letters".to_string()
        } else {
            format!("/ui/dead-letters?{q}")
        }
    };
    let confirm = format!("/ui/dead-letters/replay?{}", f.query());
    let body = html! {
        h1 { "Dead letters" }
        (notice.render())
        p { "Deliveries whose retry schedule ran out are kept for " code { "delivery.dead_letter_ttl" } " with their body. Fix the receiver, then replay them: each goes back to its webhook's queue and is sent at that webhook's pace." }
        (filter_form(&f, &webhooks))
        @if list.is_empty() {
            p #no-dead-letters { "Nothing matches." }
        } @else {
            p {
                @if more { "The newest " (SHOWN) " of " (total) " that match:" } @else { (total) " match:" }
                " "
                a.button #replay-all href=(confirm) { "Replay all that match…" }
            }
            div.table-wrap tabindex="0" role="region" aria-label="Dead letters" {
                table #dead-letters {
                    thead { tr {
                        th scope="col" { "Delivery" }
                        th scope="col" { "Task" }
                        th scope="col" { "Event type" }
                        th scope="col" { "Webhook" }
                        th scope="col" { "Attempts" }
                        th scope="col" { "Last status" }
                        th scope="col" { "Last error" }
                        th scope="col" { "Since" }
                        th scope="col" { "Action" }
                    } }
                    tbody {
                        @for d in list {
                            tr data-delivery=(d.id) {
                                th scope="row" { (d.id) }
                                td { a.id href=(task_href(&d.task_id)) { (d.task_id) } }
                                td { (d.event_type) }
                                td { (d.webhook) }
                                td { (d.attempts) }
                                td { (d.last_status.map(|s| s.to_string()).unwrap_or_else(|| "–".into())) }
                                td { (d.last_error.as_deref().unwrap_or("–")) }
                                td { (layout::time(d.updated_at)) }
                                td { (replay_button(&ctx, d.id, &here)) }
                            }
                        }
                    }
                }
            }
        }
    };
    layout::page(&ctx, Nav::DeadLetters, "Dead letters", None, body)
}

/// `GET /ui/dead-letters/replay`: how many a bulk replay of this filter
/// would take, and the button that does it (pinned to this moment).
pub(super) async fn confirm(
    State(s): State<ApiState>,
    ctx: Ctx,
    query: Result<Query<FilterQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(mut f)) = query else {
        return bad_filter("The page's address could not be read; start again from Dead letters.");
    };
    let pin = s.clock.now_ms() + 1;
    f.until_ms = Some(f.until_ms.map_or(pin, |u| u.min(pin)));
    let filter = match f.filter() {
        Ok(filter) => filter,
        Err(m) => return bad_filter(&m),
    };
    let n = match s.store.count_matching(filter).await {
        Ok(n) => n,
        Err(e) => return layout::store_failure(&e),
    };
    let back = format!("/ui/dead-letters?{}", f.query());
    let count = n.to_string();
    let noun = if n == 1 { "delivery" } else { "deliveries" };
    let body = html! {
        h1 { "Replay all that match?" }
        (f.describe())
        @if n == 0 {
            p #replay-count data-count="0" { "Nothing matches this filter now." }
            p { a href=(back) { "Back to the dead letters" } }
        } @else {
            p #replay-count data-count=(n) {
                strong { (count) " " (noun) } " will be made pending again and sent to their webhooks, at each webhook's pace. Dead letters that arrive after this page was shown are not included."
            }
            form method="post" action="/ui/dead-letters/replay" {
                (ctx.csrf_field())
                input type="hidden" name="state" value=(f.state);
                input type="hidden" name="webhook" value=(f.webhook);
                input type="hidden" name="event_type" value=(f.event_type);
                input type="hidden" name="since" value=(f.since);
                input type="hidden" name="until" value=(f.until);
                input type="hidden" name="until_ms" value=(pin.min(f.until_ms.unwrap_or(pin)));
                div.actions {
                    button #confirm-replay type="submit" { "Replay " (count) " " (noun) }
                    a href=(back) { "Cancel" }
                }
            }
        }
    };
    layout::page(&ctx, Nav::DeadLetters, "Replay dead letters", None, body)
}

/// `POST /ui/dead-letters/replay`: the bulk replay the confirmation showed.
pub(super) async fn replay_matching(
    State(s): State<ApiState>,
    form: Result<Form<FilterQuery>, axum::extract::rejection::FormRejection>,
) -> Response {
    let Ok(Form(f)) = form else {
        return bad_filter("The form could not be read; start again from Dead letters.");
    };
    let filter = match f.filter() {
        Ok(filter) => filter,
        Err(m) => return bad_filter(&m),
    };
    let n = match s.store.replay_matching(s.clock.now_ms(), filter).await {
        Ok(n) => n,
        Err(e) => return layout::store_failure(&e),
    };
    s.dispatcher_wake.notify_one();
    tracing::info!(replayed = n, "console: bulk replay");
    let mut q = f.query();
    if !q.is_empty() {
        q.push('&');
    }
    Redirect::to(&format!("/ui/dead-letters?{q}replayed={n}")).into_response()
}

/// The replay form's fields (besides the CSRF token).
#[derive(Deserialize)]
pub(super) struct ReplayForm {
    back: Option<String>,
}

/// `POST /ui/deliveries/{id}/replay`: one dead-lettered or parked delivery.
pub(super) async fn replay_one(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    form: Result<Form<ReplayForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let Ok(id) = id.parse::<i64>() else {
        return layout::refusal(
            StatusCode::NOT_FOUND,
            "No such delivery",
            "A delivery's ID is a number.",
        );
    };
    let back = safe_next(form.ok().and_then(|f| f.0.back).as_deref());
    let sep = if back.contains('?') { '&' } else { '?' };
    match s.store.replay_delivery(s.clock.now_ms(), id).await {
        Ok(true) => {
            s.dispatcher_wake.notify_one();
            tracing::info!(delivery = id, "console: replay");
            Redirect::to(&format!("{back}{sep}replayed=1")).into_response()
        }
        Ok(false) => Redirect::to(&format!("{back}{sep}not_replayed={id}")).into_response(),
        Err(e) => layout::store_failure(&e),
    }
}
