//! Live numbers for open pages: `GET /ui/events` streams server-sent
//! events. `overview` events carry the overview's texts by key (the same
//! [`Snapshot`] the page was rendered from); with `?task=ID`, `task` events
//! carry that task's status and each delivery's state. An event is sent
//! when something changed, checked every second.
//!
//! A stream ends after [`STREAM_LIFETIME`] and the browser reconnects on
//! its own (the `retry` field), so an open tab never holds a shutting-down
//! daemon for longer than that.
//!
//! May call: `api` (its state), `store` (`ReadModel::get_task`, through
//! the overview's snapshot), `clock`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::stream::Stream;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::overview::Snapshot;
use super::tasks::{delivery_state_name, status_name};
use crate::api::ApiState;

/// How often a stream looks for changes.
const TICK: Duration = Duration::from_secs(1);
/// How long one stream lasts before the browser reconnects: well inside
/// the shutdown grace (`daemon.shutdown_grace`, 10 s by default), so a
/// console left open does not hold a daemon that is stopping.
const STREAM_LIFETIME: Duration = Duration::from_secs(4);
/// How soon the browser reconnects after a stream ends.
const RETRY: Duration = Duration::from_millis(500);

/// The last overview event of each store (by address) and when it was
/// read: every open console shares one read per tick, however many tabs
/// are open.
type Shared = HashMap<usize, (Instant, &'static str, Value)>;
static LAST_OVERVIEW: LazyLock<Mutex<Shared>> = LazyLock::new(Mutex::default);

/// The overview event, read at most once per tick for every stream.
async fn overview(s: &ApiState) -> (&'static str, Value) {
    let key = Arc::as_ptr(&s.store) as *const () as usize;
    let fresh = |m: &Shared| {
        m.get(&key)
            .filter(|(at, _, _)| at.elapsed() < TICK)
            .map(|(_, name, v)| (*name, v.clone()))
    };
    if let Some(hit) = fresh(&LAST_OVERVIEW.lock().expect("overview cache lock")) {
        return hit;
    }
    let (name, v) = match Snapshot::load(s).await {
        Ok(snap) => ("overview", snap.to_event()),
        Err(e) => ("unavailable", json!({"error": e.to_string()})),
    };
    LAST_OVERVIEW
        .lock()
        .expect("overview cache lock")
        .insert(key, (Instant::now(), name, v.clone()));
    (name, v)
}

/// The stream's query: a task to follow instead of the overview.
#[derive(Deserialize, Default)]
pub(super) struct EventsQuery {
    task: Option<String>,
}

/// What one stream follows and what it last sent.
struct Follow {
    s: ApiState,
    task: Option<String>,
    last: Option<String>,
    first: bool,
    ends_at: Instant,
    tick: tokio::time::Interval,
}

impl Follow {
    /// The event for now, as (name, data).
    async fn read(&self) -> (&'static str, Value) {
        match &self.task {
            None => overview(&self.s).await,
            Some(id) => match self.s.store.get_task(id.clone()).await {
                Ok(Some(t)) => {
                    let deliveries: serde_json::Map<String, Value> = t
                        .deliveries
                        .iter()
                        .map(|d| {
                            (
                                d.id.to_string(),
                                json!({
                                    "state": delivery_state_name(d.state),
                                    "attempts": d.attempts.to_string(),
                                    "last_status": d.last_status.map(|s| s.to_string()).unwrap_or_else(|| "–".into()),
                                    "last_error": d.last_error.clone().unwrap_or_else(|| "–".into()),
                                }),
                            )
                        })
                        .collect();
                    (
                        "task",
                        json!({
                            "status": status_name(t.status),
                            "outcome": t.outcome.unwrap_or_else(|| "–".into()),
                            "deliveries": deliveries,
                        }),
                    )
                }
                Ok(None) => ("task", json!({"gone": true})),
                Err(e) => ("unavailable", json!({"error": e.to_string()})),
            },
        }
    }

    /// The next event to send: waits for a change, or `None` when the
    /// stream's time is up.
    async fn next(mut self) -> Option<(Event, Follow)> {
        loop {
            if !self.first {
                tokio::select! {
                    _ = self.tick.tick() => {}
                    _ = tokio::time::sleep_until(self.ends_at) => return None,
                }
            }
            let (name, data) = self.read().await;
            let data = data.to_string();
            let changed = self.last.as_deref() != Some(data.as_str());
            if changed || self.first {
                let mut ev = Event::default().event(name).data(&data);
                if self.first {
                    ev = ev.retry(RETRY);
                }
                self.first = false;
                self.last = Some(data);
                return Some((ev, self));
            }
        }
    }
}

/// `GET /ui/events`: the stream.
pub(super) async fn stream(
    State(s): State<ApiState>,
    q: Result<Query<EventsQuery>, QueryRejection>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let task = q.ok().and_then(|q| q.0.task).filter(|t| !t.is_empty());
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.reset();
    let follow = Follow {
        s,
        task,
        last: None,
        first: true,
        ends_at: Instant::now() + STREAM_LIFETIME,
        tick,
    };
    let events = futures_util::stream::unfold(follow, |f| async move {
        f.next().await.map(|(ev, f)| (Ok(ev), f))
    });
    Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(5)))
}
