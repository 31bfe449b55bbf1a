//! The tasks pages: a listing (`/ui/tasks`) searchable by ID prefix and
//! filtered by service, status and outcome, paged by cursor; and one task
//! (`/ui/tasks/{id}`) with its fields, upstream record, event body,
//! deliveries (replayable when dead-lettered or parked) and every attempt.
//!
//! May call: `api` (its state), `store` (`ReadModel::list_tasks`,
//! `get_task`), `config` (service names), `clock`.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use maud::{Markup, html};
use serde::Deserialize;

use super::dead_letters::{Notice, replay_button};
use super::layout::{self, Ctx, Nav, fmt_span, task_href};
use crate::api::ApiState;
use crate::clock::Millis;
use crate::store::{DeliveryState, TaskFilter, TaskStatus, TaskView};

/// Tasks on one page of the listing.
const PAGE: usize = 50;

/// The listing's query: the search, the filters and the cursor.
#[derive(Deserialize, Default, Debug)]
pub(super) struct ListQuery {
    /// An ID prefix.
    #[serde(default)]
    q: String,
    #[serde(default)]
    service: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    outcome: String,
    /// The cursor: the last task shown (`enqueued_at` in ms, and its ID).
    after_t: Option<Millis>,
    after_id: Option<String>,
}

const OUTCOMES: [&str; 4] = ["succeeded", "failed", "not_found", "expired"];

pub(super) fn status_name(s: TaskStatus) -> &'static str {
    match s {
        TaskStatus::Watching => "watching",
        TaskStatus::Delivering => "delivering",
        TaskStatus::Done => "done",
    }
}

fn parse_status(s: &str) -> Option<TaskStatus> {
    Some(match s {
        "watching" => TaskStatus::Watching,
        "delivering" => TaskStatus::Delivering,
        "done" => TaskStatus::Done,
        _ => return None,
    })
}

pub(super) fn delivery_state_name(s: DeliveryState) -> &'static str {
    match s {
        DeliveryState::Pending => "pending",
        DeliveryState::Delivered => "delivered",
        DeliveryState::Failed => "failed",
        DeliveryState::Gone => "gone",
        DeliveryState::WebhookRemoved => "webhook_removed",
    }
}

fn select(name: &str, label: &str, current: &str, options: &[&str]) -> Markup {
    html! {
        div.field {
            label for=(name) { (label) }
            select #(name) name=(name) {
                option value="" selected[current.is_empty()] { "any" }
                @for o in options {
                    option value=(o) selected[current == *o] { (o) }
                }
            }
        }
    }
}

/// `GET /ui/tasks`: the listing.
pub(super) async fn list(
    State(s): State<ApiState>,
    ctx: Ctx,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(q)) = query else {
        return layout::refusal(
            StatusCode::BAD_REQUEST,
            "Bad query",
            "The listing's address could not be read; start again from the Tasks page.",
        );
    };
    let status = match q.status.as_str() {
        "" => None,
        w => match parse_status(w) {
            Some(st) => Some(st),
            None => {
                return layout::refusal(
                    StatusCode::BAD_REQUEST,
                    "Bad filter",
                    "status must be watching, delivering or done.",
                );
            }
        },
    };
    if !q.outcome.is_empty() && !OUTCOMES.contains(&q.outcome.as_str()) {
        return layout::refusal(
            StatusCode::BAD_REQUEST,
            "Bad filter",
            "outcome must be succeeded, failed, not_found or expired.",
        );
    }
    let some = |v: &str| (!v.is_empty()).then(|| v.to_string());
    let filter = TaskFilter {
        service: some(&q.service),
        status,
        outcome: some(&q.outcome),
        id_prefix: some(q.q.trim()),
        after: q.after_t.zip(q.after_id.clone()),
        limit: PAGE + 1,
    };
    let mut tasks = match s.store.list_tasks(filter).await {
        Ok(t) => t,
        Err(e) => return layout::store_failure(&e),
    };
    let more = tasks.len() > PAGE;
    tasks.truncate(PAGE);
    let services: Vec<String> = {
        let cfg = s.config.borrow();
        cfg.upstream.profiles.names().map(str::to_string).collect()
    };
    let services: Vec<&str> = services.iter().map(String::as_str).collect();
    let filters = [
        ("q", q.q.as_str()),
        ("service", q.service.as_str()),
        ("status", q.status.as_str()),
        ("outcome", q.outcome.as_str()),
    ];
    let next = tasks.last().filter(|_| more).map(|last| {
        let t = last.enqueued_at.to_string();
        let mut pairs = filters.to_vec();
        pairs.push(("after_t", &t));
        pairs.push(("after_id", &last.id));
        format!("/ui/tasks?{}", layout::query(&pairs))
    });
    let now = s.clock.now_ms();
    let body = html! {
        h1 { "Tasks" }
        form.filters method="get" action="/ui/tasks" role="search" aria-label="Find tasks" {
            div.field {
                label for="q" { "ID starts with" }
                input #q type="search" name="q" value=(q.q) autocomplete="off" spellcheck="false";
            }
            (select("service", "Service", &q.service, &services))
            (select("status", "Status", &q.status, &["watching", "delivering", "done"]))
            (select("outcome", "Outcome", &q.outcome, &OUTCOMES))
            div.field.actions {
                button type="submit" { "Show" }
                a href="/ui/tasks" { "Clear" }
            }
        }
        @if tasks.is_empty() {
            p #no-tasks { "No task matches." }
        } @else {
            div.table-wrap tabindex="0" role="region" aria-label="Tasks" {
                table #tasks {
                    thead { tr {
                        th scope="col" { "ID" }
                        th scope="col" { "Service" }
                        th scope="col" { "Status" }
                        th scope="col" { "Outcome" }
                        th scope="col" { "Upstream state" }
                        th scope="col" { "Polls" }
                        th scope="col" { "Enqueued" }
                    } }
                    tbody {
                        @for t in &tasks {
                            tr {
                                th scope="row" { a.id href=(task_href(&t.id)) { (t.id) } }
                                td { (t.service) }
                                td { span.badge data-status=(status_name(t.status)) { (status_name(t.status)) } }
                                td { (t.outcome.as_deref().unwrap_or("–")) }
                                td { (t.upstream_state.as_deref().unwrap_or("–")) }
                                td { (t.polls) }
                                td { (layout::time(t.enqueued_at)) " " small { "(" (fmt_span(now - t.enqueued_at)) " ago)" } }
                            }
                        }
                    }
                }
            }
        }
        nav.pager aria-label="Pages" {
            @if q.after_t.is_some() {
                a href={ "/ui/tasks?" (layout::query(&filters)) } { "First page" }
            }
            @if let Some(n) = &next {
                a rel="next" href=(n) { "Next page" }
            }
        }
    };
    layout::page(&ctx, Nav::Tasks, "Tasks", None, body)
}

/// `GET /ui/tasks/{id}`: one task.
pub(super) async fn show(
    State(s): State<ApiState>,
    ctx: Ctx,
    Path(id): Path<String>,
    notice: Result<Query<Notice>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let notice = notice.map(|q| q.0).unwrap_or_default();
    let task = match s.store.get_task(id.clone()).await {
        Ok(Some(t)) => t,
        Ok(None) => {
            return layout::refusal(
                StatusCode::NOT_FOUND,
                "No such task",
                &format!(
                    "The task {id:?} is not in the store: it was never enqueued, was deleted, or was purged after store.done_retention."
                ),
            );
        }
        Err(e) => return layout::store_failure(&e),
    };
    let here = task_href(&task.id);
    let events = format!("/ui/events?{}", layout::query(&[("task", &task.id)]));
    let body = task_body(&task, &ctx, &here, &notice, s.clock.now_ms());
    layout::page(
        &ctx,
        Nav::Tasks,
        &format!("Task {}", task.id),
        Some(&events),
        body,
    )
}

fn opt_time(t: Option<Millis>) -> Markup {
    match t {
        Some(t) => layout::time(t),
        None => html! { "–" },
    }
}

fn task_body(t: &TaskView, ctx: &Ctx, here: &str, notice: &Notice, now: Millis) -> Markup {
    let record = t
        .event
        .as_ref()
        .and_then(|e| e.pointer("/data/task"))
        .filter(|r| !r.is_null());
    html! {
        h1 { "Task " code.id { (t.id) } }
        (notice.render())
        dl.facts #task-fields {
            dt { "Service" } dd { (t.service) }
            dt { "Status" } dd { span.badge data-task-field="status" data-status=(status_name(t.status)) { (status_name(t.status)) } }
            dt { "Outcome" } dd data-task-field="outcome" { (t.outcome.as_deref().unwrap_or("–")) }
            dt { "Upstream state" } dd { (t.upstream_state.as_deref().unwrap_or("–")) }
            dt { "Polls" } dd { (t.polls) }
            dt { "Enqueued" } dd { (layout::time(t.enqueued_at)) " (" (fmt_span(now - t.enqueued_at)) " ago)" }
            dt { "Next poll" } dd { (opt_time(t.next_poll_at)) }
            dt { "Finished" } dd { (opt_time(t.finished_at)) }
            dt { "Event ID" } dd { @if let Some(e) = &t.event_id { code { (e) } } @else { "–" } }
            dt { "Per-task webhooks" } dd {
                @if t.webhooks.is_empty() { "none" } @else {
                    ul.plain { @for w in &t.webhooks { li { code { (w) } } } }
                }
            }
            dt { "Metadata" } dd {
                @if let Some(m) = &t.metadata { pre.json { (layout::pretty(m)) } } @else { "none" }
            }
        }
        section aria-labelledby="record-h" {
            h2 #record-h { "Upstream record" }
            @if let Some(r) = record {
                details #upstream-record {
                    summary { "The record as the upstream last reported it" }
                    pre.json { (layout::pretty(r)) }
                }
            } @else {
                p { "None kept: the record is stored with the event once the task finishes (not_found and expired tasks have none)." }
            }
        }
        section aria-labelledby="event-h" {
            h2 #event-h { "Event body" }
            @if let Some(e) = &t.event {
                details #event-body {
                    summary { "The event sent to every receiver" }
                    p.hint { "Indented, keys sorted, for reading:" }
                    pre.json { (layout::pretty(e)) }
                    @if let Some(raw) = &t.event_body {
                        p.hint { "Exactly as signed and sent (the bytes every signature covers):" }
                        pre.json.raw #event-raw { (raw) }
                    }
                }
            } @else {
                p { "No event yet: the task is still being watched." }
            }
        }
        section aria-labelledby="deliveries-h" {
            h2 #deliveries-h { "Deliveries" }
            @if t.deliveries.is_empty() {
                p { "None." }
            } @else {
                div.table-wrap tabindex="0" role="region" aria-label="Deliveries" {
                    table #deliveries {
                        thead { tr {
                            th scope="col" { "ID" }
                            th scope="col" { "Webhook" }
                            th scope="col" { "State" }
                            th scope="col" { "Attempts" }
                            th scope="col" { "Next attempt" }
                            th scope="col" { "Last status" }
                            th scope="col" { "Last error" }
                            th scope="col" { "Action" }
                        } }
                        tbody {
                            @for d in &t.deliveries {
                                @let state = delivery_state_name(d.state);
                                tr data-delivery=(d.id) {
                                    th scope="row" { (d.id) }
                                    td { (d.webhook) @if d.url != d.webhook { br; small.url { (d.url) } } }
                                    td data-field="state" { span.badge data-state=(state) { (state) } }
                                    td data-field="attempts" { (d.attempts) }
                                    td data-field="next_attempt" { (opt_time(d.next_attempt_at)) }
                                    td data-field="last_status" { (d.last_status.map(|s| s.to_string()).unwrap_or_else(|| "–".into())) }
                                    td data-field="last_error" { (d.last_error.as_deref().unwrap_or("–")) }
                                    td {
                                        @if matches!(d.state, DeliveryState::Failed | DeliveryState::WebhookRemoved) {
                                            (replay_button(ctx, d.id, here))
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        section aria-labelledby="attempts-h" {
            h2 #attempts-h { "Attempts" }
            @if t.attempts.is_empty() {
                p { "No attempt logged." }
            } @else {
                p.hint { "As of this page's load; reload for newer attempts. At most the first KiB of each answer is kept." }
                div.table-wrap tabindex="0" role="region" aria-label="Attempts" {
                    table #attempts {
                        thead { tr {
                            th scope="col" { "Time" }
                            th scope="col" { "Delivery" }
                            th scope="col" { "Webhook" }
                            th scope="col" { "#" }
                            th scope="col" { "Status" }
                            th scope="col" { "Latency" }
                            th scope="col" { "Result" }
                            th scope="col" { "Error" }
                            th scope="col" { "Answer" }
                        } }
                        tbody {
                            @for a in &t.attempts {
                                tr {
                                    td { (layout::time(a.at)) }
                                    td { (a.delivery_id) }
                                    td { (a.webhook) }
                                    td { (a.attempt) }
                                    td { (a.status.map(|s| s.to_string()).unwrap_or_else(|| "–".into())) }
                                    td { (a.latency_ms.map(|l| format!("{l} ms")).unwrap_or_else(|| "–".into())) }
                                    td { span.badge data-state=(a.verdict) { (a.verdict) } }
                                    td { (a.error.as_deref().unwrap_or("–")) }
                                    td {
                                        @match a.answer.as_deref() {
                                            Some(ans) if !ans.is_empty() => {
                                                details.answer {
                                                    summary { (ans.len()) " bytes" }
                                                    pre { (ans) }
                                                }
                                            }
                                            _ => { "–" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}
