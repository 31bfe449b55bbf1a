//! Callbacks: a receiver on loopback records what the simulator POSTs to a
//! task's `callback_url`. Tests wait on the receiver's channel with a
//! deadline; a task settling later than the one under test, with a callback
//! that does arrive, is the barrier that proves an earlier one never came.

use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::routing::post;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

use super::{TestSim, start};
use crate::ids::now_ms;
use crate::{SimArgs, serve_on_loopback};

/// One callback as the receiver saw it.
#[derive(Debug)]
struct Got {
    path: String,
    at_ms: u64,
    headers: HeaderMap,
    body: Value,
}

/// A receiver on a loopback port: `/fail` answers 500, any other path 200.
struct Receiver {
    base: String,
    got: mpsc::UnboundedReceiver<Got>,
    _stop: oneshot::Sender<()>,
}

async fn record(
    State(tx): State<mpsc::UnboundedSender<Got>>,
    uri: Uri,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> StatusCode {
    let got = Got {
        path: uri.path().to_owned(),
        at_ms: now_ms(),
        headers,
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    };
    let status = if got.path == "/fail" {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::OK
    };
    let _ = tx.send(got);
    status
}

async fn receiver() -> Receiver {
    let (tx, got) = mpsc::unbounded_channel();
    let app = Router::new().route("/{*path}", post(record)).with_state(tx);
    let (stop, stopped) = oneshot::channel::<()>();
    let base = serve_on_loopback(app, async move {
        let _ = stopped.await;
    })
    .await
    .unwrap();
    Receiver {
        base,
        got,
        _stop: stop,
    }
}

impl Receiver {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The next callback, within 5 s.
    async fn next(&mut self) -> Got {
        tokio::time::timeout(Duration::from_secs(5), self.got.recv())
            .await
            .expect("no callback within 5 s")
            .expect("receiver closed")
    }
}

impl TestSim {
    /// When `id` settles (ms since the epoch).
    async fn settles_at(&self, id: &str) -> u64 {
        let info = self.get_json(&format!("/_sim/tasks/{id}")).await;
        info["finishes_at_ms"].as_u64().unwrap()
    }
}

/// Asserts `got` arrived after `due_ms`, and not long after.
fn assert_on_time(got: &Got, due_ms: u64) {
    assert!(got.at_ms >= due_ms, "{} ms early", due_ms - got.at_ms);
    // Generous: tests share the machine. The benchmark measures the lag.
    assert!(got.at_ms - due_ms < 500, "{} ms late", got.at_ms - due_ms);
}

#[tokio::test]
async fn succeeded_and_failed_tasks_call_back_once_when_they_settle() {
    let mut rx = receiver().await;
    let sim = start(SimArgs::default()).await;
    let url = rx.url("/hook");
    sim.create(json!({"tasks": [
        {"id": "ok", "duration_ms": 300, "items": 2, "callback_url": url},
        {"id": "bad", "duration_ms": 450, "outcome": "failed", "callback_url": url},
        {"id": "song", "service": "suno", "duration_ms": 600, "callback_url": url},
    ]}))
    .await;
    let ok = rx.next().await;
    assert_on_time(&ok, sim.settles_at("ok").await);
    assert_eq!(ok.path, "/hook");
    assert_eq!(ok.headers["content-type"], "application/json");
    assert!(ok.headers.get("webhook-signature").is_none());
    let b = &ok.body;
    assert_eq!((&b["task_id"], &b["success"]), (&json!("ok"), &json!(true)));
    assert_eq!(b["data"].as_array().unwrap().len(), 2);
    assert_eq!(b["data"][0]["state"], "succeeded");
    assert_eq!(b["data"][1]["audio_url"], "https://example.invalid/a.m4a");

    let bad = rx.next().await;
    assert_on_time(&bad, sim.settles_at("bad").await);
    let b = &bad.body;
    assert_eq!(
        (&b["task_id"], &b["success"]),
        (&json!("bad"), &json!(false))
    );
    assert_eq!(b["error"]["code"], "generation_failed");

    let song = rx.next().await;
    assert_on_time(&song, sim.settles_at("song").await);
    assert_eq!(song.body["task_id"], "song");
    assert_eq!(song.body["success"], true);
    assert_eq!(
        song.body["data"][0]["audio_url"],
        "https://example.invalid/a.mp3"
    );

    // Nobody polled: the callbacks left on their own timers, once each.
    let info = sim.get_json("/_sim/tasks/ok").await;
    assert_eq!(info["polls"], 0);
    assert_eq!(info["callback_url"], url);
    let s = sim.get_json("/_sim/stats").await;
    assert_eq!(s["callbacks_sent"], 3);
    assert_eq!(s["callbacks_failed"], 0);
    assert_eq!(s["requests"], 0);
}

#[tokio::test]
async fn a_lost_callback_is_never_sent_and_counted() {
    let mut rx = receiver().await;
    let sim = start(SimArgs {
        callback_loss_rate: 1.0,
        ..SimArgs::default()
    })
    .await;
    sim.create(json!({"tasks": [
        {"id": "lost", "duration_ms": 100, "callback_url": rx.url("/a")},
        {"id": "kept", "duration_ms": 400, "callback_url": rx.url("/b"), "callback_loss": 0.0},
    ]}))
    .await;
    let got = rx.next().await;
    assert_eq!(got.body["task_id"], "kept");
    let s = sim.get_json("/_sim/stats").await;
    assert_eq!(s["callbacks_lost"], 1);
    assert_eq!(s["callbacks_sent"], 1);
    assert!(rx.got.try_recv().is_err());
    // The lost callback's task still settles for pollers.
    assert!(super::finished(&sim.record("lost").await));
}

#[tokio::test]
async fn a_duplicated_callback_is_sent_twice() {
    let mut rx = receiver().await;
    let sim = start(SimArgs {
        callback_duplicate_rate: 1.0,
        ..SimArgs::default()
    })
    .await;
    sim.create(json!({"id": "twice", "duration_ms": 150, "callback_url": rx.url("/d")}))
        .await;
    let (a, b) = (rx.next().await, rx.next().await);
    assert_eq!(a.body, b.body);
    assert_eq!(a.body["task_id"], "twice");
    let s = sim.get_json("/_sim/stats").await;
    assert_eq!(s["callbacks_duplicated"], 1);
    assert_eq!(s["callbacks_sent"], 2);
    // Reset clears the counters.
    sim.post("/_sim/reset", json!({})).await;
    let s = sim.get_json("/_sim/stats").await;
    assert_eq!(s["callbacks_sent"], 0);
    assert_eq!(s["callbacks_duplicated"], 0);
}

#[tokio::test]
async fn the_delay_is_respected() {
    let mut rx = receiver().await;
    let sim = start(SimArgs {
        callback_delay_ms: 400,
        ..SimArgs::default()
    })
    .await;
    sim.create(json!({"tasks": [
        {"id": "late", "duration_ms": 100, "callback_url": rx.url("/l")},
        {"id": "prompt", "duration_ms": 250, "callback_url": rx.url("/p"), "callback_delay_ms": 0},
    ]}))
    .await;
    // Settled second, called back first: the spec's delay wins.
    let prompt = rx.next().await;
    assert_eq!(prompt.body["task_id"], "prompt");
    assert_on_time(&prompt, sim.settles_at("prompt").await);
    let late = rx.next().await;
    assert_eq!(late.body["task_id"], "late");
    assert_on_time(&late, sim.settles_at("late").await + 400);
}

/// A loopback URL nothing listens on (the port was bound, then let go).
fn closed_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://{}/cb", l.local_addr().unwrap())
}

#[tokio::test]
async fn unreachable_or_refusing_receivers_count_as_failed_and_polling_goes_on() {
    let mut rx = receiver().await;
    let closed = closed_url();
    let sim = start(SimArgs::default()).await;
    sim.create(json!({"tasks": [
        {"id": "nobody", "duration_ms": 100, "callback_url": closed},
        {"id": "refused", "duration_ms": 150, "callback_url": rx.url("/fail")},
        {"id": "barrier", "duration_ms": 450, "callback_url": rx.url("/ok")},
    ]}))
    .await;
    let seen = sim.poll_until("nobody", super::finished).await;
    assert_eq!(super::states(seen.last().unwrap()), ["succeeded"]);
    assert_eq!(rx.next().await.path, "/fail");
    assert_eq!(rx.next().await.body["task_id"], "barrier");
    let s = sim.get_json("/_sim/stats").await;
    assert_eq!(s["callbacks_sent"], 3);
    assert_eq!(s["callbacks_failed"], 2);
    assert_eq!(sim.batch(&["nobody", "refused"]).await["count"], 2);
}

#[tokio::test]
async fn implicit_tasks_call_back_to_the_command_line_url() {
    let mut rx = receiver().await;
    let sim = start(SimArgs {
        callback_url: Some(rx.url("/default")),
        min_duration_ms: 200,
        max_duration_ms: 200,
        fail_rate: 0.0,
        ..SimArgs::default()
    })
    .await;
    sim.batch(&["implicit-1"]).await;
    sim.create(json!({"tasks": [
        {"id": "own", "duration_ms": 300, "callback_url": rx.url("/own")},
        {"id": "inherits", "duration_ms": 400},
        {"id": "opted-out", "duration_ms": 100, "callback_url": ""},
    ]}))
    .await;
    let implicit = rx.next().await;
    assert_eq!(
        (implicit.path.as_str(), &implicit.body["task_id"]),
        ("/default", &json!("implicit-1"))
    );
    assert_on_time(&implicit, sim.settles_at("implicit-1").await);
    let own = rx.next().await;
    assert_eq!(
        (own.path.as_str(), &own.body["task_id"]),
        ("/own", &json!("own"))
    );
    let inherits = rx.next().await;
    assert_eq!(inherits.path, "/default");
    assert_eq!(inherits.body["task_id"], "inherits");
    let info = sim.get_json("/_sim/tasks/opted-out").await;
    assert!(info["callback_url"].is_null());
    assert_eq!(sim.get_json("/_sim/stats").await["callbacks_sent"], 3);
}

#[tokio::test]
async fn each_tasks_callback_outcome_is_recorded() {
    let mut rx = receiver().await;
    let closed = closed_url();
    let sim = start(SimArgs::default()).await;
    sim.create(json!({"tasks": [
        {"id": "lost", "duration_ms": 50, "callback_url": rx.url("/a"), "callback_loss": 1.0},
        {"id": "nobody", "duration_ms": 100, "callback_url": closed},
        {"id": "refused", "duration_ms": 150, "callback_url": rx.url("/fail")},
        {"id": "twice", "duration_ms": 200, "callback_url": rx.url("/t"), "callback_duplicate": 1.0},
        {"id": "ok", "duration_ms": 300, "callback_url": rx.url("/ok")},
        {"id": "later", "duration_ms": 60_000, "callback_url": rx.url("/later")},
        {"id": "none", "duration_ms": 50},
    ]}))
    .await;
    // Before anything is due, every callback is pending.
    let all = sim.get_json("/_sim/callbacks").await["callbacks"].clone();
    assert_eq!(all.as_object().unwrap().len(), 6, "{all}");
    assert!(all["ok"]["outcome"] == "pending" || all["ok"]["outcome"] == "delivered");
    // Wait (with a deadline) until every callback due has finished: its
    // record is written once the receiver's answer is back.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let all = loop {
        let all = sim.get_json("/_sim/callbacks").await["callbacks"].clone();
        let settled = ["lost", "nobody", "refused", "twice", "ok"]
            .iter()
            .all(|id| all[id]["outcome"] != "pending")
            && all["twice"]["posts"] == 2
            && all["twice"]["answered_at_ms"].is_u64();
        if settled {
            break all;
        }
        assert!(std::time::Instant::now() < deadline, "not settled: {all}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // The receiver saw the four POSTs.
    for _ in 0..4 {
        rx.next().await;
    }
    let ok_settled = sim.settles_at("ok").await;
    let outcome = |id: &str| all[id]["outcome"].as_str().unwrap().to_string();
    assert_eq!(outcome("lost"), "lost");
    assert!(all["lost"]["sent_at_ms"].is_null());
    assert_eq!(all["lost"]["posts"], 0);
    assert_eq!(outcome("nobody"), "failed");
    assert!(all["nobody"]["status"].is_null());
    assert_eq!(outcome("refused"), "failed");
    assert_eq!(all["refused"]["status"], 500);
    assert_eq!(outcome("twice"), "delivered");
    assert_eq!(all["twice"]["posts"], 2);
    assert_eq!(outcome("ok"), "delivered");
    assert_eq!(all["ok"]["status"], 200);
    assert_eq!(all["ok"]["due_at_ms"], ok_settled);
    let (sent, answered) = (
        all["ok"]["sent_at_ms"].as_u64().unwrap(),
        all["ok"]["answered_at_ms"].as_u64().unwrap(),
    );
    assert!(ok_settled <= sent && sent <= answered, "{}", all["ok"]);
    assert_eq!(outcome("later"), "pending");
    assert!(
        all.get("none").is_none(),
        "a task without callback has no record"
    );
    // One task's record is in its info too; a reset keeps the records.
    sim.post("/_sim/reset", json!({})).await;
    let info = sim.get_json("/_sim/tasks/refused").await;
    assert_eq!(info["callback"]["outcome"], "failed");
    assert!(sim.get_json("/_sim/tasks/none").await["callback"].is_null());
}

#[tokio::test]
async fn bad_callback_specs_are_refused() {
    let sim = start(SimArgs::default()).await;
    for spec in [
        json!({"callback_url": "not a url"}),
        json!({"callback_url": "ftp://example.com/"}),
        json!({"callback_url": "http://127.0.0.1:9/", "callback_loss": 2.0}),
        json!({"callback_url": "http://127.0.0.1:9/", "callback_duplicate": -1.0}),
    ] {
        let (status, v) = sim.call("/_sim/tasks", spec.clone()).await;
        assert_eq!(status, 400, "{spec}: {v}");
    }
}

#[test]
fn callback_flags() {
    use clap::Parser;
    /// A command line that embeds the simulator's flags, as `taskhook sim` does.
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        sim: SimArgs,
    }
    let cli = Cli::parse_from(["sim"]);
    assert_eq!(cli.sim.callback_url, None);
    assert_eq!(cli.sim.callback_delay_ms, 0);
    assert_eq!(cli.sim.callback_loss_rate, 0.0);
    assert_eq!(cli.sim.callback_duplicate_rate, 0.0);
    assert_eq!(cli.sim.callback_concurrency, 64);
    let cli = Cli::parse_from([
        "sim",
        "--callback-url",
        "http://127.0.0.1:9000/cb",
        "--callback-delay-ms",
        "50",
        "--callback-loss-rate",
        "0.1",
        "--callback-duplicate-rate",
        "0.2",
    ]);
    assert_eq!(
        cli.sim.callback_url.as_deref(),
        Some("http://127.0.0.1:9000/cb")
    );
    assert_eq!(cli.sim.callback_delay_ms, 50);
    assert_eq!(cli.sim.callback_loss_rate, 0.1);
    assert_eq!(cli.sim.callback_duplicate_rate, 0.2);
    assert!(Cli::try_parse_from(["sim", "--callback-url", "nope"]).is_err());
    assert!(Cli::try_parse_from(["sim", "--callback-concurrency", "0"]).is_err());
}
